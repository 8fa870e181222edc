// How the SDK reaches a daemon: the address, the bearer token and TLS, from
// options or the same environment variables as the `jobd` CLI (JOBD_ADDR,
// JOBD_TOKEN, JOBD_CA, JOBD_CERT, JOBD_CERT_KEY). One HTTP/2 connection per
// Client or Worker, closed by close()/stop().

import { readFileSync } from "node:fs";
import type { SecureClientSessionOptions } from "node:http2";
import type { Interceptor, Transport } from "@connectrpc/connect";
import { createGrpcTransport, Http2SessionManager } from "@connectrpc/connect-node";

/** TLS to the daemon. Each of ca/cert/key is PEM text or a path to a PEM file. */
export interface TlsOptions {
  /** CA bundle that signs the daemon's certificate (default: the system's roots). */
  ca?: string | Uint8Array;
  /** Client certificate, for a daemon that requires mTLS (with `key`). */
  cert?: string | Uint8Array;
  /** Private key of `cert`. */
  key?: string | Uint8Array;
  /** Name to verify the daemon's certificate against (default: the address's host). */
  serverName?: string;
}

/** Where and how to connect; every field is optional. */
export interface ConnectionOptions {
  /**
   * `host:port`, `http://host:port` or `https://host:port`. Default:
   * `JOBD_ADDR`, else `http://127.0.0.1:50051`. Without a scheme, TLS is
   * used when `tls` is given.
   */
  address?: string;
  /** Bearer token (default: `JOBD_TOKEN`). */
  token?: string;
  /**
   * TLS settings; `true` for TLS with the system's roots. Default: from
   * `JOBD_CA`, `JOBD_CERT`, `JOBD_CERT_KEY` (paths) when set.
   */
  tls?: TlsOptions | boolean;
  /** Time to open the connection before a call fails UNAVAILABLE (default 10 s). */
  connectTimeoutMs?: number;
}

/** The default address, as the CLI's. */
export const DEFAULT_ADDRESS = "http://127.0.0.1:50051";

/** A resolved connection: a transport for generated clients and a way to close it. */
export interface Connection {
  readonly baseUrl: string;
  readonly transport: Transport;
  close(): void;
}

function pem(v: string | Uint8Array | undefined): string | Buffer | undefined {
  if (v === undefined) return undefined;
  if (typeof v !== "string") return Buffer.from(v);
  return v.includes("-----BEGIN") ? v : readFileSync(v);
}

function tlsFromEnv(env: NodeJS.ProcessEnv): TlsOptions | undefined {
  const { JOBD_CA: ca, JOBD_CERT: cert, JOBD_CERT_KEY: key } = env;
  if (!ca && !cert && !key) return undefined;
  return { ca: ca || undefined, cert: cert || undefined, key: key || undefined };
}

/** Opens (lazily) one HTTP/2 connection as the options say. */
export function connect(opts: ConnectionOptions = {}, env: NodeJS.ProcessEnv = process.env): Connection {
  const address = opts.address ?? env["JOBD_ADDR"] ?? DEFAULT_ADDRESS;
  const token = opts.token ?? (env["JOBD_TOKEN"] || undefined);
  let tls: TlsOptions | undefined =
    opts.tls === true ? {} : opts.tls === false ? undefined : (opts.tls ?? tlsFromEnv(env));
  let baseUrl: string;
  if (/^[a-z]+:\/\//i.test(address)) {
    baseUrl = address;
    if (baseUrl.startsWith("https://")) tls ??= {};
    else if (tls && opts.tls !== undefined) {
      throw new TypeError(`address ${address} is plaintext (http://) but tls options were given`);
    } else tls = undefined;
  } else {
    baseUrl = `${tls ? "https" : "http"}://${address}`;
  }
  if (tls && (tls.cert === undefined) !== (tls.key === undefined)) {
    throw new TypeError("tls.cert and tls.key go together (mTLS)");
  }
  const nodeOptions: SecureClientSessionOptions = {};
  if (tls) {
    const ca = pem(tls.ca);
    const cert = pem(tls.cert);
    const key = pem(tls.key);
    if (ca !== undefined) nodeOptions.ca = ca;
    if (cert !== undefined) nodeOptions.cert = cert;
    if (key !== undefined) nodeOptions.key = key;
    if (tls.serverName !== undefined) nodeOptions.servername = tls.serverName;
  }
  const sessionManager = new Http2SessionManager(
    baseUrl,
    {
      connectTimeoutMs: opts.connectTimeoutMs ?? 10_000,
      // Keepalive: a dead daemon (or a NAT that dropped the flow) is noticed
      // on open streams, such as a worker's session or a long watch.
      pingIntervalMs: 30_000,
      pingTimeoutMs: 10_000,
    },
    nodeOptions,
  );
  const interceptors: Interceptor[] = [];
  if (token !== undefined) {
    const value = `Bearer ${token}`;
    interceptors.push((next) => (req) => {
      req.header.set("authorization", value);
      return next(req);
    });
  }
  const transport = createGrpcTransport({ baseUrl, sessionManager, interceptors });
  return { baseUrl, transport, close: () => sessionManager.abort() };
}

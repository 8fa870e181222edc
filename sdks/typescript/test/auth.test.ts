// Conformance scenarios auth_token and auth_tls: bearer tokens by role, and
// TLS with client certificates (a CA made here with the openssl CLI).

import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { test } from "node:test";
import {
  Client,
  decodeText,
  JobdError,
  PermissionDeniedError,
  UnauthenticatedError,
  Worker,
  type ClientOptions,
} from "jobd";
import { HEAD, haveJobd, haveProgram, KINDS, startDaemon, tempDir } from "./helpers.js";

const SUBMIT = "submit-token-0123456789abcdef";
const WORKER = "worker-token-0123456789abcdef";
const ADMIN = "admin-token-0123456789abcdefg";

/** Runs `f` with these environment variables set, then restores them. */
async function withEnv<T>(vars: Record<string, string>, f: () => Promise<T>): Promise<T> {
  const saved = Object.fromEntries(Object.keys(vars).map((k) => [k, process.env[k]]));
  Object.assign(process.env, vars);
  try {
    return await f();
  } finally {
    for (const [k, v] of Object.entries(saved)) {
      if (v === undefined) delete process.env[k];
      else process.env[k] = v;
    }
  }
}

/** A worker that echoes `ts` jobs, for a job's round trip. */
function echoWorker(opts: ConstructorParameters<typeof Worker>[0]): Worker {
  const w = new Worker({ maxInFlight: 4, handleSignals: false, log: () => {}, ...opts });
  w.handle("ts", (ctx) => `worked ${ctx.text()}`);
  return w;
}

test("auth_token", async (t) => {
  if (!haveJobd(t)) return;
  const d = await startDaemon({
    config: `${HEAD}
[auth]
tokens = [
  { token = "${SUBMIT}", role = "submit" },
  { token = "${WORKER}", role = "worker" },
  { token = "${ADMIN}", role = "admin" },
]
${KINDS}`,
  });
  const clients: Client[] = [];
  const client = (o: ClientOptions) => {
    const c = new Client({ address: d.address, ...o });
    clients.push(c);
    return c;
  };
  try {
    // No token, a wrong token: UNAUTHENTICATED.
    await assert.rejects(client({}).submit("echo", "x"), UnauthenticatedError);
    await assert.rejects(client({ token: "not-a-token-of-this-daemon" }).submit("echo", "x"), (e: unknown) => {
      assert.ok(e instanceof UnauthenticatedError);
      assert.equal(e.code, "UNAUTHENTICATED");
      return true;
    });
    // A submit token submits and reads, but may not cancel.
    const submitter = client({ token: SUBMIT });
    const job = await submitter.wait((await submitter.submit("echo", "hi")).id);
    assert.equal(job.state, "SUCCEEDED");
    await assert.rejects(submitter.cancel(job.id), PermissionDeniedError);
    // JOBD_ADDR and JOBD_TOKEN are read by new Client().
    await withEnv({ JOBD_ADDR: d.address, JOBD_TOKEN: SUBMIT }, async () => {
      const fromEnv = new Client();
      clients.push(fromEnv);
      assert.equal((await fromEnv.get(job.id)).id, job.id);
    });

    // Workers need a worker (or admin) token; a refused worker's run() rejects.
    for (const [token, cls] of [
      [undefined, UnauthenticatedError],
      [SUBMIT, PermissionDeniedError],
    ] as const) {
      const w = echoWorker({ address: d.address, token });
      await assert.rejects(w.run(), cls);
    }
    const worker = echoWorker({ address: d.address, token: WORKER });
    const running = worker.run();
    try {
      const done = await submitter.wait((await submitter.submit("ts", "a")).id, { timeoutMs: 20_000 });
      assert.equal(done.state, "SUCCEEDED");
      assert.equal(decodeText(done.result), "worked a");
      // The admin token may do everything: list the worker, cancel a job.
      const admin = client({ token: ADMIN });
      assert.equal((await admin.listWorkers({ kind: "ts" })).length, 1);
      const queued = await admin.submit("ts", "later", { delayMs: 60_000 });
      assert.equal((await admin.cancel(queued.id)).state, "CANCELLED");
    } finally {
      await worker.stop();
      await running;
    }
  } finally {
    for (const c of clients) c.close();
    await d.close();
  }
});

/** A CA, a server certificate for localhost/127.0.0.1 and a client certificate, in `dir`. */
function makePki(dir: string): void {
  const openssl = (...args: string[]) => execFileSync("openssl", args, { cwd: dir, stdio: "pipe" });
  const ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"];
  openssl("req", "-x509", ...ec, "-days", "2", "-subj", "/CN=jobd-ts-test-ca", "-keyout", "ca.key", "-out", "ca.pem");
  const leaf = (name: string, ext: string) => {
    writeFileSync(join(dir, `${name}.ext`), ext);
    openssl("req", ...ec, "-subj", `/CN=${name}`, "-keyout", `${name}.key`, "-out", `${name}.csr`);
    openssl(
      "x509", "-req", "-in", `${name}.csr`, "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
      "-days", "2", "-out", `${name}.pem`, "-extfile", `${name}.ext`,
    );
  };
  leaf(
    "server",
    "subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=critical,CA:FALSE\n" +
      "keyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\n",
  );
  leaf("client", "basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=clientAuth\n");
}

test("auth_tls", async (t) => {
  if (!haveJobd(t) || !haveProgram(t, "openssl", ["version"])) return;
  const pki = tempDir("jobd-ts-pki-");
  const p = (f: string) => join(pki.dir, f);
  makePki(pki.dir);
  const d = await startDaemon({
    config: `${HEAD}
[tls]
cert = "${p("server.pem")}"
key = "${p("server.key")}"
client_ca = "${p("ca.pem")}"
${KINDS}`,
  });
  const clients: Client[] = [];
  const client = (o: ClientOptions) => {
    const c = new Client({ address: d.address, connectTimeoutMs: 3000, ...o });
    clients.push(c);
    return c;
  };
  const mtls = { ca: p("ca.pem"), cert: p("client.pem"), key: p("client.key") };
  try {
    // mTLS with files: a job's round trip.
    const c = client({ tls: mtls });
    assert.ok(c.address.startsWith("https://"));
    const job = await c.wait((await c.submit("echo", "over tls")).id, { timeoutMs: 20_000 });
    assert.equal(job.state, "SUCCEEDED");
    assert.equal(decodeText(job.result), "over tls");

    // PEM text instead of paths, the name verified: localhost.
    const pem = { ca: readFileSync(p("ca.pem"), "utf8"), cert: readFileSync(p("client.pem"), "utf8"), key: readFileSync(p("client.key"), "utf8") };
    const byName = client({ address: `localhost:${d.port}`, tls: pem });
    assert.equal((await byName.get(job.id)).state, "SUCCEEDED");

    // A worker over mTLS.
    const worker = echoWorker({ address: d.address, tls: pem });
    const running = worker.run();
    try {
      const done = await c.wait((await c.submit("ts", "b")).id, { timeoutMs: 20_000 });
      assert.equal(done.state, "SUCCEEDED");
      assert.equal(decodeText(done.result), "worked b");
    } finally {
      await worker.stop();
      await running;
    }

    // JOBD_ADDR (https://), JOBD_CA, JOBD_CERT, JOBD_CERT_KEY.
    await withEnv(
      { JOBD_ADDR: `https://127.0.0.1:${d.port}`, JOBD_CA: mtls.ca, JOBD_CERT: mtls.cert, JOBD_CERT_KEY: mtls.key },
      async () => {
        const fromEnv = new Client();
        clients.push(fromEnv);
        assert.equal((await fromEnv.get(job.id)).id, job.id);
      },
    );

    // Refused: no client certificate; a CA that did not sign the server's; plaintext.
    for (const [what, o] of [
      ["no client certificate", { tls: { ca: mtls.ca } }],
      ["the system's roots", { tls: true }],
      ["plaintext", { address: `http://127.0.0.1:${d.port}` }],
    ] as const) {
      await assert.rejects(client(o).get(job.id), (e: unknown) => {
        assert.ok(e instanceof JobdError, `${what}: ${e}`);
        // A TLS failure is UNAVAILABLE; a plaintext request the TLS port resets is CANCELLED (RST_STREAM CANCEL, as gRPC maps it).
        assert.ok(["UNAVAILABLE", "CANCELLED", "INTERNAL"].includes(e.code), `${what}: ${e.code} ${e.message}`);
        return true;
      }, what);
    }
  } finally {
    for (const c of clients) c.close();
    pki.remove();
    await d.close();
  }
});


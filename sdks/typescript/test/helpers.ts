// Test helpers: a real `jobd serve` per test (ephemeral port, temp data
// dir, a config of our own), found at JOBD_BIN (default /tmp/jobd-base/jobd).
// Under CI a missing tool fails the test; elsewhere the test is skipped,
// loudly.

import { spawn, spawnSync, type ChildProcess } from "node:child_process";
import { existsSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import type { TestContext } from "node:test";

export const JOBD_BIN = process.env["JOBD_BIN"] || "/tmp/jobd-base/jobd";
/** The package's root (tests run from build/test/). */
export const PKG = resolve(dirname(fileURLToPath(import.meta.url)), "../..");
export const REPO = resolve(PKG, "../..");

/** True when the tool is there; under CI a missing one throws, else the test skips. */
export function need(t: TestContext, what: string, ok: boolean, hint: string): boolean {
  if (ok) return true;
  if (process.env["CI"]) throw new Error(`${what} is missing in CI: ${hint}`);
  t.skip(`SKIPPED: ${what} not available (${hint})`);
  return false;
}

export function haveJobd(t: TestContext): boolean {
  return need(t, `jobd binary ${JOBD_BIN}`, existsSync(JOBD_BIN), "build it and set JOBD_BIN");
}

export function haveProgram(t: TestContext, program: string, args: string[]): boolean {
  const ok = spawnSync(program, args, { stdio: "ignore" }).status === 0;
  return need(t, program, ok, `install ${program}`);
}

/**
 * A config for tests: remote kinds `ts`, `ts.slow`, and `ts.parent` /
 * `ts.child` (workflows), builtins echo/sleep/fail.
 */
export const KINDS = `
[kinds.echo]
handler = "echo"

[kinds.sleep]
handler = "sleep"

[kinds.fail]
handler = "fail"

[kinds.ts]
handler = "remote"
concurrency = 128
timeout = "60s"
max_attempts = 5
backoff = { initial = "100ms", max = "1s", multiplier = 2.0 }

[kinds."ts.slow"]
handler = "remote"
concurrency = 16
timeout = "60s"
max_attempts = 3
backoff = { initial = "100ms", max = "1s", multiplier = 2.0 }

[kinds."ts.parent"]
handler = "remote"
concurrency = 128
timeout = "60s"
max_attempts = 3
backoff = { initial = "100ms", max = "1s", multiplier = 2.0 }

[kinds."ts.child"]
handler = "remote"
concurrency = 128
timeout = "60s"
max_attempts = 3
backoff = { initial = "100ms", max = "1s", multiplier = 2.0 }
`;

export const HEAD = `
[queue]
workers = 128

[workers]
heartbeat_interval = "1s"

[drain]
grace = "100ms"
timeout = "10s"
`;

export interface DaemonOptions {
  /** The whole config file (default HEAD + KINDS). */
  config?: string;
  /** Reuse this data dir (a restart). */
  dir?: string;
  /** Listen here (a restart on the same port); default 127.0.0.1:0. */
  listen?: string;
}

export class Daemon {
  /** `host:port` as jobd reported it. */
  address = "";
  private out = "";
  private exited: Promise<number | null>;

  constructor(
    readonly proc: ChildProcess,
    readonly dir: string,
  ) {
    proc.stderr!.setEncoding("utf8");
    proc.stdout!.setEncoding("utf8");
    proc.stderr!.on("data", (d: string) => (this.out += d));
    proc.stdout!.on("data", (d: string) => (this.out += d));
    this.exited = new Promise((res) => proc.on("exit", (code) => res(code)));
  }

  /** Everything jobd wrote (for failure messages). */
  get output(): string {
    return this.out;
  }

  get port(): number {
    return Number(this.address.slice(this.address.lastIndexOf(":") + 1));
  }

  /** Resolves with the exit code. */
  wait(): Promise<number | null> {
    return this.exited;
  }

  async ready(timeoutMs = 20_000): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const line = this.out.split("\n").find((l) => l.includes("jobd serving"));
      const m = line?.match(/listen[=":\s]+"?([0-9.]+:\d+)/);
      if (m) {
        this.address = m[1]!;
        return;
      }
      if (this.proc.exitCode !== null) throw new Error(`jobd exited ${this.proc.exitCode}:\n${this.out}`);
      if (Date.now() > deadline) throw new Error(`jobd did not start:\n${this.out}`);
      await new Promise((r) => setTimeout(r, 20));
    }
  }

  /** SIGTERM (drain) and wait for the exit. */
  async stop(): Promise<number | null> {
    if (this.proc.exitCode === null && this.proc.signalCode === null) this.proc.kill("SIGTERM");
    let timer: NodeJS.Timeout | undefined;
    const late = new Promise<"late">((r) => (timer = setTimeout(() => r("late"), 30_000)));
    const code = await Promise.race([this.exited, late]);
    clearTimeout(timer);
    if (code === "late") {
      this.proc.kill("SIGKILL");
      throw new Error(`jobd did not stop within 30 s:\n${this.out}`);
    }
    return code;
  }

  /** Stops jobd and removes its data dir. */
  async close(): Promise<void> {
    try {
      if (this.proc.exitCode === null && this.proc.signalCode === null) {
        this.proc.kill("SIGKILL");
        await this.exited;
      }
    } finally {
      rmSync(this.dir, { recursive: true, force: true });
    }
  }
}

export async function startDaemon(opts: DaemonOptions = {}): Promise<Daemon> {
  const dir = opts.dir ?? mkdtempSync(join(tmpdir(), "jobd-ts-test-"));
  const cfg = join(dir, "jobd.toml");
  writeFileSync(cfg, opts.config ?? HEAD + KINDS);
  const proc = spawn(
    JOBD_BIN,
    [
      "serve",
      "--config",
      cfg,
      "--listen",
      opts.listen ?? "127.0.0.1:0",
      "--admin-listen",
      "off",
      "--store",
      `sqlite:${join(dir, "jobd.db")}`,
    ],
    { stdio: ["ignore", "pipe", "pipe"], env: { ...process.env, RUST_LOG: "info", NO_COLOR: "1" } },
  );
  const d = new Daemon(proc, dir);
  try {
    await d.ready();
  } catch (e) {
    await d.close();
    throw e;
  }
  return d;
}

/** Polls `f` until it returns a truthy value (bounded). */
export async function until<T>(what: string, f: () => T | Promise<T>, timeoutMs = 20_000): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const v = await f();
    if (v) return v;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

export const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

/** A fresh temp dir, removed by the returned function. */
export function tempDir(prefix: string): { dir: string; remove: () => void } {
  const dir = mkdtempSync(join(tmpdir(), prefix));
  return { dir, remove: () => rmSync(dir, { recursive: true, force: true }) };
}

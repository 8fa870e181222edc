#!/usr/bin/env node
// Worker throughput of the TypeScript SDK: one Node worker process
// (maxInFlight 64) burning down N no-op jobs of a remote kind, and in the
// same run the reference, BullMQ's worker (../shared/peers/bullmq, one
// process, concurrency 64) on the same N.
//
//   npm run build && node bench/noop.mjs
//   env: JOBD_BIN (default /tmp/jobd-base/jobd), N (20000), RUNS (3),
//        MAX_IN_FLIGHT (64), PEER (path to the peer's run.sh; "off" to skip),
//        WORKER_NODE_ARGS (node flags for the worker process, e.g. --cpu-prof)
//
// Per run: a fresh `jobd serve` (SQLite, its shipped durable settings) in a
// temp dir; N jobs submitted with SubmitBatch (1,000 a call) before the
// worker starts; then the worker runs them. jobs/s = (N - 1) / (last
// finished_at - first finished_at), read back from jobd (every job checked
// SUCCEEDED). BullMQ's figure is its bench's `process.jobs_per_s` (first to
// last 'completed' event). Prints one JSON line; medians of RUNS runs.

import { fork, spawn, spawnSync } from "node:child_process";
import { cpSync, existsSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { Client, Worker } from "../dist/index.js";

const here = dirname(fileURLToPath(import.meta.url));
const num = (k, d) => (process.env[k] ? Number(process.env[k]) : d);
const N = num("N", 20_000);
const RUNS = num("RUNS", 3);
const MAX_IN_FLIGHT = num("MAX_IN_FLIGHT", 64);
const JOBD_BIN = process.env.JOBD_BIN || "/tmp/jobd-base/jobd";
const PEER = process.env.PEER ?? resolve(here, "../../../../shared/peers/bullmq/run.sh");
const log = (...a) => process.stderr.write(`[noop] ${a.join(" ")}\n`);
const median = (xs) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];

// ---------------------------------------------------------------- worker child
if (process.argv[2] === "--worker-child") {
  const worker = new Worker({ address: process.argv[3], maxInFlight: MAX_IN_FLIGHT, handleSignals: false });
  let done = 0;
  worker.handle("noop", () => {
    done++;
    return undefined;
  });
  const ticker = setInterval(() => process.send({ done }), 50);
  process.on("message", async (m) => {
    if (m === "stop") {
      clearInterval(ticker);
      await worker.stop();
      process.exit(0);
    }
  });
  const running = worker.run();
  const wait = setInterval(() => {
    if (worker.connected) {
      clearInterval(wait);
      process.send("connected");
    }
  }, 5);
  await running;
} else {
  await main();
}

async function startJobd(dir) {
  writeFileSync(
    join(dir, "jobd.toml"),
    `[queue]\nworkers = ${MAX_IN_FLIGHT}\nmax_backlog = ${Math.max(100_000, N)}\n\n` +
      `[kinds.noop]\nhandler = "remote"\nconcurrency = ${MAX_IN_FLIGHT}\n`,
  );
  const proc = spawn(
    JOBD_BIN,
    ["serve", "--config", join(dir, "jobd.toml"), "--listen", "127.0.0.1:0", "--admin-listen", "off", "--store", `sqlite:${join(dir, "jobd.db")}`],
    { stdio: ["ignore", "ignore", "pipe"], env: { ...process.env, NO_COLOR: "1", RUST_LOG: "info" } },
  );
  let out = "";
  proc.stderr.setEncoding("utf8");
  return new Promise((res, rej) => {
    proc.stderr.on("data", (d) => {
      out += d;
      const m = out.match(/jobd serving.*?listen[=":\s]+"?([0-9.]+:\d+)/);
      if (m) res({ proc, address: m[1] });
    });
    proc.on("exit", (c) => rej(new Error(`jobd exited ${c}:\n${out}`)));
  });
}

async function jobdRun() {
  const dir = mkdtempSync(join(tmpdir(), "jobd-noop-"));
  const { proc, address } = await startJobd(dir);
  const client = new Client({ address });
  try {
    const t0 = performance.now();
    for (let i = 0; i < N; i += 1000) {
      const entries = Array.from({ length: Math.min(1000, N - i) }, () => ({ kind: "noop" }));
      for (const r of await client.submitBatch(entries)) if (!r.ok) throw r.error;
    }
    const enqueue = N / ((performance.now() - t0) / 1000);
    // WORKER_NODE_ARGS="--cpu-prof --cpu-prof-dir=/tmp/prof" profiles the worker.
    const execArgv = (process.env.WORKER_NODE_ARGS ?? "").split(" ").filter(Boolean);
    const child = fork(fileURLToPath(import.meta.url), ["--worker-child", address], {
      execArgv,
      stdio: ["ignore", "inherit", "inherit", "ipc"],
    });
    let done = 0;
    const connected = new Promise((res) => child.on("message", (m) => (m === "connected" ? res() : (done = m.done))));
    await connected;
    const deadline = Date.now() + 600_000;
    while (done < N) {
      if (Date.now() > deadline) throw new Error(`only ${done} of ${N} done`);
      await new Promise((r) => setTimeout(r, 20));
    }
    child.send("stop");
    await new Promise((r) => child.on("exit", r));
    let first = Infinity;
    let last = 0;
    let ok = 0;
    for await (const j of client.list({ kind: "noop", pageSize: 1000 })) {
      if (j.state !== "SUCCEEDED") throw new Error(`job ${j.id} is ${j.state}`);
      ok++;
      first = Math.min(first, j.finishedAt.getTime());
      last = Math.max(last, j.finishedAt.getTime());
    }
    if (ok !== N) throw new Error(`${ok} of ${N} jobs SUCCEEDED`);
    return { enqueue_jobs_per_s: Math.round(enqueue), jobs_per_s: Math.round((N - 1) / ((last - first) / 1000)), first_to_last_s: (last - first) / 1000 };
  } finally {
    client.close();
    proc.kill("SIGKILL");
    rmSync(dir, { recursive: true, force: true });
  }
}

function peerRun(peerDir) {
  const run = spawnSync("bash", [join(peerDir, "run.sh")], {
    env: { ...process.env, N: String(N), CONCURRENCY: String(MAX_IN_FLIGHT), WORKER_PROCS: "1", LAT_ITERS: "100", LAT_WARMUP: "10" },
    stdio: ["ignore", "pipe", "inherit"],
    maxBuffer: 16 << 20,
  });
  // run.sh can exit 1 after printing its result: with a Redis already on
  // 6379, its EXIT trap's last test fails under `set -e`. The JSON line is
  // what counts.
  const line = run.stdout.toString().trim().split("\n").pop() ?? "";
  if (!line.startsWith("{")) throw new Error(`bullmq run.sh failed (exit ${run.status})`);
  const r = JSON.parse(line);
  return { jobs_per_s: r.process.jobs_per_s, enqueue_jobs_per_s: r.enqueue.jobs_per_s, bullmq: r.bullmq, redis: r.redis.version, durable: r.redis.durable_note };
}

async function main() {
  if (!existsSync(JOBD_BIN)) throw new Error(`no jobd at ${JOBD_BIN} (set JOBD_BIN)`);
  // The peer runs from a copy: its run.sh installs node_modules next to itself.
  let peerDir;
  if (PEER !== "off" && existsSync(PEER)) {
    peerDir = join(tmpdir(), "jobd-noop-bullmq");
    cpSync(dirname(PEER), peerDir, { recursive: true, filter: (s) => !s.includes("node_modules") });
  } else if (PEER !== "off") log(`no peer at ${PEER}; BullMQ skipped`);
  const jobd = [];
  const peer = [];
  for (let i = 0; i < RUNS; i++) {
    const j = await jobdRun();
    log(`run ${i + 1}: jobd ts worker ${j.jobs_per_s} jobs/s (${j.first_to_last_s}s)`);
    jobd.push(j);
    if (peerDir) {
      const p = peerRun(peerDir);
      log(`run ${i + 1}: bullmq worker ${p.jobs_per_s} jobs/s`);
      peer.push(p);
    }
  }
  const result = {
    bench: "ts-sdk-noop",
    date: new Date().toISOString(),
    node: process.version,
    jobd_bin: JOBD_BIN,
    params: { N, runs: RUNS, max_in_flight: MAX_IN_FLIGHT },
    jobd_ts_worker: { runs: jobd.map((r) => r.jobs_per_s), median_jobs_per_s: median(jobd.map((r) => r.jobs_per_s)) },
  };
  if (peer.length) {
    result.bullmq_worker = {
      runs: peer.map((r) => r.jobs_per_s),
      median_jobs_per_s: median(peer.map((r) => r.jobs_per_s)),
      bullmq: peer[0].bullmq,
      redis: peer[0].redis,
      durable: peer[0].durable,
    };
    result.ratio = +(result.jobd_ts_worker.median_jobs_per_s / result.bullmq_worker.median_jobs_per_s).toFixed(2);
  }
  process.stdout.write(JSON.stringify(result) + "\n");
}

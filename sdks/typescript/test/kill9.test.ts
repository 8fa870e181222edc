// Conformance scenario exactly_once_kill9: 1,000 jobs over 3 worker
// processes, one killed with kill -9 mid-run. Counted, not sampled: every
// acknowledged job SUCCEEDED with its own payload as the result; no attempt
// ran twice; a job ran more than once only when an earlier attempt was lost
// with the killed process.
//
// Conformance scenario checkpoint_kill9: a handler saves a checkpoint (and
// waits for jobd's ack), its worker process is killed with kill -9 mid-job;
// the next attempt, in another process, gets that checkpoint.

import assert from "node:assert/strict";
import { spawn, type ChildProcess } from "node:child_process";
import { existsSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { test } from "node:test";
import { Client, decodeText, type Job } from "jobd";
import { HEAD, KINDS, haveJobd, PKG, startDaemon, tempDir, until } from "./helpers.js";

const JOBS = 1000;
const WORKERS = 3;

interface Proc {
  child: ChildProcess;
  log: string;
  out: () => string;
  exited: Promise<number | null>;
}

function spawnWorker(address: string, log: string, env: Record<string, string> = {}): Proc {
  const child = spawn(process.execPath, [join(PKG, "build/test/fixtures/worker.js")], {
    env: { ...process.env, JOBD_ADDR: address, KIND: "ts", MAX_IN_FLIGHT: "32", DELAY_MS: "20-80", LOG: log, ...env },
    stdio: ["ignore", "pipe", "pipe"],
  });
  let out = "";
  child.stdout!.on("data", (b) => (out += b));
  child.stderr!.on("data", (b) => (out += b));
  const exited = new Promise<number | null>((r) => child.on("exit", (code) => r(code)));
  return { child, log, out: () => out, exited };
}

/** `[job_id, attempt]` per execution a worker logged. */
function executions(log: string): [string, number][] {
  if (!existsSync(log)) return [];
  return readFileSync(log, "utf8")
    .split("\n")
    .filter(Boolean)
    .map((l) => {
      const [id, attempt] = l.split(" ");
      return [id!, Number(attempt)];
    });
}

test("exactly_once_kill9", async (t) => {
  if (!haveJobd(t)) return;
  const d = await startDaemon();
  const client = new Client({ address: d.address });
  const tmp = tempDir("jobd-ts-kill9-");
  const workers = Array.from({ length: WORKERS }, (_, i) => spawnWorker(d.address, join(tmp.dir, `worker-${i}.log`)));
  try {
    await until("3 worker sessions", async () => {
      for (const w of workers) assert.equal(w.child.exitCode, null, `a worker exited:\n${w.out()}`);
      return (await client.listWorkers({ kind: "ts" })).length === WORKERS;
    });

    // 1,000 jobs in one batch, each with its own payload: acknowledged = these.
    const results = await client.submitBatch(Array.from({ length: JOBS }, (_, i) => ({ kind: "ts", payload: `job-${i}` })));
    const payloads = new Map<string, string>();
    results.forEach((r, i) => {
      assert.ok(r.ok, `entry ${i} refused: ${r.error?.message}`);
      payloads.set(r.job.id, `job-${i}`);
    });
    assert.equal(payloads.size, JOBS);

    // kill -9 one worker while it holds jobs.
    const victim = workers[0]!;
    await until("the victim to have run 100 jobs", () => executions(victim.log).length >= 100);
    victim.child.kill("SIGKILL");
    await victim.exited;

    // Until every job SUCCEEDED (bounded); none may fail.
    const all = async (state?: Job["state"]) => {
      const jobs: Job[] = [];
      for await (const j of client.list({ kind: "ts", state, pageSize: 1000 })) jobs.push(j);
      return jobs;
    };
    await until(
      "every job to succeed",
      async () => {
        const failed = await all("FAILED");
        assert.deepEqual(failed, [], "no job may fail");
        for (const w of workers.slice(1)) assert.equal(w.child.exitCode, null, `a surviving worker exited:\n${w.out()}`);
        return (await client.listPage({ kind: "ts", state: "SUCCEEDED", pageSize: 1000 })).jobs.length === JOBS;
      },
      90_000,
    );

    const jobs = await all();
    assert.equal(jobs.length, JOBS);
    const finalAttempt = new Map<string, number>();
    for (const j of jobs) {
      assert.equal(j.state, "SUCCEEDED");
      assert.equal(decodeText(j.result), payloads.get(j.id), `result of ${j.id}`);
      finalAttempt.set(j.id, j.attempt);
    }
    // lost = acknowledged - observed; unexpected = observed - acknowledged.
    assert.deepEqual([...payloads.keys()].filter((id) => !finalAttempt.has(id)), [], "lost jobs");
    assert.deepEqual([...finalAttempt.keys()].filter((id) => !payloads.has(id)), [], "unexpected jobs");

    // The workers' own logs: no attempt ran twice; each job's final attempt
    // ran exactly once; an earlier attempt only on the killed worker.
    const seen = new Set<string>();
    const ranFinal = new Map<string, number>();
    let retried = 0;
    workers.forEach((w, i) => {
      for (const [id, attempt] of executions(w.log)) {
        const final = finalAttempt.get(id);
        assert.ok(final !== undefined, `worker ${i} ran unknown job ${id}`);
        assert.ok(!seen.has(`${id} ${attempt}`), `attempt ${attempt} of ${id} ran twice`);
        seen.add(`${id} ${attempt}`);
        if (attempt === final) ranFinal.set(id, (ranFinal.get(id) ?? 0) + 1);
        else {
          assert.ok(attempt < final, `attempt ${attempt} of ${id} ran after its final attempt ${final}`);
          assert.equal(i, 0, `attempt ${attempt} of ${id} was superseded but not lost with the killed worker`);
          retried++;
        }
      }
    });
    for (const id of payloads.keys()) assert.equal(ranFinal.get(id), 1, `final attempt of ${id} ran once`);
    const ran = workers.map((w) => executions(w.log).length);
    t.diagnostic(`executions per worker ${ran.join("/")}; ${retried} attempts lost with the killed worker and run again`);
    assert.ok(
      [...finalAttempt.values()].some((a) => a > 1),
      "the kill caught jobs in flight (some job needed a second attempt)",
    );

    // The survivors drain on SIGTERM and exit 0.
    for (const w of workers.slice(1)) w.child.kill("SIGTERM");
    for (const w of workers.slice(1)) assert.equal(await w.exited, 0, w.out());
  } finally {
    for (const w of workers) w.child.kill("SIGKILL");
    client.close();
    tmp.remove();
    await d.close();
  }
});

// Two attempts at most (the lost one and the next), the 1 s heartbeat interval of HEAD.
const CHECKPOINT_KIND = `
[kinds."ts.checkpoint"]
handler = "remote"
timeout = "60s"
max_attempts = 2
backoff = { initial = "100ms", max = "1s", multiplier = 2.0 }
`;

test("checkpoint_kill9", async (t) => {
  if (!haveJobd(t)) return;
  const d = await startDaemon({ config: HEAD + KINDS + CHECKPOINT_KIND });
  const client = new Client({ address: d.address });
  const tmp = tempDir("jobd-ts-checkpoint-");
  const env = { KIND: "ts.checkpoint", CHECKPOINT: "1", MAX_IN_FLIGHT: "1" };
  const workers = [spawnWorker(d.address, join(tmp.dir, "worker-0.log"), env)];
  const first = workers[0]!;
  try {
    await until("the first worker's session", async () => {
      assert.equal(first.child.exitCode, null, `the worker exited:\n${first.out()}`);
      return (await client.listWorkers({ kind: "ts.checkpoint" })).length === 1;
    });
    const job = await client.submit("ts.checkpoint", "resume-me");
    const want = `resume-me step 7 by ${first.child.pid}`;
    await until("the first attempt to save its checkpoint and get the ack", () => {
      assert.equal(first.child.exitCode, null, `the worker exited:\n${first.out()}`);
      return first.out().includes(`checkpointed ${job.id} 1`);
    });
    const running = await client.get(job.id);
    assert.equal(running.state, "RUNNING");
    assert.equal(running.attempt, 1);
    assert.equal(running.checkpointSize, Buffer.byteLength(want), "the acked checkpoint is stored");

    // kill -9 mid-job; another process takes the next attempt.
    first.child.kill("SIGKILL");
    await first.exited;
    const second = spawnWorker(d.address, join(tmp.dir, "worker-1.log"), env);
    workers.push(second);
    const done = await client.wait(job.id, { timeoutMs: 30_000 });
    assert.equal(done.state, "SUCCEEDED", `${done.lastError}\n${second.out()}`);
    assert.equal(done.attempt, 2);
    assert.equal(decodeText(done.result), want, "the second attempt got the killed one's checkpoint");
    assert.ok(second.out().includes(`resumed ${job.id} 2`), second.out());
    assert.deepEqual(executions(first.log), [[job.id, 1]]);
    assert.deepEqual(executions(second.log), [[job.id, 2]]);
    second.child.kill("SIGTERM");
    assert.equal(await second.exited, 0, second.out());
  } finally {
    for (const w of workers) w.child.kill("SIGKILL");
    client.close();
    tmp.remove();
    await d.close();
  }
});

// Conformance scenarios of the worker: cancel_reaches_function, drain.

import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { test } from "node:test";
import { Client, decodeText, Worker, type JobContext } from "jobd";
import { haveJobd, PKG, sleep, startDaemon, tempDir, until } from "./helpers.js";

/** A promise with its resolve function. */
function deferred<T>(): { promise: Promise<T>; resolve: (v: T) => void } {
  let resolve!: (v: T) => void;
  const promise = new Promise<T>((r) => (resolve = r));
  return { promise, resolve };
}

/** Resolves when the signal aborts (with its reason), or after `ms`. */
function aborted(signal: AbortSignal, ms: number): Promise<unknown> {
  return new Promise((resolve) => {
    if (signal.aborted) return resolve(signal.reason);
    const t = setTimeout(() => resolve(undefined), ms);
    signal.addEventListener("abort", () => {
      clearTimeout(t);
      resolve(signal.reason);
    });
  });
}

test("cancel_reaches_function", async (t) => {
  if (!haveJobd(t)) return;
  const d = await startDaemon();
  const client = new Client({ address: d.address });
  const worker = new Worker({ address: d.address, maxInFlight: 4, handleSignals: false });
  const started = new Map<string, ReturnType<typeof deferred<JobContext>>>();
  const reasons = new Map<string, unknown>();
  const startedFor = (id: string) => {
    if (!started.has(id)) started.set(id, deferred<JobContext>());
    return started.get(id)!;
  };
  worker.handle("ts.slow", async (ctx) => {
    startedFor(`${ctx.id}/${ctx.attempt}`).resolve(ctx);
    if (ctx.text() === "quick" && ctx.attempt > 1) return "second attempt";
    // Works until jobd stops the attempt (bounded, so a lost cancel fails the test, not hangs it).
    const reason = await aborted(ctx.signal, 15_000);
    reasons.set(`${ctx.id}/${ctx.attempt}`, reason);
    return "finished anyway";
  });
  const running = worker.run();
  try {
    // A client's cancel aborts the handler's signal.
    const job = await client.submit("ts.slow", "work");
    const ctx = await startedFor(`${job.id}/1`).promise;
    assert.equal(ctx.signal.aborted, false);
    assert.equal(ctx.id, job.id);
    assert.ok(ctx.deadline && ctx.deadline.getTime() > Date.now());
    const t0 = Date.now();
    const cancelled = await client.cancel(job.id);
    assert.equal(cancelled.state, "CANCELLED");
    await until("the handler's signal to abort", () => ctx.signal.aborted, 5000);
    assert.ok(Date.now() - t0 < 5000);
    await until("the handler to return", () => reasons.has(`${job.id}/1`));
    assert.match(String((reasons.get(`${job.id}/1`) as Error).message), /cancel/i);
    // Its late result is not reported: the job stays CANCELLED, no result.
    await sleep(300);
    const after = await client.get(job.id);
    assert.equal(after.state, "CANCELLED");
    assert.equal(after.result.length, 0);
    await until("no handler in flight", () => worker.inFlight === 0);

    // The attempt's timeout (Assign.deadline) aborts the signal too; the retry runs.
    const timed = await client.submit("ts.slow", "quick", { timeoutMs: 500 });
    const first = await startedFor(`${timed.id}/1`).promise;
    const reason = await aborted(first.signal, 10_000);
    assert.ok(first.signal.aborted, "the deadline aborted the signal");
    assert.ok(reason instanceof Error);
    const done = await client.wait(timed.id, { timeoutMs: 20_000 });
    assert.equal(done.state, "SUCCEEDED");
    assert.equal(done.attempt, 2);
    assert.equal(decodeText(done.result), "second attempt");
  } finally {
    await worker.stop({ force: true });
    await running;
    client.close();
    await d.close();
  }
});

test("drain", async (t) => {
  if (!haveJobd(t)) return;
  const d = await startDaemon();
  const client = new Client({ address: d.address });
  const tmp = tempDir("jobd-ts-drain-");
  try {
    // 1. worker.stop(): the jobs it holds finish and are reported, nothing
    //    new starts, and run() resolves after.
    {
      const worker = new Worker({ address: d.address, maxInFlight: 4, handleSignals: false });
      const started: string[] = [];
      let stopCalled = false;
      let startedAfterStop = 0;
      // The held jobs finish when the test says so, however slow the machine.
      const gate = deferred<void>();
      worker.handle("ts.slow", async (ctx) => {
        started.push(ctx.id);
        if (stopCalled) startedAfterStop++;
        await gate.promise;
        return `done ${ctx.text()}`;
      });
      const running = worker.run();
      const jobs = (await client.submitBatch(Array.from({ length: 8 }, (_, i) => ({ kind: "ts.slow", payload: `${i}` })))).map(
        (r) => r.job!,
      );
      await until("4 jobs started", () => started.length === 4);
      stopCalled = true;
      let resolved = false;
      const stopped = worker.stop().then(() => (resolved = true));
      await sleep(200);
      assert.equal(resolved, false, "stop() waits for held jobs");
      assert.equal(worker.inFlight, 4);
      gate.resolve();
      await stopped;
      await running;
      assert.equal(startedAfterStop, 0);
      assert.equal(worker.inFlight, 0);
      // Reported before the close (jobd stores the outcomes right after).
      for (const j of started) {
        const now = await client.wait(j, { timeoutMs: 10_000 });
        assert.equal(now.state, "SUCCEEDED", `${j}: ${now.lastError}`);
        assert.equal(now.attempt, 1);
      }
      // Another worker takes the rest. (jobd may have claimed a job for the
      // place the last reports freed just before the stream closed: it is
      // then run by the next worker, at most one attempt later.)
      const next = new Worker({ address: d.address, maxInFlight: 8, handleSignals: false });
      next.handle("ts.slow", (ctx) => `done ${ctx.text()}`);
      const nextRunning = next.run();
      for (const j of jobs) {
        const end = await client.wait(j.id, { timeoutMs: 20_000 });
        assert.equal(end.state, "SUCCEEDED", end.lastError);
        assert.equal(decodeText(end.result), `done ${decodeText(new TextEncoder().encode(String(jobs.indexOf(j))))}`);
        assert.ok(end.attempt <= 2, `${end.attempt}`);
      }
      await next.stop();
      await nextRunning;
    }

    // 2. SIGTERM to a worker process: it drains, then run() resolves and the process exits 0.
    {
      const log = join(tmp.dir, "sigterm.log");
      const child = spawn(process.execPath, [join(PKG, "build/test/fixtures/worker.js")], {
        env: { ...process.env, JOBD_ADDR: d.address, KIND: "ts.slow", MAX_IN_FLIGHT: "4", DELAY_MS: "600", LOG: log },
        stdio: ["ignore", "pipe", "pipe"],
      });
      let out = "";
      child.stdout.on("data", (b) => (out += b));
      child.stderr.on("data", (b) => (out += b));
      const exited = new Promise<number | null>((r) => child.on("exit", (code) => r(code)));
      try {
        await until("the worker process to connect", async () => (await client.listWorkers({ kind: "ts.slow" })).length === 1);
        const jobs = (await client.submitBatch(Array.from({ length: 4 }, (_, i) => ({ kind: "ts.slow", payload: `s${i}` })))).map(
          (r) => r.job!,
        );
        const lines = () => readFileSync(log, "utf8").split("\n").filter(Boolean).length;
        await until("4 jobs started", () => {
          try {
            return lines() === 4;
          } catch {
            return false;
          }
        });
        child.kill("SIGTERM");
        assert.equal(await exited, 0, out);
        assert.match(out, /exited/);
        for (const j of jobs) {
          const now = await client.wait(j.id, { timeoutMs: 10_000 });
          assert.equal(now.state, "SUCCEEDED", now.lastError);
          assert.equal(now.attempt, 1);
        }
      } finally {
        child.kill("SIGKILL");
      }
    }

    // 3. jobd drains (SIGTERM): the worker finishes what it holds before the
    //    deadline, its reports count, and it reconnects to the restarted jobd.
    {
      const worker = new Worker({
        address: d.address,
        maxInFlight: 4,
        handleSignals: false,
        reconnect: { initialMs: 50, maxMs: 300 },
        log: () => {},
      });
      let started = 0;
      worker.handle("ts.slow", async (ctx) => {
        started++;
        if (ctx.text() === "slow") await sleep(800);
        return `drained ${ctx.text()}`;
      });
      const running = worker.run();
      try {
        await until("the worker to connect", () => worker.connected);
        const held = await client.submit("ts.slow", "slow");
        await until("the job to start", () => started === 1);
        const port = d.port;
        const code = await d.stop();
        assert.equal(code, 0, d.output);
        assert.equal(worker.inFlight, 0);
        const again = await startDaemon({ dir: d.dir, listen: `127.0.0.1:${port}` });
        try {
          const c2 = new Client({ address: again.address });
          const j = await c2.get(held.id);
          assert.equal(j.state, "SUCCEEDED", `reported during the drain: ${j.lastError}`);
          assert.equal(j.attempt, 1);
          assert.equal(decodeText(j.result), "drained slow");
          await until("the worker to reconnect", () => worker.connected, 10_000);
          const fresh = await c2.wait((await c2.submit("ts.slow", "fresh")).id, { timeoutMs: 20_000 });
          assert.equal(fresh.state, "SUCCEEDED");
          assert.equal(decodeText(fresh.result), "drained fresh");
          c2.close();
        } finally {
          await worker.stop();
          await running;
          await again.close();
        }
      } finally {
        await worker.stop({ force: true });
      }
    }
  } finally {
    client.close();
    tmp.remove();
    await d.close();
  }
});

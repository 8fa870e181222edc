// Conformance scenarios of the client (tests/sdk/conformance.txt):
// submit_wait, batch, watch_order, typed_errors, retry_info.

import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";
import {
  AlreadyExistsError,
  Client,
  decodeJson,
  decodeText,
  FailedPreconditionError,
  InvalidArgumentError,
  JobdError,
  NotFoundError,
  Permanent,
  ResourceExhaustedError,
  UnavailableError,
  Worker,
  type Job,
} from "jobd";
import { Daemon, haveJobd, startDaemon } from "./helpers.js";

describe("client against a real jobd", () => {
  let d: Daemon | undefined;
  let client: Client;
  let worker: Worker;
  let running: Promise<void>;
  const runs = new Map<string, number>();

  before(async () => {
    if (!haveJobdQuiet()) return;
    d = await startDaemon();
    client = new Client({ address: d.address });
    worker = new Worker({ address: d.address, maxInFlight: 8, handleSignals: false });
    worker.handle("ts", async (ctx, payload) => {
      runs.set(ctx.id, (runs.get(ctx.id) ?? 0) + 1);
      const input = ctx.json<{ op: string; n?: number }>();
      if (input.op === "permanent") throw new Permanent("bad input");
      if (input.op === "flaky" && ctx.attempt < 2) throw new Error("try again");
      if (input.op === "bytes") return payload;
      if (input.op === "text") return `n=${input.n}`;
      return { ok: true, n: input.n ?? 0, attempt: ctx.attempt };
    });
    running = worker.run();
  });

  after(async () => {
    await worker?.stop();
    await running;
    client?.close();
    await d?.close();
  });

  test("submit_wait", async (t) => {
    if (!haveJobd(t)) return;
    // A builtin kind: the payload (an object, sent as JSON) comes back.
    let job: Job = await client.submit("echo", { w: 100 });
    assert.equal(job.kind, "echo");
    assert.match(job.id, /^[0-9a-f-]{36}$/);
    assert.ok(["QUEUED", "RUNNING"].includes(job.state), job.state);
    job = await client.wait(job.id, { timeoutMs: 20_000 });
    assert.equal(job.state, "SUCCEEDED");
    assert.equal(job.attempt, 1);
    assert.ok(job.result instanceof Uint8Array);
    assert.deepEqual(decodeJson(job.result), { w: 100 });
    assert.ok(job.finishedAt instanceof Date);
    assert.deepEqual(await client.get(job.id), job);

    // Every submit option reaches the job.
    const opts = {
      key: `k-${Date.now()}`,
      priority: 5,
      delayMs: 300,
      labels: { a: "b" },
      orderingKey: "user-7",
      maxAttempts: 3,
      timeoutMs: 30_000,
    };
    const t0 = Date.now();
    const delayed = await client.submit("echo", "hello", opts);
    assert.equal(delayed.state, "QUEUED");
    assert.equal(delayed.deduplicated, false);
    assert.equal(delayed.priority, 5);
    assert.deepEqual(delayed.labels, { a: "b" });
    assert.equal(delayed.orderingKey, "user-7");
    assert.equal(delayed.maxAttempts, 3);
    assert.equal(delayed.timeoutMs, 30_000);
    assert.equal(delayed.idempotencyKey, opts.key);
    assert.ok(delayed.nextAttemptAt && delayed.nextAttemptAt.getTime() >= t0 + 250);
    // The same key and request: the same job, deduplicated.
    const again = await client.submit("echo", "hello", { ...opts, delayMs: undefined, runAt: delayed.nextAttemptAt });
    assert.equal(again.id, delayed.id);
    assert.equal(again.deduplicated, true);
    const done = await client.wait(delayed.id, { timeoutMs: 20_000 });
    assert.equal(done.state, "SUCCEEDED");
    assert.equal(decodeText(done.result), "hello");
    assert.ok(done.startedAt!.getTime() >= t0 + 250, "a delayed job starts after its delay");

    // Through a TypeScript worker: JSON in, JSON out; bytes; text.
    const viaWorker = await client.wait((await client.submit("ts", { op: "json", n: 7 })).id, { timeoutMs: 20_000 });
    assert.equal(viaWorker.state, "SUCCEEDED", viaWorker.lastError);
    assert.deepEqual(decodeJson(viaWorker.result), { ok: true, n: 7, attempt: 1 });
    const text = await client.wait((await client.submit("ts", { op: "text", n: 8 })).id);
    assert.equal(decodeText(text.result), "n=8");
    const bytes = await client.submit("ts", new TextEncoder().encode('{"op":"bytes"}'));
    assert.equal(decodeText((await client.wait(bytes.id)).result), '{"op":"bytes"}');

    // Permanent: no retry. Any other error: retried.
    const perm = await client.wait((await client.submit("ts", { op: "permanent" })).id);
    assert.equal(perm.state, "FAILED");
    assert.equal(perm.attempt, 1);
    assert.match(perm.lastError, /bad input/);
    const flaky = await client.wait((await client.submit("ts", { op: "flaky" })).id);
    assert.equal(flaky.state, "SUCCEEDED");
    assert.equal(flaky.attempt, 2);
    assert.equal(runs.get(flaky.id), 2);
    // A payload that is not JSON, read with ctx.json(): FAILED for good.
    const notJson = await client.wait((await client.submit("ts", "{not json")).id);
    assert.equal(notJson.state, "FAILED");
    assert.equal(notJson.attempt, 1);
    assert.match(notJson.lastError, /not JSON/);
  });

  test("batch", async (t) => {
    if (!haveJobd(t)) return;
    const results = await client.submitBatch([
      { kind: "echo", payload: "1" },
      { kind: "echo", payload: "2", labels: { batch: "b1" } },
      { kind: "ts", payload: { op: "json", n: 3 }, priority: 2 },
      { kind: "echo", payload: "4", maxAttempts: 1000 },
      { kind: "no-such-kind", payload: "5" },
    ]);
    assert.equal(results.length, 5);
    for (const i of [0, 1, 2]) {
      const r = results[i]!;
      assert.ok(r.ok, `entry ${i}: ${r.error?.message}`);
      assert.equal(r.deduplicated, false);
    }
    const bad = results[3]!;
    assert.ok(!bad.ok);
    assert.ok(bad.error instanceof InvalidArgumentError);
    assert.equal(bad.error.code, "INVALID_ARGUMENT");
    assert.equal((bad.error as InvalidArgumentError).field, "requests[3].max_attempts");
    const unknown = results[4]!;
    assert.ok(!unknown.ok && unknown.error instanceof JobdError);
    assert.ok(["INVALID_ARGUMENT", "NOT_FOUND"].includes(unknown.error.code), unknown.error.code);

    const finished = await Promise.all(results.slice(0, 3).map((r) => client.wait(r.job!.id, { timeoutMs: 20_000 })));
    assert.deepEqual(
      finished.map((j) => j.state),
      ["SUCCEEDED", "SUCCEEDED", "SUCCEEDED"],
    );
    assert.equal(decodeText(finished[0]!.result), "1");
    assert.deepEqual(finished[1]!.labels, { batch: "b1" });
    assert.deepEqual(decodeJson(finished[2]!.result), { ok: true, n: 3, attempt: 1 });

    // list() walks every page; the label filter finds the one job.
    const listed: Job[] = [];
    for await (const j of client.list({ kind: "echo", pageSize: 2 })) listed.push(j);
    assert.ok(listed.length >= 2);
    assert.ok(listed.some((j) => j.id === finished[0]!.id));
    assert.equal(new Set(listed.map((j) => j.id)).size, listed.length, "no job twice across pages");
    const labelled: Job[] = [];
    for await (const j of client.list({ labels: { batch: "b1" }, state: "SUCCEEDED" })) labelled.push(j);
    assert.deepEqual(
      labelled.map((j) => j.id),
      [finished[1]!.id],
    );
  });

  test("watch_order", async (t) => {
    if (!haveJobd(t)) return;
    const job = await client.submit("sleep", "300");
    const events = [];
    for await (const ev of client.watch(job.id)) events.push(ev);
    const states = events.map((e) => e.job.state);
    assert.deepEqual(states, ["QUEUED", "RUNNING", "SUCCEEDED"].slice(3 - states.length));
    assert.equal(states.at(-1), "SUCCEEDED");
    assert.ok(states.length >= 2, `snapshot and at least the end: ${states}`);
    for (let i = 1; i < events.length; i++) {
      assert.ok(events[i]!.sequence > events[i - 1]!.sequence, "sequences increase");
    }
    // Resuming after the last sequence of a finished job: nothing more, and the stream ends.
    const last = events.at(-1)!.sequence;
    const resumed = [];
    for await (const ev of client.watch(job.id, { afterSequence: last })) resumed.push(ev);
    assert.deepEqual(resumed, []);
    // Resuming from an older sequence: the snapshot stands for what came since.
    const snap = [];
    for await (const ev of client.watch(job.id, { afterSequence: 1 })) snap.push(ev);
    assert.equal(snap.length, 1);
    assert.equal(snap[0]!.job.state, "SUCCEEDED");
    assert.equal(snap[0]!.sequence, last);

    // A job watched from its submit: QUEUED first when no worker can take it yet.
    const slowWorkerless = await client.submit("ts.slow", "x", { delayMs: 200 });
    const first = await client.watch(slowWorkerless.id).next();
    assert.equal(first.value && first.value.job.state, "QUEUED");
    await client.cancel(slowWorkerless.id);
  });

  test("typed_errors", async (t) => {
    if (!haveJobd(t)) return;
    const missing = "01900000-0000-7000-8000-000000000000";
    await assert.rejects(client.get(missing), (e: unknown) => {
      assert.ok(e instanceof NotFoundError);
      assert.ok(e instanceof JobdError);
      assert.equal(e.code, "NOT_FOUND");
      assert.equal(e.grpcCode, 5);
      assert.equal(e.name, "NotFoundError");
      return true;
    });
    await assert.rejects(client.submit("no-such-kind", "x"), (e: unknown) => {
      assert.ok(e instanceof InvalidArgumentError, String(e));
      assert.equal(e.code, "INVALID_ARGUMENT");
      assert.equal(e.field, "kind");
      assert.match(e.violations[0]!.description, /unknown kind/);
      return true;
    });
    await assert.rejects(client.get("not-a-uuid"), InvalidArgumentError);
    await assert.rejects(client.submit("echo", "x", { maxAttempts: 101 }), (e: unknown) => {
      assert.ok(e instanceof InvalidArgumentError);
      assert.equal(e.field, "max_attempts");
      return true;
    });
    // Same key, different request: the existing job is named.
    const key = `conflict-${Date.now()}`;
    const first = await client.submit("echo", "one", { key });
    await assert.rejects(client.submit("echo", "two", { key }), (e: unknown) => {
      assert.ok(e instanceof AlreadyExistsError);
      assert.equal(e.existingId, first.id);
      assert.equal(e.errorInfo?.reason, "IDEMPOTENCY_KEY_REUSED");
      return true;
    });
    // Cancel of a finished job.
    await client.wait(first.id);
    await assert.rejects(client.cancel(first.id), FailedPreconditionError);
    // Cancel twice is fine.
    const queued = await client.submit("ts.slow", "x", { delayMs: 60_000 });
    assert.equal((await client.cancel(queued.id)).state, "CANCELLED");
    assert.equal((await client.cancel(queued.id)).state, "CANCELLED");
    // Nobody listening: UNAVAILABLE.
    const nowhere = new Client({ address: "127.0.0.1:1", connectTimeoutMs: 2000 });
    await assert.rejects(nowhere.get(missing), (e: unknown) => {
      assert.ok(e instanceof UnavailableError, String(e));
      return true;
    });
    nowhere.close();
    // wait() past its timeout.
    const waiting = await client.submit("ts.slow", "x", { delayMs: 60_000 });
    await assert.rejects(client.wait(waiting.id, { timeoutMs: 200 }), { code: "DEADLINE_EXCEEDED" });
    // An aborted call.
    const ctl = new AbortController();
    const pending = client.wait(waiting.id, { signal: ctl.signal });
    ctl.abort();
    await assert.rejects(pending, { code: "CANCELLED" });
    await client.cancel(waiting.id);
  });
});

describe("RESOURCE_EXHAUSTED with RetryInfo", () => {
  test("retry_info", async (t) => {
    if (!haveJobd(t)) return;
    // Two jobs at most waiting; `held` has no worker, so its jobs stay QUEUED.
    const d = await startDaemon({
      config: `
[queue]
max_backlog = 2

[kinds.held]
handler = "remote"
`,
    });
    const client = new Client({ address: d.address });
    try {
      const a = await client.submit("held", "1");
      await client.submit("held", "2");
      // Refused with RetryInfo when retries are off.
      await assert.rejects(client.submit("held", "3", { retries: 0 }), (e: unknown) => {
        assert.ok(e instanceof ResourceExhaustedError, String(e));
        assert.equal(e.code, "RESOURCE_EXHAUSTED");
        assert.equal(e.retryAfterMs, 1000);
        return true;
      });
      // Retried after the RetryInfo delay: room appears meanwhile.
      const t0 = Date.now();
      setTimeout(() => void client.cancel(a.id), 300);
      const c = await client.submit("held", "3");
      const took = Date.now() - t0;
      assert.equal(c.state, "QUEUED");
      assert.ok(took >= 950, `waited the RetryInfo delay (${took} ms)`);
      assert.ok(took < 5000, `one retry was enough (${took} ms)`);
      // Bounded: one retry, still full, then the error.
      const t1 = Date.now();
      await assert.rejects(client.submit("held", "4", { retries: 1 }), ResourceExhaustedError);
      assert.ok(Date.now() - t1 >= 950);
      // submitBatch retries the same way (each entry of a full backlog is refused on its own).
      const batch = await client.submitBatch([{ kind: "held", payload: "5" }], { retries: 0 });
      assert.ok(!batch[0]!.ok);
      assert.ok(batch[0]!.error instanceof ResourceExhaustedError);
      assert.equal(batch[0]!.error.retryAfterMs, 1000);
    } finally {
      client.close();
      await d.close();
    }
  });
});

/** For before(): whether to start anything (the tests themselves report the skip or failure). */
function haveJobdQuiet(): boolean {
  try {
    return haveJobd({ skip() {} } as never);
  } catch {
    return false;
  }
}


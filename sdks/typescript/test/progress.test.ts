// Conformance scenario progress_logs: a handler's ctx.progress() and
// ctx.log() reach jobd, a watcher sees the progress between RUNNING and
// SUCCEEDED, and client.logs() returns the lines (paged, and followed to
// the end). The bounds are checked in the SDK (RangeError in the handler),
// so the session is never ended by INVALID_ARGUMENT.

import assert from "node:assert/strict";
import { test } from "node:test";
import {
  Client,
  decodeJson,
  decodeText,
  MAX_CHECKPOINT_BYTES,
  RetryAfter,
  Worker,
  type JobContext,
  type JobEvent,
  type LogLine,
} from "jobd";
import { HEAD, KINDS, haveJobd, sleep, startDaemon, until } from "./helpers.js";

/** A promise with its resolve function. */
function deferred<T>(): { promise: Promise<T>; resolve: (v: T) => void } {
  let resolve!: (v: T) => void;
  const promise = new Promise<T>((r) => (resolve = r));
  return { promise, resolve };
}

async function collect<T>(it: AsyncIterable<T>): Promise<T[]> {
  const out: T[] = [];
  for await (const x of it) out.push(x);
  return out;
}

/** Runs `f` and returns what it threw. */
function thrown(f: () => void): unknown {
  try {
    f();
  } catch (e) {
    return e;
  }
  return undefined;
}

// More than the daemon's coalescing (200 ms) and the SDK's (100 ms): each step is stored.
const STEP_MS = 350;

test("progress_logs", async (t) => {
  if (!haveJobd(t)) return;
  const d = await startDaemon();
  const client = new Client({ address: d.address });
  const warnings: string[] = [];
  const worker = new Worker({
    address: d.address,
    maxInFlight: 4,
    handleSignals: false,
    log: (level, m) => void (level !== "info" && warnings.push(m)),
  });
  const watching = new Map<string, ReturnType<typeof deferred<void>>>();
  const gate = (id: string) => {
    if (!watching.has(id)) watching.set(id, deferred<void>());
    return watching.get(id)!;
  };
  const refused: unknown[] = [];
  const contexts: JobContext[] = [];
  worker.handle("ts", async (ctx) => {
    contexts.push(ctx);
    if (ctx.text() === "bulk") {
      // 2,500 lines in one call: sent as three Log messages (1,000 at most each).
      ctx.log(Array.from({ length: 2500 }, (_, i) => `bulk ${i + 1}`).join("\n") + "\n");
      return "bulk done";
    }
    await gate(ctx.id).promise;
    ctx.progress(10, "starting");
    ctx.log("line one");
    await sleep(STEP_MS);
    ctx.progress(40, "half", { step: 2, of: 3 });
    ctx.log("multi\nline", "third\r\n");
    await sleep(STEP_MS);
    // A burst: coalesced (SDK 100 ms, jobd 200 ms), the latest value kept.
    for (let p = 41; p <= 70; p++) ctx.progress(p, `burst ${p}`);
    await sleep(STEP_MS);
    // Out of bounds: thrown here, nothing sent, the session lives on.
    for (const bad of [
      () => ctx.progress(101),
      () => ctx.progress(-1),
      () => ctx.progress(Number.NaN),
      () => ctx.progress(50, "m".repeat(257)),
      () => ctx.progress(50, "é".repeat(129)),
      () => ctx.progress(50, "", new Uint8Array(4097)),
      () => ctx.log("ok", "x".repeat(4097)),
    ]) {
      refused.push(thrown(bad));
    }
    ctx.progress(90, "nearly", "text details");
    await sleep(STEP_MS);
    ctx.log("last line");
    return "done";
  });
  const running = worker.run();
  try {
    await until("the worker to connect", () => worker.connected);
    const job = await client.submit("ts", "work");

    // A watcher and a log follower, both open before the handler writes
    // anything (bounded: a session ended by jobd fails the test, not hangs it).
    const events: JobEvent[] = [];
    const stopWatching = new AbortController();
    running.catch((e: unknown) => stopWatching.abort(e));
    const signal = AbortSignal.any([stopWatching.signal, AbortSignal.timeout(30_000)]);
    const watched = (async () => {
      for await (const ev of client.watch(job.id, { signal })) {
        events.push(ev);
        gate(job.id).resolve();
      }
    })();
    const followed = collect(client.logs(job.id, { follow: true, signal }));
    const [, followedLines] = await Promise.all([watched, followed]);
    const done = await client.get(job.id);
    assert.equal(done.state, "SUCCEEDED", done.lastError);
    assert.equal(done.attempt, 1, "the session was never ended by a refused message");
    assert.equal(decodeText(done.result), "done");

    // Every bad call threw RangeError, with a clear message.
    assert.equal(refused.length, 7);
    for (const e of refused) assert.ok(e instanceof RangeError, `RangeError, not ${String(e)}`);
    assert.match((refused[0] as Error).message, /percent must be a number from 0 to 100, not 101/);
    assert.match((refused[3] as Error).message, /message is 257 bytes .* at most 256/);
    assert.match((refused[4] as Error).message, /message is 258 bytes/);
    assert.match((refused[5] as Error).message, /details are 4097 bytes, at most 4096/);
    assert.match((refused[6] as Error).message, /line 2 is 4097 bytes .* at most 4096/);

    // The watcher: RUNNING, then RUNNING with progress (increasing), then SUCCEEDED.
    const states = events.map((e) => e.job.state);
    const firstRunning = states.indexOf("RUNNING");
    const terminal = states.indexOf("SUCCEEDED");
    assert.ok(firstRunning >= 0 && terminal === states.length - 1, states.join(","));
    const withProgress = events.map((e, i) => ({ i, e })).filter(({ e }) => e.job.progress !== undefined);
    const during = withProgress.filter(({ e }) => e.job.state === "RUNNING");
    assert.ok(during.length >= 3, `progress events while RUNNING: ${during.length}`);
    for (const { i } of during) assert.ok(i > firstRunning && i < terminal);
    for (const { e } of withProgress) assert.notEqual(e.job.state, "QUEUED");
    const percents = during.map(({ e }) => e.job.progress!.percent);
    for (let i = 1; i < percents.length; i++) assert.ok(percents[i]! > percents[i - 1]!, `increasing: ${percents.join(",")}`);
    assert.equal(percents[0], 10);
    assert.ok(percents.includes(40), percents.join(","));
    assert.ok(percents.includes(70), `the burst's last value is kept: ${percents.join(",")}`);
    assert.ok(percents.length <= 3 + 30 && !percents.includes(101), percents.join(","));
    assert.equal(percents[percents.length - 1], 90);
    for (let i = 1; i < events.length; i++) assert.ok(events[i]!.sequence > events[i - 1]!.sequence);
    const half = during.find(({ e }) => e.job.progress!.percent === 40)!.e.job.progress!;
    assert.equal(half.message, "half");
    assert.deepEqual(decodeJson(half.details), { step: 2, of: 3 });
    assert.ok(half.updatedAt instanceof Date);

    // Job.progress is kept after the end.
    assert.equal(done.progress?.percent, 90);
    assert.equal(done.progress?.message, "nearly");
    assert.equal(decodeText(done.progress!.details), "text details");
    assert.equal((await client.submit("echo", "x")).progress, undefined);

    // client.logs: the lines, split on line breaks, with their attempt, in order.
    const expected = ["line one", "multi", "line", "third", "last line"];
    const lines = await collect(client.logs(job.id));
    assert.deepEqual(
      lines.map((l) => l.text),
      expected,
    );
    for (const l of lines) {
      assert.equal(l.attempt, 1);
      assert.ok(l.time instanceof Date && Math.abs(l.time.getTime() - Date.now()) < 60_000);
    }
    for (let i = 1; i < lines.length; i++) assert.ok(lines[i]!.seq > lines[i - 1]!.seq);
    // Paged with `after`.
    const rest = await collect(client.logs(job.id, { after: lines[1]!.seq, pageSize: 2 }));
    assert.deepEqual(
      rest.map((l) => l.text),
      expected.slice(2),
    );
    // follow: true saw the same lines as they came, and ended after the terminal state.
    assert.deepEqual(followedLines, lines);
    // Following a finished job: its whole log, then the end.
    assert.deepEqual(await collect(client.logs(job.id, { follow: true })), lines);
    assert.deepEqual(await collect(client.logs(job.id, { follow: true, after: lines[3]!.seq })), lines.slice(4));

    // After the attempt ended, progress and log do nothing (and do not throw).
    const ended = contexts.find((c) => c.id === job.id)!;
    ended.progress(100, "late");
    ended.log("late line");
    await sleep(300);
    assert.equal((await client.get(job.id)).progress?.percent, 90);
    assert.deepEqual(
      (await collect(client.logs(job.id))).map((l) => l.text),
      expected,
    );
    // ...but a bad value still throws.
    assert.throws(() => ended.progress(200), RangeError);

    // 2,500 lines in one call: split into messages of 1,000; jobd keeps the newest 1,000.
    const bulk = await client.wait((await client.submit("ts", "bulk")).id, { timeoutMs: 20_000 });
    assert.equal(bulk.state, "SUCCEEDED", bulk.lastError);
    assert.equal(bulk.attempt, 1, "no Log message was refused");
    const kept: LogLine[] = await collect(client.logs(bulk.id, { pageSize: 300 }));
    assert.equal(kept.length, 1000);
    assert.equal(kept[0]!.text, "bulk 1501");
    assert.equal(kept[999]!.text, "bulk 2500");
    assert.ok(worker.connected);
    assert.deepEqual(warnings, [], "one session all along");
  } finally {
    try {
      await worker.stop({ force: true });
      await running; // a session jobd refused is the failure to report
    } finally {
      client.close();
      await d.close();
    }
  }
});

// ctx.touch(): a handler that outlives its 1 s timeout by touching every
// 500 ms (each pushing the deadline 2 s from now, under max_timeout 10 s)
// is not stopped; the job succeeds on its one attempt.
test("touch_extends_deadline", async (t) => {
  if (!haveJobd(t)) return;
  const config =
    HEAD + KINDS + '\n[kinds."ts.touch"]\nhandler = "remote"\ntimeout = "1s"\nmax_timeout = "10s"\nmax_attempts = 1\n';
  const d = await startDaemon({ config });
  const client = new Client({ address: d.address });
  const worker = new Worker({ address: d.address, maxInFlight: 2, handleSignals: false, log: () => {} });
  const deadlines: (Date | null)[] = [];
  const refused: unknown[] = [];
  let initial: Date | undefined;
  let ended: JobContext | undefined;
  worker.handle("ts.touch", async (ctx) => {
    ended = ctx;
    initial = ctx.deadline;
    refused.push(thrown(() => void ctx.touch({ extendByMs: -1 })));
    const began = Date.now();
    while (Date.now() - began < 2500) {
      deadlines.push(await ctx.touch({ extendByMs: 2000 }));
      await sleep(500);
    }
    return "touched";
  });
  const running = worker.run();
  try {
    await until("the worker to connect", () => worker.connected);
    const job = await client.submit("ts.touch", "x");
    const done = await client.wait(job.id, { timeoutMs: 20_000 });
    assert.equal(done.state, "SUCCEEDED", done.lastError);
    assert.equal(done.attempt, 1);
    assert.equal(decodeText(done.result), "touched");
    assert.ok(refused[0] instanceof RangeError, `RangeError, not ${String(refused[0])}`);
    assert.ok(initial instanceof Date);
    assert.ok(deadlines.length >= 4, `touches: ${deadlines.length}`);
    for (const dl of deadlines) assert.ok(dl instanceof Date, "no touch was stale");
    const first = deadlines[0]!;
    const last = deadlines[deadlines.length - 1]!;
    assert.ok(first.getTime() > initial!.getTime(), `first touch ${first.toISOString()} after ${initial!.toISOString()}`);
    assert.ok(last.getTime() > first.getTime(), `last ${last.toISOString()} later than first ${first.toISOString()}`);
    assert.equal(ended!.deadline?.getTime(), last.getTime(), "ctx.deadline follows the touches");
    // After the attempt ended: null, nothing sent.
    assert.equal(await ended!.touch({ extendByMs: 1000 }), null);
    assert.ok(worker.connected);
  } finally {
    try {
      await worker.stop({ force: true });
      await running;
    } finally {
      client.close();
      await d.close();
    }
  }
});

// ctx.touch({ checkpoint }) against jobd: 64 KiB is kept, a byte more
// throws before anything is sent (the session lives on), the ack resolves
// the touch, a touch with only a checkpoint leaves the deadline where it
// was, checkpointSize follows the last checkpoint saved, and the next
// attempt gets it as ctx.checkpoint.
test("checkpoint_next_attempt", async (t) => {
  if (!haveJobd(t)) return;
  const d = await startDaemon();
  const client = new Client({ address: d.address });
  const warnings: string[] = [];
  const worker = new Worker({
    address: d.address,
    maxInFlight: 1,
    handleSignals: false,
    log: (level, m) => void (level !== "info" && warnings.push(m)),
  });
  const text = "half way é";
  const seen: {
    first?: Uint8Array;
    second?: Uint8Array;
    refused?: unknown;
    sizes?: number[];
    deadlines?: (Date | null | undefined)[];
    ctx?: JobContext;
  } = {};
  worker.handle("ts", async (ctx) => {
    if (ctx.attempt === 1) {
      seen.first = ctx.checkpoint;
      seen.ctx = ctx;
      seen.refused = thrown(() => void ctx.touch({ checkpoint: new Uint8Array(MAX_CHECKPOINT_BYTES + 1) }));
      const before = ctx.deadline;
      const big = await ctx.touch({ checkpoint: new Uint8Array(MAX_CHECKPOINT_BYTES).fill(120) });
      const bigSize = (await client.get(ctx.id)).checkpointSize;
      const small = await ctx.touch({ checkpoint: text });
      const smallSize = (await client.get(ctx.id)).checkpointSize;
      seen.sizes = [bigSize, smallSize];
      seen.deadlines = [before, big, small, ctx.deadline];
      throw new RetryAfter("resume from the checkpoint", 100);
    }
    seen.second = ctx.checkpoint;
    return ctx.checkpoint;
  });
  const running = worker.run();
  try {
    await until("the worker to connect", () => worker.connected);
    const done = await client.wait((await client.submit("ts", "x")).id, { timeoutMs: 20_000 });
    assert.equal(done.state, "SUCCEEDED", done.lastError);
    assert.equal(done.attempt, 2);
    assert.equal(seen.first, undefined, "the first attempt has no checkpoint");
    assert.equal(decodeText(seen.second!), text);
    assert.equal(decodeText(done.result), text);
    assert.ok(seen.refused instanceof RangeError, `RangeError, not ${String(seen.refused)}`);
    assert.deepEqual(seen.sizes, [MAX_CHECKPOINT_BYTES, Buffer.byteLength(text)]);
    const [before, big, small, kept] = seen.deadlines!;
    assert.ok(before instanceof Date && big instanceof Date && small instanceof Date, "both checkpoints were kept");
    assert.equal(kept?.getTime(), small.getTime(), "ctx.deadline follows the ack");
    assert.ok(Math.abs(small.getTime() - before.getTime()) < 1000, "a checkpoint alone does not move the deadline");
    // After the attempt ended: null, nothing sent.
    assert.equal(await seen.ctx!.touch({ checkpoint: "late" }), null);
    assert.ok(worker.connected);
    assert.deepEqual(warnings, [], "one session all along: the oversized checkpoint never reached jobd");
  } finally {
    try {
      await worker.stop({ force: true });
      await running;
    } finally {
      client.close();
      await d.close();
    }
  }
});

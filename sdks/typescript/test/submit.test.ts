// Conformance scenario dedup_and_deadlines (tests/sdk/conformance.txt):
// dedup modes and start deadlines through the SDK, against a real jobd.
// No worker connects to this file's daemon, so its `ts.slow` jobs stay
// QUEUED at attempt 0: they hold their dedup key and never start.

import assert from "node:assert/strict";
import { existsSync } from "node:fs";
import { after, before, describe, test } from "node:test";
import { Client, InvalidArgumentError, type SubmittedJob } from "jobd";
import { Daemon, haveJobd, JOBD_BIN, sleep, startDaemon } from "./helpers.js";

const IDLE = "ts.slow";

describe("dedup and start deadlines against a real jobd", () => {
  let d: Daemon | undefined;
  let client: Client;

  before(async () => {
    if (!existsSync(JOBD_BIN)) return; // each test skips (or fails under CI) with haveJobd
    d = await startDaemon();
    client = new Client({ address: d.address });
  });

  after(async () => {
    client?.close();
    await d?.close();
  });

  test("dedup_and_deadlines", async (t) => {
    if (!haveJobd(t)) return;
    // KEEP (the default): the job holding the key, unchanged.
    const first = await client.submit(IDLE, "one", { dedup: { key: "keep-1" } });
    assert.equal(first.dedupOutcome, "created");
    assert.equal(first.deduplicated, false);
    assert.equal(first.dedupKey, "keep-1");
    const kept = await client.submit(IDLE, "other", { dedup: { key: "keep-1", mode: "keep" } });
    assert.equal(kept.id, first.id);
    assert.equal(kept.dedupOutcome, "kept");
    assert.equal(kept.deduplicated, true);
    assert.equal(kept.payloadSize, 3, "KEEP leaves the payload as it was");
    const plain = await client.submit(IDLE, "one");
    assert.equal(plain.dedupOutcome, undefined);
    assert.equal(plain.dedupKey, "");

    // REPLACE: same id, the new payload and labels.
    const r1 = await client.submit(IDLE, "a", { labels: { v: "1" }, dedup: { key: "rep", mode: "replace" } });
    const r2 = await client.submit(IDLE, "bbbb", { labels: { v: "2" }, dedup: { key: "rep", mode: "replace" } });
    assert.equal(r2.id, r1.id);
    assert.equal(r2.dedupOutcome, "replaced");
    assert.equal(r2.deduplicated, false);
    assert.equal(r2.payloadSize, 4);
    assert.deepEqual(r2.labels, { v: "2" });

    // DEBOUNCE: merges; the start moves to the last submit + window, never
    // past the first submit + maxWait.
    const deb = (windowMs: number) => ({ key: "deb", mode: "debounce" as const, windowMs, maxWaitMs: 40_000 });
    const t0 = Date.now();
    const d1 = await client.submit(IDLE, "1", { dedup: deb(30_000) });
    assert.equal(d1.dedupOutcome, "created");
    assert.ok(d1.nextAttemptAt && d1.nextAttemptAt.getTime() >= t0 + 29_000, String(d1.nextAttemptAt));
    await sleep(300);
    const d2 = await client.submit(IDLE, "22", { dedup: deb(30_000) });
    assert.equal(d2.id, d1.id);
    assert.equal(d2.dedupOutcome, "debounced");
    assert.equal(d2.payloadSize, 2);
    assert.ok(d2.nextAttemptAt! > d1.nextAttemptAt!, "the start moved");
    const d3 = await client.submit(IDLE, "3", { dedup: deb(120_000) });
    assert.equal(d3.id, d1.id);
    assert.equal(d3.dedupOutcome, "debounced");
    assert.ok(d3.nextAttemptAt!.getTime() <= d3.createdAt!.getTime() + 40_000, "maxWait caps it");

    // Bad dedups: refused by jobd, naming the field.
    const refused = async (p: Promise<SubmittedJob>, field: string) =>
      assert.rejects(p, (e: unknown) => {
        assert.ok(e instanceof InvalidArgumentError, String(e));
        assert.equal(e.field, field);
        return true;
      });
    await refused(client.submit(IDLE, "", { dedup: { key: "" } }), "dedup.key");
    await refused(client.submit(IDLE, "", { dedup: { key: "k", mode: "debounce" } }), "dedup.window");
    await refused(client.submit(IDLE, "", { dedup: { key: "k", windowMs: 1000 } }), "dedup.window");
    await refused(client.submit(IDLE, "", { startBefore: new Date(Date.now() - 10_000) }), "start_before");

    // startWithinMs sets startBefore on the job; startBefore is echoed.
    const t1 = Date.now();
    const w = await client.submit(IDLE, "", { startWithinMs: 60_000 });
    assert.ok(w.startBefore, "startBefore is set");
    assert.ok(w.startBefore.getTime() >= t1 + 59_000 && w.startBefore.getTime() <= Date.now() + 61_000);
    const when = new Date(Math.floor(Date.now() / 1000) * 1000 + 300_000);
    const b = await client.submit(IDLE, "", { startBefore: when });
    assert.deepEqual(b.startBefore, when);
    assert.deepEqual((await client.get(b.id)).startBefore, when);
    assert.equal((await client.submit(IDLE, "")).startBefore, undefined);

    // A job not started by its deadline ends FAILED, expired.
    const expiring = await client.submit(IDLE, "", { startWithinMs: 300 });
    const done = await client.wait(expiring.id, { timeoutMs: 20_000 });
    assert.equal(done.state, "FAILED");
    assert.equal(done.attempt, 0);
    assert.match(done.lastError, /^expired/);
  });

  test("dedup and deadlines in a batch", async (t) => {
    if (!haveJobd(t)) return;
    const [first, merged, bad, deadline] = await client.submitBatch([
      { kind: IDLE, payload: "a", dedup: { key: "batch-k" } },
      { kind: IDLE, payload: "b", dedup: { key: "batch-k" } },
      { kind: IDLE, payload: "c", dedup: { key: "" } },
      { kind: IDLE, payload: "d", startWithinMs: 60_000 },
    ]);
    assert.ok(first?.ok && merged?.ok && bad && !bad.ok && deadline?.ok);
    assert.equal(first.dedupOutcome, "created");
    assert.equal(merged.dedupOutcome, "kept");
    assert.equal(merged.deduplicated, true);
    assert.equal(merged.job.id, first.job.id);
    assert.ok(bad.error instanceof InvalidArgumentError);
    assert.equal(bad.error.field, "requests[2].dedup.key");
    assert.equal(deadline.dedupOutcome, undefined);
    assert.ok(deadline.job.startBefore instanceof Date);
  });
});

test("client-side checks of dedup (no daemon)", async () => {
  // Nothing listens here: these fail before any call is made.
  const c = new Client({ address: "127.0.0.1:1" });
  try {
    await assert.rejects(
      // @ts-expect-error: an unknown mode
      c.submit("k", "", { dedup: { key: "k", mode: "discard" } }),
      (e: unknown) => e instanceof TypeError && /dedup.mode/.test(e.message),
    );
    await assert.rejects(
      // @ts-expect-error: a key that is not a string
      c.submit("k", "", { dedup: { key: 7 } }),
      TypeError,
    );
  } finally {
    c.close();
  }
});

// Conformance scenario fairness_key (tests/sdk/conformance.txt): fair
// claiming's key through the SDK, against a real jobd. A `fairness =
// "round_robin"` kind claims key by key, so one key's flood does not hold
// back another key's job.

import assert from "node:assert/strict";
import { test } from "node:test";
import { Client, InvalidArgumentError, Worker, type SubmittedJob } from "jobd";
import { haveJobd, HEAD, KINDS, startDaemon } from "./helpers.js";

// One start at a time, so the claim order is the run order.
const FAIR = `
[kinds."ts.fair"]
handler = "remote"
concurrency = 1
timeout = "60s"
max_attempts = 1
fairness = "round_robin"
`;

/** No worker handles it here: its jobs stay QUEUED. */
const IDLE = "ts.slow";

const refused = async (p: Promise<SubmittedJob>, field: string) =>
  assert.rejects(p, (e: unknown) => {
    assert.ok(e instanceof InvalidArgumentError, String(e));
    assert.equal(e.field, field);
    return true;
  });

test("fairness_key", async (t) => {
  if (!haveJobd(t)) return;
  const d = await startDaemon({ config: HEAD + KINDS + FAIR });
  const client = new Client({ address: d.address });
  const worker = new Worker({ address: d.address, maxInFlight: 1, handleSignals: false });
  let running: Promise<void> | undefined;
  try {
    // Stored and read back; without one, the ordering key; else "".
    const flood: SubmittedJob[] = [];
    for (let i = 0; i < 4; i++) flood.push(await client.submit("ts.fair", `flood-${i}`, { fairnessKey: "tenant-a" }));
    const late = await client.submit("ts.fair", "late", { fairnessKey: "tenant-b" });
    assert.deepEqual(
      flood.map((j) => j.fairnessKey),
      ["tenant-a", "tenant-a", "tenant-a", "tenant-a"],
    );
    assert.equal(late.fairnessKey, "tenant-b");
    assert.equal((await client.get(late.id)).fairnessKey, "tenant-b");
    const byOrder = await client.submit(IDLE, "", { orderingKey: "tenant-c" });
    assert.equal(byOrder.fairnessKey, "tenant-c");
    const both = await client.submit(IDLE, "", { orderingKey: "stream-1", fairnessKey: "tenant-d" });
    assert.equal(both.fairnessKey, "tenant-d");
    assert.equal(both.orderingKey, "stream-1");
    assert.equal((await client.submit(IDLE, "")).fairnessKey, "");

    // Bad keys: refused by jobd, naming the field.
    await refused(client.submit(IDLE, "", { fairnessKey: "a\u0000b" }), "fairness_key");
    await refused(client.submit(IDLE, "", { fairnessKey: "k".repeat(257) }), "fairness_key");
    assert.equal((await client.submit(IDLE, "", { fairnessKey: "k".repeat(256) })).fairnessKey.length, 256);

    // The claims rotate over the keys: tenant-b's job, submitted after
    // tenant-a's four, is among the first two to run (in submit order it
    // would be the last).
    const order: string[] = [];
    worker.handle("ts.fair", (ctx) => {
      order.push(ctx.id);
      return "ok";
    });
    running = worker.run();
    for (const j of [...flood, late]) {
      assert.equal((await client.wait(j.id, { timeoutMs: 20_000 })).state, "SUCCEEDED");
    }
    assert.equal(order.length, 5);
    assert.ok(order.indexOf(late.id) <= 1, JSON.stringify(order));
  } finally {
    await worker.stop({ force: true });
    await running;
    client.close();
    await d.close();
  }
});

test("fairness key in a batch", async (t) => {
  if (!haveJobd(t)) return;
  const d = await startDaemon();
  const client = new Client({ address: d.address });
  try {
    const [ok, bad, byOrder] = await client.submitBatch([
      { kind: IDLE, payload: "a", fairnessKey: "tenant-1" },
      { kind: IDLE, payload: "b", fairnessKey: "nul\u0000" },
      { kind: IDLE, payload: "c", orderingKey: "tenant-2" },
    ]);
    assert.ok(ok?.ok && bad && !bad.ok && byOrder?.ok);
    assert.equal(ok.job.fairnessKey, "tenant-1");
    assert.ok(bad.error instanceof InvalidArgumentError);
    assert.equal(bad.error.field, "requests[1].fairness_key");
    assert.equal(byOrder.job.fairnessKey, "tenant-2");
  } finally {
    client.close();
    await d.close();
  }
});

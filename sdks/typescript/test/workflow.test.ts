// Conformance scenario of workflows: workflow_fan_in; and a child WAITING
// until its parent finishes, the graph, a parent's failure cascading and its
// repair.

import assert from "node:assert/strict";
import { randomUUID } from "node:crypto";
import { test } from "node:test";
import {
  Client,
  decodeJson,
  decodeText,
  DeadlineExceededError,
  InvalidArgumentError,
  NotFoundError,
  Permanent,
  Worker,
  type BatchEntry,
  type Job,
  type ParentResult,
} from "jobd";
import { haveJobd, startDaemon, until } from "./helpers.js";

/** A promise with its resolve function. */
function deferred(): { promise: Promise<void>; resolve: () => void } {
  let resolve!: () => void;
  const promise = new Promise<void>((r) => (resolve = r));
  return { promise, resolve };
}

const N = 5;

test("workflow_fan_in", async (t) => {
  // A batch of N parents and a callback depending on all of them ($N
  // references, onDependencyFailure "run"): the callback's handler receives
  // every parent's result in ctx.parents, in dependsOn order (a failed
  // parent's state too), and runs once, after the last parent.
  if (!haveJobd(t)) return;
  const d = await startDaemon();
  const client = new Client({ address: d.address });
  const worker = new Worker({ address: d.address, maxInFlight: 8, handleSignals: false });
  const last = deferred(); // holds the last parent until the test lets it go
  const returned: string[] = []; // parents whose handler returned (or threw)
  const calls: { id: string; parents: readonly ParentResult[]; before: string[] }[] = [];
  worker.handle("ts.parent", async (ctx) => {
    assert.deepEqual(ctx.parents, []);
    const { i } = ctx.json<{ i: number }>();
    try {
      if (i === N - 1) await last.promise;
      if (i === 1) throw new Permanent("parent 1 fails");
      return { i, square: i * i };
    } finally {
      returned.push(ctx.id);
    }
  });
  worker.handle("ts.child", (ctx) => {
    calls.push({ id: ctx.id, parents: ctx.parents, before: [...returned] });
    const sum = ctx.parents
      .filter((p) => p.state === "SUCCEEDED")
      .reduce((s, p) => s + p.json<{ square: number }>()!.square, 0);
    return { sum, n: ctx.parents.length };
  });
  const running = worker.run();
  try {
    // The callback names its parents in an order of its own: ctx.parents follows it.
    const order = [3, 0, 4, 1, 2];
    const entries: BatchEntry[] = Array.from({ length: N }, (_, i) => ({
      kind: "ts.parent",
      payload: { i },
      labels: { batch: "b1" },
    }));
    entries.push({
      kind: "ts.child",
      payload: "callback",
      labels: { batch: "b1", role: "callback" },
      dependsOn: order.map((i) => `$${i}`),
      onDependencyFailure: "run",
    });
    const results = await client.submitBatch(entries);
    assert.ok(
      results.every((r) => r.ok),
      results.map((r) => r.error?.message).join(", "),
    );
    const ids = results.slice(0, N).map((r) => r.job!.id);
    const cb = results[N]!.job!;
    assert.equal(cb.state, "WAITING");
    assert.deepEqual(cb.parentIds, order.map((i) => ids[i]));
    assert.equal(cb.waitingOn, N);
    assert.equal(cb.onDependencyFailure, "run");
    for (const r of results.slice(0, N)) {
      assert.deepEqual(r.job!.parentIds, []);
      assert.equal(r.job!.onDependencyFailure, undefined);
    }

    // Every parent but the last finished: the callback still waits, on one.
    await until("the first parents to finish", async () => {
      const jobs = await Promise.all(ids.slice(0, N - 1).map((id) => client.get(id)));
      return jobs.every((j) => ["SUCCEEDED", "FAILED"].includes(j.state));
    });
    const held = await client.get(cb.id);
    assert.equal(held.state, "WAITING");
    assert.equal(held.waitingOn, 1);
    assert.equal(calls.length, 0);
    last.resolve();

    const done = await client.wait(cb.id, { timeoutMs: 30_000 });
    assert.equal(done.state, "SUCCEEDED", done.lastError);
    assert.deepEqual(decodeJson(done.result), { sum: 0 + 4 + 9 + 16, n: N });
    assert.equal(done.attempt, 1);
    assert.deepEqual(
      done.attempts.map((a) => a.outcome),
      ["succeeded"],
    );
    const parents = new Map<string, Job>();
    for (const id of ids) parents.set(id, await client.get(id));
    const lastFinish = Math.max(...[...parents.values()].map((p) => p.finishedAt!.getTime()));
    assert.ok(done.startedAt!.getTime() >= lastFinish, "the callback started after the last parent finished");

    // Ran once, after every parent's handler had returned, with every result.
    assert.equal(calls.length, 1);
    const call = calls[0]!;
    assert.equal(call.id, cb.id);
    assert.deepEqual([...call.before].sort(), [...ids].sort());
    assert.deepEqual(
      call.parents.map((p) => p.id),
      order.map((i) => ids[i]),
    );
    call.parents.forEach((p, k) => {
      const i = order[k]!;
      assert.equal(p.kind, "ts.parent");
      assert.equal(p.resultOmitted, false);
      if (i === 1) {
        assert.equal(p.state, "FAILED");
        assert.equal(p.result.length, 0);
        assert.equal(p.json(), undefined);
      } else {
        assert.equal(p.state, "SUCCEEDED");
        assert.deepEqual(p.json(), { i, square: i * i });
        assert.deepEqual(p.result, parents.get(ids[i]!)!.result);
      }
    });
    // The batch is one label away: list filters by it.
    const listed: string[] = [];
    for await (const j of client.list({ labels: { batch: "b1" } })) listed.push(j.id);
    assert.deepEqual(listed.sort(), [...ids, cb.id].sort());
  } finally {
    last.resolve();
    await worker.stop({ force: true });
    await running;
    client.close();
    await d.close();
  }
});

test("workflow_waiting_and_graph", async (t) => {
  // A child is WAITING (not finished: wait() goes on) until its parent
  // finishes, then runs with the parent's result; graph() returns the jobs
  // and edges; a parent's failure cancels its children down the graph, and
  // retrying repairs it.
  if (!haveJobd(t)) return;
  const d = await startDaemon();
  const client = new Client({ address: d.address });
  const worker = new Worker({ address: d.address, maxInFlight: 8, handleSignals: false });
  const gates = { hold: deferred(), fail: deferred() };
  let failedOnce = false;
  const seen = new Map<string, readonly ParentResult[]>();
  worker.handle("ts.parent", async (ctx) => {
    const which = ctx.text() as keyof typeof gates;
    await gates[which].promise;
    if (which === "fail" && !failedOnce) {
      failedOnce = true;
      throw new Permanent("parent failed");
    }
    return { from: ctx.id };
  });
  worker.handle("ts.child", (ctx, payload) => {
    seen.set(ctx.id, ctx.parents);
    return payload;
  });
  const running = worker.run();
  try {
    const p = await client.submit("ts.parent", "hold");
    const c = await client.submit("ts.child", "child", { dependsOn: [p] }); // a job, or its id
    const g = await client.submit("ts.child", "grandchild", { dependsOn: [c.id], onDependencyFailure: "run" });
    assert.equal(c.state, "WAITING");
    assert.equal(c.waitingOn, 1);
    assert.deepEqual(c.parentIds, [p.id]);
    assert.equal(c.onDependencyFailure, "cancel", "the default");
    assert.equal(g.state, "WAITING");
    assert.deepEqual(g.parentIds, [c.id]);
    assert.equal(g.onDependencyFailure, "run");
    await until("the parent to run", async () => (await client.get(p.id)).state === "RUNNING");

    // WAITING is not terminal: wait() goes on until its timeout.
    await assert.rejects(client.wait(c.id, { timeoutMs: 500 }), DeadlineExceededError);
    const waiting: string[] = [];
    for await (const j of client.list({ state: "WAITING" })) waiting.push(j.id);
    assert.deepEqual(waiting.sort(), [c.id, g.id].sort());

    // The graph around the child: its parent and its child.
    const graph = await client.graph(c.id);
    assert.equal(graph.jobs[0]!.id, c.id);
    assert.deepEqual(graph.jobs.map((j) => j.id).sort(), [p.id, c.id, g.id].sort());
    assert.deepEqual(
      graph.edges.map((e) => `${e.parent}>${e.child}`).sort(),
      [`${p.id}>${c.id}`, `${c.id}>${g.id}`].sort(),
    );
    assert.equal(graph.truncated, false);
    assert.equal(graph.jobs.find((j) => j.id === g.id)!.state, "WAITING");
    assert.equal(graph.jobs.find((j) => j.id === p.id)!.state, "RUNNING");
    // One step down from the parent: the grandchild is left out.
    const shallow = await client.graph(p.id, { depth: 1 });
    assert.deepEqual(
      shallow.jobs.map((j) => j.id),
      [p.id, c.id],
    );
    assert.deepEqual(shallow.edges, [{ parent: p.id, child: c.id }]);
    assert.equal(shallow.truncated, true);
    await assert.rejects(client.graph(randomUUID()), NotFoundError);

    // The parent finishes: the child runs, with its result; then the grandchild.
    gates.hold.resolve();
    assert.equal((await client.wait(g.id, { timeoutMs: 30_000 })).state, "SUCCEEDED");
    assert.equal((await client.get(c.id)).state, "SUCCEEDED");
    const [pr] = seen.get(c.id)!;
    assert.deepEqual([pr!.id, pr!.kind, pr!.state, pr!.json()], [p.id, "ts.parent", "SUCCEEDED", { from: p.id }]);
    const [cr] = seen.get(g.id)!;
    assert.equal(cr!.id, c.id);
    assert.equal(cr!.text(), "child");
    assert.equal(decodeText(cr!.result), "child");

    // A parent's failure cancels its children (the default), and theirs.
    const f = await client.submit("ts.parent", "fail");
    const x = await client.submit("ts.child", "x", { dependsOn: [f.id] });
    const y = await client.submit("ts.child", "y", { dependsOn: [x.id] });
    gates.fail.resolve();
    const xDone = await client.wait(x.id, { timeoutMs: 30_000 });
    assert.equal(xDone.state, "CANCELLED");
    assert.match(xDone.lastError, new RegExp(f.id));
    assert.equal((await client.wait(y.id, { timeoutMs: 30_000 })).state, "CANCELLED");
    assert.equal((await client.get(f.id)).state, "FAILED");
    assert.ok(!seen.has(x.id) && !seen.has(y.id));

    // Retry the failed step, then what it cancelled: the pipeline is repaired.
    for (const job of [f, x, y]) assert.equal((await client.retry({ ids: [job.id] })).retried, 1);
    assert.equal((await client.wait(y.id, { timeoutMs: 30_000 })).state, "SUCCEEDED");
    assert.equal((await client.get(x.id)).state, "SUCCEEDED");
    assert.equal(seen.get(x.id)![0]!.id, f.id);

    // dependsOn errors: an unknown parent, a "$N" that is not an earlier entry.
    await assert.rejects(client.submit("ts.child", "", { dependsOn: [randomUUID()] }), InvalidArgumentError);
    const [bad] = await client.submitBatch([{ kind: "ts.child", dependsOn: ["$0"] }]);
    assert.ok(!bad!.ok && bad!.error instanceof InvalidArgumentError);
    await assert.rejects(client.submit("ts.child", "", { dependsOn: p.id as unknown as string[] }), TypeError);
    await assert.rejects(
      client.submit("ts.child", "", { dependsOn: [p.id], onDependencyFailure: "ignore" as "run" }),
      TypeError,
    );
  } finally {
    gates.hold.resolve();
    gates.fail.resolve();
    await worker.stop({ force: true });
    await running;
    client.close();
    await d.close();
  }
});

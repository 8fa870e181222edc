// Checks that need no daemon: every conformance scenario has a test, the
// committed generated code is current, and the small pure parts behave.

import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { readdirSync, readFileSync, statSync } from "node:fs";
import { join, relative } from "node:path";
import { test } from "node:test";
import { create, toBinary, type DescMessage, type MessageInitShape } from "@bufbuild/protobuf";
import { durationFromMs } from "@bufbuild/protobuf/wkt";
import { Code, ConnectError } from "@connectrpc/connect";
import {
  AlreadyExistsError,
  Client,
  decodeJson,
  decodeText,
  encodePayload,
  InvalidArgumentError,
  JobContext,
  MAX_CHECKPOINT_BYTES,
  Permanent,
  pb,
  JobdError,
  ResourceExhaustedError,
  toJobdError,
  UnavailableError,
  UnknownError,
} from "jobd";
import { BadRequestSchema, ErrorInfoSchema, RetryInfoSchema } from "jobd/gen/google/rpc/error_details_pb.js";
import { need, PKG, REPO, tempDir } from "./helpers.js";

const CONFORMANCE = join(REPO, "tests/sdk/conformance.txt");

function files(dir: string): string[] {
  return readdirSync(dir).flatMap((f) => {
    const p = join(dir, f);
    return statSync(p).isDirectory() ? files(p) : [p];
  });
}

test("every conformance scenario has a test of its name", (t) => {
  if (!need(t, CONFORMANCE, statSafe(CONFORMANCE), "run from a jobd checkout")) return;
  const scenarios = readFileSync(CONFORMANCE, "utf8")
    .split("\n")
    .map((l) => l.trim())
    .filter((l) => l !== "" && !l.startsWith("#"));
  assert.ok(scenarios.length >= 10, "the list is read");
  const names = new Set<string>();
  for (const f of files(join(PKG, "test")).filter((f) => f.endsWith(".test.ts"))) {
    for (const m of readFileSync(f, "utf8").matchAll(/\btest\(\s*"([^"]+)"/g)) names.add(m[1]!);
  }
  const missing = scenarios.filter((s) => !names.has(s));
  assert.deepEqual(missing, [], `scenarios of ${CONFORMANCE} without a test of that name`);
});

test("the committed generated code is current (npm run generate)", () => {
  const tmp = tempDir("jobd-ts-gen-");
  try {
    execFileSync(process.execPath, [join(PKG, "scripts/generate.mjs"), "--out", tmp.dir], { stdio: "pipe" });
    const committed = join(PKG, "src/gen");
    const list = (d: string) => files(d).map((f) => relative(d, f)).sort();
    assert.deepEqual(list(tmp.dir), list(committed), "the same files");
    for (const f of list(committed)) {
      assert.ok(
        readFileSync(join(tmp.dir, f)).equals(readFileSync(join(committed, f))),
        `src/gen/${f} is stale: run npm run generate`,
      );
    }
  } finally {
    tmp.remove();
  }
});

test("payloads: bytes as given, strings as UTF-8, the rest as JSON", () => {
  const bytes = new Uint8Array([0, 1, 255]);
  assert.equal(encodePayload(bytes), bytes);
  assert.equal(decodeText(encodePayload(Buffer.from("hé"))), "hé");
  assert.equal(decodeText(encodePayload("hé")), "hé");
  assert.deepEqual(decodeJson(encodePayload({ a: [1, "x"] })), { a: [1, "x"] });
  assert.equal(decodeText(encodePayload(42)), "42");
  assert.equal(decodeText(encodePayload(null)), "null");
  assert.equal(encodePayload(undefined).length, 0);
});

test("errors: the class and details come from grpc-status-details-bin", () => {
  // Details as the wire carries them: type name and encoded message.
  const detail = <D extends DescMessage>(desc: D, init: MessageInitShape<D>) => ({
    type: desc.typeName,
    value: toBinary(desc, create(desc, init)),
  });
  const received = (message: string, code: Code, details: ReturnType<typeof detail>[]) => {
    const e = new ConnectError(message, code);
    e.details.push(...details);
    return e;
  };
  const bad = toJobdError(
    received("invalid request", Code.InvalidArgument, [
      detail(BadRequestSchema, { fieldViolations: [{ field: "kind", description: "unknown kind" }] }),
    ]),
  );
  assert.ok(bad instanceof InvalidArgumentError);
  assert.equal(bad.field, "kind");
  assert.equal(bad.code, "INVALID_ARGUMENT");
  assert.equal(bad.message, "INVALID_ARGUMENT: invalid request");
  assert.equal(bad.rawMessage, "invalid request");
  const full = toJobdError(
    received("full", Code.ResourceExhausted, [
      detail(RetryInfoSchema, { retryDelay: durationFromMs(1500) }),
    ]),
  );
  assert.ok(full instanceof ResourceExhaustedError);
  assert.equal(full.retryAfterMs, 1500);
  const dup = toJobdError(
    received("dup", Code.AlreadyExists, [
      detail(ErrorInfoSchema, { reason: "R", metadata: { job_id: "j1" } }),
    ]),
  );
  assert.ok(dup instanceof AlreadyExistsError);
  assert.equal(dup.existingId, "j1");
  assert.ok(toJobdError(new Error("x")) instanceof UnknownError);
});

test("connection options: address forms and their checks", () => {
  const c1 = new Client({ address: "127.0.0.1:1" });
  assert.equal(c1.address, "http://127.0.0.1:1");
  c1.close();
  const c2 = new Client({ address: "example.invalid:443", tls: true });
  assert.equal(c2.address, "https://example.invalid:443");
  c2.close();
  assert.throws(() => new Client({ address: "http://127.0.0.1:1", tls: {} }), TypeError);
  assert.throws(() => new Client({ address: "127.0.0.1:1", tls: { cert: "-----BEGIN CERTIFICATE-----" } }), TypeError);
  assert.ok(UnavailableError.prototype instanceof JobdError);
});

test("ctx.progress and ctx.log: checked, split and handed to the attempt", () => {
  const sent: { progress: unknown[]; log: string[][][] } = { progress: [], log: [] };
  const assign = create(pb.AssignSchema, { job: { id: "j", kind: "k", attempt: 2 } });
  const ctx = new JobContext(assign, new AbortController().signal, {
    progress: (p) => sent.progress.push(p),
    log: (b) => sent.log.push(b),
    touch: async () => null,
  });
  assert.throws(() => ctx.touch({ extendByMs: -1 }), RangeError);
  ctx.progress(12.9);
  ctx.progress(100, "done", { a: 1 });
  assert.equal(sent.progress.length, 2);
  assert.deepEqual(sent.progress[0], { percent: 12, message: "", details: new Uint8Array(0) });
  assert.deepEqual(decodeJson((sent.progress[1] as { details: Uint8Array }).details), { a: 1 });
  ctx.progress(0, "m".repeat(256), new Uint8Array(4096));
  for (const bad of [-0.5, 100.5, Number.NaN, Infinity]) assert.throws(() => ctx.progress(bad), RangeError);
  assert.throws(() => ctx.progress(1, "ü".repeat(129)), /message is 258 bytes/);
  assert.throws(() => ctx.progress(1, "", "x".repeat(4097)), /details are 4097 bytes/);
  assert.equal(sent.progress.length, 3);

  ctx.log();
  assert.equal(sent.log.length, 0);
  ctx.log("a\r\nb\n", "", "c\n\nd");
  assert.deepEqual(sent.log.pop(), [["a", "b", "", "c", "", "d"]]);
  ctx.log(Array.from({ length: 2500 }, (_, i) => String(i)).join("\n"));
  assert.deepEqual(
    sent.log.pop()!.map((b) => [b.length, b[0]]),
    [
      [1000, "0"],
      [1000, "1000"],
      [500, "2000"],
    ],
  );
  ctx.log("x".repeat(4096));
  assert.throws(() => ctx.log("ok", "€".repeat(1366)), /line 2 is 4098 bytes/);
  assert.equal(sent.log.length, 1, "nothing of a refused call is sent");
});

test("ctx.touch and ctx.checkpoint: options checked, handed to the attempt", async () => {
  const sent: [number | undefined, Uint8Array | undefined][] = [];
  const when = new Date("2030-01-01T00:00:00Z");
  const assign = create(pb.AssignSchema, { job: { id: "j", kind: "k", attempt: 2 }, checkpoint: new Uint8Array([1, 2]) });
  const ctx = new JobContext(assign, new AbortController().signal, {
    progress: () => {},
    log: () => {},
    touch: async (ms, checkpoint) => {
      sent.push([ms, checkpoint]);
      return checkpoint?.length === 1 ? null : when; // a one-byte checkpoint: "stale" here
    },
  });
  assert.deepEqual(ctx.checkpoint, new Uint8Array([1, 2]));
  const none = new JobContext(create(pb.AssignSchema, { job: { id: "j", kind: "k", attempt: 1 } }), new AbortController().signal);
  assert.equal(none.checkpoint, undefined, "an empty Assign.checkpoint is no checkpoint");

  assert.equal((await ctx.touch({ extendByMs: 1500.7 }))?.getTime(), when.getTime());
  assert.equal(ctx.deadline?.getTime(), when.getTime(), "ctx.deadline follows the ack");
  assert.equal(await ctx.touch(), when, "a plain sign of life");
  await ctx.touch({ checkpoint: "hé" });
  await ctx.touch({ extendByMs: 10, checkpoint: new Uint8Array(MAX_CHECKPOINT_BYTES) });
  assert.equal(await ctx.touch({ checkpoint: new Uint8Array(1) }), null, "stale: resolves null, never rejects");
  assert.deepEqual(
    sent.map(([ms, c]) => [ms, c?.length]),
    [
      [1500, undefined],
      [undefined, undefined],
      [undefined, 3],
      [10, 65536],
      [undefined, 1],
    ],
  );
  assert.equal(decodeText(sent[2]![1]!), "hé");

  const n = sent.length;
  assert.equal(MAX_CHECKPOINT_BYTES, 64 * 1024);
  assert.throws(() => ctx.touch({ checkpoint: new Uint8Array(MAX_CHECKPOINT_BYTES + 1) }), /checkpoint is 65537 bytes, at most 65536/);
  assert.throws(() => ctx.touch({ checkpoint: "é".repeat(MAX_CHECKPOINT_BYTES / 2 + 1) }), RangeError);
  assert.throws(() => ctx.touch({ extendByMs: 5, checkpoint: Buffer.alloc(70_000) }), RangeError);
  assert.throws(() => ctx.touch({ checkpoint: 42 as unknown as string }), TypeError);
  assert.throws(() => ctx.touch({ extendByMs: Number.NaN }), RangeError);
  assert.equal(sent.length, n, "nothing of a refused touch is sent");
  // A context without a session (after the attempt ended): null, nothing sent.
  assert.equal(await none.touch({ checkpoint: "x" }), null);
});

test("ctx.parents: Assign.parents in depends_on order, typed, with decoders", () => {
  const assign = create(pb.AssignSchema, {
    job: { id: "c", kind: "k", attempt: 1, parentIds: ["p2", "p1", "p3"] },
    parents: [
      { id: "p2", kind: "a", state: pb.JobState.FAILED },
      { id: "p1", kind: "b", state: pb.JobState.SUCCEEDED, result: encodePayload({ n: 1 }) },
      { id: "p3", kind: "b", state: pb.JobState.SUCCEEDED, resultOmitted: true },
    ],
  });
  const ctx = new JobContext(assign, new AbortController().signal);
  assert.deepEqual(
    ctx.parents.map((p) => [p.id, p.kind, p.state, p.resultOmitted]),
    [
      ["p2", "a", "FAILED", false],
      ["p1", "b", "SUCCEEDED", false],
      ["p3", "b", "SUCCEEDED", true],
    ],
  );
  assert.equal(ctx.parents[0]!.json(), undefined, "an empty result");
  assert.deepEqual(ctx.parents[1]!.json<{ n: number }>(), { n: 1 });
  assert.equal(ctx.parents[1]!.text(), '{"n":1}');
  assert.throws(() => ctx.parents[2]!.json(), /client\.get/);
  const bad = new JobContext(
    create(pb.AssignSchema, { job: { id: "c" }, parents: [{ id: "p", result: encodePayload("not json") }] }),
    new AbortController().signal,
  );
  assert.throws(() => bad.parents[0]!.json(), Permanent);
  const none = new JobContext(create(pb.AssignSchema, { job: { id: "j", kind: "k", attempt: 1 } }), new AbortController().signal);
  assert.deepEqual(none.parents, []);
});

function statSafe(p: string): boolean {
  try {
    return statSync(p).isFile();
  } catch {
    return false;
  }
}

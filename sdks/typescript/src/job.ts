// Plain, typed job objects (no protobuf classes, no bigint): what users read.

import { durationMs, timestampDate, type Timestamp } from "@bufbuild/protobuf/wkt";
import * as pb from "./gen/jobd/v1/jobd_pb.js";

/**
 * A job's state by name: `"WAITING"` (parents not finished), `"QUEUED"`,
 * `"RUNNING"`, `"RETRY_WAIT"`, `"SUCCEEDED"`, `"FAILED"`, `"CANCELLED"`
 * (`"UNSPECIFIED"` for a state this SDK does not know).
 */
export type JobState = keyof typeof pb.JobState;

/**
 * What a job with parents does when one ends FAILED or CANCELLED: `"cancel"`
 * (the default: it is CANCELLED too, and so on down the graph) or `"run"`
 * (it runs once every parent is terminal, whatever their outcome).
 */
export type DependencyFailure = "cancel" | "run";

/**
 * What a submit's `dedup` does when a job of the kind that has not started
 * holds its key: `"keep"` (the default: that job, unchanged), `"replace"`
 * (it takes the new payload, labels and run_at) or `"debounce"` (replace,
 * and it runs `windowMs` after the last submit, capped by `maxWaitMs`).
 */
export type DedupMode = "keep" | "replace" | "debounce";

/**
 * What a submit's `dedup` did: `"created"` (no job held the key: a new
 * one), `"kept"` (the job holding it, unchanged), `"replaced"` or
 * `"debounced"` (that job, updated: same id, one more `sequence`).
 */
export type DedupOutcome = "created" | "kept" | "replaced" | "debounced";

/** States a job never leaves. */
export const TERMINAL_STATES: ReadonlySet<JobState> = new Set(["SUCCEEDED", "FAILED", "CANCELLED"]);

/** Whether a job has finished (SUCCEEDED, FAILED or CANCELLED). */
export function isTerminal(job: Pick<Job, "state">): boolean {
  return TERMINAL_STATES.has(job.state);
}

/** A snapshot of one job. */
export interface Job {
  /** Time-ordered id (UUIDv7). */
  id: string;
  kind: string;
  state: JobState;
  /** The current or last attempt; 0 before the first one starts. */
  attempt: number;
  /** Attempts allowed in all, including the first. */
  maxAttempts: number;
  priority: number;
  /** The idempotency key given at submit, or `""`. */
  idempotencyKey: string;
  labels: Record<string, string>;
  createdAt: Date | undefined;
  updatedAt: Date | undefined;
  startedAt: Date | undefined;
  finishedAt: Date | undefined;
  /** Not before then does the next attempt start (delayed or RETRY_WAIT jobs). */
  nextAttemptAt: Date | undefined;
  /** Error of the last failed attempt, or `""`. */
  lastError: string;
  /** Output of the successful attempt (empty until SUCCEEDED). */
  result: Uint8Array;
  /** True when `result` is only the first part of the stored result. */
  resultTruncated: boolean;
  payloadSize: number;
  /** Per-attempt timeout in effect. */
  timeoutMs: number | undefined;
  orderingKey: string;
  traceparent: string;
  /** How far the job got, as its worker last said (`ctx.progress`); `undefined` until it does. Kept after the job ends. */
  progress: JobProgress | undefined;
  /** Size in bytes of the checkpoint an attempt saved (`ctx.touch({ checkpoint })`), handed to the next attempt; 0 for none. */
  checkpointSize: number;
  /** The jobs this one depends on (`dependsOn`), in that order; empty for none. */
  parentIds: string[];
  /** How many of them have not finished yet (WAITING while above 0). */
  waitingOn: number;
  /** `"cancel"` or `"run"` for a job with parents; `undefined` for a job without. */
  onDependencyFailure: DependencyFailure | undefined;
  /** The job's last 25 ended attempts, oldest first: where each ran and how it ended. */
  attempts: JobAttempt[];
  /**
   * Its start deadline (`startBefore`, `startWithinMs`, or the kind's
   * `start_within`): not started by then, it ends FAILED ("expired: …").
   * `undefined` for none.
   */
  startBefore: Date | undefined;
  /** Its `dedup.key`, or `""`. Held while the job has not started. */
  dedupKey: string;
  /** The key a `fairness = "round_robin"` kind's claims rotate over: the submit's `fairnessKey`, else its `orderingKey`, else `""`. */
  fairnessKey: string;
}

/** One ended attempt of a job (`job.attempts`). */
export interface JobAttempt {
  attempt: number;
  startedAt: Date | undefined;
  finishedAt: Date | undefined;
  /**
   * `"succeeded"`, `"failed"` (no retry), `"retried"`, `"lost"` (lease or
   * daemon), `"cancelled"` or `"requeued"` (drain; the attempt did not count).
   */
  outcome: string;
  /** The attempt's error (at most 1 KiB kept), or `""`. */
  error: string;
  /** Where it ran: a remote worker's workerId, `"local"` for the daemon's own handlers, `""` when unknown. */
  worker: string;
}

/** `child` depends on `parent`. */
export interface JobEdge {
  parent: string;
  child: string;
}

/** A job's neighbourhood in the dependency graph, from `client.graph`. */
export interface JobGraph {
  /** The job asked for first, then the others in the order found. */
  jobs: Job[];
  /** Every edge between the jobs here, sorted. */
  edges: JobEdge[];
  /** The bound (depth, or 1,000 jobs) left some jobs out. */
  truncated: boolean;
}

/** One parent's outcome, as its child's attempt receives it (`ctx.parents`). */
export interface ParentResult {
  id: string;
  kind: string;
  /** Terminal: SUCCEEDED, or FAILED / CANCELLED for a child submitted with `onDependencyFailure: "run"`. */
  state: JobState;
  /** The parent's result (empty unless SUCCEEDED, or when omitted). */
  result: Uint8Array;
  /**
   * The result was not inlined: an attempt receives at most 1 MiB of its
   * parents' results in all. Read it with `client.get(id)`.
   */
  resultOmitted: boolean;
  /**
   * The result parsed as JSON; `undefined` when it is empty (a parent that
   * did not succeed, or returned nothing). Throws when the result was
   * omitted, and (Permanent) when it is not JSON.
   */
  json<T = unknown>(): T | undefined;
  /** The result as UTF-8 text (throws when it was omitted). */
  text(): string;
}

/** A job's progress, as its worker last reported it (jobd stores at most one value per job every 200 ms). */
export interface JobProgress {
  /** 0..=100. */
  percent: number;
  /** At most 256 bytes, or `""`. */
  message: string;
  /** At most 4 KiB, opaque (JSON by convention: `decodeJson(progress.details)`); empty for none. */
  details: Uint8Array;
  /** When jobd stored it. */
  updatedAt: Date | undefined;
}

/** One line of a job's log, from `client.logs`. */
export interface LogLine {
  /** Increases per job (gaps where old lines were pruned); pass the last one as `after` to resume. */
  seq: number;
  /** The attempt that wrote it. */
  attempt: number;
  /** When jobd received it. */
  time: Date;
  text: string;
}

/** One step of a job's life, from `client.watch`. */
export interface JobEvent {
  /** The job after the change. */
  job: Job;
  /** Increases with every change of this job; pass it as `afterSequence` to resume. */
  sequence: number;
}

/** What a job's payload or a handler's result may be given as. */
export type Payload = Uint8Array | string | object | number | boolean | null | undefined;

const utf8 = new TextEncoder();
const fromUtf8 = new TextDecoder();

/** Bytes as given; a string as UTF-8; anything else as JSON (`undefined`: empty). */
export function encodePayload(p: Payload): Uint8Array {
  if (p instanceof Uint8Array) return p;
  if (p === undefined) return new Uint8Array(0);
  if (typeof p === "string") return utf8.encode(p);
  if (ArrayBuffer.isView(p)) return new Uint8Array(p.buffer, p.byteOffset, p.byteLength);
  if (p instanceof ArrayBuffer) return new Uint8Array(p);
  return utf8.encode(JSON.stringify(p));
}

/** Bytes (a result, a payload) as UTF-8 text. */
export function decodeText(bytes: Uint8Array): string {
  return fromUtf8.decode(bytes);
}

/** Bytes (a result, a payload) parsed as JSON. */
export function decodeJson<T = unknown>(bytes: Uint8Array): T {
  return JSON.parse(fromUtf8.decode(bytes)) as T;
}

function date(t: Timestamp | undefined): Date | undefined {
  return t ? timestampDate(t) : undefined;
}

/** The state's name for a wire value (new values regenerate with the proto). */
export function stateName(s: pb.JobState): JobState {
  return (pb.JobState[s] as JobState | undefined) ?? "UNSPECIFIED";
}

/** A state name as the wire value; `undefined` for none. */
export function stateValue(s: JobState | undefined): pb.JobState {
  if (s === undefined) return pb.JobState.UNSPECIFIED;
  const v = pb.JobState[s];
  if (v === undefined) throw new TypeError(`unknown job state ${JSON.stringify(s)}`);
  return v;
}

/** A dependency-failure option as the wire value; `undefined`: unset (the default, cancel). */
export function dependencyFailureValue(d: DependencyFailure | undefined): pb.DependencyFailure {
  switch (d) {
    case undefined:
      return pb.DependencyFailure.UNSPECIFIED;
    case "cancel":
      return pb.DependencyFailure.CANCEL;
    case "run":
      return pb.DependencyFailure.RUN;
    default:
      throw new TypeError(`onDependencyFailure must be "cancel" or "run", not ${JSON.stringify(d)}`);
  }
}

/** A dedup mode as the wire value; `undefined`: unset (KEEP). */
export function dedupModeValue(m: DedupMode | undefined): pb.DedupMode {
  switch (m) {
    case undefined:
    case "keep":
      return pb.DedupMode.KEEP;
    case "replace":
      return pb.DedupMode.REPLACE;
    case "debounce":
      return pb.DedupMode.DEBOUNCE;
    default:
      throw new TypeError(`dedup.mode must be "keep", "replace" or "debounce", not ${JSON.stringify(m)}`);
  }
}

/** A SubmitResponse's dedup outcome; `undefined` for a submit without dedup (or an outcome this SDK does not know). */
export function dedupOutcomeName(o: pb.DedupOutcome): DedupOutcome | undefined {
  switch (o) {
    case pb.DedupOutcome.CREATED:
      return "created";
    case pb.DedupOutcome.KEPT:
      return "kept";
    case pb.DedupOutcome.REPLACED:
      return "replaced";
    case pb.DedupOutcome.DEBOUNCED:
      return "debounced";
    default:
      return undefined;
  }
}

function dependencyFailureName(d: pb.DependencyFailure, hasParents: boolean): DependencyFailure | undefined {
  if (d === pb.DependencyFailure.RUN) return "run";
  // Unset with parents: the default.
  if (d === pb.DependencyFailure.CANCEL || hasParents) return "cancel";
  return undefined;
}

/** A generated JobAttempt message as a plain object. */
export function attemptFromProto(a: pb.JobAttempt): JobAttempt {
  return {
    attempt: a.attempt,
    startedAt: date(a.startedAt),
    finishedAt: date(a.finishedAt),
    outcome: a.outcome,
    error: a.error,
    worker: a.worker,
  };
}

/** A generated GetJobGraphResponse as a plain object. */
export function graphFromProto(g: pb.GetJobGraphResponse): JobGraph {
  return {
    jobs: g.jobs.map(fromProto),
    edges: g.edges.map((e) => ({ parent: e.parent, child: e.child })),
    truncated: g.truncated,
  };
}

/** A generated Job message as a plain object. */
export function fromProto(j: pb.Job): Job {
  return {
    id: j.id,
    kind: j.kind,
    state: stateName(j.state),
    attempt: j.attempt,
    maxAttempts: j.maxAttempts,
    priority: j.priority,
    idempotencyKey: j.idempotencyKey,
    labels: { ...j.labels },
    createdAt: date(j.createdAt),
    updatedAt: date(j.updatedAt),
    startedAt: date(j.startedAt),
    finishedAt: date(j.finishedAt),
    nextAttemptAt: date(j.nextAttemptAt),
    lastError: j.lastError,
    result: j.result,
    resultTruncated: j.resultTruncated,
    payloadSize: Number(j.payloadSize),
    timeoutMs: j.timeout ? durationMs(j.timeout) : undefined,
    orderingKey: j.orderingKey,
    traceparent: j.traceparent,
    progress: j.progress
      ? {
          percent: j.progress.percent,
          message: j.progress.message,
          details: j.progress.details,
          updatedAt: date(j.progress.updatedAt),
        }
      : undefined,
    checkpointSize: Number(j.checkpointSize),
    parentIds: [...j.parentIds],
    waitingOn: j.waitingOn,
    onDependencyFailure: dependencyFailureName(j.onDependencyFailure, j.parentIds.length > 0),
    attempts: j.attempts.map(attemptFromProto),
    startBefore: date(j.startBefore),
    dedupKey: j.dedupKey,
    fairnessKey: j.fairnessKey,
  };
}

/** A generated LogLine message as a plain object. */
export function logLineFromProto(l: pb.LogLine): LogLine {
  return { seq: Number(l.seq), attempt: l.attempt, time: l.time ? timestampDate(l.time) : new Date(0), text: l.text };
}

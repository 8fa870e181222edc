// The client: submit jobs, read and follow them, cancel and retry them.

import { create } from "@bufbuild/protobuf";
import { durationFromMs, timestampDate, timestampFromDate, timestampFromMs } from "@bufbuild/protobuf/wkt";
import { createClient, type Client as ConnectClient } from "@connectrpc/connect";
import { connect, type Connection, type ConnectionOptions } from "./connection.js";
import {
  CancelledError,
  DeadlineExceededError,
  JobdError,
  statusToError,
  toJobdError,
} from "./errors.js";
import * as pb from "./gen/jobd/v1/jobd_pb.js";
import {
  dedupModeValue,
  dedupOutcomeName,
  dependencyFailureValue,
  encodePayload,
  fromProto,
  graphFromProto,
  isTerminal,
  logLineFromProto,
  stateValue,
  type DedupMode,
  type DedupOutcome,
  type DependencyFailure,
  type Job,
  type JobEvent,
  type JobGraph,
  type JobState,
  type LogLine,
  type Payload,
} from "./job.js";
import { sleep, backoffMs } from "./util.js";

/** Options of a Client: where to connect, and how hard to retry. */
export interface ClientOptions extends ConnectionOptions {
  /**
   * How many times `submit` and `submitBatch` try again after
   * RESOURCE_EXHAUSTED, each after the server's RetryInfo delay (default 3;
   * 0 never retries).
   */
  resourceExhaustedRetries?: number;
  /** The longest RetryInfo delay waited for; a longer one is cut to this (default 30 s). */
  maxRetryDelayMs?: number;
}

/** Per-call options. */
export interface CallOptions {
  /** Aborts the call (it then rejects with CancelledError). */
  signal?: AbortSignal;
  /** Deadline of the call (it then rejects with DeadlineExceededError). */
  timeoutMs?: number;
}

/**
 * A submit's deduplication over the kind's jobs that have not started
 * (QUEUED, delayed or WAITING): the job holding `key` takes the submit, as
 * `mode` says (default `"keep"`). No job holding it: a new one (which
 * `"debounce"` delays by `windowMs` too). jobd checks the bounds and names
 * the field of a bad one (InvalidArgumentError, `field` `"dedup.key"`).
 */
export interface DedupOptions {
  /** Required, 1..=256 bytes, no NUL. */
  key: string;
  mode?: DedupMode;
  /** `"debounce"` only, required there: the job runs this long after the last submit. */
  windowMs?: number;
  /** `"debounce"` only: never later than this long after the job's first submit. */
  maxWaitMs?: number;
}

/** How a job is submitted; every field is optional. */
export interface SubmitOptions {
  /** Aborts the call (it then rejects with CancelledError). */
  signal?: AbortSignal;
  /** Idempotency key (at most 256 bytes): the same key and request return the same job. */
  key?: string;
  /** Higher runs first (default 0). */
  priority?: number;
  /** Do not start before this many milliseconds from now. */
  delayMs?: number;
  /** Do not start before this time (wins over `delayMs`). */
  runAt?: Date;
  labels?: Record<string, string>;
  /** Jobs with one ordering key run in submit order when the kind sets key_concurrency. */
  orderingKey?: string;
  /** Attempts in all, 1..=100 (default: the kind's). */
  maxAttempts?: number;
  /** Per-attempt timeout (default: the kind's). */
  timeoutMs?: number;
  /**
   * Jobs this one waits for (WAITING until every one is terminal; its
   * attempts receive their results as `ctx.parents`): job ids (or jobs),
   * or in `submitBatch` `"$N"` for the batch's entry N (0-based, below this
   * entry's own index). An unknown id or a bad `"$N"` is InvalidArgumentError.
   */
  dependsOn?: ReadonlyArray<string | Pick<Job, "id">>;
  /**
   * When a parent ends FAILED or CANCELLED: `"cancel"` (default: this job is
   * CANCELLED too, and so on down the graph) or `"run"` (it runs once every
   * parent is terminal, whatever their outcome: a "finally" callback).
   */
  onDependencyFailure?: DependencyFailure;
  /**
   * Start deadline, this many milliseconds from now: a job not started by
   * then ends FAILED ("expired: …") and never starts late (`job.startBefore`).
   */
  startWithinMs?: number;
  /** Start deadline as a time (wins over `startWithinMs`). */
  startBefore?: Date;
  /** Merge into the kind's job that holds this key and has not started; `dedupOutcome` says what happened. */
  dedup?: DedupOptions;
  /**
   * The key a `fairness = "round_robin"` kind's claims rotate over (e.g. a
   * tenant; at most 256 bytes, no NUL); default: `orderingKey`.
   */
  fairnessKey?: string;
  /** W3C trace context handed to every attempt. */
  traceparent?: string;
  tracestate?: string;
  /** Overrides the client's `resourceExhaustedRetries` for this call. */
  retries?: number;
}

/** A job as submitted. */
export interface SubmittedJob extends Job {
  /** True when an earlier job was returned unchanged: the same key and request, or a dedup `"keep"`. */
  deduplicated: boolean;
  /** What `dedup` did; `undefined` for a submit without it. */
  dedupOutcome: DedupOutcome | undefined;
}

/** One entry of `submitBatch`. */
export interface BatchEntry extends Omit<SubmitOptions, "signal" | "retries" | "traceparent" | "tracestate"> {
  kind: string;
  payload?: Payload;
}

/** What `submitBatch` answers for one entry, at the same index. */
export type BatchResult =
  | { ok: true; job: Job; deduplicated: boolean; dedupOutcome: DedupOutcome | undefined; error?: undefined }
  | { ok: false; error: JobdError; job?: undefined; deduplicated?: undefined; dedupOutcome?: undefined };

/** Which jobs `list` returns; every field is optional. */
export interface ListFilter {
  kind?: string;
  state?: JobState;
  orderingKey?: string;
  /** Jobs carrying every one of these labels. */
  labels?: Record<string, string>;
  /** Oldest first (default) or newest first. */
  order?: "oldest" | "newest";
  /** Jobs per page, 1..=1000 (default 100). */
  pageSize?: number;
}

/** One page of `listPage`. */
export interface JobPage {
  jobs: Job[];
  /** Pass it as `pageToken` for the next page; `""` after the last one. */
  nextPageToken: string;
}

/** Options of `watch`. */
export interface WatchOptions {
  signal?: AbortSignal;
  /** Resume after this sequence (the last one seen); 0 starts with a snapshot. */
  afterSequence?: number;
  /**
   * Times the stream is opened again (from the last sequence seen) after it
   * broke with UNAVAILABLE, e.g. a daemon restart (default 5; 0 never).
   */
  reconnects?: number;
}

/** Options of `logs`. */
export interface LogsOptions {
  signal?: AbortSignal;
  /** Lines after this `seq` (the last one seen); 0 (default) from the first line kept. */
  after?: number;
  /**
   * Follow the log (WatchLogs): lines as they are written, ending once the
   * job is terminal and every line was sent. Default false: the lines
   * there are now, page after page (GetLogs), then the end.
   */
  follow?: boolean;
  /** Lines per GetLogs page, 1..=1000 (default 1000). */
  pageSize?: number;
  /**
   * With `follow`: times the stream is opened again (after the last line
   * seen) when it broke with UNAVAILABLE (default 5; 0 never).
   */
  reconnects?: number;
}

/** Options of `graph`. */
export interface GraphOptions extends CallOptions {
  /** Steps up and down from the job, at most 10 (unset or 0: jobd's default, 3). */
  depth?: number;
}

/** Options of `wait`. */
export interface WaitOptions {
  signal?: AbortSignal;
  /** Give up (DeadlineExceededError) after this long; default: no limit. */
  timeoutMs?: number;
}

/** One change of `watchJobs`. */
export interface JobChange {
  job: Job;
  /** Pass it as `after` to resume. */
  position: number;
}

/** Which finished jobs `retry` puts back to QUEUED. */
export type RetryTarget =
  | { ids: string[] }
  | {
      state: "FAILED" | "CANCELLED";
      kind?: string;
      labels?: Record<string, string>;
      finishedAfter?: Date;
      finishedBefore?: Date;
    };

/** What `retry` did. */
export interface RetryOutcome {
  matched: number;
  retried: number;
  ids: string[];
  skipped: { id: string; reason: string }[];
  /** More jobs matched than the limit: call again. */
  more: boolean;
}

/** One connected worker session, from `listWorkers`. */
export interface WorkerSession {
  sessionId: string;
  workerId: string;
  kinds: string[];
  /** Jobs assigned and not yet reported. */
  inFlight: number;
  maxInFlight: number;
  connectedAt: Date | undefined;
  /** Its last message. */
  lastSeen: Date | undefined;
  /** The peer address jobd sees. */
  address: string;
  labels: Record<string, string>;
}

/**
 * A connection to jobd's JobService (and AdminService for `retry`). Every
 * method rejects with a JobdError subclass. Close it with `close()` (or
 * `await using`).
 */
export class Client {
  private readonly conn: Connection;
  private readonly jobs: ConnectClient<typeof pb.JobService>;
  private readonly admin: ConnectClient<typeof pb.AdminService>;
  private readonly retries: number;
  private readonly maxRetryDelayMs: number;

  constructor(options: ClientOptions = {}) {
    this.conn = connect(options);
    this.jobs = createClient(pb.JobService, this.conn.transport);
    this.admin = createClient(pb.AdminService, this.conn.transport);
    this.retries = options.resourceExhaustedRetries ?? 3;
    this.maxRetryDelayMs = options.maxRetryDelayMs ?? 30_000;
  }

  /** The daemon's URL this client talks to. */
  get address(): string {
    return this.conn.baseUrl;
  }

  /**
   * Submits one job. The payload is bytes, a string (UTF-8) or anything
   * else as JSON. Resolves once the job is durable. RESOURCE_EXHAUSTED is
   * retried after the server's RetryInfo delay (`retries` times at most);
   * the request is built once, so a retried `delayMs` keeps its `run_at`.
   */
  async submit(kind: string, payload?: Payload, options: SubmitOptions = {}): Promise<SubmittedJob> {
    const req = submitRequest(kind, payload, options);
    const headers = traceHeaders(options);
    const res = await this.withRetry({ signal: options.signal, retries: options.retries }, (o) =>
      this.jobs.submit(req, { ...o, headers }),
    );
    const dedupOutcome = dedupOutcomeName(res.dedupOutcome);
    return { ...fromProto(res.job!), deduplicated: res.deduplicated, dedupOutcome };
  }

  /**
   * Submits up to the daemon's batch limit (default 1000) of jobs in one
   * call and one store commit. Each entry is answered on its own, in order:
   * `{ ok: true, job }` or `{ ok: false, error }`. A RESOURCE_EXHAUSTED of the
   * whole call is retried like `submit`'s.
   *
   * An entry's `dependsOn` may name an earlier entry as `"$N"` (its 0-based
   * index), so a whole graph goes in one atomic call: e.g. parents, then a
   * callback `{ kind: "report", dependsOn: ["$0", "$1"], onDependencyFailure: "run" }`.
   * A later entry's `dedup` merges into an earlier entry holding the same key.
   */
  async submitBatch(entries: BatchEntry[], options: CallOptions & { retries?: number } = {}): Promise<BatchResult[]> {
    const requests = entries.map((e) => submitRequest(e.kind, e.payload, e));
    const res = await this.withRetry(options, (o) => this.jobs.submitBatch({ requests }, o));
    return res.results.map((r): BatchResult => {
      if (r.result.case === "accepted") {
        const a = r.result.value;
        const dedupOutcome = dedupOutcomeName(a.dedupOutcome);
        return { ok: true, job: fromProto(a.job!), deduplicated: a.deduplicated, dedupOutcome };
      }
      const status = r.result.case === "error" ? r.result.value : undefined;
      return {
        ok: false,
        error: status ? statusToError(status) : new JobdError("UNKNOWN", { message: "empty result" }),
      };
    });
  }

  /** The job's current snapshot. */
  async get(id: string, options: CallOptions = {}): Promise<Job> {
    const res = await call(() => this.jobs.getStatus({ id }, options));
    return fromProto(res.job!);
  }

  /**
   * The job's ancestors and descendants (`dependsOn` edges), up to `depth`
   * steps each way (default 3, at most 10), at most 1,000 jobs: `jobs` (the
   * job first), `edges` (`{ parent, child }`), `truncated`. Rejects with
   * NotFoundError when there is no such job.
   */
  async graph(id: string, options: GraphOptions = {}): Promise<JobGraph> {
    const depth = options.depth ?? 0;
    if (!Number.isInteger(depth) || depth < 0) throw new RangeError(`graph depth must be an integer, at least 0, not ${depth}`);
    const res = await call(() =>
      this.jobs.getJobGraph({ id, depth }, { signal: options.signal, timeoutMs: options.timeoutMs }),
    );
    return graphFromProto(res);
  }

  /**
   * Every change of the job, in order: first its current snapshot, then one
   * event per change; ends after a terminal state. A stream broken by
   * UNAVAILABLE is opened again from the last sequence seen (no event is
   * repeated; a gap means the daemon coalesced a slow watcher's steps).
   */
  async *watch(id: string, options: WatchOptions = {}): AsyncGenerator<JobEvent, void, undefined> {
    let after = options.afterSequence ?? 0;
    const reconnects = options.reconnects ?? 5;
    let failures = 0;
    for (;;) {
      try {
        const stream = this.jobs.watchStatus({ id, afterSequence: BigInt(after) }, { signal: options.signal });
        for await (const ev of stream) {
          failures = 0;
          const sequence = Number(ev.sequence);
          if (sequence <= after && after !== 0) continue;
          after = sequence;
          yield { job: fromProto(ev.job!), sequence };
        }
        return;
      } catch (e) {
        const err = abortAware(e, options.signal);
        if (err.code !== "UNAVAILABLE" || failures >= reconnects || options.signal?.aborted) throw err;
        await sleep(backoffMs(failures++, 200, 5_000), options.signal).catch(() => {
          throw abortAware(options.signal?.reason, options.signal);
        });
      }
    }
  }

  /**
   * Follows the job until it is terminal and returns that snapshot
   * (SUCCEEDED, FAILED or CANCELLED: check `state`; a WAITING job is not
   * finished, it goes on waiting for its parents). Rejects with
   * DeadlineExceededError after `timeoutMs`.
   */
  async wait(id: string, options: WaitOptions = {}): Promise<Job> {
    const ctl = new AbortController();
    const onAbort = () => ctl.abort(options.signal?.reason);
    options.signal?.addEventListener("abort", onAbort, { once: true });
    let timedOut = false;
    const timer =
      options.timeoutMs === undefined
        ? undefined
        : setTimeout(() => {
            timedOut = true;
            ctl.abort();
          }, options.timeoutMs);
    try {
      for (;;) {
        let last: Job | undefined;
        for await (const ev of this.watch(id, { signal: ctl.signal })) {
          last = ev.job;
          if (isTerminal(last)) return last;
        }
        // The stream ended without a terminal snapshot: read it.
        last = await this.get(id, { signal: ctl.signal });
        if (isTerminal(last)) return last;
      }
    } catch (e) {
      if (timedOut) {
        throw new DeadlineExceededError({ message: `job ${id} did not finish within ${options.timeoutMs} ms`, cause: e });
      }
      throw abortAware(e, ctl.signal);
    } finally {
      clearTimeout(timer);
      options.signal?.removeEventListener("abort", onAbort);
    }
  }

  /**
   * The job's log lines (what its attempts wrote with `ctx.log`), oldest
   * first, each with its `seq`, `attempt`, `time` and `text`. jobd keeps the
   * newest 1,000 lines per job. Without `follow`, the lines there are now
   * (GetLogs, page after page); with `follow`, also each line as it is
   * written, ending after the job is terminal and every line was sent
   * (WatchLogs). A followed stream broken by UNAVAILABLE is opened again
   * after the last line seen.
   */
  async *logs(id: string, options: LogsOptions = {}): AsyncGenerator<LogLine, void, undefined> {
    let after = options.after ?? 0;
    const { signal } = options;
    if (!options.follow) {
      for (;;) {
        const res = await call(() =>
          this.jobs.getLogs({ id, after: BigInt(after), limit: options.pageSize ?? 0 }, { signal }),
        ).catch((e: unknown) => {
          throw abortAware(e, signal);
        });
        if (res.lines.length === 0) return;
        for (const l of res.lines) {
          const line = logLineFromProto(l);
          after = line.seq;
          yield line;
        }
      }
    }
    const reconnects = options.reconnects ?? 5;
    let failures = 0;
    for (;;) {
      try {
        for await (const l of this.jobs.watchLogs({ id, after: BigInt(after) }, { signal })) {
          failures = 0;
          const line = logLineFromProto(l);
          if (line.seq <= after) continue;
          after = line.seq;
          yield line;
        }
        return;
      } catch (e) {
        const err = abortAware(e, signal);
        if (err.code !== "UNAVAILABLE" || failures >= reconnects || signal?.aborted) throw err;
        await sleep(backoffMs(failures++, 200, 5_000), signal).catch(() => {
          throw abortAware(signal?.reason, signal);
        });
      }
    }
  }

  /** One page of jobs; see `list` for all of them. */
  async listPage(filter: ListFilter & { pageToken?: string } = {}, options: CallOptions = {}): Promise<JobPage> {
    const res = await call(() =>
      this.jobs.listJobs(
        {
          kind: filter.kind ?? "",
          state: stateValue(filter.state),
          orderingKey: filter.orderingKey ?? "",
          labels: filter.labels ?? {},
          order: filter.order === "newest" ? pb.ListJobsOrder.NEWEST_FIRST : pb.ListJobsOrder.OLDEST_FIRST,
          pageSize: filter.pageSize ?? 0,
          pageToken: filter.pageToken ?? "",
        },
        options,
      ),
    );
    return { jobs: res.jobs.map(fromProto), nextPageToken: res.nextPageToken };
  }

  /** Every job that matches, page after page. */
  async *list(filter: ListFilter = {}, options: CallOptions = {}): AsyncGenerator<Job, void, undefined> {
    let pageToken = "";
    do {
      const page = await this.listPage({ ...filter, pageToken }, options);
      yield* page.jobs;
      pageToken = page.nextPageToken;
    } while (pageToken !== "");
  }

  /**
   * Cancels a job: a queued one is CANCELLED at once, a running one is
   * stopped (its worker's `ctx.signal` aborts). Cancelling a CANCELLED job
   * is fine; a SUCCEEDED or FAILED one rejects with FailedPreconditionError.
   * Needs an `admin` token when auth is on.
   */
  async cancel(id: string, options: CallOptions = {}): Promise<Job> {
    const res = await call(() => this.jobs.cancel({ id }, options));
    return fromProto(res.job!);
  }

  /**
   * Every state change of the jobs that match, across all jobs, as they
   * happen (`after`: resume from a position seen before).
   */
  async *watchJobs(
    filter: { kind?: string; state?: JobState; after?: number } = {},
    options: { signal?: AbortSignal } = {},
  ): AsyncGenerator<JobChange, void, undefined> {
    try {
      const stream = this.jobs.watchJobs(
        { kind: filter.kind ?? "", state: stateValue(filter.state), after: BigInt(filter.after ?? 0) },
        options,
      );
      for await (const c of stream) yield { job: fromProto(c.job!), position: Number(c.position) };
    } catch (e) {
      throw abortAware(e, options.signal);
    }
  }

  /**
   * Puts FAILED or CANCELLED jobs back to QUEUED with their attempts reset
   * (same ids); a job a parent's failure cancelled goes back to WAITING
   * while some parent has not finished (retry the failed parent first,
   * then what it cancelled). Needs an `admin` token when auth is on.
   */
  async retry(target: RetryTarget, options: CallOptions & { dryRun?: boolean; limit?: number } = {}): Promise<RetryOutcome> {
    const req = create(pb.RetryJobsRequestSchema, { dryRun: options.dryRun ?? false, limit: options.limit ?? 0 });
    if ("ids" in target) {
      req.ids = target.ids;
    } else {
      req.filter = create(pb.RetryFilterSchema, {
        state: stateValue(target.state),
        kind: target.kind ?? "",
        labels: target.labels ?? {},
        finishedAfter: target.finishedAfter ? timestampFromDate(target.finishedAfter) : undefined,
        finishedBefore: target.finishedBefore ? timestampFromDate(target.finishedBefore) : undefined,
      });
    }
    const res = await call(() => this.admin.retryJobs(req, options));
    return {
      matched: Number(res.matched),
      retried: Number(res.retried),
      ids: res.ids,
      skipped: res.skipped.map((s) => ({ id: s.id, reason: s.reason })),
      more: res.more,
    };
  }

  /** The connected worker sessions (optionally only those serving `kind`). Needs an `admin` or `viewer` token when auth is on. */
  async listWorkers(filter: { kind?: string } = {}, options: CallOptions = {}): Promise<WorkerSession[]> {
    const res = await call(() => this.admin.listWorkers({ kind: filter.kind ?? "" }, options));
    return res.workers.map((w) => ({
      sessionId: w.sessionId,
      workerId: w.workerId,
      kinds: [...w.kinds],
      inFlight: w.inFlight,
      maxInFlight: w.maxInFlight,
      connectedAt: w.connectedAt ? timestampDate(w.connectedAt) : undefined,
      lastSeen: w.lastSeen ? timestampDate(w.lastSeen) : undefined,
      address: w.address,
      labels: { ...w.labels },
    }));
  }

  /** Closes the connection; calls still open fail with CANCELLED. */
  close(): void {
    this.conn.close();
  }

  [Symbol.dispose](): void {
    this.close();
  }

  async [Symbol.asyncDispose](): Promise<void> {
    this.close();
  }

  private async withRetry<T>(
    options: CallOptions & { retries?: number },
    f: (o: CallOptions) => Promise<T>,
  ): Promise<T> {
    const retries = options.retries ?? this.retries;
    for (let attempt = 0; ; attempt++) {
      try {
        return await f({ signal: options.signal, timeoutMs: options.timeoutMs });
      } catch (e) {
        const err = abortAware(e, options.signal);
        if (err.code !== "RESOURCE_EXHAUSTED" || attempt >= retries) throw err;
        const delay = Math.min(err.retryAfterMs ?? 1000, this.maxRetryDelayMs);
        // Up to 10% more, so that many clients told the same delay spread out.
        await sleep(delay * (1 + Math.random() * 0.1), options.signal).catch(() => {
          throw abortAware(options.signal?.reason, options.signal);
        });
      }
    }
  }
}

function submitRequest(kind: string, payload: Payload, o: Omit<SubmitOptions, "signal">): pb.SubmitRequest {
  const runAt = o.runAt
    ? timestampFromDate(o.runAt)
    : o.delayMs !== undefined && o.delayMs > 0
      ? timestampFromMs(Date.now() + o.delayMs)
      : undefined;
  const startBefore = o.startBefore
    ? timestampFromDate(o.startBefore)
    : o.startWithinMs !== undefined
      ? timestampFromMs(Date.now() + o.startWithinMs)
      : undefined;
  return create(pb.SubmitRequestSchema, {
    kind,
    payload: encodePayload(payload),
    idempotencyKey: o.key ?? "",
    priority: o.priority ?? 0,
    maxAttempts: o.maxAttempts ?? 0,
    timeout: o.timeoutMs !== undefined ? durationFromMs(o.timeoutMs) : undefined,
    runAt,
    labels: o.labels ?? {},
    orderingKey: o.orderingKey ?? "",
    dependsOn: dependsOn(o.dependsOn),
    onDependencyFailure: dependencyFailureValue(o.onDependencyFailure),
    startBefore,
    dedup: dedup(o.dedup),
    fairnessKey: o.fairnessKey ?? "",
  });
}

/** `dedup` as sent; jobd checks the key and the durations (naming the field). */
function dedup(d: DedupOptions | undefined): pb.Dedup | undefined {
  if (d === undefined) return undefined;
  if (typeof d !== "object" || d === null || typeof d.key !== "string") {
    throw new TypeError(`dedup must be { key: string, mode?, windowMs?, maxWaitMs? }, not ${JSON.stringify(d)}`);
  }
  return create(pb.DedupSchema, {
    key: d.key,
    mode: dedupModeValue(d.mode),
    window: d.windowMs !== undefined ? durationFromMs(d.windowMs) : undefined,
    maxWait: d.maxWaitMs !== undefined ? durationFromMs(d.maxWaitMs) : undefined,
  });
}

/** `dependsOn` as the ids sent (a job stands for its id). */
function dependsOn(d: SubmitOptions["dependsOn"]): string[] {
  if (d === undefined) return [];
  if (typeof d === "string" || !Array.isArray(d)) {
    throw new TypeError(`dependsOn must be an array of job ids (or "$N" batch references), not ${typeof d}`);
  }
  return d.map((p) => {
    const id = typeof p === "string" ? p : p?.id;
    if (typeof id !== "string") throw new TypeError(`dependsOn entries must be job ids or jobs, not ${JSON.stringify(p)}`);
    return id;
  });
}

function traceHeaders(o: SubmitOptions): Record<string, string> | undefined {
  if (!o.traceparent) return undefined;
  const h: Record<string, string> = { traceparent: o.traceparent };
  if (o.tracestate) h["tracestate"] = o.tracestate;
  return h;
}

/** Runs a unary call, turning what it throws into a JobdError. */
async function call<T>(f: () => Promise<T>): Promise<T> {
  try {
    return await f();
  } catch (e) {
    throw toJobdError(e);
  }
}

/** A JobdError; one caused by our own AbortSignal says so (CANCELLED). */
function abortAware(e: unknown, signal: AbortSignal | undefined): JobdError {
  if (signal?.aborted && !(e instanceof JobdError && e.code !== "CANCELLED")) {
    return new CancelledError({ message: "aborted by the caller's signal", cause: signal.reason ?? e });
  }
  return toJobdError(e);
}

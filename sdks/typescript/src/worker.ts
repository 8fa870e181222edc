// The worker: does the work of kinds declared `handler = "remote"` over one
// `jobd.v1.WorkerService/Connect` stream (a session). The SDK owns the
// session; the user writes one async function per kind.
//
// - hello, then a heartbeat on a timer of its own (independent of the
//   handlers, so a busy handler never makes the session look dead; a
//   handler that blocks the event loop for 3 intervals does, and belongs
//   in a worker thread);
// - at most `maxInFlight` handlers run at once (jobd assigns no more, and
//   the worker holds the bound itself too);
// - each attempt is reported once, named by (job id, attempt); a cancelled
//   attempt or one whose session was lost is not reported (it would be
//   stale) and its `ctx.signal` aborts;
// - `ctx.progress()` and `ctx.log()` are checked against jobd's bounds
//   (RangeError in the handler, never a session ended by INVALID_ARGUMENT)
//   and queued on the session's stream like the reports, named by
//   (job id, attempt); progress is coalesced to one message per attempt
//   every 100 ms, the latest kept and sent before the report;
// - `ctx.touch()` sends a Touch (a new deadline, a checkpoint, or just a
//   sign of life) and resolves with jobd's TouchAck (the deadline, or null
//   when stale: then a checkpoint was not kept); touches of one attempt are
//   answered in order, and those still waiting when the attempt ends
//   resolve null; `ctx.checkpoint` is the Assign's (the last one saved);
// - `ctx.parents` is the Assign's parents' results (fan-in), typed, in
//   depends_on order;
// - a broken session is opened again after a capped, jittered backoff;
// - stop() (or SIGTERM/SIGINT) drains: held jobs finish and are reported,
//   then the stream is closed.

import { hostname } from "node:os";
import type { MessageInitShape } from "@bufbuild/protobuf";
import { durationFromMs, durationMs, timestampDate } from "@bufbuild/protobuf/wkt";
import { createClient, type Client as ConnectClient } from "@connectrpc/connect";
import { connect, type Connection, type ConnectionOptions } from "./connection.js";
import { toJobdError, type JobdError } from "./errors.js";
import * as pb from "./gen/jobd/v1/jobd_pb.js";
import { decodeJson, decodeText, encodePayload, stateName, type ParentResult, type Payload } from "./job.js";
import { checkCheckpoint, checkProgress, logBatches, type ProgressDetails, type ProgressValue } from "./progress.js";
import { AsyncQueue, backoffMs } from "./util.js";

/** Throw it from a handler to fail the job at once, without a retry. */
export class Permanent extends Error {
  constructor(message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = "Permanent";
  }
}

/** Throw it from a handler to retry after `afterMs` instead of the kind's backoff. */
export class RetryAfter extends Error {
  readonly afterMs: number;
  constructor(message: string, afterMs: number, options?: { cause?: unknown }) {
    super(message, options);
    this.name = "RetryAfter";
    this.afterMs = afterMs;
  }
}

/** What a handler may return: bytes, a string (UTF-8), or anything else as JSON. */
export type HandlerResult = Payload | void;

/** A function that does one kind's work. Throw to fail the attempt. */
export type Handler = (ctx: JobContext, payload: Uint8Array) => HandlerResult | Promise<HandlerResult>;

/** Options of a Worker. */
export interface WorkerOptions extends ConnectionOptions {
  /** Jobs run at once, 1..=10000 (default 8). */
  maxInFlight?: number;
  /** Shown in ListWorkers and jobd's logs (default `hostname-pid`). */
  workerId?: string;
  labels?: Record<string, string>;
  /** Stop (drain) on SIGTERM and SIGINT while `run()` runs; a second signal forces (default true). */
  handleSignals?: boolean;
  /** On stop, how long held jobs may take before their signals abort and the session closes (default 30 s). */
  stopTimeoutMs?: number;
  /** Reconnect backoff: first wait about `initialMs`, doubling up to `maxMs`, with jitter (default 100 ms, 10 s). */
  reconnect?: { initialMs?: number; maxMs?: number };
  /** Where session events go (default: warnings and errors to stderr). */
  log?: (level: "info" | "warn" | "error", message: string) => void;
}

type WorkerMessageInit = MessageInitShape<typeof pb.WorkerMessageSchema>;
type Report = NonNullable<WorkerMessageInit["msg"]>;

/** Where a JobContext's progress and log lines go (the attempt, on its session). */
interface AttemptOutput {
  progress(p: ProgressValue): void;
  log(batches: string[][]): void;
  /** `extendByMs` and `checkpoint` as sent; `undefined`: the field is left unset. */
  touch(extendByMs: number | undefined, checkpoint: Uint8Array | undefined): Promise<Date | null>;
}

/** Options of `ctx.touch`. */
export interface TouchOptions {
  /**
   * Push the attempt's deadline to this long from now (ms, at least 0;
   * capped by the kind's `max_timeout`). Left out: the deadline stays
   * where it is.
   */
  extendByMs?: number;
  /**
   * Save where the attempt got: the next attempt of the job (after a
   * failure, a timeout, a lost worker) gets the last checkpoint saved as
   * `ctx.checkpoint`. Bytes, or a string sent as UTF-8; at most 64 KiB
   * (`MAX_CHECKPOINT_BYTES`).
   */
  checkpoint?: Uint8Array | string;
}

/**
 * One attempt as a handler sees it. `progress()`, `log()` and `touch()` are
 * messages on the attempt's session, named by (id, attempt) like the
 * reports.
 */
export class JobContext {
  /** The job's id. */
  readonly id: string;
  readonly kind: string;
  /** This attempt's number (1 for the first). */
  readonly attempt: number;
  readonly maxAttempts: number;
  #deadline: Date | undefined;
  /** Trace context from the submitter (`traceparent`, `tracestate`). */
  readonly headers: Readonly<Record<string, string>>;
  readonly payload: Uint8Array;
  /**
   * The checkpoint the last attempt that saved one left
   * (`ctx.touch({ checkpoint })`): resume from it. `undefined` when no
   * attempt saved one (or it saved an empty one).
   */
  readonly checkpoint: Uint8Array | undefined;
  /**
   * The results of the jobs this one depends on (`dependsOn`), in that
   * order: each parent's id, kind, terminal state and result (`json()`,
   * `text()`; `resultOmitted` past the 1 MiB an attempt receives in all:
   * read it with `client.get(id)`). Empty for a job without parents.
   */
  readonly parents: readonly ParentResult[];
  /**
   * Aborted when jobd cancels the attempt (a client's cancel, its timeout,
   * a drain past its deadline), when the session is lost, and when a stop
   * runs out of time. Its reason says which. A report after it is dropped.
   */
  readonly signal: AbortSignal;
  readonly #out: AttemptOutput | undefined;

  /** @internal */
  constructor(assign: pb.Assign, signal: AbortSignal, out?: AttemptOutput) {
    const job = assign.job!;
    this.id = job.id;
    this.kind = job.kind;
    this.attempt = job.attempt;
    this.maxAttempts = job.maxAttempts;
    this.#deadline = assign.deadline ? timestampDate(assign.deadline) : undefined;
    this.headers = { ...assign.headers };
    this.payload = assign.payload;
    this.checkpoint = assign.checkpoint.length > 0 ? assign.checkpoint : undefined;
    this.parents = Object.freeze(assign.parents.map(parentFromProto));
    this.signal = signal;
    this.#out = out;
  }

  /**
   * Reports how far the attempt got: `percent` 0..=100 (a fraction is
   * rounded down), an optional `message` (at most 256 bytes) and `details`
   * (bytes, a string, or anything else as JSON; at most 4 KiB). Watchers
   * see it as `job.progress`. It does not wait: the update is queued on the
   * session, and updates closer than 100 ms apart are coalesced (the latest
   * is sent). Throws RangeError for a value out of bounds. After the
   * attempt ended (returned, cancelled, session lost) it does nothing.
   */
  progress(percent: number, message?: string, details?: ProgressDetails): void {
    const p = checkProgress(percent, message ?? "", details);
    this.#out?.progress(p);
  }

  /**
   * Appends lines to the job's log (`client.logs`), tagged with this
   * attempt. Each argument is split on line breaks. It does not wait: the
   * lines are queued on the session (1,000 a message). Throws RangeError
   * for a line over 4 KiB (then nothing of the call is sent). After the
   * attempt ended it does nothing.
   */
  log(...lines: string[]): void {
    const batches = logBatches(lines);
    if (batches.length > 0) this.#out?.log(batches);
  }

  /**
   * When jobd stops this attempt (its timeout); `signal` aborts then. It
   * starts as the Assign's deadline and follows each `touch()` answered.
   */
  get deadline(): Date | undefined {
    return this.#deadline;
  }

  /**
   * Tells jobd the attempt is alive (a sign of life), and with
   * `extendByMs` pushes its deadline to that long from now (jobd caps it
   * at the kind's `max_timeout`, counted from the attempt's start; without
   * it the deadline stays where it is); with `checkpoint` saves where the
   * attempt got, for the next attempt's `ctx.checkpoint`.
   *
   * Resolves with the deadline from jobd's TouchAck (also kept in
   * `ctx.deadline`): a checkpoint is durable once it resolves with a
   * `Date`. Resolves `null`, and never rejects, when the touch is stale:
   * jobd no longer holds the attempt or did not keep the checkpoint, or
   * the attempt has ended (returned, cancelled, session lost; then nothing
   * is sent). Not awaiting it is fine: the message is queued at once.
   * Throws synchronously, with nothing sent: RangeError for a negative or
   * non-finite `extendByMs` or a checkpoint over 64 KiB, TypeError for a
   * checkpoint that is neither bytes nor a string. A fraction of a
   * millisecond is dropped.
   */
  touch(options: TouchOptions = {}): Promise<Date | null> {
    const ms = options.extendByMs;
    if (ms !== undefined && (typeof ms !== "number" || !Number.isFinite(ms) || ms < 0)) {
      throw new RangeError(`ctx.touch: extendByMs must be a finite number of ms, at least 0, not ${String(ms)}`);
    }
    const checkpoint = options.checkpoint === undefined ? undefined : checkCheckpoint(options.checkpoint);
    if (!this.#out) return Promise.resolve(null);
    return this.#out.touch(ms === undefined ? undefined : Math.floor(ms), checkpoint).then((deadline) => {
      if (deadline) this.#deadline = deadline;
      return deadline;
    });
  }

  /** The payload parsed as JSON; a payload that is not JSON fails the job for good (Permanent). */
  json<T = unknown>(): T {
    try {
      return decodeJson<T>(this.payload);
    } catch (e) {
      throw new Permanent(`payload is not JSON: ${(e as Error).message}`, { cause: e });
    }
  }

  /** The payload as UTF-8 text. */
  text(): string {
    return decodeText(this.payload);
  }
}

/** A generated ParentResult message as a plain object with its decoders. */
function parentFromProto(p: pb.ParentResult): ParentResult {
  const inlined = () => {
    if (p.resultOmitted) {
      throw new Error(
        `the result of parent ${p.id} was not inlined (over the 1 MiB of parents' results an attempt receives): read it with client.get(id)`,
      );
    }
  };
  return {
    id: p.id,
    kind: p.kind,
    state: stateName(p.state),
    result: p.result,
    resultOmitted: p.resultOmitted,
    json<T = unknown>(): T | undefined {
      inlined();
      if (p.result.length === 0) return undefined;
      try {
        return decodeJson<T>(p.result);
      } catch (e) {
        throw new Permanent(`the result of parent ${p.id} is not JSON: ${(e as Error).message}`, { cause: e });
      }
    },
    text(): string {
      inlined();
      return decodeText(p.result);
    },
  };
}

/** Progress messages of one attempt are at least this far apart (the latest in between is kept). */
const PROGRESS_EVERY_MS = 100;

/** One attempt held by a session. */
class Attempt implements AttemptOutput {
  readonly controller = new AbortController();
  /** Its report was sent or dropped: never a second one. */
  settled = false;
  private lastProgress = -Infinity;
  private pending: ProgressValue | undefined;
  private timer: NodeJS.Timeout | undefined;
  /** Touches sent and not yet answered, oldest first (jobd answers in order). */
  private readonly touches: Array<(deadline: Date | null) => void> = [];

  constructor(
    readonly key: string,
    readonly assign: pb.Assign,
    private readonly session: Session,
  ) {}

  /** The session still holds it: its messages count. */
  private get live(): boolean {
    return !this.settled && !this.session.ended && this.session.held.get(this.key) === this;
  }

  progress(p: ProgressValue): void {
    if (!this.live) return;
    const wait = this.lastProgress + PROGRESS_EVERY_MS - Date.now();
    if (wait <= 0 && !this.timer) {
      this.sendProgress(p);
      return;
    }
    this.pending = p;
    this.timer ??= setTimeout(() => {
      this.timer = undefined;
      this.flush();
    }, Math.max(0, wait));
  }

  log(batches: string[][]): void {
    if (!this.live) return;
    const job = this.assign.job!;
    for (const lines of batches) this.session.send({ case: "log", value: { jobId: job.id, attempt: job.attempt, lines } });
  }

  touch(extendByMs: number | undefined, checkpoint: Uint8Array | undefined): Promise<Date | null> {
    if (!this.live) return Promise.resolve(null);
    const job = this.assign.job!;
    const extendBy = extendByMs === undefined ? undefined : durationFromMs(extendByMs);
    return new Promise((resolve) => {
      if (this.session.send({ case: "touch", value: { jobId: job.id, attempt: job.attempt, extendBy, checkpoint } })) {
        this.touches.push(resolve);
      } else {
        resolve(null);
      }
    });
  }

  /** jobd's answer to the oldest touch waiting. */
  touched(ack: pb.TouchAck): void {
    const resolve = this.touches.shift();
    resolve?.(ack.stale || !ack.deadline ? null : timestampDate(ack.deadline));
  }

  /** Sends the progress held back by the coalescing, if any (before the report). */
  flush(): void {
    const p = this.pending;
    this.pending = undefined;
    if (p && this.live) this.sendProgress(p);
  }

  /** The attempt ended: nothing more is sent for it. */
  close(): void {
    clearTimeout(this.timer);
    this.timer = undefined;
    this.pending = undefined;
    for (const resolve of this.touches.splice(0)) resolve(null);
  }

  private sendProgress(p: ProgressValue): void {
    const job = this.assign.job!;
    this.lastProgress = Date.now();
    this.session.send({ case: "progress", value: { jobId: job.id, attempt: job.attempt, ...p } });
  }
}

/** One Connect stream and what it holds. */
class Session {
  readonly outbox = new AsyncQueue<WorkerMessageInit>();
  readonly stream = new AbortController();
  /** Attempts assigned and not yet reported. */
  readonly held = new Map<string, Attempt>();
  /** Assigned attempts waiting for a place (`maxInFlight` handlers already run). */
  readonly queued: Attempt[] = [];
  /** Reports held back while stopping, sent together just before the stream closes. */
  readonly withheld: Report[] = [];
  welcomed = false;
  ended = false;
  /** We closed our side (stop). */
  closing = false;
  heartbeat: NodeJS.Timeout | undefined;

  send(msg: Report): boolean {
    return !this.ended && this.outbox.push({ msg });
  }
}

const REFUSED: ReadonlySet<string> = new Set([
  "INVALID_ARGUMENT",
  "PERMISSION_DENIED",
  "UNAUTHENTICATED",
  "UNIMPLEMENTED",
]);

/**
 * A remote worker. Register a handler per kind, then `await run()`:
 *
 *     const worker = new Worker({ maxInFlight: 8 });
 *     worker.handle("resize", async (ctx, payload) => ({ ok: true }));
 *     await worker.run();   // until worker.stop() or SIGTERM/SIGINT has drained
 */
export class Worker {
  private readonly options: WorkerOptions;
  private readonly handlers = new Map<string, Handler>();
  private readonly maxInFlight: number;
  private conn: Connection | undefined;
  private rpc: ConnectClient<typeof pb.WorkerService> | undefined;
  private session: Session | undefined;
  /** Handlers running now, in every session (a lost session's may still run). */
  private active = 0;
  private stopping = false;
  private forced = false;
  private running: Promise<void> | undefined;
  private wake: (() => void) | undefined;
  private stopTimer: NodeJS.Timeout | undefined;

  constructor(options: WorkerOptions = {}) {
    const maxInFlight = options.maxInFlight ?? 8;
    if (!Number.isInteger(maxInFlight) || maxInFlight < 1 || maxInFlight > 10_000) {
      throw new RangeError(`maxInFlight must be an integer 1..=10000, not ${maxInFlight}`);
    }
    this.options = options;
    this.maxInFlight = maxInFlight;
  }

  /** Registers the function that does `kind`'s work (a kind declared `handler = "remote"`). */
  handle(kind: string, fn: Handler): this {
    if (this.running) throw new Error("register handlers before run()");
    this.handlers.set(kind, fn);
    return this;
  }

  /** Handlers running now. */
  get inFlight(): number {
    return this.active;
  }

  /** Whether a session is open and welcomed. */
  get connected(): boolean {
    return this.session?.welcomed ?? false;
  }

  /**
   * Serves jobs until `stop()` (or SIGTERM/SIGINT) has drained. Rejects
   * only when jobd refuses the worker for good (INVALID_ARGUMENT such as a
   * kind that is not remote, UNAUTHENTICATED, PERMISSION_DENIED); a broken
   * or refused connection is retried with backoff.
   */
  run(): Promise<void> {
    if (this.running) return this.running;
    if (this.handlers.size === 0) return Promise.reject(new Error("no handler registered: call handle(kind, fn) first"));
    this.stopping = false;
    this.forced = false;
    this.running = this.loop().finally(() => {
      this.running = undefined;
    });
    return this.running;
  }

  /**
   * Drains: takes no new work, lets held jobs finish and report (up to
   * `stopTimeoutMs`, then their signals abort), closes the session.
   * `force` aborts held jobs at once (jobd retries them). Resolves when
   * `run()` has returned.
   */
  async stop(options: { force?: boolean } = {}): Promise<void> {
    const running = this.running;
    if (!running) return;
    if (!this.stopping) {
      this.stopping = true;
      this.log("info", "stopping: finishing held jobs");
      this.wake?.();
      const s = this.session;
      if (s && !s.welcomed) s.stream.abort();
      else if (s) this.maybeClose(s);
      this.stopTimer = setTimeout(() => this.force("stop timeout"), this.options.stopTimeoutMs ?? 30_000);
    }
    if (options.force) this.force("forced stop");
    await running.catch(() => {});
  }

  private log(level: "info" | "warn" | "error", message: string): void {
    if (this.options.log) this.options.log(level, message);
    else if (level !== "info") console.error(`jobd worker: ${message}`);
  }

  private async loop(): Promise<void> {
    const onSignal = (sig: NodeJS.Signals) => {
      this.log("info", `${sig}: ${this.stopping ? "forcing" : "draining"}`);
      void this.stop({ force: this.stopping });
    };
    this.conn = connect(this.options);
    this.rpc = createClient(pb.WorkerService, this.conn.transport);
    const signals = this.options.handleSignals ?? true;
    if (signals) {
      process.on("SIGTERM", onSignal);
      process.on("SIGINT", onSignal);
    }
    const initialMs = this.options.reconnect?.initialMs ?? 100;
    const maxMs = this.options.reconnect?.maxMs ?? 10_000;
    let failures = 0;
    try {
      while (!this.stopping) {
        const began = Date.now();
        const { welcomed, error } = await this.serve();
        if (this.stopping) break;
        if (error && REFUSED.has(error.code)) throw error;
        // A session that was welcomed and lasted resets the backoff.
        if (welcomed && Date.now() - began > 1000) failures = 0;
        const wait = backoffMs(failures++, initialMs, maxMs);
        this.log("warn", `session ended (${error ? error.message : "closed by jobd"}); reconnecting in ${Math.round(wait)} ms`);
        await new Promise<void>((resolve) => {
          const t = setTimeout(resolve, wait);
          this.wake = () => {
            clearTimeout(t);
            resolve();
          };
        });
        this.wake = undefined;
      }
    } finally {
      clearTimeout(this.stopTimer);
      if (signals) {
        process.off("SIGTERM", onSignal);
        process.off("SIGINT", onSignal);
      }
      this.conn?.close();
      this.conn = undefined;
      this.rpc = undefined;
    }
  }

  /** One session, until its stream ends. */
  private async serve(): Promise<{ welcomed: boolean; error: JobdError | undefined }> {
    const s = new Session();
    this.session = s;
    s.send({
      case: "hello",
      value: {
        workerId: this.options.workerId ?? `${hostname()}-${process.pid}`,
        kinds: [...this.handlers.keys()],
        maxInFlight: this.maxInFlight,
        labels: this.options.labels ?? {},
      },
    });
    let error: JobdError | undefined;
    try {
      for await (const m of this.rpc!.connect(s.outbox, { signal: s.stream.signal })) {
        const msg = m.msg;
        switch (msg.case) {
          case "welcome": {
            s.welcomed = true;
            const every = msg.value.heartbeatInterval ? durationMs(msg.value.heartbeatInterval) : 5000;
            // Twice per interval: a timer late by a busy event loop still
            // keeps the session well inside jobd's 3 silent intervals.
            s.heartbeat = setInterval(() => s.send({ case: "heartbeat", value: {} }), Math.max(50, every / 2));
            if (this.stopping) this.maybeClose(s);
            break;
          }
          case "assign":
            this.onAssign(s, msg.value);
            break;
          case "cancel": {
            const a = s.held.get(key(msg.value.jobId, msg.value.attempt));
            if (a) {
              // No longer held: its report would be stale.
              s.held.delete(a.key);
              a.settled = true;
              a.close();
              a.controller.abort(new Error(`cancelled by jobd: ${msg.value.reason || "cancel"}`));
              this.maybeClose(s);
            }
            break;
          }
          case "touchAck":
            s.held.get(key(msg.value.jobId, msg.value.attempt))?.touched(msg.value);
            break;
          case "drain":
            // jobd is stopping: it assigns nothing more and ends the stream
            // after the deadline; held jobs go on and report as usual.
            this.log("info", "jobd is draining");
            break;
          case "ack":
            break;
        }
      }
    } catch (e) {
      error = toJobdError(e);
      if (s.closing && error.code === "CANCELLED") error = undefined;
    } finally {
      s.ended = true;
      clearInterval(s.heartbeat);
      s.outbox.end();
      if (this.session === s) this.session = undefined;
      // jobd fails what the session held ("worker lost") and retries it:
      // stop those handlers; their reports are dropped.
      for (const a of [...s.held.values(), ...s.queued]) {
        a.settled = true;
        a.close();
        a.controller.abort(new Error("worker session lost"));
      }
      s.held.clear();
      s.queued.length = 0;
    }
    return { welcomed: s.welcomed, error };
  }

  private onAssign(s: Session, assign: pb.Assign): void {
    const job = assign.job;
    // Assigned in the moment our close was on its way: jobd ends the
    // session and does not count on us for it; don't start it.
    if (!job || s.closing) return;
    const k = key(job.id, job.attempt);
    if (s.held.has(k)) return;
    const a = new Attempt(k, assign, s);
    s.held.set(k, a);
    if (this.active < this.maxInFlight) this.start(s, a);
    else s.queued.push(a);
  }

  private start(s: Session, a: Attempt): void {
    this.active++;
    const assign = a.assign;
    const job = assign.job!;
    const handler = this.handlers.get(job.kind);
    const ctx = new JobContext(assign, a.controller.signal, a);
    void (async (): Promise<Report> => {
      if (!handler) throw new Error(`this worker has no handler for kind ${job.kind}`);
      const out = await handler(ctx, assign.payload);
      return { case: "complete", value: { jobId: job.id, attempt: job.attempt, result: encodePayload(out ?? undefined) } };
    })()
      .catch((e: unknown): Report => ({
        case: "fail",
        value: {
          jobId: job.id,
          attempt: job.attempt,
          error: describe(e),
          permanent: e instanceof Permanent,
          retryAfter: e instanceof RetryAfter ? durationFromMs(Math.max(0, e.afterMs)) : undefined,
        },
      }))
      .then((report) => {
        this.active--;
        this.finish(s, a, report);
        this.startQueued();
      });
  }

  /** Starts queued attempts while there is room (any session's). */
  private startQueued(): void {
    const s = this.session;
    while (s && !s.ended && s.queued.length > 0 && this.active < this.maxInFlight) {
      this.start(s, s.queued.shift()!);
    }
  }

  /** Sends an attempt's one report, unless it no longer holds the job. */
  private finish(s: Session, a: Attempt, report: Report): void {
    if (a.settled) return;
    // The last progress goes before the report (while the attempt still runs at jobd).
    a.flush();
    a.close();
    a.settled = true;
    if (s.ended || s.held.get(a.key) !== a) return;
    s.held.delete(a.key);
    if (this.stopping && !this.forced) {
      // Sent together with the close: a report frees a place at jobd, which
      // would assign a new job to a session about to end.
      s.withheld.push(report);
      this.maybeClose(s);
    } else {
      s.send(report);
    }
  }

  /** While stopping: once nothing is held, send the reports and close our side. */
  private maybeClose(s: Session): void {
    if (!this.stopping || s.closing || s.ended || !s.welcomed) return;
    if (s.held.size > 0 && !this.forced) return;
    s.closing = true;
    for (const r of s.withheld.splice(0)) s.send(r);
    s.outbox.end();
    // jobd answers the close by ending the stream; don't wait forever.
    setTimeout(() => s.stream.abort(), 5000).unref();
  }

  private force(why: string): void {
    if (!this.stopping || this.forced) return;
    this.forced = true;
    const s = this.session;
    if (!s) return;
    if (s.held.size > 0) this.log("warn", `${why}: aborting ${s.held.size} held job(s); jobd retries them`);
    for (const a of s.held.values()) a.controller.abort(new Error(`worker stopping (${why})`));
    if (!s.welcomed) s.stream.abort();
    this.maybeClose(s);
  }
}

function key(jobId: string, attempt: number): string {
  return `${jobId}/${attempt}`;
}

/** What a Fail report says about a thrown value. */
function describe(e: unknown): string {
  if (e instanceof Error) return e.name && e.name !== "Error" ? `${e.name}: ${e.message}` : e.message;
  try {
    return typeof e === "string" ? e : JSON.stringify(e);
  } catch {
    return String(e);
  }
}


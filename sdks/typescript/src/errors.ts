// Every failure the SDK reports is a JobdError: the gRPC status code by
// name, the server's message, and the google.rpc details jobd sends
// (BadRequest, RetryInfo, ErrorInfo), decoded from grpc-status-details-bin.
// One subclass per status code, so `catch (e) { if (e instanceof
// NotFoundError) ... }` reads like the table in the proto's header.

import { fromBinary } from "@bufbuild/protobuf";
import { durationMs } from "@bufbuild/protobuf/wkt";
import { Code, ConnectError } from "@connectrpc/connect";
import {
  BadRequestSchema,
  ErrorInfoSchema,
  RetryInfoSchema,
} from "./gen/google/rpc/error_details_pb.js";
import type { Status } from "./gen/google/rpc/status_pb.js";

/** gRPC status code names, indexed by their number. */
const CODE_NAMES = [
  "OK",
  "CANCELLED",
  "UNKNOWN",
  "INVALID_ARGUMENT",
  "DEADLINE_EXCEEDED",
  "NOT_FOUND",
  "ALREADY_EXISTS",
  "PERMISSION_DENIED",
  "RESOURCE_EXHAUSTED",
  "FAILED_PRECONDITION",
  "ABORTED",
  "OUT_OF_RANGE",
  "UNIMPLEMENTED",
  "INTERNAL",
  "UNAVAILABLE",
  "DATA_LOSS",
  "UNAUTHENTICATED",
] as const;

/** A gRPC status code by name, e.g. `"NOT_FOUND"`. */
export type ErrorCode = Exclude<(typeof CODE_NAMES)[number], "OK">;

/** One bad field of a request (`google.rpc.BadRequest.FieldViolation`). */
export interface FieldViolation {
  /** Path of the field, e.g. `"kind"` or `"requests[3].max_attempts"`. */
  field: string;
  description: string;
}

/** `google.rpc.ErrorInfo`: why, in machine-readable form. */
export interface ErrorInfo {
  reason: string;
  domain: string;
  metadata: Record<string, string>;
}

/** One detail as it came over the wire: its type name and encoded message. */
export interface RawErrorDetail {
  /** Fully qualified message name, e.g. `"google.rpc.BadRequest"`. */
  type: string;
  value: Uint8Array;
}

/** What every JobdError is made of. */
export interface JobdErrorInit {
  message: string;
  details?: RawErrorDetail[];
  cause?: unknown;
}

/** Any failure of a call to jobd. `code` is the gRPC status code's name. */
export class JobdError extends Error {
  /** The gRPC status code's name, e.g. `"NOT_FOUND"`. */
  readonly code: ErrorCode;
  /** The server's message, without the code. */
  readonly rawMessage: string;
  /** Every detail, decoded or not. */
  readonly details: RawErrorDetail[];
  /** From `google.rpc.BadRequest`: each bad field (empty when none). */
  readonly violations: FieldViolation[];
  /** From `google.rpc.RetryInfo`: how long to wait before trying again. */
  readonly retryAfterMs: number | undefined;
  /** From `google.rpc.ErrorInfo`, when sent. */
  readonly errorInfo: ErrorInfo | undefined;

  constructor(code: ErrorCode, init: JobdErrorInit) {
    super(`${code}: ${init.message}`, init.cause === undefined ? undefined : { cause: init.cause });
    this.name = new.target.name;
    this.code = code;
    this.rawMessage = init.message;
    this.details = init.details ?? [];
    const decoded = decodeDetails(this.details);
    this.violations = decoded.violations;
    this.retryAfterMs = decoded.retryAfterMs;
    this.errorInfo = decoded.errorInfo;
  }

  /** The status code's number (`NOT_FOUND` is 5). */
  get grpcCode(): number {
    return CODE_NAMES.indexOf(this.code);
  }
}

export class CancelledError extends JobdError {
  constructor(init: JobdErrorInit) {
    super("CANCELLED", init);
  }
}
export class UnknownError extends JobdError {
  constructor(init: JobdErrorInit) {
    super("UNKNOWN", init);
  }
}
/** A malformed or missing field, an unknown kind, a payload over the limit. */
export class InvalidArgumentError extends JobdError {
  constructor(init: JobdErrorInit) {
    super("INVALID_ARGUMENT", init);
  }
  /** The first bad field named by the server (`google.rpc.BadRequest`). */
  get field(): string | undefined {
    return this.violations[0]?.field;
  }
}
/** A call (or `client.wait`) that did not finish in its time. */
export class DeadlineExceededError extends JobdError {
  constructor(init: JobdErrorInit) {
    super("DEADLINE_EXCEEDED", init);
  }
}
/** No such job (or kind, or schedule). */
export class NotFoundError extends JobdError {
  constructor(init: JobdErrorInit) {
    super("NOT_FOUND", init);
  }
}
/** The idempotency key is already used by another job, for a different request. */
export class AlreadyExistsError extends JobdError {
  constructor(init: JobdErrorInit) {
    super("ALREADY_EXISTS", init);
  }
  /** The id of the job that holds the key (`google.rpc.ErrorInfo` metadata `job_id`). */
  get existingId(): string | undefined {
    return this.errorInfo?.metadata["job_id"];
  }
}
/** The token's role may not make this call. */
export class PermissionDeniedError extends JobdError {
  constructor(init: JobdErrorInit) {
    super("PERMISSION_DENIED", init);
  }
}
/** A bound was reached (backlog, watchers, submit rate); see `retryAfterMs`. */
export class ResourceExhaustedError extends JobdError {
  constructor(init: JobdErrorInit) {
    super("RESOURCE_EXHAUSTED", init);
  }
}
/** E.g. cancel of a job that already finished. */
export class FailedPreconditionError extends JobdError {
  constructor(init: JobdErrorInit) {
    super("FAILED_PRECONDITION", init);
  }
}
export class AbortedError extends JobdError {
  constructor(init: JobdErrorInit) {
    super("ABORTED", init);
  }
}
/** E.g. a watch resume position older than the daemon keeps. */
export class OutOfRangeError extends JobdError {
  constructor(init: JobdErrorInit) {
    super("OUT_OF_RANGE", init);
  }
}
export class UnimplementedError extends JobdError {
  constructor(init: JobdErrorInit) {
    super("UNIMPLEMENTED", init);
  }
}
export class InternalError extends JobdError {
  constructor(init: JobdErrorInit) {
    super("INTERNAL", init);
  }
}
/** The daemon is unreachable, draining, or its store is unavailable. */
export class UnavailableError extends JobdError {
  constructor(init: JobdErrorInit) {
    super("UNAVAILABLE", init);
  }
}
export class DataLossError extends JobdError {
  constructor(init: JobdErrorInit) {
    super("DATA_LOSS", init);
  }
}
/** No token, or a token the daemon does not know. */
export class UnauthenticatedError extends JobdError {
  constructor(init: JobdErrorInit) {
    super("UNAUTHENTICATED", init);
  }
}

const CLASSES: Record<ErrorCode, new (init: JobdErrorInit) => JobdError> = {
  CANCELLED: CancelledError,
  UNKNOWN: UnknownError,
  INVALID_ARGUMENT: InvalidArgumentError,
  DEADLINE_EXCEEDED: DeadlineExceededError,
  NOT_FOUND: NotFoundError,
  ALREADY_EXISTS: AlreadyExistsError,
  PERMISSION_DENIED: PermissionDeniedError,
  RESOURCE_EXHAUSTED: ResourceExhaustedError,
  FAILED_PRECONDITION: FailedPreconditionError,
  ABORTED: AbortedError,
  OUT_OF_RANGE: OutOfRangeError,
  UNIMPLEMENTED: UnimplementedError,
  INTERNAL: InternalError,
  UNAVAILABLE: UnavailableError,
  DATA_LOSS: DataLossError,
  UNAUTHENTICATED: UnauthenticatedError,
};

/** The error of the right subclass for a status code (by number or name). */
export function errorFor(code: number | ErrorCode, init: JobdErrorInit): JobdError {
  const name = typeof code === "number" ? CODE_NAMES[code] : code;
  const cls = name !== undefined && name !== "OK" ? CLASSES[name] : undefined;
  return cls ? new cls(init) : new UnknownError(init);
}

/** Any thrown value as a JobdError (a ConnectError keeps its code and details). */
export function toJobdError(e: unknown): JobdError {
  if (e instanceof JobdError) return e;
  if (e instanceof ConnectError) {
    const details: RawErrorDetail[] = [];
    for (const d of e.details) {
      if ("type" in d && "value" in d && d.value instanceof Uint8Array) {
        details.push({ type: d.type, value: d.value });
      }
    }
    return errorFor(e.code, { message: e.rawMessage, details, cause: e });
  }
  const message = e instanceof Error ? e.message : String(e);
  return new UnknownError({ message, cause: e });
}

/** A `google.rpc.Status` (a refused SubmitBatch entry) as a JobdError. */
export function statusToError(status: Status): JobdError {
  const details = status.details.map((a) => ({
    type: a.typeUrl.slice(a.typeUrl.lastIndexOf("/") + 1),
    value: a.value,
  }));
  return errorFor(status.code, { message: status.message, details });
}

/** A ConnectError that came from an AbortSignal, not from the server. */
export function isAbort(e: unknown): boolean {
  return e instanceof ConnectError && e.code === Code.Canceled;
}

function decodeDetails(details: RawErrorDetail[]): {
  violations: FieldViolation[];
  retryAfterMs: number | undefined;
  errorInfo: ErrorInfo | undefined;
} {
  const violations: FieldViolation[] = [];
  let retryAfterMs: number | undefined;
  let errorInfo: ErrorInfo | undefined;
  for (const d of details) {
    try {
      switch (d.type) {
        case BadRequestSchema.typeName:
          for (const v of fromBinary(BadRequestSchema, d.value).fieldViolations) {
            violations.push({ field: v.field, description: v.description });
          }
          break;
        case RetryInfoSchema.typeName: {
          const delay = fromBinary(RetryInfoSchema, d.value).retryDelay;
          if (delay) retryAfterMs = durationMs(delay);
          break;
        }
        case ErrorInfoSchema.typeName: {
          const info = fromBinary(ErrorInfoSchema, d.value);
          errorInfo = { reason: info.reason, domain: info.domain, metadata: { ...info.metadata } };
          break;
        }
      }
    } catch {
      // A detail that does not decode is kept raw in `details`.
    }
  }
  return { violations, retryAfterMs, errorInfo };
}

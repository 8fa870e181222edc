// jobd: TypeScript client and worker SDK for the jobd daemon.
//
//   import { Client, Worker, Permanent, JobdError, NotFoundError } from "jobd";

export { Client } from "./client.js";
export type {
  BatchEntry,
  BatchResult,
  CallOptions,
  ClientOptions,
  DedupOptions,
  GraphOptions,
  JobChange,
  JobPage,
  ListFilter,
  LogsOptions,
  RetryOutcome,
  RetryTarget,
  SubmitOptions,
  SubmittedJob,
  WaitOptions,
  WatchOptions,
  WorkerSession,
} from "./client.js";
export { Worker, JobContext, Permanent, RetryAfter } from "./worker.js";
export type { Handler, HandlerResult, TouchOptions, WorkerOptions } from "./worker.js";
export { DEFAULT_ADDRESS } from "./connection.js";
export type { ConnectionOptions, TlsOptions } from "./connection.js";
export { TERMINAL_STATES, decodeJson, decodeText, encodePayload, isTerminal } from "./job.js";
export type {
  DedupMode,
  DedupOutcome,
  DependencyFailure,
  Job,
  JobAttempt,
  JobEdge,
  JobEvent,
  JobGraph,
  JobProgress,
  JobState,
  LogLine,
  ParentResult,
  Payload,
} from "./job.js";
export {
  MAX_CHECKPOINT_BYTES,
  MAX_LOG_LINE_BYTES,
  MAX_LOG_LINES_PER_MESSAGE,
  MAX_PROGRESS_DETAILS_BYTES,
  MAX_PROGRESS_MESSAGE_BYTES,
} from "./progress.js";
export type { ProgressDetails } from "./progress.js";
export {
  AbortedError,
  AlreadyExistsError,
  CancelledError,
  DataLossError,
  DeadlineExceededError,
  FailedPreconditionError,
  InternalError,
  InvalidArgumentError,
  JobdError,
  NotFoundError,
  OutOfRangeError,
  PermissionDeniedError,
  ResourceExhaustedError,
  UnauthenticatedError,
  UnavailableError,
  UnimplementedError,
  UnknownError,
  errorFor,
  toJobdError,
} from "./errors.js";
export type { ErrorCode, ErrorInfo, FieldViolation, RawErrorDetail } from "./errors.js";
/** The generated protobuf messages and services (protobuf-es), for what the SDK does not wrap. */
export * as pb from "./gen/jobd/v1/jobd_pb.js";

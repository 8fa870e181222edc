// Long-running jobs: the bounds of a worker's Progress, Log and Touch
// (checkpoint) messages, checked before anything is sent. jobd ends the whole session with
// INVALID_ARGUMENT for a message past one of them (every job the session
// holds would be retried), so a bad call throws in the handler instead.

import { encodePayload, type Payload } from "./job.js";

/** Highest `percent` of `ctx.progress`. */
export const MAX_PROGRESS_PERCENT = 100;
/** Longest progress message, in UTF-8 bytes. */
export const MAX_PROGRESS_MESSAGE_BYTES = 256;
/** Longest progress details, in bytes. */
export const MAX_PROGRESS_DETAILS_BYTES = 4096;
/** Most lines in one Log message; more are sent as several messages. */
export const MAX_LOG_LINES_PER_MESSAGE = 1000;
/** Longest log line, in UTF-8 bytes. */
export const MAX_LOG_LINE_BYTES = 4096;
/** Largest checkpoint (`ctx.touch({ checkpoint })`), in bytes: 64 KiB. */
export const MAX_CHECKPOINT_BYTES = 64 * 1024;

/** What `ctx.progress` takes as details: bytes, a string (UTF-8), or anything else as JSON. */
export type ProgressDetails = Payload;

/** A checked Progress, ready to send. */
export interface ProgressValue {
  percent: number;
  message: string;
  details: Uint8Array;
}

/** UTF-8 length of `s`, without encoding it. */
function byteLength(s: string): number {
  return Buffer.byteLength(s, "utf8");
}

/**
 * Checks and encodes a progress update. Throws RangeError for a percent
 * that is not a number in 0..=100 or a message or details over their
 * bounds; a fractional percent is rounded down.
 */
export function checkProgress(percent: number, message: string = "", details?: ProgressDetails): ProgressValue {
  if (typeof percent !== "number" || !Number.isFinite(percent) || percent < 0 || percent > MAX_PROGRESS_PERCENT) {
    throw new RangeError(`ctx.progress: percent must be a number from 0 to 100, not ${String(percent)}`);
  }
  if (typeof message !== "string") {
    throw new TypeError(`ctx.progress: message must be a string, not ${typeof message}`);
  }
  const m = byteLength(message);
  if (m > MAX_PROGRESS_MESSAGE_BYTES) {
    throw new RangeError(`ctx.progress: message is ${m} bytes (UTF-8), at most ${MAX_PROGRESS_MESSAGE_BYTES} allowed`);
  }
  const d = encodePayload(details);
  if (d.length > MAX_PROGRESS_DETAILS_BYTES) {
    throw new RangeError(`ctx.progress: details are ${d.length} bytes, at most ${MAX_PROGRESS_DETAILS_BYTES} allowed`);
  }
  return { percent: Math.floor(percent), message, details: d };
}

/**
 * Checks and encodes a `ctx.touch` checkpoint: bytes as given, a string as
 * UTF-8. Throws RangeError past 64 KiB, TypeError for another type.
 */
export function checkCheckpoint(checkpoint: Uint8Array | string): Uint8Array {
  let bytes: Uint8Array;
  if (typeof checkpoint === "string") bytes = new TextEncoder().encode(checkpoint);
  else if (checkpoint instanceof Uint8Array) bytes = checkpoint;
  else throw new TypeError(`ctx.touch: checkpoint must be a Uint8Array or a string, not ${typeof checkpoint}`);
  if (bytes.length > MAX_CHECKPOINT_BYTES) {
    throw new RangeError(`ctx.touch: checkpoint is ${bytes.length} bytes, at most ${MAX_CHECKPOINT_BYTES} (64 KiB) allowed`);
  }
  return bytes;
}

/**
 * The lines of a `ctx.log(...)` call: each argument split on line breaks
 * (`\n`, `\r\n`; one trailing line break ends the last line rather than
 * adding an empty one), checked against the line bound (RangeError, before
 * anything is sent), and cut into messages of at most 1,000 lines.
 */
export function logBatches(args: readonly unknown[]): string[][] {
  const lines: string[] = [];
  for (const arg of args) {
    const text = typeof arg === "string" ? arg : String(arg);
    const parts = text.split(/\r?\n/);
    if (parts.length > 1 && parts[parts.length - 1] === "") parts.pop();
    for (const line of parts) {
      const n = byteLength(line);
      if (n > MAX_LOG_LINE_BYTES) {
        throw new RangeError(
          `ctx.log: line ${lines.length + 1} is ${n} bytes (UTF-8), at most ${MAX_LOG_LINE_BYTES} allowed: ${JSON.stringify(line.slice(0, 40))}...`,
        );
      }
      lines.push(line);
    }
  }
  const batches: string[][] = [];
  for (let i = 0; i < lines.length; i += MAX_LOG_LINES_PER_MESSAGE) {
    batches.push(lines.slice(i, i + MAX_LOG_LINES_PER_MESSAGE));
  }
  return batches;
}

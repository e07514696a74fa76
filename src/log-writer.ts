/**
 * Where log lines go: a bounded queue, written to a file descriptor (stdout) asynchronously, so
 * that a full or closed stdout cannot stop the sidecar. (A terminal or file whose write the kernel
 * holds still delays the exit, after the shutdown: docs/operations.md.)
 *
 * pino's own destination writes synchronously, on the main thread. On a stdout that is full
 * (a stalled reader) a synchronous write blocks the election loop, the HTTP answers and the
 * shutdown alike, and sonic-boom's flushSync (which pino's `fatal` calls) answers every error
 * other than EAGAIN by sleeping 100 ms on the main thread and writing again, forever: with
 * stdout closed, EPIPE meant a sidecar that answered nothing and ignored SIGTERM.
 *
 * Here the main thread only queues, and one chunk at a time is written: to a pipe or a socket
 * (a container runtime, journald) through a non-blocking libuv stream, whose writes wait in the
 * event loop, not in a thread; to a file or a terminal with fs.write. Not fs.write for pipes: a
 * write blocked in the thread pool on a full pipe is joined when the process exits, so a
 * stalled reader would hang the exit after SIGTERM instead. A queue
 * past its bound drops the new line. A file on a full disk (ENOSPC, EDQUOT) drops the lines that
 * did not fit and is written again with the next ones: space freed, logging goes on. A descriptor
 * whose reader is gone (EPIPE, EBADF, ...) drops every line from then on: the sidecar goes on leading or following without a log, as its
 * HTTP API and metrics still tell (`leaderd_log_lines_dropped_total`). Exiting instead would make
 * a restarted log collector (journald, a container runtime) cost the election its primary.
 */
import { fstatSync, write } from 'node:fs';
import { Socket } from 'node:net';

/** How long to wait before writing again to a full non-blocking descriptor (EAGAIN). */
const RETRY_FULL_MS = 100;
/** A file system that is full now may not be later: these drop lines, not the descriptor. */
const PASSING_ERRORS = new Set(['ENOSPC', 'EDQUOT']);

export interface LineWriterOptions {
  readonly fd: number;
  /** The most bytes queued and not yet written; a line that would go past it is dropped. */
  readonly maxQueuedBytes: number;
}

/**
 * Writes one chunk whole, then calls `done`; at most one at a time. On an error, `written` is how
 * much of the chunk got out before it (as far as the sink knows).
 */
type Sink = (chunk: Buffer, done: (error: NodeJS.ErrnoException | null, written?: number) => void) => void;

export class LineWriter {
  /** Lines dropped: queue full, or the descriptor gone. */
  dropped = 0;
  private readonly sink: Sink;
  private queue: string[] = [];
  /** Bytes queued, and those of the chunk being written: what the bound applies to. */
  private queuedBytes = 0;
  private inFlightBytes = 0;
  private writing = false;
  /** Set once the descriptor failed for good: every line is dropped from then on. */
  private broken: string | null = null;
  private drained: Array<() => void> = [];

  constructor(private readonly options: LineWriterOptions) {
    this.sink = sinkFor(options.fd);
  }

  /** Queues one line (with its newline, as pino gives it). Never blocks, never throws. */
  write(line: string): void {
    const bytes = Buffer.byteLength(line);
    if (this.broken !== null || this.queuedBytes + this.inFlightBytes + bytes > this.options.maxQueuedBytes) {
      this.dropped++;
      return;
    }
    this.queue.push(line);
    this.queuedBytes += bytes;
    if (!this.writing) this.writeQueued();
  }

  /** Resolves once every queued line is written (or dropped), or after `timeoutMs`. */
  drain(timeoutMs: number): Promise<void> {
    if (!this.writing) return Promise.resolve();
    return new Promise((resolve) => {
      const timer = setTimeout(done, timeoutMs);
      function done(): void {
        clearTimeout(timer);
        resolve();
      }
      this.drained.push(done);
    });
  }

  /** Writes whatever is queued as one chunk, and again when that is done. */
  private writeQueued(): void {
    if (this.queue.length === 0) {
      this.writing = false;
      for (const done of this.drained.splice(0)) done();
      return;
    }
    const chunk = Buffer.from(this.queue.join(''));
    const lines = this.queue.length;
    this.queue = [];
    this.queuedBytes = 0;
    this.inFlightBytes = chunk.length;
    this.writing = true;
    this.sink(chunk, (error, written = 0) => {
      this.inFlightBytes = 0;
      if (error && PASSING_ERRORS.has(error.code ?? '')) {
        // The lines whose newline got out were written whole.
        this.dropped += lines - countNewlines(chunk.subarray(0, written));
      } else if (error) {
        this.broken = error.code ?? error.message;
        this.dropped += lines + this.queue.length;
        this.queue = [];
        this.queuedBytes = 0;
      }
      this.writeQueued();
    });
  }
}

function countNewlines(bytes: Buffer): number {
  let count = 0;
  for (let at = bytes.indexOf(10); at >= 0; at = bytes.indexOf(10, at + 1)) count++;
  return count;
}

function sinkFor(fd: number): Sink {
  let info;
  try {
    info = fstatSync(fd);
  } catch (error) {
    // No stdout at all (closed before start): every line is dropped, as for a reader gone.
    return (_chunk, done) => done(error as NodeJS.ErrnoException);
  }
  return info.isFIFO() || info.isSocket() ? streamSink(fd) : fileSink(fd);
}

/** A pipe or socket, non-blocking, written from the event loop. */
function streamSink(fd: number): Sink {
  const socket = new Socket({ fd, readable: false, writable: true });
  socket.unref();
  let failed: NodeJS.ErrnoException | null = null;
  let pending: ((error: NodeJS.ErrnoException | null) => void) | null = null;
  // A reader that goes away shows as an 'error' (EPIPE) and maybe no callback for the write.
  socket.on('error', (error: NodeJS.ErrnoException) => {
    failed ??= error;
    pending?.(failed);
    pending = null;
  });
  return (chunk, done) => {
    if (failed) return done(failed);
    pending = done;
    socket.write(chunk, (error) => {
      if (pending !== done) return;
      pending = null;
      done((error as NodeJS.ErrnoException | null | undefined) ?? null);
    });
  };
}

/**
 * A file, a terminal, /dev/null: fs.write on the thread pool, retried on EAGAIN and partial writes.
 * A chunk cut off part way through a line (the disk filled up) leaves that line torn: the next
 * chunk starts on a line of its own, so that only the torn line is unreadable.
 */
function fileSink(fd: number): Sink {
  let torn = false;
  return (chunk, done) => {
    // The newline that ends a torn line is not part of the chunk: `written` counts the chunk's bytes.
    const prefix = torn ? 1 : 0;
    const whole = torn ? Buffer.concat([Buffer.from('\n'), chunk]) : chunk;
    const writeFrom = (offset: number): void => {
      write(fd, whole, offset, whole.length - offset, null, (error, written) => {
        if (error?.code === 'EAGAIN') return void setTimeout(() => writeFrom(offset), RETRY_FULL_MS).unref();
        if (error) {
          if (offset > 0 && whole[offset - 1] !== 10) torn = true;
          return done(error, Math.max(0, offset - prefix));
        }
        if (offset + written < whole.length) return writeFrom(offset + written);
        torn = false;
        done(null);
      });
    };
    writeFrom(0);
  };
}

import { pino, type Logger } from 'pino';
import { LineWriter } from './log-writer.js';

export type { Logger };

export const LOG_LEVELS = ['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent'] as const;
export type LogLevel = (typeof LOG_LEVELS)[number];

/**
 * How much log leaderd keeps waiting for a slow stdout before it drops lines: about 5,000
 * ordinary lines, minutes of a busy sidecar's log.
 */
const MAX_QUEUED_BYTES = 1024 * 1024;

export interface Logging {
  readonly log: Logger;
  /** Lines dropped because stdout was full or gone (a metric). */
  dropped(): number;
  /** Resolves once what was logged is written, or after `timeoutMs` (before exiting). */
  flush(timeoutMs: number): Promise<void>;
}

/**
 * Structured JSON lines on stdout: one object per event, ready for any log shipper, its level as
 * a name (`"level":"warn"`) that a reader can grep without knowing pino's numbers. The lines go
 * through a LineWriter, so a full or closed stdout cannot block the sidecar (see log-writer.ts).
 */
export function createLogging(level: LogLevel, base: Record<string, string>, fd = 1): Logging {
  const writer = new LineWriter({ fd, maxQueuedBytes: MAX_QUEUED_BYTES });
  const log = pino(
    {
      level,
      base,
      timestamp: pino.stdTimeFunctions.isoTime,
      formatters: { level: (label) => ({ level: label }) },
    },
    writer,
  );
  return { log, dropped: () => writer.dropped, flush: (timeoutMs) => writer.drain(timeoutMs) };
}

import { pino, type Logger } from 'pino';

export type { Logger };

export const LOG_LEVELS = ['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent'] as const;
export type LogLevel = (typeof LOG_LEVELS)[number];

/**
 * Structured JSON lines on stdout: one object per event, ready for any log shipper, its level as
 * a name (`"level":"warn"`) that a reader can grep without knowing pino's numbers.
 */
export function createLogger(level: LogLevel, base: Record<string, string>): Logger {
  return pino({ level, base, timestamp: pino.stdTimeFunctions.isoTime, formatters: { level: (label) => ({ level: label }) } });
}

/**
 * Growing intervals for what keeps failing, so that a fault that lasts a day costs a few lines,
 * not one a second: warnings that repeat are logged less and less often and say how many were
 * left out, and a node whose promote hook keeps failing stays out of the race longer each time.
 */
import { monotonicMs } from './clock.js';
import type { Logger } from './log.js';

/** `firstMs`, doubled for each repetition after the first, at most `capMs`. */
export function backoffMs(firstMs: number, repetition: number, capMs: number): number {
  return Math.min(capMs, firstMs * 2 ** Math.min(Math.max(repetition - 1, 0), 30));
}

/**
 * How long to wait before trying to open a session again after `failures` tries in a row failed:
 * `firstMs` (the renew pace) after the first, twice as long after each further one, at most half
 * the lease and at most 5 s, then up to a quarter less at random. An unreachable backend is asked
 * a dozen times a minute instead of every second by every sidecar of a fleet, and the fleet does
 * not come back in step when it returns (`random` is Math.random but in tests). Half the lease:
 * the loop must still come round within a lease, or /liveness would call the sidecar hung (a try
 * can take a renew interval, a third of the lease, on top). 5 s: the cap is also how late a node
 * rejoins once the backend answers again, and a cluster whose backend was gone has no primary
 * until some node does.
 */
export function reopenDelayMs(firstMs: number, failures: number, leaseMs: number, random: () => number = Math.random): number {
  const capMs = Math.max(firstMs, Math.min(leaseMs / 2, 5000));
  return backoffMs(firstMs, failures, capMs) * (1 - random() / 4);
}

/** The first repeated line waits this long; each later one twice as long as the one before. */
const FIRST_REPEAT_MS = 1000;
/** At most this long between two lines about the same failure: 5 minutes. */
const MAX_REPEAT_MS = 5 * 60 * 1000;

/**
 * One warning that can repeat (a backend that cannot be reached, a record that cannot be
 * published). The first failure is logged at once; while failures go on, lines come after 1 s,
 * 2 s, 4 s, ... up to 5 minutes apart, each with `failures` (in a row so far) and `suppressed`
 * (left out since the line before). A failure with another cause (`err`) is logged at once: that
 * is news. `recovered()` ends the run, and says how many failures it had when lines were left out.
 */
export class RepeatedWarning {
  private failures = 0;
  private suppressed = 0;
  private lines = 0;
  private nextLineAt = 0;
  private lastErr: string | undefined;

  constructor(
    private readonly log: Logger,
    private readonly message: string,
  ) {}

  failed(fields: { err?: string } & Record<string, unknown> = {}): void {
    this.failures++;
    const now = monotonicMs();
    const news = fields.err !== this.lastErr;
    if (!news && now < this.nextLineAt) {
      this.suppressed++;
      return;
    }
    const counts = this.failures > 1 ? { failures: this.failures, suppressed: this.suppressed } : {};
    this.log.warn({ ...fields, ...counts }, this.message);
    this.lines++;
    this.suppressed = 0;
    this.lastErr = fields.err;
    this.nextLineAt = now + backoffMs(FIRST_REPEAT_MS, this.lines, MAX_REPEAT_MS);
  }

  /** Failures since the last recovery. */
  get inARow(): number {
    return this.failures;
  }

  recovered(): void {
    if (this.failures === 0) return;
    if (this.failures > this.lines) this.log.info({ failures: this.failures, suppressed: this.suppressed }, `recovered after ${this.failures} failures: ${this.message}`);
    this.failures = 0;
    this.suppressed = 0;
    this.lines = 0;
    this.nextLineAt = 0;
    this.lastErr = undefined;
  }
}

/** The longest a node whose promote hook keeps failing stays out of the race: 10 minutes, or the ttl. */
const MAX_PROMOTE_HOLD_OFF_MS = 10 * 60 * 1000;

/**
 * This node's promotes that failed in a row. A broken promote hook used to make a node promote,
 * fail, resign for a ttl and win again, every ttl, forever: each failure in a row now doubles the
 * hold-off (ttl, 2 ttl, 4 ttl, ... up to 10 minutes). The run ends with a promote that succeeds,
 * or when another node leads: then this node was not what kept the election from a primary.
 */
export class PromoteFailures {
  inARow = 0;

  /** Counts a failed promote; returns the hold-off before this node stands again. */
  failed(ttlMs: number): number {
    this.inARow++;
    return backoffMs(ttlMs, this.inARow, Math.max(ttlMs, MAX_PROMOTE_HOLD_OFF_MS));
  }

  reset(): void {
    this.inARow = 0;
  }
}

/**
 * The local lease deadline: how long this node may still act on its last confirmed renewal.
 *
 * The deadline is `renewDeadline` after the moment the last successful renewal was *sent*, never
 * after its answer arrived: the service started timing the lease no earlier than that moment.
 *
 * Time is measured on two clocks and the larger elapsed time wins. The monotonic clock is immune
 * to wall-clock steps but, on Linux, stands still while the whole machine is suspended; the wall
 * clock keeps counting through a suspend. Taking the larger of the two can only make a node step
 * down earlier, never later.
 *
 * Expiry is a latch. Once the deadline has been seen to pass, a renewal that completes late does
 * not revive the lease: the term is over, and the next term begins with a new session and a
 * larger fencing token.
 */
import { monotonicMs } from './clock.js';

export interface Instant {
  readonly monotonic: number;
  readonly wall: number;
}

export function now(): Instant {
  return { monotonic: monotonicMs(), wall: Date.now() };
}

export class LeaseDeadline {
  private renewedAt: Instant;
  private expired = false;
  /** How long after the deadline its passing was first seen; null while valid. */
  private lateMs: number | null = null;

  constructor(
    private readonly windowMs: number,
    openedAt: Instant,
  ) {
    this.renewedAt = openedAt;
  }

  /** Milliseconds left; 0 once expired. Checking is what latches expiry. */
  remainingMs(at: Instant = now()): number {
    if (this.expired) return 0;
    const remaining = this.windowMs - elapsedMs(this.renewedAt, at);
    if (remaining <= 0) {
      this.expired = true;
      this.lateMs = -remaining;
      return 0;
    }
    return remaining;
  }

  /** How late expiry was noticed (ms), for the log; null while the lease is valid. */
  get noticedLateMs(): number | null {
    return this.lateMs;
  }

  isValid(at: Instant = now()): boolean {
    return this.remainingMs(at) > 0;
  }

  /** Records a renewal sent at `sentAt` and confirmed by the service at `confirmedAt`. */
  renewed(sentAt: Instant, confirmedAt: Instant = now()): void {
    if (!this.isValid(confirmedAt)) return;
    if (sentAt.monotonic > this.renewedAt.monotonic) this.renewedAt = sentAt;
  }
}

/** Elapsed time by the more pessimistic clock; a wall clock stepped backwards counts for nothing. */
function elapsedMs(from: Instant, to: Instant): number {
  return Math.max(to.monotonic - from.monotonic, to.wall - from.wall, 0);
}

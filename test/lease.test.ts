import { describe, expect, it } from 'vitest';
import { LeaseDeadline, type Instant } from '../src/lease.js';

const at = (monotonic: number, wall = 1_000_000 + monotonic): Instant => ({ monotonic, wall });

describe('LeaseDeadline', () => {
  it('is valid until renewDeadline after the last renewal was sent', () => {
    const lease = new LeaseDeadline(1000, at(0));
    expect(lease.remainingMs(at(400))).toBe(600);
    expect(lease.isValid(at(999))).toBe(true);
    expect(lease.isValid(at(1000))).toBe(false);
  });

  it('counts a renewal from when it was sent, not from when it was confirmed', () => {
    const lease = new LeaseDeadline(1000, at(0));
    lease.renewed(at(500), at(510));
    expect(lease.remainingMs(at(900))).toBe(600);
  });

  it('latches expiry: a renewal confirmed after the deadline does not revive the lease', () => {
    const lease = new LeaseDeadline(1000, at(0));
    expect(lease.isValid(at(1200))).toBe(false);
    lease.renewed(at(900), at(1201));
    expect(lease.isValid(at(901))).toBe(false);
  });

  it('ignores an older renewal confirmed after a newer one', () => {
    const lease = new LeaseDeadline(1000, at(0));
    lease.renewed(at(600), at(610));
    lease.renewed(at(300), at(620));
    expect(lease.remainingMs(at(700))).toBe(900);
  });

  it('takes the larger elapsed time of the two clocks (a suspended machine stops the monotonic one)', () => {
    const lease = new LeaseDeadline(1000, at(0, 5000));
    expect(lease.isValid({ monotonic: 10, wall: 7000 })).toBe(false);
  });

  it('ignores a wall clock stepped backwards', () => {
    const lease = new LeaseDeadline(1000, at(0, 5000));
    expect(lease.remainingMs({ monotonic: 100, wall: 0 })).toBe(900);
  });
});

import { describe, expect, it } from 'vitest';
import { check, violations, type HookRecord } from './overlap.js';

const r = (id: string, event: string, token: number, at: number): HookRecord => ({
  LEADERD_ID: id,
  LEADERD_EVENT: event,
  LEADERD_FENCING_TOKEN: String(token),
  at,
});
/** What the chaos harness writes into the same log. */
const did = (id: string, event: 'killed' | 'frozen' | 'thawed', at: number): HookRecord => ({ LEADERD_ID: id, LEADERD_EVENT: event, at });

describe('the overlap checker', () => {
  it('accepts terms that follow each other with growing tokens', () => {
    expect(violations([r('a', 'promote', 1, 0), r('a', 'demote', 1, 10), r('b', 'promote', 5, 11), r('b', 'demote', 5, 20)])).toEqual([]);
  });

  it('catches a planted overlap', () => {
    expect(violations([r('a', 'promote', 1, 0), r('b', 'promote', 2, 5), r('a', 'demote', 1, 10)])).toEqual([
      'b (token 2) promoted at 5 while a (token 1) was primary until 10 (both acting from 5 to 10)',
    ]);
  });

  it('catches a term that never ended overlapping a later one', () => {
    expect(violations([r('a', 'promote', 1, 0), r('b', 'promote', 2, 5)])).toHaveLength(1);
  });

  it('catches a fencing token that does not grow', () => {
    expect(violations([r('a', 'promote', 7, 0), r('a', 'demote', 7, 1), r('b', 'promote', 7, 2)])).toEqual([
      'token 7 of b does not exceed 7 of a',
    ]);
  });

  it('catches a second promote without an end in between, and ignores a demote without a term', () => {
    expect(violations([r('a', 'promote', 1, 0), r('a', 'promote', 2, 1)])).toEqual([
      'a promoted again at 1 while its term from 0 had not ended',
    ]);
    expect(violations([r('a', 'demote', 1, 0)])).toEqual([]);
  });

  it('ends a term when the harness killed its node', () => {
    expect(violations([r('a', 'promote', 1, 0), did('a', 'killed', 10), r('b', 'promote', 2, 11)])).toEqual([]);
    expect(violations([r('a', 'promote', 1, 0), r('b', 'promote', 2, 11), did('a', 'killed', 12)])).toHaveLength(1);
  });

  it('allows a short stale window after a thaw, fenced by a larger token, and reports it', () => {
    const records = [
      r('a', 'promote', 1, 0),
      did('a', 'frozen', 100),
      r('b', 'promote', 2, 3000),
      did('a', 'thawed', 5000),
      r('a', 'demote', 1, 5080),
    ];
    const verdict = check(records);
    expect(verdict.violations).toEqual([]);
    expect(verdict.staleWindowsMs).toEqual([80]);
  });

  it('does not excuse a stale window that is too long, has a smaller token, or began before the freeze', () => {
    const tooLong = [r('a', 'promote', 1, 0), did('a', 'frozen', 100), r('b', 'promote', 2, 3000), did('a', 'thawed', 5000), r('a', 'demote', 1, 7000)];
    expect(violations(tooLong)).toHaveLength(1);
    const smallerToken = [r('a', 'promote', 5, 0), did('a', 'frozen', 100), r('b', 'promote', 2, 3000), did('a', 'thawed', 5000), r('a', 'demote', 5, 5080)];
    expect(violations(smallerToken)).toEqual([
      'token 2 of b does not exceed 5 of a',
      'b (token 2) promoted at 3000 while a (token 5) was primary until 5080 (both acting from 5000 to 5080)',
    ]);
    const beforeFreeze = [r('a', 'promote', 1, 0), r('b', 'promote', 2, 50), did('a', 'frozen', 100), did('a', 'thawed', 5000), r('a', 'demote', 1, 5080)];
    expect(violations(beforeFreeze).length).toBeGreaterThan(0);
  });

  it('fences a successor that promotes just after the thaw only if the freeze could have let the deadline pass', () => {
    const records = [
      r('a', 'promote', 1, 0),
      did('a', 'frozen', 1000),
      did('a', 'thawed', 2500),
      r('b', 'promote', 2, 2520),
      r('a', 'demote', 1, 2600),
    ];
    expect(check(records, { minExpiringFreezeMs: 1000 })).toMatchObject({ violations: [], staleWindowsMs: [100] });
    expect(check(records, { minExpiringFreezeMs: 2000 }).violations).toHaveLength(1);
  });
});

import { describe, expect, it } from 'vitest';
import { violations, type HookRecord } from './overlap.js';

const r = (id: string, event: string, token: number, at: number): HookRecord => ({
  LEADERD_ID: id,
  LEADERD_EVENT: event,
  LEADERD_FENCING_TOKEN: String(token),
  at,
});

describe('the overlap checker', () => {
  it('accepts terms that follow each other with growing tokens', () => {
    expect(violations([r('a', 'promote', 1, 0), r('a', 'demote', 1, 10), r('b', 'promote', 5, 11), r('b', 'demote', 5, 20)])).toEqual([]);
  });

  it('catches a planted overlap', () => {
    expect(violations([r('a', 'promote', 1, 0), r('b', 'promote', 2, 5), r('a', 'demote', 1, 10)])).toEqual([
      'b promoted at 5 while a was primary until 10',
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

  it('refuses records that make no sense', () => {
    expect(() => violations([r('a', 'demote', 1, 0)])).toThrow(/without being primary/);
    expect(() => violations([r('a', 'promote', 1, 0), r('a', 'promote', 2, 1)])).toThrow(/promoted twice/);
  });
});

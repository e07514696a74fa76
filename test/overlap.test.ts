import { spawn } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';
import { check, termsOf, violations, type HookRecord } from './overlap.js';

const r = (id: string, event: string, token: number, at: number): HookRecord => ({
  LEADERD_ID: id,
  LEADERD_EVENT: event,
  LEADERD_FENCING_TOKEN: String(token),
  at,
});
/** What the chaos hook writes when a hook exits. */
const done = (id: string, event: string, token: number, at: number): HookRecord => r(id, `${event}-done`, token, at);
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

  it('ends a term when its demote hook finishes: a successor promoted while it still runs is a violation', () => {
    const during = [r('a', 'promote', 1, 0), r('a', 'demote', 1, 10), r('b', 'promote', 2, 15), done('a', 'demote', 1, 20)];
    expect(violations(during)).toEqual([
      'b (token 2) promoted at 15 while a (token 1) was primary until 20 (its demote hook ran from 10) (both acting from 15 to 20)',
    ]);
    const after = [r('a', 'promote', 1, 0), r('a', 'demote', 1, 10), done('a', 'demote', 1, 20), r('b', 'promote', 2, 21)];
    expect(violations(after)).toEqual([]);
    // Without an end recorded (hooks that do not record it), the demote's start ends the term.
    expect(violations(during.slice(0, 3))).toEqual([]);
  });

  it('tells a demote still running apart, and ignores the ends of other hooks', () => {
    const running = termsOf([r('a', 'promote', 1, 0), done('a', 'promote', 1, 5), r('a', 'demote', 1, 10)]).terms;
    expect(running).toMatchObject([{ id: 'a', from: 0, to: 10, demotedAt: 10, stepping: true }]);
    const finished = termsOf([r('a', 'promote', 1, 0), r('a', 'demote', 1, 10), done('a', 'demote', 1, 30)]).terms;
    expect(finished).toMatchObject([{ from: 0, to: 30, demotedAt: 10, stepping: false }]);
  });

  it('ends a term at the kill of its node, even while its demote hook still runs', () => {
    // The hook outlives the node (its own process group) and records its end later: too late to count.
    const killedWhileDemoting = [r('a', 'promote', 1, 0), r('a', 'demote', 1, 10), did('a', 'killed', 12), r('b', 'promote', 2, 13), done('a', 'demote', 1, 40)];
    expect(violations(killedWhileDemoting)).toEqual([]);
    const beforeTheKill = [r('a', 'promote', 1, 0), r('a', 'demote', 1, 10), r('b', 'promote', 2, 11), did('a', 'killed', 12), done('a', 'demote', 1, 40)];
    expect(violations(beforeTheKill)).toHaveLength(1);
  });

  it("holds a stale window's bound to leaderd's part (thaw to demote start), not to the demote hook's run time", () => {
    const slowDemote = [
      r('a', 'promote', 1, 0),
      did('a', 'frozen', 100),
      r('b', 'promote', 2, 3000),
      did('a', 'thawed', 5000),
      r('a', 'demote', 1, 5080),
      done('a', 'demote', 1, 6800),
    ];
    expect(check(slowDemote)).toMatchObject({ violations: [], staleWindowsMs: [80] });
    const lateDemote = [...slowDemote.slice(0, 4), r('a', 'demote', 1, 6200), done('a', 'demote', 1, 6300)];
    expect(violations(lateDemote)).toHaveLength(1);
    // The demote's run time is excused only under the same fencing: a smaller token is not.
    const smallerToken = slowDemote.map((x) => (x.LEADERD_ID === 'b' ? { ...x, LEADERD_FENCING_TOKEN: '0' } : x));
    expect(violations(smallerToken)).toContain('b (token 0) promoted at 3000 while a (token 1) was primary until 6800 (its demote hook ran from 5080) (both acting from 5000 to 6800)');
  });

  it('cuts frozen time out of a demote too: a demote that finishes while its node is frozen ends the term then', () => {
    const records = [
      r('a', 'promote', 1, 0),
      r('a', 'demote', 1, 10),
      did('a', 'frozen', 12),
      done('a', 'demote', 1, 500),
      r('b', 'promote', 2, 1000),
      did('a', 'thawed', 3000),
    ];
    expect(check(records)).toMatchObject({ violations: [], terms: [{ id: 'a', to: 500, frozen: [[12, 500]] }, { id: 'b' }] });
  });
});

describe('the chaos hook', () => {
  const HOOK = fileURLToPath(new URL('./fixtures/chaos-hook.mjs', import.meta.url));

  function run(control: string, log: string, event: string): { exited: Promise<number | null>; stop: () => void } {
    const child = spawn(process.execPath, [HOOK, log, control], {
      env: { ...process.env, LEADERD_EVENT: event, LEADERD_ID: 'n1', LEADERD_FENCING_TOKEN: '7' },
      stdio: 'ignore',
    });
    return { exited: new Promise((resolve) => child.once('exit', (code) => resolve(code))), stop: () => child.kill('SIGTERM') };
  }
  const read = (log: string) =>
    readFileSync(log, 'utf8')
      .trim()
      .split('\n')
      .map((line) => JSON.parse(line) as HookRecord & { status?: number; signal?: string });

  it('records its start and, after its delay or while held, its end; and its end when stopped', async () => {
    const control = mkdtempSync(join(tmpdir(), 'leaderd-chaos-hook-'));
    const log = join(control, 'hooks.log');
    writeFileSync(join(control, 'n1.demote.delay'), '300');
    expect(await run(control, log, 'demote').exited).toBe(0);
    const [start, end] = read(log);
    expect(start).toMatchObject({ LEADERD_EVENT: 'demote', LEADERD_ID: 'n1', LEADERD_FENCING_TOKEN: '7' });
    expect(end).toMatchObject({ LEADERD_EVENT: 'demote-done', LEADERD_FENCING_TOKEN: '7', status: 0 });
    expect(end!.at - start!.at).toBeGreaterThanOrEqual(300);

    writeFileSync(join(control, 'n1.fail-promote'), '');
    writeFileSync(join(control, 'n1.promote.hold'), '');
    const held = run(control, log, 'promote');
    await expect.poll(() => read(log).length, { timeout: 10000 }).toBe(3);
    rmSync(join(control, 'n1.promote.hold'));
    expect(await held.exited).toBe(1);
    expect(read(log)[3]).toMatchObject({ LEADERD_EVENT: 'promote-done', status: 1 });

    writeFileSync(join(control, 'n1.promote.hold'), '');
    const stopped = run(control, log, 'promote');
    await expect.poll(() => read(log).length, { timeout: 10000 }).toBe(5);
    stopped.stop();
    expect(await stopped.exited).toBe(143);
    expect(read(log)[5]).toMatchObject({ LEADERD_EVENT: 'promote-done', status: 143, signal: 'SIGTERM' });
  });
});

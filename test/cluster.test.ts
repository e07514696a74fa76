/**
 * The rule that decides who may lead, the records it reads, and the check's output contract.
 * The rule is a pure function of the facts; the check runs real commands.
 */
import { describe, expect, it } from 'vitest';
import { pino } from 'pino';
import { runCheck } from '../src/check.js';
import {
  ALWAYS_HEALTHY,
  bestCandidate,
  lagBehind,
  mayTakeLeadership,
  memberText,
  newestById,
  parseLeaderPosition,
  parseMember,
  positionJson,
  type GateFacts,
  type MemberRecord,
} from '../src/cluster.js';
import { render } from '../src/cluster-command.js';

const member = (id: string, position: bigint | null, more: Partial<MemberRecord> = {}): MemberRecord => ({
  id,
  address: `${id}:5432`,
  role: 'replica',
  candidate: true,
  healthy: true,
  eligible: true,
  priority: 1,
  position,
  fencingToken: null,
  handoverTo: null,
  leaderGone: null,
  updatedAt: '2026-11-24T12:00:00.000Z',
  ...more,
});

const facts = (position: bigint | null, others: MemberRecord[], more: Partial<GateFacts> = {}): GateFacts => ({
  id: 'me',
  priority: 1,
  check: { ...ALWAYS_HEALTHY, position },
  others,
  leaderPosition: null,
  maxLag: null,
  ...more,
});

const reason = (f: GateFacts) => {
  const verdict = mayTakeLeadership(f);
  return verdict.ok ? 'ok' : verdict.reason;
};

describe('who may take leadership', () => {
  it('the member furthest ahead; at equal positions the higher priority; ties on both all stand', () => {
    expect(reason(facts(100n, [member('b', 50n), member('c', 80n)]))).toBe('ok');
    expect(reason(facts(50n, [member('b', 100n)]))).toMatch(/^b is a better candidate \(position 100, priority 1\)$/);
    expect(reason(facts(80n, [member('b', 80n, { priority: 2 })]))).toMatch(/^b is a better candidate/);
    expect(reason(facts(80n, [member('b', 80n, { priority: 1 })]))).toBe('ok');
    expect(reason(facts(80n, [member('b', 80n)], { priority: 2 }))).toBe('ok');
    // Unknown positions (no check): priority alone decides, as at equal positions.
    expect(reason(facts(null, [member('b', null)]))).toBe('ok');
    expect(reason(facts(null, [member('b', null, { priority: 5 })]))).toMatch(/^b is a better candidate/);
    // A known position is ahead of an unknown one.
    expect(reason(facts(null, [member('b', 0n)]))).toMatch(/^b is a better candidate/);
  });

  it('members that cannot lead do not count: unhealthy, not eligible, priority 0, out of the race', () => {
    for (const more of [{ healthy: false }, { eligible: false }, { priority: 0 }, { candidate: false }]) {
      expect(reason(facts(10n, [member('b', 100n, more)]))).toBe('ok');
    }
  });

  it('never when unhealthy, not eligible, of priority 0, or beyond max-lag of the last leader', () => {
    expect(reason(facts(null, [], { check: { healthy: false, eligible: false, position: null, reason: 'exited with status 1' } }))).toBe(
      'unhealthy: exited with status 1',
    );
    expect(reason(facts(null, [], { check: { ...ALWAYS_HEALTHY, eligible: false } }))).toBe('not eligible: the check says so');
    expect(reason(facts(100n, [], { priority: 0 }))).toBe('priority 0: never leads');
    const leaderPosition = { id: 'old', fencingToken: 7, position: 1000n, updatedAt: '' };
    expect(reason(facts(899n, [], { leaderPosition, maxLag: 100n }))).toBe('lag 101 is beyond max-lag 100');
    expect(reason(facts(900n, [], { leaderPosition, maxLag: 100n }))).toBe('ok');
    expect(reason(facts(null, [], { leaderPosition, maxLag: 100n }))).toBe('position unknown: cannot show a lag within max-lag');
    // No leader ever published a position: nothing to lag behind.
    expect(reason(facts(0n, [], { maxLag: 0n }))).toBe('ok');
  });

  it('while a switchover is in flight, only the member it names, whatever the positions', () => {
    const handing = member('old', 500n, { role: 'replica', handoverTo: 'me', candidate: false });
    expect(reason(facts(10n, [handing, member('b', 400n)]))).toBe('ok');
    expect(reason(facts(900n, [{ ...handing, handoverTo: 'b' }, member('b', 10n)]))).toBe('a switchover from old to b is in flight');
    // The named member still has to be healthy and within max-lag.
    expect(reason(facts(10n, [handing], { check: { healthy: false, eligible: false, position: null, reason: 'down' } }))).toBe('unhealthy: down');
  });

  it('picks the switchover candidate the way a failover would', () => {
    const records = [member('b', 80n), member('c', 90n, { healthy: false }), member('d', 80n, { priority: 2 }), member('e', 95n, { priority: 0 })];
    expect(bestCandidate(records, null, null)?.id).toBe('d');
    expect(bestCandidate(records, { id: 'a', fencingToken: 1, position: 200n, updatedAt: '' }, 100n)).toBeNull();
  });
});

describe('member records', () => {
  it('round-trip, positions beyond 2^53 included', () => {
    const record = member('b', 98765432109876543210n, { role: 'primary', fencingToken: 12, handoverTo: 'c' });
    expect(parseMember(memberText(record))).toEqual(record);
    expect(positionJson(98765432109876543210n)).toBe('98765432109876543210');
    expect(positionJson(2n ** 53n - 1n)).toBe(Number.MAX_SAFE_INTEGER);
    expect(lagBehind({ id: 'a', fencingToken: 1, position: 10n, updatedAt: '' }, 12n)).toBe(0n);
  });

  it('anything else read from a backend is not a record, and never throws', () => {
    const good = JSON.parse(memberText(member('b', 1n))) as Record<string, unknown>;
    for (const text of ['', 'null', '[]', '42', '{', 'plain text', JSON.stringify({ ...good, position: -1 }), JSON.stringify({ ...good, position: '1e3' }), JSON.stringify({ ...good, id: '' }), JSON.stringify({ ...good, role: 'king' }), JSON.stringify({ ...good, priority: 1.5 })]) {
      expect(parseMember(text), text).toBeNull();
    }
    expect(parseLeaderPosition('{"id":"a","fencingToken":3,"position":"12","updatedAt":"x"}')?.position).toBe(12n);
    expect(parseLeaderPosition('{"id":"a","fencingToken":3,"position":12}')).toBeNull();
  });

  it('keeps the newest record of a member that has two (a restart before its old session expired)', () => {
    const old = member('b', 1n, { updatedAt: '2026-11-24T12:00:00.000Z' });
    const fresh = member('b', 2n, { updatedAt: '2026-11-24T12:00:05.000Z' });
    expect(newestById([fresh, old, member('a', 0n)]).map((m) => `${m.id}:${m.position}`)).toEqual(['a:0', 'b:2']);
  });

  it('`leaderd cluster` prints one line per member, the leader marked', () => {
    const text = render({
      election: 'db',
      leader: { id: 'a', address: 'a:5432', fencingToken: 9 },
      members: [
        { id: 'a', address: 'a:5432', role: 'primary', healthy: true, eligible: true, priority: 1, position: 120, lag: 0, updatedAt: 't1' },
        { id: 'b', address: 'b:5432', role: 'replica', healthy: false, eligible: false, priority: 0, position: null, lag: null, updatedAt: 't2' },
      ],
    });
    expect(text.split('\n')).toEqual([
      'election db: leader a (fencing token 9)',
      '   MEMBER  ADDRESS  ROLE     HEALTHY  ELIGIBLE  PRIORITY  POSITION  LAG  UPDATED',
      '*  a       a:5432   primary  yes      yes       1         120       0    t1',
      '   b       b:5432   replica  no       no        0         -         -    t2',
      '',
    ]);
  });
});

describe('the check', () => {
  const log = pino({ level: 'silent' });
  const facts = { election: 'e', id: 'me', role: 'replica', leader: null, fencingToken: null };
  const check = (script: string, timeoutMs = 5000) => runCheck({ argv: ['/bin/sh', '-c', script], timeoutMs, facts, log });

  it('exit 0 is healthy; its output may give a position (a number, or a decimal string beyond 2^53) and eligibility', async () => {
    expect(await check('exit 0')).toEqual({ healthy: true, eligible: true, position: null, reason: null });
    expect(await check('echo \'{"position": 42}\'')).toEqual({ healthy: true, eligible: true, position: 42n, reason: null });
    expect(await check('echo \'{"position": "98765432109876543210", "eligible": false}\'')).toMatchObject({ healthy: true, eligible: false, position: 98765432109876543210n });
    // It is told what a hook is told, and that it is the check.
    expect(await check('test "$LEADERD_CHECK" = 1 && test "$LEADERD_ID" = me && test "$LEADERD_ROLE" = replica')).toMatchObject({ healthy: true });
  });

  it('anything else is unhealthy, with the reason', async () => {
    const cases: Array<[string, RegExp]> = [
      ['echo down >&2; exit 3', /^exited with status 3 \(down\)$/],
      ['echo not json', /^its output is not JSON: "not json"$/],
      ['echo \'{"position": -1}\'', /^"position" is not what the check may print/],
      ['echo \'{"position": 1.5}\'', /^"position" is not what the check may print/],
      ['echo \'{"position": 9007199254740993}\'', /^"position" is not what the check may print/],
      ['echo \'{"lsn": 5}\'', /^the output is not what the check may print/],
      ['echo \'[1]\'', /^the output is not what the check may print/],
      ['head -c 10000 /dev/zero | tr "\\0" x; echo', /^its output is longer than 4096 bytes$/],
    ];
    for (const [script, expected] of cases) {
      const result = await check(script);
      expect(result.healthy, script).toBe(false);
      expect(result.reason, script).toMatch(expected);
    }
    expect((await runCheck({ argv: ['/nonexistent/check'], timeoutMs: 5000, facts, log })).reason).toMatch(/^cannot run \/nonexistent\/check: spawn \/nonexistent\/check ENOENT$/);
  });

  it('a check that overruns its timeout is stopped, its whole process group, and counts as unhealthy', async () => {
    const started = performance.now();
    const result = await check('sleep 30 & sleep 30', 300);
    expect(result).toMatchObject({ healthy: false, reason: 'timed out after 0.3 s' });
    expect(performance.now() - started).toBeLessThan(5000);
  });
});

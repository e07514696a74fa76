/**
 * Replication-aware failover, written once for every backend (conformance() runs it): who may
 * lead by the check's health and position, --max-lag, --priority, and switchover. A small check
 * script fed by files the test writes stands in for the application (test/fixtures/check.sh).
 */
import { renameSync, rmSync, writeFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { afterEach, beforeEach, describe, expect, it, onTestFailed } from 'vitest';
import type { BackendFixture } from './conformance.js';
import { histogramCount, hookArgs, newElection, readHookRecords, scratchFile, settled } from './conformance.js';
import { until } from './chaos/world.js';
import { Sidecar, type LogLine } from './harness/sidecar.js';

const CHECK = fileURLToPath(new URL('./fixtures/check.sh', import.meta.url));
const ADMIN_TOKEN = 'failover-admin-token';

/** The application behind one sidecar, as its check reports it. */
class Application {
  readonly file = scratchFile('check');

  constructor(position: number | string, exit = 0) {
    this.set(position, exit);
  }

  /** What the check prints next time, and its exit status; written atomically. */
  set(position: number | string | null, exit = 0, eligible?: boolean): void {
    const output = JSON.stringify({ ...(position === null ? {} : { position }), ...(eligible === undefined ? {} : { eligible }) });
    for (const [file, text] of [
      [this.file, output],
      [`${this.file}.exit`, String(exit)],
    ] as const) {
      writeFileSync(`${file}.tmp`, text);
      renameSync(`${file}.tmp`, file);
    }
  }

  /** Each check takes this long from now on. */
  slow(seconds: number): void {
    writeFileSync(`${this.file}.delay.tmp`, String(seconds));
    renameSync(`${this.file}.delay.tmp`, `${this.file}.delay`);
  }

  /** Checks started from now on do not finish until release(). */
  hold(): void {
    writeFileSync(`${this.file}.hold`, '');
  }

  release(): void {
    rmSync(`${this.file}.hold`, { force: true });
  }

  args(): string[] {
    return ['--check', `/bin/sh ${CHECK} ${this.file}`];
  }
}

interface ClusterBody {
  election: string;
  leader: { id: string; address: string; fencingToken: number } | null;
  members: Array<{ id: string; role: string; healthy: boolean; eligible: boolean; priority: number; position: number | string | null; lag: number | string | null }>;
}

const cluster = async (node: Sidecar) => (await (await node.fetch('/cluster')).json()) as ClusterBody;

/** Resolves once `node`'s /cluster shows what `matches` wants. */
async function waitForCluster(node: Sidecar, matches: (body: ClusterBody) => boolean, timeoutMs: number, what: string): Promise<ClusterBody> {
  const deadline = performance.now() + timeoutMs;
  let last: ClusterBody | undefined;
  while (performance.now() < deadline) {
    last = await cluster(node);
    if (matches(last)) return last;
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
  throw new Error(`${node.id}: /cluster never showed ${what} within ${timeoutMs} ms (last: ${JSON.stringify(last)})`);
}

const becamePrimary = (l: LogLine) => l.msg === 'role: primary';

async function checkRuns(node: Sidecar): Promise<number> {
  const text = await (await node.fetch('/metrics')).text();
  return Number(/^leaderd_check_runs_total (\S+)$/m.exec(text)?.[1] ?? NaN);
}

export function failover(fixture: BackendFixture): void {
  const ttlMs = fixture.leaseSeconds * 1000;
  const electTimeout = ttlMs * 3 + 5000;
  // A failover: the dead member's lease runs out, then the best member campaigns and checks.
  const failoverTimeout = ttlMs * 3 + 10000;

  describe(`${fixture.name}: replication-aware failover`, () => {
    beforeEach(() => onTestFailed(() => console.error(`the sidecars' logs: ${Sidecar.dumpLogs(scratchFile('failover-logs'))}`)));
    afterEach(() => Sidecar.killAll());

    const election = () => newElection();
    const start = (name: string, election: string, app: Application, extra: string[] = []) =>
      Sidecar.start(name, [...fixture.args(election), '--address', `${name}.test:5432`, ...app.args(), ...extra]);

    /** Starts `names` one after the other, each once it follows `leader` (so the order of joining is the test's). */
    async function join(leader: Sidecar, election: string, members: Array<[string, Application, string[]?]>): Promise<Sidecar[]> {
      const started: Sidecar[] = [];
      for (const [name, app, extra] of members) {
        const node = await start(name, election, app, extra);
        await node.waitForState((s) => s.role === 'replica' && s.leader?.id === leader.id, electTimeout, `replica of ${leader.id}`);
        started.push(node);
      }
      return started;
    }

    async function leading(name: string, election: string, app: Application, extra: string[] = []): Promise<Sidecar> {
      const node = await start(name, election, app, extra);
      await node.waitForRole('primary', electTimeout);
      return node;
    }

    it('the most up-to-date member wins a crash failover, even when it joined last', async () => {
      const e = election();
      const a = await leading('a', e, new Application(100));
      const [b, c] = await join(a, e, [
        ['b', new Application(50)],
        ['c', new Application(80)],
      ]);
      await waitForCluster(b!, (body) => body.members.length === 3, electTimeout, 'three members');
      const token = (await a.role()).fencingToken!;
      a.signal('SIGKILL');
      const { primary, state } = await settled([b!, c!], failoverTimeout);

      expect(primary).toBe(c);
      expect(state.fencingToken!).toBeGreaterThan(token);
      expect(b!.logs.some(becamePrimary)).toBe(false);
    });

    it('a clean handover goes to the most up-to-date replica, even when its last record is older than the others\' (and it lost its own session before)', async () => {
      const e = election();
      // Checks (and so published positions) only every 5 s: the records lag the applications.
      const slowly = ['--check-interval', '5', '--check-timeout', '4', '--unhealthy-after', '30'];
      const [appB, appC] = [new Application(50), new Application(40)];
      const a = await leading('a', e, new Application(100), slowly);
      const [b, c] = await join(a, e, [
        // b's check may hang for longer than a check interval without failing (see below).
        ['b', appB, ['--check-interval', '5', '--check-timeout', '30', '--unhealthy-after', '30']],
        ['c', appC, slowly],
      ]);
      await waitForCluster(a, (body) => body.members.map((m) => m.position).join() === '100,50,40', electTimeout, 'the first positions');
      // b loses its own session for a while (frozen past its lease): that is not the leader going.
      b!.signal('SIGSTOP');
      // Its session has ended when its record is gone.
      await waitForCluster(a, (body) => !body.members.some((m) => m.id === 'b'), failoverTimeout, "b's record gone");
      // b's checks hang from here, so what its new session publishes is its last check's position.
      appB.hold();
      b!.signal('SIGCONT');
      await b!.waitForLog((l) => l.msg === 'session opened', electTimeout, 'a new session', 2);
      await b!.waitForState((s) => s.role === 'replica' && s.leader?.id === 'a', electTimeout, 'replica of a again');
      // A member whose record nobody can see yet is not waited for when the leader goes: the test
      // waits until the others can see it (a reads the records once per check interval).
      await waitForCluster(a, (body) => body.members.some((m) => m.id === 'b' && m.position === 50), electTimeout, "b's record back");
      expect(b!.logs.filter((l) => /^check: /.test(String(l.msg))).map((l) => l.msg)).toEqual(['check: healthy']);
      // Both catch up, b further; b's check is still hanging, so c's record is news first.
      appB.set(100);
      appC.set(90);
      await a.stop();
      appB.release();
      const { primary } = await settled([b!, c!], failoverTimeout);

      expect(primary).toBe(b);
      expect(c!.logs.some(becamePrimary)).toBe(false);
    });

    it('--priority 0 never leads; at equal positions the higher priority does', async () => {
      const e = election();
      const a = await leading('a', e, new Application(100));
      const [b, c, d] = await join(a, e, [
        ['b', new Application(80), ['--priority', '1']],
        ['c', new Application(80), ['--priority', '3']],
        ['d', new Application(200), ['--priority', '0']],
      ]);
      await waitForCluster(b!, (body) => body.members.length === 4, electTimeout, 'four members');
      a.signal('SIGKILL');
      expect((await settled([b!, c!, d!], failoverTimeout)).primary).toBe(c);
      await waitForCluster(b!, (body) => body.members.length === 3, failoverTimeout, "a's record gone");
      c!.signal('SIGKILL');
      expect((await settled([b!, d!], failoverTimeout)).primary).toBe(b);

      expect(d!.logs.some(becamePrimary)).toBe(false);
      expect((await d!.role()).priority).toBe(0);
    });

    it('beyond --max-lag of the last leader a member never leads, and alone nobody leads until it catches up', async () => {
      const e = election();
      const maxLag = ['--max-lag', '100'];
      const [appA, appB, appC] = [new Application(1000), new Application(950), new Application(500)];
      const a = await leading('a', e, appA, maxLag);
      const [b, c] = await join(a, e, [
        ['b', appB, maxLag],
        ['c', appC, maxLag],
      ]);
      // a has published its position: the replicas know their lag.
      await waitForCluster(c!, (body) => body.members.find((m) => m.id === 'c')?.lag === 500, electTimeout, "c's lag of 500");
      expect((await b!.role()).lag).toBe(50);
      a.signal('SIGKILL');
      expect((await settled([b!, c!], failoverTimeout)).primary).toBe(b);
      // b, now primary, publishes 950: c is 450 behind.
      await waitForCluster(c!, (body) => body.members.find((m) => m.id === 'c')?.lag === 450, electTimeout, "c's lag of 450");
      expect((await c!.fetch('/replica?lag=500')).status).toBe(200);
      expect((await c!.fetch('/replica?lag=449')).status).toBe(503);

      b!.signal('SIGKILL');
      // Its view no longer names b (b's lease has run out): from here on, only the lag stops it.
      await c!.waitForState((s) => s.leader === null && s.backend.connected, failoverTimeout, 'no leader');
      // Three more checks, each followed by a look at whether it may stand: it never does.
      const runs = await checkRuns(c!);
      await until(async () => (await checkRuns(c!)) >= runs + 3, failoverTimeout);
      expect((await c!.fetch('/primary')).status).toBe(503);
      expect(c!.logs.some(becamePrimary)).toBe(false);
      expect(c!.logs.some((l) => l.msg === 'not standing for leadership' && /^lag \d+ is beyond max-lag 100$/.test(String(l.reason)))).toBe(true);

      appC.set(900);
      await c!.waitForRole('primary', failoverTimeout);
    });

    it('an unhealthy replica never leads, and a primary whose check keeps failing hands over', async () => {
      const e = election();
      const appA = new Application(100);
      const a = await leading('a', e, appA);
      const [b, c] = await join(a, e, [
        ['b', new Application(500, 1)],
        ['c', new Application(50)],
      ]);
      expect((await b!.role()).healthy).toBe(false);
      const token = (await a.role()).fencingToken!;
      appA.set(100, 3);
      // a keeps its term through a ttl of failed checks, then hands over.
      await c!.waitForRole('primary', failoverTimeout + ttlMs);
      const { primary, state } = await settled([a, b!, c!], electTimeout);

      expect(primary).toBe(c);
      expect(state.fencingToken!).toBeGreaterThan(token);
      expect(a.logs.some((l) => l.msg === 'not standing for leadership' && /^the check has failed for \d+ s: exited with status 3$/.test(String(l.reason)))).toBe(true);
      expect(b!.logs.some(becamePrimary)).toBe(false);
    });

    it('a switchover to a member that cannot take over answers 503 within a ttl, one at a time, and the old primary stays down meanwhile', async () => {
      const e = election();
      const tokenFile = scratchFile('admin-token');
      writeFileSync(tokenFile, `${ADMIN_TOKEN}\n`);
      const admin = ['--admin-token-file', tokenFile];
      const a = await leading('a', e, new Application(100), admin);
      const [b, c] = await join(a, e, [
        ['b', new Application(100), admin],
        ['c', new Application(100), admin],
      ]);
      await waitForCluster(a, (body) => body.members.length === 3 && body.members.every((m) => m.healthy), electTimeout, 'three healthy members');
      // Frozen, c cannot campaign: the switchover cannot complete.
      c!.signal('SIGSTOP');
      const ask = () =>
        a.fetch('/switchover', {
          method: 'POST',
          headers: { 'content-type': 'application/json', authorization: `Bearer ${ADMIN_TOKEN}` },
          body: JSON.stringify({ candidate: 'c' }),
          signal: AbortSignal.timeout(failoverTimeout + 10000),
        });
      const answers = await Promise.all([ask(), ask()]);
      const statuses = answers.map((r) => r.status).sort();
      c!.signal('SIGCONT');

      expect(statuses).toEqual([409, 503]);
      // a stepped down for the switchover and did not take leadership back while it was in flight.
      const stoodDown = a.logs.findIndex((l) => l.msg === 'role: replica' && l.previousRole === 'primary');
      const timedOut = a.logs.findIndex((l) => l.msg === 'switchover: not completed within the ttl; back to a normal election');
      expect(stoodDown).toBeGreaterThan(-1);
      expect(timedOut).toBeGreaterThan(stoodDown);
      expect(a.logs.slice(stoodDown, timedOut).some(becamePrimary)).toBe(false);
      // Then a normal election: someone leads again.
      await settled([a, b!, c!], failoverTimeout);
    });

    it('POST /switchover hands leadership to the member named, refuses what it cannot do, and /cluster agrees everywhere', async () => {
      const e = election();
      const tokenFile = scratchFile('admin-token');
      writeFileSync(tokenFile, `${ADMIN_TOKEN}\n`);
      const admin = ['--admin-token-file', tokenFile, '--max-lag', '100'];
      const appB = new Application(100);
      const a = await leading('a', e, new Application(100), admin);
      const [b, c] = await join(a, e, [
        ['b', appB, admin],
        ['c', new Application(90), admin],
      ]);
      await waitForCluster(a, (body) => body.members.length === 3 && body.members.every((m) => m.healthy), electTimeout, 'three healthy members');
      const switchover = (node: Sidecar, body: unknown, token: string | null = ADMIN_TOKEN) =>
        node.fetch('/switchover', {
          method: 'POST',
          headers: { 'content-type': 'application/json', ...(token ? { authorization: `Bearer ${token}` } : {}) },
          body: JSON.stringify(body),
        });

      expect((await switchover(a, { candidate: 'c' }, null)).status).toBe(401);
      expect((await switchover(a, { candidate: 'c', extra: 1 })).status).toBe(400);
      const notPrimary = await switchover(b!, { candidate: 'c' });
      expect(notPrimary.status).toBe(409);
      expect(((await notPrimary.json()) as { leader: { id: string } }).leader.id).toBe('a');
      const unknown = await switchover(a, { candidate: 'nobody' });
      expect(unknown.status).toBe(412);
      expect(((await unknown.json()) as { error: string }).error).toMatch(/nobody is not a live member/);
      appB.set(100, 1);
      await waitForCluster(a, (body) => body.members.find((m) => m.id === 'b')?.healthy === false, electTimeout, 'b unhealthy');
      const unhealthy = await switchover(a, { candidate: 'b' });
      expect(unhealthy.status).toBe(412);
      expect(((await unhealthy.json()) as { error: string }).error).toMatch(/b is unhealthy/);
      expect((await a.role()).role).toBe('primary');

      // c is behind b in position: only the switchover lets it lead, and nobody else jumps in.
      appB.set(100);
      await waitForCluster(a, (body) => body.members.every((m) => m.healthy), electTimeout, 'b healthy again');
      const before = (await a.role()).fencingToken!;
      const answer = await switchover(a, { candidate: 'c' });
      const result = (await answer.json()) as { from: string; to: string; fencingToken: number };
      expect(answer.status).toBe(200);
      expect(result.from).toBe('a');
      expect(result.to).toBe('c');
      expect(result.fencingToken).toBeGreaterThan(before);
      const after = await settled([a, b!, c!], electTimeout);
      expect(after.primary).toBe(c);
      expect(after.state.fencingToken).toBe(result.fencingToken);
      expect(b!.logs.some(becamePrimary)).toBe(false);

      // The same view from every member, once each has read the others' latest records.
      const deadline = performance.now() + electTimeout;
      let views: string[] = [];
      while (performance.now() < deadline) {
        views = await Promise.all([a, b!, c!].map(async (node) => JSON.stringify(await cluster(node))));
        if (new Set(views).size === 1) break;
        await new Promise((resolve) => setTimeout(resolve, 100));
      }
      expect(new Set(views).size, views.join('\n')).toBe(1);
      const agreed = JSON.parse(views[0]!) as ClusterBody;
      expect(agreed.leader?.id).toBe('c');
      expect(agreed.members.map((m) => `${m.id}:${m.role}:${m.position}`)).toEqual(['a:replica:100', 'b:replica:100', 'c:primary:90']);
    });

    describe('members with and without a check in one election', () => {
      /**
       * A sidecar without a check (always healthy, position unknown), following `leader`. With
       * hooks, as an application has them (every leader change costs each member a process),
       * unless `extra` brings its own.
       */
      async function plain(name: string, e: string, leader: Sidecar | null, extra: string[] = []): Promise<Sidecar> {
        const hooks = extra.some((a) => a.startsWith('--on-')) ? [] : hookArgs(scratchFile(`${name}-hooks`));
        const node = await Sidecar.start(name, [...fixture.args(e), '--address', `${name}.test:5432`, ...hooks, ...extra]);
        if (leader) await node.waitForState((s) => s.role === 'replica' && s.leader?.id === leader.id, electTimeout, `replica of ${leader.id}`);
        else await node.waitForRole('primary', electTimeout);
        return node;
      }

      /** Until every one of `nodes` has read `id`'s record with its position: they know it is better placed than they are. */
      async function allKnow(nodes: Sidecar[], id: string, position: number): Promise<void> {
        for (const node of nodes) {
          await waitForCluster(node, (body) => body.members.some((m) => m.id === id && m.healthy && m.position === position), electTimeout, `${id} at ${position}`);
        }
      }

      /** Until every one of `nodes` has withdrawn its candidacy: it gave up its place in the queue. */
      async function allWithdrew(nodes: Sidecar[]): Promise<void> {
        const withdrew = async (node: Sidecar) => (await histogramCount(node, 'leaderd_backend_request_duration_seconds', { operation: 'withdraw' })) > 0;
        for (const node of nodes) expect(await until(() => withdrew(node), electTimeout), `${node.id} withdrew`).toBe(true);
      }

      /** POST /switchover to `node`, naming `candidate`, with the admin token. */
      async function switchoverTo(node: Sidecar, candidate: string) {
        const answer = await node.fetch('/switchover', {
          method: 'POST',
          headers: { 'content-type': 'application/json', authorization: `Bearer ${ADMIN_TOKEN}` },
          body: JSON.stringify({ candidate }),
        });
        return { answer, body: (await answer.json()) as { to?: string; fencingToken?: number; error?: string } };
      }

      /** Five members without a check, following `leader`. */
      async function plainFollowers(e: string, leader: Sidecar): Promise<Sidecar[]> {
        const nodes: Sidecar[] = [];
        for (const name of ['p1', 'p2', 'p3', 'p4', 'p5']) nodes.push(await plain(name, e, leader));
        return nodes;
      }

      it('at a crash failover the member with a position takes over; those without one gave up their place in the queue before', async () => {
        const e = election();
        const l = await plain('l', e, null);
        const others = await plainFollowers(e, l);
        const heard = scratchFile('leader-changes');
        const a = await start('a', e, new Application(100), hookArgs(heard));
        await a.waitForState((s) => s.role === 'replica' && s.leader?.id === 'l', electTimeout, 'replica of l');
        await allKnow(others, 'a', 100);
        // Else each would come first in turn, step back, and rejoin behind the next.
        await allWithdrew(others);
        const heardBefore = readHookRecords(heard).length;

        l.signal('SIGKILL');
        const { primary } = await settled([a, ...others], failoverTimeout);

        expect(primary).toBe(a);
        for (const node of others) expect(node.logs.some(becamePrimary), node.id).toBe(false);
        // Nobody else came first on the way.
        const named = readHookRecords(heard)
          .slice(heardBefore)
          .filter((r) => r.LEADERD_EVENT === 'leader-change' && r.LEADERD_LEADER_ID !== 'a')
          .map((r) => r.LEADERD_LEADER_ID);
        expect(named).toEqual([]);
      });

      it('a switchover from a member without a check to one with a check completes, and nobody else leads meanwhile', async () => {
        const e = election();
        const tokenFile = scratchFile('admin-token');
        writeFileSync(tokenFile, `${ADMIN_TOKEN}\n`);
        // A demote that takes a moment: the others have time to come forward if they would.
        const l = await plain('l', e, null, ['--admin-token-file', tokenFile, '--on-demote', 'sleep 1']);
        const others = await plainFollowers(e, l);
        const x = await start('x', e, new Application(100));
        await x.waitForState((s) => s.role === 'replica' && s.leader?.id === 'l', electTimeout, 'replica of l');
        await allKnow([l, ...others], 'x', 100);
        const before = (await l.role()).fencingToken!;

        const { answer, body } = await switchoverTo(l, 'x');
        expect(answer.status, JSON.stringify(body)).toBe(200);
        expect(body.to).toBe('x');
        expect(body.fencingToken!).toBeGreaterThan(before);
        const { primary } = await settled([l, x, ...others], electTimeout);
        expect(primary).toBe(x);
        for (const node of others) expect(node.logs.some(becamePrimary), node.id).toBe(false);
      });

      it('a switchover to a member without a check that gave way to a member with one completes, however rarely it reads the records on its own', async () => {
        const e = election();
        const tokenFile = scratchFile('admin-token');
        writeFileSync(tokenFile, `${ADMIN_TOKEN}\n`);
        const admin = ['--admin-token-file', tokenFile];
        const p = await leading('p', e, new Application(100), admin);
        const [d] = await join(p, e, [['d', new Application(100), admin]]);
        // Its own reads of the records every 60 s: only the leader's going can make it read in time.
        const n = await plain('n', e, p, ['--check-interval', '60', '--unhealthy-after', '120']);
        await allKnow([n], 'd', 100);
        await allWithdrew([n]);
        await waitForCluster(p, (body) => body.members.some((m) => m.id === 'n'), electTimeout, 'n');
        const before = (await p.role()).fencingToken!;

        const { answer, body } = await switchoverTo(p, 'n');
        expect(answer.status, JSON.stringify(body)).toBe(200);
        expect(body.to).toBe('n');
        expect(body.fencingToken!).toBeGreaterThan(before);
        const { primary } = await settled([p, d!, n], electTimeout);
        expect(primary).toBe(n);
        expect(d!.logs.some(becamePrimary)).toBe(false);
      });
    });
  });
}

/**
 * The behaviour every backend must show, written once: each backend's test file calls
 * `conformance()` with a fixture that says how to put a sidecar on it.
 */
import { randomBytes } from 'node:crypto';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { connect } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import parsePrometheusTextFormat from 'parse-prometheus-text-format';
import { afterEach, describe, expect, it } from 'vitest';
import { failover } from './failover.js';
import { startHookServer } from './fixtures/hook-server.js';
import { Sidecar, type RoleBody } from './harness/sidecar.js';
import { readJsonLines } from './harness/json-lines.js';

export interface BackendFixture {
  readonly name: string;
  /** The lease the deadline is timed from (the ttl; on Consul the check TTL): failover bounds. */
  readonly leaseSeconds: number;
  /** Flags that put a sidecar into `election` on this backend (with --ttl). */
  args(election: string): string[];
  /** A server of the sidecars' own, for tests that stop it (none for the local backend). */
  dedicatedServer?(): Promise<DedicatedServer>;
}

export interface DedicatedServer {
  args(election: string): string[];
  /** Stops the server, keeping its data. */
  pause(): Promise<void>;
  resume(): Promise<void>;
  stop(): Promise<void>;
}

const RECORD_HOOK = fileURLToPath(new URL('./fixtures/record-hook.mjs', import.meta.url));
const scratch = mkdtempSync(join(tmpdir(), 'leaderd-test-'));

export function newElection(): string {
  return `e-${randomBytes(4).toString('hex')}`;
}

export function hookArgs(file: string, promoteStatus = 0): string[] {
  const command = (status: number) => `${process.execPath} ${RECORD_HOOK} ${file} ${status}`;
  return ['--on-promote', command(promoteStatus), '--on-demote', command(0), '--on-leader-change', command(0)];
}

export function readHookRecords(file: string): Array<Record<string, string>> {
  return readJsonLines<Record<string, string>>(file);
}

export function scratchFile(name: string): string {
  return join(scratch, `${randomBytes(4).toString('hex')}-${name}`);
}

export interface Settled {
  primary: Sidecar;
  replicas: Sidecar[];
  state: RoleBody;
}

/** Waits until exactly one sidecar is primary and every other one names it, with its token. */
export async function settled(group: Sidecar[], timeoutMs: number): Promise<Settled> {
  const abort = new AbortController();
  let state: RoleBody;
  try {
    state = await Promise.any(group.map((s) => s.waitForRole('primary', timeoutMs, abort.signal)));
  } finally {
    abort.abort();
  }
  const primary = group.find((s) => s.id === state.id)!;
  const replicas = group.filter((s) => s !== primary);
  await Promise.all(
    replicas.map((s) =>
      s.waitForState(
        (r) => r.role === 'replica' && r.leader?.id === primary.id && r.fencingToken === state.fencingToken,
        timeoutMs,
        `replica of ${primary.id}`,
      ),
    ),
  );
  expect((await primary.role()).role).toBe('primary');
  return { primary, replicas, state };
}

export function conformance(fixture: BackendFixture): void {
  const ttlMs = fixture.leaseSeconds * 1000;
  const electTimeout = ttlMs * 3 + 5000;

  async function startGroup(size: number, extra: (i: number) => string[] = () => []): Promise<Sidecar[]> {
    const election = newElection();
    return Promise.all(
      Array.from({ length: size }, (_, i) =>
        Sidecar.start(`${fixture.name}-${election}-n${i + 1}`, [...fixture.args(election), '--address', `n${i + 1}.test:5432`, ...extra(i)]),
      ),
    );
  }

  failover(fixture);

  describe(`${fixture.name}: conformance`, () => {
    afterEach(() => Sidecar.killAll());

    it('three sidecars: exactly one primary, named by every replica with the same fencing token', async () => {
      const group = await startGroup(3);
      const { primary, replicas, state } = await settled(group, electTimeout);

      expect(Number.isSafeInteger(state.fencingToken)).toBe(true);
      expect(state.fencingToken).toBeGreaterThan(0);
      expect(state.leader).toEqual({ id: primary.id, address: `n${group.indexOf(primary) + 1}.test:5432` });
      expect(state.backend).toEqual({ kind: fixture.name, connected: true });
      expect((await primary.fetch('/primary')).status).toBe(200);
      expect((await primary.fetch('/replica')).status).toBe(503);
      for (const replica of replicas) {
        expect((await replica.fetch('/primary')).status).toBe(503);
        expect((await replica.fetch('/replica')).status).toBe(200);
        expect(await (await replica.fetch('/')).json()).toEqual({ name: primary.id });
      }
      const head = await primary.fetch('/primary', { method: 'HEAD' });
      expect(head.status).toBe(200);
      expect(await head.text()).toBe('');
      expect((await replicas[0]!.fetch('/primary', { method: 'HEAD' })).status).toBe(503);
      expect((await primary.fetch('/healthz')).status).toBe(200);
    });

    it('kill -9 of the primary: a replica takes over within the ttl, with a larger fencing token', async () => {
      const group = await startGroup(3);
      const before = await settled(group, electTimeout);
      const killedAt = performance.now();
      before.primary.signal('SIGKILL');
      const after = await settled(before.replicas, ttlMs + 5000);
      const failoverMs = performance.now() - killedAt;

      expect(failoverMs).toBeLessThan(ttlMs + 3000);
      expect(after.state.fencingToken!).toBeGreaterThan(before.state.fencingToken!);
    });

    it('SIGTERM of the primary: it exits 0 and a replica takes over well inside one ttl', async () => {
      const group = await startGroup(3);
      const before = await settled(group, electTimeout);
      const signalledAt = performance.now();
      const exit = before.primary.stop();
      const after = await settled(before.replicas, ttlMs);
      const handoverMs = performance.now() - signalledAt;

      expect(await exit).toEqual({ code: 0, signal: null });
      expect(handoverMs).toBeLessThan(ttlMs / 2);
      expect(after.state.fencingToken!).toBeGreaterThan(before.state.fencingToken!);
      expect(before.primary.logs.some((l) => l.msg === 'role: unknown' && l.previousRole === 'primary')).toBe(true);
    });

    it('POST /resign: refuses missing and wrong tokens, then hands leadership over for the hold-off', async () => {
      const tokenFile = scratchFile('admin-token');
      writeFileSync(tokenFile, 's3cret-admin-token\n');
      const group = await startGroup(2, () => ['--admin-token-file', tokenFile]);
      const { primary, replicas } = await settled(group, electTimeout);
      const other = replicas[0]!;
      const resign = (authorization?: string, body = '{"holdOffSeconds": 60}') =>
        primary.fetch('/resign', {
          method: 'POST',
          headers: { 'content-type': 'application/json', ...(authorization ? { authorization } : {}) },
          body,
        });

      const missing = await resign();
      expect(missing.status).toBe(401);
      expect(await missing.json()).toEqual({ error: 'missing or wrong bearer token' });
      expect((await resign('Bearer wrong-token')).status).toBe(401);
      expect((await resign('Bearer s3cret-admin-token', '{"holdOffSeconds": "soon"}')).status).toBe(400);
      expect((await primary.role()).role).toBe('primary');

      const accepted = await resign('Bearer s3cret-admin-token');
      expect(accepted.status).toBe(200);
      expect(await accepted.json()).toMatchObject({ resigned: true, previousRole: 'primary', holdOffSeconds: 60 });
      const after = await settled([other, primary], ttlMs + 5000);
      expect(after.primary).toBe(other);

      // Out of the race for the hold-off: with the new primary gone, it must not take over.
      await other.stop();
      await expect(primary.waitForRole('primary', ttlMs + 2000)).rejects.toThrow(/no role primary/);
    });

    it('POST /resign with no hold-off ends the term: whoever leads next has a larger token', async () => {
      const tokenFile = scratchFile('admin-token');
      writeFileSync(tokenFile, 's3cret-admin-token\n');
      const files = [scratchFile('resign-1'), scratchFile('resign-2')];
      const group = await startGroup(2, (i) => ['--admin-token-file', tokenFile, ...hookArgs(files[i]!)]);
      const before = await settled(group, electTimeout);
      await before.primary.waitForLog((l) => l.msg === 'hook succeeded' && l.hook === 'promote', 10000, 'promote hook');
      const response = await before.primary.fetch('/resign', {
        method: 'POST',
        headers: { authorization: 'Bearer s3cret-admin-token', 'content-type': 'application/json' },
        body: '{"holdOffSeconds": 0}',
      });
      expect(response.status).toBe(200);
      const after = await settled(group, electTimeout);
      expect(after.state.fencingToken!).toBeGreaterThan(before.state.fencingToken!);
      await after.primary.waitForLog(
        (l) => l.msg === 'hook succeeded' && l.hook === 'promote' && l.fencingToken === after.state.fencingToken,
        10000,
        'promote of the new term',
      );
      const events = (s: Sidecar) =>
        readHookRecords(files[group.indexOf(s)]!).filter((r) => r.LEADERD_EVENT !== 'leader-change').map((r) => `${r.LEADERD_EVENT}:${r.LEADERD_FENCING_TOKEN}`);
      const [t1, t2] = [before.state.fencingToken, after.state.fencingToken];
      if (after.primary === before.primary) {
        expect(events(before.primary)).toEqual([`promote:${t1}`, `demote:${t1}`, `promote:${t2}`]);
      } else {
        expect(events(before.primary)).toEqual([`promote:${t1}`, `demote:${t1}`]);
        expect(events(after.primary)).toEqual([`promote:${t2}`]);
      }
    });

    it('POST /resign answers 403 when no admin token is configured', async () => {
      const [node] = await startGroup(1);
      const response = await node!.fetch('/resign', { method: 'POST' });
      expect(response.status).toBe(403);
      expect((await response.json()).error).toMatch(/admin endpoints are disabled/);
    });

    it('a primary frozen past its deadline answers 503 before anything else when resumed', async () => {
      const group = await startGroup(2);
      const { primary, replicas } = await settled(group, electTimeout);
      const frozenAt = performance.now();
      primary.signal('SIGSTOP');
      try {
        await replicas[0]!.waitForRole('primary', ttlMs + 5000);
        // The lease of the frozen node cannot have expired sooner than ttl after its last renewal,
        // which was at most one renew interval (ttl/3) before the freeze.
        expect(performance.now() - frozenAt).toBeGreaterThanOrEqual((ttlMs * 2) / 3 - 50);
        const answer = rawRequest(primary.url, 'GET /primary HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n');
        await answer.sent;
        primary.signal('SIGCONT');
        const response = await answer.response;
        expect(response).toMatch(/^HTTP\/1\.1 503 /);
        // Unknown, or already a replica of the new primary if a new session opened first: never
        // itself as leader.
        const body = JSON.parse(response.slice(response.indexOf('\r\n\r\n') + 4)) as RoleBody;
        expect(['unknown', 'replica']).toContain(body.role);
        expect(body.leader?.id).not.toBe(primary.id);
      } finally {
        primary.signal('SIGCONT');
      }
      const ended = await primary.waitForLog((l) => l.msg === 'session ended', 5000);
      expect(ended.reason).toBe('lease deadline passed');
      await primary.waitForState((s) => s.role === 'replica' && s.leader?.id === replicas[0]!.id, electTimeout, 'rejoin as replica');
    });

    it('hooks run in order, one term at a time, with the documented environment', async () => {
      const files = [scratchFile('hooks-1'), scratchFile('hooks-2'), scratchFile('hooks-3')];
      const group = await startGroup(3, (i) => hookArgs(files[i]!));
      const first = await settled(group, electTimeout);
      const index = (s: Sidecar) => group.indexOf(s);
      await first.primary.waitForLog((l) => l.msg === 'hook succeeded' && l.hook === 'promote', 10000, 'promote hook');
      const token1 = String(first.state.fencingToken);
      const election = first.state.election;
      const env = (s: Sidecar, event: string, role: string, leader: Sidecar, token: string) => ({
        LEADERD_EVENT: event,
        LEADERD_ELECTION: election,
        LEADERD_ID: s.id,
        LEADERD_ROLE: role,
        LEADERD_LEADER_ID: leader.id,
        LEADERD_LEADER_ADDRESS: `n${index(leader) + 1}.test:5432`,
        LEADERD_FENCING_TOKEN: token,
      });
      const records = (s: Sidecar) => readHookRecords(files[index(s)]!).map(({ at: _at, ...facts }) => facts);

      expect(records(first.primary)).toEqual([
        env(first.primary, 'leader-change', 'primary', first.primary, token1),
        env(first.primary, 'promote', 'primary', first.primary, token1),
      ]);
      for (const replica of first.replicas) {
        await replica.waitForLog((l) => l.msg === 'hook succeeded' && l.hook === 'leader-change', 10000, 'leader-change hook');
        expect(records(replica)).toEqual([env(replica, 'leader-change', 'replica', first.primary, token1)]);
      }

      await first.primary.stop();
      const second = await settled(first.replicas, ttlMs);
      const token2 = String(second.state.fencingToken);
      expect(records(first.primary)).toEqual([
        env(first.primary, 'leader-change', 'primary', first.primary, token1),
        env(first.primary, 'promote', 'primary', first.primary, token1),
        env(first.primary, 'demote', 'unknown', first.primary, token1),
      ]);
      await second.primary.waitForLog((l) => l.msg === 'hook succeeded' && l.hook === 'promote', 10000, 'second promote');
      expect(records(second.primary).slice(1)).toEqual([
        env(second.primary, 'leader-change', 'primary', second.primary, token2),
        env(second.primary, 'promote', 'primary', second.primary, token2),
      ]);
      // The old primary's demote hook finished before the new primary's promote hook started.
      const demotedAt = Number(readHookRecords(files[index(first.primary)]!)[2]!.at);
      const promotedAt = Number(readHookRecords(files[index(second.primary)]!)[2]!.at);
      expect(demotedAt).toBeLessThan(promotedAt);
      const third = second.replicas[0]!;
      const leaderChanged = (l: { msg: string; hook?: unknown }) => l.msg === 'hook succeeded' && l.hook === 'leader-change';
      await third.waitForLog(leaderChanged, 10000, 'second leader-change hook', 2);
      expect(records(third)).toHaveLength(2);
      expect(records(third)[1]).toEqual(env(third, 'leader-change', 'replica', second.primary, token2));
    });

    it('the HTTP hook receives the same facts as JSON', async () => {
      const hooks = await startHookServer();
      try {
        const [node] = await startGroup(1, () => ['--hook-url', hooks.url]);
        const { state } = await settled([node!], electTimeout);
        await node!.waitForLog((l) => l.msg === 'hook succeeded' && l.hook === 'promote', 10000, 'promote hook');
        const leader = { id: node!.id, address: 'n1.test:5432' };
        const facts = { election: state.election, id: node!.id, role: 'primary', leader, fencingToken: state.fencingToken };
        expect(hooks.received).toEqual([
          { event: 'leader-change', ...facts },
          { event: 'promote', ...facts },
        ]);
      } finally {
        await hooks.close();
      }
    });

    it('a failing promote hook makes the node resign so that a healthy candidate takes over', async () => {
      const election = newElection();
      const failing = await Sidecar.start(`${fixture.name}-${election}-failing`, [
        ...fixture.args(election),
        ...hookArgs(scratchFile('failing'), 1),
      ]);
      await failing.waitForLog((l) => l.msg === 'hook failed' && l.hook === 'promote', electTimeout, 'failed promote');
      await failing.waitForLog((l) => l.msg === 'resigned: out of the race', 5000, 'resignation');
      await failing.waitForState((s) => s.role === 'replica', 5000);

      const healthy = await Sidecar.start(`${fixture.name}-${election}-healthy`, fixture.args(election));
      const { primary } = await settled([failing, healthy], electTimeout);
      expect(primary).toBe(healthy);
      const metrics = await scrape(failing);
      expect(sample(metrics, 'leaderd_hook_failures_total', { event: 'promote' })).toBe(1);
      expect(sample(metrics, 'leaderd_transitions_total', { direction: 'demote' })).toBe(1);
    });

    it('/metrics parses as Prometheus text and reports role, token and lease', async () => {
      const group = await startGroup(2);
      const { primary, replicas, state } = await settled(group, electTimeout);
      const election = state.election;
      const onPrimary = await scrape(primary);
      const onReplica = await scrape(replicas[0]!);

      expect(sample(onPrimary, 'leader_election_master_status', { name: election })).toBe(1);
      expect(sample(onReplica, 'leader_election_master_status', { name: election })).toBe(0);
      expect(sample(onPrimary, 'leaderd_role', { role: 'primary' })).toBe(1);
      expect(sample(onPrimary, 'leaderd_role', { role: 'replica' })).toBe(0);
      expect(sample(onReplica, 'leaderd_role', { role: 'replica' })).toBe(1);
      expect(sample(onPrimary, 'leaderd_fencing_token', {})).toBe(state.fencingToken);
      expect(sample(onReplica, 'leaderd_fencing_token', {})).toBe(state.fencingToken);
      expect(sample(onPrimary, 'leaderd_transitions_total', { direction: 'promote' })).toBe(1);
      expect(sample(onPrimary, 'leaderd_backend_connected', {})).toBe(1);
      const remaining = sample(onPrimary, 'leaderd_lease_remaining_seconds', {});
      expect(remaining).toBeGreaterThan(0);
      expect(remaining).toBeLessThanOrEqual(fixture.leaseSeconds);
      expect(sample(onPrimary, 'leaderd_info', { election, id: primary.id, backend: fixture.name })).toBe(1);
      const families = new Set(onPrimary.map((f) => f.name));
      for (const name of [
        'leaderd_last_transition_timestamp_seconds',
        'leaderd_backend_request_duration_seconds',
        'leaderd_lease_renewals_total',
        'leaderd_hook_runs_total',
        'process_resident_memory_bytes',
      ]) {
        expect(families).toContain(name);
      }
    });

    if (fixture.dedicatedServer) {
      const dedicated = fixture.dedicatedServer.bind(fixture);
      it('server stopped: the primary demotes before its lease runs out; a primary is back when it returns', async () => {
        const server = await dedicated();
        try {
          const election = newElection();
          const files = [scratchFile('outage-a'), scratchFile('outage-b')];
          const group = await Promise.all(
            ['a', 'b'].map((n, i) => Sidecar.start(`${fixture.name}-outage-${n}`, [...server.args(election), ...hookArgs(files[i]!)])),
          );
          const before = await settled(group, electTimeout);
          await before.primary.waitForLog((l) => l.msg === 'hook succeeded' && l.hook === 'promote', 10000, 'promote hook');

          const stoppedAt = performance.now();
          await server.pause();
          await before.primary.waitForRole('unknown', ttlMs);
          expect(performance.now() - stoppedAt).toBeLessThan(ttlMs);
          await before.primary.waitForLog((l) => l.msg === 'hook succeeded' && l.hook === 'demote', 10000, 'demote hook');
          const demote = readHookRecords(files[group.indexOf(before.primary)]!).at(-1);
          expect(demote).toMatchObject({ LEADERD_EVENT: 'demote', LEADERD_FENCING_TOKEN: String(before.state.fencingToken) });
          expect((await before.replicas[0]!.role()).role).not.toBe('primary');

          await server.resume();
          const after = await settled(group, 30000);
          expect(after.state.fencingToken!).toBeGreaterThan(before.state.fencingToken!);
        } finally {
          await server.stop();
        }
      });
    }
  });
}

export interface MetricFamily {
  name: string;
  type: string;
  metrics: Array<{ value?: string; labels?: Record<string, string> }>;
}

export async function scrape(sidecar: Sidecar): Promise<MetricFamily[]> {
  const response = await sidecar.fetch('/metrics');
  expect(response.headers.get('content-type')).toMatch(/^text\/plain; version=0\.0\.4/);
  return parsePrometheusTextFormat(await response.text()) as MetricFamily[];
}

/** The value of the one sample of `name` whose labels include `labels`. */
export function sample(families: MetricFamily[], name: string, labels: Record<string, string>): number {
  const family = families.find((f) => f.name === name);
  if (!family) throw new Error(`no metric ${name}`);
  const matching = family.metrics.filter((m) => Object.entries(labels).every(([k, v]) => m.labels?.[k] === v));
  if (matching.length !== 1) throw new Error(`${matching.length} samples of ${name} match ${JSON.stringify(labels)}`);
  return Number(matching[0]!.value);
}

/**
 * How many observations the histogram `name` counted for `labels` (0 when none yet), read from
 * the exposition's `_count` line: the parser above drops histogram labels and counts.
 */
export async function histogramCount(sidecar: Sidecar, name: string, labels: Record<string, string>): Promise<number> {
  const text = await (await sidecar.fetch('/metrics')).text();
  const wanted = Object.entries(labels).map(([k, v]) => `${k}="${v}"`);
  for (const line of text.split('\n')) {
    const match = /^(\w+)\{([^}]*)\} (\S+)$/.exec(line);
    if (match?.[1] === `${name}_count` && wanted.every((l) => match[2]!.split(',').includes(l))) return Number(match[3]);
  }
  return 0;
}

/** Sends raw bytes; `sent` resolves once the kernel has them (the peer may be frozen). */
function rawRequest(url: string, request: string): { sent: Promise<void>; response: Promise<string> } {
  const { hostname, port } = new URL(url);
  const socket = connect(Number(port), hostname);
  let resolveSent!: () => void;
  const sent = new Promise<void>((resolve) => (resolveSent = resolve));
  const response = new Promise<string>((resolve, reject) => {
    let data = '';
    socket.on('data', (chunk) => (data += chunk));
    socket.on('end', () => resolve(data));
    socket.on('error', reject);
  });
  socket.once('connect', () => socket.write(request, () => resolveSent()));
  return { sent, response };
}

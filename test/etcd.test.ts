import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { conformance, histogramCount, newElection, settled } from './conformance.js';
import { EtcdServer, type Etcdctl } from './harness/etcd.js';
import { TcpProxy } from './harness/proxy.js';
import { Sidecar } from './harness/sidecar.js';
import { until } from './chaos/world.js';

const ttlSeconds = 2;
let etcd: EtcdServer;
const argsFor = (server: () => EtcdServer) => (election: string) => [
  '--backend', 'etcd',
  '--etcd-endpoints', server().clientUrl,
  '--etcd-prefix', '/leaderd-test',
  '--election', election,
  '--ttl', String(ttlSeconds),
];
const args = argsFor(() => etcd);

/**
 * Stops a sidecar that must still be running, and resolves once its last log line has been read:
 * every line it logged before is in `logs` then, so counting them is not a race with the pipe.
 */
async function stopAndDrain(node: Sidecar): Promise<void> {
  expect(node.child.exitCode).toBeNull();
  expect(await node.stop()).toEqual({ code: 0, signal: null });
  await node.waitForLog((l) => l.msg === 'stopped', 10000, 'its last log line');
}

beforeAll(async () => {
  etcd = await EtcdServer.start();
});
afterAll(async () => {
  await etcd?.stop();
});

conformance({
  name: 'etcd',
  leaseSeconds: ttlSeconds,
  args,
  async dedicatedServer() {
    const own = await EtcdServer.start();
    return { args: argsFor(() => own), pause: () => own.pause(), resume: () => own.resume(), stop: () => own.stop() };
  },
});

describe('etcd: backend specifics', () => {
  afterEach(() => Sidecar.killAll());

  it('a candidacy is a key under PREFIX/ELECTION/, and a clean shutdown removes it', async () => {
    const election = newElection();
    const group = await Promise.all(['a', 'b'].map((n) => Sidecar.start(`etcd-keys-${n}`, args(election))));
    await settled(group, 15000);
    const keys = await etcd.keys(`/leaderd-test/${election}/`);
    expect(keys).toHaveLength(2);
    for (const key of keys) expect(key).toMatch(new RegExp(`^/leaderd-test/${election}/[0-9a-f]+$`));
    await Promise.all(group.map((s) => s.stop()));
    expect(await etcd.keys(`/leaderd-test/${election}/`)).toEqual([]);
  });

  it('a ttl etcd would silently raise is refused before starting', async () => {
    const { runLeaderd } = await import('./harness/sidecar.js');
    const result = await runLeaderd(['--backend', 'etcd', '--etcd-endpoints', etcd.clientUrl, '--ttl', '1']);
    expect(result.code).toBe(2);
    expect(result.stderr).toMatch(/ttl: 1 s is below the etcd backend's minimum of 2 s/);
  });

  it('a connection that goes silent for good is dropped: the primary steps down, reconnects, and leads again', async () => {
    const proxy = await TcpProxy.start(etcd.clientAddress);
    try {
      const node = await Sidecar.start('etcd-wedged', args(newElection()).map((a) => (a === etcd.clientUrl ? `http://${proxy.address}` : a)));
      const before = await node.waitForRole('primary', 15000);
      proxy.wedge();
      await node.waitForRole('unknown', 10000);
      // Without keepalive pings the wedged connection would be kept until the kernel gave up on
      // it, many minutes later; with them it is abandoned within seconds.
      const after = await node.waitForRole('primary', 30000);
      expect(after.fencingToken).toBeGreaterThan(before.fencingToken!);
    } finally {
      await proxy.stop();
    }
  });

  it('ten candidates and a leader change: the replicas learn it from their watch, without reading the election again', async () => {
    const election = newElection();
    const group = await Promise.all(Array.from({ length: 10 }, (_, i) => Sidecar.start(`etcd-fanout-${i}`, args(election))));
    const before = await settled(group, 15000);
    const reads = (s: Sidecar) => histogramCount(s, 'leaderd_backend_request_duration_seconds', { operation: 'range' });
    // A session reads the election twice on its own account: when it opens, and after its
    // campaign (a replica can name the leader after the first). Count from after both.
    const bothReadsDone = async () => (await Promise.all(group.map(reads))).every((n) => n >= 2);
    expect(await until(bothReadsDone, 10000)).toBe(true);
    const rest = before.replicas;
    const readsBefore = await Promise.all(rest.map(reads));

    await before.primary.stop();
    const after = await settled(rest, 10000);
    expect(after.state.fencingToken).toBeGreaterThan(before.state.fencingToken!);
    expect(await Promise.all(rest.map(reads))).toEqual(readsBefore);
  });

  it('a key without a lease holding JSON null, first in line, blocks the election without crashing anyone; deleted, the election goes on', async () => {
    const election = newElection();
    const directory = `/leaderd-test/${election}/`;
    const first = await Sidecar.start('etcd-foreign-a', args(election));
    const before = await first.waitForRole('primary', 15000);
    // Created after the primary's key and before the others': once the primary goes, it is the
    // oldest key under the election, and in etcd's recipe nobody leads until it is deleted.
    await etcd.put(`${directory}zz`, 'null');
    const rest = await Promise.all(['b', 'c'].map((n) => Sidecar.start(`etcd-foreign-${n}`, args(election))));
    await settled([first, ...rest], 15000);

    // Every replica learns of the handover from its watch, where the crash was.
    await first.stop();
    // And one more meets the key on its first read.
    rest.push(await Sidecar.start('etcd-foreign-d', args(election)));
    const blocked = 'a key without a lease leads the election: nobody can lead until it is deleted';
    for (const node of rest) {
      await node.waitForLog((l) => l.msg === blocked && l.key === `${directory}zz`, 15000, 'the blocking key noticed');
      expect((await node.role()).role).toBe('replica');
    }

    await etcd.delete(`${directory}zz`);
    const after = await settled(rest, 15000);
    expect(after.state.fencingToken!).toBeGreaterThan(before.fencingToken!);
    for (const node of rest) {
      await stopAndDrain(node);
      expect(node.logs.filter((l) => l.msg === blocked && l.key === `${directory}zz`)).toHaveLength(1);
    }
  });

  it('a plain put on the primary\'s own key ends its session, and leadership does not move to an older key or a lower token', async () => {
    const election = newElection();
    const group = await Promise.all(['a', 'b'].map((n) => Sidecar.start(`etcd-overwrite-${n}`, args(election))));
    const before = await settled(group, 15000);
    const [ownKey] = (await etcd.range(`/leaderd-test/${election}/`)).filter((kv) => kv.value.includes(`"${before.primary.id}"`));
    expect(ownKey).toBeDefined();
    // The key keeps its create revision, the oldest, but loses its lease.
    await etcd.put(ownKey!.key, 'overwritten');
    await before.primary.waitForLog((l) => l.msg === 'session ended' && /overwritten by another writer/.test(String(l.reason)), 10000, 'session ended');
    for (const node of group) {
      await node.waitForLog((l) => l.msg === 'a key without a lease leads the election: nobody can lead until it is deleted', 10000, 'blocked');
      expect((await node.role()).role).not.toBe('primary');
    }
    await etcd.delete(ownKey!.key);
    const after = await settled(group, 15000);
    expect(after.state.fencingToken!).toBeGreaterThan(before.state.fencingToken!);
  });

  it('a mixed election: leaderd follows an `etcdctl elect` leader by its proposal, leads after it resigns, and `etcdctl elect -l` sees leaderd', async () => {
    const election = newElection();
    const name = `/leaderd-test/${election}`;
    const running: Etcdctl[] = [];
    try {
      const candidate = etcd.etcdctl(['elect', name, 'proposal-from-etcdctl']);
      running.push(candidate);
      // Elected: it prints its key, then its value.
      await candidate.waitForLine((l) => l === 'proposal-from-etcdctl', 15000);
      const [theirs] = await etcd.range(`${name}/`);
      expect(theirs).toMatchObject({ value: 'proposal-from-etcdctl' });
      expect(theirs!.lease).not.toBe('0');

      const group = await Promise.all(['a', 'b'].map((n) => Sidecar.start(`etcd-mixed-${n}`, args(election))));
      for (const node of group) {
        const state = await node.waitForState((s) => s.role === 'replica' && s.leader !== null, 15000, 'replica of the etcdctl candidate');
        expect(state.leader).toEqual({ id: 'proposal-from-etcdctl', address: 'proposal-from-etcdctl' });
        expect(state.fencingToken).toBe(theirs!.createRevision);
      }
      const observer = etcd.etcdctl(['elect', '-l', name]);
      running.push(observer);
      await observer.waitForLine((l) => l === 'proposal-from-etcdctl', 15000);

      // SIGINT: etcdctl resigns (deletes its key) on the way out.
      candidate.signal('SIGINT');
      expect((await candidate.exited).code).toBe(0);
      const after = await settled(group, 15000);
      expect(after.state.fencingToken!).toBeGreaterThan(theirs!.createRevision);

      const ours = (await etcd.range(`${name}/`)).find((kv) => kv.createRevision === after.state.fencingToken)!;
      expect(JSON.parse(ours.value)).toEqual({ id: after.primary.id, address: after.primary.id });
      const keyLine = await observer.waitForLine((l) => l === ours.key, 15000);
      expect(observer.lines[keyLine + 1]).toBe(ours.value);
    } finally {
      await Promise.all(running.map((p) => p.kill()));
    }
  });
});

import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { conformance, histogramCount, newElection, settled } from './conformance.js';
import { EtcdServer } from './harness/etcd.js';
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
});

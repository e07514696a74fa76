import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { conformance, hookArgs, newElection, readHookRecords, scratchFile, settled } from './conformance.js';
import { EtcdServer } from './harness/etcd.js';
import { Sidecar } from './harness/sidecar.js';

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

conformance({ name: 'etcd', ttlSeconds, args });

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

  it('etcd stopped: the primary demotes before its ttl runs out; a primary is back when etcd returns', async () => {
    const own = await EtcdServer.start();
    try {
      const ownArgs = argsFor(() => own);
      const election = newElection();
      const hooks = [scratchFile('outage-a'), scratchFile('outage-b')];
      const group = await Promise.all(
        ['a', 'b'].map((n, i) => Sidecar.start(`etcd-outage-${n}`, [...ownArgs(election), ...hookArgs(hooks[i]!)])),
      );
      const before = await settled(group, 15000);
      await before.primary.waitForLog((l) => l.msg === 'hook succeeded' && l.hook === 'promote', 10000);

      const stoppedAt = performance.now();
      await own.pause();
      await before.primary.waitForRole('unknown', ttlSeconds * 1000);
      expect(performance.now() - stoppedAt).toBeLessThan(ttlSeconds * 1000);
      await before.primary.waitForLog((l) => l.msg === 'hook succeeded' && l.hook === 'demote', 10000, 'demote hook');
      const demote = readHookRecords(hooks[group.indexOf(before.primary)]!).at(-1);
      expect(demote).toMatchObject({ LEADERD_EVENT: 'demote', LEADERD_FENCING_TOKEN: String(before.state.fencingToken) });
      expect((await before.replicas[0]!.role()).role).not.toBe('primary');

      await own.resume();
      const after = await settled(group, 30000);
      expect(after.state.fencingToken!).toBeGreaterThan(before.state.fencingToken!);
    } finally {
      await own.stop();
    }
  });

  it('a ttl etcd would silently raise is refused before starting', async () => {
    const { runLeaderd } = await import('./harness/sidecar.js');
    const result = await runLeaderd(['--backend', 'etcd', '--etcd-endpoints', etcd.clientUrl, '--ttl', '1']);
    expect(result.code).toBe(2);
    expect(result.stderr).toMatch(/ttl: 1 s is below the etcd backend's minimum of 2 s/);
  });
});

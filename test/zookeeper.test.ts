import { createRequire } from 'node:module';
import { writeFileSync } from 'node:fs';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { conformance, histogramCount, hookArgs, newElection, readHookRecords, scratchFile, settled } from './conformance.js';
import { Sidecar, runLeaderd } from './harness/sidecar.js';
import { ZookeeperEnsemble, ZookeeperServer } from './harness/zookeeper.js';
import { violations, type HookRecord } from './overlap.js';

// A 2 s session: within the 0.4 s to 4 s a 200 ms tickTime allows.
const ttlSeconds = 2;
let zk: ZookeeperServer;
const argsFor = (connect: () => string) => (election: string) => [
  '--backend', 'zookeeper',
  '--zk-connect', connect(),
  '--zk-prefix', '/leaderd-test',
  '--election', election,
  '--ttl', String(ttlSeconds),
];
const args = argsFor(() => zk.connectString);
const records = (files: string[]) => files.flatMap((f) => readHookRecords(f)) as unknown as HookRecord[];

beforeAll(async () => {
  zk = await ZookeeperServer.start();
});
afterAll(async () => {
  await zk?.stop();
});

conformance({
  name: 'zookeeper',
  leaseSeconds: ttlSeconds,
  args,
  async dedicatedServer() {
    const own = await ZookeeperServer.start();
    return { args: argsFor(() => own.connectString), pause: () => own.pause(), resume: () => own.resume(), stop: () => own.stop() };
  },
});

describe('zookeeper: backend specifics', () => {
  afterEach(() => Sidecar.killAll());

  it('session expiry while primary: exactly one demote, then a correct re-election', async () => {
    const own = await ZookeeperServer.start();
    try {
      const election = newElection();
      const files = [scratchFile('expiry-a'), scratchFile('expiry-b')];
      const group = await Promise.all(
        ['a', 'b'].map((n, i) => Sidecar.start(`zk-expiry-${n}`, [...argsFor(() => own.connectString)(election), ...hookArgs(files[i]!)])),
      );
      const before = await settled(group, 15000);
      await before.primary.waitForLog((l) => l.msg === 'hook succeeded' && l.hook === 'promote', 10000);

      // Frozen past the session timeout, the server expires every session when it thaws.
      own.freeze();
      await before.primary.waitForRole('unknown', ttlSeconds * 1000);
      await before.primary.waitForLog((l) => l.msg === 'session ended', 5000);
      own.thaw();
      const after = await settled(group, 30000);
      await after.primary.waitForLog(
        (l) => l.msg === 'hook succeeded' && l.hook === 'promote' && l.fencingToken === after.state.fencingToken,
        10000,
      );
      expect(after.state.fencingToken!).toBeGreaterThan(before.state.fencingToken!);
      const demotes = readHookRecords(files[group.indexOf(before.primary)]!).filter(
        (r) => r.LEADERD_EVENT === 'demote' && r.LEADERD_FENCING_TOKEN === String(before.state.fencingToken),
      );
      expect(demotes).toHaveLength(1);
      expect(violations(records(files))).toEqual([]);
    } finally {
      await own.stop();
    }
  });

  it('a ttl the server cannot grant is refused, naming the negotiated session', async () => {
    const result = await runLeaderd([...args(newElection()), '--ttl', '9', '--http', '127.0.0.1:0']);
    expect(result.code).toBe(2);
    expect(result.stderr).toMatch(/ttl: ZooKeeper negotiated a 4 s session for the 9 s asked/);
  });

  it('digest auth: the nodes leaderd creates can be changed by its identity only', async () => {
    const credentials = scratchFile('zk-auth');
    writeFileSync(credentials, 'leaderd:s3cret\n');
    const election = newElection();
    const node = await Sidecar.start('zk-auth', [...args(election), '--zk-auth-file', credentials]);
    await node.waitForRole('primary', 15000);
    // The sidecar's own log never shows the password.
    expect(JSON.stringify(node.logs)).not.toContain('s3cret');

    const ZK = createRequire(import.meta.url)('zookeeper');
    const client = new ZK({ connect: zk.connectString, timeout: 2000, debug_level: 0 });
    await new Promise((resolve) => client.connect({}, resolve));
    try {
      const path = `/leaderd-test/${election}`;
      const [candidate] = (await client.get_children(path, false)) as string[];
      // The client resolves [acl, stat].
      const [acl] = (await client.get_acl(`${path}/${candidate}`)) as [Array<{ perms: number; scheme: string; auth: string }>];
      expect(acl.map((a) => [a.scheme, a.perms])).toEqual([
        ['digest', ZK.constants.ZOO_PERM_ALL],
        ['world', ZK.constants.ZOO_PERM_READ],
      ]);
      expect(acl[0]!.auth).toMatch(/^leaderd:/);
      await expect(client.delete_(`${path}/${candidate}`, -1)).rejects.toThrow(new RegExp(`^${ZK.constants.ZNOAUTH} `));
    } finally {
      client.close();
    }
  });

  it('ten candidates and a leader change: only the next candidate lists the election again', async () => {
    const election = newElection();
    const group: Sidecar[] = [];
    // One after another, so the queue order is the start order.
    for (let i = 0; i < 10; i++) {
      group.push(await Sidecar.start(`zk-herd-${i}`, args(election)));
      await group[i]!.waitForState((s) => s.role !== 'unknown', 10000);
    }
    const before = await settled(group, 15000);
    expect(before.primary).toBe(group[0]);
    const listings = async (s: Sidecar) =>
      histogramCount(s, 'leaderd_backend_request_duration_seconds', { operation: 'children' });
    const rest = group.slice(1);
    const listedBefore = await Promise.all(rest.map(listings));

    await before.primary.stop();
    const after = await settled(rest, 10000);
    expect(after.primary).toBe(group[1]);
    const listedAfter = await Promise.all(rest.map(listings));
    const listedAgain = rest.filter((_, i) => listedAfter[i]! > listedBefore[i]!).map((s) => s.id);
    expect(listedAgain).toEqual([group[1]!.id]);
  });

  it('in a 3-server ensemble, stopping the server the primary is connected to never makes a second primary', async () => {
    const ensemble = await ZookeeperEnsemble.start();
    try {
      const election = newElection();
      const files = [scratchFile('ens-a'), scratchFile('ens-b'), scratchFile('ens-c')];
      const group = await Promise.all(
        ['a', 'b', 'c'].map((n, i) =>
          Sidecar.start(`zk-ensemble-${n}`, [...argsFor(() => ensemble.connectString)(election), ...hookArgs(files[i]!)]),
        ),
      );
      const before = await settled(group, 20000);
      await before.primary.waitForLog((l) => l.msg === 'hook succeeded' && l.hook === 'promote', 10000);
      const sessionId = String((await before.primary.waitForLog((l) => l.msg === 'ZooKeeper session established', 5000)).sessionId);
      const connections = await Promise.all(ensemble.members.map((m) => m.fourLetter('cons')));
      const serving = connections.findIndex((c) => c.includes(`sid=0x${sessionId}`));
      expect(serving).toBeGreaterThanOrEqual(0);

      await ensemble.members[serving]!.pause();
      // The primary either keeps its session through another server or steps down; either way
      // there is a primary again, and never two.
      const abort = new AbortController();
      await Promise.any(group.map((s) => s.waitForRole('primary', 20000, abort.signal))).finally(() => abort.abort());
      await ensemble.members[serving]!.resume();
      await settled(group, 30000);
      expect(violations(records(files))).toEqual([]);
    } finally {
      await ensemble.stop();
    }
  });
});

import { createRequire } from 'node:module';
import { randomBytes } from 'node:crypto';
import { writeFileSync } from 'node:fs';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { until } from './chaos/world.js';
import { conformance, histogramCount, hookArgs, newElection, readHookRecords, sample, scrape, scratchFile, settled } from './conformance.js';
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

/**
 * Stops a sidecar that must still be running, and resolves once its last log line has been read:
 * every line it logged before is in `logs` then, so counting them is not a race with the pipe.
 */
async function stopAndDrain(node: Sidecar): Promise<void> {
  expect(node.child.exitCode).toBeNull();
  expect(await node.stop()).toEqual({ code: 0, signal: null });
  await node.waitForLog((l) => l.msg === 'stopped', 10000, 'its last log line');
}
const ZK = createRequire(import.meta.url)('zookeeper');

/** A plain ZooKeeper client of the test's own (not leaderd), connected. */
async function zkClient(connect: string): Promise<InstanceType<typeof ZK>> {
  const client = new ZK({ connect, timeout: 4000, debug_level: 0 });
  await new Promise((resolve) => client.connect({}, resolve));
  return client;
}

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

      const reconnectsBefore = before.primary.logs.filter((l) => l.msg === 'reconnected to ZooKeeper').length;
      await ensemble.members[serving]!.pause();
      // Roles are stable again once the primary's term has either gone on through another server
      // or ended and a later one begun; until then the old primary may still be stepping down (its
      // client gives up the session, or its deadline passes), so that is what is waited for.
      const abort = new AbortController();
      const newTerm = () =>
        Promise.any(
          group.map((s) =>
            s.waitForState((r) => r.role === 'primary' && r.fencingToken! > before.state.fencingToken!, 30000, 'a primary of a later term', abort.signal),
          ),
        );
      const keptTerm = async () => {
        await before.primary.waitForLog((l) => l.msg === 'reconnected to ZooKeeper', 30000, 'reconnection', reconnectsBefore + 1);
        const renewed = async () => sample(await scrape(before.primary), 'leaderd_lease_renewals_total', { result: 'success' });
        const renewals = await renewed();
        // A renewal answered after the reconnection: the session, and the term, live on.
        if (!(await until(async () => (await renewed()) > renewals, 30000))) throw new Error('no renewal after reconnecting');
        const state = await before.primary.role();
        if (state.role !== 'primary' || state.fencingToken !== before.state.fencingToken) throw new Error('the term ended after all');
      };
      await Promise.any([newTerm(), keptTerm()]).finally(() => abort.abort());
      await ensemble.members[serving]!.resume();
      const after = await settled(group, 30000);
      if (after.state.fencingToken !== before.state.fencingToken) {
        // The old term ended: its primary's demote hook ran.
        await before.primary.waitForLog(
          (l) => l.msg === 'hook succeeded' && l.hook === 'demote' && l.fencingToken === before.state.fencingToken,
          10000,
          'demote hook',
        );
      }
      expect(violations(records(files))).toEqual([]);
    } finally {
      await ensemble.stop();
    }
  });

  it('a candidate-named node holding JSON null is named by its node: no sidecar wedges or crashes, and the election goes on', async () => {
    const election = newElection();
    const path = `/leaderd-test/${election}`;
    const client = await zkClient(zk.connectString);
    try {
      await new Promise<void>((resolve, reject) => client.mkdirp(path, (error: Error | null) => (error ? reject(error) : resolve())));
      const flags = ZK.constants.ZOO_EPHEMERAL | ZK.constants.ZOO_SEQUENCE;
      const created = (await client.create(`${path}/${randomBytes(16).toString('hex')}-n_`, 'null', flags)) as string;
      const node = created.slice(created.lastIndexOf('/') + 1);
      const [stat] = (await client.get(created, false)) as [{ czxid: number }];

      const group = await Promise.all(['a', 'b'].map((n) => Sidecar.start(`zk-foreign-${n}`, args(election))));
      for (const sidecar of group) {
        const state = await sidecar.waitForState((s) => s.leader !== null, 15000, 'a view naming the foreign node');
        expect(state).toMatchObject({ role: 'replica', leader: { id: node, address: '' }, fencingToken: stat.czxid });
      }
      await client.delete_(created, -1);
      const after = await settled(group, 15000);
      expect(after.state.fencingToken!).toBeGreaterThan(stat.czxid);
      for (const sidecar of group) {
        await stopAndDrain(sidecar);
        expect(sidecar.logs.filter((l) => l.msg === 'cannot read the election; retrying')).toEqual([]);
        expect(sidecar.logs.filter((l) => l.node === created && /does not hold leaderd/.test(l.msg))).toHaveLength(1);
      }
    } finally {
      client.close();
    }
  });

  it('in an ensemble, a primary whose session moves to a server granting a shorter timeout gives it up, a replica leads, and the sidecar waits for a server that grants the ttl', async () => {
    // A 6 s ttl, so the primary's deadline (3 s) leaves room for its client to move the session
    // (a third of a second) and for the adapter to look at the timeout it came back with.
    const ttl = 6;
    const ensemble = await ZookeeperEnsemble.start({ maxSessionTimeoutMs: 8000 });
    try {
      const leader = await ensemble.leader();
      // Followers only: stopping one of them holds no ZooKeeper election.
      const followers = ensemble.members.filter((_, i) => i !== leader);
      const election = newElection();
      const withTtl = (connect: string) => [...argsFor(() => connect)(election), '--ttl', String(ttl)];
      const files = [scratchFile('clamp-p'), scratchFile('clamp-r1'), scratchFile('clamp-r2')];
      // The primary knows the two followers; the replicas the ensemble leader only.
      const primary = await Sidecar.start('zk-clamp-p', [...withTtl(followers.map((m) => m.connectString).join(',')), ...hookArgs(files[0]!)]);
      const first = await primary.waitForRole('primary', 20000);
      const replicas = await Promise.all(
        ['r1', 'r2'].map((n, i) => Sidecar.start(`zk-clamp-${n}`, [...withTtl(ensemble.members[leader]!.connectString), ...hookArgs(files[i + 1]!)])),
      );
      const group = [primary, ...replicas];
      expect((await settled(group, 20000)).primary).toBe(primary);
      await primary.waitForLog((l) => l.msg === 'hook succeeded' && l.hook === 'promote', 10000, 'promote hook');
      const established = await primary.waitForLog((l) => l.msg === 'ZooKeeper session established', 5000);
      expect(established.sessionTimeoutMs).toBe(ttl * 1000);
      const connections = await Promise.all(followers.map((m) => m.fourLetter('cons')));
      const serving = connections.findIndex((c) => c.includes(`sid=0x${String(established.sessionId)}`));
      expect(serving).toBeGreaterThanOrEqual(0);
      const granting = followers[serving]!;
      const clamping = followers[1 - serving]!;
      // The other follower comes back granting at most 3 s: one step of a rolling change.
      await clamping.pause();
      clamping.setSessionTimeouts({ maxSessionTimeoutMs: 3000 });
      await clamping.resume();
      await clamping.waitServing();

      // Its server stopped, the primary's client moves the session to the only other member it
      // knows, which bounds the timeout to 3 s.
      await granting.pause();
      const ended = await primary.waitForLog((l) => l.msg === 'session ended', 15000, 'session ended');
      expect(ended.reason).toMatch(/ZooKeeper changed the session timeout to 3 s on reconnecting \(the ttl is 6 s\)/);
      const after = await settled(replicas, 20000);
      expect(after.state.fencingToken!).toBeGreaterThan(first.fencingToken!);
      // Every session it can open now is bounded to 3 s: it retries instead of exiting.
      const refused = await primary.waitForLog(
        (l) => l.msg === 'cannot open a session; retrying' && /bounds session timeouts otherwise/.test(String(l.err)),
        15000,
        'a refused session',
      );
      expect(refused.err).toMatch(/ZooKeeper negotiated a 3 s session for the 6 s asked/);
      expect(primary.child.exitCode).toBeNull();

      await granting.resume();
      await granting.waitServing();
      const again = await settled(group, 30000);
      expect(again.state.fencingToken!).toBeGreaterThanOrEqual(after.state.fencingToken!);
      expect(violations(records(files))).toEqual([]);
    } finally {
      await ensemble.stop();
    }
  });
});

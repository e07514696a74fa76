import { createRequire } from 'node:module';
import { createHash, randomBytes } from 'node:crypto';
import { writeFileSync } from 'node:fs';
import { pino } from 'pino';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { ZookeeperBackend } from '../adapters/zookeeper.js';
import { MAX_RECORD_BYTES, type Session, type View } from '../src/backend.js';
import { until } from './chaos/world.js';
import { conformance, histogramCount, hookArgs, newElection, readHookRecords, sample, scrape, scratchFile, settled } from './conformance.js';
import { TcpProxy } from './harness/proxy.js';
import { Sidecar, runLeaderd } from './harness/sidecar.js';
import { ZookeeperEnsemble, ZookeeperServer } from './harness/zookeeper.js';
import { violations, type HookRecord } from './overlap.js';

// A 2 s session: within the 0.4 s to 4 s a 200 ms tickTime allows.
const ttlSeconds = 2;
let zk: ZookeeperServer;
const argsFor = (connect: () => string) => (election: string, ttl = ttlSeconds) => [
  '--backend', 'zookeeper',
  '--zk-connect', connect(),
  '--zk-prefix', '/leaderd-test',
  '--election', election,
  '--ttl', String(ttl),
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

/**
 * The conformance suite runs as production runs ZooKeeper: its prefix made by an administrator,
 * with an ACL that grants leaderd's digest identity alone anything, and leaderd logging in with
 * it (`--zk-auth-file`). Everything else here runs in an open /leaderd-test.
 */
const SECURED_PREFIX = '/leaderd-secured';
const ZK_CREDENTIALS = 'leaderd:leaderd-secret';
const credentialsFile = (credentials: string) => {
  const file = scratchFile('zk-auth');
  writeFileSync(file, `${credentials}\n`, { mode: 0o600 });
  return file;
};
const securedArgsFor = (connect: () => string, credentials: string | null = ZK_CREDENTIALS) => (election: string, ttl = ttlSeconds) => [
  ...argsFor(connect)(election, ttl).map((a) => (a === '/leaderd-test' ? SECURED_PREFIX : a)),
  ...(credentials ? ['--zk-auth-file', credentialsFile(credentials)] : []),
];

/** Makes SECURED_PREFIX, as an administrator would, open to leaderd's digest identity only. */
async function securePrefix(connect: string): Promise<void> {
  const client = await zkClient(connect);
  try {
    await client.create(SECURED_PREFIX, '', ZK.constants.ZOO_PERSISTENT);
    const [user, password] = ZK_CREDENTIALS.split(':') as [string, string];
    const digest = createHash('sha1').update(`${user}:${password}`).digest('base64');
    await client.set_acl(SECURED_PREFIX, -1, [{ perms: ZK.constants.ZOO_PERM_ALL, scheme: 'digest', auth: `${user}:${digest}` }]);
  } finally {
    client.close();
  }
}

beforeAll(async () => {
  zk = await ZookeeperServer.start();
  await securePrefix(zk.connectString);
});
afterAll(async () => {
  await zk?.stop();
});

conformance({
  name: 'zookeeper',
  leaseSeconds: ttlSeconds,
  args: securedArgsFor(() => zk.connectString),
  async dedicatedServer() {
    const own = await ZookeeperServer.start();
    await securePrefix(own.connectString);
    return { args: securedArgsFor(() => own.connectString), pause: () => own.pause(), resume: () => own.resume(), stop: () => own.stop() };
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
    const result = await runLeaderd([...args(newElection(), 9), '--http', '127.0.0.1:0']);
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

  it("no permission on the prefix (no credentials, or another identity's) is refused at start, naming zk-prefix, never the password", async () => {
    for (const credentials of [null, 'someone-else:not-the-password']) {
      const result = await runLeaderd([...securedArgsFor(() => zk.connectString, credentials)(newElection()), '--http', '127.0.0.1:0']);
      expect(result.code).toBe(2);
      expect(result.stderr.trim().split('\n')).toHaveLength(1);
      expect(result.stderr).toMatch(
        /^leaderd: invalid configuration: zk-prefix: ZooKeeper refused .* the permission to create and change \/leaderd-secured\/e-[0-9a-f]+ \(NoAuth\); the ACL of \/leaderd-secured must grant it all permissions/,
      );
      expect(result.stderr + result.stdout).not.toContain('not-the-password');
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
      const withTtl = (connect: string) => argsFor(() => connect)(election, ttl);
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

describe('zookeeper: member records', () => {
  const prefix = '/leaderd-test';
  const recordsOf = (election: string) => `${prefix}/.cluster/${election}`;
  const open: Member[] = [];

  /** A session opened in this process, as the core would hold it: what it saw, logged and lost. */
  interface Member {
    session: Session;
    views: View[];
    losses: Error[];
    warnings: Array<{ msg: string; node?: string }>;
  }

  async function member(election: string, id: string, options: { connect?: string; auth?: string } = {}): Promise<Member> {
    const backend = new ZookeeperBackend({ connect: options.connect ?? zk.connectString, prefix, auth: options.auth ?? null });
    const views: View[] = [];
    const losses: Error[] = [];
    const warnings: Member['warnings'] = [];
    const log = pino({ level: 'warn' }, { write: (line: string) => void warnings.push(JSON.parse(line) as Member['warnings'][number]) });
    // The client pings the server on its own: the session lives while the process does.
    const session = await backend.open({
      election,
      candidate: { id, address: id },
      ttlSeconds,
      requestTimeoutMs: 2000,
      events: { view: (v) => void views.push(v), lost: (e) => void losses.push(e) },
      log,
      measure: (_, request) => request(),
    });
    const m = { session, views, losses, warnings };
    open.push(m);
    return m;
  }

  const members = async (m: Member) => [...(await m.session.readCluster()).members].sort();
  const leaderOf = (m: Member) => m.views.at(-1)?.leader?.id;
  const mkdirp = (client: InstanceType<typeof ZK>, path: string) =>
    new Promise<void>((resolve, reject) => client.mkdirp(path, (error: Error | null) => (error ? reject(error) : resolve())));

  afterEach(async () => {
    for (const m of open.splice(0)) await m.session.close().catch(() => undefined);
  });

  it('each session reads every live record, its own included; a publish replaces its record, and brings it back if it was deleted', async () => {
    const election = newElection();
    const [a, b] = await Promise.all([member(election, 'a'), member(election, 'b')]);
    await a.session.publishMember('record of a');
    await b.session.publishMember('record of b');
    for (const m of [a, b]) expect(await m.session.readCluster()).toEqual({ members: expect.any(Array), leaderPosition: null });
    for (const m of [a, b]) expect(await members(m)).toEqual(['record of a', 'record of b']);

    await a.session.publishMember('record of a, again');
    for (const m of [a, b]) expect(await members(m)).toEqual(['record of a, again', 'record of b']);
    const client = await zkClient(zk.connectString);
    try {
      // One ephemeral node per session, named by a guid.
      const path = `${recordsOf(election)}/members`;
      const nodes = (await client.get_children(path, false)) as string[];
      expect(nodes).toHaveLength(2);
      for (const node of nodes) {
        expect(node).toMatch(/^[0-9a-f]{32}$/);
        const [stat] = (await client.get(`${path}/${node}`, false)) as [{ ephemeralOwner: string }];
        expect(stat.ephemeralOwner).not.toBe('0');
      }
      // Deleted behind its back, a record comes back with the next publish.
      for (const node of nodes) await client.delete_(`${path}/${node}`, -1);
      expect(await members(a)).toEqual([]);
      await a.session.publishMember('record of a, back');
      for (const m of [a, b]) expect(await members(m)).toEqual(['record of a, back']);
    } finally {
      client.close();
    }
    expect([...a.losses, ...b.losses]).toEqual([]);
  });

  it('close() removes the session\'s record at once', async () => {
    const election = newElection();
    const [a, b] = await Promise.all([member(election, 'a'), member(election, 'b')]);
    await a.session.publishMember('record of a');
    await b.session.publishMember('record of b');
    expect(await members(a)).toEqual(['record of a', 'record of b']);
    await b.session.close();
    expect(await members(a)).toEqual(['record of a']);
  });

  it('the record of a member that went silent (killed) disappears when its session expires', async () => {
    const election = newElection();
    // The killed member reaches the server only through a proxy, which then carries nothing
    // more: to the server, it is a process that died.
    const proxy = await TcpProxy.start(zk.connectString);
    try {
      const a = await member(election, 'a');
      const killed = await member(election, 'killed', { connect: proxy.address });
      await a.session.publishMember('record of a');
      await killed.session.publishMember('record of the killed one');
      expect(await members(a)).toEqual(['record of a', 'record of the killed one']);

      proxy.blackhole();
      expect(await until(async () => (await members(a)).length === 1, 15000)).toBe(true);
      expect(await members(a)).toEqual(['record of a']);
      expect(a.losses).toEqual([]);
    } finally {
      await proxy.stop();
    }
  });

  it('the leader position is null until written, outlives the session that wrote it, and the next writer replaces it', async () => {
    const election = newElection();
    const [a, b] = await Promise.all([member(election, 'a'), member(election, 'b')]);
    expect((await a.session.readCluster()).leaderPosition).toBeNull();
    await a.session.publishLeaderPosition('position 1');
    expect((await b.session.readCluster()).leaderPosition).toBe('position 1');
    await a.session.close();
    expect(await b.session.readCluster()).toEqual({ members: [], leaderPosition: 'position 1' });
    await b.session.publishLeaderPosition('position 2');
    const c = await member(election, 'c');
    expect((await c.session.readCluster()).leaderPosition).toBe('position 2');

    // Two first writers at once, in another election: both find no node and create it, and the
    // one whose create finds it there already sets it.
    const other = newElection();
    const [d, e] = await Promise.all([member(other, 'd'), member(other, 'e')]);
    await Promise.all([d.session.publishLeaderPosition('position d'), e.session.publishLeaderPosition('position e')]);
    expect(['position d', 'position e']).toContain((await d.session.readCluster()).leaderPosition);
  });

  it('foreign nodes under the records (another name, not ephemeral, a directory, oversize, unreadable) are skipped with one warning each, and the election goes on', async () => {
    const election = newElection();
    const dir = `${recordsOf(election)}/members`;
    const guid = () => randomBytes(16).toString('hex');
    const client = await zkClient(zk.connectString);
    try {
      await mkdirp(client, dir);
      const foreign = [`${dir}/not-a-session`, `${dir}/${guid()}`, `${dir}/${guid()}`, `${dir}/${guid()}`, `${dir}/${guid()}`];
      await client.create(foreign[0], 'another name', ZK.constants.ZOO_EPHEMERAL);
      await client.create(foreign[1], 'no session', ZK.constants.ZOO_PERSISTENT);
      await mkdirp(client, `${foreign[2]}/inside`);
      await client.create(foreign[3], 'x'.repeat(MAX_RECORD_BYTES + 1), ZK.constants.ZOO_EPHEMERAL);
      // Readable by another identity only: every read of it is refused (ZNOAUTH).
      await client.create(foreign[4], 'secret', ZK.constants.ZOO_EPHEMERAL);
      const digest = createHash('sha1').update('someone-else:pw').digest('base64');
      await client.set_acl(foreign[4], -1, [{ perms: ZK.constants.ZOO_PERM_ALL, scheme: 'digest', auth: `someone-else:${digest}` }]);
      const a = await member(election, 'a');
      await a.session.publishMember('record of a');
      const b = await member(election, 'b');
      await b.session.publishMember('x'.repeat(MAX_RECORD_BYTES));

      for (let i = 0; i < 2; i++) {
        expect(await a.session.readCluster()).toEqual({ members: expect.any(Array), leaderPosition: null });
        expect(await members(a)).toEqual(['record of a', 'x'.repeat(MAX_RECORD_BYTES)]);
      }
      const skipped = () => a.warnings.filter((w) => /skipped$/.test(w.msg)).map((w) => w.node);
      expect(skipped().sort()).toEqual([...foreign].sort());

      // An oversize position is none.
      await client.create(`${recordsOf(election)}/leader-position`, 'p'.repeat(MAX_RECORD_BYTES + 1), ZK.constants.ZOO_PERSISTENT);
      expect((await a.session.readCluster()).leaderPosition).toBeNull();
      expect(skipped()).toHaveLength(6);

      await a.session.campaign();
      expect(await until(() => a.views.at(-1)?.isSelf === true, 10000)).toBe(true);
      expect(leaderOf(a)).toBe('a');
      expect([...a.losses, ...b.losses]).toEqual([]);
    } finally {
      client.close();
    }
  });

  it('records are never candidates: written before and after campaigning, they neither lead nor queue', async () => {
    const election = newElection();
    const [a, b] = await Promise.all([member(election, 'a'), member(election, 'b')]);
    // Written first, they would be the oldest nodes, and lead, if the election counted them; the
    // member record even holds a leaderd candidacy's {id, address}.
    const ghost = JSON.stringify({ id: 'ghost', address: 'ghost' });
    await a.session.publishMember(ghost);
    await a.session.publishLeaderPosition(ghost);
    await b.session.publishMember(ghost);
    await a.session.campaign();
    await b.session.campaign();
    for (const m of [a, b]) expect(await until(() => leaderOf(m) === 'a', 10000)).toBe(true);
    expect(a.views.at(-1)!.isSelf).toBe(true);

    await b.session.publishMember(ghost);
    await a.session.publishMember(ghost);
    await a.session.publishLeaderPosition(ghost);
    const client = await zkClient(zk.connectString);
    try {
      expect(await client.get_children(`${prefix}/${election}`, false)).toHaveLength(2);
    } finally {
      client.close();
    }
    for (const m of [a, b]) expect(leaderOf(m)).toBe('a');
    // b leads once a withdraws, not a record.
    await a.session.withdraw();
    for (const m of [a, b]) expect(await until(() => leaderOf(m) === 'b', 10000)).toBe(true);
    expect(b.views.at(-1)!.isSelf).toBe(true);
    for (const view of [...a.views, ...b.views]) expect(['a', 'b', undefined]).toContain(view.leader?.id);
  });

  it('readCluster is linearizable: a server cut off from the ensemble\'s leader does not answer from its own copy', async () => {
    const ensemble = await ZookeeperEnsemble.start();
    try {
      const leader = await ensemble.leader();
      const follower = ensemble.members.find((_, i) => i !== leader)!;
      const b = await member(newElection(), 'b', { connect: follower.connectString });
      await b.session.publishMember('record of b');
      expect(await members(b)).toEqual(['record of b']);
      // The follower goes on serving reads from its own copy until it notices, a few ticks later,
      // that its leader is silent; only a read that syncs with the leader first is refused.
      const others = ensemble.members.filter((other) => other !== follower);
      for (const other of others) other.freeze();
      await Promise.all(others.map((other) => other.stopped()));
      await expect(b.session.readCluster()).rejects.toThrow();
    } finally {
      for (const server of ensemble.members) server.thaw();
      for (const m of open.splice(0)) await m.session.close().catch(() => undefined);
      await ensemble.stop();
    }
  });

  it('digest auth: the records and the nodes above them can be changed by leaderd\'s identity only', async () => {
    const election = newElection();
    const a = await member(election, 'a', { auth: 'leaderd:s3cret' });
    await a.session.publishMember('record of a');
    await a.session.publishLeaderPosition('position');
    const client = await zkClient(zk.connectString);
    try {
      const records = recordsOf(election);
      const [node] = (await client.get_children(`${records}/members`, false)) as string[];
      const paths = [records, `${records}/members`, `${records}/members/${node}`, `${records}/leader-position`];
      for (const path of paths) {
        const [acl] = (await client.get_acl(path)) as [Array<{ perms: number; scheme: string; auth: string }>];
        expect(acl.map((x) => [x.scheme, x.perms])).toEqual([
          ['digest', ZK.constants.ZOO_PERM_ALL],
          ['world', ZK.constants.ZOO_PERM_READ],
        ]);
      }
      await expect(client.delete_(paths[2]!, -1)).rejects.toThrow(new RegExp(`^${ZK.constants.ZNOAUTH} `));
      await expect(client.set(paths[3]!, 'forged', -1)).rejects.toThrow(new RegExp(`^${ZK.constants.ZNOAUTH} `));
      await expect(client.create(`${records}/members/${randomBytes(16).toString('hex')}`, 'forged', ZK.constants.ZOO_EPHEMERAL)).rejects.toThrow(
        new RegExp(`^${ZK.constants.ZNOAUTH} `),
      );
      expect(await a.session.readCluster()).toEqual({ members: ['record of a'], leaderPosition: 'position' });
    } finally {
      client.close();
    }
  });
});

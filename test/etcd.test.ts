import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, it, onTestFailed } from 'vitest';
import { Etcd3 } from 'etcd3';
import { pino } from 'pino';
import { EtcdBackend } from '../adapters/etcd.js';
import { MAX_RECORD_BYTES, SessionLostError, type Session, type View } from '../src/backend.js';
import { copyFileSync, mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { conformance, histogramCount, newElection, sample, scrape, scratchFile, settled } from './conformance.js';
import { EtcdCluster, EtcdServer, ROOT_PASSWORD, type Etcdctl } from './harness/etcd.js';
import { makePki } from './harness/tls.js';
import { TcpProxy } from './harness/proxy.js';
import { runLeaderd, Sidecar } from './harness/sidecar.js';
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

/**
 * The conformance suite runs as production runs etcd: TLS with client certificates required, and
 * authentication on, leaderd's user limited by its role to PREFIX/. Everything else here talks to
 * a plain server, which the tests read and write behind leaderd's back.
 */
const pki = makePki();
const PREFIX = '/leaderd-test';
const LEADERD_USER = { name: 'leaderd', password: 'leaderd-secret', prefix: `${PREFIX}/` };
/** A user whose role covers another prefix only. */
const OTHER_USER = { name: 'elsewhere', password: 'elsewhere-secret', prefix: '/elsewhere/' };
const USERS = [LEADERD_USER, OTHER_USER];
let secured: EtcdServer;
const passwordFile = (password: string) => {
  const file = scratchFile('etcd-password');
  writeFileSync(file, `${password}\n`, { mode: 0o600 });
  return file;
};
/** The flags of a sidecar on a secured server; `tls` and `user` override its files and login. */
const securedArgsFor =
  (server: () => EtcdServer, tls: { ca?: string; cert?: string; key?: string } = {}, user: { name: string; password: string } | null = LEADERD_USER) =>
  (election: string) => {
    const client = pki.client(LEADERD_USER.name);
    const files = { ca: pki.ca, cert: client.cert, key: client.key, ...tls };
    return [
      ...args(election).map((a) => (a === etcd.clientUrl ? server().clientUrl : a)),
      '--etcd-ca-file', files.ca,
      '--etcd-cert-file', files.cert,
      '--etcd-key-file', files.key,
      ...(user ? ['--etcd-username', user.name, '--etcd-password-file', passwordFile(user.password)] : []),
    ];
  };

beforeAll(async () => {
  [etcd, secured] = await Promise.all([EtcdServer.start(), EtcdServer.startSecured(pki, USERS)]);
});
afterAll(async () => {
  await Promise.all([etcd?.stop(), secured?.stop()]);
});

conformance({
  name: 'etcd',
  leaseSeconds: ttlSeconds,
  args: securedArgsFor(() => secured),
  async dedicatedServer() {
    const own = await EtcdServer.startSecured(pki, USERS);
    return { args: securedArgsFor(() => own), pause: () => own.pause(), resume: () => own.resume(), stop: () => own.stop() };
  },
});

describe('etcd: TLS and authentication', () => {
  afterEach(() => Sidecar.killAll());
  beforeEach(() => onTestFailed(() => console.error(`the sidecars' logs: ${Sidecar.dumpLogs(scratchFile('etcd-tls-logs'))}`)));

  const successfulRenewals = async (node: Sidecar) => sample(await scrape(node), 'leaderd_lease_renewals_total', { result: 'success' });

  it('credentials rolled out before etcd turns authentication on: the election works before and after `auth enable`', async () => {
    // Users and roles exist, authentication is still off; the client certificate names no user,
    // so once it is on, only a login gets leaderd in.
    const own = await EtcdServer.startSecured(pki, USERS, { enableAuth: false });
    try {
      const election = newElection();
      const flags = securedArgsFor(() => own, pki.client('no-such-user'))(election);
      const group = await Promise.all(['a', 'b', 'c'].map((n) => Sidecar.start(`etcd-auth-later-${n}`, flags)));
      const before = await settled(group, 20000);
      own.etcdctlSync(['auth', 'enable']);
      await before.primary.stop();
      const after = await settled(before.replicas, 20000);
      expect(after.state.fencingToken).toBeGreaterThan(before.state.fencingToken!);
      for (const node of before.replicas) {
        await node.waitForLog((l) => l.msg === 'etcd has authentication on: logging in', 10000);
      }
    } finally {
      await Sidecar.killAll();
      await own.stop();
    }
  });

  /** Runs leaderd on the secured server until it exits; asserts the one-line refusal and that no secret leaked. */
  async function refused(flags: string[]): Promise<string> {
    const result = await runLeaderd([...flags, '--http', '127.0.0.1:0']);
    expect(result.code).toBe(2);
    const lines = result.stderr.trim().split("\n");
    expect(lines).toHaveLength(1);
    for (const secret of [LEADERD_USER.password, OTHER_USER.password, ROOT_PASSWORD]) {
      expect(result.stderr + result.stdout).not.toContain(secret);
    }
    return lines[0]!;
  }

  it('a wrong password is refused at start with one line naming the setting, never the password', async () => {
    const line = await refused(securedArgsFor(() => secured, {}, { name: LEADERD_USER.name, password: 'not-the-password' })(newElection()));
    expect(line).toMatch(/etcd-username: etcd refused user leaderd and its password \(etcd-password-file\)/);
  });

  it('a user whose role does not cover the prefix is refused at start, naming the grant it needs', async () => {
    const line = await refused(securedArgsFor(() => secured, {}, OTHER_USER)(newElection()));
    expect(line).toMatch(/etcd-username: user elsewhere may not read and write \/leaderd-test\/ on etcd \(permission denied\); grant its role readwrite on the prefix \/leaderd-test\//);
  });

  it("a server certificate the CA file does not vouch for is refused at start, naming etcd-ca-file", async () => {
    const line = await refused(securedArgsFor(() => secured, { ca: pki.otherCa })(newElection()));
    expect(line).toMatch(/etcd-ca-file: etcd's certificate is not trusted: unable to verify the first certificate/);
  });

  it('a client certificate etcd does not trust, or none, is refused at start, naming etcd-cert-file', async () => {
    const other = await refused(securedArgsFor(() => secured, pki.otherClient)(newElection()));
    expect(other).toMatch(/etcd-cert-file: etcd refused the client certificate: .*bad certificate/);
    const flags = securedArgsFor(() => secured)(newElection());
    const withoutCertificate = flags.filter((_, i) => !['--etcd-cert-file', '--etcd-key-file'].includes(flags[i]!) && !['--etcd-cert-file', '--etcd-key-file'].includes(flags[i - 1]!));
    const none = await refused(withoutCertificate);
    expect(none).toMatch(/etcd-cert-file: etcd refused the client certificate \(none was given; set etcd-cert-file and etcd-key-file\)/);
  });

  it('an expired client certificate, or a key of another certificate, is refused before connecting', async () => {
    expect(await refused(securedArgsFor(() => secured, pki.expiredClient)(newElection()))).toMatch(
      /^leaderd: invalid configuration: etcd-cert-file: the certificate in \S+expired-client\.crt expired on /,
    );
    expect(await refused(securedArgsFor(() => secured, { key: pki.otherClient.key })(newElection()))).toMatch(
      /etcd-key-file: \S+other-client\.key is not the key of the certificate in /,
    );
  });

  it('a client certificate alone logs in as the user its common name names', async () => {
    const node = await Sidecar.start('etcd-cn', securedArgsFor(() => secured, {}, null)(newElection()));
    await node.waitForRole('primary', 15000);
  });

  it('TLS files rotated under a running primary are used from SIGHUP on: it keeps its term when etcd restarts with a certificate only the new CA file trusts', async () => {
    const own = await EtcdServer.startSecured(pki, USERS);
    try {
      const dir = mkdtempSync(join(tmpdir(), 'leaderd-rotation-'));
      const ca = join(dir, 'ca.crt');
      copyFileSync(pki.ca, ca);
      const client = pki.client(LEADERD_USER.name);
      const [cert, key] = [join(dir, 'client.crt'), join(dir, 'client.key')];
      copyFileSync(client.cert, cert);
      copyFileSync(client.key, key);
      const flags = securedArgsFor(() => own, { ca, cert, key })(newElection()).map((a, i, all) => (all[i - 1] === '--ttl' ? '6' : a));
      const node = await Sidecar.start('etcd-rotation', flags);
      const { fencingToken } = await node.waitForRole('primary', 15000);

      // Half a rotation (a key that is not the certificate's) is not taken: the files in use stay.
      copyFileSync(pki.otherClient.key, key);
      node.signal('SIGHUP');
      await node.waitForLog((l) => l.msg === 'the changed TLS files cannot be used yet; keeping the ones in use', 10000);
      copyFileSync(client.key, key);

      // The new CA file trusts both CAs, as during a real rotation of the server's certificate.
      writeFileSync(ca, `${readFileSync(pki.ca, 'utf8')}${readFileSync(pki.otherCa, 'utf8')}`);
      node.signal('SIGHUP');
      await node.waitForLog((l) => l.msg === 'TLS files changed: new connections to etcd use them', 10000);
      own.serverCertificate = pki.otherServer;
      await own.pause();
      await own.resume();
      const renewals = () => successfulRenewals(node);
      const before = await renewals();
      expect(await until(async () => (await renewals()) >= before + 3, 15000)).toBe(true);
      expect(await node.role()).toMatchObject({ role: 'primary', fencingToken });
      expect(node.logs.filter((l) => /stepping down|session lost|session ended/.test(String(l.msg)))).toEqual([]);
    } finally {
      await Sidecar.killAll();
      await own.stop();
    }
  });

  it('etcd restarted (its tokens forgotten): the primary keeps its term, and the replica still sees it go and takes over', async () => {
    const own = await EtcdServer.startSecured(pki, USERS);
    try {
      // A lease long enough to outlast the restart: this is about the token, not the lease.
      const flags = (election: string) => securedArgsFor(() => own)(election).map((a, i, all) => (all[i - 1] === '--ttl' ? '6' : a));
      const election = newElection();
      const group = await Promise.all(['a', 'b'].map((n) => Sidecar.start(`etcd-restart-${n}`, flags(election))));
      const { primary, replicas, state } = await settled(group, 20000);
      const replica = replicas[0]!;
      const renewals = () => successfulRenewals(primary);
      await own.pause();
      await own.resume();
      // Three successful renewals after the restart: had the first ones failed for longer than
      // the renew deadline (4 s), the primary would have stepped down by then.
      const before = await renewals();
      expect(await until(async () => (await renewals()) >= before + 3, 15000)).toBe(true);
      expect(await primary.role()).toMatchObject({ role: 'primary', fencingToken: state.fencingToken });
      expect(primary.logs.filter((l) => /stepping down|session lost|session ended/.test(String(l.msg)))).toEqual([]);
      expect(await primary.stop()).toEqual({ code: 0, signal: null });
      const after = await replica.waitForRole('primary', 20000);
      expect(after.fencingToken).toBeGreaterThan(state.fencingToken!);
    } finally {
      await Sidecar.killAll();
      await own.stop();
    }
  });
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

describe('etcd: member records', () => {
  const prefix = '/leaderd-test';
  const records = (election: string) => `${prefix}/.cluster/${election}/`;
  const backends: EtcdBackend[] = [];
  const open: Member[] = [];

  /** A session opened in this process, as the core would hold it: what it saw, logged and lost. */
  interface Member {
    session: Session;
    views: View[];
    losses: Error[];
    warnings: Array<{ msg: string; key?: string }>;
    /** Stops renewing its lease, as a member killed with -9 would. */
    stopRenewing(): void;
  }

  async function member(election: string, id: string, endpoint = etcd.clientUrl): Promise<Member> {
    const backend = new EtcdBackend({ endpoints: [endpoint], prefix, tls: null, auth: null }, pino({ level: 'silent' }));
    backends.push(backend);
    const views: View[] = [];
    const losses: Error[] = [];
    const warnings: Member['warnings'] = [];
    const log = pino({ level: 'warn' }, { write: (line: string) => void warnings.push(JSON.parse(line) as Member['warnings'][number]) });
    const session = await backend.open({
      election,
      candidate: { id, address: id },
      ttlSeconds,
      requestTimeoutMs: 2000,
      events: { view: (v) => void views.push(v), lost: (e) => void losses.push(e) },
      log,
      measure: (_, request) => request(),
    });
    // Renewed as the core renews it, well inside the ttl, until told to stop.
    let renewing = true;
    void (async () => {
      while (renewing) {
        await session.renew().catch(() => undefined);
        await new Promise((r) => setTimeout(r, 300));
      }
    })();
    const m: Member = { session, views, losses, warnings, stopRenewing: () => void (renewing = false) };
    open.push(m);
    return m;
  }

  const members = async (m: Member) => [...(await m.session.readCluster()).members].sort();
  const leaderOf = (m: Member) => m.views.at(-1)?.leader?.id;

  afterEach(async () => {
    for (const m of open.splice(0)) {
      m.stopRenewing();
      await m.session.close().catch(() => undefined);
    }
    for (const backend of backends.splice(0)) await backend.shutdown();
  });

  it('each session reads every live record, its own included, and a new publish replaces its record', async () => {
    const election = newElection();
    const [a, b] = await Promise.all([member(election, 'a'), member(election, 'b')]);
    await a.session.publishMember('record of a');
    await b.session.publishMember('record of b');
    for (const m of [a, b]) expect(await m.session.readCluster()).toEqual({ members: expect.any(Array), leaderPosition: null });
    for (const m of [a, b]) expect(await members(m)).toEqual(['record of a', 'record of b']);

    await a.session.publishMember('record of a, again');
    for (const m of [a, b]) expect(await members(m)).toEqual(['record of a, again', 'record of b']);
    // One key per session, under members/, named by the lease.
    const keys = await etcd.range(`${records(election)}members/`);
    expect(keys).toHaveLength(2);
    for (const kv of keys) expect(kv.key).toBe(`${records(election)}members/${BigInt(kv.lease).toString(16)}`);
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

  it('a session that stops renewing (killed) loses its record when its lease expires, and a later publish reports it lost', async () => {
    const election = newElection();
    const [a, killed] = await Promise.all([member(election, 'a'), member(election, 'killed')]);
    await a.session.publishMember('record of a');
    await killed.session.publishMember('record of the killed one');
    expect(await members(a)).toEqual(['record of a', 'record of the killed one']);

    killed.stopRenewing();
    expect(await until(async () => (await members(a)).length === 1, 15000)).toBe(true);
    expect(await members(a)).toEqual(['record of a']);
    expect(killed.losses).toEqual([]);
    // Its lease is gone: a publish cannot bring the record back, and the session is reported lost.
    await expect(killed.session.publishMember('too late')).rejects.toBeInstanceOf(SessionLostError);
    expect(killed.losses).toHaveLength(1);
    expect(await members(a)).toEqual(['record of a']);
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
  });

  it('foreign keys under the records (another shape, no lease, oversize) are skipped with one warning each, and the election goes on', async () => {
    const election = newElection();
    const dir = records(election);
    const client = new Etcd3({ hosts: etcd.clientUrl });
    try {
      const { ID: lease } = await client.leaseClient.leaseGrant({ TTL: 60 });
      const leased = (key: string | Buffer, value: string) => client.put(key).value(value).lease(lease).exec();
      await leased(`${dir}members/${BigInt(lease).toString(16)}`, 'x'.repeat(MAX_RECORD_BYTES + 1));
      await leased(`${dir}members/abc/def`, 'nested');
      await leased(Buffer.concat([Buffer.from(`${dir}members/ab`), Buffer.from([0xff])]), 'not UTF-8 in its name');
      await leased(`${dir}members`, 'a directory');
      await leased(`${dir}something-else`, 'other');
      await etcd.put(`${dir}members/abcdef`, 'no lease');
      const a = await member(election, 'a');
      await a.session.publishMember('record of a');
      const b = await member(election, 'b');
      await b.session.publishMember('x'.repeat(MAX_RECORD_BYTES));

      for (let i = 0; i < 2; i++) {
        expect(await members(a)).toEqual(['record of a', 'x'.repeat(MAX_RECORD_BYTES)]);
        expect((await a.session.readCluster()).leaderPosition).toBeNull();
      }
      const skipped = a.warnings.filter((w) => /under the member records/.test(w.msg)).map((w) => w.key);
      expect(skipped).toHaveLength(6);
      expect(new Set(skipped).size).toBe(6);

      // An oversize position is none.
      await etcd.put(`${dir}leader-position`, 'p'.repeat(MAX_RECORD_BYTES + 1));
      expect((await a.session.readCluster()).leaderPosition).toBeNull();

      await a.session.campaign();
      expect(await until(() => a.views.at(-1)?.isSelf === true, 10000)).toBe(true);
      expect(leaderOf(a)).toBe('a');
      expect([...a.losses, ...b.losses]).toEqual([]);
    } finally {
      client.close();
    }
  });

  it('past a hundred foreign keys, warnings stop: none is reported twice, however often the records are read', async () => {
    const election = newElection();
    const a = await member(election, 'a');
    await Promise.all(Array.from({ length: 150 }, (_, i) => etcd.put(`${records(election)}junk-${i}`, 'junk')));
    await a.session.publishMember('record of a');
    const skipped = () => a.warnings.filter((w) => /under the member records/.test(w.msg)).map((w) => w.key);
    expect(await members(a)).toEqual(['record of a']);
    expect(skipped()).toHaveLength(100);
    expect(await members(a)).toEqual(['record of a']);
    expect(new Set(skipped()).size).toBe(100);
    expect(skipped()).toHaveLength(100);
  });

  it('records are never candidates: written before anyone campaigns, they neither lead nor queue', async () => {
    const election = newElection();
    const [a, b] = await Promise.all([member(election, 'a'), member(election, 'b')]);
    // Written first, they would be the oldest keys, and lead, if the election counted them; the
    // member record even holds a leaderd candidacy's {id, address}.
    await a.session.publishMember(JSON.stringify({ id: 'ghost', address: 'ghost' }));
    await a.session.publishLeaderPosition('ghost');
    await b.session.publishMember('ghost');
    await a.session.campaign();
    await b.session.campaign();
    for (const m of [a, b]) expect(await until(() => leaderOf(m) === 'a', 10000)).toBe(true);
    expect(a.views.at(-1)!.isSelf).toBe(true);
    expect(await etcd.keys(`${prefix}/${election}/`)).toHaveLength(2);

    // Publishing again changes nothing either: b leads once a withdraws, not a record.
    await a.session.publishMember(JSON.stringify({ id: 'ghost', address: 'ghost' }));
    await a.session.withdraw();
    for (const m of [a, b]) expect(await until(() => leaderOf(m) === 'b', 10000)).toBe(true);
    expect(b.views.at(-1)!.isSelf).toBe(true);
    for (const view of [...a.views, ...b.views]) expect(['a', 'b', undefined]).toContain(view.leader?.id);
  });

  it('readCluster is linearizable: a member cut off from its cluster\'s quorum does not answer from its own copy', async () => {
    const cluster = await EtcdCluster.start();
    try {
      const election = newElection();
      const a = await member(election, 'a', cluster.members[0]!.clientUrl);
      await a.session.publishMember('record of a');
      expect(await members(a)).toEqual(['record of a']);
      await Promise.all(cluster.members.slice(1).map((m) => m.pause()));
      // A serializable read would answer ['record of a'] from the member's own copy.
      await expect(a.session.readCluster()).rejects.toThrow();
    } finally {
      for (const m of open.splice(0)) {
        m.stopRenewing();
        void m.session.close().catch(() => undefined);
      }
      await cluster.stop();
    }
  });
});

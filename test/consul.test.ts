import { copyFileSync, writeFileSync } from 'node:fs';
import { pino } from 'pino';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { ConsulBackend } from '../adapters/consul.js';
import { MAX_RECORD_BYTES, type Session, type View } from '../src/backend.js';
import { until } from './chaos/world.js';
import { conformance, hookArgs, newElection, readHookRecords, scratchFile, settled } from './conformance.js';
import { ConsulAgent, ConsulCluster, newSecurity } from './harness/consul.js';
import { violations, type HookRecord } from './overlap.js';
import { runLeaderd, Sidecar } from './harness/sidecar.js';
import { makePki, type CertificateFiles, type Pki } from './harness/tls.js';

// A session TTL of 10 s (Consul's minimum) and a 2 s health check: the check is the lease.
const ttlSeconds = 10;
const checkTtlSeconds = 2;
/** A plain agent (HTTP, no ACLs), for the backend specifics: they call its API directly. */
let agent: ConsulAgent;
/**
 * An agent as production runs it, for the conformance suite: HTTPS only, client certificates
 * required, ACLs in default-deny mode, and leaderd holding a token with the minimum policy.
 */
let secured: ConsulAgent;
let securedToken: string;
let pki: Pki;
const argsFor = (httpAddr: () => string) => (election: string) => [
  '--backend', 'consul',
  '--consul-addr', httpAddr(),
  '--election', election,
  '--ttl', String(ttlSeconds),
  '--consul-check-ttl', String(checkTtlSeconds),
];
const args = argsFor(() => agent.httpAddr);

/** The least leaderd needs, as docs/backends.md documents it: NODE is the agent's node name. */
const minimumPolicy = (node: string, prefix = 'leaderd') => `
key_prefix "${prefix}/" { policy = "write" }
session "${node}" { policy = "write" }
service "leaderd" { policy = "write" }
`;

/** A token in a file only its owner may read, as leaderd wants it. */
function tokenFile(token: string): string {
  const file = scratchFile('consul-token');
  writeFileSync(file, `${token}\n`, { mode: 0o600 });
  return file;
}

/** Flags for a secured agent: the token's file, the CA, and a client certificate. */
const tlsArgs = (client: CertificateFiles | null, ca = pki.ca) => [
  '--consul-ca-file', ca,
  ...(client ? ['--consul-cert-file', client.cert, '--consul-key-file', client.key] : []),
];
const securedArgsFor = (httpAddr: () => string, token: () => string) => {
  const plain = argsFor(httpAddr);
  return (election: string) => [...plain(election), '--consul-token-file', tokenFile(token()), ...tlsArgs(pki.client('leaderd'))];
};

/** A call to the plain agent's HTTP API, as an operator or another program would make it. */
const consulApi = <T = unknown>(method: 'GET' | 'PUT' | 'DELETE', path: string, body?: string): Promise<T> => agent.api<T>(method, path, body);
/**
 * Stops a sidecar that must still be running, and resolves once its last log line has been read:
 * every line it logged before is in `logs` then, so counting them is not a race with the pipe.
 */
async function stopAndDrain(node: Sidecar): Promise<void> {
  expect(node.child.exitCode).toBeNull();
  expect(await node.stop()).toEqual({ code: 0, signal: null });
  await node.waitForLog((l) => l.msg === 'stopped', 10000, 'its last log line');
}
const lockIndex = async (key: string) => (await consulApi<Array<{ ModifyIndex: number }>>('GET', `/v1/kv/${key}`))[0]!.ModifyIndex;

beforeAll(async () => {
  pki = makePki();
  [agent, secured] = await Promise.all([ConsulAgent.start(), ConsulAgent.start(newSecurity(pki))]);
  securedToken = await secured.token(minimumPolicy(secured.nodeName));
});
afterAll(async () => {
  await Promise.all([agent?.stop(), secured?.stop()]);
});

conformance({
  name: 'consul',
  leaseSeconds: checkTtlSeconds,
  args: securedArgsFor(() => secured.httpAddr, () => securedToken),
  async dedicatedServer() {
    // A single server, not a dev agent: a dev agent forgets its Raft log on restart, and with it
    // the indexes fencing tokens are made of, so the token after the outage could repeat. Secured
    // as the shared agent is; its ACLs, in its Raft log, outlive the outage too.
    const own = await ConsulCluster.start(1, newSecurity(pki));
    const server = own.members[0]!;
    const token = await server.token(minimumPolicy(server.nodeName));
    return { args: securedArgsFor(() => server.httpAddr, () => token), pause: () => own.pause(0), resume: () => own.resume(0), stop: () => own.stop() };
  },
});

describe('consul: backend specifics', () => {
  afterEach(() => Sidecar.killAll());

  it('kill -9 of the primary: the 2 s health check frees the lock well before the 10 s session TTL', async () => {
    const election = newElection();
    const group = await Promise.all(['a', 'b'].map((n) => Sidecar.start(`consul-kill-${n}`, args(election))));
    const before = await settled(group, 15000);
    const killedAt = performance.now();
    before.primary.signal('SIGKILL');
    const after = await settled(before.replicas, ttlSeconds * 1000);
    expect(performance.now() - killedAt).toBeLessThan((checkTtlSeconds + 3) * 1000);
    expect(after.state.fencingToken!).toBeGreaterThan(before.state.fencingToken!);
  });

  it('a session destroyed behind its back: the primary demotes at once and campaigns again', async () => {
    const election = newElection();
    const node = await Sidecar.start('consul-destroyed', args(election));
    const first = await node.waitForRole('primary', 15000);
    const created = await node.waitForLog((l) => l.msg === 'Consul session created', 5000);
    const destroyedAt = performance.now();
    const response = await fetch(`${agent.httpAddr}/v1/session/destroy/${created.session as string}`, { method: 'PUT' });
    expect(response.status).toBe(200);
    await node.waitForState((s) => s.role !== 'primary', 2000, 'demote');
    expect(performance.now() - destroyedAt).toBeLessThan(1000);
    const again = await node.waitForRole('primary', 15000);
    expect(again.fencingToken!).toBeGreaterThan(first.fencingToken!);
  });

  it('a refused configuration: a session TTL below Consul\'s 10 s minimum', async () => {
    const result = await runLeaderd(['--backend', 'consul', '--ttl', '5']);
    expect(result.code).toBe(2);
    expect(result.stderr).toMatch(/ttl: 5 s is below the consul backend's minimum of 10 s/);
  });

  it('in a 3-server cluster, losing the Raft leader server never makes a second primary', async () => {
    const cluster = await ConsulCluster.start();
    try {
      const election = newElection();
      const files = cluster.members.map((_, i) => scratchFile(`cluster-${i}`));
      // Each sidecar talks to its own server, as sidecars talk to their local agent.
      const group = await Promise.all(
        cluster.members.map((member, i) =>
          Sidecar.start(`consul-cluster-${i}`, [...argsFor(() => member.httpAddr)(election), ...hookArgs(files[i]!)]),
        ),
      );
      const before = await settled(group, 20000);
      await before.primary.waitForLog((l) => l.msg === 'hook succeeded' && l.hook === 'promote', 10000);
      const leader = await cluster.leaderIndex();
      await cluster.pause(leader);
      // Whatever happens next, there must be a primary again among the sidecars whose server lives.
      const survivors = group.filter((_, i) => i !== leader);
      const abort = new AbortController();
      await Promise.any(survivors.map((s) => s.waitForRole('primary', 30000, abort.signal))).finally(() => abort.abort());
      await cluster.resume(leader);
      await settled(group, 30000);
      const records = files.flatMap((f) => readHookRecords(f)) as unknown as HookRecord[];
      expect(violations(records)).toEqual([]);
    } finally {
      await cluster.stop();
    }
  });

  it('a lock held by another program with JSON null, then [], as its value is named by its session: nobody crashes or wedges, and the election goes on', async () => {
    const election = newElection();
    const key = `leaderd/${election}/leader`;
    const { ID: foreign } = await consulApi<{ ID: string }>('PUT', '/v1/session/create', JSON.stringify({ Name: 'not leaderd' }));
    try {
      expect(await consulApi('PUT', `/v1/kv/${key}?acquire=${foreign}`, 'null')).toBe(true);
      const first = await lockIndex(key);
      const group = await Promise.all(['a', 'b'].map((n) => Sidecar.start(`consul-foreign-${n}`, args(election))));
      const namesIt = (token: number) => (s: { role: string; leader: { id: string } | null; fencingToken: number | null }) =>
        s.role === 'replica' && s.leader?.id === `session ${foreign}` && s.fencingToken === token;
      for (const node of group) await node.waitForState(namesIt(first), 15000, 'a replica of the foreign holder');

      // Its holder writes another value that is not leaderd's: a new ModifyIndex, a new token.
      expect(await consulApi('PUT', `/v1/kv/${key}?acquire=${foreign}`, '[]')).toBe(true);
      const second = await lockIndex(key);
      for (const node of group) await node.waitForState(namesIt(second), 15000, 'the new value seen');

      expect(await consulApi('PUT', `/v1/kv/${key}?release=${foreign}`, '')).toBe(true);
      const after = await settled(group, 15000);
      expect(after.state.fencingToken!).toBeGreaterThan(second);
      for (const node of group) {
        await stopAndDrain(node);
        expect(node.logs.filter((l) => l.msg === 'watching the Consul lock failed; retrying')).toEqual([]);
        // One warning for the holder, not one per answer of the watch.
        expect(node.logs.filter((l) => /does not hold leaderd/.test(l.msg) && l.session === foreign)).toHaveLength(1);
      }
    } finally {
      await consulApi('PUT', `/v1/session/destroy/${foreign}`).catch(() => undefined);
    }
  });

  it('a lock that lands for a sidecar out of the race (a late acquire after /resign) is released, and another candidate leads', async () => {
    const tokenFile = scratchFile('admin-token');
    writeFileSync(tokenFile, 's3cret-admin-token\n');
    const election = newElection();
    const key = `leaderd/${election}/leader`;
    const resigned = await Sidecar.start('consul-stray-a', [...args(election), '--admin-token-file', tokenFile]);
    const before = await resigned.waitForRole('primary', 15000);
    const response = await resigned.fetch('/resign', {
      method: 'POST',
      headers: { authorization: 'Bearer s3cret-admin-token', 'content-type': 'application/json' },
      body: '{"holdOffSeconds": 600}',
    });
    expect(response.status).toBe(200);
    await resigned.waitForState((s) => s.role === 'replica' && s.leader === null, 10000, 'the lock released');

    // The session it keeps while out of the race, as Consul lists it.
    const sessions = await consulApi<Array<{ ID: string; Name: string }>>('GET', '/v1/session/list');
    const own = sessions.find((s) => s.Name === `leaderd ${election} ${resigned.id}`)!;
    expect(own).toBeDefined();
    // The acquire that timed out on the client and lands at the servers now, after the withdraw.
    const value = JSON.stringify({ id: resigned.id, address: resigned.id });
    expect(await consulApi('PUT', `/v1/kv/${key}?acquire=${own.ID}`, value)).toBe(true);
    const other = await Sidecar.start('consul-stray-b', args(election));

    await resigned.waitForLog((l) => l.msg === 'the Consul lock is held by this session while out of the race: releasing it', 10000, 'the release');
    const after = await settled([other, resigned], 15000);
    expect(after.primary).toBe(other);
    expect(after.state.fencingToken!).toBeGreaterThan(before.fencingToken!);
  });
});

describe('consul: TLS and ACLs', () => {
  afterEach(() => Sidecar.killAll());

  const securedArgs = (token: string, tls: string[]) => [
    ...argsFor(() => secured.httpAddr)(newElection()),
    '--consul-token-file', tokenFile(token),
    ...tls,
  ];

  /** leaderd refused to start: exit 2, one line on stderr naming `setting`, no secret anywhere. */
  async function refused(argv: string[], setting: RegExp, secrets: string[]): Promise<string> {
    // A port of its own: the default one may be taken on a shared machine.
    const result = await runLeaderd([...argv, '--http', '127.0.0.1:0']);
    expect(result.code).toBe(2);
    const lines = result.stderr.trim().split('\n');
    expect(lines).toHaveLength(1);
    expect(lines[0]).toMatch(setting);
    for (const secret of secrets) expect(result.stdout + result.stderr).not.toContain(secret);
    return lines[0]!;
  }

  it('a token the agent does not know: exit 2 naming consul-token-file, the token in no output', async () => {
    const wrong = '0f0f0f0f-1111-2222-3333-0f0f0f0f0f0f';
    await refused(securedArgs(wrong, tlsArgs(pki.client('leaderd'))), /^leaderd: .*consul-token-file.*ACL not found/, [wrong, securedToken]);
  });

  it('a token without key write on the prefix: exit 2 naming the permission it lacks', async () => {
    const readOnly = await secured.token(minimumPolicy(secured.nodeName).replace('policy = "write" }', 'policy = "read" }'));
    const line = await refused(securedArgs(readOnly, tlsArgs(pki.client('leaderd'))), /consul-token-file.*permission denied/, [readOnly]);
    expect(line).toContain('key_prefix "leaderd/" { policy = "write" }');
    // And one for another prefix than leaderd's: the line names the prefix asked for.
    const other = await refused(
      [...securedArgs(readOnly, tlsArgs(pki.client('leaderd'))), '--consul-key-prefix', 'elsewhere'],
      /consul-token-file.*permission denied/,
      [readOnly],
    );
    expect(other).toContain('key_prefix "elsewhere/"');
  });

  it('a token without session write on the node, or service write for leaderd: exit 2 naming each', async () => {
    const noSession = await secured.token(minimumPolicy(secured.nodeName).replace(/^session .*$/m, ''));
    expect(await refused(securedArgs(noSession, tlsArgs(pki.client('leaderd'))), /permission denied/, [noSession])).toContain('session "NODE"');
    const noService = await secured.token(minimumPolicy(secured.nodeName).replace(/^service .*$/m, ''));
    expect(await refused(securedArgs(noService, tlsArgs(pki.client('leaderd'))), /permission denied/, [noService])).toContain('service "leaderd"');
  });

  it("an agent certificate from another CA: exit 2 naming consul-ca-file", async () => {
    await refused(securedArgs(securedToken, tlsArgs(pki.client('leaderd'), pki.otherCa)), /^leaderd: .*consul-ca-file: the agent's certificate is not trusted/, [securedToken]);
  });

  it('no client certificate, or one from another CA: exit 2 naming consul-cert-file', async () => {
    await refused(securedArgs(securedToken, tlsArgs(null)), /^leaderd: .*consul-cert-file: the agent refused the client certificate \(none was given/, [securedToken]);
    await refused(securedArgs(securedToken, tlsArgs(pki.otherClient)), /^leaderd: .*consul-cert-file: the agent refused the client certificate/, [securedToken]);
  });

  it('an expired client certificate: exit 2 before connecting, naming consul-cert-file', async () => {
    await refused(securedArgs(securedToken, tlsArgs(pki.expiredClient)), /consul-cert-file: the certificate in .* expired on/, [securedToken]);
  });

  it('http:// to the HTTPS API: exit 2 naming consul-addr', async () => {
    const argv = securedArgs(securedToken, []).map((a) => a.replace('https://', 'http://'));
    await refused(argv, /consul-addr: the scheme does not match the agent/, [securedToken]);
  });

  it('a permission taken away while running: the primary steps down and names it, and leads again once it is back', async () => {
    const token = await secured.token(minimumPolicy(secured.nodeName));
    const node = await Sidecar.start('consul-revoked', securedArgs(token, tlsArgs(pki.client('leaderd'))));
    const first = await node.waitForRole('primary', 15000);
    // Without session write, renewals are refused: the lease cannot be proved, whatever the lock says.
    await secured.setRules(token, minimumPolicy(secured.nodeName).replace(/^session .*$/m, ''));
    await node.waitForState((s) => s.role !== 'primary', (checkTtlSeconds + 2) * 1000, 'the step-down');
    await node.waitForLog((l) => JSON.stringify(l).includes('may not create and renew sessions'), 10000, 'the refusal named');
    expect(node.child.exitCode).toBeNull();
    await secured.setRules(token, minimumPolicy(secured.nodeName));
    const again = await node.waitForRole('primary', 30000);
    // A new term, after a demote: never the old token again.
    expect(again.fencingToken!).toBeGreaterThan(first.fencingToken!);
    await stopAndDrain(node);
    expect(JSON.stringify(node.logs) + node.stderr).not.toContain(token);
  });

  it('rotated certificate files are picked up on SIGHUP: a good pair keeps the term, a refused one steps down, a good one again leads', async () => {
    const cert = scratchFile('client.crt');
    const key = scratchFile('client.key');
    const install = (files: CertificateFiles) => {
      copyFileSync(files.key, key);
      copyFileSync(files.cert, cert);
    };
    install(pki.client('leaderd'));
    const node = await Sidecar.start('consul-rotate', [
      ...argsFor(() => secured.httpAddr)(newElection()),
      '--consul-token-file', tokenFile(securedToken),
      '--consul-ca-file', pki.ca, '--consul-cert-file', cert, '--consul-key-file', key,
    ]);
    const first = await node.waitForRole('primary', 15000);
    const changed = (count: number) => node.waitForLog((l) => l.msg === 'TLS files changed: new connections to Consul use them', 10000, 'the rotation', count);
    const successes = async () => {
      const text = await (await node.fetch('/metrics')).text();
      return Number(/^leaderd_lease_renewals_total\{result="success"\} (\S+)$/m.exec(text)?.[1] ?? 0);
    };

    install(pki.client('leaderd-rotated'));
    node.signal('SIGHUP');
    await changed(1);
    const before = await successes();
    // Renewals go on, through connections made with the new pair, within the same term.
    expect(await until(async () => (await successes()) >= before + 3, 15000)).toBe(true);
    const still = await (await node.fetch('/role')).json();
    expect(still).toMatchObject({ role: 'primary', fencingToken: first.fencingToken, since: first.since });

    // A pair the agent refuses (another CA's): new connections fail, so the new files are in
    // use; the node steps down and says which setting, and never pretends to lead.
    install(pki.otherClient);
    node.signal('SIGHUP');
    await changed(2);
    await node.waitForState((s) => s.role !== 'primary', (checkTtlSeconds + 2) * 1000, 'the step-down');
    await node.waitForLog((l) => JSON.stringify(l).includes('consul-cert-file: the agent refused the client certificate'), 10000, 'the refusal');
    expect(node.child.exitCode).toBeNull();

    install(pki.client('leaderd'));
    node.signal('SIGHUP');
    await changed(3);
    const again = await node.waitForRole('primary', 30000);
    expect(again.fencingToken!).toBeGreaterThan(first.fencingToken!);
    // The token is in nothing leaderd shows.
    for (const path of ['/role', '/cluster', '/metrics']) expect(await (await node.fetch(path)).text()).not.toContain(securedToken);
    await stopAndDrain(node);
    expect(JSON.stringify(node.logs) + node.stderr).not.toContain(securedToken);
  });
});

describe('consul: member records', () => {
  const records = (election: string) => `leaderd/.cluster/${election}/`;
  const open: Member[] = [];

  /** A session opened in this process, as the core would hold it: what it saw and logged. */
  interface Member {
    session: Session;
    views: View[];
    warnings: Array<{ msg: string; key?: string }>;
    /** Stops passing its check and renewing it, as a member killed with -9 would. */
    stopRenewing(): void;
  }

  async function member(election: string, id: string): Promise<Member> {
    const views: View[] = [];
    const warnings: Member['warnings'] = [];
    const log = pino({ level: 'warn' }, { write: (line: string) => void warnings.push(JSON.parse(line) as Member['warnings'][number]) });
    const backend = new ConsulBackend(
      {
        address: agent.httpAddr,
        token: null,
        keyPrefix: 'leaderd',
        datacenter: null,
        sessionTtlSeconds: ttlSeconds,
        checkTtlSeconds,
        lockDelaySeconds: checkTtlSeconds,
        tls: null,
      },
      log,
    );
    const session = await backend.open({
      election,
      candidate: { id, address: id },
      ttlSeconds: checkTtlSeconds,
      requestTimeoutMs: 2000,
      events: { view: (v) => void views.push(v), lost: () => undefined },
      log,
      measure: (_, request) => request(),
    });
    // Renewed as the core renews it, well inside the check TTL, until told to stop.
    let renewing = true;
    void (async () => {
      while (renewing) {
        await session.renew().catch(() => undefined);
        await new Promise((r) => setTimeout(r, 300));
      }
    })();
    const m: Member = { session, views, warnings, stopRenewing: () => void (renewing = false) };
    open.push(m);
    return m;
  }

  const members = async (m: Member) => [...(await m.session.readCluster()).members].sort();
  const leaderOf = (m: Member) => m.views.at(-1)?.leader?.id;
  /** The keys under a prefix, as Consul holds them. */
  const keysUnder = async (prefix: string) => {
    const response = await fetch(`${agent.httpAddr}/v1/kv/${prefix}?keys`);
    if (response.status === 404) return [];
    expect(response.status).toBe(200);
    return ((await response.json()) as string[]).sort();
  };
  const holderOf = async (key: string) => (await consulApi<Array<{ Session?: string }>>('GET', `/v1/kv/${key}`))[0]!.Session;
  const sessionOf = async (election: string, id: string) =>
    (await consulApi<Array<{ ID: string; Name: string }>>('GET', '/v1/session/list')).find((s) => s.Name === `leaderd ${election} ${id}`)!.ID;

  afterEach(async () => {
    for (const m of open.splice(0)) {
      m.stopRenewing();
      await m.session.close().catch(() => undefined);
    }
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
    // One key per session, named by the session and held by it.
    const keys = await keysUnder(`${records(election)}members/`);
    expect(keys).toEqual([`${records(election)}members/${await sessionOf(election, 'a')}`, `${records(election)}members/${await sessionOf(election, 'b')}`].sort());
    for (const key of keys) expect(await holderOf(key)).toBe(key.split('/').at(-1));
  });

  it('close() removes the session\'s record at once', async () => {
    const election = newElection();
    const [a, b] = await Promise.all([member(election, 'a'), member(election, 'b')]);
    await a.session.publishMember('record of a');
    await b.session.publishMember('record of b');
    expect(await members(a)).toEqual(['record of a', 'record of b']);
    const bKey = `${records(election)}members/${await sessionOf(election, 'b')}`;
    await b.session.close();
    // Deleted by close() itself, not left for a reader to sweep (no read has happened since).
    expect(await keysUnder(`${records(election)}members/`)).not.toContain(bKey);
    expect(await members(a)).toEqual(['record of a']);
  });

  it('a session that stops renewing (killed) loses its record when Consul invalidates it, and the leftover key is deleted', async () => {
    const election = newElection();
    const [a, killed] = await Promise.all([member(election, 'a'), member(election, 'killed')]);
    await a.session.publishMember('record of a');
    await killed.session.publishMember('record of the killed one');
    expect(await members(a)).toEqual(['record of a', 'record of the killed one']);
    const key = `${records(election)}members/${await sessionOf(election, 'killed')}`;

    killed.stopRenewing();
    // Consul releases, not deletes, what an invalidated session held: the key stays, unheld...
    expect(await until(async () => (await holderOf(key)) === undefined, (ttlSeconds * 2 + 10) * 1000)).toBe(true);
    // ...and is no record from the first read on, which also sweeps it away.
    expect(await members(a)).toEqual(['record of a']);
    expect(await until(async () => !(await keysUnder(`${records(election)}members/`)).includes(key), 10000)).toBe(true);
    // A dead session cannot bring its record back.
    await expect(killed.session.publishMember('too late')).rejects.toThrow();
    expect(await members(a)).toEqual(['record of a']);
  }, 60000);

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

  it('foreign keys among the records (not records, too large) are skipped with one warning each; leftovers are deleted; the election goes on', async () => {
    const election = newElection();
    const dir = records(election);
    const { ID: foreign } = await consulApi<{ ID: string }>('PUT', '/v1/session/create', JSON.stringify({ Name: 'not leaderd' }));
    try {
      // 'é' is two bytes: too large in bytes, though not in characters.
      const oversize = 'é'.repeat(MAX_RECORD_BYTES / 2 + 1);
      const odd = {
        [`${dir}members/${foreign}`]: { value: oversize, held: true },
        [`${dir}members/${foreign}/nested`]: { value: 'nested', held: true },
        [`${dir}members/someone-else`]: { value: 'held by a session it does not name', held: true },
        [`${dir}members/dir/`]: { value: '', held: false },
        [`${dir}leader-position`]: { value: oversize, held: false },
        [`${dir}junk`]: { value: 'junk', held: false },
      };
      for (const [key, { value, held }] of Object.entries(odd)) {
        expect(await consulApi('PUT', `/v1/kv/${key}${held ? `?acquire=${foreign}` : ''}`, value)).toBe(true);
      }
      // A member key whose session is gone: a leftover, not a record.
      const leftover = `${dir}members/0f0f0f0f-dead-dead-dead-0f0f0f0f0f0f`;
      expect(await consulApi('PUT', `/v1/kv/${leftover}`, 'record of a dead member')).toBe(true);

      const [a, b] = await Promise.all([member(election, 'a'), member(election, 'b')]);
      const largest = 'x'.repeat(MAX_RECORD_BYTES);
      await a.session.publishMember(largest);
      await b.session.publishMember('record of b');
      // Read twice by each: still one warning per key.
      for (const m of [a, b, a, b]) {
        const read = await m.session.readCluster();
        expect({ ...read, members: [...read.members].sort() }).toEqual({ members: ['record of b', largest], leaderPosition: null });
      }
      expect(await until(async () => !(await keysUnder(dir)).includes(leftover), 10000)).toBe(true);
      for (const m of [a, b]) {
        const skipped = m.warnings.filter((w) => w.msg === 'skipping a Consul key among the member records').map((w) => w.key);
        expect(skipped.sort()).toEqual(Object.keys(odd).sort());
      }
      // What is not a leftover stays: only leaderd's own member keys are ever deleted.
      for (const key of Object.keys(odd)) expect(await keysUnder(dir)).toContain(key);

      await a.session.publishLeaderPosition('position');
      expect((await b.session.readCluster()).leaderPosition).toBe('position');
      await a.session.campaign();
      await b.session.campaign();
      expect(await until(() => a.views.at(-1)?.isSelf === true && leaderOf(b) === 'a', 15000)).toBe(true);
    } finally {
      await consulApi('PUT', `/v1/session/destroy/${foreign}`).catch(() => undefined);
    }
  });

  it('records are no candidates: publishing them changes no view and adds nothing to the election', async () => {
    const election = newElection();
    const [a, b] = await Promise.all([member(election, 'a'), member(election, 'b')]);
    await a.session.campaign();
    await b.session.campaign();
    expect(await until(() => a.views.at(-1)?.isSelf === true && leaderOf(b) === 'a', 15000)).toBe(true);
    const term = a.views.at(-1)!.leader!;
    const seen = [a.views.length, b.views.length] as const;

    for (const m of [a, b]) await m.session.publishMember(`record of ${m === a ? 'a' : 'b'}`);
    await a.session.publishLeaderPosition('position');
    for (const m of [a, b]) expect(await members(m)).toEqual(['record of a', 'record of b']);
    // The election's own keys are still the lock alone, held in the same term.
    expect(await keysUnder(`leaderd/${election}/`)).toEqual([`leaderd/${election}/leader`]);
    expect(await lockIndex(`leaderd/${election}/leader`)).toBe(term.fencingToken);
    for (const view of [...a.views.slice(seen[0]), ...b.views.slice(seen[1])]) expect(view.leader).toEqual(term);

    // And the election goes on as before: the next candidate takes over when the leader leaves.
    await a.session.close();
    expect(await until(() => b.views.at(-1)?.isSelf === true, 15000)).toBe(true);
    expect(b.views.at(-1)!.leader!.fencingToken).toBeGreaterThan(term.fencingToken);
    expect(await members(b)).toEqual(['record of b']);
  });
});

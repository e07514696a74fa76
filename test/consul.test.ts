import { writeFileSync } from 'node:fs';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { conformance, hookArgs, newElection, readHookRecords, scratchFile, settled } from './conformance.js';
import { ConsulAgent, ConsulCluster } from './harness/consul.js';
import { violations, type HookRecord } from './overlap.js';
import { Sidecar } from './harness/sidecar.js';

// A session TTL of 10 s (Consul's minimum) and a 2 s health check: the check is the lease.
const ttlSeconds = 10;
const checkTtlSeconds = 2;
let agent: ConsulAgent;
const argsFor = (httpAddr: () => string) => (election: string) => [
  '--backend', 'consul',
  '--consul-addr', httpAddr(),
  '--election', election,
  '--ttl', String(ttlSeconds),
  '--consul-check-ttl', String(checkTtlSeconds),
];
const args = argsFor(() => agent.httpAddr);

/** A call to the agent's HTTP API, as an operator or another program would make it. */
async function consulApi<T = unknown>(method: 'GET' | 'PUT', path: string, body?: string): Promise<T> {
  const response = await fetch(`${agent.httpAddr}${path}`, { method, ...(body === undefined ? {} : { body }) });
  if (!response.ok) throw new Error(`${method} ${path}: ${response.status} ${await response.text()}`);
  return (await response.json()) as T;
}
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
  agent = await ConsulAgent.start();
});
afterAll(async () => {
  await agent?.stop();
});

conformance({
  name: 'consul',
  leaseSeconds: checkTtlSeconds,
  args,
  async dedicatedServer() {
    // A single server, not a dev agent: a dev agent forgets its Raft log on restart, and with it
    // the indexes fencing tokens are made of, so the token after the outage could repeat.
    const own = await ConsulCluster.start(1);
    return { args: argsFor(() => own.members[0]!.httpAddr), pause: () => own.pause(0), resume: () => own.resume(0), stop: () => own.stop() };
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
    const { runLeaderd } = await import('./harness/sidecar.js');
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

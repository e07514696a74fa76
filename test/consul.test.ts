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
});

/**
 * leaderd failing over a real PostgreSQL cluster: three servers with streaming replication, each
 * with a sidecar running the example's check and hooks (examples/postgres/), and the example's
 * writer committing numbered rows through every change of primary. What counts is the data: every
 * commit the writer saw acknowledged must be on the new primary. Write downtimes are printed, not
 * asserted: they measure the machine as much as leaderd.
 */
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { settled } from './conformance.js';
import { startDeployment, type BackendName, type Deployment } from './chaos/deployments.js';
import { until } from './chaos/world.js';
import { ADMIN_TOKEN, MAX_LAG_BYTES, PgCluster, type Ack, type PgNode } from './harness/postgres.js';
import type { LogLine, Sidecar } from './harness/sidecar.js';

/** The coordination service: any of the chaos deployments' backends. */
const BACKEND: BackendName = 'etcd';
/** A failover: the dead primary's lease runs out (a few seconds), then a check, a campaign, the promote hook. */
const FAILOVER_MS = 30000;
const TEST_MS = 120000;

interface ClusterBody {
  members: Array<{ id: string; healthy: boolean; eligible: boolean; lag: number | string | null }>;
}

const cluster = async (sidecar: Sidecar) => (await (await sidecar.fetch('/cluster')).json()) as ClusterBody;
const becamePrimary = (l: LogLine) => l.msg === 'role: primary';

/** The acknowledged ids `rows` lacks. */
const missing = (acks: readonly Ack[], rows: ReadonlySet<number>) => acks.filter((a) => !rows.has(a.id)).map((a) => a.id);

/** Writes stopped for: the last commit `from` acknowledged → the first `to` acknowledged. */
function downtimeMs(acks: readonly Ack[], from: string, to: string): number {
  const last = Math.max(...acks.filter((a) => a.node === from).map((a) => a.at));
  const first = Math.min(...acks.filter((a) => a.node === to).map((a) => a.at));
  return first - last;
}

function sidecarOf(node: PgNode): Sidecar {
  if (!node.sidecar) throw new Error(`${node.id} has no sidecar running`);
  return node.sidecar;
}

/** Resolves once the replicas' WAL receivers have read everything the dead primary sent them. */
async function receiversStopped(replicas: readonly PgNode[]): Promise<void> {
  let receivers: string[] = [];
  const stopped = await until(async () => {
    receivers = await Promise.all(replicas.map((r) => r.sql(`select string_agg(format('%s %s from %s:%s', pid, status, sender_host, sender_port), ', ') from pg_stat_wal_receiver`)));
    return receivers.every((r) => !r.includes('streaming'));
  }, 10000);
  if (!stopped) throw new Error(`the replicas still stream: ${replicas.map((r, i) => `${r.id}: ${receivers[i]}`).join('; ')}`);
}

/** A three-node cluster on its own deployment for the describe it is called in, and its diagnostics when a test fails. */
function clusterFor(options: { synchronous: boolean }): () => PgCluster {
  let deployment: Deployment | undefined;
  let pg: PgCluster | undefined;

  beforeAll(async () => {
    deployment = await startDeployment(BACKEND, 'single');
    pg = await PgCluster.start(deployment, options);
  }, TEST_MS);

  afterEach(({ task }) => {
    if (task.result?.state === 'fail') console.log(pg?.nodes.map((n) => n.diagnostics()).join('\n'));
  });

  afterAll(async () => {
    await pg?.stop();
    await deployment?.stop();
  });

  return () => pg!;
}

describe(`PostgreSQL on ${BACKEND}, synchronous replication`, () => {
  const pg = clusterFor({ synchronous: true });

  it('kill -9 of the primary node: the most up-to-date replica takes over with every acknowledged commit, the other follows it, and the old primary rejoins through pg_rewind', async () => {
    const [db1, db2, db3] = pg().nodes as [PgNode, PgNode, PgNode];
    const writer = pg().startWriter();
    try {
      await writer.waitForAcks(db1.id, 50, 20000);
      await pg().killNode(db1);
      await receiversStopped([db2, db3]);
      const positions = new Map(await Promise.all([db2, db3].map(async (n) => [n.id, await n.position()] as const)));

      const { primary, state } = await settled([sidecarOf(db2), sidecarOf(db3)], FAILOVER_MS);
      const [promoted, other] = primary.id === db2.id ? [db2, db3] : [db3, db2];
      expect(positions.get(promoted.id)! >= positions.get(other.id)!).toBe(true);
      await writer.waitForAcks(promoted.id, 20, FAILOVER_MS);
      const acks = await writer.stop();
      expect(missing(acks, await promoted.rowIds())).toEqual([]);
      console.log(
        `synchronous, kill -9 of the primary node: ${acks.length} commits acknowledged, none lost; ` +
          `writes stopped for ${downtimeMs(acks, db1.id, promoted.id)} ms (ttl ${state.ttlSeconds} s); positions ${JSON.stringify(Object.fromEntries([...positions].map(([id, p]) => [id, String(p)])))}`,
      );
      await pg().waitForStandbys(promoted, [other], FAILOVER_MS);

      // The old primary comes back: its sidecar's leader-change hook rewinds it and starts it as a replica.
      const restarted = performance.now();
      const rejoining = await pg().startSidecar(db1);
      await rejoining.waitForState((s) => s.role === 'replica' && s.leader?.id === promoted.id, FAILOVER_MS, `replica of ${promoted.id}`);
      await pg().waitForStandbys(promoted, [other, db1], FAILOVER_MS);
      console.log(`the old primary streams again ${Math.round(performance.now() - restarted)} ms after its sidecar started`);
      expect(rejoining.logs.some((l) => l.msg === 'hook output' && l.line === 'pg_rewind done')).toBe(true);
      const target = await promoted.position();
      const caughtUp = await until(async () => BigInt(await db1.sql(`select pg_wal_lsn_diff(pg_last_wal_replay_lsn(), '0/0')::bigint`)) >= target, FAILOVER_MS);
      expect(caughtUp).toBe(true);
      expect(missing(acks, await db1.rowIds())).toEqual([]);
    } finally {
      writer.kill();
    }
  }, TEST_MS);

  it('a switchover to a named replica under write load loses no acknowledged commit, and the old primary follows the new one', async () => {
    const nodes = pg().nodes;
    const roles = await Promise.all(nodes.map(async (n) => (n.sidecar ? (await n.sidecar.role()).role : 'down')));
    const old = nodes[roles.indexOf('primary')]!;
    // The first primary, rejoined in the test before, when it is a replica now.
    const candidate = nodes.find((n, i) => roles[i] === 'replica')!;
    const ready = await until(async () => {
      const member = (await cluster(sidecarOf(old))).members.find((m) => m.id === candidate.id);
      return member?.healthy === true && member.eligible && member.lag !== null && Number(member.lag) <= MAX_LAG_BYTES;
    }, FAILOVER_MS);
    expect(ready).toBe(true);

    const writer = pg().startWriter();
    try {
      await writer.waitForAcks(old.id, 50, 20000);
      const response = await sidecarOf(old).fetch('/switchover', {
        method: 'POST',
        headers: { authorization: `Bearer ${ADMIN_TOKEN}`, 'content-type': 'application/json' },
        body: JSON.stringify({ candidate: candidate.id }),
        signal: AbortSignal.timeout(FAILOVER_MS),
      });
      expect(response.status).toBe(200);
      expect(((await response.json()) as { to: string }).to).toBe(candidate.id);
      await writer.waitForAcks(candidate.id, 20, FAILOVER_MS);
      const acks = await writer.stop();
      expect(missing(acks, await candidate.rowIds())).toEqual([]);
      console.log(`switchover ${old.id} → ${candidate.id}: ${acks.length} commits acknowledged, none lost; writes stopped for ${downtimeMs(acks, old.id, candidate.id)} ms`);

      await sidecarOf(old).waitForState((s) => s.role === 'replica' && s.leader?.id === candidate.id, FAILOVER_MS, `replica of ${candidate.id}`);
      await pg().waitForStandbys(candidate, nodes.filter((n) => n !== candidate), FAILOVER_MS);
    } finally {
      writer.kill();
    }
  }, TEST_MS);
});

describe(`PostgreSQL on ${BACKEND}, asynchronous replication`, () => {
  const pg = clusterFor({ synchronous: false });

  it('a replica whose WAL receiver is frozen beyond --max-lag is never promoted: the other one is', async () => {
    const [db1, db2, db3] = pg().nodes as [PgNode, PgNode, PgNode];
    const writer = pg().startWriter();
    let receiver: number | null = null;
    try {
      await writer.waitForAcks(db1.id, 50, 20000);
      // db3 stops receiving (its server still answers its check), and the primary writes on:
      // some 3 MB of WAL, beyond --max-lag (1 MiB).
      receiver = db3.walReceiver();
      expect(receiver).not.toBeNull();
      process.kill(receiver!, 'SIGSTOP');
      await db1.sql(`create table filler as select g, repeat('x', 500) as pad from generate_series(1, 5000) g`);
      let lags: ClusterBody['members'] = [];
      const lagging = await until(async () => {
        lags = (await cluster(sidecarOf(db1))).members;
        const lag = (id: string) => Number(lags.find((m) => m.id === id)?.lag ?? NaN);
        return lag(db3.id) > MAX_LAG_BYTES && lag(db2.id) <= MAX_LAG_BYTES;
      }, FAILOVER_MS);
      expect(lagging).toBe(true);

      await pg().killNode(db1);
      const { primary } = await settled([sidecarOf(db2), sidecarOf(db3)], FAILOVER_MS);
      expect(primary.id).toBe(db2.id);
      expect(sidecarOf(db3).logs.some(becamePrimary)).toBe(false);
      await writer.waitForAcks(db2.id, 20, FAILOVER_MS);
      const acks = await writer.stop();
      const lost = missing(acks, await db2.rowIds());
      console.log(
        `asynchronous, kill -9 of the primary node: ${lost.length} of ${acks.length} acknowledged commits lost ` +
          `(bound: --max-lag ${MAX_LAG_BYTES} bytes of WAL behind the last published position, plus what the primary wrote in its last check interval; ` +
          `lag before the kill: ${lags.map((m) => `${m.id} ${String(m.lag)}`).join(', ')}); writes stopped for ${downtimeMs(acks, db1.id, db2.id)} ms`,
      );
    } finally {
      writer.kill();
      if (receiver !== null) process.kill(receiver, 'SIGCONT');
    }
    // Running again, db3's WAL receiver follows the new primary (its hook has re-pointed it).
    await pg().waitForStandbys(db2, [db3], FAILOVER_MS);
  }, TEST_MS);
});

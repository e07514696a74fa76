/**
 * leaderd and Patroni failing over PostgreSQL side by side: `npm run bench:postgres [-- --rounds N]`.
 * One run, one etcd server, the same PostgreSQL 15 binaries and settings, the same lease (ttl
 * 10 s), the same writer (bench/pg-writer.mjs): three servers managed by leaderd
 * (examples/postgres/, through PgCluster), then three managed by Patroni (test/harness/patroni.ts),
 * each through the same faults, N rounds each (default 3):
 *   kill     kill -9 of the whole primary node (manager and every PostgreSQL process): write downtime
 *   rejoin   that node's manager started again: time until it streams from the new primary
 *   switch   planned switchover to a named replica: write downtime
 *   sync     synchronous replication, kill -9 of the primary node: downtime, acknowledged writes lost
 * Write downtime is the last commit the old primary acknowledged → the first the new primary
 * acknowledged (a commit in flight at the kill may still be acknowledged by the dying primary:
 * only the new node's count as back). The leaderd rounds also run the example's own writer
 * (examples/postgres/writer.mjs, which asks the sidecars who leads and fences by token) next to the
 * bench writer, through the same faults, as extra rows. Prints a report and writes it to
 * bench/results/postgres-vs-patroni-<date>.md (-<N>-rounds.md for other than 3; bench/tmp/ when rounds < 3 or a
 * section failed).
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { loadavg, tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { randomBytes } from 'node:crypto';
import { startDeployment, type Deployment } from '../test/chaos/deployments.js';
import { sleep, until } from '../test/chaos/world.js';
import { readJsonLines } from '../test/harness/json-lines.js';
import { PatroniCluster, type PatroniMember, type PatroniTiming } from '../test/harness/patroni.js';
import { ADMIN_TOKEN, EXAMPLE_DIR, MAX_LAG_BYTES, PgCluster, ensurePostgresInstalled, type PgNode } from '../test/harness/postgres.js';
import { machine, percentile, today, writeReport } from './report.js';

const { values: flags } = parseArgs({ options: { rounds: { type: 'string', default: '3' } } });
const ROUNDS = Number(flags.rounds);
if (!Number.isInteger(ROUNDS) || ROUNDS < 1) throw new Error(`--rounds: not a positive whole number: ${flags.rounds}`);

/** Both systems' lease. Patroni's loop and retry as measured in anchors.md (loop_wait + 2 × retry_timeout ≤ ttl). */
const TTL_SECONDS = 10;
const PATRONI_TIMING: PatroniTiming = { ttl: TTL_SECONDS, loopWait: 2, retryTimeout: 3 };
/** One commit every 20 ms, as the reference measurement. */
const WRITE_INTERVAL_MS = 20;
/**
 * Faults land at a random point of each system's own cycle: Patroni's loop_wait (2 s) and
 * leaderd's renewal (a third of the ttl, 3.3 s). A uniform delay at least as long as both cycles
 * does that for both.
 */
const FAULT_SPREAD_MS = 3400;
const FAILOVER_MS = 60000;
const REJOIN_MS = 120000;
const PG_WRITER = fileURLToPath(new URL('./pg-writer.mjs', import.meta.url));

/** One commit a writer saw acknowledged: its row id, the node (a member's id) and Date.now(). */
interface Ack {
  id: number;
  node: string;
  at: number;
}

/** A writer process appending its acknowledgements to a file as JSON lines. */
class AckWriter {
  private readonly child: ChildProcess;
  private readonly exited: Promise<number | null>;
  stderr = '';

  constructor(
    readonly name: string,
    readonly file: string,
    args: readonly string[],
  ) {
    this.child = spawn(process.execPath, [...args, '--acks', file, '--interval', String(WRITE_INTERVAL_MS)], { stdio: ['ignore', 'ignore', 'pipe'] });
    this.child.stderr!.on('data', (chunk: Buffer) => (this.stderr += chunk.toString()));
    this.exited = new Promise((resolve) => this.child.once('exit', (code) => resolve(code)));
  }

  acks(): Ack[] {
    return readJsonLines<Ack>(this.file);
  }

  async waitForAcks(matches: (node: string) => boolean, count: number, timeoutMs: number, what: string): Promise<void> {
    if (!(await until(() => this.acks().filter((a) => matches(a.node)).length >= count, timeoutMs))) {
      throw new Error(`${this.name}: not ${count} commits acknowledged by ${what} within ${timeoutMs} ms; it said:\n${this.stderr.slice(-2000)}`);
    }
  }

  async stop(): Promise<Ack[]> {
    this.child.kill('SIGTERM');
    await this.exited;
    return this.acks();
  }
}

/** What the rounds need of a cluster manager, leaderd's or Patroni's. */
interface System {
  readonly name: string;
  readonly nodes: readonly PgNode[];
  /** The node the manager has made primary. */
  primary(): Promise<PgNode>;
  /** kill -9 of the manager and every PostgreSQL process of `node`. */
  kill(node: PgNode): Promise<void>;
  /** Starts `node`'s manager again (it rewinds and starts PostgreSQL itself). */
  restart(node: PgNode): Promise<void>;
  /** Resolves once `candidate` is healthy and caught up enough for a switchover to take it. */
  switchoverReady(primary: PgNode, candidate: PgNode): Promise<void>;
  /** The manager's planned switchover to `candidate`, answered once it is done. */
  switchover(primary: PgNode, candidate: PgNode): Promise<void>;
  /** Writers for a round: the bench's, and the system's own when it has one. */
  writers(dir: string): AckWriter[];
  waitForStandbys(primary: PgNode, standbys: readonly PgNode[], timeoutMs: number): Promise<void>;
  /** Tables whose ids every acknowledged commit of the writer of that name must be in. */
  readonly tables: Readonly<Record<string, string>>;
  stop(): Promise<void>;
}

const hostsFlag = (nodes: readonly PgNode[]) => ['--hosts', nodes.map((n) => `${n.id}=${n.address}`).join(',')];
const ackFile = (dir: string, writer: string) => join(dir, `acks-${writer}-${randomBytes(4).toString('hex')}.jsonl`);

async function leaderdSystem(deployment: Deployment, synchronous: boolean): Promise<System> {
  const pg = await PgCluster.start(deployment, { synchronous, ttlSeconds: TTL_SECONDS });
  await pg.nodes[0]!.sql('create table bench_writes (id bigint primary key)');
  const sidecarOf = (node: PgNode) => {
    if (!node.sidecar) throw new Error(`${node.id} has no sidecar running`);
    return node.sidecar;
  };
  return {
    name: 'leaderd',
    nodes: pg.nodes,
    tables: { 'pg-writer': 'bench_writes', 'writer.mjs': 'writes' },
    async primary() {
      let primary: PgNode | undefined;
      const found = await until(async () => {
        for (const n of pg.nodes) if (n.sidecar && (await n.sidecar.role()).role === 'primary') primary = n;
        return primary !== undefined;
      }, FAILOVER_MS);
      if (!found || !primary) throw new Error('leaderd: no primary');
      return primary;
    },
    kill: (node) => pg.killNode(node),
    restart: async (node) => void (await pg.startSidecar(node)),
    async switchoverReady(primary, candidate) {
      // What POST /switchover asks of a candidate (else 412): healthy, eligible, within --max-lag.
      const ready = await until(async () => {
        const body = (await (await sidecarOf(primary).fetch('/cluster')).json()) as { members: Array<{ id: string; healthy: boolean; eligible: boolean; lag: number | string | null }> };
        const member = body.members.find((m) => m.id === candidate.id);
        return member?.healthy === true && member.eligible && member.lag !== null && Number(member.lag) <= MAX_LAG_BYTES;
      }, REJOIN_MS);
      if (!ready) throw new Error(`leaderd: ${candidate.id} not ready for a switchover`);
    },
    async switchover(primary, candidate) {
      const response = await sidecarOf(primary).fetch('/switchover', {
        method: 'POST',
        headers: { authorization: `Bearer ${ADMIN_TOKEN}`, 'content-type': 'application/json' },
        body: JSON.stringify({ candidate: candidate.id }),
        signal: AbortSignal.timeout(FAILOVER_MS),
      });
      if (response.status !== 200) throw new Error(`leaderd: switchover to ${candidate.id}: ${response.status} ${await response.text()}`);
    },
    writers: (dir) => [
      new AckWriter('pg-writer', ackFile(dir, 'pg-writer'), [PG_WRITER, ...hostsFlag(pg.nodes)]),
      new AckWriter('writer.mjs', ackFile(dir, 'writer'), [
        join(EXAMPLE_DIR, 'writer.mjs'),
        '--sidecars',
        pg.nodes.flatMap((n) => (n.sidecar ? [n.sidecar.url] : [])).join(','),
      ]),
    ],
    waitForStandbys: (primary, standbys, ms) => pg.waitForStandbys(primary, standbys, ms),
    stop: () => pg.stop(),
  };
}

async function patroniSystem(etcdAddress: string, synchronous: boolean): Promise<System> {
  const cluster = await PatroniCluster.start(etcdAddress, { synchronous, timing: PATRONI_TIMING });
  const member = (node: PgNode): PatroniMember => cluster.members.find((m) => m.pg === node)!;
  return {
    name: 'Patroni',
    nodes: cluster.members.map((m) => m.pg),
    tables: { 'pg-writer': 'bench_writes' },
    primary: async () => (await cluster.waitForPrimary(FAILOVER_MS)).pg,
    kill: (node) => cluster.killNode(member(node)),
    restart: async (node) => cluster.startPatroni(member(node)),
    async switchoverReady(primary, candidate) {
      // What Patroni asks of a candidate (else 412): running, and within maximum_lag_on_failover.
      const ready = await until(async () => {
        const body = (await (await fetch(`${member(primary).restUrl}/cluster`, { signal: AbortSignal.timeout(2000) })).json()) as {
          members: Array<{ name: string; state: string; lag?: number | string }>;
        };
        const m = body.members.find((x) => x.name === candidate.id);
        return (m?.state === 'running' || m?.state === 'streaming') && typeof m.lag === 'number' && m.lag <= MAX_LAG_BYTES;
      }, REJOIN_MS);
      if (!ready) throw new Error(`Patroni: ${candidate.id} not ready for a switchover`);
    },
    switchover: (primary, candidate) => cluster.switchover(member(primary), member(candidate)),
    writers: (dir) => [new AckWriter('pg-writer', ackFile(dir, 'pg-writer'), [PG_WRITER, ...hostsFlag(cluster.members.map((m) => m.pg))])],
    waitForStandbys: (primary, standbys, ms) => cluster.waitForStandbys(member(primary), standbys.map(member), ms),
    stop: () => cluster.stop(),
  };
}

/** Samples of one measurement, by writer ("pg-writer", "writer.mjs") or "" for a system's own. */
type Samples = Map<string, number[]>;

function add(samples: Samples, key: string, value: number): void {
  samples.set(key, [...(samples.get(key) ?? []), value]);
}

interface Results {
  kill: Samples;
  rejoin: Samples;
  switchover: Samples;
  syncKill: Samples;
  /** Acknowledged commits missing from the new primary, and how many were acknowledged. */
  syncLost: Map<string, { lost: number; acked: number }>;
  errors: string[];
}

const newResults = (): Results => ({ kill: new Map(), rejoin: new Map(), switchover: new Map(), syncKill: new Map(), syncLost: new Map(), errors: [] });

/** Writes stopped for: the last commit `from` acknowledged → the first `to` acknowledged. */
function downtimeMs(acks: readonly Ack[], from: string, to: string): number {
  const last = Math.max(...acks.filter((a) => a.node === from).map((a) => a.at));
  const first = Math.min(...acks.filter((a) => a.node === to).map((a) => a.at));
  return first - last;
}

function log(text: string): void {
  console.error(`[${new Date().toISOString().slice(11, 19)}] ${text}`);
}

/**
 * One round of a fault that moves the primary: writers started, warmed up on the primary, the
 * fault at a random point, then the writers run until each has 20 commits from the new primary.
 * Returns the old and new primary and every writer's acknowledgements.
 */
async function faultRound(system: System, dir: string, fault: (primary: PgNode) => Promise<void>): Promise<{ old: PgNode; next: PgNode; acks: Map<string, Ack[]> }> {
  const old = await system.primary();
  const writers = system.writers(dir);
  try {
    for (const w of writers) await w.waitForAcks((n) => n === old.id, 50, 30000, old.id);
    await sleep(Math.random() * FAULT_SPREAD_MS);
    await fault(old);
    for (const w of writers) await w.waitForAcks((n) => n !== old.id, 20, FAILOVER_MS, 'a new primary');
  } finally {
    await Promise.all(writers.map((w) => w.stop()));
  }
  const acks = new Map(writers.map((w) => [w.name, w.acks()]));
  const nodeId = acks.get('pg-writer')!.filter((a) => a.node !== old.id).at(-1)!.node;
  const next = system.nodes.find((n) => n.id === nodeId)!;
  return { old, next, acks };
}

/** The killed node's manager started again; ms until it streams from `primary` again. */
async function rejoin(system: System, node: PgNode, primary: PgNode): Promise<number> {
  const started = performance.now();
  await system.restart(node);
  await system.waitForStandbys(primary, [node], REJOIN_MS);
  return performance.now() - started;
}

async function killRounds(system: System, dir: string, results: Results, synchronous: boolean): Promise<void> {
  for (let round = 1; round <= ROUNDS; round++) {
    const { old, next, acks } = await faultRound(system, dir, (primary) => system.kill(primary));
    for (const [writer, list] of acks) {
      const ms = downtimeMs(list, old.id, next.id);
      add(synchronous ? results.syncKill : results.kill, writer, ms);
      let lostNote = '';
      if (synchronous) {
        const rows = new Set((await next.sql(`select id from ${system.tables[writer]}`)).split('\n').filter(Boolean).map(Number));
        const lost = list.filter((a) => !rows.has(a.id)).length;
        const prior = results.syncLost.get(writer) ?? { lost: 0, acked: 0 };
        results.syncLost.set(writer, { lost: prior.lost + lost, acked: prior.acked + list.length });
        lostNote = `, ${lost} of ${list.length} acknowledged commits lost`;
      }
      log(`${system.name}${synchronous ? ' synchronous' : ''} kill -9 ${round}/${ROUNDS}: ${old.id} → ${next.id}, ${writer}: writes stopped for ${ms} ms${lostNote}`);
    }
    const ms = await rejoin(system, old, next);
    if (!synchronous) add(results.rejoin, '', ms);
    log(`${system.name}${synchronous ? ' synchronous' : ''}: ${old.id} streams from ${next.id} again ${Math.round(ms)} ms after its manager started`);
    await system.waitForStandbys(next, system.nodes.filter((n) => n !== next), REJOIN_MS);
  }
}

async function switchoverRounds(system: System, dir: string, results: Results): Promise<void> {
  for (let round = 1; round <= ROUNDS; round++) {
    const primary = await system.primary();
    // The next member after the primary, in order: each round names another one.
    const candidate = system.nodes[(system.nodes.indexOf(primary) + 1) % system.nodes.length]!;
    await system.waitForStandbys(primary, system.nodes.filter((n) => n !== primary), REJOIN_MS);
    await system.switchoverReady(primary, candidate);
    const { old, next, acks } = await faultRound(system, dir, () => system.switchover(primary, candidate));
    if (next !== candidate) throw new Error(`${system.name}: switchover to ${candidate.id} made ${next.id} primary`);
    for (const [writer, list] of acks) {
      const ms = downtimeMs(list, old.id, next.id);
      add(results.switchover, writer, ms);
      log(`${system.name} switchover ${round}/${ROUNDS}: ${old.id} → ${next.id}, ${writer}: writes stopped for ${ms} ms`);
    }
  }
}

/** Runs `body` on a fresh cluster of the system, stopping it after; a failure is recorded, not thrown. */
async function section(results: Results, what: string, start: () => Promise<System>, body: (system: System) => Promise<void>): Promise<void> {
  let system: System | undefined;
  try {
    log(`${what}: starting three nodes`);
    system = await start();
    await body(system);
  } catch (error) {
    results.errors.push(`${what}: ${String(error).split('\n').slice(0, 12).join('\n')}`);
    log(`${what} failed: ${String(error)}`);
  } finally {
    await system?.stop().catch((error: unknown) => log(`stopping ${what}: ${String(error)}`));
  }
}

const seconds = (ms: number | undefined) => (ms === undefined ? '—' : `${(ms / 1000).toFixed(2)}`);
function p50max(samples: readonly number[] | undefined): string {
  if (!samples || samples.length === 0) return '—';
  const sorted = [...samples].sort((a, b) => a - b);
  return `${seconds(percentile(sorted, 50))} / ${seconds(sorted.at(-1))} s`;
}
const lostText = (l: { lost: number; acked: number } | undefined) => (l ? `${l.lost} of ${l.acked}` : '—');
const load = () => loadavg().map((l) => l.toFixed(2)).join(', ');
const raw = (samples: Samples, key: string) => (samples.get(key) ?? []).map((ms) => seconds(ms)).join(', ') || '—';

async function main(): Promise<void> {
  ensurePostgresInstalled();
  const startedAt = Date.now();
  const loadBefore = load();
  const leaderd = newResults();
  const patroni = newResults();
  const deployment = await startDeployment('etcd', 'single');
  const etcdAddress = deployment.servers[0]!.address;
  const dir = mkdtempSync(join(tmpdir(), 'leaderd-bench-pg-'));
  try {
    const bothFaults = async (system: System, results: Results) => {
      await killRounds(system, dir, results, false);
      await switchoverRounds(system, dir, results);
    };
    await section(leaderd, 'leaderd', () => leaderdSystem(deployment, false), (s) => bothFaults(s, leaderd));
    await section(patroni, 'Patroni', () => patroniSystem(etcdAddress, false), (s) => bothFaults(s, patroni));
    await section(leaderd, 'leaderd synchronous', () => leaderdSystem(deployment, true), (s) => killRounds(s, dir, leaderd, true));
    await section(patroni, 'Patroni synchronous', () => patroniSystem(etcdAddress, true), (s) => killRounds(s, dir, patroni, true));
  } finally {
    await deployment.stop();
    rmSync(dir, { recursive: true, force: true });
  }
  const minutes = ((Date.now() - startedAt) / 60000).toFixed(1);
  const loadAfter = load();

  const B = 'pg-writer';
  const E = 'writer.mjs';
  const lines = [
    `# leaderd and Patroni failing over PostgreSQL, ${today()}`,
    '',
    `${ROUNDS} round${ROUNDS === 1 ? '' : 's'} per scenario and system; p50 / max. The same writer for both (bench/pg-writer.mjs: one INSERT every ${WRITE_INTERVAL_MS} ms to the first`,
    `read-write server of the three, as a multi-host libpq string with target_session_attrs=read-write picks it). Write downtime: the last commit the old primary`,
    `acknowledged → the first the new primary acknowledged. Faults at a random point within ${FAULT_SPREAD_MS / 1000} s (longer than Patroni's loop_wait and leaderd's renew interval).`,
    '',
    '| scenario | leaderd p50 / max | Patroni p50 / max |',
    '|---|---|---|',
    `| kill -9 of the whole primary node: write downtime | ${p50max(leaderd.kill.get(B))} | ${p50max(patroni.kill.get(B))} |`,
    `| the killed node's manager started again → streams from the new primary | ${p50max(leaderd.rejoin.get(''))} | ${p50max(patroni.rejoin.get(''))} |`,
    `| planned switchover to a named replica: write downtime | ${p50max(leaderd.switchover.get(B))} | ${p50max(patroni.switchover.get(B))} |`,
    `| synchronous replication, kill -9: write downtime | ${p50max(leaderd.syncKill.get(B))} | ${p50max(patroni.syncKill.get(B))} |`,
    `| synchronous replication, kill -9: acknowledged commits lost | ${lostText(leaderd.syncLost.get(B))} | ${lostText(patroni.syncLost.get(B))} |`,
    `| *leaderd's own writer (examples/postgres/writer.mjs, fenced), same faults:* kill -9: write downtime | ${p50max(leaderd.kill.get(E))} | — |`,
    `| *writer.mjs:* planned switchover: write downtime | ${p50max(leaderd.switchover.get(E))} | — |`,
    `| *writer.mjs:* synchronous, kill -9: write downtime | ${p50max(leaderd.syncKill.get(E))} | — |`,
    `| *writer.mjs:* synchronous, kill -9: acknowledged commits lost | ${lostText(leaderd.syncLost.get(E))} | — |`,
    '',
    'Every round, in seconds:',
    '',
    `- kill -9: leaderd ${raw(leaderd.kill, B)} (writer.mjs ${raw(leaderd.kill, E)}); Patroni ${raw(patroni.kill, B)}`,
    `- rejoin: leaderd ${raw(leaderd.rejoin, '')}; Patroni ${raw(patroni.rejoin, '')}`,
    `- switchover: leaderd ${raw(leaderd.switchover, B)} (writer.mjs ${raw(leaderd.switchover, E)}); Patroni ${raw(patroni.switchover, B)}`,
    `- synchronous kill -9: leaderd ${raw(leaderd.syncKill, B)} (writer.mjs ${raw(leaderd.syncKill, E)}); Patroni ${raw(patroni.syncKill, B)}`,
    '',
    '## Settings',
    '',
    `- Coordination: one etcd server (test/harness/etcd.ts) on loopback, shared by both systems (leaderd under /leaderd-chaos, Patroni under /patroni-bench/<scope>).`,
    `- leaderd: examples/postgres/leaderd.sh (check, promote, demote, follow with pg_rewind; --max-lag 1 MiB), --ttl ${TTL_SECONDS}, its check every third of the ttl (the default).`,
    `- Patroni ${'3.0.2'} (Debian): ttl ${PATRONI_TIMING.ttl}, loop_wait ${PATRONI_TIMING.loopWait}, retry_timeout ${PATRONI_TIMING.retryTimeout}, maximum_lag_on_failover 1 MiB, use_pg_rewind, use_slots; synchronous_mode for the synchronous rows.`,
    `- PostgreSQL 15 (Debian), three servers per system on loopback, the example's settings for both: data checksums, wal_keep_size 256MB, wal_retrieve_retry_interval 500ms, fsync off`,
    `  (processes are killed, never the host). leaderd synchronous: synchronous_standby_names = 'ANY 1 (the others)'.`,
    `  The issue's reference figures for Patroni (rejoin 6.4 s) ran PostgreSQL's default wal_retrieve_retry_interval, 5 s, which a`,
    `  rejoining replica waits between tries while the new primary has not made its replication slot yet: both systems here retry every 0.5 s.`,
    `- The leaderd rounds run the example's writer.mjs next to pg-writer, through the same faults (50 more commits a second on the primary).`,
    `- Machine: ${machine()}; load average ${loadBefore} at the start, ${loadAfter} at the end (other work shared the machine).`,
    `- The run took ${minutes} minutes.`,
  ];
  const errors = [...leaderd.errors, ...patroni.errors];
  if (errors.length > 0) lines.push('', '## Failed sections', '', ...errors.map((e) => `- ${e.replace(/\n/g, '\n  ')}`));
  const text = `${lines.join('\n')}\n`;
  console.log(text);
  console.log(`written to ${writeReport(`postgres-vs-patroni-${today()}${ROUNDS === 3 ? '' : `-${ROUNDS}-rounds`}.md`, text, ROUNDS >= 3 && errors.length === 0)}`);
}

await main();

/**
 * The chaos faults applied to PostgreSQL nodes, and one trial: settle (one primary, the two
 * others streaming from it, the writer's commits acknowledged), wait a random moment, inject a
 * fault, wait for commits acknowledged by a primary again, start again what was killed, wait
 * until all three stream from the primary again (the rejoin), then check the data and the terms.
 *
 * A fault hits a node as it would hit a host: a crash or a stall takes PostgreSQL and the sidecar
 * together; a partition cuts the sidecar off its coordination server only, while PostgreSQL stays
 * reachable to the writer and the other servers (they share the application's network, the
 * coordination service may well not).
 */
import { ADMIN_TOKEN, MAX_LAG_BYTES, type Ack, type PgNode } from '../harness/postgres.js';
import { seededRandom, type Random } from './faults.js';
import type { PgWorld } from './postgres-world.js';
import { sleep, until } from './world.js';

export { seededRandom };

/** A primary with acknowledged commits again after the fault ended, or the trial fails. */
export const RECOVERY_MS = 60000;
/** All three streaming from the primary again after what was killed started again. */
export const REJOIN_MS = 60000;
/** The settle before a trial, which may follow a trial that went wrong. */
export const SETTLE_MS = 120000;

const between = (rng: Random, low: number, high: number) => low + rng() * (high - low);
const pick = <T>(rng: Random, items: readonly T[]): T => items[Math.floor(rng() * items.length)]!;
const replicasOf = (world: PgWorld, primary: PgNode) => world.nodes.filter((n) => n !== primary);
const hasServers = (servers: number) => servers > 0;

export interface PgInjected {
  /** The nodes to start again once a primary acknowledges commits. */
  restart: PgNode[];
  /** The fault's own checks that failed (a switchover refused). */
  problems: string[];
  /** When the fault began, when not when `inject` was called (a switchover waits for its candidate first). */
  startedAt?: number;
}

export interface PgFault {
  readonly kind: string;
  readonly description: string;
  /** Whether the fault exists on a deployment of this many servers (0: the local backend). */
  applies(servers: number): boolean;
  inject(world: PgWorld, primary: PgNode, rng: Random): Promise<PgInjected>;
}

const nothingToRestart = (): PgInjected => ({ restart: [], problems: [] });

/** Stops `node` and its PostgreSQL for `leases` times the lease, then continues them. */
async function freezeFor(world: PgWorld, node: PgNode, leases: number): Promise<PgInjected> {
  await world.freeze(node, leases * world.leaseMs);
  return nothingToRestart();
}

/**
 * POST /switchover to the primary naming a random replica, once the primary's /cluster shows it
 * healthy, eligible and within --max-lag (otherwise leaderd rightly refuses: 412). What passes: a
 * 200 handing over to that replica.
 */
const switchover: PgFault = {
  kind: 'switchover',
  description: 'POST /switchover to the primary, naming a random replica; anything but a 200 handing over to it fails',
  applies: () => true,
  async inject(world, primary, rng) {
    const candidate = pick(rng, replicasOf(world, primary));
    const sidecar = primary.sidecar!;
    let member: { id: string; healthy: boolean; eligible: boolean; lag: number | string | null } | undefined;
    const ready = await until(async () => {
      const view = (await (await sidecar.fetch('/cluster')).json()) as { members: Array<NonNullable<typeof member>> };
      member = view.members.find((m) => m.id === candidate.id);
      return member !== undefined && member.healthy && member.eligible && member.lag !== null && Number(member.lag) <= MAX_LAG_BYTES;
    }, 5 * world.leaseMs);
    if (!ready) return { restart: [], problems: [`switchover: ${candidate.id} never ready in ${primary.id}'s /cluster: ${JSON.stringify(member)}`] };
    const startedAt = Date.now();
    const response = await sidecar.fetch('/switchover', {
      method: 'POST',
      headers: { authorization: `Bearer ${ADMIN_TOKEN}`, 'content-type': 'application/json' },
      body: JSON.stringify({ candidate: candidate.id }),
      signal: AbortSignal.timeout(RECOVERY_MS),
    });
    const body = (await response.json().catch(() => null)) as { to?: string } | null;
    const problems = response.status === 200 && body?.to === candidate.id ? [] : [`switchover from ${primary.id} to ${candidate.id} answered ${response.status}: ${JSON.stringify(body)}`];
    return { restart: [], problems, startedAt };
  },
};

export const PG_FAULTS: readonly PgFault[] = [
  {
    kind: 'kill-primary',
    description: 'kill -9 of the primary node (sidecar and every PostgreSQL process); its sidecar started again once a primary acknowledges writes, and follow.sh rewinds it',
    applies: () => true,
    async inject(world, primary) {
      await world.kill(primary);
      return { restart: [primary], problems: [] };
    },
  },
  {
    kind: 'kill-replica',
    description: 'kill -9 of a replica node (sidecar and PostgreSQL), then its sidecar started again',
    applies: () => true,
    async inject(world, primary, rng) {
      const victim = pick(rng, replicasOf(world, primary));
      await world.kill(victim);
      return { restart: [victim], problems: [] };
    },
  },
  {
    kind: 'freeze-primary-short',
    description: 'SIGSTOP of the primary node (sidecar, its hooks, PostgreSQL) for 0.2-0.8 of its lease, then SIGCONT',
    applies: () => true,
    inject: (world, primary, rng) => freezeFor(world, primary, between(rng, 0.2, 0.8)),
  },
  {
    kind: 'freeze-primary-long',
    description: 'SIGSTOP of the primary node for 1.5-2.5 times its lease, then SIGCONT',
    applies: () => true,
    inject: (world, primary, rng) => freezeFor(world, primary, between(rng, 1.5, 2.5)),
  },
  {
    kind: 'partition-primary',
    description: "the primary's sidecar cut off from its server (blackhole) for 1.5-2.5 leases; PostgreSQL stays reachable",
    applies: hasServers,
    async inject(world, primary, rng) {
      primary.proxy!.blackhole();
      await sleep(between(rng, 1.5, 2.5) * world.leaseMs);
      primary.proxy!.heal();
      return nothingToRestart();
    },
  },
  {
    kind: 'restart-server',
    description: 'the backend server stopped for 0.2-1.5 leases, then started',
    applies: hasServers,
    async inject(world, _primary, rng) {
      const server = world.deployment.servers[0]!;
      await server.pause();
      await sleep(between(rng, 0.2, 1.5) * world.leaseMs);
      await server.resume();
      return nothingToRestart();
    },
  },
  switchover,
];

export interface PgTrialResult {
  kind: string;
  /** Whether a new term acknowledged the first commit after the fault (else the primary kept its term). */
  newPrimary: boolean;
  /**
   * Writes stopped: the last commit acknowledged before the fault → the first one acknowledged by
   * the new primary, or, when the primary kept its term, the largest gap between acknowledgements
   * until the first after the fault ended. Null when no commit came within RECOVERY_MS.
   */
  downtimeMs: number | null;
  /** From the restart of what was killed (or the fault's end) until all three streamed again; null if they never did. */
  rejoinMs: number | null;
  rejoinError: string | null;
  /** Acknowledged ids found missing on the settled primary. */
  lost: number[];
  /** The fault's own checks that failed. */
  problems: string[];
  /** Violations the checker found that no earlier trial reported (some may predate this trial's fault). */
  violations: string[];
  staleWindowsMs: number[];
}

export async function runTrial(world: PgWorld, fault: PgFault, rng: Random): Promise<PgTrialResult> {
  const before = await world.settle(SETTLE_MS, true);
  // Losses found now happened earlier (a trial whose rejoin failed never looked): they count here.
  const lost = await world.newlyLost(before.primary);
  // A random moment within the lease: right after a renewal, between two, just before one.
  await sleep(rng() * world.leaseMs);
  const calledAt = Date.now();
  const injected = await fault.inject(world, before.primary, rng);
  const startedAt = injected.startedAt ?? calledAt;
  const endedAt = Date.now();
  const first = await world.firstWriteAfter(before.token, startedAt, endedAt, RECOVERY_MS);
  const problems = [...injected.problems];
  if (!first) problems.push(`no commit acknowledged by any primary within ${RECOVERY_MS} ms of the fault's end; the writer said: ${world.writer.stderr.slice(-500)}`);
  for (const node of injected.restart) await world.launch(node);
  const rejoinFrom = Date.now();
  let rejoinMs: number | null = null;
  let rejoinError: string | null = null;
  try {
    const after = await world.settle(REJOIN_MS, false);
    rejoinMs = Date.now() - rejoinFrom;
    lost.push(...(await world.newlyLost(after.primary)));
  } catch (error) {
    rejoinError = (error as Error).message;
  }
  const { violations, staleWindowsMs } = world.newFindings();
  return {
    kind: fault.kind,
    newPrimary: first !== null && first.token > before.token,
    downtimeMs: first === null ? null : downtime(world.writer.acks(), startedAt, first, before.token),
    rejoinMs,
    rejoinError,
    lost,
    problems: [...problems, ...world.crashes.splice(0)],
    violations,
    staleWindowsMs,
  };
}

/** See PgTrialResult.downtimeMs. */
function downtime(acks: readonly Ack[], startedAt: number, first: Ack, token: number): number {
  const end = acks.indexOf(first);
  let start = end;
  while (start > 0 && acks[start]!.at >= startedAt) start--;
  if (first.token > token) return first.at - acks[start]!.at;
  let gap = 0;
  for (let i = start; i < end; i++) gap = Math.max(gap, acks[i + 1]!.at - acks[i]!.at);
  return gap;
}

/**
 * After a failed rejoin: starts again the sidecar of every node that does not stream from the
 * primary (its PostgreSQL keeps running), so that its leader-change hook runs afresh. leaderd
 * runs a failed leader-change hook again by itself, but not one that succeeded without making
 * the node stream.
 */
export async function repair(world: PgWorld): Promise<string[]> {
  const roles = await Promise.all(world.nodes.map((n) => n.sidecar?.role().catch(() => null) ?? null));
  const primary = world.nodes.find((_, i) => roles[i]?.role === 'primary');
  const streaming = primary ? await primary.streamingStandbys() : [];
  const restarted: string[] = [];
  for (const node of world.nodes) {
    if (node === primary || streaming.includes(node.id)) continue;
    await world.restartSidecar(node);
    restarted.push(node.id);
  }
  return restarted;
}

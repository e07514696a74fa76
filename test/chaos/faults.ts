/**
 * The faults the chaos suite injects, and one trial: settle, wait a random moment, inject one
 * fault, wait for the election to settle again, check the whole hook log.
 */
import { monotonicNow, sleep, type ChaosWorld, type Node } from './world.js';

export type Random = () => number;

/** A small seeded generator (mulberry32), so that a run can be repeated with its seed. */
export function seededRandom(seed: number): Random {
  let state = seed >>> 0;
  return () => {
    state = (state + 0x6d2b79f5) >>> 0;
    let t = state;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

const between = (rng: Random, low: number, high: number) => low + rng() * (high - low);
const pick = <T>(rng: Random, items: readonly T[]): T => items[Math.floor(rng() * items.length)]!;
const replicasOf = (world: ChaosWorld, primary: Node) => world.nodes.filter((n) => n !== primary);
const hasServers = (servers: number) => servers > 0;

/** Stops a server for 0.2-1.5 leases, then starts it again on its data. */
async function restartServer(world: ChaosWorld, index: number, rng: Random): Promise<void> {
  const server = world.deployment.servers[index]!;
  await server.pause();
  await sleep(between(rng, 0.2, 1.5) * world.leaseMs);
  await server.resume();
}

export interface Fault {
  readonly kind: string;
  readonly description: string;
  /** Whether the fault exists on a deployment of this many servers (0: the local backend). */
  applies(servers: number): boolean;
  /** Does the fault and resolves once it is over; returns the nodes to start again once a primary is back. */
  inject(world: ChaosWorld, primary: Node, rng: Random): Promise<Node[]>;
  /** What the fault may add to the recovery on top of the backend's own bound (hook delays, hold-offs). */
  extraRecoveryMs?(world: ChaosWorld): number;
}

export const FAULTS: readonly Fault[] = [
  {
    kind: 'kill-primary',
    description: 'kill -9 of the primary',
    applies: () => true,
    async inject(world, primary) {
      await world.kill(primary);
      return [primary];
    },
  },
  {
    kind: 'kill-replica',
    description: 'kill -9 of a replica',
    applies: () => true,
    async inject(world, primary, rng) {
      const victim = pick(rng, replicasOf(world, primary));
      await world.kill(victim);
      return [victim];
    },
  },
  {
    kind: 'freeze-primary-short',
    description: 'SIGSTOP of the primary for 0.2-0.8 of its lease, then SIGCONT',
    applies: () => true,
    async inject(world, primary, rng) {
      await world.freeze(primary, between(rng, 0.2, 0.8) * world.leaseMs);
      return [];
    },
  },
  {
    kind: 'freeze-primary-long',
    description: 'SIGSTOP of the primary for 1.5-2.5 times its lease, then SIGCONT',
    applies: () => true,
    async inject(world, primary, rng) {
      await world.freeze(primary, between(rng, 1.5, 2.5) * world.leaseMs);
      return [];
    },
  },
  {
    kind: 'restart-primary-server',
    description: 'the server the primary is connected to stopped for 0.2-1.5 leases, then started',
    applies: hasServers,
    async inject(world, primary, rng) {
      await restartServer(world, primary.server, rng);
      return [];
    },
  },
  {
    kind: 'restart-backend-leader',
    description: "the backend's own leader stopped for 0.2-1.5 leases, then started",
    applies: (servers) => servers > 1,
    async inject(world, _primary, rng) {
      const index = await world.deployment.leaderIndex();
      if (index < 0) throw new Error('the backend names no leader');
      await restartServer(world, index, rng);
      return [];
    },
  },
  {
    kind: 'partition-primary',
    description: 'the primary cut off from its server (blackhole, both running) for 1.5-2.5 leases',
    applies: hasServers,
    async inject(world, primary, rng) {
      primary.proxy!.blackhole();
      await sleep(between(rng, 1.5, 2.5) * world.leaseMs);
      primary.proxy!.heal();
      return [];
    },
  },
  {
    kind: 'delay-primary',
    description: "the primary's traffic delayed by 0.1-0.5 of its lease, for 1-2 leases",
    applies: hasServers,
    async inject(world, primary, rng) {
      primary.proxy!.delay(between(rng, 0.1, 0.5) * world.leaseMs);
      await sleep(between(rng, 1, 2) * world.leaseMs);
      primary.proxy!.heal();
      return [];
    },
  },
  {
    kind: 'slow-hooks',
    description: 'every hook takes 0.3-1 lease, then the primary is stopped (SIGTERM)',
    applies: () => true,
    async inject(world, primary, rng) {
      for (const node of world.nodes) world.slowHooks(node, between(rng, 0.3, 1) * world.leaseMs);
      await world.terminate(primary);
      return [primary];
    },
    extraRecoveryMs: (world) => 3 * world.leaseMs,
  },
  {
    kind: 'failing-promote',
    description: "every replica's next promote hook fails, then the primary is stopped (SIGTERM)",
    applies: () => true,
    async inject(world, primary) {
      for (const node of replicasOf(world, primary)) world.failNextPromote(node);
      await world.terminate(primary);
      return [primary];
    },
    // A node whose promote failed stays out of the race for one ttl; each replica may fail once.
    extraRecoveryMs: (world) => 2 * world.ttlMs,
  },
];

export interface TrialResult {
  kind: string;
  /** From the fault's start to the first promote of a new term; null when the primary kept its term. */
  failoverMs: number | null;
  /** From the fault's end until some node was primary again. */
  recoveryMs: number;
  boundMs: number;
  /** Hook notifications that never came (see ChaosWorld.settle). */
  lost: string[];
  /** Violations the checker found in the log that were not there before this trial. */
  violations: string[];
  /** Fenced stale windows that appeared in this trial (ms). */
  staleWindowsMs: number[];
}

/** How long after a fault ends a primary must be back: two leases to expire and a margin for a loaded machine. */
export function recoveryBoundMs(world: ChaosWorld, fault: Fault): number {
  return 2 * world.leaseMs + world.ttlMs + 5000 + (fault.extraRecoveryMs?.(world) ?? 0);
}

export async function runTrial(world: ChaosWorld, fault: Fault, rng: Random): Promise<TrialResult> {
  const boundMs = recoveryBoundMs(world, fault);
  const before = await world.settle(boundMs);
  const earlier = world.check();
  // A random moment within the lease: right after a promotion, between renewals, just before one.
  await sleep(rng() * world.leaseMs);
  const startedAt = monotonicNow();
  const restart = await fault.inject(world, before.primary, rng);
  const endedAt = monotonicNow();
  await world.anyPrimary(before.token, boundMs);
  const recoveryMs = monotonicNow() - endedAt;
  for (const node of restart) await world.launch(node);
  const after = await world.settle(boundMs);
  world.clearHookFaults();
  const verdict = world.check();
  const firstPromote = world
    .records()
    .filter((r) => r.LEADERD_EVENT === 'promote' && r.at >= startedAt && Number(r.LEADERD_FENCING_TOKEN) > before.token)
    .reduce((first, r) => Math.min(first, r.at), Infinity);
  const seen = new Set(earlier.violations);
  return {
    kind: fault.kind,
    failoverMs: Number.isFinite(firstPromote) ? firstPromote - startedAt : null,
    recoveryMs,
    boundMs,
    lost: after.lost,
    violations: [...verdict.violations.filter((v) => !seen.has(v)), ...world.crashes.splice(0)],
    staleWindowsMs: verdict.staleWindowsMs.slice(earlier.staleWindowsMs.length),
  };
}

/**
 * The faults the chaos suite injects, and one trial: settle, wait a random moment, inject one
 * fault, wait for the election to settle again, check the whole hook log.
 *
 * Every node runs a check whose position moves during every trial (see world.ts), so every fault
 * also happens while the gate's ranking of the replicas changes. Two faults exercise
 * replication-aware failover itself: a switchover, and a primary whose check starts failing.
 */
import { monotonicNow, sleep, until, type ChaosWorld, type Node } from './world.js';

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

/** When (wall clock, ms) the node's sidecar last logged one of `messages`; 0 when it never did. */
function lastTime(node: Node, messages: readonly string[]): number {
  const line = node.sidecar?.logs.filter((l) => messages.includes(l.msg)).at(-1);
  return line ? Date.parse(String(line.time)) : 0;
}

/** Stops a server for 0.2-1.5 leases, then starts it again on its data. */
async function restartServer(world: ChaosWorld, index: number, rng: Random): Promise<void> {
  const server = world.deployment.servers[index]!;
  await server.pause();
  await sleep(between(rng, 0.2, 1.5) * world.leaseMs);
  await server.resume();
}

/** What a fault reports beyond the nodes to start again. */
export interface Injected {
  /** The nodes to start again once a primary is back. */
  restart: Node[];
  /** The fault's own checks that failed (a switchover refused, a handover too early...). */
  problems: string[];
  /**
   * Who took over in the fault, with which token: it must have logged that term, and must still
   * lead once the world has settled again, unless the backend took the term away from it since
   * (its log says `session ended`: on a loaded machine a lease can run out after any failover).
   */
  expect?: { primary: Node; token: number };
}

export interface Fault {
  readonly kind: string;
  readonly description: string;
  /** Whether the fault exists on a deployment of this many servers (0: the local backend). */
  applies(servers: number): boolean;
  /**
   * Waits, before the trial's random moment, until the world is ready for the fault; returns
   * what was never ready (a problem of the trial).
   */
  prepare?(world: ChaosWorld, primary: Node): Promise<string[]>;
  /**
   * Does the fault to a world settled on `primary` with fencing token `token`, and resolves once
   * it is over; returns the nodes to start again once a primary is back (or more, as Injected).
   */
  inject(world: ChaosWorld, primary: Node, rng: Random, token: number): Promise<Node[] | Injected>;
  /** What the fault may add to the recovery on top of the backend's own bound (hook delays, hold-offs). */
  extraRecoveryMs?(world: ChaosWorld): number;
}

/**
 * POST /switchover to the primary, naming a random replica, or (one time in three) no one, so
 * that the primary picks the best member by the gate's rule at that moment. The trial's
 * "failover" is the switchover: from the request to the candidate's promote hook.
 *
 * What passes: 200 from the primary to the replica named (to any replica when none was named),
 * with a fencing token larger than the primary's; and once the world has settled, that replica
 * leads with that token. Everything else is a failure, 412 and 503 included: before it asks, the
 * harness waits until the primary's own /cluster view shows every member healthy and eligible,
 * the world has settled with every node in the race and its check passing, no member has priority
 * 0 and no --max-lag is set, so no member can be refused (412); and nothing else is wrong in the
 * world, so a switchover that does not complete within a ttl (503) is a handover leaderd could
 * not finish unobstructed. 409 (not the primary, or one already in flight) cannot be right either:
 * the request goes to the primary the world settled on, one at a time.
 */
const switchover: Fault = {
  kind: 'switchover',
  description: 'POST /switchover to the primary, naming a random replica or no one; anything but a 200 handing over to it (412, 503 too) fails',
  applies: () => true,
  async prepare(world, primary) {
    // The primary decides on the member records as it reads them, and a member's record says
    // whether it stands: wait until the primary has read, from every member, a record written
    // since the member last came back in the race or became healthy (a record catches up with
    // either within a check interval), showing it healthy and eligible.
    const since = new Map(world.nodes.map((n) => [n.id, lastTime(n, ['back in the race', 'check: healthy'])]));
    const everyMemberReady = async () => {
      const view = await world.cluster(primary);
      return (
        view.members.length === world.nodes.length &&
        view.members.every((m) => m.healthy && m.eligible && m.priority > 0 && Date.parse(m.updatedAt) >= (since.get(m.id) ?? Infinity))
      );
    };
    // The records are read every check interval: a few intervals are plenty.
    if (await until(everyMemberReady, 5 * world.leaseMs)) return [];
    return [`switchover: ${primary.id}'s /cluster never showed every member's latest record, healthy and eligible: ${JSON.stringify(await world.cluster(primary).catch(String))}`];
  },
  async inject(world, primary, rng, token) {
    const replicas = replicasOf(world, primary);
    const candidate = rng() < 1 / 3 ? null : pick(rng, replicas);
    const answer = await world.switchover(primary, candidate?.id ?? null);
    const what = `switchover from ${primary.id} to ${candidate?.id ?? 'the best member'} (token ${token})`;
    const to = replicas.find((n) => n.id === answer.body.to);
    const newToken = answer.body.fencingToken;
    const problems: string[] = [];
    if (answer.status !== 200) problems.push(`${what} answered ${answer.status}: ${JSON.stringify(answer.body)}`);
    else if (answer.body.from !== primary.id || !to || (candidate !== null && to !== candidate) || typeof newToken !== 'number' || newToken <= token) {
      problems.push(`${what} answered 200 with ${JSON.stringify(answer.body)}`);
    }
    return { restart: [], problems, ...(problems.length === 0 ? { expect: { primary: to!, token: newToken as number } } : {}) };
  },
};

/**
 * The primary's check starts failing (exit 3; a replica's stays healthy) and stays failing until a
 * replica leads; then it passes again. A primary hands over when its check has failed without a
 * pass for --unhealthy-after, by default the ttl (on Consul the session's, 10 s, not the 2 s
 * check ttl), so a failed run or two must not end its term. What passes: a replica leads; the old
 * primary's demote hook started no earlier than a ttl after the check began to fail, and its log
 * gives the failed check as the reason; once the world has settled (the old primary healthy
 * again), the replica that took over still leads.
 */
const checkFlipsUnhealthy: Fault = {
  kind: 'check-flips-unhealthy',
  description: "the primary's check fails until it hands over (after a ttl of failed checks, not before), then passes again",
  applies: () => true,
  async inject(world, primary, _rng, token) {
    const sidecar = primary.sidecar!;
    const logsBefore = sidecar.logs.length;
    const failingFrom = monotonicNow();
    world.setHealthy(primary, false);
    let next: { node: Node; token: number };
    try {
      next = await world.anyPrimary(token + 1, recoveryBoundMs(world, checkFlipsUnhealthy), replicasOf(world, primary));
    } finally {
      world.setHealthy(primary, true);
    }
    const problems: string[] = [];
    const demote = world.records().find((r) => r.LEADERD_ID === primary.id && r.LEADERD_EVENT === 'demote' && r.at >= failingFrom);
    if (demote && demote.at - failingFrom < world.ttlMs) {
      problems.push(`${primary.id} (token ${token}) began to demote ${Math.round(demote.at - failingFrom)} ms after its check began to fail, before a whole ttl (${world.ttlMs} ms)`);
    }
    const reason = sidecar.logs.slice(logsBefore).find((l) => l.msg === 'not standing for leadership' && /^the check has failed for /.test(String(l.reason)));
    if (!reason) {
      const said = sidecar.logs.slice(logsBefore).map((l) => `${l.msg}${l.reason === undefined ? '' : ` (${String(l.reason)})`}`);
      problems.push(`${primary.id} (token ${token}) handed over to ${next.node.id} without logging its failed check as the reason; it logged: ${JSON.stringify(said)}`);
    }
    return { restart: [], problems, expect: { primary: next.node, token: next.token } };
  },
  // The inject waits for the handover within the recovery bound, and the handover comes only after
  // a ttl of failed checks (--unhealthy-after's default), seen by the first check run after that (a
  // check interval later): the usual bound (a replica taking over a released lease) comes on top.
  extraRecoveryMs: (world) => world.ttlMs + world.checkIntervalMs,
};

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
  switchover,
  checkFlipsUnhealthy,
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
  /** The fault's own checks that failed (see Injected.problems), and a settled primary other than the one it expected. */
  problems: string[];
  /** What happened that is no failure but worth a look (a new primary that lost its session soon after). */
  notes: string[];
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
  const problems = (await fault.prepare?.(world, before.primary)) ?? [];
  // A random moment within the lease: right after a promotion, between renewals, just before one.
  await sleep(rng() * world.leaseMs);
  const startedAt = monotonicNow();
  const injected = await fault.inject(world, before.primary, rng, before.token);
  const { restart, problems: faultProblems, expect } = Array.isArray(injected) ? { restart: injected, problems: [], expect: undefined } : injected;
  problems.push(...faultProblems);
  const endedAt = monotonicNow();
  await world.anyPrimary(before.token, boundMs);
  const recoveryMs = monotonicNow() - endedAt;
  for (const node of restart) await world.launch(node);
  const after = await world.settle(boundMs);
  world.clearFaults();
  const notes: string[] = [];
  if (expect) {
    const logs = expect.primary.sidecar?.logs ?? [];
    const promoted = logs.findIndex((l) => l.msg === 'role: primary' && l.fencingToken === expect.token);
    const ended = promoted < 0 ? undefined : logs.slice(promoted).find((l) => l.msg === 'session ended');
    const who = `${expect.primary.id} (token ${expect.token})`;
    if (promoted < 0) problems.push(`${fault.kind}: ${who} took over, but never logged that term`);
    else if (after.primary !== expect.primary || after.token !== expect.token) {
      if (ended) notes.push(`${fault.kind}: ${who} took over, then lost its session (${String(ended.reason)}); ${after.primary.id} (token ${after.token}) leads once settled`);
      else problems.push(`${fault.kind}: ${who} took over, but ${after.primary.id} (token ${after.token}) leads once settled`);
    }
  }
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
    problems,
    notes,
    violations: [...verdict.violations.filter((v) => !seen.has(v)), ...world.crashes.splice(0)],
    staleWindowsMs: verdict.staleWindowsMs.slice(earlier.staleWindowsMs.length),
  };
}

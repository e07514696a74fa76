/**
 * The chaos run on a real PostgreSQL cluster (`npm run chaos -- --app postgres`): three
 * PostgreSQL 15 servers with streaming replication on one server of the backend, each with a
 * sidecar running examples/postgres/, the example's writer committing rows through every trial,
 * and the faults of test/chaos/postgres-faults.ts. What counts is what the application sees: no
 * two primaries, no acknowledged commit lost (in synchronous mode), commits acknowledged in
 * fencing-token order, how long writes stop, and every node streaming again after each fault.
 */
import { loadavg } from 'node:os';
import { serverCount, startDeployment, type BackendName } from '../test/chaos/deployments.js';
import { PG_FAULTS, repair, runTrial, seededRandom, SETTLE_MS, type PgTrialResult } from '../test/chaos/postgres-faults.js';
import { PgWorld } from '../test/chaos/postgres-world.js';
import { ensurePostgresInstalled, postgresUser, type Ack } from '../test/harness/postgres.js';
import { Sidecar } from '../test/harness/sidecar.js';
import { machine, percentile, today, writeReport } from './report.js';

export interface PostgresChaosOptions {
  backend: BackendName;
  trials: number;
  seed: number;
  synchronous: boolean;
  /** One fault kind only (a narrowed run: its report goes to bench/tmp/). */
  only?: string;
  dumpSlowerThanMs: number;
}

/** A trial that threw: its world never settled before it, or its fault could not be applied. */
interface Failure {
  kind: string;
  error: string;
}

/** Consecutive trials that may fail before the run gives up on its cluster. */
const GIVE_UP_AFTER = 3;

export function postgresFaultKinds(): string[] {
  return PG_FAULTS.map((f) => f.kind);
}

/** Runs the trials; returns the exit code: 0 when nothing went wrong (no overlap, loss in sync mode, token disorder, failed rejoin, failed trial or problem). */
export async function runPostgresChaos(options: PostgresChaosOptions): Promise<number> {
  const { backend, trials, seed, synchronous, only, dumpSlowerThanMs } = options;
  ensurePostgresInstalled();
  const rng = seededRandom(seed);
  const faults = PG_FAULTS.filter((f) => f.applies(serverCount(backend, 'single')) && (only === undefined || f.kind === only));
  if (faults.length === 0) throw new Error(`--fault ${only} does not apply to ${backend}`);
  const results: PgTrialResult[] = [];
  const failures: Failure[] = [];
  const started = Date.now();
  const deployment = await startDeployment(backend, 'single', { owner: postgresUser() });
  let world: PgWorld | undefined;
  let acks: readonly Ack[] = [];
  const closing: Closing = { violations: [], staleWindowsMs: [], lost: [], error: null };
  let loadAtStart = loadavg()[0]!;
  // PostgreSQL runs as daemons, not as children of this process: an interrupted run stops its
  // cluster, or the servers would outlive it.
  const interrupted = (signal: NodeJS.Signals) => {
    console.error(`chaos: ${signal}: stopping the cluster`);
    void Promise.resolve(world?.stop())
      .finally(() => deployment.stop())
      .finally(() => process.exit(130));
  };
  process.once('SIGINT', interrupted).once('SIGTERM', interrupted);
  try {
    world = await PgWorld.start(deployment, synchronous);
    loadAtStart = world.loadAtStart;
    let failedInARow = 0;
    for (let n = 0; n < trials && failedInARow < GIVE_UP_AFTER; n++) {
      const fault = faults[Math.floor(rng() * faults.length)]!;
      const trialStarted = Date.now();
      try {
        const result = await runTrial(world, fault, rng);
        results.push(result);
        failedInARow = 0;
        const problems = [...result.violations, ...result.problems, ...(result.lost.length ? [`${result.lost.length} acknowledged commits lost`] : [])];
        const downtime = result.downtimeMs === null ? 'no writes' : `writes stopped ${Math.round(result.downtimeMs)} ms${result.newPrimary ? ' (new term)' : ''}`;
        const rejoin = result.rejoinMs === null ? `REJOIN FAILED: ${result.rejoinError}` : `rejoined in ${Math.round(result.rejoinMs)} ms`;
        console.error(`postgres ${backend} #${n + 1}/${trials} ${fault.kind}: ${downtime}, ${rejoin} (${Math.round((Date.now() - trialStarted) / 1000)} s)${problems.length ? ` PROBLEMS: ${problems.join('; ')}` : ''}`);
        if (problems.length || result.rejoinError || (result.downtimeMs ?? Infinity) > dumpSlowerThanMs) console.error(`  the nodes' logs: ${world.dumpLogs()}`);
        if (result.rejoinError) console.error(`  restarted the sidecars of ${(await repair(world)).join(', ') || 'no node'}`);
      } catch (error) {
        failures.push({ kind: fault.kind, error: (error as Error).message });
        failedInARow++;
        console.error(`postgres ${backend} #${n + 1}/${trials} ${fault.kind}: FAILED ${(error as Error).message}`);
        console.error(`  the nodes' logs: ${world.dumpLogs()}`);
        // Every node running again, and one more chance to settle before the next trial.
        for (const node of world.nodes) if (!node.sidecar) await world.launch(node);
        console.error(`  restarted the sidecars of ${(await repair(world).catch(() => [])).join(', ') || 'no node'}`);
        await world.settle(SETTLE_MS, true).catch(() => undefined);
      }
    }
    // What happened after the last trial's checks, or was never checked (a last trial whose rejoin
    // failed): once more, over the settled world.
    try {
      const final = await world.settle(SETTLE_MS, true);
      closing.lost.push(...(await world.newlyLost(final.primary)));
    } catch (error) {
      closing.error = `the world did not settle after the last trial: ${(error as Error).message}`;
    }
    Object.assign(closing, world.newFindings());
    acks = [...world.writer.acks()];
  } finally {
    await world?.stop();
    await Sidecar.killAll();
    await deployment.stop();
  }
  const seconds = (Date.now() - started) / 1000;
  const outOfOrder = acksOutOfTokenOrder(acks);
  const report = render({ ...options, faultKinds: faults.map((f) => f.kind) }, results, closing, failures, acks.length, outOfOrder, seconds, loadAtStart);
  console.log(report);
  const name = `chaos-postgres${synchronous ? '' : '-async'}-${today()}-${backend}.md`;
  console.error(`written to ${writeReport(name, report, only === undefined)}`);
  const overlaps = results.reduce((sum, r) => sum + r.violations.length, closing.violations.length);
  const lost = results.reduce((sum, r) => sum + r.lost.length, closing.lost.length);
  const rejoinFailures = results.filter((r) => r.rejoinMs === null).length;
  // A switchover refused, writes that never came back or a sidecar that exited on its own fail
  // the run too, as a failed fault check does in the fixture's.
  const problems = results.reduce((sum, r) => sum + r.problems.length, 0);
  return overlaps === 0 && outOfOrder === 0 && rejoinFailures === 0 && (!synchronous || lost === 0) && failures.length === 0 && problems === 0 && closing.error === null ? 0 : 1;
}

/** The checks made once more after the last trial. */
interface Closing {
  violations: string[];
  staleWindowsMs: number[];
  lost: number[];
  error: string | null;
}

/** Acknowledgements with a smaller fencing token than one acknowledged before them. */
function acksOutOfTokenOrder(acks: readonly Ack[]): number {
  let highest = -Infinity;
  let count = 0;
  for (const ack of acks) {
    if (ack.token < highest) count++;
    highest = Math.max(highest, ack.token);
  }
  return count;
}

function render(
  options: PostgresChaosOptions & { faultKinds: string[] },
  results: readonly PgTrialResult[],
  closing: Closing,
  failures: readonly Failure[],
  acks: number,
  outOfOrder: number,
  seconds: number,
  loadAtStart: number,
): string {
  const ms = (v: number | undefined) => (v === undefined ? '-' : `${Math.round(v)}`);
  const sorted = (values: number[]) => values.sort((a, b) => a - b);
  const trials = results.length + failures.length;
  // What the closing check found counts as the trials' do.
  const overlaps = [...results.flatMap((r) => r.violations), ...closing.violations];
  const lost = [...results.flatMap((r) => r.lost), ...closing.lost];
  const problems = [...results.flatMap((r) => r.problems), ...(closing.error ? [closing.error] : [])];
  const stale = [...results.flatMap((r) => r.staleWindowsMs), ...closing.staleWindowsMs];
  const rejoins = sorted(results.flatMap((r) => (r.rejoinMs === null ? [] : [r.rejoinMs])));
  const rejoinFailures = results.filter((r) => r.rejoinMs === null);
  const mode = options.synchronous ? 'synchronous' : 'asynchronous';
  const lines = [
    `## Chaos: PostgreSQL on ${options.backend}, ${mode} replication`,
    '',
    `${trials} trials (seed ${options.seed}, ${Math.round(seconds)} s, ${trials ? Math.round(seconds / trials) : 0} s a trial), three PostgreSQL 15 nodes each with a sidecar` +
      ` (examples/postgres/), one ${options.backend === 'local' ? 'host directory' : 'server'}, on ${machine()}.` +
      ` Load average ${loadAtStart.toFixed(1)} at the start, ${loadavg()[0]!.toFixed(1)} at the end.`,
    '',
    '| | |',
    '|---|---|',
    `| trials | ${trials} |`,
    `| overlaps (must be 0) | ${overlaps.length} |`,
    `| acknowledged commits lost (must be 0 in synchronous mode) | ${lost.length} of ${acks} |`,
    `| acknowledgements out of fencing-token order (must be 0) | ${outOfOrder} |`,
    `| rejoins: all three streaming within 60 s (failures must be 0) | ${rejoins.length} succeeded, ${rejoinFailures.length} failed |`,
    `| rejoin time p50 / p99 / max ms | ${ms(percentile(rejoins, 50))} / ${ms(percentile(rejoins, 99))} / ${ms(rejoins.at(-1))} |`,
    `| trials that failed: never settled, or the fault could not be applied (must be 0) | ${failures.length} |`,
    `| other problems: a switchover not answered 200, no commit within 60 s, a sidecar exiting on its own, no settled world after the last trial (must be 0) | ${problems.length} |`,
    `| stale windows after a thaw, fenced by a larger token | ${stale.length} (max ${ms(Math.max(0, ...stale))} ms) |`,
    '',
    '| fault | trials | new term | write downtime p50 ms | p99 ms | max ms | rejoin p50 ms | p99 ms |',
    '|---|---:|---:|---:|---:|---:|---:|---:|',
  ];
  for (const fault of PG_FAULTS) {
    const mine = results.filter((r) => r.kind === fault.kind);
    const failed = failures.filter((f) => f.kind === fault.kind).length;
    if (mine.length + failed === 0) continue;
    const downtimes = sorted(mine.flatMap((r) => (r.downtimeMs === null ? [] : [r.downtimeMs])));
    const rejoin = sorted(mine.flatMap((r) => (r.rejoinMs === null ? [] : [r.rejoinMs])));
    lines.push(
      `| ${fault.description} | ${mine.length + failed} | ${mine.filter((r) => r.newPrimary).length} | ${ms(percentile(downtimes, 50))} | ${ms(percentile(downtimes, 99))} | ${ms(downtimes.at(-1))} | ${ms(percentile(rejoin, 50))} | ${ms(percentile(rejoin, 99))} |`,
    );
  }
  lines.push(
    '',
    '"New term": the first commit after the fault was acknowledged under a larger fencing token (a new primary, or the old one elected again). "Write downtime" runs from the last commit acknowledged before the fault to the first acknowledged by the new primary, or, when the primary kept its term, is the largest gap between acknowledgements until the first after the fault. "Rejoin" runs from the restart of what was killed (else the fault\'s end) until both other servers stream from the primary.',
  );
  if (overlaps.length + lost.length + problems.length + failures.length + rejoinFailures.length) lines.push('', 'Problems:');
  for (const problem of [
    ...overlaps,
    ...(lost.length ? [`acknowledged ids lost: ${lost.slice(0, 50).join(', ')}${lost.length > 50 ? ', ...' : ''}`] : []),
    ...problems,
    ...rejoinFailures.map((r) => `${r.kind}: rejoin failed: ${r.rejoinError!.slice(0, 600)}`),
    ...failures.map((f) => `${f.kind}: ${f.error.slice(0, 600)}`),
  ]) {
    lines.push(`- ${problem}`);
  }
  return `${lines.join('\n')}\n`;
}

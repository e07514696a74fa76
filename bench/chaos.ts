/**
 * The long chaos run: randomised faults against three sidecars on a real backend, one server and
 * a 3-server cluster, with the split-brain checker reading every hook record.
 *
 *   npm run chaos -- --backend etcd --trials 200 [--topology single|cluster|both] [--seed N]
 *                    [--fault KIND] [--dump-slower-than MS]
 *   npm run chaos -- --app postgres --backend etcd --trials 50 [--replication sync|async] [--seed N]
 *                    [--fault KIND] [--dump-slower-than MS]
 *
 * `--app fixture` (the default) is the run described here; `--app postgres` fails over a real
 * PostgreSQL cluster instead, on one server (bench/chaos-postgres.ts).
 *
 * Prints a table (trials, faults by kind, overlaps, lost promotions, failed fault checks,
 * failover p50/p99/max per fault kind), writes it to bench/results/chaos-<date>-<backend>.md (a
 * run of one fault or one topology, to bench/tmp/), and exits 1 unless there were no overlaps, no
 * lost hook notifications, no failed fault checks (see Injected.problems in test/chaos/faults.ts)
 * and every recovery came within its bound. The nodes' logs are written out for
 * every trial with a problem, and for every failover slower than --dump-slower-than.
 */
import { parseArgs } from 'node:util';
import { BACKENDS, TOPOLOGIES, serverCount, startDeployment, type BackendName, type Topology } from '../test/chaos/deployments.js';
import { FAULTS, runTrial, seededRandom, type TrialResult } from '../test/chaos/faults.js';
import { ChaosWorld } from '../test/chaos/world.js';
import { Sidecar } from '../test/harness/sidecar.js';
import { postgresFaultKinds, runPostgresChaos } from './chaos-postgres.js';
import { machine, percentile, today, writeReport } from './report.js';

const USAGE =
  'usage: npm run chaos -- [--app fixture|postgres] --backend local|etcd|zookeeper|consul [--trials N] [--topology single|cluster|both] [--replication sync|async] [--seed N] [--fault KIND] [--dump-slower-than MS]';

interface Failure {
  topology: Topology;
  kind: string;
  error: string;
}

function options() {
  const { values } = parseArgs({
    options: {
      app: { type: 'string', default: 'fixture' },
      replication: { type: 'string', default: 'sync' },
      backend: { type: 'string' },
      trials: { type: 'string', default: '200' },
      topology: { type: 'string', default: 'both' },
      seed: { type: 'string', default: String(Date.now() % 1e9) },
      fault: { type: 'string' },
      'dump-slower-than': { type: 'string' },
      help: { type: 'boolean', default: false },
    },
    strict: true,
  });
  if (values.help) {
    console.log(USAGE);
    process.exit(0);
  }
  const backend = values.backend as BackendName;
  if (!BACKENDS.includes(backend)) throw new Error(`--backend must be one of ${BACKENDS.join(', ')}`);
  const trials = Number(values.trials);
  if (!Number.isInteger(trials) || trials < 1) throw new Error('--trials must be a positive integer');
  const app = values.app;
  if (app !== 'fixture' && app !== 'postgres') throw new Error('--app must be fixture or postgres');
  if (app === 'postgres' && values.topology === 'cluster') throw new Error('--app postgres runs on one server: --topology single');
  if (values.replication !== 'sync' && values.replication !== 'async') throw new Error('--replication must be sync or async');
  if (app === 'fixture' && values.replication !== 'sync') throw new Error('--replication is for --app postgres');
  const synchronous = values.replication === 'sync';
  const topologies: Topology[] =
    backend === 'local' ? ['single'] : values.topology === 'both' ? [...TOPOLOGIES] : [values.topology as Topology];
  if (!topologies.every((t) => TOPOLOGIES.includes(t))) throw new Error('--topology must be single, cluster or both');
  const seed = Number(values.seed);
  if (!Number.isInteger(seed)) throw new Error('--seed must be an integer');
  const only = values.fault;
  const kinds = app === 'postgres' ? postgresFaultKinds() : FAULTS.map((f) => f.kind);
  if (only !== undefined && !kinds.includes(only)) throw new Error(`--fault must be one of ${kinds.join(', ')}`);
  const dumpSlowerThanMs = values['dump-slower-than'] === undefined ? Infinity : Number(values['dump-slower-than']);
  if (!(dumpSlowerThanMs >= 0)) throw new Error('--dump-slower-than must be a number of milliseconds');
  const whole = only === undefined && topologies.length === (backend === 'local' ? 1 : TOPOLOGIES.length);
  return { app, synchronous, backend, trials, topologies, seed, only, dumpSlowerThanMs, whole };
}

async function run(): Promise<number> {
  const { app, synchronous, backend, trials, topologies, seed, only, dumpSlowerThanMs, whole } = options();
  if (app === 'postgres') return runPostgresChaos({ backend, trials, seed, synchronous, ...(only === undefined ? {} : { only }), dumpSlowerThanMs });
  const rng = seededRandom(seed);
  const results: Array<TrialResult & { topology: Topology }> = [];
  const failures: Failure[] = [];
  const started = Date.now();
  for (const [i, topology] of topologies.entries()) {
    // Split the trials between the topologies; the first takes the odd one.
    const count = Math.floor(trials / topologies.length) + (i < trials % topologies.length ? 1 : 0);
    const faults = FAULTS.filter((f) => f.applies(serverCount(backend, topology)) && (only === undefined || f.kind === only));
    const world = await ChaosWorld.start(await startDeployment(backend, topology));
    try {
      await world.settle(30000);
      for (let n = 0; n < count; n++) {
        const fault = faults[Math.floor(rng() * faults.length)]!;
        try {
          const result = await runTrial(world, fault, rng);
          results.push({ ...result, topology });
          const failover = result.failoverMs === null ? 'kept' : `${Math.round(result.failoverMs)} ms`;
          const problems = [...result.violations, ...result.lost.map((l) => `lost ${l}`), ...result.problems];
          const notes = result.notes.length ? ` (note: ${result.notes.join('; ')})` : '';
          console.error(`${backend} ${topology} #${n + 1}/${count} ${fault.kind}: ${failover}${notes}${problems.length ? ` PROBLEMS: ${problems.join('; ')}` : ''}`);
          if (problems.length || result.notes.length || (result.failoverMs ?? 0) > dumpSlowerThanMs) console.error(`  the nodes' logs: ${world.dumpLogs()}`);
        } catch (error) {
          failures.push({ topology, kind: fault.kind, error: (error as Error).message });
          console.error(`${backend} ${topology} #${n + 1}/${count} ${fault.kind}: FAILED ${(error as Error).message}`);
          console.error(`  the nodes' logs: ${world.dumpLogs()}`);
          // Give the world one long chance to settle before the next trial; if it cannot, stop.
          world.clearFaults();
          for (const node of world.nodes) if (!node.sidecar) await world.launch(node);
          await world.settle(120000);
        }
      }
    } finally {
      await world.stop();
      await Sidecar.killAll();
    }
  }
  const report = render(backend, seed, results, failures, (Date.now() - started) / 1000);
  console.log(report);
  console.error(`written to ${writeReport(`chaos-${today()}-${backend}.md`, report, whole)}`);
  const overlaps = results.reduce((sum, r) => sum + r.violations.length, 0);
  const lost = results.reduce((sum, r) => sum + r.lost.length, 0);
  const problems = results.reduce((sum, r) => sum + r.problems.length, 0);
  const late = results.filter((r) => r.recoveryMs > r.boundMs).length;
  return overlaps === 0 && lost === 0 && problems === 0 && late === 0 && failures.length === 0 ? 0 : 1;
}

function render(
  backend: BackendName,
  seed: number,
  results: ReadonlyArray<TrialResult & { topology: Topology }>,
  failures: readonly Failure[],
  seconds: number,
): string {
  const ms = (v: number | undefined) => (v === undefined ? '-' : `${Math.round(v)}`);
  const overlaps = results.flatMap((r) => r.violations);
  const lost = results.flatMap((r) => r.lost);
  const problems = results.flatMap((r) => r.problems);
  const stale = results.flatMap((r) => r.staleWindowsMs);
  const late = results.filter((r) => r.recoveryMs > r.boundMs);
  const lines = [
    `## Chaos: ${backend}`,
    '',
    `${results.length + failures.length} trials (seed ${seed}, ${Math.round(seconds)} s), three sidecars, on ${machine()}.`,
    '',
    '| | |',
    '|---|---|',
    `| trials | ${results.length + failures.length} |`,
    `| overlaps (must be 0) | ${overlaps.length} |`,
    `| lost promotions or demotes (must be 0) | ${lost.length} |`,
    `| failed fault checks: a switchover not answered 200, a check-failing primary handing over early (must be 0) | ${problems.length} |`,
    `| recoveries over the bound or failed (must be 0) | ${late.length + failures.length} |`,
    `| stale windows after a thaw, fenced by a larger token | ${stale.length} (max ${ms(Math.max(0, ...stale))} ms) |`,
    '',
    '| fault | topology | trials | new primary | failover p50 ms | p99 ms | max ms |',
    '|---|---|---:|---:|---:|---:|---:|',
  ];
  for (const fault of FAULTS) {
    for (const topology of TOPOLOGIES) {
      const mine = results.filter((r) => r.kind === fault.kind && r.topology === topology);
      const failed = failures.filter((f) => f.kind === fault.kind && f.topology === topology).length;
      if (mine.length + failed === 0) continue;
      const failovers = mine.flatMap((r) => (r.failoverMs === null ? [] : [r.failoverMs])).sort((a, b) => a - b);
      lines.push(
        `| ${fault.description} | ${topology} | ${mine.length + failed} | ${failovers.length} | ${ms(percentile(failovers, 50))} | ${ms(percentile(failovers, 99))} | ${ms(failovers.at(-1))} |`,
      );
    }
  }
  lines.push('', '"failover" is from the fault\'s start to the first promote hook of a new term; "new primary" counts the trials that had one.');
  const notes = results.flatMap((r) => r.notes);
  if (notes.length) lines.push('', `Notes (no failure: a member that took over in a fault lost its session before the world settled): ${notes.length}`, ...notes.map((n) => `- ${n}`));
  if (overlaps.length + lost.length + problems.length + failures.length) lines.push('', 'Problems:');
  for (const problem of [...overlaps, ...lost.map((l) => `lost ${l}`), ...problems, ...failures.map((f) => `${f.topology} ${f.kind}: ${f.error}`)]) {
    lines.push(`- ${problem}`);
  }
  return `${lines.join('\n')}\n`;
}

run().then(
  (code) => process.exit(code),
  (error: Error) => {
    console.error(`chaos: ${error.message}\n${USAGE}`);
    process.exit(2);
  },
);

/**
 * The benchmark: `npm run bench`. Per backend, on loopback, side by side with the peer tools on
 * the same servers in the same run: graceful handover, crash failover, footprint, HTTP, and the
 * load leaderd puts on the coordination service (without a --check, and with one whose position
 * stays or moves). Prints a report and writes it to bench/results/<date>.md; a run of one section
 * on every backend (BENCH_ONLY=load) to bench/results/<section>-<date>.md. BENCH_ROUNDS sets the
 * handover rounds (default 20); BENCH_ONLY picks sections.
 */
import { execFile, execFileSync } from 'node:child_process';
import { chmodSync, mkdtempSync, readdirSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import { cpus, tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import type autocannon from 'autocannon';
import { ConsulCluster, ensureConsulInstalled } from '../test/harness/consul.js';
import { EtcdServer, ensureEtcdInstalled } from '../test/harness/etcd.js';
import { Sidecar } from '../test/harness/sidecar.js';
import { aptInstall, runs } from '../test/harness/system.js';
import { ZookeeperServer, ensureZookeeperInstalled } from '../test/harness/zookeeper.js';
import { monotonicNow, sleep, until } from '../test/chaos/world.js';
import { Arrivals, consulLockContender, etcdctlContender, leaderdContender, type Contender } from './contenders.js';
import { machine, percentile, today, writeReport } from './report.js';

const execFileAsync = promisify(execFile);
const ROUNDS = Number(process.env.BENCH_ROUNDS ?? 20);
/** BENCH_ONLY=handover,crash,footprint,http,load runs some sections only (while working on one). */
const ONLY = new Set((process.env.BENCH_ONLY ?? 'handover,crash,footprint,http,load').split(','));
const ALL_BACKENDS = ['local', 'etcd', 'zookeeper', 'consul'] as const;
type BackendName = (typeof ALL_BACKENDS)[number];
/** BENCH_BACKENDS=etcd,consul measures some backends only. */
const BACKENDS = ALL_BACKENDS.filter((b) => (process.env.BENCH_BACKENDS ?? ALL_BACKENDS.join(',')).split(',').includes(b));

interface Servers {
  etcd: EtcdServer;
  zookeeper: ZookeeperServer;
  consul: ConsulCluster;
  consulBinary: string;
  localDir: string;
}

/** leaderd's flags for an election on a backend, everything else at its defaults (ttl 10 s). */
function leaderdArgs(servers: Servers, backend: BackendName, election: string): string[] {
  switch (backend) {
    case 'local':
      return ['--backend', 'local', '--local-dir', servers.localDir, '--election', election];
    case 'etcd':
      return ['--backend', 'etcd', '--etcd-endpoints', servers.etcd.clientUrl, '--election', election];
    case 'zookeeper':
      return ['--backend', 'zookeeper', '--zk-connect', servers.zookeeper.connectString, '--election', election];
    case 'consul':
      return ['--backend', 'consul', '--consul-addr', servers.consul.members[0]!.httpAddr, '--election', election];
  }
}

function within<T>(promise: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout;
  return Promise.race([
    promise.finally(() => clearTimeout(timer)),
    new Promise<never>((_, reject) => (timer = setTimeout(() => reject(new Error(`${what}: nothing within ${ms} ms`)), ms))),
  ]);
}

/** Waits for another tool's state (its candidacy), which has no event to wait on. */
async function polled(probe: () => Promise<boolean>, ms: number, what: string): Promise<void> {
  if (!(await until(probe, ms))) throw new Error(`${what}: not within ${ms} ms`);
}

interface Election {
  make(name: string): Promise<Contender>;
  /** Resolves once a contender that is not the leader is in the race (would take over). */
  standing(contender: Contender): Promise<void>;
}

/**
 * Leader, standby; `signal` to the leader; the time until the standby leads. Then a fresh standby
 * joins and the former standby is the leader of the next round.
 */
async function failovers(election: Election, signal: 'SIGTERM' | 'SIGKILL', rounds: number, timeoutMs: number): Promise<number[]> {
  let n = 0;
  const next = () => election.make(`c${++n}-${Date.now().toString(36)}`);
  const all: Contender[] = [];
  const samples: number[] = [];
  try {
    let leader = await next();
    all.push(leader);
    await within(leader.elected, 30000, 'first election');
    let standby = await next();
    all.push(standby);
    await election.standing(standby);
    for (let r = 0; r < rounds; r++) {
      const signalledAt = monotonicNow();
      leader.signal(signal);
      samples.push((await within(standby.elected, timeoutMs, `${standby.name} elected`)) - signalledAt);
      await leader.exited;
      leader = standby;
      standby = await next();
      all.push(standby);
      await election.standing(standby);
    }
  } finally {
    for (const c of all) c.signal('SIGKILL');
    await Promise.all(all.map((c) => c.exited));
  }
  return samples;
}

function leaderdElection(servers: Servers, backend: BackendName, arrivals: Arrivals, extra: readonly string[] = []): Election {
  const election = `bench-${backend}-${Date.now().toString(36)}`;
  return {
    make: (name) => leaderdContender(arrivals, name, [...leaderdArgs(servers, backend, election), ...extra]),
    standing: (c) => (c as Awaited<ReturnType<typeof leaderdContender>>).sidecar.waitForRole('replica', 30000).then(() => undefined),
  };
}

function etcdctlElection(servers: Servers): Election {
  const election = `bench-etcdctl-${Date.now().toString(36)}`;
  return {
    make: async (name) => etcdctlContender(servers.etcd.clientUrl, election, name),
    // Its candidacy is a key under the election's prefix, one per contender still in the race.
    standing: () => polled(async () => (await servers.etcd.keys(`${election}/`)).length >= 2, 10000, 'etcdctl candidacy'),
  };
}

function consulLockElection(servers: Servers, arrivals: Arrivals): Election {
  const prefix = `bench-consul-lock-${Date.now().toString(36)}`;
  const httpAddr = servers.consul.members[0]!.httpAddr;
  return {
    make: async (name) => consulLockContender(servers.consulBinary, httpAddr, arrivals, prefix, name),
    // It waits for the lock holding a session named after it.
    standing: (c) =>
      polled(
        async () => ((await (await fetch(`${httpAddr}/v1/session/list`)).json()) as Array<{ Name: string }>).some((s) => s.Name === c.name),
        10000,
        'consul lock session',
      ),
  };
}

interface Summary {
  n: number;
  p50: number;
  p99: number;
  max: number;
}

function summarize(samples: number[]): Summary {
  const sorted = [...samples].sort((a, b) => a - b);
  return { n: sorted.length, p50: percentile(sorted, 50)!, p99: percentile(sorted, 99)!, max: sorted.at(-1)! };
}

const ms = (v: number) => (v >= 10000 ? `${(v / 1000).toFixed(1)} s` : `${Math.round(v)} ms`);
const fmt = (s: Summary | null) => (s ? `${ms(s.p50)} / ${ms(s.p99)} / ${ms(s.max)} (n=${s.n})` : '-');
const verdict = (met: boolean) => (met ? 'met' : '**missed**');

/** CPU seconds a process has used, from /proc (utime + stime, in clock ticks of 10 ms). */
function cpuSeconds(pid: number): number {
  const fields = readFileSync(`/proc/${pid}/stat`, 'utf8').replace(/^.*\) /, '').split(' ');
  return (Number(fields[11]) + Number(fields[12])) / 100;
}

/** Resident memory, and the part of it that is the process's own (anonymous, not file-backed). */
function memoryMb(pid: number): { rss: number; private: number } {
  const rollup = readFileSync(`/proc/${pid}/smaps_rollup`, 'utf8');
  const kb = (field: string) => Number(new RegExp(`^${field}:\\s+(\\d+) kB`, 'm').exec(rollup)?.[1]);
  return { rss: kb('Rss') / 1024, private: kb('Anonymous') / 1024 };
}

interface Footprint {
  startMs: number;
  rssMb: number;
  privateMb: number;
  cpuPercent: number;
}

async function footprint(servers: Servers, backend: BackendName): Promise<Footprint> {
  const spawnedAt = Date.now();
  const sidecar = await Sidecar.start(`bench-fp-${backend}`, leaderdArgs(servers, backend, `bench-fp-${Date.now().toString(36)}`));
  try {
    const decided = await sidecar.waitForLog((l) => l.msg === 'role: primary', 30000, 'first role');
    const startMs = Date.parse(decided.time as string) - spawnedAt;
    await sleep(5000);
    const cpuBefore = cpuSeconds(sidecar.pid);
    const idleSeconds = 30;
    await sleep(idleSeconds * 1000);
    const cpuPercent = ((cpuSeconds(sidecar.pid) - cpuBefore) / idleSeconds) * 100;
    const memory = memoryMb(sidecar.pid);
    return { startMs, rssMb: memory.rss, privateMb: memory.private, cpuPercent };
  } finally {
    await sidecar.stop();
  }
}

interface HttpResult {
  pinned: boolean;
  requestsPerSecond: number;
  p99Ms: number;
  errors: number;
  leaderChanges: number;
}

/**
 * autocannon (10 connections, 10 s) as a process of its own. The target is "on one core", so the
 * sidecar under load gets core 0 and the load generator core 1; everything else shares them.
 */
async function loadGenerator(sidecar: Sidecar, path: string): Promise<{ pinned: boolean; result: autocannon.Result }> {
  const pinned = cpus().length >= 2;
  if (pinned) execFileSync('taskset', ['--all-tasks', '--cpu-list', '--pid', '0', String(sidecar.pid)], { stdio: 'ignore' });
  const cli = fileURLToPath(new URL('../node_modules/autocannon/autocannon.js', import.meta.url));
  const argv = [process.execPath, cli, '--connections', '10', '--duration', '10', '--json', `${sidecar.url}${path}`];
  const { stdout } = await execFileAsync(pinned ? 'taskset' : argv[0]!, pinned ? ['--cpu-list', '1', ...argv] : argv.slice(1), { maxBuffer: 1 << 24 });
  return { pinned, result: JSON.parse(stdout) as autocannon.Result };
}

/** GET /role on one of three etcd sidecars, while the primary is made to resign every second. */
async function httpLoad(servers: Servers): Promise<HttpResult> {
  const election = `bench-http-${Date.now().toString(36)}`;
  const token = 'bench-admin-token';
  const group = await Promise.all(
    ['h1', 'h2', 'h3'].map((id) => Sidecar.start(`bench-${id}`, [...leaderdArgs(servers, 'etcd', election), '--admin-token', token, '--ttl', '2'])),
  );
  try {
    await Promise.any(group.map((s) => s.waitForRole('primary', 30000)));
    let running = true;
    let leaderChanges = 0;
    const churn = (async () => {
      while (running) {
        for (const s of group) {
          const role = (await s.role()).role;
          if (role === 'primary') {
            const answer = await s.fetch('/resign', { method: 'POST', headers: { authorization: `Bearer ${token}` } });
            if (answer.ok) leaderChanges++;
          }
        }
        await sleep(1000);
      }
    })();
    const { pinned, result } = await loadGenerator(group[0]!, '/role');
    running = false;
    await churn;
    return {
      pinned,
      requestsPerSecond: result.requests.average,
      p99Ms: result.latency.p99,
      errors: result.errors + result.timeouts + result.non2xx,
      leaderChanges,
    };
  } finally {
    await Promise.all(group.map((s) => s.stop()));
  }
}

/** Requests the coordination service has served so far, by its own count. */
async function served(servers: Servers, backend: Exclude<BackendName, 'local'>): Promise<number> {
  const sum = (text: string, pattern: RegExp) =>
    text
      .split('\n')
      .filter((line) => pattern.test(line))
      .reduce((total, line) => total + Number(line.split(' ').at(-1)), 0);
  switch (backend) {
    case 'etcd':
      // Every gRPC message a client sent: unary requests, and each message on a stream.
      return sum(await (await fetch(`${servers.etcd.clientUrl}/metrics`)).text(), /^grpc_server_msg_received_total\{/);
    case 'zookeeper':
      return Number(/zk_packets_received\s+(\d+)/.exec(await servers.zookeeper.fourLetter('mntr'))?.[1]);
    case 'consul': {
      const url = `${servers.consul.members[0]!.httpAddr}/v1/agent/metrics?format=prometheus`;
      // Completed HTTP requests by endpoint, leaving out this scrape itself.
      return sum(await (await fetch(url)).text(), /^consul_http_(?!GET_v1_agent_metrics)\w+_count /);
    }
  }
}

/**
 * The operations of leaderd's core (src/elector.ts); the adapters' own operations (`put`, `get`,
 * `readCluster`, ...) are requests made inside one of these, or on their own (watches, listings).
 */
const CORE_OPERATIONS = new Set(['open', 'renew', 'campaign', 'withdraw', 'close', 'publish member', 'publish position', 'read cluster']);

/** leaderd's own count of its requests to the service (leaderd_backend_request_duration_seconds_count), by operation, summed over `group`. */
async function requestsByOperation(group: readonly Sidecar[]): Promise<Map<string, number>> {
  const total = new Map<string, number>();
  const texts = await Promise.all(group.map(async (s) => (await s.fetch('/metrics')).text()));
  for (const text of texts) {
    for (const line of text.split('\n')) {
      const sample = /^leaderd_backend_request_duration_seconds_count\{([^}]*)\} (\S+)$/.exec(line);
      const operation = sample && /(?:^|,)operation="([^"]*)"/.exec(sample[1]!)?.[1];
      if (!sample || operation === undefined || operation === null) continue;
      total.set(operation, (total.get(operation) ?? 0) + Number(sample[2]));
    }
  }
  return total;
}

function difference(after: Map<string, number>, before: Map<string, number>): Map<string, number> {
  return new Map([...after].map(([operation, count]) => [operation, count - (before.get(operation) ?? 0)]));
}

const coreTotal = (counts: Map<string, number>) => [...counts].filter(([op]) => CORE_OPERATIONS.has(op)).reduce((sum, [, n]) => sum + n, 0);

interface LoadAtSize {
  /** Requests per second per sidecar, idle, by the server's own count; null on local (no server). */
  idleServed: number | null;
  /** Requests per second per sidecar, idle, by leaderd's own count, by operation. */
  idleByOperation: Map<string, number>;
  /** Requests caused by one leader change: the server's count, or on local leaderd's (core operations). */
  perChange: number;
  /** Check runs per second per sidecar, idle. */
  checkRuns: number;
  /** leaderd's own count of the requests the surviving candidates made for one leader change, idle traffic included, by operation. */
  changeByOperation: Map<string, number>;
  /** From the SIGTERM until every survivor named the new leader. */
  changeSeconds: number;
}

type Load = Map<number, LoadAtSize>;

async function checkRuns(group: readonly Sidecar[]): Promise<number> {
  const texts = await Promise.all(group.map(async (s) => (await s.fetch('/metrics')).text()));
  return texts.reduce((sum, text) => sum + Number(/^leaderd_check_runs_total(?:\{[^}]*\})? (\S+)$/m.exec(text)?.[1] ?? 0), 0);
}

async function backendLoad(servers: Servers, backend: BackendName, sizes: number[], extra: readonly string[] = []): Promise<Load> {
  const load: Load = new Map();
  const count = backend === 'local' ? null : () => served(servers, backend);
  for (const size of sizes) {
    const election = `bench-load-${size}-${Date.now().toString(36)}`;
    const group: Sidecar[] = [];
    try {
      for (let i = 0; i < size; i += 10) {
        group.push(
          ...(await Promise.all(Array.from({ length: Math.min(10, size - i) }, (_, j) => Sidecar.start(`bench-l${i + j}`, [...leaderdArgs(servers, backend, election), ...extra])))),
        );
      }
      // Settled: every member names the same leader (not `notLeader`), in the same term, and it says it is primary.
      const settledOn = async (members: Sidecar[], notLeader?: string): Promise<{ id: string; fencingToken: number }> => {
        let last = '';
        for (const deadline = monotonicNow() + 60000; monotonicNow() < deadline; await sleep(100)) {
          const roles = await Promise.all(members.map((s) => s.role()));
          const leader = roles[0]!.leader;
          const token = roles[0]!.fencingToken;
          last = JSON.stringify(roles.map((r) => [r.id, r.role, r.leader?.id, r.fencingToken]));
          if (!leader || leader.id === notLeader || token === null) continue;
          if (!roles.every((r) => r.leader?.id === leader.id && r.fencingToken === token)) continue;
          if (roles.find((r) => r.id === leader.id)?.role === 'primary') return { id: leader.id, fencingToken: token };
        }
        throw new Error(`${backend}, ${size} sidecars: no leader every member names within 60 s (${last})`);
      };
      const first = await settledOn(group);
      const leader = first.id;
      // Let the start settle: every member's first records written and read, a check run or two.
      await sleep(5000);
      // Idle: every sidecar renewing, watching, checking and reading the records, nothing changing.
      const idleSeconds = 20;
      const [before, opsBefore, runsBefore] = await Promise.all([count?.() ?? 0, requestsByOperation(group), checkRuns(group)]);
      const idleStart = monotonicNow();
      await sleep(idleSeconds * 1000);
      const [after, opsAfter, runsAfter] = await Promise.all([count?.() ?? 0, requestsByOperation(group), checkRuns(group)]);
      const idleElapsed = (monotonicNow() - idleStart) / 1000;
      // An idle election keeps its leader and term; one that did not was not idle.
      const still = await settledOn(group);
      if (still.id !== leader || still.fencingToken !== first.fencingToken) throw new Error(`${backend}, ${size} sidecars${extra.length ? `, ${extra.join(' ')}` : ''}: the leader changed while idle (${leader} → ${still.id})`);
      const idleOps = difference(opsAfter, opsBefore);
      const idleRate = count ? (after - before) / idleElapsed : coreTotal(idleOps) / idleElapsed;
      // One leader change: the primary stops gracefully; every other sidecar learns the new leader.
      const old = group.find((s) => s.id === leader)!;
      const rest = group.filter((s) => s !== old);
      const [changeStart, opsChangeStart] = await Promise.all([count?.() ?? 0, requestsByOperation(rest)]);
      const startedAt = monotonicNow();
      await old.stop();
      await settledOn(rest, leader);
      const seconds = (monotonicNow() - startedAt) / 1000;
      // On local there is no server: the survivors' own count (the old primary's release is not in it).
      const [servedAtEnd, opsChangeEnd] = await Promise.all([count?.() ?? 0, requestsByOperation(rest)]);
      const changeOps = difference(opsChangeEnd, opsChangeStart);
      const changeEnd = count ? servedAtEnd : coreTotal(changeOps);
      const caused = changeEnd - (count ? changeStart : 0) - idleRate * (count ? 1 : (size - 1) / size) * seconds;
      load.set(size, {
        idleServed: count ? idleRate / size : null,
        idleByOperation: new Map([...idleOps].map(([op, n]) => [op, n / idleElapsed / size])),
        perChange: Math.max(0, caused),
        checkRuns: (runsAfter - runsBefore) / idleElapsed / size,
        changeByOperation: changeOps,
        changeSeconds: seconds,
      });
    } catch (error) {
      // What the sidecars said, for the post-mortem.
      const file = writeReport(`load-failure-${backend}-${size}.log`, group.map((s) => s.logs.map((l) => `${s.id} ${JSON.stringify(l)}`).join('\n')).join('\n'), false);
      const cause = (error as Error & { cause?: unknown }).cause;
      throw new Error(`${(error as Error).message}${cause ? ` (${String(cause)})` : ''} (sidecar logs: ${file})`, { cause: error });
    } finally {
      await Promise.all(group.map((s) => s.stop()));
    }
  }
  return load;
}

async function startServers(): Promise<Servers> {
  ensureEtcdInstalled();
  ensureZookeeperInstalled();
  if (!runs('etcdctl', ['version'])) aptInstall('etcd-client');
  const consulBinary = ensureConsulInstalled();
  // leaderd's default ttl is 10 s: allow ZooKeeper sessions that long (the harness's default caps them at 4 s).
  const [etcd, zookeeper, consul] = await Promise.all([EtcdServer.start(), ZookeeperServer.start({ maxSessionTimeoutMs: 20000 }), ConsulCluster.start(1)]);
  await raiseConsulConnectionLimit(consul);
  return { etcd, zookeeper, consul, consulBinary, localDir: mkdtempSync(join(tmpdir(), 'leaderd-bench-local-')) };
}

/**
 * The load section runs 50 sidecars against one Consul agent, all from 127.0.0.1. Each holds
 * about 4 connections to it (its lock's blocking query, and its pool for renewals, checks and the
 * member records), so together they reach Consul's default limit of 200 connections per client
 * address (`limits.http_max_conns_per_client`), and Consul closes every connection beyond it, the
 * benchmark's own count included. In a deployment each host's sidecar talks to its own agent.
 * The harness writes the server's config file; the limit is raised in it and reloaded.
 */
async function raiseConsulConnectionLimit(consul: ConsulCluster): Promise<void> {
  const file = join((consul as unknown as { dir: string }).dir, 'config.json');
  const config = JSON.parse(readFileSync(file, 'utf8')) as Record<string, unknown>;
  writeFileSync(file, JSON.stringify({ ...config, limits: { http_max_conns_per_client: 1000 } }));
  await Promise.all(
    consul.members.map(async (m) => {
      const answer = await fetch(`${m.httpAddr}/v1/agent/reload`, { method: 'PUT' });
      if (!answer.ok) throw new Error(`consul reload: ${answer.status} ${await answer.text()}`);
    }),
  );
}

type Out = (line?: string) => void;

/** leaderd's default ttl, which the benchmark keeps unless a row says otherwise. */
const TTL_MS = 10000;
/** leaderd's default Consul check ttl. */
const CONSUL_CHECK_TTL_MS = 3000;

async function handoverSection(servers: Servers, arrivals: Arrivals, out: Out): Promise<void> {
  out(`## Graceful handover: SIGTERM to the primary → the next primary's promote hook starts`);
  out();
  out('p50 / p99 / max. Target: p99 ≤ 50 ms, and no slower than the peer tool on the same server.');
  out();
  out('| backend | leaderd | peer tool | peer | target |');
  out('|---|---|---|---|---|');
  for (const backend of BACKENDS) {
    const ours = summarize(await failovers(leaderdElection(servers, backend, arrivals), 'SIGTERM', ROUNDS, TTL_MS * 3));
    const peer =
      backend === 'etcd'
        ? { tool: '`etcdctl elect`', s: summarize(await failovers(etcdctlElection(servers), 'SIGTERM', ROUNDS, 120000)) }
        : backend === 'consul'
          ? { tool: '`consul lock`', s: summarize(await failovers(consulLockElection(servers, arrivals), 'SIGTERM', ROUNDS, 120000)) }
          : null;
    const met = ours.p99 <= 50 && (!peer || ours.p99 <= peer.s.p99);
    out(`| ${backend} | ${fmt(ours)} | ${peer?.tool ?? '-'} | ${fmt(peer?.s ?? null)} | ${verdict(met)} |`);
  }
  out();
}

async function crashSection(servers: Servers, arrivals: Arrivals, out: Out): Promise<void> {
  out("## Crash failover: kill -9 of the primary → the next primary's promote hook starts");
  out();
  out('Peers at their defaults (`etcdctl elect`: 60 s lease; `consul lock`: 15 s session TTL and 15 s lock-delay). Target: ≤ ttl + 1 s (etcd, ZooKeeper), ≤ check ttl + 1 s (Consul).');
  out();
  out('| backend | leaderd | bound | peer tool | peer | target |');
  out('|---|---|---|---|---|---|');
  const [etcdctlCrash, consulLockCrash] = await Promise.all([
    BACKENDS.includes('etcd') ? failovers(etcdctlElection(servers), 'SIGKILL', 1, 120000) : [],
    BACKENDS.includes('consul') ? failovers(consulLockElection(servers, arrivals), 'SIGKILL', 1, 120000) : [],
  ]);
  const rows: Array<{ backend: BackendName; label: string; extra: string[] }> = BACKENDS.map((backend) => ({ backend, label: backend, extra: [] }));
  // leaderd's Consul lock-delay (the renew deadline + 0.25 s) is a safety margin that crash failover pays.
  if (BACKENDS.includes('consul')) rows.push({ backend: 'consul', label: 'consul, `--consul-lock-delay 0`', extra: ['--consul-lock-delay', '0'] });
  for (const { backend, label, extra } of rows) {
    const ours = summarize(await failovers(leaderdElection(servers, backend, arrivals, extra), 'SIGKILL', 3, TTL_MS * 3));
    const bound = backend === 'consul' ? CONSUL_CHECK_TTL_MS + 1000 : TTL_MS + 1000;
    const peer =
      backend === 'etcd' ? ['`etcdctl elect`', fmt(summarize(etcdctlCrash))] : backend === 'consul' ? ['`consul lock`', fmt(summarize(consulLockCrash))] : ['-', '-'];
    out(`| ${label} | ${fmt(ours)} | ${ms(bound)} | ${peer[0]} | ${peer[1]} | ${verdict(ours.max <= bound)} |`);
  }
  out();
}

async function footprintSection(servers: Servers, _arrivals: Arrivals, out: Out): Promise<void> {
  out('## Footprint: one idle sidecar (primary, ttl 10 s)');
  out();
  out("Targets: RSS ≤ 70 MB, CPU ≤ 1 % of a core (over 30 s), start to first decided role ≤ 1 s. Private memory is the part of RSS that is this process's own; the rest is mostly the node binary's code, shared by every Node.js process on the host.");
  out();
  out('| backend | RSS | private | CPU | start → role | target |');
  out('|---|---|---|---|---|---|');
  for (const backend of BACKENDS) {
    // One at a time: a start time measured while others start measures the machine.
    const f = await footprint(servers, backend);
    const met = f.rssMb <= 70 && f.cpuPercent <= 1 && f.startMs <= 1000;
    out(`| ${backend} | ${f.rssMb.toFixed(1)} MB | ${f.privateMb.toFixed(1)} MB | ${f.cpuPercent.toFixed(2)} % | ${ms(f.startMs)} | ${verdict(met)} |`);
  }
  out();
}

async function httpSection(servers: Servers, _arrivals: Arrivals, out: Out): Promise<void> {
  out('## HTTP: GET /role under load (autocannon, 10 connections, 10 s)');
  out();
  const http = await httpLoad(servers);
  out(
    `On one of three etcd sidecars (ttl 2 s) while the primary is made to resign every second; ${http.pinned ? 'the sidecar pinned to one core and autocannon to the other' : 'not pinned: this machine has one core'}. Target: ≥ 5,000 req/s on one core, p99 ≤ 5 ms.`,
  );
  out();
  out('| req/s | p99 | errors | leader changes during the run | target |');
  out('|---|---|---|---|---|');
  out(`| ${Math.round(http.requestsPerSecond)} | ${http.p99Ms} ms | ${http.errors} | ${http.leaderChanges} | ${verdict(http.requestsPerSecond >= 5000 && http.p99Ms <= 5)} |`);
  out();
}

/** The checks the load is measured with: none (the default), and two tiny scripts. */
function checkVariants(): Array<{ label: string; extra: string[] }> {
  const folder = mkdtempSync(join(tmpdir(), 'leaderd-bench-check-'));
  const script = (name: string, body: string) => {
    const file = join(folder, name);
    writeFileSync(file, `#!/bin/sh\n${body}\n`);
    chmodSync(file, 0o755);
    return file;
  };
  // A position that never moves: after the first write, nothing in a member record changes.
  const constant = script('constant.sh', `echo '{"position": 1}'`);
  // Every member caught up with a position that moves on every run (milliseconds since the epoch).
  const moving = script('moving.sh', `echo "{\\"position\\": $(date +%s%3N)}"`);
  return [
    { label: 'no check', extra: [] },
    { label: 'check, constant position', extra: ['--check', constant] },
    { label: 'check, moving position', extra: ['--check', moving] },
  ];
}

const rate = (v: number) => (v >= 100 ? v.toFixed(0) : v >= 10 ? v.toFixed(1) : v.toFixed(2));

async function loadSection(servers: Servers, _arrivals: Arrivals, out: Out): Promise<void> {
  const sizes = [10, 50];
  const variants = checkVariants();
  out('## Load on the coordination service');
  out();
  out(
    "Counted by the server itself: etcd's gRPC messages received, ZooKeeper's packets received (`mntr`), Consul's completed HTTP requests; local has no server, so its numbers are leaderd's own count of its requests (`leaderd_backend_request_duration_seconds_count`, the core's operations). Idle: requests per second per sidecar, over 20 s, 10 and 50 sidecars in one election, ttl 10 s, 5 s after every member named the leader. A leader change: the primary stops gracefully, until every other candidate names the new leader; idle traffic subtracted. Each with no `--check`, with a check that always prints `{\"position\": 1}`, and with one whose position moves on every run (every member caught up: the time in ms). The check runs every check interval: a third of the lease, 3.3 s (Consul: a third of the check ttl, 1 s). All sidecars share one Consul agent, whose limit of connections per client address is raised from 200 to 1000 for this (50 sidecars hold about 200).",
  );
  out();
  out('| backend | check | idle req/s per sidecar, 10 sidecars | 50 sidecars | requests per leader change, 10 candidates | 50 candidates | check runs/s per sidecar |');
  out('|---|---|---|---|---|---|---|');
  const byOperation: Array<{ backend: BackendName; loads: Load[] }> = [];
  for (const backend of BACKENDS) {
    const loads: Load[] = [];
    for (const { label, extra } of variants) {
      const load = await backendLoad(servers, backend, sizes, extra);
      loads.push(load);
      const idle = (size: number) => {
        const at = load.get(size)!;
        return at.idleServed === null ? `${rate(coreTotal(at.idleByOperation))} †` : rate(at.idleServed);
      };
      const change = (size: number) => `${Math.round(load.get(size)!.perChange)}${backend === 'local' ? ' †' : ''}`;
      out(`| ${backend} | ${label} | ${idle(10)} | ${idle(50)} | ${change(10)} | ${change(50)} | ${rate(load.get(10)!.checkRuns)} |`);
    }
    byOperation.push({ backend, loads });
    // Progress, and the raw counts should a later backend fail.
    console.error(JSON.stringify({ backend, loads: loads.map((l) => Object.fromEntries([...l].map(([n, at]) => [n, { ...at, idleByOperation: Object.fromEntries(at.idleByOperation), changeByOperation: Object.fromEntries(at.changeByOperation) }]))) }));
  }
  out();
  out("† leaderd's own count (local has no server to count).");
  out();
  for (const size of sizes) {
    out(`### By operation: leaderd's own count, idle, ${size} sidecars`);
    out();
    out(
      "Requests per second per sidecar, from `leaderd_backend_request_duration_seconds_count` on every sidecar's `/metrics`. The core's operations (`renew`, `read cluster`, `publish member`, `publish position`, ...) contain the adapter's own requests (`range records`, `put`, `get`, `readCluster`, `publishMember`, `read`, `write`, ...), which are listed too: one core operation can be several requests to the service.",
    );
    out();
    out(`| backend | operation | ${variants.map((v) => v.label).join(' | ')} |`);
    out(`|---|---|${variants.map(() => '---|').join('')}`);
    for (const { backend, loads } of byOperation) {
      const operations = [...new Set(loads.flatMap((l) => [...l.get(size)!.idleByOperation].filter(([, n]) => n > 0).map(([op]) => op)))].sort(
        (a, b) => Number(CORE_OPERATIONS.has(b)) - Number(CORE_OPERATIONS.has(a)) || a.localeCompare(b),
      );
      for (const op of operations) {
        const cells = loads.map((l) => rate(l.get(size)!.idleByOperation.get(op) ?? 0));
        out(`| ${backend} | ${CORE_OPERATIONS.has(op) ? `**${op}**` : op} | ${cells.join(' | ')} |`);
      }
      const totals = loads.map((l) => `**${rate(coreTotal(l.get(size)!.idleByOperation))}**`);
      out(`| ${backend} | all core operations | ${totals.join(' | ')} |`);
    }
    out();
  }
  out("### By operation: one leader change, leaderd's own count");
  out();
  out(
    "Requests the surviving candidates made from the primary's SIGTERM until every one of them named the new leader (idle traffic not subtracted; the old primary's own release is not in it), summed over them, by operation: without a check / constant position / moving position.",
  );
  out();
  out(`| backend | operation | ${sizes.map((n) => `${n} candidates`).join(' | ')} |`);
  out(`|---|---|${sizes.map(() => '---|').join('')}`);
  for (const { backend, loads } of byOperation) {
    const operations = [...new Set(loads.flatMap((l) => sizes.flatMap((n) => [...l.get(n)!.changeByOperation].filter(([, c]) => c > 0).map(([op]) => op))))].sort(
      (a, b) => Number(CORE_OPERATIONS.has(b)) - Number(CORE_OPERATIONS.has(a)) || a.localeCompare(b),
    );
    for (const op of operations) {
      const cells = sizes.map((n) => loads.map((l) => String(l.get(n)!.changeByOperation.get(op) ?? 0)).join(' / '));
      out(`| ${backend} | ${CORE_OPERATIONS.has(op) ? `**${op}**` : op} | ${cells.join(' | ')} |`);
    }
    const took = sizes.map((n) => loads.map((l) => `${l.get(n)!.changeSeconds.toFixed(1)} s`).join(' / '));
    out(`| ${backend} | time to settle | ${took.join(' | ')} |`);
  }
  out();
}

const SECTIONS = { handover: handoverSection, crash: crashSection, footprint: footprintSection, http: httpSection, load: loadSection };

async function main(): Promise<void> {
  const unknown = [...ONLY].filter((name) => !(name in SECTIONS));
  if (unknown.length) throw new Error(`BENCH_ONLY: no section ${unknown.join(', ')}; the sections are ${Object.keys(SECTIONS).join(', ')}`);
  const unknownBackends = (process.env.BENCH_BACKENDS ?? '').split(',').filter((b) => b && !(ALL_BACKENDS as readonly string[]).includes(b));
  if (unknownBackends.length) throw new Error(`BENCH_BACKENDS: no backend ${unknownBackends.join(', ')}; the backends are ${ALL_BACKENDS.join(', ')}`);
  const builtBefore = distFingerprint();
  const servers = await startServers();
  const arrivals = await Arrivals.start();
  const lines: string[] = [];
  const out: Out = (line = '') => {
    lines.push(line);
    console.log(line);
  };
  try {
    out(`# leaderd benchmark, ${today()}`);
    out();
    out(`Machine: ${machine()}. Servers on loopback: etcd ${version('etcd')}, ZooKeeper 3.8 (Debian), Consul 1.8.7 (one server). leaderd at its defaults (ttl 10 s; Consul check ttl 3 s) unless a row says otherwise.`);
    out();
    for (const [name, section] of Object.entries(SECTIONS)) if (ONLY.has(name)) await section(servers, arrivals, out);
    // The sidecars run dist/: one rebuilt during the run measured two versions of leaderd.
    if (distFingerprint() !== builtBefore) out('**dist/ was rebuilt during this run: some rows measured another build. Run it again.**');
  } finally {
    await arrivals.close();
    await Sidecar.killAll();
    await Promise.all([servers.etcd.stop(), servers.zookeeper.stop(), servers.consul.stop()]);
  }
  const everyBackend = BACKENDS.length === ALL_BACKENDS.length;
  const whole = ONLY.size === Object.keys(SECTIONS).length && everyBackend;
  // One section on every backend is that section's whole result: bench/results/<section>-<date>.md.
  const section = ONLY.size === 1 && !whole ? [...ONLY][0]! : null;
  const name = section ? `${section}-${today()}.md` : `${today()}.md`;
  console.error(`written to ${writeReport(name, `${lines.join('\n')}\n`, whole || (section !== null && everyBackend))}`);
}

/** The newest modification time and the total size of the files under dist/, which the sidecars run. */
function distFingerprint(): string {
  const root = fileURLToPath(new URL('../dist/', import.meta.url));
  let newest = 0;
  let bytes = 0;
  for (const entry of readdirSync(root, { recursive: true, withFileTypes: true })) {
    if (!entry.isFile()) continue;
    const stat = statSync(join(entry.parentPath, entry.name));
    newest = Math.max(newest, stat.mtimeMs);
    bytes += stat.size;
  }
  return `${newest}/${bytes}`;
}

function version(binary: string): string {
  try {
    return /etcd Version: (\S+)/.exec(execFileSync(binary, ['--version'], { encoding: 'utf8' }))?.[1] ?? '?';
  } catch {
    return '?';
  }
}

main().then(
  () => process.exit(0),
  (error: Error) => {
    console.error(`bench: ${error.stack ?? error.message}`);
    process.exit(1);
  },
);

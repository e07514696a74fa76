/**
 * The benchmark: `npm run bench`. Per backend, on loopback, side by side with the peer tools on
 * the same servers in the same run: graceful handover, crash failover, footprint, HTTP, and the
 * load leaderd puts on the coordination service. Prints a report and writes it to
 * bench/results/<date>.md. BENCH_ROUNDS sets the handover rounds (default 20); BENCH_ONLY picks
 * sections.
 */
import { execFile, execFileSync } from 'node:child_process';
import { mkdtempSync, readFileSync } from 'node:fs';
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

interface Load {
  idlePerSidecar: number;
  /** Requests caused by one leader change, by candidate count. */
  perChange: Map<number, number>;
}

async function backendLoad(servers: Servers, backend: Exclude<BackendName, 'local'>, sizes: number[]): Promise<Load> {
  const load: Load = { idlePerSidecar: 0, perChange: new Map() };
  for (const size of sizes) {
    const election = `bench-load-${size}-${Date.now().toString(36)}`;
    const group: Sidecar[] = [];
    try {
      for (let i = 0; i < size; i += 10) {
        group.push(...(await Promise.all(Array.from({ length: Math.min(10, size - i) }, (_, j) => Sidecar.start(`bench-l${i + j}`, leaderdArgs(servers, backend, election))))));
      }
      const settledOn = async (members: Sidecar[], notLeader?: string) => {
        const primary = await Promise.any(members.map((s) => s.waitForState((r) => r.role === 'primary' && r.id !== notLeader, 60000, 'primary')));
        await Promise.all(members.map((s) => s.waitForState((r) => r.leader?.id === primary.id, 60000, `following ${primary.id}`)));
        return primary.id;
      };
      const leader = await settledOn(group);
      // Idle: every sidecar renewing and watching, nothing changing.
      const idleSeconds = 20;
      const before = await served(servers, backend);
      await sleep(idleSeconds * 1000);
      const idleRate = (await served(servers, backend)) - before;
      if (size === sizes[0]) load.idlePerSidecar = idleRate / idleSeconds / size;
      // One leader change: the primary stops gracefully; every other sidecar learns the new leader.
      const changeStart = await served(servers, backend);
      const startedAt = monotonicNow();
      const old = group.find((s) => s.id === leader)!;
      await old.stop();
      await settledOn(group.filter((s) => s !== old), leader);
      const seconds = (monotonicNow() - startedAt) / 1000;
      const caused = (await served(servers, backend)) - changeStart - (idleRate / idleSeconds) * seconds;
      load.perChange.set(size, Math.max(0, caused));
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
  return { etcd, zookeeper, consul, consulBinary, localDir: mkdtempSync(join(tmpdir(), 'leaderd-bench-local-')) };
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

async function loadSection(servers: Servers, _arrivals: Arrivals, out: Out): Promise<void> {
  out('## Load on the coordination service');
  out();
  out("Counted by the server itself: etcd's gRPC messages received, ZooKeeper's packets received (`mntr`), Consul's completed HTTP requests. Idle: per sidecar, 10 sidecars, ttl 10 s. A leader change: the primary stops gracefully, until every other candidate names the new leader; idle traffic subtracted.");
  out();
  out('| backend | idle req/s per sidecar | requests per leader change, 10 candidates | 50 candidates |');
  out('|---|---|---|---|');
  for (const backend of BACKENDS) {
    if (backend === 'local') continue;
    const load = await backendLoad(servers, backend, [10, 50]);
    out(`| ${backend} | ${load.idlePerSidecar.toFixed(2)} | ${Math.round(load.perChange.get(10)!)} | ${Math.round(load.perChange.get(50)!)} |`);
  }
  out();
}

const SECTIONS = { handover: handoverSection, crash: crashSection, footprint: footprintSection, http: httpSection, load: loadSection };

async function main(): Promise<void> {
  const unknown = [...ONLY].filter((name) => !(name in SECTIONS));
  if (unknown.length) throw new Error(`BENCH_ONLY: no section ${unknown.join(', ')}; the sections are ${Object.keys(SECTIONS).join(', ')}`);
  const unknownBackends = (process.env.BENCH_BACKENDS ?? '').split(',').filter((b) => b && !(ALL_BACKENDS as readonly string[]).includes(b));
  if (unknownBackends.length) throw new Error(`BENCH_BACKENDS: no backend ${unknownBackends.join(', ')}; the backends are ${ALL_BACKENDS.join(', ')}`);
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
  } finally {
    await arrivals.close();
    await Sidecar.killAll();
    await Promise.all([servers.etcd.stop(), servers.zookeeper.stop(), servers.consul.stop()]);
  }
  const whole = ONLY.size === Object.keys(SECTIONS).length && BACKENDS.length === ALL_BACKENDS.length;
  console.error(`written to ${writeReport(`${today()}.md`, `${lines.join('\n')}\n`, whole)}`);
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

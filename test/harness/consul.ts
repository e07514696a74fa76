/**
 * Real Consul agents for the tests: Debian bullseye's consul 1.8.7, unpacked into .cache/consul/
 * by scripts/install-consul.sh (bookworm has no consul package). Everything listens on free
 * loopback ports, so the suite never collides with another Consul on the machine (no 8500).
 */
import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import { existsSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { freePort } from './ports.js';
import { runs } from './system.js';

const INSTALL_SCRIPT = join('scripts', 'install-consul.sh');
const BINARY = join('.cache', 'consul', 'bin', 'consul');

// The repo root: two levels above this file, or the working directory when the harness was
// compiled somewhere else (vitest and npm scripts run from the root).
function repoRoot(): string {
  const here = fileURLToPath(new URL('../../', import.meta.url));
  return existsSync(join(here, INSTALL_SCRIPT)) ? here : process.cwd();
}

/** Runs scripts/install-consul.sh when the project-local binary is missing; returns its path. */
export function ensureConsulInstalled(): string {
  const root = repoRoot();
  const binary = join(root, BINARY);
  if (runs(binary, ['version'])) return binary;
  // The script logs to stderr and prints the binary's path as its last stdout line.
  const out = execFileSync(join(root, INSTALL_SCRIPT), { stdio: ['ignore', 'pipe', 'inherit'], encoding: 'utf8' });
  const installed = out.trim().split('\n').pop() ?? '';
  if (!runs(installed, ['version'])) throw new Error(`install-consul.sh did not provide a working consul (${installed})`);
  return installed;
}


// Consul 1.8 phones home for update checks unless told not to; -1 disables DNS and gRPC.
const COMMON_ARGS = ['-bind', '127.0.0.1', '-client', '127.0.0.1', '-advertise', '127.0.0.1', '-dns-port', '-1', '-grpc-port', '-1', '-log-level', 'info', '-hcl', 'disable_update_check = true'];

interface Ports {
  http: number;
  serfLan: number;
  serfWan: number;
  server: number;
}

async function freePorts(): Promise<Ports> {
  return { http: await freePort(), serfLan: await freePort(), serfWan: await freePort(), server: await freePort() };
}

function portArgs(p: Ports): string[] {
  return ['-http-port', `${p.http}`, '-serf-lan-port', `${p.serfLan}`, '-serf-wan-port', `${p.serfWan}`, '-server-port', `${p.server}`];
}

// Agents still running when the test process exits (a crash, an unhandled error) are killed, so
// no orphaned consul keeps its ports on a machine other people test on.
const live = new Set<ChildProcess>();
process.on('exit', () => {
  for (const child of live) child.kill('SIGKILL');
});

/** One consul process that can be stopped and started again with the same arguments. */
class ConsulProcess {
  private child: ChildProcess | null = null;
  private exited: Promise<void> = Promise.resolve();
  private log = '';

  constructor(
    private readonly binary: string,
    private readonly args: readonly string[],
    readonly httpAddr: string,
  ) {}

  /** Spawns consul; resolves once its HTTP API reports a Raft leader (poll 100 ms, up to 30 s). */
  async start(): Promise<void> {
    this.log = '';
    const child = spawn(this.binary, ['agent', ...this.args], { stdio: ['ignore', 'pipe', 'pipe'] });
    // Consul logs to stdout; both pipes must be drained or it blocks. Keep only the tail.
    const keep = (chunk: Buffer) => (this.log = (this.log + chunk.toString()).slice(-8192));
    child.stdout!.on('data', keep);
    child.stderr!.on('data', keep);
    this.child = child;
    live.add(child);
    this.exited = new Promise((resolve) =>
      child.once('exit', () => {
        live.delete(child);
        resolve();
      }),
    );
    const deadline = Date.now() + 30000;
    for (;;) {
      if (child.exitCode !== null || child.signalCode !== null) throw new Error(`consul exited: ${this.tail()}`);
      if (await this.leader().catch(() => '')) return;
      if (Date.now() > deadline) {
        await this.stop();
        throw new Error(`consul saw no leader within 30 s: ${this.tail()}`);
      }
      await new Promise((r) => setTimeout(r, 100));
    }
  }

  /** The Raft leader's server address ("127.0.0.1:PORT") as this agent sees it; '' if none. */
  async leader(): Promise<string> {
    const response = await fetch(`${this.httpAddr}/v1/status/leader`, { signal: AbortSignal.timeout(1000) });
    return response.ok ? ((await response.json()) as string) : '';
  }

  get running(): boolean {
    return this.child !== null;
  }

  /** SIGTERM and wait for the exit. A server agent does not leave the cluster on SIGTERM. */
  async stop(): Promise<void> {
    this.child?.kill('SIGTERM');
    await this.exited;
    this.child = null;
  }

  signal(signal: 'SIGSTOP' | 'SIGCONT'): void {
    this.child?.kill(signal);
  }

  tail(): string {
    return this.log.slice(-2000);
  }
}

/**
 * A single `consul agent -dev` (server + client in one, in-memory state). Note: a dev agent
 * keeps nothing across pause()/resume() - sessions, locks and KV are gone after a restart,
 * which is what a Consul cluster losing its data looks like to leaderd.
 */
export class ConsulAgent {
  private constructor(
    private readonly proc: ConsulProcess,
    private readonly dataDir: string,
  ) {}

  get httpAddr(): string {
    return this.proc.httpAddr;
  }

  static async start(): Promise<ConsulAgent> {
    const binary = ensureConsulInstalled();
    const ports = await freePorts();
    // Dev mode keeps its state in memory; the data dir only holds the node-id, so a restarted
    // agent is the same node. A unique name keeps concurrent agents apart in logs.
    const dataDir = mkdtempSync(join(tmpdir(), 'leaderd-consul-dev-'));
    const args = ['-dev', '-node', `leaderd-dev-${ports.http}`, '-data-dir', dataDir, ...COMMON_ARGS, ...portArgs(ports)];
    const agent = new ConsulAgent(new ConsulProcess(binary, args, `http://127.0.0.1:${ports.http}`), dataDir);
    try {
      await agent.resume();
    } catch (error) {
      await agent.stop();
      throw error;
    }
    return agent;
  }

  /** (Re)starts the agent on its ports (with empty state); resolves once it has a leader. */
  async resume(): Promise<void> {
    await this.proc.start();
  }

  /** Stops the agent (SIGTERM) and waits for it to exit. */
  async pause(): Promise<void> {
    await this.proc.stop();
  }

  async stop(): Promise<void> {
    this.thaw(); // a frozen agent would not act on SIGTERM
    await this.pause();
    rmSync(this.dataDir, { recursive: true, force: true });
  }

  /** SIGSTOP: the agent hangs without closing its sockets (a network partition, seen from a client). */
  freeze(): void {
    this.proc.signal('SIGSTOP');
  }

  thaw(): void {
    this.proc.signal('SIGCONT');
  }
}

/** One server of a ConsulCluster, with its own data directory (kept across pause()/resume()). */
export class ConsulServer {
  constructor(
    private readonly proc: ConsulProcess,
    readonly nodeName: string,
    /** The Raft/RPC address, as /v1/status/leader reports it. */
    readonly serverAddr: string,
  ) {}

  get httpAddr(): string {
    return this.proc.httpAddr;
  }

  get running(): boolean {
    return this.proc.running;
  }

  /** (Re)starts this server; resolves once it sees a Raft leader. */
  async resume(): Promise<void> {
    await this.proc.start();
  }

  /** SIGTERM: the server goes down without leaving, so the other two keep quorum. */
  async pause(): Promise<void> {
    await this.proc.stop();
  }

  freeze(): void {
    this.proc.signal('SIGSTOP');
  }

  thaw(): void {
    this.proc.signal('SIGCONT');
  }

  leader(): Promise<string> {
    return this.proc.leader();
  }

  tail(): string {
    return this.proc.tail();
  }
}

/**
 * Consul servers (three by default, -bootstrap-expect=N) on loopback, each with its own data
 * directory, so a paused server comes back with its Raft log and a paused leader triggers a real
 * election. Clients talk to any member's HTTP API (members[i].httpAddr). A cluster of one is a
 * single server that, unlike a dev agent, keeps its state (and its indexes) across a restart.
 */
export class ConsulCluster {
  private constructor(
    readonly members: readonly ConsulServer[],
    private readonly dir: string,
  ) {}

  static async start(size = 3): Promise<ConsulCluster> {
    const binary = ensureConsulInstalled();
    const dir = mkdtempSync(join(tmpdir(), 'leaderd-consul-cluster-'));
    // raft_multiplier 1 is the production timing (the default 5 is for tiny VMs): elections
    // take about a second instead of five.
    const config = join(dir, 'config.json');
    // Prometheus-format metrics (GET /v1/agent/metrics?format=prometheus) let the benchmark
    // count the HTTP requests sidecars make.
    writeFileSync(config, JSON.stringify({ performance: { raft_multiplier: 1 }, telemetry: { prometheus_retention_time: '1h', disable_hostname: true } }));
    const allPorts: Ports[] = [];
    for (let i = 0; i < size; i++) allPorts.push(await freePorts());
    const tag = `leaderd-${allPorts[0]!.http}`;
    const members = allPorts.map((ports, i) => {
      const dataDir = join(dir, `server${i}`);
      const joins = allPorts.filter((p) => p !== ports).flatMap((p) => ['-retry-join', `127.0.0.1:${p.serfLan}`]);
      const args = [
        '-server', '-bootstrap-expect', String(size), '-node', `${tag}-${i}`, '-data-dir', dataDir, '-config-file', config,
        // The default retry interval is 30 s: the first join attempts race the other servers' start.
        ...joins, '-retry-interval', '500ms',
        ...COMMON_ARGS, ...portArgs(ports),
      ];
      return new ConsulServer(new ConsulProcess(binary, args, `http://127.0.0.1:${ports.http}`), `${tag}-${i}`, `127.0.0.1:${ports.server}`);
    });
    const cluster = new ConsulCluster(members, dir);
    try {
      // No member reports a leader until all of them have joined, so they must start together.
      await Promise.all(members.map((m) => m.resume()));
      await cluster.allAlive();
    } catch (error) {
      const tails = members.map((m, i) => `--- server${i}:\n${m.tail()}`).join('\n');
      await cluster.stop();
      throw new Error(`${(error as Error).message}\n${tails}`);
    }
    return cluster;
  }

  /** Polls (100 ms, up to 30 s) until the first member's /v1/agent/members shows all three alive. */
  private async allAlive(): Promise<void> {
    const names = new Set(this.members.map((m) => m.nodeName));
    const deadline = Date.now() + 30000;
    for (;;) {
      try {
        const response = await fetch(`${this.members[0]!.httpAddr}/v1/agent/members`, { signal: AbortSignal.timeout(1000) });
        const list = (await response.json()) as Array<{ Name: string; Status: number }>;
        // Serf status 1 is "alive".
        if (list.filter((m) => names.has(m.Name) && m.Status === 1).length === names.size) return;
      } catch {
        // not answering yet
      }
      if (Date.now() > deadline) throw new Error('consul servers did not all become alive within 30 s');
      await new Promise((r) => setTimeout(r, 100));
    }
  }

  pause(index: number): Promise<void> {
    return this.member(index).pause();
  }

  resume(index: number): Promise<void> {
    return this.member(index).resume();
  }

  /**
   * Index of the Raft leader as the first running member reports it, or -1 if it knows none.
   * Right after the leader is paused, the others still name it until their election timeout.
   */
  async leaderIndex(): Promise<number> {
    for (const member of this.members) {
      if (!member.running) continue;
      try {
        const leader = await member.leader();
        return this.members.findIndex((m) => m.serverAddr === leader);
      } catch {
        // frozen or not answering: ask the next one
      }
    }
    return -1;
  }

  async stop(): Promise<void> {
    // A frozen (SIGSTOPped) server would ignore SIGTERM until continued.
    for (const member of this.members) member.thaw();
    await Promise.all(this.members.map((m) => m.pause()));
    rmSync(this.dir, { recursive: true, force: true });
  }

  private member(index: number): ConsulServer {
    const member = this.members[index];
    if (!member) throw new Error(`no consul server ${index}`);
    return member;
  }
}

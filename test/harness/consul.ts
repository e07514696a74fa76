/**
 * Real Consul agents for the tests: Debian bullseye's consul 1.8.7, unpacked into .cache/consul/
 * by scripts/install-consul.sh (bookworm has no consul package). Everything listens on free
 * loopback ports, so the suite never collides with another Consul on the machine (no 8500).
 */
import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import { randomUUID } from 'node:crypto';
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { request as httpRequest } from 'node:http';
import { request as httpsRequest } from 'node:https';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { freePort } from './ports.js';
import { runs } from './system.js';
import type { Pki } from './tls.js';

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
  /** The HTTP API's port: plain HTTP, or HTTPS (and no plain HTTP at all) when secured. */
  http: number;
  serfLan: number;
  serfWan: number;
  server: number;
}

async function freePorts(): Promise<Ports> {
  return { http: await freePort(), serfLan: await freePort(), serfWan: await freePort(), server: await freePort() };
}

function portArgs(p: Ports, secured: boolean): string[] {
  return ['-http-port', secured ? '-1' : `${p.http}`, '-serf-lan-port', `${p.serfLan}`, '-serf-wan-port', `${p.serfWan}`, '-server-port', `${p.server}`];
}

/**
 * An agent as production runs it: the HTTP API on HTTPS only, with client certificates required
 * (`verify_incoming_https`), and ACLs on in default-deny mode. The harness itself talks to it
 * with the `harness` client certificate and the master token.
 */
export interface ConsulSecurity {
  readonly pki: Pki;
  readonly masterToken: string;
}

export function newSecurity(pki: Pki): ConsulSecurity {
  return { pki, masterToken: randomUUID() };
}

/** The agent configuration that turns on TLS and ACLs (Consul 1.8's names), in JSON. */
function securedConfig(security: ConsulSecurity, httpsPort: number): string {
  const { pki, masterToken } = security;
  return JSON.stringify({
    ca_file: pki.ca,
    cert_file: pki.server.cert,
    key_file: pki.server.key,
    verify_incoming_https: true,
    ports: { https: httpsPort },
    acl: {
      enabled: true,
      default_policy: 'deny',
      down_policy: 'extend-cache',
      enable_token_persistence: true,
      // The agent registers its own node with the master token: what it needs is not under test.
      tokens: { master: masterToken, agent: masterToken },
    },
  });
}

/** What the harness's own requests carry: TLS material and the master token, or nothing. */
interface Credentials {
  readonly ca: Buffer;
  readonly cert: Buffer;
  readonly key: Buffer;
  readonly token: string;
}

function credentialsFor(security: ConsulSecurity | null): Credentials | null {
  if (!security) return null;
  const { pki, masterToken } = security;
  const client = pki.client('harness');
  return { ca: readFileSync(pki.ca), cert: readFileSync(client.cert), key: readFileSync(client.key), token: masterToken };
}

/**
 * One request to an agent's HTTP API (plain or, with credentials, HTTPS with the harness's
 * client certificate and the master token); resolves with the status and the body's text.
 */
function consulRequest(
  httpAddr: string,
  credentials: Credentials | null,
  method: string,
  path: string,
  body?: string,
  timeoutMs = 2000,
): Promise<{ status: number; text: string }> {
  const url = new URL(path, httpAddr);
  const options = {
    method,
    timeout: timeoutMs,
    headers: credentials ? { 'x-consul-token': credentials.token } : {},
    ...(credentials ? { ca: credentials.ca, cert: credentials.cert, key: credentials.key, agent: false } : {}),
  };
  return new Promise((resolve, reject) => {
    const request = (url.protocol === 'https:' ? httpsRequest : httpRequest)(url, options, (response) => {
      let text = '';
      response.setEncoding('utf8');
      response.on('data', (chunk: string) => (text += chunk));
      response.on('end', () => resolve({ status: response.statusCode ?? 0, text }));
      response.on('error', reject);
    });
    request.on('timeout', () => request.destroy(new Error(`${method} ${path}: no answer within ${timeoutMs} ms`)));
    request.on('error', reject);
    request.end(body);
  });
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
    readonly credentials: Credentials | null,
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
      if ((await this.leader().catch(() => '')) && (await this.aclsReady())) return;
      if (Date.now() > deadline) {
        await this.stop();
        throw new Error(`consul saw no leader within 30 s: ${this.tail()}`);
      }
      await new Promise((r) => setTimeout(r, 100));
    }
  }

  /** The Raft leader's server address ("127.0.0.1:PORT") as this agent sees it; '' if none. */
  async leader(): Promise<string> {
    const response = await consulRequest(this.httpAddr, this.credentials, 'GET', '/v1/status/leader', undefined, 1000);
    return response.status === 200 ? (JSON.parse(response.text) as string) : '';
  }

  /**
   * True once the ACL system knows the master token (a new leader inserts it after its
   * election), or at once when ACLs are off: tokens can be made from then on.
   */
  private async aclsReady(): Promise<boolean> {
    if (!this.credentials) return true;
    const response = await consulRequest(this.httpAddr, this.credentials, 'GET', '/v1/acl/token/self', undefined, 1000).catch(() => null);
    return response?.status === 200;
  }

  /** A request with the master token (when secured); the parsed JSON answer, or throws. */
  async api<T = unknown>(method: 'GET' | 'PUT' | 'DELETE', path: string, body?: string): Promise<T> {
    const response = await consulRequest(this.httpAddr, this.credentials, method, path, body);
    if (response.status !== 200) throw new Error(`${method} ${path}: ${response.status} ${response.text}`);
    return JSON.parse(response.text) as T;
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
    readonly nodeName: string,
  ) {}

  get httpAddr(): string {
    return this.proc.httpAddr;
  }

  /** A call to the HTTP API, as an operator would make it (with the master token when secured). */
  api<T = unknown>(method: 'GET' | 'PUT' | 'DELETE', path: string, body?: string): Promise<T> {
    return this.proc.api<T>(method, path, body);
  }

  /** A new ACL token with a policy of its own made of `rules` (HCL); its secret. */
  token(rules: string): Promise<string> {
    return createToken(this.proc, rules);
  }

  /** Gives a token made by token() new rules. */
  setRules(token: string, rules: string): Promise<void> {
    return setRules(this.proc, token, rules);
  }

  /** With `security`, TLS and ACLs as in production (see ConsulSecurity). */
  static async start(security: ConsulSecurity | null = null): Promise<ConsulAgent> {
    const binary = ensureConsulInstalled();
    const ports = await freePorts();
    // Dev mode keeps its state in memory; the data dir only holds the node-id, so a restarted
    // agent is the same node. A unique name keeps concurrent agents apart in logs.
    const dataDir = mkdtempSync(join(tmpdir(), 'leaderd-consul-dev-'));
    const nodeName = `leaderd-dev-${ports.http}`;
    const secured = security ? ['-hcl', securedConfig(security, ports.http)] : [];
    const args = ['-dev', '-node', nodeName, '-data-dir', dataDir, ...COMMON_ARGS, ...portArgs(ports, security !== null), ...secured];
    const scheme = security ? 'https' : 'http';
    const agent = new ConsulAgent(new ConsulProcess(binary, args, `${scheme}://127.0.0.1:${ports.http}`, credentialsFor(security)), dataDir, nodeName);
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

  api<T = unknown>(method: 'GET' | 'PUT' | 'DELETE', path: string, body?: string): Promise<T> {
    return this.proc.api<T>(method, path, body);
  }

  /** A new ACL token with a policy of its own made of `rules` (HCL); its secret. */
  token(rules: string): Promise<string> {
    return createToken(this.proc, rules);
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

  /** With `security`, TLS and ACLs as in production (see ConsulSecurity). */
  static async start(size = 3, security: ConsulSecurity | null = null): Promise<ConsulCluster> {
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
        ...COMMON_ARGS, ...portArgs(ports, security !== null),
        ...(security ? ['-hcl', securedConfig(security, ports.http)] : []),
      ];
      const httpAddr = `${security ? 'https' : 'http'}://127.0.0.1:${ports.http}`;
      return new ConsulServer(new ConsulProcess(binary, args, httpAddr, credentialsFor(security)), `${tag}-${i}`, `127.0.0.1:${ports.server}`);
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
        const list = await this.members[0]!.api<Array<{ Name: string; Status: number }>>('GET', '/v1/agent/members');
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

let tokens = 0;
/** Each token's own policy, by the token's secret: what setRules() changes. */
const policies = new Map<string, { id: string; name: string }>();

/** A policy made of `rules` and a token with it alone, created with the master token. */
async function createToken(proc: ConsulProcess, rules: string): Promise<string> {
  const name = `leaderd-test-${++tokens}-${randomUUID().slice(0, 8)}`;
  const policy = await proc.api<{ ID: string }>('PUT', '/v1/acl/policy', JSON.stringify({ Name: name, Rules: rules }));
  const token = await proc.api<{ SecretID: string }>('PUT', '/v1/acl/token', JSON.stringify({ Description: name, Policies: [{ ID: policy.ID }] }));
  policies.set(token.SecretID, { id: policy.ID, name });
  return token.SecretID;
}

/** Replaces the rules of a token made by createToken (a server resolves tokens afresh each time). */
async function setRules(proc: ConsulProcess, token: string, rules: string): Promise<void> {
  const policy = policies.get(token);
  if (!policy) throw new Error('not a token of this harness');
  await proc.api('PUT', `/v1/acl/policy/${policy.id}`, JSON.stringify({ Name: policy.name, Rules: rules }));
}

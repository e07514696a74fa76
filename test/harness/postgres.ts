/**
 * A real PostgreSQL cluster failed over by leaderd: Debian's postgresql-15, three servers on
 * loopback ports with streaming replication, each with a leaderd sidecar that runs the example's
 * check and hooks (examples/postgres/). Servers, sidecars and hooks run as the unprivileged
 * `postgres` user the package creates (PostgreSQL refuses to run as root), with their data under a
 * throwaway directory; the system's own cluster and service are never touched. The coordination
 * service is one setting, a chaos deployment: etcd, ZooKeeper, Consul, or the local backend
 * started with `{ owner: postgresUser() }`, so that its directory belongs to postgres.
 *
 * Each node keeps its HTTP port across restarts of its sidecar, as an operator's sidecar would:
 * a writer started once (writer.mjs takes the sidecars' URLs when it starts) finds a restarted
 * sidecar where it was. With `proxied`, each sidecar reaches its server through a TCP proxy of
 * its own (test/harness/proxy.ts), so that the chaos run can cut one sidecar off its server
 * while its PostgreSQL stays reachable.
 */
import { execFile, spawn, type ChildProcess } from 'node:child_process';
import { chownSync, closeSync, existsSync, fstatSync, mkdtempSync, openSync, readFileSync, readSync, readdirSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { randomBytes } from 'node:crypto';
import { promisify } from 'node:util';
import type { Deployment } from '../chaos/deployments.js';
import { until } from '../chaos/world.js';
import { freePort } from './ports.js';
import { TcpProxy } from './proxy.js';
import { Sidecar } from './sidecar.js';
import { aptInstall, runs } from './system.js';

export const PG_BINDIR = '/usr/lib/postgresql/15/bin';
export const EXAMPLE_DIR = fileURLToPath(new URL('../../examples/postgres/', import.meta.url));
export const ADMIN_TOKEN = 'postgres-admin-token';
/** The sidecars' lease, when the deployment's is shorter. */
export const TTL_SECONDS = 4;
/** The example's --max-lag (leaderd.sh): 1 MiB of WAL. */
export const MAX_LAG_BYTES = 1024 * 1024;

const run = promisify(execFile);

/** Installs Debian's postgresql-15 when its server is missing (the test harness runs as root). */
export function ensurePostgresInstalled(): void {
  if (runs(`${PG_BINDIR}/postgres`, ['--version'])) return;
  // (Debian's package makes a cluster of its own: aptInstall keeps its service from starting.)
  aptInstall('postgresql-15');
  if (!runs(`${PG_BINDIR}/postgres`, ['--version'])) throw new Error(`installing postgresql-15 did not provide ${PG_BINDIR}/postgres`);
}

/** How a command runs as the `postgres` user: setpriv execs it, so its pid is the command's. */
function asPostgres(command: readonly string[]): [string, ...string[]] {
  return ['setpriv', '--reuid=postgres', '--regid=postgres', '--init-groups', ...command];
}

/** Process ids whose parent is `pid`, from /proc. */
function childrenOf(pid: number): number[] {
  const children: number[] = [];
  for (const entry of readdirSync('/proc')) {
    if (!/^\d+$/.test(entry)) continue;
    try {
      // "pid (comm) state ppid ...": comm may hold spaces and parentheses, so read after the last ')'.
      const stat = readFileSync(`/proc/${entry}/stat`, 'utf8');
      if (Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[1]) === pid) children.push(Number(entry));
    } catch {
      // gone meanwhile
    }
  }
  return children;
}

/** Every process below `pid`: its children, theirs, and so on. */
function descendantsOf(pid: number): number[] {
  const children = childrenOf(pid);
  return [...children, ...children.flatMap(descendantsOf)];
}

function signal(pid: number, name: NodeJS.Signals): void {
  try {
    process.kill(pid, name);
  } catch {
    // already gone
  }
}

/** The state letter of a process (R running, S sleeping, T stopped...), from /proc. */
function processState(pid: number): string | undefined {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    return stat[stat.lastIndexOf(')') + 2];
  } catch {
    return undefined;
  }
}

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

/** Alive and not a zombie: a killed process the init process has not reaped yet is done. */
function running(pid: number): boolean {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    return stat.slice(stat.lastIndexOf(')') + 2)[0] !== 'Z';
  } catch {
    return false;
  }
}

/** One member: a PostgreSQL server and, once started, its sidecar. */
export class PgNode {
  sidecar: Sidecar | null = null;
  /** Between its sidecar and the backend's server, when the cluster is `proxied`. */
  proxy: TcpProxy | null = null;

  constructor(
    readonly id: string,
    readonly port: number,
    readonly dataDir: string,
    /** The environment the example's scripts read (env.sh). */
    readonly env: NodeJS.ProcessEnv,
    /** Where its sidecar listens ("127.0.0.1:PORT"), the same every time it starts. */
    readonly http: string,
  ) {}

  /** What replicas connect to when this node is primary: its sidecar's --address. */
  get address(): string {
    return `127.0.0.1:${this.port}`;
  }

  /** Runs one of the example's scripts as the postgres user, as an operator would. */
  async script(name: string, args: readonly string[] = []): Promise<string> {
    const [file, ...rest] = asPostgres([join(EXAMPLE_DIR, name), ...args]);
    try {
      return (await run(file, rest, { env: { ...process.env, ...this.env } })).stdout;
    } catch (error) {
      const { stdout, stderr } = error as { stdout?: string; stderr?: string };
      throw new Error(`${this.id}: ${name} failed: ${String(error)}\n${stdout ?? ''}${stderr ?? ''}\n${this.diagnostics()}`);
    }
  }

  /** One query through psql over TCP; the unaligned, tuples-only answer, trimmed. */
  async sql(query: string): Promise<string> {
    const args = ['-XAtq', '-v', 'ON_ERROR_STOP=1', '-h', '127.0.0.1', '-p', String(this.port), '-U', 'postgres', '-d', 'postgres', '-c', query];
    return (await run(join(PG_BINDIR, 'psql'), args, { timeout: 10000 })).stdout.trim();
  }

  /** The answer of `sql`, or null while the server does not answer. */
  async trySql(query: string): Promise<string | null> {
    try {
      return await this.sql(query);
    } catch {
      return null;
    }
  }

  /** The postmaster and its children (backends, WAL sender and receiver, ...); empty when stopped. */
  processes(): number[] {
    const pidFile = join(this.dataDir, 'postmaster.pid');
    if (!existsSync(pidFile)) return [];
    const postmaster = Number(readFileSync(pidFile, 'utf8').split('\n')[0]);
    return alive(postmaster) ? [postmaster, ...childrenOf(postmaster)] : [];
  }

  /**
   * The node's sidecar and everything it runs (a hook, a check) and its PostgreSQL, stopped with
   * SIGSTOP, as a host that stalls: resolves once every one of them is seen stopped, with their
   * pids for `thaw`.
   */
  async freeze(): Promise<number[]> {
    const sidecar = this.sidecar ? [this.sidecar.pid, ...descendantsOf(this.sidecar.pid)] : [];
    const pids = [...sidecar, ...this.processes()];
    for (const pid of pids) signal(pid, 'SIGSTOP');
    await until(() => pids.every((pid) => !running(pid) || processState(pid) === 'T'), 5000);
    return pids;
  }

  /** SIGCONT to what `freeze` stopped. */
  thaw(pids: readonly number[]): void {
    for (const pid of pids) signal(pid, 'SIGCONT');
  }

  /** The WAL receiver's pid (a replica streaming), or null. */
  walReceiver(): number | null {
    for (const pid of this.processes()) {
      try {
        if (readFileSync(`/proc/${pid}/cmdline`, 'utf8').includes('walreceiver')) return pid;
      } catch {
        // gone meanwhile
      }
    }
    return null;
  }

  /**
   * kill -9 of the whole server: every process stopped first, then killed, so no child outlives
   * the postmaster for a moment and writes on (killing the postmaster alone leaves its children
   * running until they notice). Resolves once they are gone, reaped included (`reaped`, as the
   * next start needs: a zombie postmaster still looks like a running server to pg_ctl; the init
   * process here takes over a second to reap).
   */
  async killPostgres(reaped = true): Promise<void> {
    const pids = this.processes();
    for (const signal of ['SIGSTOP', 'SIGKILL'] as const) {
      for (const pid of pids) {
        try {
          process.kill(pid, signal);
        } catch {
          // already gone
        }
      }
    }
    const gone = await until(() => !pids.some(reaped ? alive : running), 10000);
    if (!gone) throw new Error(`${this.id}: PostgreSQL processes ${pids.join(' ')} outlived SIGKILL`);
  }

  /** The end of its PostgreSQL log and its sidecar's hook output, for a failure's message. */
  diagnostics(): string {
    const log = existsSync(`${this.dataDir}.log`) ? readFileSync(`${this.dataDir}.log`, 'utf8').split('\n').slice(-15).join('\n') : '(no log)';
    const hooks = (this.sidecar?.logs ?? [])
      .filter((l) => /^(hook|role|leader|check|switchover|session|lease)/.test(l.msg))
      .slice(-30)
      .map((l) => [l.time, l.msg, l.hook, l.line, l.reason, l.error].filter((f) => f !== undefined).map(String).join(' '));
    return `${this.id}'s PostgreSQL log ends:\n${log}\n${this.id}'s sidecar:\n${hooks.join('\n')}`;
  }

  /** The WAL position PostgreSQL itself reports, in bytes: written (primary) or received (replica). */
  async position(): Promise<bigint> {
    return BigInt(
      await this.sql(
        `select pg_wal_lsn_diff(case when pg_is_in_recovery() then pg_last_wal_receive_lsn() else pg_current_wal_lsn() end, '0/0')::bigint`,
      ),
    );
  }

  /** The ids of the rows writer.mjs committed, as this server has them. */
  async rowIds(): Promise<Set<number>> {
    const text = await this.sql('select id from writes');
    return new Set(text.split('\n').filter(Boolean).map(Number));
  }

  /** application_name of every standby streaming from this server. */
  async streamingStandbys(): Promise<string[]> {
    const text = await this.trySql(`select application_name from pg_stat_replication where state = 'streaming' order by 1`);
    return text ? text.split('\n') : [];
  }
}

export interface PgClusterOptions {
  /** synchronous_standby_names = 'ANY 1 (the others)' on the primary (PG_SYNCHRONOUS=on). */
  readonly synchronous: boolean;
  /** The sidecars' --ttl in seconds, instead of the deployment's or TTL_SECONDS (a benchmark's). */
  readonly ttlSeconds?: number;
  /** A TCP proxy between each sidecar and the deployment's first server (none on local). */
  readonly proxied?: boolean;
}

/** Three members, db1 the first primary; sidecars on the deployment's first server. */
export class PgCluster {
  readonly election = `pg-${randomBytes(4).toString('hex')}`;

  private constructor(
    readonly deployment: Deployment,
    readonly dir: string,
    readonly nodes: readonly PgNode[],
    /** PgClusterOptions.ttlSeconds. */
    readonly ttlSeconds?: number,
  ) {}

  static async start(deployment: Deployment, options: PgClusterOptions): Promise<PgCluster> {
    const dir = mkdtempSync(join(tmpdir(), 'leaderd-pg-'));
    const { uid, gid } = postgresUser();
    chownSync(dir, uid, gid);
    const ids = ['db1', 'db2', 'db3'];
    const nodes: PgNode[] = [];
    for (const id of ids) {
      const port = await freePort();
      const env = { PGDATA: join(dir, id), PGPORT: String(port), PG_BINDIR, PG_SYNCHRONOUS: options.synchronous ? 'on' : 'off', PG_MEMBERS: ids.join(' '), HOME: dir };
      nodes.push(new PgNode(id, port, join(dir, id), env, `127.0.0.1:${await freePort()}`));
    }
    const cluster = new PgCluster(deployment, dir, nodes, options.ttlSeconds);
    try {
      const server = deployment.servers[0];
      if (options.proxied && server) for (const node of nodes) node.proxy = await TcpProxy.start(server.address);
      const [first, ...others] = nodes as [PgNode, ...PgNode[]];
      await first.script('init-primary.sh');
      // The tests kill processes, never the host: the page cache outlives them, so an fsync only
      // costs time (tens of ms a commit on a busy disk). The copies inherit the setting.
      await first.sql(`alter system set fsync = off`);
      await first.sql(`select pg_reload_conf()`);
      for (const node of others) await node.script('clone-replica.sh', [node.id, first.address]);
      // The node with the data leads first, as in the example's README; then the copies join.
      await cluster.startSidecar(first);
      await first.sidecar!.waitForRole('primary', 30000);
      for (const node of others) {
        const sidecar = await cluster.startSidecar(node);
        await sidecar.waitForState((s) => s.role === 'replica' && s.leader?.id === first.id, 30000, `replica of ${first.id}`);
        // Its leader-change hook re-points the replica (restarting its WAL receiver): let it finish.
        await sidecar.waitForLog((l) => l.msg === 'hook succeeded' && l.hook === 'leader-change', 30000, 'its leader-change hook');
      }
      await cluster.waitForStandbys(first, others, 30000);
    } catch (error) {
      await cluster.stop();
      throw error;
    }
    return cluster;
  }

  /** Starts `node`'s sidecar as the postgres user, as the example does (leaderd.sh). */
  async startSidecar(node: PgNode): Promise<Sidecar> {
    const backend = this.deployment.sidecarArgs(this.election, node.proxy?.address ?? this.deployment.servers[0]?.address ?? null);
    // At least 4 s: with three PostgreSQL servers, a writer and a loaded 2-core machine, a 2 s
    // lease is now and then lost to a starved event loop, which is a real failover but not the one
    // a test means. (A flag given twice is refused: the deployment's --ttl is replaced.)
    const ttl = this.ttlSeconds ?? (this.deployment.ttlSeconds < TTL_SECONDS ? TTL_SECONDS : undefined);
    if (ttl !== undefined) {
      const at = backend.indexOf('--ttl');
      if (at >= 0) backend.splice(at, 2);
      backend.push('--ttl', String(ttl));
    }
    // leaderd.sh listens where LEADERD_HTTP says, so that its hooks can ask the sidecar.
    const env = { ...node.env, LEADERD_ADMIN_TOKEN: ADMIN_TOKEN, LEADERD_HTTP: node.http };
    node.sidecar = await Sidecar.start(node.id, backend, env, asPostgres([join(EXAMPLE_DIR, 'leaderd.sh')]));
    return node.sidecar;
  }

  /**
   * The whole node down at once, as a crashed host: its sidecar and its server, kill -9.
   * `killed` is called as soon as nothing of the node can act any more: the sidecar has exited,
   * and every PostgreSQL process was stopped and sent SIGKILL (killPostgres signals before it
   * first waits). Waiting until they are reaped takes a second more, and on the local backend a
   * successor is promoted within tens of milliseconds of the sidecar's death: a term's end taken
   * after the reaping made the chaos run's checker see overlaps that never were.
   */
  async killNode(node: PgNode, killed?: () => void): Promise<void> {
    // A crashed host takes the hooks running on it too (they run in process groups of their own,
    // so killing the sidecar would leave them): a follow.sh cut off, not working on behind the
    // back of the sidecar started next. Found before the sidecar dies and they are reparented.
    const hooks = node.sidecar ? descendantsOf(node.sidecar.pid) : [];
    for (const pid of hooks) signal(pid, 'SIGSTOP');
    node.sidecar?.signal('SIGKILL');
    for (const pid of hooks) signal(pid, 'SIGKILL');
    const postgresGone = node.killPostgres();
    await node.sidecar?.exited;
    killed?.();
    await postgresGone;
    node.sidecar = null;
  }

  /** Resolves once every one of `standbys` streams from `primary`. */
  async waitForStandbys(primary: PgNode, standbys: readonly PgNode[], timeoutMs: number): Promise<void> {
    let last: string[] = [];
    const streaming = await until(async () => {
      last = await primary.streamingStandbys();
      return standbys.every((s) => last.includes(s.id));
    }, timeoutMs);
    if (!streaming) {
      const behind = standbys.filter((s) => !last.includes(s.id));
      throw new Error(
        `${primary.id}: ${behind.map((s) => s.id).join(', ')} not streaming within ${timeoutMs} ms (streaming: ${last.join(', ') || 'none'})\n` +
          behind.map((s) => s.diagnostics()).join('\n'),
      );
    }
  }

  /** Starts writer.mjs against every node's sidecar (where it listens, running or not). */
  startWriter(intervalMs?: number): Writer {
    return new Writer(join(this.dir, `acks-${randomBytes(4).toString('hex')}.jsonl`), this.nodes.map((n) => `http://${n.http}`), intervalMs);
  }

  async stop(): Promise<void> {
    await Promise.all(
      this.nodes.map(async (node) => {
        node.sidecar?.signal('SIGKILL');
        await Promise.all([node.sidecar?.exited, node.killPostgres(false)]);
        await node.proxy?.stop();
      }),
    );
    rmSync(this.dir, { recursive: true, force: true });
  }
}

/** One commit writer.mjs reported acknowledged. */
export interface Ack {
  id: number;
  node: string;
  token: number;
  /** Wall-clock ms when the acknowledgement arrived. */
  at: number;
}

/** examples/postgres/writer.mjs as its own process, its acknowledgements in a file. */
export class Writer {
  private readonly child: ChildProcess;
  private readonly exited: Promise<number | null>;
  private exitCode: number | null | undefined;
  stderr = '';
  /** The acknowledgements read so far, and where in the file the next one starts. */
  private readonly seen: Ack[] = [];
  private offset = 0;

  constructor(readonly file: string, sidecars: readonly string[], intervalMs?: number) {
    const interval = intervalMs === undefined ? [] : ['--interval', String(intervalMs)];
    this.child = spawn(process.execPath, [join(EXAMPLE_DIR, 'writer.mjs'), '--sidecars', sidecars.join(','), '--acks', file, ...interval], { stdio: ['ignore', 'ignore', 'pipe'] });
    // Only the end is ever shown: a writer that runs for hours says a lot.
    this.child.stderr!.on('data', (chunk: Buffer) => (this.stderr = (this.stderr + chunk.toString()).slice(-20000)));
    this.exited = new Promise((resolve) => this.child.once('exit', (code) => resolve((this.exitCode = code))));
  }

  /** Whether the process still runs. */
  get running(): boolean {
    return this.exitCode === undefined;
  }

  /**
   * Every acknowledgement so far, in the order the writer made them. Only what was appended
   * since the last call is read (a chaos run's writer acknowledges tens of thousands), and a line
   * still being written waits for the next call.
   */
  acks(): Ack[] {
    if (!existsSync(this.file)) return this.seen;
    const fd = openSync(this.file, 'r');
    try {
      const size = fstatSync(fd).size;
      if (size > this.offset) {
        const buffer = Buffer.alloc(size - this.offset);
        readSync(fd, buffer, 0, buffer.length, this.offset);
        const end = buffer.lastIndexOf(0x0a) + 1;
        for (const line of buffer.subarray(0, end).toString('utf8').split('\n')) if (line) this.seen.push(JSON.parse(line) as Ack);
        this.offset += end;
      }
    } finally {
      closeSync(fd);
    }
    return this.seen;
  }

  /** Resolves once `count` commits have been acknowledged by `node` (from now or earlier). */
  async waitForAcks(node: string, count: number, timeoutMs: number): Promise<void> {
    if (!(await until(() => this.acks().filter((a) => a.node === node).length >= count, timeoutMs))) {
      throw new Error(`writer: not ${count} commits acknowledged by ${node} within ${timeoutMs} ms; it said:\n${this.stderr.slice(-2000)}`);
    }
  }

  /** SIGTERM; resolves with every acknowledgement once it has exited. */
  async stop(): Promise<Ack[]> {
    this.child.kill('SIGTERM');
    const code = await this.exited;
    if (code !== 0) throw new Error(`writer exited with ${code}: ${this.stderr.slice(-2000)}`);
    return this.acks();
  }

  kill(): void {
    this.child.kill('SIGKILL');
  }
}

/** The uid and gid of the `postgres` user, that the servers, sidecars and hooks run as. */
export function postgresUser(): { uid: number; gid: number } {
  const line = readFileSync('/etc/passwd', 'utf8').split('\n').find((l) => l.startsWith('postgres:'));
  if (!line) throw new Error('no postgres user: the postgresql-15 package creates it');
  const [, , uid, gid] = line.split(':');
  return { uid: Number(uid), gid: Number(gid) };
}

/**
 * Real ZooKeeper servers for the tests: Debian's ZooKeeper 3.8, launched directly with
 * `java ... QuorumPeerMain <cfg>` (not the init scripts, so the test owns the process), on free
 * loopback ports, with throwaway data directories. A standalone server and a 3-member ensemble;
 * members can be stopped and started again on the same ports and data, or frozen (SIGSTOP) so
 * that their sessions expire without the sockets closing.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { connect } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { freePort } from './ports.js';
import { aptInstall, runs } from './system.js';

/** Debian's server jar; its manifest Class-Path pulls in the other jars from /usr/share/java. */
export const ZOOKEEPER_JAR = '/usr/share/java/zookeeper.jar';
/** The jar only depends on slf4j-api, which logs nothing without a binding; this one logs to stderr. */
const SLF4J_BINDING_JAR = '/usr/share/java/slf4j-simple.jar';
const JAVA = '/usr/bin/java';

const JVM_ARGS = [
  // Two cores and several JVMs at once: keep the heap small and start fast rather than run fast.
  '-Xms16m', '-Xmx128m', '-XX:+UseSerialGC', '-XX:TieredStopAtLevel=1',
  '-XX:-UsePerfData', // no /tmp/hsperfdata_* files left behind
  '-Djava.awt.headless=true', '-Djava.net.preferIPv4Stack=true',
  // slf4j-simple: timestamps, and no line for every 4lw command the harness polls with.
  '-Dorg.slf4j.simpleLogger.showDateTime=true', '-Dorg.slf4j.simpleLogger.dateTimeFormat=HH:mm:ss.SSS',
  '-Dorg.slf4j.simpleLogger.log.org.apache.zookeeper.server.NIOServerCnxn=warn',
  '-cp', `${ZOOKEEPER_JAR}:${SLF4J_BINDING_JAR}`,
];

export interface ZookeeperOptions {
  /** ZooKeeper's tick; session timeouts are bounded by 2 and 20 ticks unless overridden. Default 200. */
  tickTimeMs?: number;
  minSessionTimeoutMs?: number;
  maxSessionTimeoutMs?: number;
}

const POLL_MS = 100;
const READY_TIMEOUT_MS = 30000;

/** Children still running, killed if the test process exits without stopping them. */
const running = new Set<ChildProcess>();
process.once('exit', () => {
  for (const child of running) child.kill('SIGKILL');
});

export class ZookeeperServer {
  readonly connectString: string;
  private child: ChildProcess | null = null;
  private exited: Promise<void> = Promise.resolve();
  private log = '';
  private frozen = false;

  /** Use ZookeeperServer.start() or ZookeeperEnsemble.start(). */
  constructor(
    readonly clientPort: number,
    readonly tickTimeMs: number,
    private readonly dataDir: string,
    private readonly configFile: string,
    private readonly standalone: boolean,
  ) {
    this.connectString = `127.0.0.1:${clientPort}`;
  }

  /** A standalone server (srvr reports `Mode: standalone`). */
  static async start(options: ZookeeperOptions = {}): Promise<ZookeeperServer> {
    const [clientPort] = await distinctFreePorts(1);
    const server = createMember(clientPort!, options, []);
    await server.resume();
    return server;
  }

  /**
   * (Re)starts the server on its port and data directory; resolves once it answers `ruok` and,
   * if standalone, serves clients (it says `imok` a moment before it does). An ensemble member
   * may have no quorum to join, so only waits for `ruok`; see waitServing().
   */
  async resume(): Promise<void> {
    this.launch();
    await this.waitReady();
    if (this.standalone) await this.waitServing();
  }

  /** @internal Spawns the JVM without waiting (the ensemble starts its members side by side). */
  launch(): void {
    if (this.child) throw new Error(`zookeeper on ${this.connectString} is already running`);
    this.log = '';
    const child = spawn(JAVA, [...JVM_ARGS, 'org.apache.zookeeper.server.quorum.QuorumPeerMain', this.configFile], {
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    const keep = (chunk: Buffer) => {
      this.log = (this.log + chunk.toString()).slice(-8000);
    };
    child.stdout!.on('data', keep);
    child.stderr!.on('data', keep);
    running.add(child);
    this.child = child;
    this.exited = new Promise((resolve) =>
      child.once('exit', () => {
        running.delete(child);
        resolve();
      }),
    );
  }

  /** @internal Polls `ruok` until `imok` (which a member answers before it has joined a quorum). */
  async waitReady(): Promise<void> {
    const child = this.child!;
    const deadline = Date.now() + READY_TIMEOUT_MS;
    for (;;) {
      if (child.exitCode !== null || child.signalCode !== null) {
        throw new Error(`zookeeper on ${this.connectString} exited: ${this.log.slice(-2000)}`);
      }
      if ((await this.fourLetter('ruok', 1000).catch(() => '')) === 'imok') return;
      if (Date.now() > deadline) throw new Error(`zookeeper on ${this.connectString} did not answer ruok: ${this.log.slice(-2000)}`);
      await new Promise((r) => setTimeout(r, POLL_MS));
    }
  }

  /** `leader`, `follower` or `standalone` while serving clients; null otherwise (or unreachable). */
  async mode(): Promise<string | null> {
    // A frozen JVM's kernel still accepts the connection; don't sit out a timeout to learn nothing.
    if (!this.child || this.frozen) return null;
    const reply = await this.fourLetter('srvr', 1000).catch(() => '');
    return /^Mode: (\w+)/m.exec(reply)?.[1] ?? null;
  }

  /** Polls `srvr` until the server serves clients (an ensemble member has joined a quorum). */
  async waitServing(timeoutMs = READY_TIMEOUT_MS): Promise<string> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const mode = await this.mode();
      if (mode) return mode;
      if (Date.now() > deadline) throw new Error(`zookeeper on ${this.connectString} is not serving: ${this.log.slice(-2000)}`);
      await new Promise((r) => setTimeout(r, POLL_MS));
    }
  }

  /** Stops the server (SIGTERM), keeping its data for resume(). */
  async pause(): Promise<void> {
    const child = this.child;
    if (!child) return;
    child.kill('SIGTERM');
    child.kill('SIGCONT'); // a frozen JVM would otherwise never act on the SIGTERM
    // The JVM runs its shutdown hooks on SIGTERM; only a wedged one needs more persuasion.
    const wedged = setTimeout(() => child.kill('SIGKILL'), 10000);
    await this.exited;
    clearTimeout(wedged);
    this.child = null;
    this.frozen = false;
  }

  async stop(): Promise<void> {
    await this.pause();
    rmSync(this.dataDir, { recursive: true, force: true });
  }

  /**
   * Changes the session timeouts this server grants, from its next start: with pause() and
   * resume(), one step of a rolling configuration change.
   */
  setSessionTimeouts({ minSessionTimeoutMs, maxSessionTimeoutMs }: Pick<ZookeeperOptions, 'minSessionTimeoutMs' | 'maxSessionTimeoutMs'>): void {
    let config = readFileSync(this.configFile, 'utf8');
    if (minSessionTimeoutMs !== undefined) config = config.replace(/^minSessionTimeout=.*$/m, `minSessionTimeout=${minSessionTimeoutMs}`);
    if (maxSessionTimeoutMs !== undefined) config = config.replace(/^maxSessionTimeout=.*$/m, `maxSessionTimeout=${maxSessionTimeoutMs}`);
    writeFileSync(this.configFile, config);
  }

  /** Suspends the JVM (SIGSTOP): connections stay open but nothing answers, so sessions expire. */
  freeze(): void {
    this.child?.kill('SIGSTOP');
    this.frozen = this.child !== null;
  }

  /**
   * Resolves once every thread of the frozen server has stopped. SIGSTOP is sent at once but
   * takes effect thread by thread: a thread running on the other core can still answer a request
   * that arrives in the meantime (a sync sent right after freeze() was answered in 5 ms, 1 run in 10).
   */
  async stopped(timeoutMs = 5000): Promise<void> {
    const pid = this.child?.pid;
    if (!pid || !this.frozen) throw new Error('not frozen');
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const states = readdirSync(`/proc/${pid}/task`).map((tid) => {
        try {
          // The state follows the command name, which is in parentheses and may hold spaces.
          return readFileSync(`/proc/${pid}/task/${tid}/stat`, 'utf8').replace(/^.*\) /s, '')[0];
        } catch {
          return 'T'; // a thread that has exited
        }
      });
      if (states.every((state) => state === 'T' || state === 't')) return;
      if (Date.now() > deadline) throw new Error(`ZooKeeper ${pid} not stopped after ${timeoutMs} ms: thread states ${states.join('')}`);
      await new Promise((r) => setTimeout(r, 5));
    }
  }

  thaw(): void {
    this.child?.kill('SIGCONT');
    this.frozen = false;
  }

  /** Sends a four-letter-word command (ruok, srvr, stat, cons, mntr...) and resolves with the whole reply. */
  fourLetter(cmd: string, timeoutMs = 5000): Promise<string> {
    return new Promise((resolve, reject) => {
      const chunks: Buffer[] = [];
      const socket = connect({ host: '127.0.0.1', port: this.clientPort });
      socket.setTimeout(timeoutMs, () => socket.destroy(new Error(`${cmd} to ${this.connectString} timed out`)));
      socket.on('data', (chunk: Buffer) => chunks.push(chunk));
      socket.once('error', reject);
      // The server closes the connection once it has written the reply.
      socket.once('end', () => resolve(Buffer.concat(chunks).toString()));
      socket.end(cmd);
    });
  }
}

export class ZookeeperEnsemble {
  readonly connectString: string;

  private constructor(readonly members: ZookeeperServer[]) {
    this.connectString = members.map((m) => m.connectString).join(',');
  }

  /**
   * Three members on loopback; resolves once all of them serve as leader or follower. A member's
   * session bounds can be changed afterwards (setSessionTimeouts), as in a rolling change.
   */
  static async start(options: ZookeeperOptions = {}): Promise<ZookeeperEnsemble> {
    const ports = await distinctFreePorts(9);
    const servers = [1, 2, 3].map((id) => `server.${id}=127.0.0.1:${ports[3 + id - 1]}:${ports[6 + id - 1]}`);
    const ensemble = new ZookeeperEnsemble([0, 1, 2].map((i) => createMember(ports[i]!, options, servers, i + 1)));
    try {
      for (const member of ensemble.members) member.launch();
      await Promise.all(ensemble.members.map((m) => m.waitReady()));
      await Promise.all(ensemble.members.map((m) => m.waitServing()));
    } catch (error) {
      await ensemble.stop();
      throw error;
    }
    return ensemble;
  }

  /**
   * Index of the current leader, waiting (up to 30 s) until exactly one reachable member says
   * `Mode: leader` (paused or frozen members are skipped).
   */
  async leader(timeoutMs = READY_TIMEOUT_MS): Promise<number> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const modes = await Promise.all(this.members.map((m) => m.mode()));
      const leaders = modes.flatMap((mode, i) => (mode === 'leader' ? [i] : []));
      if (leaders.length === 1) return leaders[0]!;
      if (Date.now() > deadline) throw new Error(`no single zookeeper leader: ${modes.join(', ')}`);
      await new Promise((r) => setTimeout(r, POLL_MS));
    }
  }

  async stop(): Promise<void> {
    await Promise.all(this.members.map((m) => m.stop()));
  }
}

/** Writes a member's data directory and config; `servers` is empty for a standalone server. */
function createMember(clientPort: number, options: ZookeeperOptions, servers: string[], myid?: number): ZookeeperServer {
  const tickTimeMs = options.tickTimeMs ?? 200;
  const dataDir = mkdtempSync(join(tmpdir(), 'leaderd-zk-'));
  if (myid !== undefined) writeFileSync(join(dataDir, 'myid'), `${myid}\n`);
  const configFile = join(dataDir, 'zoo.cfg');
  const config = [
    `tickTime=${tickTimeMs}`,
    `minSessionTimeout=${options.minSessionTimeoutMs ?? 2 * tickTimeMs}`,
    `maxSessionTimeout=${options.maxSessionTimeoutMs ?? 20 * tickTimeMs}`,
    // Timeouts in ticks, not delays: generous enough for a cold JVM to sync, short enough that a
    // frozen leader is noticed within a second or so.
    'initLimit=20',
    'syncLimit=5',
    `dataDir=${dataDir}`,
    `clientPort=${clientPort}`,
    'clientPortAddress=127.0.0.1',
    'admin.enableServer=false', // its Jetty would want port 8080
    '4lw.commands.whitelist=*',
    'maxClientCnxns=0', // every test client comes from 127.0.0.1; the default caps that at 60
    // Unknown keys become zookeeper.* system properties: no fsync and no 64 MB log preallocation
    // (the data is throwaway), and give up quickly on a frozen peer's election port.
    'forceSync=no',
    'preAllocSize=1024',
    'cnxTimeout=1000',
    ...servers,
  ];
  writeFileSync(configFile, config.join('\n') + '\n');
  return new ZookeeperServer(clientPort, tickTimeMs, dataDir, configFile, servers.length === 0);
}

/** freePort() can hand out the same port twice if nothing holds it in between; an ensemble needs them distinct. */
async function distinctFreePorts(count: number): Promise<number[]> {
  const ports = new Set<number>();
  while (ports.size < count) ports.add(await freePort());
  return [...ports];
}

/**
 * Installs Debian's zookeeper package when its jar is missing (the test harness runs as root).
 * That package ships no init script or systemd unit (zookeeperd does), so installing it starts no
 * system server on 2181 that could get in the way.
 */
export function ensureZookeeperInstalled(): void {
  if (existsSync(ZOOKEEPER_JAR) && existsSync(SLF4J_BINDING_JAR) && runs(JAVA, ['-version'])) return;
  aptInstall('zookeeper');
  if (!existsSync(ZOOKEEPER_JAR)) throw new Error(`installing zookeeper did not provide ${ZOOKEEPER_JAR}`);
}


/**
 * Real etcd servers for the tests: Debian's etcd-server, on free loopback ports, with throwaway
 * data directories. A server can be stopped and started again on the same ports and data; an
 * EtcdCluster is three of them in one Raft group. `etcdctl` (Debian's etcd-client) runs as a
 * process of its own, as an operator would run it next to leaderd.
 */
import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import { createInterface } from 'node:readline';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { request } from 'node:https';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { freePort } from './ports.js';
import { aptInstall, runs } from './system.js';
import type { CertificateFiles, Pki } from './tls.js';

export const ETCD_BINARY = '/usr/bin/etcd';
export const ETCDCTL_BINARY = '/usr/bin/etcdctl';
/** The password of `root` on a secured server. */
export const ROOT_PASSWORD = 'root-secret';

/** One key as etcd stores it (the v3 JSON gateway's fields, decoded). */
export interface EtcdKeyValue {
  key: string;
  value: string;
  createRevision: number;
  modRevision: number;
  /** The lease id, decimal; '0' for a key written without a lease. */
  lease: string;
}

export class EtcdServer {
  private child: ChildProcess | null = null;
  private exited: Promise<void> = Promise.resolve();

  /** Use EtcdServer.start() or EtcdCluster.start(). */
  constructor(
    readonly name: string,
    readonly clientUrl: string,
    readonly peerUrl: string,
    private readonly dataDir: string,
    /** `--initial-cluster`; null for a server of its own. */
    private readonly initialCluster: string | null = null,
    /** TLS on the client URL, with client certificates required (see startSecured). */
    readonly pki: Pki | null = null,
  ) {
    this.serverCertificate = pki?.server ?? null;
  }

  /** What the server presents on its client URL from its next (re)start: to test a rotation. */
  serverCertificate: CertificateFiles | null;

  static async start(): Promise<EtcdServer> {
    const server = new EtcdServer(
      'test',
      `http://127.0.0.1:${await freePort()}`,
      `http://127.0.0.1:${await freePort()}`,
      mkdtempSync(join(tmpdir(), 'leaderd-etcd-')),
    );
    await server.resume();
    return server;
  }

  /**
   * A server as production runs it: TLS on the client URL, client certificates required
   * (`--client-cert-auth`), and authentication on (unless `enableAuth` is false: users and roles
   * made, `etcdctlSync(['auth', 'enable'])` left to the test), with `root` (password ROOT_PASSWORD) and one
   * user per entry of `users`, each with a role of its own that may read and write under its
   * prefix only (`role grant-permission --prefix`). A user may log in by password or by a client
   * certificate with its name as common name (pki.client(name)).
   */
  static async startSecured(
    pki: Pki,
    users: ReadonlyArray<{ name: string; password: string; prefix: string }>,
    { enableAuth = true } = {},
  ): Promise<EtcdServer> {
    const server = new EtcdServer(
      'secured',
      `https://127.0.0.1:${await freePort()}`,
      `http://127.0.0.1:${await freePort()}`,
      mkdtempSync(join(tmpdir(), 'leaderd-etcd-secured-')),
      null,
      pki,
    );
    await server.resume();
    const commands = [
      ['user', 'add', `root:${ROOT_PASSWORD}`],
      ['role', 'add', 'root'],
      ['user', 'grant-role', 'root', 'root'],
      ...users.flatMap(({ name, password, prefix }) => [
        ['role', 'add', name],
        ['role', 'grant-permission', name, '--prefix=true', 'readwrite', prefix],
        ['user', 'add', `${name}:${password}`],
        ['user', 'grant-role', name, name],
      ]),
      ...(enableAuth ? [['auth', 'enable']] : []),
    ];
    for (const command of commands) server.etcdctlSync(command);
    return server;
  }

  /** Runs etcdctl to completion against this server (as root once authentication is on). */
  etcdctlSync(args: readonly string[]): string {
    const tls = this.pki ? ['--cacert', this.pki.ca, '--cert', this.pki.client('root').cert, '--key', this.pki.client('root').key] : [];
    return execFileSync(ETCDCTL_BINARY, ['--endpoints', this.clientUrl, ...tls, '--user', `root:${ROOT_PASSWORD}`, ...args], {
      env: { ...process.env, ETCDCTL_API: '3' },
      encoding: 'utf8',
      stdio: ['ignore', 'pipe', 'pipe'],
      timeout: 10000,
    });
  }

  /** "127.0.0.1:PORT" of the client URL. */
  get clientAddress(): string {
    return new URL(this.clientUrl).host;
  }

  get running(): boolean {
    return this.child !== null;
  }

  /** (Re)starts the server on its ports and data directory; resolves once it is healthy. */
  async resume(): Promise<void> {
    const log: string[] = [];
    const tls =
      this.pki && this.serverCertificate
        ? ['--cert-file', this.serverCertificate.cert, '--key-file', this.serverCertificate.key, '--trusted-ca-file', this.pki.ca, '--client-cert-auth']
        : [];
    const child = spawn(
      ETCD_BINARY,
      [
        ...tls,
        '--name', this.name,
        '--data-dir', this.dataDir,
        '--listen-client-urls', this.clientUrl,
        '--advertise-client-urls', this.clientUrl,
        '--listen-peer-urls', this.peerUrl,
        '--initial-advertise-peer-urls', this.peerUrl,
        '--initial-cluster', this.initialCluster ?? `${this.name}=${this.peerUrl}`,
      ],
      { stdio: ['ignore', 'ignore', 'pipe'] },
    );
    child.stderr!.on('data', (chunk: Buffer) => log.push(chunk.toString()));
    this.child = child;
    live.add(child);
    child.once('exit', () => live.delete(child));
    this.exited = new Promise((resolve) => child.once('exit', () => resolve()));
    const deadline = Date.now() + 30000;
    for (;;) {
      if (child.exitCode !== null) throw new Error(`etcd exited: ${log.join('').slice(-2000)}`);
      try {
        if ((await this.health()) === 'true') return;
      } catch {
        // not listening yet
      }
      if (Date.now() > deadline) throw new Error(`etcd did not become healthy: ${log.join('').slice(-2000)}`);
      await new Promise((r) => setTimeout(r, 100));
    }
  }

  /** What /health answers ("true" when healthy), over TLS with the root client certificate when secured. */
  private async health(): Promise<string | undefined> {
    if (!this.pki) {
      return ((await (await fetch(`${this.clientUrl}/health`, { signal: AbortSignal.timeout(1000) })).json()) as { health?: string }).health;
    }
    const { client } = this.pki;
    const body = await new Promise<string>((resolve, reject) => {
      // Whichever certificate the server presents (see serverCertificate): this only asks whether it is up.
      const req = request(
        `${this.clientUrl}/health`,
        { rejectUnauthorized: false, cert: readFileSync(client('root').cert), key: readFileSync(client('root').key), timeout: 1000 },
        (response) => {
          let text = '';
          response.on('data', (chunk: Buffer) => (text += chunk.toString()));
          response.on('end', () => resolve(text));
          response.on('error', reject);
        },
      );
      req.on('timeout', () => req.destroy(new Error('timed out')));
      req.on('error', reject);
      req.end();
    });
    return (JSON.parse(body) as { health?: string }).health;
  }

  /** The member id of this server and the one it follows as leader, from its status; null if down. */
  async status(): Promise<{ memberId: string; leader: string } | null> {
    if (!this.child) return null;
    try {
      const response = await fetch(`${this.clientUrl}/v3/maintenance/status`, { method: 'POST', body: '{}', signal: AbortSignal.timeout(1000) });
      const body = (await response.json()) as { header?: { member_id?: string }; leader?: string };
      return body.header?.member_id && body.leader ? { memberId: body.header.member_id, leader: body.leader } : null;
    } catch {
      return null;
    }
  }

  /** Stops the server (SIGTERM), keeping its data for resume(). */
  async pause(): Promise<void> {
    this.child?.kill('SIGTERM');
    await this.exited;
    this.child = null;
  }

  async stop(): Promise<void> {
    await this.pause();
    rmSync(this.dataDir, { recursive: true, force: true });
  }

  /** etcdctl-like read of the keys under a prefix, through the v3 JSON gateway. */
  async keys(prefix: string): Promise<string[]> {
    const b64 = (s: string) => Buffer.from(s).toString('base64');
    const end = prefix.slice(0, -1) + String.fromCharCode(prefix.charCodeAt(prefix.length - 1) + 1);
    const response = await fetch(`${this.clientUrl}/v3/kv/range`, {
      method: 'POST',
      body: JSON.stringify({ key: b64(prefix), range_end: b64(end), keys_only: true }),
    });
    const body = (await response.json()) as { kvs?: Array<{ key: string }> };
    return (body.kvs ?? []).map((kv) => Buffer.from(kv.key, 'base64').toString());
  }

  /** The keys under a prefix with their values, revisions and leases, through the JSON gateway. */
  async range(prefix: string): Promise<EtcdKeyValue[]> {
    const b64 = (s: string) => Buffer.from(s).toString('base64');
    const end = prefix.slice(0, -1) + String.fromCharCode(prefix.charCodeAt(prefix.length - 1) + 1);
    const response = await fetch(`${this.clientUrl}/v3/kv/range`, { method: 'POST', body: JSON.stringify({ key: b64(prefix), range_end: b64(end) }) });
    const body = (await response.json()) as {
      kvs?: Array<{ key: string; value?: string; create_revision: string; mod_revision: string; lease?: string }>;
    };
    return (body.kvs ?? []).map((kv) => ({
      key: Buffer.from(kv.key, 'base64').toString(),
      value: Buffer.from(kv.value ?? '', 'base64').toString(),
      createRevision: Number(kv.create_revision),
      modRevision: Number(kv.mod_revision),
      lease: kv.lease ?? '0',
    }));
  }

  /** Writes a key without a lease (a key someone else put under the election), as `etcdctl put` would. */
  async put(key: string, value: string): Promise<void> {
    const b64 = (s: string) => Buffer.from(s).toString('base64');
    const response = await fetch(`${this.clientUrl}/v3/kv/put`, { method: 'POST', body: JSON.stringify({ key: b64(key), value: b64(value) }) });
    if (!response.ok) throw new Error(`put ${key}: ${response.status} ${await response.text()}`);
  }

  /** Deletes a key, as `etcdctl del` would. */
  async delete(key: string): Promise<void> {
    const response = await fetch(`${this.clientUrl}/v3/kv/deleterange`, { method: 'POST', body: JSON.stringify({ key: Buffer.from(key).toString('base64') }) });
    if (!response.ok) throw new Error(`delete ${key}: ${response.status} ${await response.text()}`);
  }

  /** Starts `etcdctl --endpoints <this server> ARGS` (e.g. `elect NAME PROPOSAL`). */
  etcdctl(args: readonly string[]): Etcdctl {
    return new Etcdctl(['--endpoints', this.clientAddress, ...args]);
  }
}

/**
 * A running etcdctl (for `elect`, which runs until signalled): its stdout lines as they come, and
 * waits on them; never a sleep.
 */
export class Etcdctl {
  readonly lines: string[] = [];
  stderr = '';
  readonly exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
  private readonly child: ChildProcess;
  private waiters: Array<() => void> = [];

  constructor(args: readonly string[]) {
    const child = spawn(ETCDCTL_BINARY, [...args], { env: { ...process.env, ETCDCTL_API: '3' }, stdio: ['ignore', 'pipe', 'pipe'] });
    this.child = child;
    live.add(child);
    this.exited = new Promise((resolve) =>
      child.once('exit', (code, signal) => {
        live.delete(child);
        resolve({ code, signal });
        for (const waiter of [...this.waiters]) waiter();
      }),
    );
    child.stderr!.on('data', (chunk: Buffer) => (this.stderr += chunk.toString()));
    createInterface({ input: child.stdout! }).on('line', (line) => {
      this.lines.push(line);
      for (const waiter of [...this.waiters]) waiter();
    });
  }

  /** Resolves with the index of the first stdout line at or after `from` that matches. */
  waitForLine(matches: (line: string) => boolean, timeoutMs: number, from = 0): Promise<number> {
    return new Promise((resolve, reject) => {
      const check = () => {
        const index = this.lines.findIndex((line, i) => i >= from && matches(line));
        if (index >= 0) {
          done();
          resolve(index);
        } else if (this.child.exitCode !== null || this.child.signalCode !== null) {
          done();
          reject(new Error(`etcdctl exited (${this.child.exitCode ?? this.child.signalCode}): ${this.stderr.slice(-1000)}`));
        }
      };
      const timer = setTimeout(() => {
        done();
        reject(new Error(`etcdctl printed no matching line within ${timeoutMs} ms; it printed ${JSON.stringify(this.lines)}; stderr ${this.stderr.slice(-1000)}`));
      }, timeoutMs);
      const done = () => {
        clearTimeout(timer);
        this.waiters = this.waiters.filter((w) => w !== check);
      };
      this.waiters.push(check);
      check();
    });
  }

  signal(signal: NodeJS.Signals): void {
    this.child.kill(signal);
  }

  /** SIGKILL if still running (test teardown). */
  async kill(): Promise<void> {
    if (this.child.exitCode === null && this.child.signalCode === null) this.child.kill('SIGKILL');
    await this.exited;
  }
}

/** Three etcd servers in one cluster on loopback; members can be stopped and started again. */
export class EtcdCluster {
  private constructor(readonly members: readonly EtcdServer[]) {}

  static async start(): Promise<EtcdCluster> {
    const ports: number[] = [];
    for (let i = 0; i < 6; i++) ports.push(await freePort());
    const names = ['m0', 'm1', 'm2'];
    const initialCluster = names.map((name, i) => `${name}=http://127.0.0.1:${ports[3 + i]}`).join(',');
    const members = names.map(
      (name, i) =>
        new EtcdServer(name, `http://127.0.0.1:${ports[i]}`, `http://127.0.0.1:${ports[3 + i]}`, mkdtempSync(join(tmpdir(), `leaderd-etcd-${name}-`)), initialCluster),
    );
    const cluster = new EtcdCluster(members);
    try {
      // A member reports healthy only once the cluster has a leader, so they start together.
      await Promise.all(members.map((m) => m.resume()));
    } catch (error) {
      await cluster.stop();
      throw error;
    }
    return cluster;
  }

  /** Index of the Raft leader as every running member sees it (polls 100 ms, up to 30 s). */
  async leaderIndex(): Promise<number> {
    const deadline = Date.now() + 30000;
    for (;;) {
      const statuses = await Promise.all(this.members.map((m) => m.status()));
      const known = statuses.filter((s) => s !== null);
      const leader = known[0]?.leader;
      const index = statuses.findIndex((s) => s?.memberId === leader);
      if (index >= 0 && known.every((s) => s.leader === leader)) return index;
      if (Date.now() > deadline) throw new Error(`no single etcd leader: ${JSON.stringify(statuses)}`);
      await new Promise((r) => setTimeout(r, 100));
    }
  }

  async stop(): Promise<void> {
    await Promise.all(this.members.map((m) => m.stop()));
  }
}

// Servers still running when the test process exits (a crash, an unhandled error) are killed, so
// no orphaned etcd keeps its ports.
const live = new Set<ChildProcess>();
process.on('exit', () => {
  for (const child of live) child.kill('SIGKILL');
});

/**
 * Installs Debian's etcd-server and etcd-client (etcdctl, for the mixed-election test) when their
 * binaries are missing (the test harness runs as root).
 */
export function ensureEtcdInstalled(): void {
  if (!runs(ETCD_BINARY, ['--version'])) {
    aptInstall('etcd-server');
    if (!runs(ETCD_BINARY, ['--version'])) throw new Error(`installing etcd-server did not provide ${ETCD_BINARY}`);
  }
  if (!runs(ETCDCTL_BINARY, ['version'])) {
    aptInstall('etcd-client');
    if (!runs(ETCDCTL_BINARY, ['version'])) throw new Error(`installing etcd-client did not provide ${ETCDCTL_BINARY}`);
  }
}


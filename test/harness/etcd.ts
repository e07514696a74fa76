/**
 * Real etcd servers for the tests: Debian's etcd-server, on free loopback ports, with throwaway
 * data directories. A server can be stopped and started again on the same ports and data; an
 * EtcdCluster is three of them in one Raft group.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { freePort } from './ports.js';
import { aptInstall, runs } from './system.js';

export const ETCD_BINARY = '/usr/bin/etcd';

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
  ) {}

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
    const child = spawn(
      ETCD_BINARY,
      [
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
        const health = (await (await fetch(`${this.clientUrl}/health`, { signal: AbortSignal.timeout(1000) })).json()) as { health?: string };
        if (health.health === 'true') return;
      } catch {
        // not listening yet
      }
      if (Date.now() > deadline) throw new Error(`etcd did not become healthy: ${log.join('').slice(-2000)}`);
      await new Promise((r) => setTimeout(r, 100));
    }
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

/** Installs Debian's etcd-server when the binary is missing (the test harness runs as root). */
export function ensureEtcdInstalled(): void {
  if (runs(ETCD_BINARY, ['--version'])) return;
  aptInstall('etcd-server');
  if (!runs(ETCD_BINARY, ['--version'])) throw new Error(`installing etcd-server did not provide ${ETCD_BINARY}`);
}


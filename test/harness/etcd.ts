/**
 * A real etcd server for the tests: Debian's etcd-server, on free loopback ports, with a
 * throwaway data directory. It can be stopped and started again on the same ports and data.
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

  private constructor(
    readonly clientUrl: string,
    private readonly peerUrl: string,
    private readonly dataDir: string,
  ) {}

  static async start(): Promise<EtcdServer> {
    const server = new EtcdServer(
      `http://127.0.0.1:${await freePort()}`,
      `http://127.0.0.1:${await freePort()}`,
      mkdtempSync(join(tmpdir(), 'leaderd-etcd-')),
    );
    await server.resume();
    return server;
  }

  /** (Re)starts the server on its ports and data directory; resolves once it is healthy. */
  async resume(): Promise<void> {
    const log: string[] = [];
    const child = spawn(
      ETCD_BINARY,
      [
        '--name', 'test',
        '--data-dir', this.dataDir,
        '--listen-client-urls', this.clientUrl,
        '--advertise-client-urls', this.clientUrl,
        '--listen-peer-urls', this.peerUrl,
        '--initial-advertise-peer-urls', this.peerUrl,
        '--initial-cluster', `test=${this.peerUrl}`,
      ],
      { stdio: ['ignore', 'ignore', 'pipe'] },
    );
    child.stderr!.on('data', (chunk: Buffer) => log.push(chunk.toString()));
    this.child = child;
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

/** Installs Debian's etcd-server when the binary is missing (the test harness runs as root). */
export function ensureEtcdInstalled(): void {
  if (runs(ETCD_BINARY, ['--version'])) return;
  aptInstall('etcd-server');
  if (!runs(ETCD_BINARY, ['--version'])) throw new Error(`installing etcd-server did not provide ${ETCD_BINARY}`);
}


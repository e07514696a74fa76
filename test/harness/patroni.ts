/**
 * Patroni (Debian's `patroni`, 3.0.x) managing three PostgreSQL 15 servers on loopback, with etcd
 * (its `etcd3` DCS) as the coordination service: the reference leaderd's PostgreSQL example is
 * measured against. Each member has its own YAML file, data directory, PostgreSQL port and REST
 * port; Patroni bootstraps the cluster itself (initdb on whichever member wins the race, copies on
 * the others) and runs as the `postgres` user, as PgCluster does. The PostgreSQL settings that
 * matter for timing are PgCluster's (examples/postgres/init-primary.sh), so that the two
 * clusters differ in who fails them over, not in how PostgreSQL is tuned.
 */
import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import { closeSync, mkdtempSync, openSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { randomBytes } from 'node:crypto';
import { stringify } from 'yaml';
import { until } from '../chaos/world.js';
import { freePort } from './ports.js';
import { PG_BINDIR, PgNode } from './postgres.js';
import { aptInstall, runs } from './system.js';

export const PATRONI_BINARY = '/usr/bin/patroni';

/** Installs Debian's patroni (and python3-etcd, which its etcd3 DCS imports) when missing. */
export function ensurePatroniInstalled(): void {
  if (runs(PATRONI_BINARY, ['--version']) && runs('python3', ['-c', 'import etcd'])) return;
  aptInstall('patroni', 'python3-etcd');
  if (!runs(PATRONI_BINARY, ['--version'])) throw new Error(`installing patroni did not provide ${PATRONI_BINARY}`);
}

export interface PatroniTiming {
  /** The leader key's TTL, seconds. */
  readonly ttl: number;
  /** How often each member's loop runs, seconds. */
  readonly loopWait: number;
  /** How long a DCS or PostgreSQL operation is retried, seconds. */
  readonly retryTimeout: number;
}

export interface PatroniClusterOptions {
  /** `synchronous_mode: true`: only a recorded synchronous standby may be promoted. */
  readonly synchronous: boolean;
  readonly timing: PatroniTiming;
}

/** One member: its PostgreSQL (a PgNode, for sql, processes and kill -9) and its Patroni. */
export class PatroniMember {
  process: ChildProcess | null = null;
  exited: Promise<void> = Promise.resolve();

  constructor(
    readonly pg: PgNode,
    readonly restPort: number,
    readonly configFile: string,
    readonly logFile: string,
  ) {}

  get id(): string {
    return this.pg.id;
  }

  get restUrl(): string {
    return `http://127.0.0.1:${this.restPort}`;
  }

  /** Patroni's own answer: 200 on /primary only while this member leads and runs as primary. */
  async isPrimary(): Promise<boolean> {
    try {
      return (await fetch(`${this.restUrl}/primary`, { signal: AbortSignal.timeout(2000) })).status === 200;
    } catch {
      return false;
    }
  }
}

/** How a command runs as the `postgres` user (as PgCluster's sidecars do): setpriv execs it. */
function asPostgres(command: readonly string[]): [string, ...string[]] {
  return ['setpriv', '--reuid=postgres', '--regid=postgres', '--init-groups', ...command];
}

export class PatroniCluster {
  readonly scope = `bench-${randomBytes(4).toString('hex')}`;

  private constructor(
    readonly dir: string,
    readonly members: readonly PatroniMember[],
  ) {}

  /** Three members on the etcd server at `etcdAddress` (host:port); resolves once two replicas stream. */
  static async start(etcdAddress: string, options: PatroniClusterOptions): Promise<PatroniCluster> {
    ensurePatroniInstalled();
    const dir = mkdtempSync(join(tmpdir(), 'leaderd-patroni-'));
    const members: PatroniMember[] = [];
    for (const name of ['pg1', 'pg2', 'pg3']) {
      const [port, restPort] = [await freePort(), await freePort()];
      const dataDir = join(dir, name);
      const member = new PatroniMember(new PgNode(name, port, dataDir, {}, `127.0.0.1:${restPort}`), restPort, join(dir, `${name}.yml`), join(dir, `${name}.patroni.log`));
      members.push(member);
    }
    const cluster = new PatroniCluster(dir, members);
    for (const member of members) writeFileSync(member.configFile, stringify(cluster.config(member, etcdAddress, options)));
    // Patroni wants the data directory's parent writable and creates the directory itself (0700).
    execFileSync('chown', ['-R', 'postgres:postgres', dir]);
    try {
      // All at once, as a fresh deployment starts: one wins the initialize key and runs initdb,
      // the others copy it with pg_basebackup.
      for (const member of members) cluster.startPatroni(member);
      const primary = await cluster.waitForPrimary(120000);
      await cluster.waitForStandbys(primary, members.filter((m) => m !== primary), 120000);
      await primary.pg.sql('create table bench_writes (id bigint primary key)');
    } catch (error) {
      await cluster.stop();
      throw error;
    }
    return cluster;
  }

  /** One member's patroni.yml. */
  private config(member: PatroniMember, etcdAddress: string, { synchronous, timing }: PatroniClusterOptions): object {
    const trust = ['local all all trust', 'host all all 127.0.0.1/32 trust', 'host replication all 127.0.0.1/32 trust'];
    return {
      scope: this.scope,
      namespace: '/patroni-bench/',
      name: member.id,
      restapi: { listen: `127.0.0.1:${member.restPort}`, connect_address: `127.0.0.1:${member.restPort}` },
      etcd3: { hosts: [etcdAddress] },
      bootstrap: {
        dcs: {
          ttl: timing.ttl,
          loop_wait: timing.loopWait,
          retry_timeout: timing.retryTimeout,
          maximum_lag_on_failover: 1024 * 1024,
          synchronous_mode: synchronous,
          postgresql: {
            use_pg_rewind: true,
            use_slots: true,
            // examples/postgres/init-primary.sh's settings, and PgCluster's fsync = off.
            parameters: { wal_keep_size: '256MB', wal_retrieve_retry_interval: '500ms', fsync: 'off' },
          },
        },
        // -k as the example's initdb: pg_rewind needs checksums (or wal_log_hints).
        initdb: ['data-checksums', { encoding: 'UTF8' }],
        pg_hba: trust,
      },
      postgresql: {
        listen: member.pg.address,
        connect_address: member.pg.address,
        data_dir: member.pg.dataDir,
        bin_dir: PG_BINDIR,
        pgpass: join(this.dir, `${member.id}.pgpass`),
        // Loopback trusts everyone (as the example); Patroni still wants the users named.
        authentication: {
          superuser: { username: 'postgres', password: 'postgres' },
          replication: { username: 'replicator', password: 'replicator' },
          rewind: { username: 'postgres', password: 'postgres' },
        },
        pg_hba: trust,
        parameters: {
          unix_socket_directories: this.dir,
          // Outside the data directory: pg_rewind and pg_basebackup replace what is in it.
          logging_collector: 'on',
          log_directory: join(this.dir, `${member.id}.pglog`),
        },
      },
      tags: { nofailover: false, noloadbalance: false, clonefrom: false, nosync: false },
    };
  }

  /** Starts `member`'s Patroni, which starts (or rewinds, or copies) its PostgreSQL. */
  startPatroni(member: PatroniMember): void {
    const log = openSync(member.logFile, 'a');
    const [file, ...args] = asPostgres([PATRONI_BINARY, member.configFile]);
    const child = spawn(file, args, { stdio: ['ignore', log, log] });
    closeSync(log);
    member.process = child;
    member.exited = new Promise((resolve) => child.once('exit', () => resolve()));
  }

  /**
   * The whole node down at once, as a crashed host: Patroni stopped first (so it cannot react to
   * its PostgreSQL dying), then every PostgreSQL process stopped and killed, then Patroni killed.
   */
  async killNode(member: PatroniMember): Promise<void> {
    const child = member.process;
    child?.kill('SIGSTOP');
    await member.pg.killPostgres();
    child?.kill('SIGKILL');
    await member.exited;
    member.process = null;
  }

  /** The member whose REST API answers 200 on /primary, once one does. */
  async waitForPrimary(timeoutMs: number, except?: PatroniMember): Promise<PatroniMember> {
    let primary: PatroniMember | undefined;
    const found = await until(async () => {
      for (const m of this.members) if (m !== except && m.process && (await m.isPrimary())) primary = m;
      return primary !== undefined;
    }, timeoutMs);
    if (!found || !primary) throw new Error(`patroni: no primary within ${timeoutMs} ms\n${this.diagnostics()}`);
    return primary;
  }

  /** Resolves once every one of `standbys` streams from `primary` (pg_stat_replication). */
  async waitForStandbys(primary: PatroniMember, standbys: readonly PatroniMember[], timeoutMs: number): Promise<void> {
    const streaming = await until(async () => {
      const names = await primary.pg.streamingStandbys();
      return standbys.every((s) => names.includes(s.id));
    }, timeoutMs);
    if (!streaming) throw new Error(`patroni: ${standbys.map((s) => s.id).join(', ')} not streaming from ${primary.id} within ${timeoutMs} ms\n${this.diagnostics()}`);
  }

  /** POST /switchover {leader, candidate}: Patroni answers once the candidate leads (200). */
  async switchover(leader: PatroniMember, candidate: PatroniMember): Promise<void> {
    const response = await fetch(`${leader.restUrl}/switchover`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ leader: leader.id, candidate: candidate.id }),
      signal: AbortSignal.timeout(60000),
    });
    if (response.status !== 200) throw new Error(`patroni: switchover ${leader.id} → ${candidate.id}: ${response.status} ${await response.text()}`);
  }

  /** The end of every member's Patroni log, for a failure's message. */
  diagnostics(): string {
    return this.members
      .map((m) => {
        let log = '(no log)';
        try {
          log = execFileSync('tail', ['-n', '15', m.logFile], { encoding: 'utf8' });
        } catch {
          // not started
        }
        return `${m.id}'s Patroni log ends:\n${log}`;
      })
      .join('\n');
  }

  async stop(): Promise<void> {
    await Promise.all(
      this.members.map(async (m) => {
        m.process?.kill('SIGKILL');
        await Promise.all([m.exited, m.pg.killPostgres(false)]);
        m.process = null;
      }),
    );
    rmSync(this.dir, { recursive: true, force: true });
  }
}

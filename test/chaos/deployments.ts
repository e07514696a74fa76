/**
 * Where the chaos suite runs its sidecars: each backend on one server or on a 3-server cluster,
 * on loopback, started by the test harnesses. A deployment knows how to point a sidecar at one of
 * its servers (the chaos world puts a TCP proxy in between) and how to stop and start a server.
 */
import { chownSync, mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { ConsulCluster } from '../harness/consul.js';
import { EtcdCluster, EtcdServer, ensureEtcdInstalled } from '../harness/etcd.js';
import { ZookeeperEnsemble, ZookeeperServer, ensureZookeeperInstalled } from '../harness/zookeeper.js';

export const BACKENDS = ['local', 'etcd', 'zookeeper', 'consul'] as const;
export type BackendName = (typeof BACKENDS)[number];
export const TOPOLOGIES = ['single', 'cluster'] as const;
export type Topology = (typeof TOPOLOGIES)[number];

export interface ServerHandle {
  /** "127.0.0.1:PORT" where sidecars reach it. */
  readonly address: string;
  /** Stops the server; its data stays. */
  pause(): Promise<void>;
  /** Starts it again; resolves once it serves. */
  resume(): Promise<void>;
}

export interface Deployment {
  readonly backend: BackendName;
  readonly topology: Topology;
  /** --ttl given to the sidecars. */
  readonly ttlSeconds: number;
  /** The lease a sidecar's deadline is timed from: the ttl, on Consul the check TTL. */
  readonly leaseSeconds: number;
  /** None for the local backend. */
  readonly servers: readonly ServerHandle[];
  /** Flags that put a sidecar into `election`, reaching its server at `address` (null on local). */
  sidecarArgs(election: string, address: string | null): string[];
  /** Index in `servers` of the backend's own (Raft or Zab) leader. */
  leaderIndex(): Promise<number>;
  stop(): Promise<void>;
}

/** How many servers a deployment has, known before it starts. */
export function serverCount(backend: BackendName, topology: Topology): number {
  return backend === 'local' ? 0 : topology === 'single' ? 1 : 3;
}

const TTL_SECONDS = 2;
// Consul refuses session TTLs under 10 s; its 2 s health check is the lease there.
const CONSUL_TTL_SECONDS = 10;
const CONSUL_CHECK_TTL_SECONDS = 2;

export interface DeploymentOptions {
  /**
   * Who the sidecars run as, when not as the harness (root): the local backend's directory is
   * made theirs, since leaderd writes its lock and records there (PostgreSQL's sidecars run as
   * postgres). The servers of the other backends are reached over TCP and need nothing.
   */
  readonly owner?: { uid: number; gid: number };
}

export async function startDeployment(backend: BackendName, topology: Topology, options: DeploymentOptions = {}): Promise<Deployment> {
  const base = { backend, topology, ttlSeconds: TTL_SECONDS, leaseSeconds: TTL_SECONDS };
  const ttl = ['--ttl', String(TTL_SECONDS)];
  switch (backend) {
    case 'local': {
      if (topology === 'cluster') throw new Error('the local backend has no cluster');
      const dir = mkdtempSync(join(tmpdir(), 'leaderd-chaos-local-'));
      if (options.owner) chownSync(dir, options.owner.uid, options.owner.gid);
      return {
        ...base,
        servers: [],
        sidecarArgs: (election) => ['--backend', 'local', '--local-dir', dir, '--election', election, ...ttl],
        leaderIndex: async () => -1,
        stop: async () => undefined,
      };
    }
    case 'etcd': {
      ensureEtcdInstalled();
      const cluster = topology === 'cluster' ? await EtcdCluster.start() : null;
      const members = cluster ? cluster.members : [await EtcdServer.start()];
      return {
        ...base,
        servers: members.map((m) => ({ address: m.clientAddress, pause: () => m.pause(), resume: () => m.resume() })),
        sidecarArgs: (election, address) => ['--backend', 'etcd', '--etcd-endpoints', `http://${address}`, '--etcd-prefix', '/leaderd-chaos', '--election', election, ...ttl],
        leaderIndex: async () => (cluster ? cluster.leaderIndex() : 0),
        stop: async () => void (await Promise.all(members.map((m) => m.stop()))),
      };
    }
    case 'zookeeper': {
      ensureZookeeperInstalled();
      const ensemble = topology === 'cluster' ? await ZookeeperEnsemble.start() : null;
      const members = ensemble ? ensemble.members : [await ZookeeperServer.start()];
      return {
        ...base,
        servers: members.map((m) => ({ address: m.connectString, pause: () => m.pause(), resume: () => m.resume().then(() => m.waitServing()).then(() => undefined) })),
        sidecarArgs: (election, address) => ['--backend', 'zookeeper', '--zk-connect', address!, '--zk-prefix', '/leaderd-chaos', '--election', election, ...ttl],
        leaderIndex: async () => (ensemble ? ensemble.leader() : 0),
        stop: async () => void (await Promise.all(members.map((m) => m.stop()))),
      };
    }
    case 'consul': {
      const consulArgs = (election: string, address: string | null) => [
        '--backend', 'consul', '--consul-addr', `http://${address}`, '--election', election,
        '--ttl', String(CONSUL_TTL_SECONDS), '--consul-check-ttl', String(CONSUL_CHECK_TTL_SECONDS),
      ];
      const consul = { ...base, ttlSeconds: CONSUL_TTL_SECONDS, leaseSeconds: CONSUL_CHECK_TTL_SECONDS, sidecarArgs: consulArgs };
      // A single server, not a dev agent: a dev agent forgets its Raft log on restart, and with it
      // the indexes fencing tokens are made of.
      const cluster = await ConsulCluster.start(topology === 'single' ? 1 : 3);
      return {
        ...consul,
        servers: cluster.members.map((m, i) => ({ address: new URL(m.httpAddr).host, pause: () => cluster.pause(i), resume: () => cluster.resume(i) })),
        leaderIndex: () => cluster.leaderIndex(),
        stop: () => cluster.stop(),
      };
    }
  }
}

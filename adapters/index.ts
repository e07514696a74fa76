/**
 * The coordination services leaderd can campaign in. The core knows none of them; the CLI picks
 * one from this table. Only the chosen adapter is loaded: each brings its client library (gRPC
 * for etcd, a native addon for ZooKeeper), and a sidecar should pay in memory and start time for
 * the one it uses.
 */
import type { Backend } from '../src/backend.js';
import type { BackendRequirements, Config } from '../src/config.js';
import type { Logger } from '../src/log.js';

interface BackendEntry extends BackendRequirements {
  create(config: Config, log: Logger): Promise<Backend>;
}

export const BACKENDS: Readonly<Record<string, BackendEntry>> = {
  local: { minimumTtlSeconds: 1, create: async (config) => new (await import('./local.js')).LocalBackend(config.local) },
  // etcd raises shorter lease TTLs to about 1.5 × its election timeout (2 s with defaults).
  etcd: { minimumTtlSeconds: 2, wholeSecondTtl: true, create: async (config, log) => new (await import('./etcd.js')).EtcdBackend(config.etcd, log) },
  zookeeper: {
    // The server's real bounds (2 to 20 tickTimes) are checked when the session opens. Below
    // 1.5 s the margin argued next would be under DEADLINE_MARGIN_SECONDS.
    minimumTtlSeconds: 1.5,
    // A renewal (a sync) answered by a follower does not touch the session at the ensemble
    // leader, which expires sessions: the touch travels in the follower's next ping, and can be
    // lost with it. The session can then expire one ttl after the renewal before, ttl/3 earlier
    // than the contract says; stepping down at ttl/2 still leaves ttl/6. Above, refused.
    maximumRenewDeadlineFraction: 1 / 2,
    create: async (config) => new (await import('./zookeeper.js')).ZookeeperBackend(config.zookeeper),
  },
  consul: {
    // Consul refuses session TTLs below 10 s.
    minimumTtlSeconds: 10,
    create: async (config, log) => new (await import('./consul.js')).ConsulBackend({ ...config.consul, sessionTtlSeconds: config.ttlSeconds }, log),
  },
};

export function createBackend(config: Config, log: Logger): Promise<Backend> {
  const entry = BACKENDS[config.backend];
  if (!entry) throw new Error(`unknown backend ${config.backend}`);
  return entry.create(config, log);
}

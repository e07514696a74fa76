/**
 * The coordination services leaderd can campaign in. The core knows none of them; the CLI picks
 * one from this table.
 */
import type { Backend } from '../src/backend.js';
import type { BackendRequirements, Config } from '../src/config.js';
import { CONSUL_MINIMUM_TTL_SECONDS, ConsulBackend } from './consul.js';
import { ETCD_MINIMUM_TTL_SECONDS, EtcdBackend } from './etcd.js';
import { LocalBackend } from './local.js';
import { ZookeeperBackend } from './zookeeper.js';

interface BackendEntry extends BackendRequirements {
  create(config: Config): Backend;
}

export const BACKENDS: Readonly<Record<string, BackendEntry>> = {
  local: { minimumTtlSeconds: 1, create: (config) => new LocalBackend(config.local) },
  etcd: { minimumTtlSeconds: ETCD_MINIMUM_TTL_SECONDS, create: (config) => new EtcdBackend(config.etcd) },
  // ZooKeeper's real bounds are the server's (2 to 20 tickTimes): checked when the session opens.
  zookeeper: { minimumTtlSeconds: 1, create: (config) => new ZookeeperBackend(config.zookeeper) },
  consul: {
    minimumTtlSeconds: CONSUL_MINIMUM_TTL_SECONDS,
    create: (config) => new ConsulBackend({ ...config.consul, sessionTtlSeconds: config.ttlSeconds }),
  },
};

export function createBackend(config: Config): Backend {
  const entry = BACKENDS[config.backend];
  if (!entry) throw new Error(`unknown backend ${config.backend}`);
  return entry.create(config);
}

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
  zookeeper: {
    // The server's real bounds (2 to 20 tickTimes) are checked when the session opens.
    minimumTtlSeconds: 1,
    // A follower reports session activity to the ensemble leader a little later than it sees it:
    // stepping down at half the session timeout keeps a wide margin before the leader expires it.
    renewDeadlineFraction: 1 / 2,
    create: (config) => new ZookeeperBackend(config.zookeeper),
  },
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

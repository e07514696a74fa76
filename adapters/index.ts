/**
 * The coordination services leaderd can campaign in. The core knows none of them; the CLI picks
 * one from this table.
 */
import type { Backend } from '../src/backend.js';
import type { BackendRequirements, Config } from '../src/config.js';
import { ETCD_MINIMUM_TTL_SECONDS, EtcdBackend } from './etcd.js';
import { LocalBackend } from './local.js';

interface BackendEntry extends BackendRequirements {
  create(config: Config): Backend;
}

export const BACKENDS: Readonly<Record<string, BackendEntry>> = {
  local: { minimumTtlSeconds: 1, create: (config) => new LocalBackend(config.local) },
  etcd: { minimumTtlSeconds: ETCD_MINIMUM_TTL_SECONDS, create: (config) => new EtcdBackend(config.etcd) },
};

export function createBackend(config: Config): Backend {
  const entry = BACKENDS[config.backend];
  if (!entry) throw new Error(`unknown backend ${config.backend}`);
  return entry.create(config);
}

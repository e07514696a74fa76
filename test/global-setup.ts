/** Installs the servers the suite needs (coordination services, PostgreSQL) before any test runs. */
import { ensureConsulInstalled } from './harness/consul.js';
import { ensureEtcdInstalled } from './harness/etcd.js';
import { ensurePostgresInstalled } from './harness/postgres.js';
import { ensureZookeeperInstalled } from './harness/zookeeper.js';

export default function setup(): void {
  ensureEtcdInstalled();
  ensureConsulInstalled();
  ensureZookeeperInstalled();
  ensurePostgresInstalled();
}

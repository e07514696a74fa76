/** Installs the servers (coordination services, PostgreSQL, Prometheus) and the container and systemd tools the suite needs before any test runs. */
import { ensureConsulInstalled } from './harness/consul.js';
import { ensureEtcdInstalled } from './harness/etcd.js';
import { ensurePodmanInstalled } from './harness/podman.js';
import { ensurePostgresInstalled } from './harness/postgres.js';
import { ensurePrometheusInstalled } from './harness/prometheus.js';
import { ensureSystemdAnalyzeInstalled } from './harness/systemd.js';
import { ensureZookeeperInstalled } from './harness/zookeeper.js';

export default function setup(): void {
  ensureEtcdInstalled();
  ensureConsulInstalled();
  ensureZookeeperInstalled();
  ensurePrometheusInstalled();
  ensurePostgresInstalled();
  ensurePodmanInstalled();
  ensureSystemdAnalyzeInstalled();
}

/** Installs the coordination servers (and Prometheus) the suite needs before any test runs. */
import { ensureConsulInstalled } from './harness/consul.js';
import { ensureEtcdInstalled } from './harness/etcd.js';
import { ensurePrometheusInstalled } from './harness/prometheus.js';
import { ensureZookeeperInstalled } from './harness/zookeeper.js';

export default function setup(): void {
  ensureEtcdInstalled();
  ensureConsulInstalled();
  ensureZookeeperInstalled();
  ensurePrometheusInstalled();
}

/** Installs the coordination servers and container tools the suite needs before any test runs. */
import { ensureConsulInstalled } from './harness/consul.js';
import { ensureEtcdInstalled } from './harness/etcd.js';
import { ensurePodmanInstalled } from './harness/podman.js';
import { ensureZookeeperInstalled } from './harness/zookeeper.js';

export default function setup(): void {
  ensureEtcdInstalled();
  ensureConsulInstalled();
  ensureZookeeperInstalled();
  ensurePodmanInstalled();
}

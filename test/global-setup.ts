/** Installs the coordination servers the suite needs before any test runs. */
import { ensureConsulInstalled } from './harness/consul.js';
import { ensureEtcdInstalled } from './harness/etcd.js';

export default function setup(): void {
  ensureEtcdInstalled();
  ensureConsulInstalled();
}

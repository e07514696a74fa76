/** Installs the coordination servers the suite needs (Debian packages) before any test runs. */
import { ensureEtcdInstalled } from './harness/etcd.js';

export default function setup(): void {
  ensureEtcdInstalled();
}

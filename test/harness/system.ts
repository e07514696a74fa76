/** What the harnesses ask of the machine: whether a program runs, and Debian packages. */
import { execFileSync } from 'node:child_process';
import { existsSync, rmSync, writeFileSync } from 'node:fs';

/** True when `path` runs and exits 0 with `args` (a version query). */
export function runs(path: string, args: readonly string[]): boolean {
  try {
    execFileSync(path, [...args], { stdio: 'ignore' });
    return true;
  } catch {
    return false;
  }
}

/** Whether this process has brought apt's package lists up to date (once is enough for a run). */
let updated = false;

/**
 * Installs Debian packages (the test harness runs as root, with Debian's mirrors reachable). No
 * service they bring starts (PostgreSQL's own cluster on 5432, Prometheus on 9090): tests start
 * their own servers on loopback ports, and leave the machine's alone. policy-rc.d is Debian's
 * switch for that.
 */
export function aptInstall(...pkgs: readonly string[]): void {
  const env = { ...process.env, DEBIAN_FRONTEND: 'noninteractive' };
  if (!updated) execFileSync('apt-get', ['update', '-qq'], { stdio: 'inherit', env });
  updated = true;
  const policy = '/usr/sbin/policy-rc.d';
  const ours = !existsSync(policy);
  if (ours) writeFileSync(policy, '#!/bin/sh\n# leaderd tests: no service starts while packages are installed\nexit 101\n', { mode: 0o755 });
  try {
    execFileSync('apt-get', ['install', '-y', '-qq', '--no-install-recommends', ...pkgs], { stdio: 'inherit', env });
  } finally {
    if (ours) rmSync(policy, { force: true });
  }
}

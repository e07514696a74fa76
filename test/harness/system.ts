/** What the harnesses ask of the machine: whether a program runs, and Debian packages. */
import { execFileSync } from 'node:child_process';

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

/** Installs Debian packages (the test harness runs as root, with Debian's mirrors reachable). */
export function aptInstall(...pkgs: readonly string[]): void {
  const env = { ...process.env, DEBIAN_FRONTEND: 'noninteractive' };
  if (!updated) execFileSync('apt-get', ['update', '-qq'], { stdio: 'inherit', env });
  updated = true;
  execFileSync('apt-get', ['install', '-y', '-qq', '--no-install-recommends', ...pkgs], { stdio: 'inherit', env });
}

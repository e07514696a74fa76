/** systemd-analyze, to check unit files offline (no systemd needs to run on the machine). */
import { aptInstall, runs } from './system.js';

export const SYSTEMD_ANALYZE = '/usr/bin/systemd-analyze';

/** Installs Debian's systemd package when systemd-analyze is missing (the harness runs as root). */
export function ensureSystemdAnalyzeInstalled(): void {
  if (runs(SYSTEMD_ANALYZE, ['--version'])) return;
  aptInstall('systemd');
  if (!runs(SYSTEMD_ANALYZE, ['--version'])) throw new Error(`installing systemd did not provide ${SYSTEMD_ANALYZE}`);
}

/**
 * What the chaos run and the benchmark share: percentiles, dates, the machine they ran on, and
 * where their reports go.
 */
import { mkdirSync, writeFileSync } from 'node:fs';
import { cpus, totalmem, release } from 'node:os';

/** Nearest-rank percentile of ascending `sorted`; undefined when empty. */
export function percentile(sorted: readonly number[], p: number): number | undefined {
  if (sorted.length === 0) return undefined;
  return sorted[Math.min(sorted.length - 1, Math.max(0, Math.ceil((p / 100) * sorted.length) - 1))];
}

export function today(): string {
  return new Date().toISOString().slice(0, 10);
}

/**
 * Writes a report as `name`: into bench/results/ when the run was whole, into bench/tmp/ (which
 * git ignores) when it was narrowed to some sections, backends, faults or topologies, so that a
 * partial run never replaces a result. Returns the file's path.
 */
export function writeReport(name: string, text: string, whole: boolean): string {
  const folder = new URL(whole ? './results/' : './tmp/', import.meta.url);
  mkdirSync(folder, { recursive: true });
  const file = new URL(name, folder);
  writeFileSync(file, text);
  return file.pathname;
}

/** One line: CPU model and count, memory, kernel, Node. */
export function machine(): string {
  const cpu = cpus();
  return `${cpu.length} × ${cpu[0]?.model.trim() ?? 'unknown CPU'}, ${Math.round(totalmem() / 2 ** 30)} GiB, Linux ${release()}, Node ${process.version}`;
}

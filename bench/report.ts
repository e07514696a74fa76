/** What the chaos run and the benchmark share: percentiles, dates, and the machine they ran on. */
import { cpus, totalmem, release } from 'node:os';

/** Nearest-rank percentile of ascending `sorted`; undefined when empty. */
export function percentile(sorted: readonly number[], p: number): number | undefined {
  if (sorted.length === 0) return undefined;
  return sorted[Math.min(sorted.length - 1, Math.max(0, Math.ceil((p / 100) * sorted.length) - 1))];
}

export function today(): string {
  return new Date().toISOString().slice(0, 10);
}

/** One line: CPU model and count, memory, kernel, Node. */
export function machine(): string {
  const cpu = cpus();
  return `${cpu.length} × ${cpu[0]?.model.trim() ?? 'unknown CPU'}, ${Math.round(totalmem() / 2 ** 30)} GiB, Linux ${release()}, Node ${process.version}`;
}

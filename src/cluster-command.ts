/**
 * `leaderd cluster [--http HOST:PORT]`: the members of the election as one sidecar sees them
 * (GET /cluster), as a table, the leader marked: Patroni's `patronictl list` for leaderd.
 */
import { parseArgs } from 'node:util';
import { envName } from './config.js';
import { errorMessage } from './elector.js';
import type { ClusterView } from './member.js';

const TIMEOUT_MS = 5000;

/** Prints the table; returns the exit code (1: no answer, 2: bad flags). */
export async function clusterCommand(argv: readonly string[], env: NodeJS.ProcessEnv): Promise<number> {
  let http: string;
  try {
    const { values } = parseArgs({ args: [...argv], options: { http: { type: 'string' } }, strict: true, allowPositionals: false });
    http = values.http ?? env[envName('http')] ?? '127.0.0.1:7070';
  } catch (error) {
    process.stderr.write(`leaderd cluster: ${errorMessage(error).split('\n')[0]} (usage: leaderd cluster [--http HOST:PORT])\n`);
    return 2;
  }
  // A sidecar listening on every address answers on loopback too.
  const target = http.replace(/^(0\.0\.0\.0|\[::\]):/, '127.0.0.1:');
  let view: ClusterView;
  try {
    const response = await fetch(`http://${target}/cluster`, { signal: AbortSignal.timeout(TIMEOUT_MS) });
    if (!response.ok) throw new Error(`it answered ${response.status}`);
    view = (await response.json()) as ClusterView;
  } catch (error) {
    process.stderr.write(`leaderd cluster: cannot read http://${target}/cluster: ${errorMessage(error)}\n`);
    return 1;
  }
  process.stdout.write(render(view));
  return 0;
}

export function render(view: ClusterView): string {
  const leader = view.leader;
  const header = ['', 'MEMBER', 'ADDRESS', 'ROLE', 'HEALTHY', 'ELIGIBLE', 'PRIORITY', 'POSITION', 'LAG', 'UPDATED'];
  const rows = view.members.map((m) => [
    leader?.id === m.id ? '*' : '',
    m.id,
    m.address,
    m.role,
    m.healthy ? 'yes' : 'no',
    m.eligible ? 'yes' : 'no',
    String(m.priority),
    m.position === null ? '-' : String(m.position),
    m.lag === null ? '-' : String(m.lag),
    m.updatedAt,
  ]);
  const widths = header.map((_, i) => Math.max(...[header, ...rows].map((row) => row[i]!.length)));
  const line = (row: string[]) => `${row.map((cell, i) => cell.padEnd(widths[i]!)).join('  ').trimEnd()}\n`;
  const title = `election ${view.election}: ${leader ? `leader ${leader.id} (fencing token ${leader.fencingToken})` : 'no leader'}\n`;
  return title + line(header) + rows.map(line).join('');
}

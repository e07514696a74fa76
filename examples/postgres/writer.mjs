#!/usr/bin/env node
/**
 * node writer.mjs --sidecars URL[,URL...] [--acks FILE] [--interval MS]
 *
 * Commits numbered rows, one at a time, to whichever node leaderd says is primary, through
 * failovers, and records every acknowledged commit as a JSON line {"id","node","token","at"} in
 * FILE (default: stdout). After any failover, every acknowledged id must still be in `writes`.
 *
 * - Which node: the first sidecar (URL: its --http) whose GET /primary answers 200. Its leader's
 *   address is PostgreSQL's host:port (each sidecar's --address).
 * - Fencing: a row lands only on a node whose leaderd_fence holds the token its sidecar handed
 *   out (promote.sh records it there). A node not promoted for that term yet, or any more,
 *   refuses it, and the writer asks the sidecars again.
 * - Each id is tried once. A commit whose answer never came (the server died, or 10 s passed) may
 *   or may not have landed: it is not acknowledged, and the next row takes the next id. Ids start
 *   after the largest already in the table.
 */
import { appendFileSync } from 'node:fs';
import { setTimeout as sleep } from 'node:timers/promises';
import { parseArgs } from 'node:util';
import pg from 'pg';

const USAGE = 'usage: node writer.mjs --sidecars URL[,URL...] [--acks FILE] [--interval MS]';

function fail(problem) {
  process.stderr.write(`writer: ${problem} (${USAGE})\n`);
  process.exit(2);
}

let options;
try {
  options = parseArgs({ options: { sidecars: { type: 'string' }, acks: { type: 'string' }, interval: { type: 'string', default: '10' } } }).values;
} catch (error) {
  fail(error.message);
}
const sidecars = (options.sidecars ?? '').split(',').filter(Boolean);
if (sidecars.length === 0) fail('--sidecars is required');
const intervalMs = Number(options.interval);
if (!Number.isInteger(intervalMs) || intervalMs < 0) fail(`--interval: not a whole number of milliseconds: ${options.interval}`);

const acknowledge = options.acks ? (line) => appendFileSync(options.acks, `${line}\n`) : (line) => process.stdout.write(`${line}\n`);

// One line on stderr each time the writer's situation changes, not one per attempt.
let situation = '';
function report(text) {
  if (text !== situation) process.stderr.write(`writer: ${text}\n`);
  situation = text;
}

/** The node a sidecar says is primary: {id, host, port, token}, or null while none does. */
async function findPrimary() {
  for (const url of sidecars) {
    try {
      const response = await fetch(`${url}/primary`, { signal: AbortSignal.timeout(1000) });
      if (response.status !== 200) continue;
      const { id, leader, fencingToken } = await response.json();
      const colon = leader.address.lastIndexOf(':');
      return { id, host: leader.address.slice(0, colon), port: Number(leader.address.slice(colon + 1)), token: fencingToken };
    } catch {
      // That sidecar is down or slow: ask the next.
    }
  }
  return null;
}

let stopping = false;
for (const signal of ['SIGINT', 'SIGTERM']) process.on(signal, () => (stopping = true));

let nextId = 1;
let acknowledged = 0;
while (!stopping) {
  const primary = await findPrimary();
  if (!primary) {
    report('no primary');
    await sleep(20);
    continue;
  }
  // No statement_timeout: a commit cancelled while it waits for a synchronous standby is reported
  // as committed (with a warning), though no standby has it. The client gives up on its own.
  const client = new pg.Client({ host: primary.host, port: primary.port, user: 'postgres', database: 'postgres', connectionTimeoutMillis: 2000, query_timeout: 10000 });
  client.on('error', () => {}); // a connection lost between two commits fails the next one
  try {
    await client.connect();
    // Carry on after the rows already there (another writer's, or this one's before a restart).
    const { rows } = await client.query('select coalesce(max(id), 0)::int as last from writes');
    nextId = Math.max(nextId, rows[0].last + 1);
    while (!stopping) {
      const id = nextId++;
      const insert = await client.query('insert into writes (id, token) select $1, $2 from leaderd_fence where token = $2', [id, primary.token]);
      if (insert.rowCount !== 1) {
        report(`${primary.id} does not hold fencing token ${primary.token}`);
        break;
      }
      acknowledge(JSON.stringify({ id, node: primary.id, token: primary.token, at: Date.now() }));
      acknowledged++;
      report(`writing to ${primary.id} (fencing token ${primary.token})`);
      if (intervalMs > 0) await sleep(intervalMs);
    }
  } catch (error) {
    report(`${primary.id}: ${error.message}`);
  } finally {
    // A server that stopped answering may never answer the goodbye either.
    await Promise.race([client.end().catch(() => {}), sleep(1000)]);
  }
  if (!stopping) await sleep(20);
}
process.stderr.write(`writer: ${acknowledged} commits acknowledged, ids up to ${nextId - 1} tried\n`);

#!/usr/bin/env node
/**
 * node bench/pg-writer.mjs --hosts ID=HOST:PORT[,...] --acks FILE [--interval MS]
 *
 * The benchmark's writer, the same for leaderd and Patroni: it knows nothing of either, only the
 * PostgreSQL servers, as an application with a multi-host libpq string
 * (`host=a,b,c target_session_attrs=read-write`) does. It commits one numbered row of
 * `bench_writes` at a time, waits --interval ms (20) after each, and records every acknowledged
 * commit as a JSON line {"id","node","at"} in FILE; `at` is Date.now() when the answer arrived.
 *
 * The `pg` package has no multi-host strings, so this does what libpq does for
 * target_session_attrs=read-write itself: try the hosts in the order given, each with a 2 s
 * connect timeout (libpq's connect_timeout=2), and keep the first that is neither in recovery nor
 * read-only (libpq asks `transaction_read_only`; a standby is both). When a commit fails, the
 * connection is dropped and the search starts again from the first host, as a libpq client that
 * reconnects would. Each id is tried once; a commit whose answer never came is not acknowledged.
 */
import { appendFileSync } from 'node:fs';
import { setTimeout as sleep } from 'node:timers/promises';
import { parseArgs } from 'node:util';
import pg from 'pg';

const { values } = parseArgs({ options: { hosts: { type: 'string' }, acks: { type: 'string' }, interval: { type: 'string', default: '20' } } });
const hosts = (values.hosts ?? '').split(',').filter(Boolean).map((entry) => {
  const [id, address] = entry.split('=');
  const colon = address.lastIndexOf(':');
  return { id, host: address.slice(0, colon), port: Number(address.slice(colon + 1)) };
});
if (hosts.length === 0 || !values.acks) {
  process.stderr.write('usage: node bench/pg-writer.mjs --hosts ID=HOST:PORT[,...] --acks FILE [--interval MS]\n');
  process.exit(2);
}
const intervalMs = Number(values.interval);

let situation = '';
function report(text) {
  if (text !== situation) process.stderr.write(`pg-writer: ${text}\n`);
  situation = text;
}

async function close(client) {
  // A server that stopped answering may never answer the goodbye either.
  await Promise.race([client.end().catch(() => {}), sleep(1000)]);
}

/** The first host that takes writes, connected: {id, client}; null when none does. */
async function connectReadWrite() {
  for (const { id, host, port } of hosts) {
    const client = new pg.Client({ host, port, user: 'postgres', database: 'postgres', connectionTimeoutMillis: 2000, query_timeout: 10000 });
    client.on('error', () => {}); // a connection lost between two commits fails the next one
    try {
      await client.connect();
      const { rows } = await client.query(`select pg_is_in_recovery() or current_setting('transaction_read_only') = 'on' as read_only`);
      if (!rows[0].read_only) return { id, client };
    } catch {
      // down, starting, or shutting down: the next host
    }
    await close(client);
  }
  return null;
}

let stopping = false;
for (const signal of ['SIGINT', 'SIGTERM']) process.on(signal, () => (stopping = true));

let nextId = 1;
while (!stopping) {
  const target = await connectReadWrite();
  if (!target) {
    report('no read-write server');
    await sleep(20);
    continue;
  }
  const { id: node, client } = target;
  try {
    const { rows } = await client.query('select coalesce(max(id), 0)::int as last from bench_writes');
    nextId = Math.max(nextId, rows[0].last + 1);
    report(`writing to ${node}`);
    while (!stopping) {
      const id = nextId++;
      await client.query('insert into bench_writes (id) values ($1)', [id]);
      appendFileSync(values.acks, `${JSON.stringify({ id, node, at: Date.now() })}\n`);
      if (intervalMs > 0) await sleep(intervalMs);
    }
  } catch (error) {
    report(`${node}: ${error.message}`);
  } finally {
    await close(client);
  }
}

#!/usr/bin/env node
/**
 * node verify.mjs ACKS HOST:PORT: which commits writer.mjs saw acknowledged (ACKS, its --acks file)
 * are missing from the server at HOST:PORT. Exit 0 when none is, 1 when some are.
 */
import { readFileSync } from 'node:fs';
import pg from 'pg';

const [file, address] = process.argv.slice(2);
if (!file || !address?.includes(':')) {
  process.stderr.write('verify: usage: node verify.mjs ACKS HOST:PORT\n');
  process.exit(2);
}
let acks;
try {
  acks = readFileSync(file, 'utf8').split('\n').filter(Boolean).map((line) => JSON.parse(line));
} catch (error) {
  process.stderr.write(`verify: cannot read ${file}: ${error.message}\n`);
  process.exit(2);
}
const colon = address.lastIndexOf(':');
const client = new pg.Client({ host: address.slice(0, colon), port: Number(address.slice(colon + 1)), user: 'postgres', database: 'postgres' });
try {
  await client.connect();
  const { rows } = await client.query('select id from writes where id = any($1::bigint[])', [acks.map((a) => a.id)]);
  const present = new Set(rows.map((r) => Number(r.id)));
  const missing = acks.filter((a) => !present.has(a.id)).map((a) => a.id);
  console.log(`${acks.length} commits acknowledged, ${missing.length} missing on ${address}${missing.length ? `: ${missing.join(' ')}` : ''}`);
  process.exitCode = missing.length ? 1 : 0;
} catch (error) {
  process.stderr.write(`verify: ${address}: ${error.message}\n`);
  process.exitCode = 2;
} finally {
  await client.end().catch(() => {});
}

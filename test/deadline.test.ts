/**
 * The deadline is acted on when it passes, not at the next periodic check: the margin between a
 * primary's deadline and the earliest a successor can be granted the lease is a quarter second,
 * so the demote must not wait for a clock check that comes every 250 ms. And a node that is
 * alive keeps its lease until its demote hook has finished, however long that takes.
 */
import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { histogramCount, newElection, scratchFile, settled } from './conformance.js';
import { until } from './chaos/world.js';
import { EtcdServer } from './harness/etcd.js';
import { TcpProxy } from './harness/proxy.js';
import { Sidecar } from './harness/sidecar.js';

let etcd: EtcdServer;
let proxy: TcpProxy;

beforeAll(async () => {
  etcd = await EtcdServer.start();
  proxy = await TcpProxy.start(etcd.clientAddress);
});
afterAll(async () => {
  await proxy?.stop();
  await etcd?.stop();
});
afterEach(() => Sidecar.killAll());

describe('the lease deadline', () => {
  it('ends the term within a few milliseconds of the deadline, every time', async () => {
    const node = await Sidecar.start('deadline-timer', [
      '--backend', 'etcd', '--etcd-endpoints', `http://${proxy.address}`, '--etcd-prefix', '/leaderd-test',
      '--election', newElection(), '--ttl', '2',
    ]);
    // With a 250 ms periodic check alone, a deadline is noticed 0-250 ms late, evenly spread:
    // four rounds all under 100 ms would happen about once in 40 runs.
    const rounds = 4;
    const late: number[] = [];
    for (let round = 1; round <= rounds; round++) {
      await node.waitForRole('primary', 20000);
      // A node can lead before its campaign's own read has returned: cut it off only once the
      // campaign is complete, so that what ends the term is the deadline, not a failed campaign.
      const campaigned = async () => (await histogramCount(node, 'leaderd_backend_request_duration_seconds', { operation: 'campaign' })) >= round;
      expect(await until(campaigned, 10000)).toBe(true);
      proxy.blackhole();
      const ended = await node.waitForLog((l) => l.msg === 'session ended' && l.reason === 'lease deadline passed', 10000, 'deadline', round);
      proxy.heal();
      late.push(ended.lateMs as number);
    }
    for (const ms of late) expect(ms).toBeLessThan(100);
  });
});

const TIMED_HOOK = fileURLToPath(new URL('./fixtures/timed-hook.mjs', import.meta.url));

describe('shutdown', () => {
  it('keeps the lease while a demote hook longer than the ttl runs: the successor is promoted after it has finished', async () => {
    const election = newElection();
    const log = scratchFile('slow-demote');
    const hook = (delayMs: number) => `${process.execPath} ${TIMED_HOOK} ${log} ${delayMs}`;
    const args = [
      '--backend', 'etcd', '--etcd-endpoints', etcd.clientUrl, '--etcd-prefix', '/leaderd-test', '--election', election, '--ttl', '2',
      '--on-promote', hook(0), '--on-demote', hook(3000), '--hook-timeout', '10',
    ];
    const group = await Promise.all(['a', 'b'].map((n) => Sidecar.start(`shutdown-${n}`, args)));
    const before = await settled(group, 20000);
    await before.primary.waitForLog((l) => l.msg === 'hook succeeded' && l.hook === 'promote', 10000, 'promote hook');
    const exit = before.primary.stop();
    const successor = before.replicas[0]!;
    await successor.waitForLog((l) => l.msg === 'hook succeeded' && l.hook === 'promote', 20000, 'promote of the successor');
    expect(await exit).toEqual({ code: 0, signal: null });

    const records = readFileSync(log, 'utf8').trim().split('\n').map((line) => JSON.parse(line) as { event: string; id: string; done: boolean; at: number });
    const demoteDone = records.find((r) => r.id === before.primary.id && r.event === 'demote' && r.done)!;
    const promoted = records.find((r) => r.id === successor.id && r.event === 'promote' && !r.done)!;
    expect(demoteDone).toBeDefined();
    expect(promoted.at).toBeGreaterThan(demoteDone.at);
    expect(before.primary.logs.some((l) => l.msg === 'session ended')).toBe(false);
  });
});

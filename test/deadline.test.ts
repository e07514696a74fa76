/**
 * The deadline is acted on when it passes, not at the next periodic check: the margin between a
 * primary's deadline and the earliest a successor can be granted the lease is a quarter second,
 * so the demote must not wait for a clock check that comes every 250 ms.
 */
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { histogramCount, newElection } from './conformance.js';
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

/**
 * Failures that repeat back off: an unreachable backend is logged less and less often, saying how
 * many lines were left out and why it fails; a promote hook that keeps failing keeps its node out
 * of the race longer each time. Real sidecars; the unreachable backend is a closed loopback port.
 */
import { createServer } from 'node:net';
import { afterEach, describe, expect, it } from 'vitest';
import { newElection, scratchFile } from './conformance.js';
import { until } from './chaos/world.js';
import { reopenDelayMs } from '../src/backoff.js';
import { Sidecar, type LogLine } from './harness/sidecar.js';

/** A loopback port nothing listens on: connections to it are refused at once. */
async function closedPort(): Promise<number> {
  const server = createServer().listen(0, '127.0.0.1');
  await new Promise((resolve) => server.once('listening', resolve));
  const { port } = server.address() as { port: number };
  await new Promise((resolve) => server.close(resolve));
  return port;
}

async function gauge(node: Sidecar, name: string): Promise<number> {
  const text = await (await node.fetch('/metrics')).text();
  return Number(new RegExp(`^${name} (\\S+)$`, 'm').exec(text)?.[1] ?? NaN);
}

describe('backing off', () => {
  afterEach(() => Sidecar.killAll());

  it('an unreachable backend is logged less and less often, with the count left out and the cause', async () => {
    const node = await Sidecar.start('backoff-unreachable', ['--backend', 'consul', '--consul-addr', `http://127.0.0.1:${await closedPort()}`, '--election', newElection()]);
    const retrying = (l: LogLine) => l.msg === 'cannot open a session; retrying';
    // The tries come about 1 s, 2 s, 4 s apart; the lines at least 1 s, then 2 s apart: the
    // third try falls within the second line's 2 s and is left out.
    await node.waitForLog((l) => retrying(l) && Number(l.suppressed) >= 1, 20000, 'a line with suppressed retries');
    const lines = node.logs.filter(retrying);
    expect(lines[0]).not.toHaveProperty('failures');
    for (const line of lines) expect(line.err).toMatch(/ECONNREFUSED/);
    for (let k = 1; k < lines.length; k++) {
      const before = k === 1 ? 1 : Number(lines[k - 1]!.failures);
      expect(lines[k]!.failures).toBe(before + Number(lines[k]!.suppressed) + 1);
    }
    expect(await node.stop()).toEqual({ code: 0, signal: null });
  });

  it('tries at opening a session come further and further apart, up to half the lease', async () => {
    // A backend that accepts every connection and drops it at once: each try shows as a connection
    // (the Consul client makes one or two at a time, at once).
    const tries: number[] = [];
    const dropper = createServer((socket) => {
      const at = performance.now();
      if (tries.length === 0 || at - tries.at(-1)! > 300) tries.push(at);
      socket.destroy();
    }).listen(0, '127.0.0.1');
    await new Promise((resolve) => dropper.once('listening', resolve));
    try {
      const { port } = dropper.address() as { port: number };
      const lease = ['--ttl', '10', '--consul-check-ttl', '6'];
      const node = await Sidecar.start('backoff-reopen', ['--backend', 'consul', '--consul-addr', `http://127.0.0.1:${port}`, '--election', newElection(), ...lease]);
      const sixTries = await until(() => tries.length >= 6, 30000);
      expect(sixTries).toBe(true);
      // 1 s (the renew pace, at most 1 s), then doubling up to 3 s (half the 6 s lease), each up
      // to a quarter shorter at random; a loaded machine may add to each, never take away. Without
      // the cap the last two would be 6-8 s and 12-16 s.
      const gaps = tries.slice(1, 6).map((at, i) => (at - tries[i]!) / 1000);
      const nominal = [1, 2, 3, 3, 3];
      gaps.forEach((gap, i) => {
        const said = `try ${i + 2} came ${gap} s after the one before: ${gaps.join(', ')}`;
        expect(gap, said).toBeGreaterThanOrEqual(nominal[i]! * 0.75 - 0.05);
        expect(gap, said).toBeLessThanOrEqual(nominal[i]! + 1.5);
      });
      // Meanwhile the loop came round within every lease: the sidecar stayed alive.
      expect((await node.fetch('/liveness')).status).toBe(200);
      expect(await node.stop()).toEqual({ code: 0, signal: null });
    } finally {
      dropper.close();
    }
  });

  it('the wait before the next try: doubling from the renew pace, capped at half the lease (at most 5 s), up to a quarter less at random', () => {
    const waits = (leaseMs: number, random: number) => [1, 2, 3, 4, 5, 30].map((failures) => reopenDelayMs(1000, failures, leaseMs, () => random));
    expect(waits(60000, 0)).toEqual([1000, 2000, 4000, 5000, 5000, 5000]);
    expect(waits(6000, 0)).toEqual([1000, 2000, 3000, 3000, 3000, 3000]);
    expect(waits(6000, 1)).toEqual([750, 1500, 2250, 2250, 2250, 2250]);
    // A lease so short that half of it is below the renew pace: the renew pace, never less.
    expect(reopenDelayMs(1000, 5, 1500, () => 0)).toBe(1000);
  });

  it('a promote hook that keeps failing doubles the hold-off each time, until another node leads', async () => {
    const dir = scratchFile('dir');
    const election = newElection();
    const common = ['--local-dir', dir, '--election', election, '--ttl', '1'];
    const failing = await Sidecar.start('backoff-promote', [...common, '--on-promote', 'false']);
    const resigned = (l: LogLine) => l.msg === 'resigned: out of the race';
    await failing.waitForLog(resigned, 20000, 'a third resignation', 3);
    expect(failing.logs.filter(resigned).map((l) => l.holdOffSeconds)).toEqual([1, 2, 4]);
    // And it did stay out that long: each time back in the race a hold-off after its resignation.
    const times = (msg: string) => failing.logs.filter((l) => l.msg === msg).map((l) => Date.parse(String(l.time)));
    const [out, back] = [times('resigned: out of the race'), times('back in the race')];
    expect(back.slice(0, 2).map((at, i) => at - out[i]! >= [1000, 2000][i]!)).toEqual([true, true]);
    expect(failing.logs.filter((l) => l.msg === 'the promote hook keeps failing: staying out of the race longer each time').map((l) => l.failuresInARow)).toEqual([2, 3]);
    expect(await gauge(failing, 'leaderd_promote_failures_in_a_row')).toBe(3);

    // A healthy node leads while the failing one sits out its 4 s: the run is over.
    const healthy = await Sidecar.start('backoff-healthy', common);
    await healthy.waitForRole('primary', 20000);
    await failing.waitForState((s) => s.leader?.id === healthy.id, 20000, 'the healthy leader');
    expect(await gauge(failing, 'leaderd_promote_failures_in_a_row')).toBe(0);
  });
});

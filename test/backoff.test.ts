/**
 * Failures that repeat back off: an unreachable backend is logged less and less often, saying how
 * many lines were left out and why it fails; a promote hook that keeps failing keeps its node out
 * of the race longer each time. Real sidecars; the unreachable backend is a closed loopback port.
 */
import { createServer } from 'node:net';
import { afterEach, describe, expect, it } from 'vitest';
import { newElection, scratchFile } from './conformance.js';
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
    // Retries every second; the lines come 1 s, then 2 s apart: the third leaves one out.
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

  it('a promote hook that keeps failing doubles the hold-off each time, until another node leads', async () => {
    const dir = scratchFile('dir');
    const election = newElection();
    const common = ['--local-dir', dir, '--election', election, '--ttl', '1'];
    const failing = await Sidecar.start('backoff-promote', [...common, '--on-promote', 'false']);
    const resigned = (l: LogLine) => l.msg === 'resigned: out of the race';
    await failing.waitForLog(resigned, 20000, 'a third resignation', 3);
    expect(failing.logs.filter(resigned).map((l) => l.holdOffSeconds)).toEqual([1, 2, 4]);
    expect(failing.logs.filter((l) => l.msg === 'the promote hook keeps failing: staying out of the race longer each time').map((l) => l.failuresInARow)).toEqual([2, 3]);
    expect(await gauge(failing, 'leaderd_promote_failures_in_a_row')).toBe(3);

    // A healthy node leads while the failing one sits out its 4 s: the run is over.
    const healthy = await Sidecar.start('backoff-healthy', common);
    await healthy.waitForRole('primary', 20000);
    await failing.waitForState((s) => s.leader?.id === healthy.id, 20000, 'the healthy leader');
    expect(await gauge(failing, 'leaderd_promote_failures_in_a_row')).toBe(0);
  });
});

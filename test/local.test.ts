import { mkdtempSync, readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { fileURLToPath } from 'node:url';
import { conformance, newElection, scratchFile, settled } from './conformance.js';
import { Sidecar } from './harness/sidecar.js';

const dir = mkdtempSync(join(tmpdir(), 'leaderd-local-'));
const ttlSeconds = 2;
const args = (election: string) => ['--backend', 'local', '--local-dir', dir, '--election', election, '--ttl', String(ttlSeconds)];

conformance({ name: 'local', leaseSeconds: ttlSeconds, args });

describe('local: backend specifics', () => {
  afterEach(() => Sidecar.killAll());

  it('a crashed leader is replaced at once: its process is gone, so nobody waits for the ttl', async () => {
    const election = newElection();
    const group = await Promise.all(['a', 'b'].map((n) => Sidecar.start(`local-${n}`, args(election))));
    const { primary, replicas } = await settled(group, 10000);
    const killedAt = performance.now();
    primary.signal('SIGKILL');
    await primary.exited;
    await replicas[0]!.waitForRole('primary', ttlSeconds * 1000 + 3000);
    expect(performance.now() - killedAt).toBeLessThan((ttlSeconds * 1000) / 2);
  });

  it('a promote hook that overruns --hook-timeout is killed (SIGTERM, then SIGKILL) and counts as failed', async () => {
    const pidFile = scratchFile('hang-pid');
    const hang = fileURLToPath(new URL('./fixtures/hang-hook.mjs', import.meta.url));
    const node = await Sidecar.start('local-hang', [
      ...args(newElection()),
      '--on-promote', `${process.execPath} ${hang} ${pidFile}`,
      '--hook-timeout', '0.5',
    ]);
    const failed = await node.waitForLog((l) => l.msg === 'hook failed' && l.hook === 'promote', 10000, 'failed promote');
    expect(failed.err).toBe('timed out after 0.5 s');
    expect(node.logs.some((l) => l.msg === 'hook output' && l.line === 'ignoring SIGTERM')).toBe(true);
    const pid = Number(readFileSync(pidFile, 'utf8'));
    expect(() => process.kill(pid, 0)).toThrow(/ESRCH/);
    await node.waitForLog((l) => l.msg === 'resigned: out of the race', 5000, 'resignation');
  });

  it('a promote hook that leaves a background process holding its output still completes at once', async () => {
    const node = await Sidecar.start('local-daemon', [
      ...args(newElection()),
      '--on-promote', `/bin/sh -c "sleep 5 & echo started"`,
      '--hook-timeout', '20',
    ]);
    const done = await node.waitForLog((l) => l.hook === 'promote' && (l.msg === 'hook succeeded' || l.msg === 'hook failed'), 10000, 'promote hook result');
    expect(done.msg).toBe('hook succeeded');
    expect(done.seconds as number).toBeLessThan(2);
    expect(node.logs.some((l) => l.msg === 'hook output' && l.line === 'started')).toBe(true);
  });

  it('elections in the same directory are independent', async () => {
    const [one, two] = [newElection(), newElection()];
    const a = await Sidecar.start('local-one', args(one));
    const b = await Sidecar.start('local-two', args(two));
    await a.waitForRole('primary', 10000);
    await b.waitForRole('primary', 10000);
  });
});

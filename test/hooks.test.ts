/**
 * Hook delivery rules that the conformance suite does not cover: which targets still run when one
 * fails, stopping a hook's whole process group, credentials in --hook-url, and what a hook command
 * inherits. All on the local backend; the hook machinery does not depend on the backend.
 */
import { existsSync, mkdtempSync, readdirSync, readFileSync, rmdirSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterEach, describe, expect, it } from 'vitest';
import { newElection, sample, scrape } from './conformance.js';
import { startHookRecorder, type HookRecorder } from './fixtures/hook-recorder.js';
import { freePort } from './harness/ports.js';
import { Sidecar } from './harness/sidecar.js';
import { until } from './chaos/world.js';

const dir = mkdtempSync(join(tmpdir(), 'leaderd-hooks-'));
const args = (ttlSeconds = 2, election = newElection()) => ['--backend', 'local', '--local-dir', dir, '--election', election, '--ttl', String(ttlSeconds)];
const HANG_HOOK = fileURLToPath(new URL('./fixtures/hang-hook.mjs', import.meta.url));
const FROZEN_HOOK = fileURLToPath(new URL('./fixtures/frozen-hook.sh', import.meta.url));
const FLAKY_HOOK = fileURLToPath(new URL('./fixtures/flaky-hook.sh', import.meta.url));
const TERM_IGNORING_HOOK = `/bin/sh ${fileURLToPath(new URL('./fixtures/term-ignoring-hook.sh', import.meta.url))}`;

const sidecars: Sidecar[] = [];
const recorders: HookRecorder[] = [];

async function start(id: string, extra: string[], ttlSeconds?: number, election?: string): Promise<Sidecar> {
  const sidecar = await Sidecar.start(id, [...args(ttlSeconds, election), ...extra]);
  sidecars.push(sidecar);
  return sidecar;
}

async function recorder(status = 200): Promise<HookRecorder> {
  const started = await startHookRecorder(status);
  recorders.push(started);
  return started;
}

/** The PID a term-ignoring-hook.sh run printed after `label` ("hook" is also its process group). */
async function printedPid(sidecar: Sidecar, label: 'hook' | 'child'): Promise<number> {
  const pattern = new RegExp(`^${label} (\\d+)`);
  const line = await sidecar.waitForLog((l) => l.msg === 'hook output' && pattern.test(String(l.line)), 10000, `${label} pid`);
  return Number(pattern.exec(String(line.line))![1]);
}

/**
 * The state letter of a process, from /proc; null once it is gone. An exited process nobody has
 * reaped yet (Z) is dead too: orphans are reparented to PID 1, which need not reap them.
 */
function processState(pid: number): string | null {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    // "pid (comm) state ppid pgrp ...": comm may hold spaces, so read after its closing parenthesis.
    return stat.slice(stat.lastIndexOf(')') + 2).split(' ')[0]!;
  } catch {
    return null;
  }
}

function isAlive(pid: number): boolean {
  const state = processState(pid);
  return state !== null && state !== 'Z' && state !== 'X';
}

/** The processes of group `pgid` that are still alive. */
function liveMembers(pgid: number): number[] {
  const members: number[] = [];
  for (const entry of readdirSync('/proc')) {
    if (!/^\d+$/.test(entry)) continue;
    try {
      const stat = readFileSync(`/proc/${entry}/stat`, 'utf8');
      const [, , pgrp] = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
      if (Number(pgrp) === pgid && isAlive(Number(entry))) members.push(Number(entry));
    } catch {
      // gone meanwhile
    }
  }
  return members;
}

/** Everything leaderd wrote. */
function output(sidecar: Sidecar): string {
  return JSON.stringify(sidecar.logs) + sidecar.stderr;
}

afterEach(async () => {
  await Sidecar.killAll();
  // Whatever a failing run left behind, so it cannot disturb the next test.
  for (const sidecar of sidecars.splice(0)) {
    for (const line of sidecar.logs) {
      const pid = /^(?:hook|child) (\d+)/.exec(String(line.line ?? ''))?.[1];
      if (line.msg !== 'hook output' || !pid) continue;
      for (const target of [-Number(pid), Number(pid)]) {
        try {
          process.kill(target, 'SIGKILL');
        } catch {
          // already gone
        }
      }
    }
  }
  await Promise.all(recorders.splice(0).map((r) => r.close()));
});

describe('hooks: every target of a demote or leader-change runs', () => {
  it('a failed demote command does not keep the demote from the hook URL', async () => {
    const hooks = await recorder();
    const node = await start('hooks-demote', ['--on-demote', 'false', '--hook-url', hooks.url]);
    await hooks.waitFor((r) => r.body.event === 'promote', 10000, 'promote');
    expect((await node.stop()).code).toBe(0);

    expect(hooks.events()).toEqual(['leader-change', 'promote', 'demote']);
    const failed = node.logs.filter((l) => l.msg === 'hook failed');
    expect(failed.map((l) => [l.hook, l.target, l.err])).toEqual([['demote', 'command', 'exited with status 1']]);
  });

  it('a failed promote command stops its POST; demote still reaches both targets and counts as one failed run', async () => {
    const hooks = await recorder(500);
    // A ttl of 10 s, so the node stays out of the race (one ttl) until the counts are read.
    const node = await start(
      'hooks-promote',
      ['--on-promote', 'false', '--on-demote', 'false', '--on-leader-change', 'false', '--hook-url', hooks.url],
      10,
    );
    await hooks.waitFor((r) => r.body.event === 'demote', 15000, 'demote after the failed promote');
    await node.waitForLog((l) => l.msg === 'hook failed' && l.hook === 'demote' && l.target === 'url', 10000, 'demote POST failure');

    expect(hooks.events()).toEqual(['leader-change', 'demote']);
    const failures = (event: string) => node.logs.filter((l) => l.msg === 'hook failed' && l.hook === event).map((l) => l.target);
    expect(failures('promote')).toEqual(['command']);
    expect(failures('demote')).toEqual(['command', 'url']);
    const metrics = await scrape(node);
    expect(sample(metrics, 'leaderd_hook_runs_total', { event: 'demote' })).toBe(1);
    expect(sample(metrics, 'leaderd_hook_failures_total', { event: 'demote' })).toBe(1);
  });
});

describe('hooks: a failed leader-change runs again', () => {
  it('after 1 s, then 2 s, until it succeeds, and not after', async () => {
    const election = newElection();
    const primary = await start('hooks-follow-a', [], 10, election);
    await primary.waitForRole('primary', 10000);
    const counter = join(dir, `leader-change-runs-${election}`);
    const replica = await start('hooks-follow-b', ['--on-leader-change', `/bin/sh ${FLAKY_HOOK} 2 ${counter}`], 10, election);
    await replica.waitForLog((l) => l.msg === 'hook succeeded' && l.hook === 'leader-change', 15000, 'a leader-change hook that succeeded');

    const runs = replica.logs.filter((l) => l.msg === 'hook output').map((l) => l.line);
    expect(runs).toEqual(['run 1 leader hooks-follow-a', 'run 2 leader hooks-follow-a', 'run 3 leader hooks-follow-a']);
    const retries = replica.logs.filter((l) => l.msg === 'the leader-change hook failed: running it again later');
    expect(retries.map((l) => [l.failuresInARow, l.retryInSeconds])).toEqual([[1, 1], [2, 2]]);
    // The runs came that far apart (the timer's own slack aside).
    const at = replica.logs.filter((l) => l.msg === 'hook output').map((l) => Date.parse(String(l.time)));
    expect(at[1]! - at[0]!).toBeGreaterThanOrEqual(900);
    expect(at[2]! - at[1]!).toBeGreaterThanOrEqual(1900);
    // Succeeded: it does not run again (the next retry would have come 4 s later).
    await new Promise((resolve) => setTimeout(resolve, 5000));
    expect(replica.logs.filter((l) => l.msg === 'hook output')).toHaveLength(3);
  });

  it('newer news cuts a slow leader-change that is running again short: the promote behind it starts at once', async () => {
    const election = newElection();
    const primary = await start('hooks-slow-a', [], 2, election);
    await primary.waitForRole('primary', 10000);
    const counter = join(dir, `leader-change-runs-${election}`);
    // Following the primary takes 5 s and fails, every time.
    const follow = `/bin/sh ${FLAKY_HOOK} 1000 ${counter} 5`;
    const replica = await start('hooks-slow-b', ['--on-leader-change', follow, '--on-promote', 'true'], 2, election);
    await replica.waitForLog((l) => l.msg === 'hook output' && String(l.line).startsWith('run 2 '), 15000, 'the leader-change running again');
    await primary.stop();
    const promoted = await replica.waitForLog((l) => l.msg === 'hook succeeded' && l.hook === 'promote', 15000, 'the promote hook');
    const leading = replica.logs.find((l) => l.msg === 'role: primary')!;
    // Not held up by the rest of the 5 s run.
    expect(Date.parse(String(promoted.time)) - Date.parse(String(leading.time))).toBeLessThan(2500);
    expect(replica.logs.filter((l) => l.msg === 'cutting the leader-change hook run again short').map((l) => l.reason)).toEqual(['newer news']);
  });

  it('newer news cancels the retry: a leader-change for a leader that has gone is not run again', async () => {
    const election = newElection();
    const primary = await start('hooks-stale-a', [], 2, election);
    await primary.waitForRole('primary', 10000);
    const counter = join(dir, `leader-change-runs-${election}`);
    // Fails every run: without newer news it would run again and again.
    const replica = await start('hooks-stale-b', ['--on-leader-change', `/bin/sh ${FLAKY_HOOK} 1000 ${counter}`], 2, election);
    await replica.waitForLog((l) => l.msg === 'the leader-change hook failed: running it again later', 10000, 'a first failure');
    // The primary goes before the retry is due (1 s): the replica takes over, and what it runs
    // next is about that, not the old leader again.
    await primary.stop();
    await replica.waitForRole('primary', 15000);
    await new Promise((resolve) => setTimeout(resolve, 3000));
    const told = replica.logs.filter((l) => l.msg === 'hook output').map((l) => String(l.line).replace(/^run \d+ /, ''));
    expect(told[0]).toBe('leader hooks-stale-a');
    expect(told.slice(1).every((l) => l === 'leader hooks-stale-b')).toBe(true);
  });
});

describe('hooks: a stopped hook is stopped with its whole process group', () => {
  it('after the timeout, a descendant that ignores SIGTERM is killed before the run is reported over', async () => {
    const node = await start('hooks-timeout', ['--on-promote', TERM_IGNORING_HOOK, '--hook-timeout', '2', '--promote-failure', 'ignore']);
    const group = await printedPid(node, 'hook');
    const child = await printedPid(node, 'child');
    const failed = await node.waitForLog((l) => l.msg === 'hook failed' && l.hook === 'promote', 20000, 'timed-out promote');
    // Checked the moment the failure is reported: the run must not be over while its group lives.
    expect(isAlive(child)).toBe(false);
    expect(liveMembers(group)).toEqual([]);
    expect(failed.err).toBe('timed out after 2 s');
  });

  it('shutdown during a promote hook leaves no process of its group behind', async () => {
    const node = await start('hooks-shutdown', ['--on-promote', TERM_IGNORING_HOOK, '--hook-timeout', '60']);
    const group = await printedPid(node, 'hook');
    const child = await printedPid(node, 'child');
    expect((await node.stop()).code).toBe(0);
    expect(isAlive(child)).toBe(false);
    expect(liveMembers(group)).toEqual([]);
    expect(node.logs.find((l) => l.msg === 'hook failed' && l.hook === 'promote')?.err).toBe('cancelled');
  });
});

describe('hooks: a promote cut short by a demote', () => {
  it('is killed at once, so the demote starts without waiting for a grace period', async () => {
    const node = await start('hooks-cut-short', ['--on-promote', TERM_IGNORING_HOOK, '--on-demote', 'true', '--hook-timeout', '60']);
    const child = await printedPid(node, 'child');
    const exit = node.stop();
    const shutdown = await node.waitForLog((l) => l.msg === 'shutting down', 10000, 'shutdown');
    const demoted = await node.waitForLog((l) => l.msg === 'hook succeeded' && l.hook === 'demote', 20000, 'demote');
    expect((await exit).code).toBe(0);
    expect(isAlive(child)).toBe(false);
    // The node's deadline may already have passed: its demote must not wait out the 5 s grace a
    // timed-out hook gets.
    expect(Date.parse(String(demoted.time)) - Date.parse(String(shutdown.time))).toBeLessThan(1500);
  });

  it('is killed at once when it had already timed out and was waiting out its grace period', async () => {
    const pidFile = join(dir, 'grace-pid');
    const node = await start('hooks-in-grace', [
      '--on-promote', `${process.execPath} ${HANG_HOOK} ${pidFile}`, '--on-demote', 'true', '--hook-timeout', '4', '--promote-failure', 'ignore',
    ]);
    // The promote timed out: SIGTERM went to its group, which ignores it, and a 4 s grace runs.
    await node.waitForLog((l) => l.msg === 'hook output' && l.line === 'ignoring SIGTERM', 20000, 'the timed-out promote');
    const exit = node.stop();
    const shutdown = await node.waitForLog((l) => l.msg === 'shutting down', 10000, 'shutdown');
    const demoted = await node.waitForLog((l) => l.msg === 'hook succeeded' && l.hook === 'demote', 20000, 'demote');
    expect((await exit).code).toBe(0);
    expect(isAlive(Number(readFileSync(pidFile, 'utf8')))).toBe(false);
    expect(Date.parse(String(demoted.time)) - Date.parse(String(shutdown.time))).toBeLessThan(1500);
  });
});

describe('hooks: a hook that cannot be killed', () => {
  const group = `leaderd-test-${process.pid}`;
  const freezer = `/sys/fs/cgroup/freezer/${group}`;
  afterEach(async () => {
    // Thaw, so that what the test froze can die (its SIGKILL is pending), then remove the group.
    if (!existsSync(freezer)) return;
    writeFileSync(join(freezer, 'freezer.state'), 'THAWED');
    const empty = () => readFileSync(join(freezer, 'cgroup.procs'), 'utf8').trim() === '';
    expect(await until(async () => empty(), 10000)).toBe(true);
    rmdirSync(freezer);
  });

  it('holds up neither the demote queue nor the shutdown past the timeout, the grace and a moment', async () => {
    expect(existsSync('/sys/fs/cgroup/freezer'), 'this test needs the cgroup-v1 freezer').toBe(true);
    const election = newElection();
    const node = await start('hooks-unkillable', ['--on-demote', `/bin/sh ${FROZEN_HOOK} ${group}`, '--hook-timeout', '2'], undefined, election);
    const successor = await start('hooks-unkillable-successor', [], undefined, election);
    await node.waitForRole('primary', 10000);
    const stoppedAt = performance.now();
    const exit = node.stop();
    await node.waitForLog((l) => l.msg === 'hook output' && /^frozen \d+$/.test(String(l.line)), 10000, 'the frozen demote');
    // Timeout 2 s, grace 2 s (the timeout, being shorter than 5 s), 1 s to die: then it is over.
    expect(await exit).toEqual({ code: 0, signal: null });
    expect(performance.now() - stoppedAt).toBeLessThan(10000);
    expect(node.logs.find((l) => l.msg === 'hook failed' && l.hook === 'demote')?.err).toBe('timed out after 2 s');
    await successor.waitForRole('primary', 10000);
  });
});

describe('hooks: credentials in --hook-url', () => {
  // The password is "p@ss:w0rd-7f3c", percent-encoded in the URL; the user is "hook user".
  const PASSWORD_PART = 'w0rd-7f3c';
  const credentials = 'hook%20user:p%40ss%3Aw0rd-7f3c';
  const basic = `Basic ${Buffer.from('hook user:p@ss:w0rd-7f3c').toString('base64')}`;
  const withCredentials = (port: number) => `http://${credentials}@127.0.0.1:${port}/hook`;

  it('are sent as Basic authorization, and never logged', async () => {
    const hooks = await recorder();
    const node = await start('hooks-auth', ['--hook-url', withCredentials(hooks.port)]);
    const promote = await hooks.waitFor((r) => r.body.event === 'promote', 10000, 'promote');
    expect(promote.authorization).toBe(basic);
    await node.waitForLog((l) => l.msg === 'hook succeeded' && l.hook === 'promote', 10000, 'promote hook');
    expect((await node.stop()).code).toBe(0);

    expect(hooks.events()).toEqual(['leader-change', 'promote', 'demote']);
    expect(hooks.received.every((r) => r.authorization === basic)).toBe(true);
    expect(output(node)).not.toContain(PASSWORD_PART);
    expect(output(node)).not.toContain(basic.slice('Basic '.length));
  });

  it('are not logged when the hook URL fails, whether it answers an error or cannot be reached', async () => {
    const failing = await recorder(500);
    const unreachable = await freePort();
    // A query may carry a token too: logs show it as "?…".
    const QUERY_PART = 'q-5e1d';
    const answers500 = await start('hooks-auth-500', ['--hook-url', `${withCredentials(failing.port)}?token=${QUERY_PART}`]);
    const refuses = await start('hooks-auth-refused', ['--hook-url', `${withCredentials(unreachable)}?token=${QUERY_PART}`]);
    for (const node of [answers500, refuses]) {
      // A promote and then the demote of the resignation it causes.
      await node.waitForLog((l) => l.msg === 'hook failed' && l.hook === 'demote', 15000, 'failed demote');
    }
    for (const node of [answers500, refuses]) expect((await node.stop()).code).toBe(0);

    for (const node of [answers500, refuses]) {
      expect(output(node)).not.toContain(PASSWORD_PART);
      expect(output(node)).not.toContain(QUERY_PART);
    }
    const promoteFailure = (node: Sidecar) => node.logs.find((l) => l.msg === 'hook failed' && l.hook === 'promote')?.err;
    expect(promoteFailure(answers500)).toBe(`POST http://127.0.0.1:${failing.port}/hook?… answered 500`);
    expect(promoteFailure(refuses)).toMatch(new RegExp(`^POST http://127\\.0\\.0\\.1:${unreachable}/hook\\?…: fetch failed: .*ECONNREFUSED`));
    expect(failing.received[0]?.authorization).toBe(basic);
  });
});

describe('hooks: environment', () => {
  it("a hook command does not inherit leaderd's own settings, whose secrets it could print", async () => {
    const token = 'admin-7c1e9b2d';
    const node = await Sidecar.start('hooks-env', [...args(), '--on-promote', 'env'], { LEADERD_ADMIN_TOKEN: token });
    sidecars.push(node);
    await node.waitForLog((l) => l.msg === 'hook succeeded' && l.hook === 'promote', 10000, 'promote hook');
    const printed = node.logs.filter((l) => l.msg === 'hook output').map((l) => String(l.line));
    // The hook did print its environment, with the facts it is told.
    expect(printed).toContain('LEADERD_EVENT=promote');
    expect(printed.filter((line) => line.startsWith('LEADERD_ADMIN_TOKEN='))).toEqual([]);
    expect(output(node)).not.toContain(token);
  });
});

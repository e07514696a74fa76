/**
 * Logging never stops the sidecar: with its stdout closed or stalled, leaderd keeps leading,
 * answers HTTP, counts the lines it drops, and stops at once on SIGTERM. Real processes and real
 * pipes: the test holds the read end of leaderd's stdout and closes it, or stops reading it.
 */
import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import { closeSync, mkdtempSync, openSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import { afterEach, describe, expect, it } from 'vitest';
import { scratchFile } from './conformance.js';
import { BIN } from './harness/sidecar.js';
import { freePort } from './harness/ports.js';
import { until } from './chaos/world.js';

const CHATTY_CHECK = fileURLToPath(new URL('./fixtures/chatty-check.sh', import.meta.url));
const children = new Set<ChildProcess>();

interface Started {
  child: ChildProcess;
  url: string;
  exited: Promise<number | null>;
}

/** Starts a leader that logs thousands of debug lines a second, and reads stdout up to its start line. */
async function chattyLeader(id: string, demoted: string): Promise<Started> {
  // A long ttl: the chatty check loads the machine, and nothing here waits on the lease.
  const args = ['--id', id, '--http', '127.0.0.1:0', '--local-dir', scratchFile('dir'), '--election', id, '--ttl', '10'];
  const demote = ['--on-demote', `/bin/sh -c 'echo demoted >> ${demoted}'`];
  const child = spawn(process.execPath, [BIN, ...args, ...demote, '--log-level', 'debug', '--check', CHATTY_CHECK, '--check-interval', '0.2'], {
    stdio: ['ignore', 'pipe', 'inherit'],
  });
  children.add(child);
  const exited = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)));
  const lines = createInterface({ input: child.stdout! });
  const url = await new Promise<string>((resolve, reject) => {
    lines.on('line', (text) => {
      const line = JSON.parse(text) as { msg: string; http?: string };
      if (line.msg === 'leaderd started') resolve(`http://${line.http!}`);
    });
    void exited.then((code) => reject(new Error(`leaderd exited with ${code} before listening`)));
  });
  // From here on the test decides what becomes of stdout.
  lines.removeAllListeners('line');
  lines.pause();
  const deadline = Date.now() + 20000;
  while ((await role(url, 5000)) !== 'primary') {
    if (Date.now() > deadline) throw new Error(`${id}: not primary within 20 s`);
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
  return { child, url, exited };
}

async function droppedLines(url: string): Promise<number> {
  const text = await (await fetch(`${url}/metrics`, { signal: AbortSignal.timeout(5000) })).text();
  return Number(/^leaderd_log_lines_dropped_total (\S+)$/m.exec(text)?.[1] ?? NaN);
}

/** Waits until leaderd reports dropped log lines: it has met the stdout the test left it. */
async function untilLinesDropped(url: string, timeoutMs: number): Promise<number> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const dropped = await droppedLines(url);
    if (dropped > 0) return dropped;
    if (Date.now() > deadline) throw new Error(`no dropped log lines within ${timeoutMs} ms`);
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
}

/** A role answer within `timeoutMs`: the event loop is not blocked. */
async function role(url: string, timeoutMs: number): Promise<string> {
  const body = (await (await fetch(`${url}/role`, { signal: AbortSignal.timeout(timeoutMs) })).json()) as { role: string };
  return body.role;
}

function exitWithin(started: Started, timeoutMs: number): Promise<number | null> {
  return Promise.race([
    started.exited,
    new Promise<never>((_, reject) => setTimeout(() => reject(new Error(`no exit within ${timeoutMs} ms of SIGTERM`)), timeoutMs)),
  ]);
}

describe('logging never stops the sidecar', () => {
  afterEach(async () => {
    for (const child of children) child.kill('SIGKILL');
    children.clear();
  });

  it('with stdout closed (EPIPE): leads on, answers, counts the dropped lines, demotes and exits 0 at once on SIGTERM', async () => {
    const demoted = scratchFile('log-closed-demoted');
    const started = await chattyLeader('log-closed', demoted);
    started.child.stdout!.destroy();
    await untilLinesDropped(started.url, 20000);
    expect(await role(started.url, 2000)).toBe('primary');
    // Still counting: it keeps running, without a log.
    const before = await droppedLines(started.url);
    await untilMore(started.url, before, 20000);
    started.child.kill('SIGTERM');
    expect(await exitWithin(started, 5000)).toBe(0);
    // The shutdown did its work, log or no log: the demote hook ran before the exit.
    expect(readFileSync(demoted, 'utf8')).toBe('demoted\n');
  });

  it('with stdout stalled (a full pipe): answers at once, drops past its bound, demotes and exits 0 at once on SIGTERM', async () => {
    const demoted = scratchFile('log-stalled-demoted');
    const started = await chattyLeader('log-stalled', demoted);
    // Nobody reads: the pipe fills (64 KiB), then leaderd's queue (1 MiB).
    started.child.stdout!.pause();
    await untilLinesDropped(started.url, 30000);
    for (let i = 0; i < 5; i++) expect(await role(started.url, 2000)).toBe('primary');
    started.child.kill('SIGTERM');
    expect(await exitWithin(started, 5000)).toBe(0);
    // The shutdown did its work, log or no log: the demote hook ran before the exit.
    expect(readFileSync(demoted, 'utf8')).toBe('demoted\n');
  });

  it('with stdout a file on a full disk (ENOSPC): drops what does not fit, and logs again once there is room', async () => {
    // A 64 KiB file system of its own, filled up: the disk is full for this log only.
    const mount = mkdtempSync(join(tmpdir(), 'leaderd-full-disk-'));
    execFileSync('mount', ['-t', 'tmpfs', '-o', 'size=64k', 'tmpfs', mount]);
    try {
      const log = join(mount, 'leaderd.log');
      // The log's first page is taken now, the rest of the file system then: leaderd's lines fill
      // what is left of that page, and the one that does not fit is cut off part way.
      writeFileSync(log, '{"first":"line"}\n');
      const stdout = openSync(log, 'a');
      const filler = join(mount, 'filler');
      expect(() => writeFileSync(filler, Buffer.alloc(1 << 20))).toThrow(/ENOSPC/);
      const port = await freePort();
      const url = `http://127.0.0.1:${port}`;
      const args = ['--id', 'log-full', '--http', `127.0.0.1:${port}`, '--local-dir', scratchFile('dir'), '--election', 'log-full', '--ttl', '10'];
      const child = spawn(process.execPath, [BIN, ...args, '--log-level', 'debug', '--check', CHATTY_CHECK, '--check-interval', '0.2'], { stdio: ['ignore', stdout, 'inherit'] });
      closeSync(stdout);
      children.add(child);
      const exited = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)));
      const leading = await until(async () => (await role(url, 2000).catch(() => 'down')) === 'primary', 20000);
      expect(leading).toBe(true);
      await untilLinesDropped(url, 20000);
      const sizeWhileFull = statSync(log).size;
      expect(sizeWhileFull).toBe(4096);

      rmSync(filler);
      // Room again: the lines that come now are written, whole (the chatty check logs many a second).
      const growing = await until(() => statSync(log).size > sizeWhileFull + 4096, 20000);
      expect(growing, `the log stayed at ${statSync(log).size} bytes once there was room`).toBe(true);
      const lines = readFileSync(log, 'utf8').split('\n').filter(Boolean);
      const unreadable = lines.filter((line) => {
        try {
          JSON.parse(line);
          return false;
        } catch {
          return true;
        }
      });
      // Only lines the disk filled up in the middle of (the chatty check may fill it again), each
      // a line of its own: none swallowed the line after it.
      expect(unreadable.length).toBeGreaterThanOrEqual(1);
      for (const torn of unreadable) {
        expect(torn.startsWith('{"level"'), torn).toBe(true);
        expect(torn.indexOf('{"level"', 1), torn).toBe(-1);
      }
      child.kill('SIGTERM');
      expect(await exitWithin({ child, url, exited }, 5000)).toBe(0);
    } finally {
      for (const child of children) child.kill('SIGKILL');
      await until(() => [...children].every((c) => c.exitCode !== null || c.signalCode !== null), 5000);
      execFileSync('umount', ['--lazy', mount]);
      rmSync(mount, { recursive: true, force: true });
    }
  });
});

async function untilMore(url: string, than: number, timeoutMs: number): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while ((await droppedLines(url)) <= than) {
    if (Date.now() > deadline) throw new Error(`the dropped count stayed at ${than} for ${timeoutMs} ms`);
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
}

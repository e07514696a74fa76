import { execFileSync, spawn } from 'node:child_process';
import {
  chmodSync, chownSync, existsSync, lstatSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, renameSync, rmdirSync, rmSync, symlinkSync, unlinkSync, writeFileSync,
} from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { EventSourceParserStream } from 'eventsource-parser/stream';
import { pino } from 'pino';
import { afterEach, describe, expect, it } from 'vitest';
import { fileURLToPath } from 'node:url';
import { LocalBackend } from '../adapters/local.js';
import { MAX_RECORD_BYTES, type ClusterRecords, type Session, type View } from '../src/backend.js';
import { conformance, hookArgs, newElection, readHookRecords, scratchFile, settled } from './conformance.js';
import { violations, type HookRecord } from './overlap.js';
import { BIN, runLeaderd, Sidecar, type LogLine, type RoleBody } from './harness/sidecar.js';

const dir = mkdtempSync(join(tmpdir(), 'leaderd-local-'));
const ttlSeconds = 2;
const ttlMs = ttlSeconds * 1000;
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

  it('SIGHUP (a closed terminal, a reload) leaves a primary leading with its term; it used to end it without a demote', async () => {
    const node = await Sidecar.start('local-hup', args(newElection()));
    const { fencingToken } = await node.waitForRole('primary', 10000);
    node.signal('SIGHUP');
    await node.waitForLog((l) => l.msg === 'SIGHUP: reading the TLS files again, if there are any', 10000);
    expect(await node.role()).toMatchObject({ role: 'primary', fencingToken });
    expect(await node.stop()).toEqual({ code: 0, signal: null });
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
    // Killed: gone, or a zombie that leaderd has not reaped yet (the run is over once no member
    // of the hook's group runs, see src/process-group.ts; reaping follows asynchronously).
    expect(running(pid)).toBe(false);
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

/** The uid and gid of `nobody`, which the tests give directories to (they run as root). */
const NOBODY = 65534;

/** Starts sidecars in one election and waits until one leads and the others name it. */
async function group(election: string, names: string[], extra: string[] = []) {
  const nodes = await Promise.all(names.map((n) => Sidecar.start(`local-${n}`, [...args(election), ...extra])));
  return { nodes, ...(await settled(nodes, 15000)) };
}

/** The first primary, among `nodes`, whose token satisfies `matches`. */
async function primaryWhere(nodes: Sidecar[], matches: (token: number) => boolean, timeoutMs: number, what: string): Promise<RoleBody> {
  const abort = new AbortController();
  try {
    return await Promise.any(
      nodes.map((n) => n.waitForState((s) => s.role === 'primary' && matches(s.fencingToken!), timeoutMs, what, abort.signal)),
    );
  } finally {
    abort.abort();
  }
}

/** Every state a sidecar's /watch stream shows from now on; `ready` once the current one is in. */
function recordStates(node: Sidecar): { states: RoleBody[]; ready: Promise<void>; stop(): void } {
  const abort = new AbortController();
  const states: RoleBody[] = [];
  let markReady: () => void = () => undefined;
  const ready = new Promise<void>((resolve) => (markReady = resolve));
  void (async () => {
    const response = await fetch(`${node.url}/watch`, { signal: abort.signal });
    const events = response.body!.pipeThrough(new TextDecoderStream()).pipeThrough(new EventSourceParserStream());
    for await (const event of events) {
      states.push(JSON.parse(event.data) as RoleBody);
      markReady();
    }
  })().catch(() => undefined);
  return { states, ready, stop: () => abort.abort() };
}

/**
 * Removes a directory the sidecars keep writing into, as a tmp cleaner would: renamed away first,
 * so that it vanishes at once, whatever they create in it meanwhile.
 */
function removeDirectory(path: string): void {
  const away = `${path}.removed-${process.hrtime.bigint()}`;
  renameSync(path, away);
  rmSync(away, { recursive: true, force: true, maxRetries: 5 });
}

/**
 * Runs leaderd as `nobody` (Sidecar runs it as the test's user, root); `primary` resolves with its
 * `role: primary` line. The caller kills it.
 */
function primaryAsNobody(argv: string[], env: NodeJS.ProcessEnv, timeoutMs: number) {
  const child = spawn(process.execPath, [BIN, '--http', '127.0.0.1:0', ...argv], {
    uid: NOBODY,
    gid: NOBODY,
    env: { ...process.env, ...env },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  const primary = new Promise<LogLine>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`no role: primary within ${timeoutMs} ms`)), timeoutMs);
    createInterface({ input: child.stdout }).on('line', (text) => {
      const line = JSON.parse(text) as LogLine;
      if (line.msg === 'role: primary') {
        clearTimeout(timer);
        resolve(line);
      }
    });
  });
  return { child, primary };
}

/** Runs leaderd to its exit, or kills it after `timeoutMs` (then the code is null). */
async function runUntilItEnds(argv: string[], timeoutMs: number) {
  const child = spawn(process.execPath, [BIN, ...argv], { stdio: ['ignore', 'pipe', 'pipe'] });
  let stdout = '';
  let stderr = '';
  child.stdout.on('data', (c) => (stdout += c));
  child.stderr.on('data', (c) => (stderr += c));
  const timer = setTimeout(() => child.kill('SIGKILL'), timeoutMs);
  const exitCode = await new Promise<number | null>((resolve) => child.once('exit', (c) => resolve(c)));
  clearTimeout(timer);
  return { code: exitCode, stdout, stderr };
}

describe('local: state on disk that cleanup removed', () => {
  afterEach(() => Sidecar.killAll());

  it('tokens/ emptied while a term holds: the next term still gets a larger token, even one ahead of the clock', async () => {
    const election = newElection();
    // A history whose tokens are far ahead of the wall clock: only what the sidecars remember,
    // or what the leader puts back, can keep the next token above it once tokens/ is emptied.
    const tokens = join(dir, election, 'tokens');
    mkdirSync(tokens, { recursive: true, mode: 0o700 });
    writeFileSync(join(tokens, String(1e14)), '');
    const before = await group(election, ['tok-a', 'tok-b']);
    const T = before.state.fencingToken!;
    expect(T).toBeGreaterThan(1e14);

    for (const name of readdirSync(tokens)) unlinkSync(join(tokens, name));
    await before.primary.stop();
    const after = await primaryWhere(before.replicas, (token) => token !== T, 15000, 'a primary of a new term');
    expect(after.fencingToken!).toBeGreaterThan(T);
  });

  it('tokens/ and staging/ removed: a replica still becomes primary when the primary stops (no ENOENT loop)', async () => {
    const election = newElection();
    const { primary, replicas } = await group(election, ['gone-a', 'gone-b']);
    rmSync(join(dir, election, 'tokens'), { recursive: true, force: true });
    rmSync(join(dir, election, 'staging'), { recursive: true, force: true });
    await primary.stop();
    await replicas[0]!.waitForRole('primary', ttlSeconds * 3000 + 5000);
    expect(replicas[0]!.logs.filter((l) => JSON.stringify(l).includes('ENOENT'))).toEqual([]);
  });

  it('the whole election directory removed, with the sidecars running and again with all of them restarted: every new term has a larger token', async () => {
    const election = newElection();
    const first = await group(election, ['wipe-a', 'wipe-b']);
    const T1 = first.state.fencingToken!;

    removeDirectory(join(dir, election));
    await first.primary.waitForLog((l) => l.msg === 'session ended', ttlSeconds * 3000, 'the end of the term whose lock was removed');
    const second = (await settled(first.nodes, ttlSeconds * 3000 + 5000)).state;
    expect(second.fencingToken!).toBeGreaterThan(T1);

    // A reboot with /tmp on tmpfs: nobody is left who remembers, and the directory is gone.
    await Promise.all(first.nodes.map((n) => n.stop()));
    removeDirectory(join(dir, election));
    const third = await group(election, ['wipe-c', 'wipe-d']);
    expect(third.state.fencingToken!).toBeGreaterThan(second.fencingToken!);
  });
});

describe('local: observers never see the token go down', () => {
  afterEach(() => Sidecar.killAll());

  it('five sidecars, many handovers: every /watch stream and every leader-change hook shows tokens that only grow', async () => {
    const election = newElection();
    const tokenFile = scratchFile('admin-token');
    writeFileSync(tokenFile, 'local-admin-token\n');
    const names = ['race-a', 'race-b', 'race-c', 'race-d', 'race-e'];
    const files = names.map((n) => scratchFile(`${n}-hooks`));
    const nodes = await Promise.all(
      names.map((n, i) => Sidecar.start(`local-${n}`, [...args(election), '--admin-token-file', tokenFile, ...hookArgs(files[i]!)])),
    );
    await settled(nodes, 15000);
    const recorders = nodes.map(recordStates);
    await Promise.all(recorders.map((r) => r.ready));

    // Short freezes of random sidecars widen every window between two steps of a candidate.
    let jittering = true;
    const jitter = (async () => {
      while (jittering) {
        const node = nodes[Math.floor(Math.random() * nodes.length)]!;
        node.signal('SIGSTOP');
        await new Promise((r) => setTimeout(r, Math.random() * 150));
        node.signal('SIGCONT');
        await new Promise((r) => setTimeout(r, Math.random() * 30));
      }
    })();

    try {
      let last = 0;
      for (let round = 0; round < 60; round++) {
        const state = await primaryWhere(nodes, (token) => token > last, 20000, `primary of round ${round}`);
        last = state.fencingToken!;
        const primary = nodes.find((n) => n.id === state.id)!;
        const response = await primary.fetch('/resign', {
          method: 'POST',
          headers: { authorization: 'Bearer local-admin-token', 'content-type': 'application/json' },
          body: '{"holdOffSeconds": 0}',
        });
        expect(response.status).toBe(200);
      }
    } finally {
      jittering = false;
      await jitter;
      for (const node of nodes) node.signal('SIGCONT');
    }
    await settled(nodes, 15000);
    for (const r of recorders) r.stop();

    for (const [i, node] of nodes.entries()) {
      const seen = recorders[i]!.states.filter((s) => s.leader !== null).map((s) => ({ id: s.leader!.id, token: s.fencingToken! }));
      for (let k = 1; k < seen.length; k++) {
        const [a, b] = [seen[k - 1]!, seen[k]!];
        expect(b.token >= a.token && (b.token > a.token || b.id === a.id), `${node.id} saw ${JSON.stringify(a)} then ${JSON.stringify(b)}`).toBe(true);
      }
      const changes = readHookRecords(files[i]!)
        .filter((r) => r.LEADERD_EVENT === 'leader-change')
        .map((r) => Number(r.LEADERD_FENCING_TOKEN));
      expect(changes.length).toBeGreaterThan(0);
      for (let k = 1; k < changes.length; k++) expect(changes[k]!, `${node.id}'s leader-change hooks: ${changes.join(', ')}`).toBeGreaterThan(changes[k - 1]!);
    }
  });
});

describe('local: --local-dir', () => {
  afterEach(() => Sidecar.killAll());

  it('a --local-dir that belongs to another user is refused: exit 2 and one line on stderr naming local-dir', async () => {
    const foreign = mkdtempSync(join(tmpdir(), 'leaderd-foreign-'));
    chownSync(foreign, NOBODY, NOBODY);
    const result = await runUntilItEnds(['--id', 'foreign', '--http', '127.0.0.1:0', '--local-dir', foreign, '--election', newElection()], 15000);
    expect(result.code).toBe(2);
    expect(result.stderr).toMatch(/^leaderd: invalid configuration: local-dir: [^\n]*belongs to another user[^\n]*\n$/);
  });

  it('a --local-dir that is a file is refused: exit 2 and one line on stderr saying it is not a directory', async () => {
    const file = scratchFile('not-a-dir');
    writeFileSync(file, 'a file\n');
    const result = await runUntilItEnds(['--id', 'file', '--http', '127.0.0.1:0', '--local-dir', file, '--election', newElection()], 15000);
    expect(result.code).toBe(2);
    expect(result.stderr).toBe(`leaderd: invalid configuration: local-dir: ${file} is not a directory (set by --local-dir)\n`);
  });

  it('a --local-dir remounted read-only under a primary and a replica: both sessions end, both stay up, and one leads again once it is writable', async () => {
    // A bind mount of a directory onto itself, which can be remounted read-only (root, CAP_SYS_ADMIN).
    const mount = mkdtempSync(join(tmpdir(), 'leaderd-remount-'));
    let mounted = false;
    try {
      execFileSync('mount', ['--bind', mount, mount]);
      mounted = true;
      const election = newElection();
      const start = (id: string) => Sidecar.start(id, ['--backend', 'local', '--local-dir', mount, '--election', election, '--ttl', '2']);
      const node = await start('remount');
      await node.waitForRole('primary', 15000);
      const follower = await start('remount-follower');
      await follower.waitForState((s) => s.role === 'replica' && s.leader?.id === 'remount', 15000, 'a replica');
      await remount(mount, 'ro');
      // Both sessions end (the primary's renewal cannot rename its beat, the replica's cannot keep
      // the directory up), and both retry: a directory that was fit for use may be writable again.
      for (const n of [node, follower]) {
        await n.waitForLog((l) => l.msg === 'session ended', 15000, 'the session ended');
        await n.waitForLog((l) => l.msg !== 'session ended' && JSON.stringify(l).includes('EROFS'), 15000, 'a failed reopen');
        expect(running(n.pid)).toBe(true);
      }
      await remount(mount, 'rw');
      await settled([node, follower], 30000);
    } finally {
      await Sidecar.killAll();
      if (mounted) execFileSync('umount', [mount]);
      rmSync(mount, { recursive: true, force: true });
    }
  });

  it('--help names the persistent default: /var/lib/leaderd as root, else under $XDG_STATE_HOME or ~/.local/state', async () => {
    const { stdout } = await runLeaderd(['--help']);
    const line = stdout.split('\n').find((l) => l.includes('--local-dir'));
    expect(line).toContain('/var/lib/leaderd');
    expect(line).toContain('XDG_STATE_HOME');
    expect(line).not.toContain(tmpdir());
  });

  it('without --local-dir, a user other than root keeps its state under $XDG_STATE_HOME/leaderd', async () => {
    const state = mkdtempSync(join(tmpdir(), 'leaderd-xdg-'));
    chownSync(state, NOBODY, NOBODY);
    const election = newElection();
    const { child, primary } = primaryAsNobody(['--id', 'xdg', '--election', election, '--ttl', '2'], { HOME: '/nonexistent', XDG_STATE_HOME: state }, 15000);
    try {
      expect((await primary).fencingToken).toBeGreaterThan(0);
      expect(existsSync(join(state, 'leaderd', election, 'tokens'))).toBe(true);
    } finally {
      child.kill('SIGKILL');
    }
  });

  it('without --local-dir, root keeps its state under /var/lib/leaderd', async () => {
    const election = newElection();
    const existed = existsSync('/var/lib/leaderd');
    const node = await Sidecar.start('local-root-default', ['--election', election, '--ttl', '2']);
    try {
      await node.waitForRole('primary', 15000);
      expect(existsSync(join('/var/lib/leaderd', election, 'tokens'))).toBe(true);
    } finally {
      await node.stop();
      rmSync(join('/var/lib/leaderd', election), { recursive: true, force: true });
      // Only if this test made it, and only when empty: another test may be using it.
      if (!existed) {
        try {
          rmdirSync('/var/lib/leaderd');
        } catch {
          // not empty
        }
      }
    }
  });
});

/** Resolves once `condition` holds, looking every 10 ms; rejects after `timeoutMs`. */
async function until(condition: () => boolean, timeoutMs: number, what: string): Promise<void> {
  const deadline = performance.now() + timeoutMs;
  while (!condition()) {
    if (performance.now() > deadline) throw new Error(`not within ${timeoutMs} ms: ${what}`);
    await new Promise((r) => setTimeout(r, 10));
  }
}

/** The kernel's state letter for a process (T: stopped). */
function processState(pid: number): string {
  const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
  return stat.slice(stat.lastIndexOf(')') + 2, stat.lastIndexOf(')') + 3);
}

/** The sidecar's exit, or 'still running' after `timeoutMs`. */
function exitWithin(node: Sidecar, timeoutMs: number): Promise<unknown> {
  let timer: NodeJS.Timeout | undefined;
  const late = new Promise((resolve) => (timer = setTimeout(resolve, timeoutMs, 'still running')));
  return Promise.race([node.exited, late]).finally(() => clearTimeout(timer));
}

/** Whether a process exists and has not exited (a zombie has). */
/**
 * Remounts the bind mount `path` read-only or read-write. Going read-only fails (EBUSY) while a
 * file on it is open for writing, which the sidecars do for a moment at every record they write:
 * tried again until it takes.
 */
async function remount(path: string, mode: 'ro' | 'rw'): Promise<void> {
  const deadline = performance.now() + 10000;
  for (;;) {
    try {
      execFileSync('mount', ['-o', `remount,${mode},bind`, path], { stdio: ['ignore', 'ignore', 'pipe'] });
      return;
    } catch (error) {
      if (!/busy/.test(String((error as { stderr?: Buffer }).stderr)) || performance.now() > deadline) throw error;
      await new Promise((resolve) => setTimeout(resolve, 20));
    }
  }
}

function running(pid: number): boolean {
  try {
    return !['Z', 'X'].includes(processState(pid));
  } catch {
    return false; // no such process
  }
}

/**
 * Runs `change` while `nodes` are stopped (SIGSTOP, seen stopped), then continues them: a change
 * of several steps that the sidecars must not see half done, nor undo before it is complete.
 */
async function whileStopped(nodes: Sidecar[], change: () => void): Promise<void> {
  for (const node of nodes) node.signal('SIGSTOP');
  try {
    await until(() => nodes.every((n) => processState(n.pid) === 'T'), 5000, 'sidecars stopped');
    change();
  } finally {
    for (const node of nodes) node.signal('SIGCONT');
  }
}

/**
 * Runs `body` with the sidecars it starts, and kills them afterwards whatever happens: tests that
 * run concurrently cannot share an afterEach that kills every sidecar.
 */
async function withSidecars<T>(body: (start: (id: string, argv: string[]) => Promise<Sidecar>) => Promise<T>): Promise<T> {
  const started: Sidecar[] = [];
  try {
    return await body(async (id, argv) => {
      const sidecar = await Sidecar.start(id, argv);
      started.push(sidecar);
      return sidecar;
    });
  } finally {
    for (const sidecar of started) sidecar.signal('SIGKILL');
    await Promise.all(started.map((s) => s.exited));
  }
}

/** What a sidecar logs when it finds its election directory made again under a term it knew. */
const RECREATED = 'the election directory was removed or replaced: nobody takes the lock until a ttl has passed';

describe('local: the election directory removed under a live leader', () => {
  afterEach(() => Sidecar.killAll());

  it('removed while the leader is frozen for less than its lease: nobody is promoted until the old term has ended', async () => {
    const election = newElection();
    const files = [scratchFile('wipe-frozen-a'), scratchFile('wipe-frozen-b')];
    const nodes = await Promise.all(['a', 'b'].map((n, i) => Sidecar.start(`local-wipe-frozen-${n}`, [...args(election), ...hookArgs(files[i]!)])));
    const before = await settled(nodes, 15000);
    const replica = before.replicas[0]!;
    await before.primary.waitForLog((l) => l.msg === 'hook succeeded' && l.hook === 'promote', 10000, 'promote hook');

    // Frozen only until the replica has reacted to the removal: before the fix by leading at once
    // (its promote hook has run), after it by marking the directory. That is shorter than the
    // lease left after the last renewal (at least ttl/3), so the thawed primary still holds a
    // valid lease and acts as primary until it notices that its lock is gone.
    before.primary.signal('SIGSTOP');
    try {
      await until(() => processState(before.primary.pid) === 'T', 5000, 'the primary stopped');
      removeDirectory(join(dir, election));
      await replica.waitForLog((l) => l.msg === RECREATED || (l.msg === 'hook succeeded' && l.hook === 'promote'), 5000, 'the removal noticed');
    } finally {
      before.primary.signal('SIGCONT');
    }

    await before.primary.waitForLog((l) => l.msg === 'hook succeeded' && l.hook === 'demote', 10000, 'the old term demoted');
    const after = await settled(nodes, ttlMs * 3 + 5000);
    expect(after.state.fencingToken!).toBeGreaterThan(before.state.fencingToken!);
    await after.primary.waitForLog(
      (l) => l.msg === 'hook succeeded' && l.hook === 'promote' && l.fencingToken === after.state.fencingToken,
      10000,
      'promote of the new term',
    );
    // No frozen/thawed records: the frozen primary's term counts as lasting through its freeze,
    // since it still held a valid lease when it thawed.
    const records = files.flatMap((f) => readHookRecords(f)) as unknown as HookRecord[];
    expect(violations(records)).toEqual([]);
  });
});

describe.concurrent('local: foreign things in the directory', () => {
  it('an entry in lock/ that is no readable file (dangling symlink, FIFO, symlink to /dev/zero, a directory) or no record (not JSON): it expires after the ttl like any other, and the sidecar leads and stops on SIGTERM', async () => {
    const kinds: Record<string, (path: string) => void> = {
      dangling: (path) => symlinkSync('/nonexistent/leaderd-entry', path),
      fifo: (path) => execFileSync('mkfifo', [path]),
      zero: (path) => symlinkSync('/dev/zero', path),
      directory: (path) => mkdirSync(path),
      text: (path) => writeFileSync(path, 'not a record\n'),
    };
    await withSidecars((start) =>
      Promise.all(
        Object.entries(kinds).map(async ([kind, make]) => {
          const election = newElection();
          mkdirSync(join(dir, election, 'lock'), { recursive: true, mode: 0o700 });
          make(join(dir, election, 'lock', 'claim.0123456789abcdef.1'));
          const startedAt = performance.now();
          const node = await start(`local-foreign-${kind}`, args(election));
          await node.waitForRole('primary', ttlMs + 10000);
          expect(performance.now() - startedAt, `${kind}: expired only after the ttl`).toBeGreaterThanOrEqual(ttlMs);
          node.signal('SIGTERM');
          expect(await exitWithin(node, 10000), `${kind}: SIGTERM`).toEqual({ code: 0, signal: null });
        }),
      ),
    );
  });

  it('an entry in lock/ that the sidecar may not read (mode 000, leaderd running as nobody): it expires after the ttl', async () => {
    const root = mkdtempSync(join(tmpdir(), 'leaderd-nobody-'));
    const election = newElection();
    const lock = join(root, election, 'lock');
    mkdirSync(lock, { recursive: true, mode: 0o700 });
    const entry = join(lock, 'claim.0123456789abcdef.1');
    writeFileSync(entry, '{}', { mode: 0o000 });
    for (const path of [root, join(root, election), lock, entry]) chownSync(path, NOBODY, NOBODY);
    const startedAt = performance.now();
    const { child, primary } = primaryAsNobody(['--id', 'unreadable', '--local-dir', root, '--election', election, '--ttl', String(ttlSeconds)], {}, ttlMs + 10000);
    try {
      await primary;
      expect(performance.now() - startedAt).toBeGreaterThanOrEqual(ttlMs);
    } finally {
      child.kill('SIGKILL');
    }
  });

  it('lock, tokens and staging as symlinks to a directory elsewhere: the links are replaced, never followed, and nothing outside --local-dir changes', async () => {
    const election = newElection();
    const victim = mkdtempSync(join(tmpdir(), 'leaderd-victim-'));
    // A file named like a token, and one named like nothing leaderd makes: both must survive.
    writeFileSync(join(victim, '5'), 'keep\n');
    writeFileSync(join(victim, 'victim'), 'keep\n');
    mkdirSync(join(dir, election), { mode: 0o700 });
    for (const name of ['lock', 'tokens', 'staging']) symlinkSync(victim, join(dir, election, name));
    await withSidecars(async (start) => {
      const node = await start('local-symlinks', args(election));
      await node.waitForRole('primary', 15000);
      expect(readdirSync(victim).sort()).toEqual(['5', 'victim']);
      for (const name of ['lock', 'tokens', 'staging']) expect(lstatSync(join(dir, election, name)).isDirectory(), name).toBe(true);
    });
  });

  it('tokens/ made a file and staging/ a dangling symlink while the sidecars run: after kill -9 of the leader a replica still takes over', async () => {
    const election = newElection();
    await withSidecars(async (start) => {
      const nodes = await Promise.all(['a', 'b'].map((n) => start(`local-odd-layout-${n}`, args(election))));
      const { primary, replicas } = await settled(nodes, 15000);
      const base = join(dir, election);
      await whileStopped(nodes, () => {
        removeDirectory(join(base, 'tokens'));
        writeFileSync(join(base, 'tokens'), 'a file\n');
        removeDirectory(join(base, 'staging'));
        symlinkSync('/nonexistent/leaderd-staging', join(base, 'staging'));
      });
      primary.signal('SIGKILL');
      await replicas[0]!.waitForRole('primary', ttlMs * 3 + 5000);
      expect(lstatSync(join(base, 'tokens')).isDirectory()).toBe(true);
    });
  });

  it('a token file at 2^53 - 2, the largest token leaderd issues: nobody leads past it, each sidecar says so in one error line naming the file; names that are no safe token are ignored', async () => {
    const election = newElection();
    const tokens = join(dir, election, 'tokens');
    mkdirSync(tokens, { recursive: true, mode: 0o700 });
    const last = join(tokens, String(Number.MAX_SAFE_INTEGER - 1));
    for (const name of [String(Number.MAX_SAFE_INTEGER - 1), String(Number.MAX_SAFE_INTEGER), '9999999999999999', '99999999999999999999']) {
      writeFileSync(join(tokens, name), '');
    }
    await withSidecars(async (start) => {
      const refusal = (l: LogLine) => l.level === 'error' && l.file === last;
      const a = await start('local-last-a', args(election));
      await a.waitForLog(refusal, 10000, 'the refusal');
      // A second sidecar refuses too, while the first goes on looking (every ttl/10) without repeating itself.
      const b = await start('local-last-b', args(election));
      await b.waitForLog(refusal, 10000, 'the refusal');
      expect(a.logs.filter((l) => l.level === 'error' || l.level === 'fatal')).toHaveLength(1);
      for (const node of [a, b]) expect((await node.role()).role).toBe('replica');

      // Removed, the file no longer holds back a sidecar that never saw it; the others remember it.
      unlinkSync(last);
      const c = await start('local-last-c', args(election));
      const state = await c.waitForRole('primary', 15000);
      expect(state.fencingToken!).toBeLessThan(Number.MAX_SAFE_INTEGER - 1);
    });
  });

  it('what crashes and strangers leave: a staged lock directory is removed after a ttl; 150 names in tokens/ that are no tokens are warned about at most 100 times', async () => {
    const election = newElection();
    const staged = join(dir, election, 'staging', '0123456789abcdef.7');
    mkdirSync(staged, { recursive: true, mode: 0o700 });
    writeFileSync(join(staged, 'claim.0123456789abcdef.7'), '{}');
    mkdirSync(join(dir, election, 'tokens'), { mode: 0o700 });
    for (let i = 0; i < 150; i++) writeFileSync(join(dir, election, 'tokens', `junk-${i}`), '');
    await withSidecars(async (start) => {
      const node = await start('local-leftovers', args(election));
      await node.waitForRole('primary', 15000);
      await node.waitForLog((l) => l.msg === 'removed what a crash left in staging/', ttlMs * 3 + 5000, 'the staged directory removed');
      expect(existsSync(staged)).toBe(false);
      expect(node.logs.filter((l) => l.msg === 'ignoring an entry of tokens/ that is not a token').length).toBeLessThanOrEqual(100);
    });
  });
});

describe('local: --local-dir that others may write to', () => {
  afterEach(() => Sidecar.killAll());

  it('a --local-dir writable by every user is refused (exit 2, one line naming it), unless it has the sticky bit', async () => {
    const open = mkdtempSync(join(tmpdir(), 'leaderd-open-'));
    chmodSync(open, 0o777);
    const result = await runUntilItEnds(['--id', 'open', '--http', '127.0.0.1:0', '--local-dir', open, '--election', newElection()], 15000);
    expect(result.code).toBe(2);
    expect(result.stderr).toBe(`leaderd: invalid configuration: local-dir: ${open} is writable by every user; chmod o-w, or chmod +t so that nobody can remove what is not theirs (set by --local-dir)\n`);

    const sticky = mkdtempSync(join(tmpdir(), 'leaderd-sticky-'));
    chmodSync(sticky, 0o1777);
    const node = await Sidecar.start('local-sticky', ['--local-dir', sticky, '--election', newElection(), '--ttl', String(ttlSeconds)]);
    await node.waitForRole('primary', 15000);
  });

  it('made writable by every user while the sidecars run, or replaced by another user\'s directory: every sidecar steps down and exits 2', async () => {
    const opened = mkdtempSync(join(tmpdir(), 'leaderd-opened-'));
    const replaced = mkdtempSync(join(tmpdir(), 'leaderd-replaced-'));
    const argsIn = (root: string, election: string) => ['--local-dir', root, '--election', election, '--ttl', String(ttlSeconds)];
    const [e1, e2] = [newElection(), newElection()];
    const first = await Promise.all(['a', 'b'].map((n) => Sidecar.start(`local-opened-${n}`, argsIn(opened, e1))));
    const second = await Promise.all(['a', 'b'].map((n) => Sidecar.start(`local-replaced-${n}`, argsIn(replaced, e2))));
    await Promise.all([settled(first, 15000), settled(second, 15000)]);

    chmodSync(opened, 0o777);
    // Swapped while they are stopped, so that none of them makes the directory again in between.
    await whileStopped(second, () => {
      renameSync(replaced, `${replaced}.removed`);
      mkdirSync(replaced, { mode: 0o700 });
      chownSync(replaced, NOBODY, NOBODY);
    });

    for (const node of [...first, ...second]) {
      expect(await exitWithin(node, ttlMs * 3 + 5000), node.id).toEqual({ code: 2, signal: null });
      expect(node.stderr, node.id).toMatch(/^leaderd: invalid configuration: local-dir: [^\n]*(writable by every user|belongs to another user)[^\n]*\n$/);
    }
  });
});

/** A session of the adapter itself, in this process: what the core sees of it, and what it logs. */
interface Member {
  readonly session: Session;
  readonly views: View[];
  readonly losses: Error[];
  readonly warnings: Array<{ msg: string; entry?: string }>;
  readonly operations: string[];
}

/**
 * Opens adapter sessions directly (no sidecar: the core does not publish records yet) and closes
 * whatever is left open afterwards.
 */
function memberSessions() {
  const open: Session[] = [];
  return {
    async open(election: string, id: string): Promise<Member> {
      const views: View[] = [];
      const losses: Error[] = [];
      const warnings: Member['warnings'] = [];
      const operations: string[] = [];
      const log = pino({ level: 'warn' }, { write: (line: string) => void warnings.push(JSON.parse(line) as Member['warnings'][number]) });
      const session = await new LocalBackend({ dir }).open({
        election,
        candidate: { id, address: `${id}:5432` },
        ttlSeconds,
        requestTimeoutMs: ttlMs,
        events: { view: (view) => void views.push(view), lost: (reason) => void losses.push(reason) },
        log,
        measure: (operation, request) => {
          operations.push(operation);
          return request();
        },
      });
      open.push(session);
      return { session, views, losses, warnings, operations };
    },
    closeAll: () => Promise.all(open.map((s) => s.close().catch(() => undefined))),
  };
}

/** readCluster() with the members sorted, to compare with what was written. */
async function cluster(member: Member): Promise<ClusterRecords> {
  const { members, leaderPosition } = await member.session.readCluster();
  return { members: [...members].sort(), leaderPosition };
}

/** Polls readCluster() every 20 ms until `condition` holds; rejects after `timeoutMs`. */
async function clusterWhere(member: Member, condition: (c: ClusterRecords) => boolean, timeoutMs: number, what: string): Promise<ClusterRecords> {
  const deadline = performance.now() + timeoutMs;
  for (;;) {
    const found = await cluster(member);
    if (condition(found)) return found;
    if (performance.now() > deadline) throw new Error(`not within ${timeoutMs} ms: ${what} (last: ${JSON.stringify(found)})`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

/** The last view a session reported, once it satisfies `condition`. */
async function viewWhere(member: Member, condition: (v: View) => boolean, timeoutMs: number, what: string): Promise<View> {
  await until(() => member.views.length > 0 && condition(member.views.at(-1)!), timeoutMs, what);
  return member.views.at(-1)!;
}

/** Renews `member` as the core would, every ttl/4, until stopped. */
function keepRenewing(member: Member): () => void {
  const timer = setInterval(() => void member.session.renew().catch(() => undefined), ttlMs / 4);
  return () => clearInterval(timer);
}

const ADAPTER = fileURLToPath(new URL('../adapters/local.ts', import.meta.url));

/**
 * A process of its own that opens a session, publishes `record`, renews every ttl/4 and prints
 * `ready`: one that can be killed with kill -9.
 */
async function memberProcess(election: string, record: string) {
  const code = `
    import { pino } from 'pino';
    import { LocalBackend } from ${JSON.stringify(ADAPTER)};
    const session = await new LocalBackend({ dir: process.env.LOCAL_DIR }).open({
      election: process.env.ELECTION, candidate: { id: 'child', address: 'child' }, ttlSeconds: ${ttlSeconds},
      requestTimeoutMs: ${ttlMs}, events: { view() {}, lost() {} }, log: pino({ level: 'silent' }), measure: (_, r) => r(),
    });
    await session.publishMember(process.env.RECORD);
    setInterval(() => void session.renew().catch(() => undefined), ${ttlMs / 4});
    console.log('ready');
  `;
  const child = spawn(process.execPath, ['--import', 'tsx', '--input-type=module', '-e', code], {
    cwd: fileURLToPath(new URL('..', import.meta.url)),
    env: { ...process.env, LOCAL_DIR: dir, ELECTION: election, RECORD: record },
    stdio: ['ignore', 'pipe', 'inherit'],
  });
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
  await new Promise<void>((resolve, reject) => {
    createInterface({ input: child.stdout }).on('line', (line) => line === 'ready' && resolve());
    void exited.then(() => reject(new Error('the member process exited before it was ready')));
  });
  return { child, exited };
}

describe('local: member records', () => {
  const sessions = memberSessions();
  afterEach(() => sessions.closeAll());

  it('a read while twenty members renew back to back answers with every record, every time', async () => {
    const election = newElection();
    const members: Member[] = [];
    for (let i = 0; i < 20; i++) {
      const member = await sessions.open(election, `m${i}`);
      await member.session.publishMember(`r${String(i).padStart(2, '0')}`);
      members.push(member);
    }
    // Each renewal renames its record: the reads below run while records keep changing names.
    let renewing = true;
    const renewals = members.map(async (m) => {
      while (renewing) await m.session.renew();
    });
    try {
      const expected = Array.from({ length: 20 }, (_, i) => `r${String(i).padStart(2, '0')}`);
      for (let i = 0; i < 50; i++) expect((await cluster(members[i % 20]!)).members).toEqual(expected);
    } finally {
      renewing = false;
      await Promise.all(renewals);
    }
  });

  it('two sessions publish: each reads both records exactly; a later publish, also after a renewal, replaces the record', async () => {
    const election = newElection();
    const [a, b] = [await sessions.open(election, 'a'), await sessions.open(election, 'b')];
    const recordA = '{"id":"a","position":"18446744073709551615","note":"é\\u2028\\n"}\n';
    await a.session.publishMember(recordA);
    await b.session.publishMember('b1');
    for (const reader of [a, b]) expect(await cluster(reader)).toEqual({ members: [recordA, 'b1'].sort(), leaderPosition: null });

    await a.session.publishMember('a2');
    for (const reader of [a, b]) expect((await cluster(reader)).members).toEqual(['a2', 'b1']);
    // A renewal renames the record: the next publish must replace the renamed one, not add to it.
    await a.session.renew();
    await a.session.publishMember('a3');
    await a.session.renew();
    for (const reader of [a, b]) expect((await cluster(reader)).members).toEqual(['a3', 'b1']);
    expect(readdirSync(join(dir, election, 'members'))).toHaveLength(2);
    expect(a.operations).toEqual(['write', 'read', 'write', 'read', 'write', 'read']);
  });

  it('close() removes the session\'s record at once', async () => {
    const election = newElection();
    const [a, b] = [await sessions.open(election, 'a'), await sessions.open(election, 'b')];
    await a.session.publishMember('a');
    await b.session.publishMember('b');
    expect((await cluster(b)).members).toEqual(['a', 'b']);
    await a.session.close();
    expect((await cluster(b)).members).toEqual(['b']);
    await expect(a.session.publishMember('a again')).rejects.toThrow();
    expect((await cluster(b)).members).toEqual(['b']);
  });

  it('a session that stops renewing: its record is left out a ttl after a reader first saw it, while renewed ones stay; renewed again, it is back', async () => {
    const election = newElection();
    const [reader, renewed, stalled] = [await sessions.open(election, 'reader'), await sessions.open(election, 'renewed'), await sessions.open(election, 'stalled')];
    const stops = [keepRenewing(reader), keepRenewing(renewed)];
    try {
      await reader.session.publishMember('reader');
      await renewed.session.publishMember('renewed');
      await stalled.session.publishMember('stalled');
      const firstSeen = performance.now();
      expect((await cluster(reader)).members).toEqual(['reader', 'renewed', 'stalled']);
      await clusterWhere(reader, (c) => !c.members.includes('stalled'), ttlMs * 3 + 5000, 'the stalled record left out');
      expect(performance.now() - firstSeen).toBeGreaterThanOrEqual(ttlMs);
      expect((await cluster(reader)).members).toEqual(['reader', 'renewed']);
      expect((await cluster(renewed)).members).toEqual(['reader', 'renewed']);

      // Its next renewal finds the record expired and writes it again.
      await stalled.session.renew();
      expect((await cluster(reader)).members).toEqual(['reader', 'renewed', 'stalled']);
    } finally {
      for (const stop of stops) stop();
    }
  });

  it('a member process killed with kill -9: its record is left out at once, as its lock would be', async () => {
    const election = newElection();
    const reader = await sessions.open(election, 'reader');
    await reader.session.publishMember('reader');
    const { child, exited } = await memberProcess(election, 'killed');
    try {
      expect((await cluster(reader)).members).toEqual(['killed', 'reader']);
    } finally {
      child.kill('SIGKILL');
      await exited;
    }
    const killedAt = performance.now();
    await clusterWhere(reader, (c) => !c.members.includes('killed'), ttlMs * 3 + 5000, 'the killed member\'s record left out');
    expect(performance.now() - killedAt).toBeLessThan(ttlMs / 2);
  });

  it('the leader position outlives the session that wrote it, the next writer replaces it, and it is null before anyone wrote it', async () => {
    const election = newElection();
    const [a, b] = [await sessions.open(election, 'a'), await sessions.open(election, 'b')];
    expect(await cluster(a)).toEqual({ members: [], leaderPosition: null });
    await a.session.publishLeaderPosition('{"position":1}');
    expect((await cluster(b)).leaderPosition).toBe('{"position":1}');
    await a.session.close();
    const c = await sessions.open(election, 'c');
    for (const reader of [b, c]) expect((await cluster(reader)).leaderPosition).toBe('{"position":1}');
    await c.session.publishLeaderPosition('{"position":2}');
    for (const reader of [b, c]) expect((await cluster(reader)).leaderPosition).toBe('{"position":2}');
    expect(c.operations).toEqual(['read', 'write', 'read']);
  });

  it('foreign entries in members/ and in the place of leader-position are skipped, warned about once, and the election still works', async () => {
    const election = newElection();
    const members = join(dir, election, 'members');
    mkdirSync(members, { recursive: true, mode: 0o700 });
    // Named like records, but none: too large, no regular file, a FIFO, symlinks (never followed).
    const oversize = join(members, '0123456789abcdef.none.1.0');
    writeFileSync(oversize, 'x'.repeat(MAX_RECORD_BYTES + 1));
    mkdirSync(join(members, '1123456789abcdef.none.1.0'));
    execFileSync('mkfifo', [join(members, '2123456789abcdef.none.1.0')]);
    symlinkSync('/dev/zero', join(members, '3123456789abcdef.none.1.0'));
    const target = scratchFile('record-elsewhere');
    writeFileSync(target, 'a file outside members/');
    symlinkSync(target, join(members, '5123456789abcdef.none.1.0'));
    // Named like nothing leaderd writes, with a small value.
    writeFileSync(join(members, 'junk'), 'junk');
    // Exactly the largest record: one.
    const largest = 'y'.repeat(MAX_RECORD_BYTES);
    writeFileSync(join(members, '4123456789abcdef.none.1.0'), largest);
    writeFileSync(join(dir, election, 'leader-position'), 'z'.repeat(MAX_RECORD_BYTES + 1));

    const a = await sessions.open(election, 'a');
    await a.session.campaign();
    await a.session.publishMember('a');
    for (let i = 0; i < 3; i++) expect(await cluster(a)).toEqual({ members: ['a', largest].sort(), leaderPosition: null });
    const warned = (entry: string) => a.warnings.filter((w) => w.entry === entry);
    expect(warned(oversize)).toHaveLength(1);
    expect(warned(join(dir, election, 'leader-position'))).toHaveLength(1);
    expect(warned('junk')).toHaveLength(1);
    expect((await viewWhere(a, (v) => v.isSelf, 10000, 'a leads')).leader?.id).toBe('a');

    // A directory in the place of leader-position is replaced by the next write.
    rmSync(join(dir, election, 'leader-position'));
    mkdirSync(join(dir, election, 'leader-position', 'inside'), { recursive: true });
    expect((await cluster(a)).leaderPosition).toBeNull();
    await a.session.publishLeaderPosition('p');
    expect((await cluster(a)).leaderPosition).toBe('p');
    expect(a.losses).toEqual([]);
  });

  it('members/ removed by a cleaner: the next publish and renewal make it again, and the lock waits for no ttl', async () => {
    const election = newElection();
    const [a, b] = [await sessions.open(election, 'a'), await sessions.open(election, 'b')];
    await a.session.campaign();
    await viewWhere(a, (v) => v.isSelf, 10000, 'a leads');
    await a.session.publishMember('a');
    await b.session.publishMember('b');
    removeDirectory(join(dir, election, 'members'));
    expect((await cluster(b)).members).toEqual([]);
    await a.session.publishMember('a2');
    await b.session.renew();
    expect((await cluster(b)).members).toEqual(['a2', 'b']);
    await a.session.renew();
    expect(readdirSync(join(dir, election)).filter((n) => n.startsWith('recreated.'))).toEqual([]);

    // No marker: the next candidate takes the lock as soon as it is free.
    await b.session.campaign();
    const token = a.views.at(-1)!.leader!.fencingToken;
    const releasedAt = performance.now();
    await a.session.withdraw();
    const view = await viewWhere(b, (v) => v.isSelf, 10000, 'b leads');
    expect(performance.now() - releasedAt).toBeLessThan(ttlMs / 2);
    expect(view.leader!.fencingToken).toBeGreaterThan(token);
  });

  it('records are never candidates: publishing changes no view, the lock holds only the leader\'s beat, and a member that does not campaign never leads', async () => {
    const election = newElection();
    const [a, b, c] = [await sessions.open(election, 'a'), await sessions.open(election, 'b'), await sessions.open(election, 'c')];
    await a.session.campaign();
    const leading = await viewWhere(a, (v) => v.isSelf, 10000, 'a leads');
    await b.session.campaign();
    await viewWhere(c, (v) => v.leader?.id === 'a', 10000, 'c sees a lead');
    const before = [a, b, c].map((m) => m.views.length);
    for (const m of [c, b, a]) await m.session.publishMember(JSON.stringify({ id: m === a ? 'a' : m === b ? 'b' : 'c', address: 'x' }));
    await a.session.publishLeaderPosition('{"id":"c"}');
    // Every session has looked at the directory again a few times (each look reports a view).
    for (const m of [a, b, c]) await m.session.renew();
    const published = [a, b, c].map((m) => m.views.length);
    await until(() => [a, b, c].every((m, i) => m.views.length >= published[i]! + 3), 10000, 'three more looks by every session');
    for (const [i, m] of [a, b, c].entries()) {
      for (const view of m.views.slice(before[i]!)) expect(view.leader).toEqual(leading.leader);
    }
    expect(readdirSync(join(dir, election, 'lock'))).toEqual([expect.stringMatching(/^beat\./)]);

    // The lock goes to the next candidate, never to the member that only published.
    await a.session.withdraw();
    const next = await viewWhere(b, (v) => v.isSelf, 10000, 'b leads');
    expect(next.leader!.id).toBe('b');
    expect(c.views.every((v) => !v.isSelf && v.leader?.id !== 'c')).toBe(true);
  });
});

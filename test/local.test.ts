import { spawn } from 'node:child_process';
import { chownSync, existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, renameSync, rmdirSync, rmSync, unlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { EventSourceParserStream } from 'eventsource-parser/stream';
import { afterEach, describe, expect, it } from 'vitest';
import { fileURLToPath } from 'node:url';
import { conformance, hookArgs, newElection, readHookRecords, scratchFile, settled } from './conformance.js';
import { BIN, runLeaderd, Sidecar, type LogLine, type RoleBody } from './harness/sidecar.js';

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

/** Runs leaderd to its exit, or kills it after `timeoutMs` (then the code is null). */
async function runUntilExit(argv: string[], timeoutMs: number) {
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
    const result = await runUntilExit(['--id', 'foreign', '--http', '127.0.0.1:0', '--local-dir', foreign, '--election', newElection()], 15000);
    expect(result.code).toBe(2);
    expect(result.stderr).toMatch(/^leaderd: invalid configuration: local-dir: [^\n]*belongs to another user[^\n]*\n$/);
  });

  it('a --local-dir that is a file is refused: exit 2 and one line on stderr saying it is not a directory', async () => {
    const file = scratchFile('not-a-dir');
    writeFileSync(file, 'a file\n');
    const result = await runUntilExit(['--id', 'file', '--http', '127.0.0.1:0', '--local-dir', file, '--election', newElection()], 15000);
    expect(result.code).toBe(2);
    expect(result.stderr).toBe(`leaderd: invalid configuration: local-dir: ${file} is not a directory\n`);
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
    const child = spawn(process.execPath, [BIN, '--id', 'xdg', '--http', '127.0.0.1:0', '--election', election, '--ttl', '2'], {
      uid: NOBODY,
      gid: NOBODY,
      env: { ...process.env, HOME: '/nonexistent', XDG_STATE_HOME: state },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    try {
      const primary = await new Promise<LogLine>((resolve, reject) => {
        const timer = setTimeout(() => reject(new Error('no role: primary within 15 s')), 15000);
        createInterface({ input: child.stdout }).on('line', (text) => {
          const line = JSON.parse(text) as LogLine;
          if (line.msg === 'role: primary') {
            clearTimeout(timer);
            resolve(line);
          }
        });
      });
      expect(primary.fencingToken).toBeGreaterThan(0);
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

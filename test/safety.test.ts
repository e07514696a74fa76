/**
 * The hand-over promises of docs/hooks.md (Safety) and docs/safety.md (The handover),
 * each defended by real sidecars on the local backend whose hooks record, on the host's monotonic
 * clock, when they start and when they finish (test/fixtures/chaos-hook.mjs). Slow hooks are made
 * slow in two ways: a delay, or a *hold* that keeps the hook running until the test deletes a file,
 * so that an ordering is forced by the test rather than hoped for from timing.

 *
 * Each test names the line of src/ it defends; bench/mutants.ts changes those lines one at a time
 * and checks that some test fails.
 */
import { rmSync, mkdirSync, mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterEach, describe, expect, it, onTestFailed } from 'vitest';
import { newElection } from './conformance.js';
import { Sidecar, type LogLine } from './harness/sidecar.js';
import { check, type HookRecord } from './overlap.js';
import { readJsonLines } from './harness/json-lines.js';

const HOOK = fileURLToPath(new URL('./fixtures/chaos-hook.mjs', import.meta.url));
const ADMIN_TOKEN = 'safety-admin-token';
const root = mkdtempSync(join(tmpdir(), 'leaderd-safety-'));
const tokenFile = join(root, 'admin-token');
writeFileSync(tokenFile, ADMIN_TOKEN);
const ELECT_MS = 15000;

type Event = 'promote' | 'demote' | 'leader-change';
type Rec = HookRecord & { LEADERD_ROLE?: string; status?: number; signal?: string; pid: number };

/** The host's monotonic clock in ms, the one the hooks stamp their records with. */
function monotonicNow(): number {
  return Number(process.hrtime.bigint() / 1000n) / 1000;
}

/** One election on the local backend, its sidecars' hooks all writing into one log. */
class Election {
  readonly name = newElection();
  readonly dir = join(root, this.name);
  readonly log = join(this.dir, 'hooks.log');
  readonly control = join(this.dir, 'control');
  private readonly holds = new Set<string>();
  readonly sidecars: Sidecar[] = [];

  constructor() {
    mkdirSync(this.control, { recursive: true });
  }

  async start(name: string, { ttl = 2, leaderChange = false } = {}): Promise<Sidecar> {
    const hook = `${process.execPath} ${HOOK} ${this.log} ${this.control}`;
    const sidecar = await Sidecar.start(`${this.name}-${name}`, [
      '--backend', 'local', '--local-dir', join(this.dir, 'backend'), '--election', this.name, '--ttl', String(ttl),
      '--admin-token-file', tokenFile,
      '--on-promote', hook, '--on-demote', hook,
      ...(leaderChange ? ['--on-leader-change', hook] : []),
    ]);
    this.sidecars.push(sidecar);
    return sidecar;
  }

  /** What a post-mortem needs: every node's log and the hook records. */
  dump(): string {
    const logs = this.sidecars.map((s) => `--- ${s.id}\n${s.logs.map((l) => JSON.stringify(l)).join('\n')}`);
    return `${logs.join('\n')}\n--- hook records\n${this.records().map((r) => JSON.stringify(r)).join('\n')}`;
  }

  /** The lock directory of the local backend (see adapters/local.ts). */
  get lockDir(): string {
    return join(this.dir, 'backend', this.name, 'lock');
  }

  delay(node: Sidecar, event: Event, ms: number): void {
    writeFileSync(join(this.control, `${node.id}.${event}.delay`), String(ms));
  }

  /** The node's `event` hooks ignore SIGTERM. */
  stubborn(node: Sidecar, event: Event): void {
    writeFileSync(join(this.control, `${node.id}.${event}.stubborn`), '');
  }

  /** The node's `event` hooks that start from now on run until `release`. */
  hold(node: Sidecar, event: Event): void {
    const file = join(this.control, `${node.id}.${event}.hold`);
    writeFileSync(file, '');
    this.holds.add(file);
  }

  release(node: Sidecar, event: Event): void {
    rmSync(join(this.control, `${node.id}.${event}.hold`), { force: true });
  }

  releaseAll(): void {
    for (const file of this.holds) rmSync(file, { force: true });
  }

  /** The records so far; a line still being appended (read half-written) waits for the next look. */
  records(): Rec[] {
    return readJsonLines<Rec>(this.log);
  }

  /** The node's records, as `event:token` (hook starts only, unless `ends`). */
  events(node: Sidecar, ends = false): string[] {
    return this.records()
      .filter((r) => r.LEADERD_ID === node.id && (ends || !r.LEADERD_EVENT.endsWith('-done')))
      .map((r) => `${r.LEADERD_EVENT}:${r.LEADERD_FENCING_TOKEN}`);
  }

  /** Waits for the first record of `node` that matches; polls the log, which the hooks append to. */
  async record(node: Sidecar, event: string, timeoutMs = 10000, matches: (r: Rec) => boolean = () => true): Promise<Rec> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const found = this.records().find((r) => r.LEADERD_ID === node.id && r.LEADERD_EVENT === event && matches(r));
      if (found) return found;
      if (Date.now() > deadline) throw new Error(`${node.id}: no ${event} hook record within ${timeoutMs} ms: ${JSON.stringify(this.events(node, true))}`);
      await new Promise((resolve) => setTimeout(resolve, 20));
    }
  }

  /** The split-brain checker over this election's log: every test ends with it. */
  violations(): string[] {
    return check(this.records()).violations;
  }
}

function resign(node: Sidecar, holdOffSeconds: number): Promise<Response> {
  return node.fetch('/resign', {
    method: 'POST',
    headers: { authorization: `Bearer ${ADMIN_TOKEN}`, 'content-type': 'application/json' },
    body: JSON.stringify({ holdOffSeconds }),
    signal: AbortSignal.timeout(30000),
  });
}

const resigned = (l: LogLine) => l.msg === 'resigned: out of the race';
const status = async (node: Sidecar, path: string) => (await node.fetch(path)).status;

/** Starts `first` alone so that it leads, waits for its promote hook to finish, then the others as its replicas. */
async function ledBy(election: Election, first: Sidecar, start: () => Promise<Sidecar[]>, promoteDone = true): Promise<{ token: number; others: Sidecar[] }> {
  const state = await first.waitForRole('primary', ELECT_MS);
  if (promoteDone) await election.record(first, 'promote-done', ELECT_MS);
  const others = await start();
  await Promise.all(others.map((o) => o.waitForState((s) => s.role === 'replica' && s.leader?.id === first.id, ELECT_MS, `replica of ${first.id}`)));
  return { token: state.fencingToken!, others };
}

let elections: Election[] = [];
function election(): Election {
  const e = new Election();
  elections.push(e);
  onTestFailed(() => console.error(e.dump()));
  return e;
}

afterEach(async () => {
  for (const e of elections) e.releaseAll();
  elections = [];
  await Sidecar.killAll();
});

describe('safety: a successor is promoted only after its predecessor has stepped down (local backend)', () => {
  // Elector.resign(): `await this.options.settle()` before the withdrawal (and HookRunner.idle()).
  it('POST /resign: the successor promotes only after the demote hook has finished, and the answer comes after it', async () => {
    const e = election();
    const a = await e.start('a');
    const { token, others } = await ledBy(e, a, async () => [await e.start('b')]);
    const b = others[0]!;
    e.delay(a, 'demote', 1500);

    const answer = resign(a, 60);
    await a.waitForLog(resigned, 10000, 'resignation');
    expect(await status(a, '/primary')).toBe(503);
    const demote = await e.record(a, 'demote');
    expect(demote.LEADERD_FENCING_TOKEN).toBe(String(token));
    expect(await status(a, '/primary')).toBe(503);

    const response = await answer;
    const answeredAt = monotonicNow();
    expect(response.status).toBe(200);
    const demoted = e.records().find((r) => r.LEADERD_ID === a.id && r.LEADERD_EVENT === 'demote-done');
    expect(demoted, 'the demote hook had finished when /resign answered').toBeDefined();
    expect(demoted!.at).toBeLessThan(answeredAt);

    await b.waitForRole('primary', ELECT_MS);
    const promote = await e.record(b, 'promote');
    expect(promote.at, "the successor's promote started after the predecessor's demote hook finished").toBeGreaterThan(demoted!.at);
    expect(Number(promote.LEADERD_FENCING_TOKEN)).toBeGreaterThan(token);
    await e.record(b, 'promote-done');
    expect(e.violations()).toEqual([]);
  });

  // Elector.reconcile(): a node that is not campaigning is never primary, whatever its view says;
  // HookRunner.enqueue(): a demote cuts a running promote short, killing it at once (it ignores
  // SIGTERM here); a promote cut short is no failure.
  it('POST /resign while the promote hook runs: /primary answers 503 at once, the promote is killed, the successor waits for the demote', async () => {
    const e = election();
    const a = await e.start('a');
    e.hold(a, 'promote');
    e.stubborn(a, 'promote');
    const { token, others } = await ledBy(e, a, async () => [await e.start('b')], false);
    const b = others[0]!;
    const promote = await e.record(a, 'promote');

    const asked = monotonicNow();
    const answer = resign(a, 60);
    await a.waitForLog(resigned, 10000, 'resignation');
    expect(await status(a, '/primary'), 'a resigning node answers 503 from the moment the resign is accepted').toBe(503);
    await a.waitForLog((l) => l.msg === 'hook failed' && l.hook === 'promote' && l.err === 'cancelled', 10000, 'promote cut short');
    expect((await answer).status).toBe(200);

    const demote = await e.record(a, 'demote');
    const demoted = await e.record(a, 'demote-done');
    expect(demote.LEADERD_FENCING_TOKEN).toBe(String(token));
    // Killed outright, not after a grace period (5 s) for a hook that ignores SIGTERM.
    expect(demote.at - asked).toBeLessThan(4000);
    expect(() => process.kill(promote.pid, 0), 'the promote hook is gone').toThrow(/ESRCH/);
    expect(e.records().some((r) => r.LEADERD_ID === a.id && r.LEADERD_EVENT === 'promote-done' && r.status === 0)).toBe(false);
    const successor = await e.record(b, 'promote', ELECT_MS);
    expect(successor.at).toBeGreaterThan(demoted.at);
    // Cut short by the demote, the promote did not fail: no second resignation (with its hold-off).
    // (Log lines come over stdout, apart from HTTP: wait for the demote's, which the node logs after.)
    await a.waitForLog((l) => l.msg === 'hook succeeded' && l.hook === 'demote', 10000, 'demote hook');
    expect(a.logs.filter(resigned)).toHaveLength(1);
    expect(e.violations()).toEqual([]);
  });

  // HookRunner.handle(): `holdsTerm` before a promote; Elector.holdsTerm(): `role === 'primary'`.
  it('a promote queued behind a slow hook is never started once its term is over', async () => {
    const e = election();
    const a = await e.start('a', { leaderChange: true });
    e.hold(a, 'leader-change');
    const { token } = await ledBy(e, a, async () => [], false);
    await e.record(a, 'leader-change', 10000, (r) => r.LEADERD_ROLE === 'primary');

    // The promote is queued behind the held leader-change hook; the term ends before it can start.
    const answer = resign(a, 60);
    await a.waitForLog(resigned, 10000, 'resignation');
    expect(await status(a, '/primary')).toBe(503);
    e.release(a, 'leader-change');
    expect((await answer).status).toBe(200);
    await e.record(a, 'demote-done');

    expect(e.events(a)).toEqual([`leader-change:${token}`, `demote:${token}`]);
    await a.waitForLog((l) => l.msg === 'promote hook not started: the term is already over' && l.fencingToken === token, 10000, 'promote skipped');
    expect(e.violations()).toEqual([]);
  });

  // Elector.holdsTerm(): `leader?.fencingToken === fencingToken`.
  it("a promote queued for a term that ended is not started in the node's next term either", async () => {
    const e = election();
    const a = await e.start('a', { leaderChange: true });
    e.hold(a, 'leader-change');
    const { token } = await ledBy(e, a, async () => [], false);
    await e.record(a, 'leader-change', 10000, (r) => r.LEADERD_ROLE === 'primary');

    // The session is lost behind the node's back (its lock deleted); it leads again at once with a
    // new session and a new token, while its hooks are still stuck on the first term.
    rmSync(e.lockDir, { recursive: true, force: true });
    const next = await a.waitForState((s) => s.role === 'primary' && s.fencingToken! > token, ELECT_MS, 'primary in a new term');
    e.release(a, 'leader-change');
    await e.record(a, 'promote-done', ELECT_MS);

    const t1 = token;
    const t2 = next.fencingToken;
    expect(e.events(a)).toEqual([`leader-change:${t1}`, `demote:${t1}`, `leader-change:${t2}`, `promote:${t2}`]);
    expect(e.violations()).toEqual([]);
  });

  // Elector.resign(): the hold-off timer is set only once the withdrawal has landed.
  it('POST /resign with no hold-off: the node never leads again on its old candidacy, even while its demote hook runs', async () => {
    const e = election();
    const a = await e.start('a');
    const { token, others } = await ledBy(e, a, async () => [await e.start('b')]);
    e.delay(a, 'demote', 1000);

    expect((await resign(a, 0)).status).toBe(200);
    const group = [a, ...others];
    const abort = new AbortController();
    const next = await Promise.any(
      group.map((s) => s.waitForState((r) => r.role === 'primary' && r.fencingToken! > token, ELECT_MS, 'a new term', abort.signal)),
    ).finally(() => abort.abort());
    const successor = group.find((s) => s.id === next.id)!;
    await e.record(successor, 'promote-done', ELECT_MS, (r) => r.LEADERD_FENCING_TOKEN === String(next.fencingToken));

    const old = e.records().filter((r) => r.LEADERD_ID === a.id && r.LEADERD_FENCING_TOKEN === String(token)).map((r) => r.LEADERD_EVENT);
    expect(old).toEqual(['promote', 'promote-done', 'demote', 'demote-done']);
    expect(e.violations()).toEqual([]);
  });

  // Elector.stop(): the hooks settle before the session is closed, and the lease is renewed meanwhile.
  it('SIGTERM: no successor is promoted until the demote hook has finished, even one that runs longer than the lease', async () => {
    const e = election();
    const a = await e.start('a');
    const { token, others } = await ledBy(e, a, async () => [await e.start('b')]);
    const b = others[0]!;
    e.hold(a, 'demote');

    const exit = a.stop();
    await e.record(a, 'demote');
    // Two leases and more: unless the stopping node kept renewing, b would have taken over.
    await expect(b.waitForRole('primary', 5000)).rejects.toThrow(/no role primary/);
    e.release(a, 'demote');
    expect(await exit).toEqual({ code: 0, signal: null });
    const demoted = await e.record(a, 'demote-done');
    const promote = await e.record(b, 'promote', ELECT_MS);
    expect(promote.at).toBeGreaterThan(demoted.at);
    expect(Number(promote.LEADERD_FENCING_TOKEN)).toBeGreaterThan(token);
    expect(e.violations()).toEqual([]);
  });

  // Elector.stop(): a node that still leads in the backend (here: resigning, its demote hook
  // still running) keeps renewing until the hook has finished, whatever its role already says.
  it('SIGTERM while a resign waits for its demote hook: no successor until the hook has finished', async () => {
    const e = election();
    const a = await e.start('a');
    const { token, others } = await ledBy(e, a, async () => [await e.start('b')]);
    const b = others[0]!;
    e.hold(a, 'demote');
    const resigning = resign(a, 60).catch(() => undefined);
    await e.record(a, 'demote');

    const exit = a.stop();
    await a.waitForLog((l) => l.msg === 'shutting down', 5000, 'shutdown');
    // Two leases and more: unless the stopping node kept renewing, b would have taken over.
    await expect(b.waitForRole('primary', 5000)).rejects.toThrow(/no role primary/);
    e.release(a, 'demote');
    expect(await exit).toEqual({ code: 0, signal: null });
    await resigning;
    const demoted = await e.record(a, 'demote-done');
    const promote = await e.record(b, 'promote', ELECT_MS);
    expect(promote.at).toBeGreaterThan(demoted.at);
    expect(Number(promote.LEADERD_FENCING_TOKEN)).toBeGreaterThan(token);
    expect(e.violations()).toEqual([]);
  });

  // Elector.dropSession(): the session is closed only after `settle()`.
  it('a lease deadline that passes: the lock is not released while the demote hook runs, only expired', async () => {
    const e = election();
    const a = await e.start('a');
    const { token } = await ledBy(e, a, async () => []);
    e.hold(a, 'demote');

    // Frozen past its deadline (renew deadline 1.33 s after a renewal sent before the freeze).
    a.signal('SIGSTOP');
    await new Promise((resolve) => setTimeout(resolve, 1600));
    a.signal('SIGCONT');
    const dropped = await a.waitForLog((l) => l.msg === 'session ended', 10000, 'session ended');
    expect(dropped.reason).toBe('lease deadline passed');
    await e.record(a, 'demote');

    // Its new session may lead only once the old lock has expired: the old session does not
    // release it while the demote hook runs.
    const next = await a.waitForState((s) => s.role === 'primary' && s.fencingToken! > token, ELECT_MS, 'primary in a new term');
    // (Log lines come over stdout, apart from /watch: wait for the line of the promotion.)
    const promoted = a.logs.indexOf(await a.waitForLog((l) => l.msg === 'role: primary' && l.fencingToken === next.fencingToken, 10000, 'role: primary'));
    const expired = a.logs.findIndex((l) => l.msg === 'expired the lock of a leader that stopped renewing');
    expect(expired, 'the old lock was expired, not released').toBeGreaterThanOrEqual(0);
    expect(expired).toBeLessThan(promoted);
    expect(e.records().some((r) => r.LEADERD_EVENT === 'demote-done')).toBe(false);

    e.release(a, 'demote');
    await e.record(a, 'promote-done', ELECT_MS, (r) => r.LEADERD_FENCING_TOKEN === String(next.fencingToken));
    expect(e.violations()).toEqual([]);
  });
});

/**
 * The mutation check of the safety logic: changes one safety line of src/elector.ts, src/lease.ts,
 * src/hooks.ts or src/member.ts (the failover gate) at a time, in a fresh copy of the repository (never in the working tree), builds
 * it, runs the fast test files against it, and reports which mutants no test caught.
 *
 *   npx tsx bench/mutants.ts [--only ID[,ID...]] [--skip REGEX] [--bail] [--keep] [--work DIR]
 *
 * The copy is HEAD (`git archive`) with this working tree's safety tests laid over it (the files
 * in TESTS_FROM_WORKTREE), and node_modules linked in. A mutant is "killed" when at least one test
 * fails; it "survived" when every test passed. A mutant whose text is no longer in the source
 * (someone changed the line) is reported as "does not apply", and the run exits 1, so that the
 * list is kept in step with the code. The table goes to stdout and to bench/tmp/mutants-<date>.md.
 * About 45 s per mutant on 2 cores; `--bail` stops each run at its first failure (faster, but
 * names only one killing test). `--skip` leaves out the tests whose full name matches, for a test
 * that fails now and then on the unmutated code too and would make every mutant look killed; the
 * report names what was skipped.
 */
import { spawn } from 'node:child_process';
import { cpSync, existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { basename, dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { today, writeReport } from './report.js';

const ROOT = fileURLToPath(new URL('..', import.meta.url));

/**
 * The fast test files (not the chaos suite, not the servers' conformance runs); deadline.test.ts
 * starts one etcd server of its own. Files not in the copy are left out.
 */
const TEST_FILES = [
  'test/lease.test.ts',
  'test/overlap.test.ts',
  'test/config.test.ts',
  'test/http.test.ts',
  'test/hooks.test.ts',
  'test/deadline.test.ts',
  'test/safety.test.ts',
  'test/local.test.ts',
];

/** Taken from the working tree rather than HEAD: the tests under development. */
const TESTS_FROM_WORKTREE = [
  'test/safety.test.ts',
  'test/overlap.ts',
  'test/overlap.test.ts',
  'test/fixtures/chaos-hook.mjs',
  'test/chaos/world.ts',
  'test/chaos/faults.ts',
  'test/chaos/deployments.ts',
];

interface Mutant {
  readonly id: string;
  readonly file: 'src/elector.ts' | 'src/lease.ts' | 'src/hooks.ts' | 'src/member.ts';
  /** What the line promises. */
  readonly what: string;
  /** Exact text, found exactly once in the file... */
  readonly from: string;
  /** ...and what it becomes. */
  readonly to: string;
  /** Why no test can tell it apart, when that is so (an equivalent mutant). */
  readonly equivalent?: string;
}

const E = 'src/elector.ts' as const;
const L = 'src/lease.ts' as const;
const H = 'src/hooks.ts' as const;
const M = 'src/member.ts' as const;

const MUTANTS: readonly Mutant[] = [
  // --- the lease deadline (src/lease.ts) ---
  { id: 'L1', file: L, what: 'expiry is a latch: once seen expired, always expired', from: '    if (this.expired) return 0;\n', to: '' },
  { id: 'L2', file: L, what: 'expiry is a latch: the latch is set', from: '      this.expired = true;\n', to: '' },
  {
    id: 'L3', file: L, what: 'the deadline itself is already past', from: 'if (remaining <= 0) {', to: 'if (remaining < 0) {',
    equivalent: 'differs only at the exact millisecond of the deadline, where remainingMs() answers 0 either way and isValid() is false either way',
  },
  { id: 'L4', file: L, what: 'a renewal confirmed after the deadline does not revive the lease', from: '    if (!this.isValid(confirmedAt)) return;\n', to: '' },
  { id: 'L5', file: L, what: 'an older renewal confirmed late does not move the deadline back', from: 'if (sentAt.monotonic > this.renewedAt.monotonic) this.renewedAt = sentAt;', to: 'this.renewedAt = sentAt;' },
  { id: 'L6', file: L, what: 'elapsed time by the more pessimistic clock (wall clock counts through a suspend)', from: 'Math.max(to.monotonic - from.monotonic, to.wall - from.wall, 0)', to: 'Math.max(to.monotonic - from.monotonic, 0)' },
  { id: 'L7', file: L, what: 'elapsed time by the more pessimistic clock (monotonic counts through a wall-clock step)', from: 'Math.max(to.monotonic - from.monotonic, to.wall - from.wall, 0)', to: 'Math.max(to.wall - from.wall, 0)' },
  {
    id: 'L8', file: L, what: 'elapsed time is never negative', from: 'Math.max(to.monotonic - from.monotonic, to.wall - from.wall, 0)', to: 'Math.max(to.monotonic - from.monotonic, to.wall - from.wall)',
    equivalent: 'the monotonic clock never runs backwards, so its elapsed time is never negative and the 0 never wins',
  },
  { id: 'L9', file: L, what: 'a lease with 0 ms left is not valid', from: 'return this.remainingMs(at) > 0;', to: 'return this.remainingMs(at) >= 0;' },

  // --- the elector's deadline checks (src/elector.ts) ---
  { id: 'E1', file: E, what: 'every answer re-checks the deadline (reconcile drops an expired session)', from: 'if (this.session && !this.lease?.isValid()) {', to: 'if (false) {' },
  {
    id: 'E2', file: E, what: 'a renewal is not sent on an expired lease', from: "    if (!this.lease?.isValid()) {\n      this.reconcile('lease deadline passed');\n      return 0;\n    }\n", to: '',
    equivalent: 'for safety: the latched deadline ignores the late renewal and the reconcile after it ends the term; the backend only sees one more renewal of a session about to be released (a peer may wait longer)',
  },
  { id: 'E3', file: E, what: 'the deadline counts from when a renewal was sent, not answered', from: 'this.lease.renewed(sentAt);', to: 'this.lease.renewed(now());' },
  { id: 'E4', file: E, what: 'the first deadline counts from when open() was called', from: 'this.lease = new LeaseDeadline(timing.renewDeadlineMs, sentAt);', to: 'this.lease = new LeaseDeadline(timing.renewDeadlineMs, now());' },
  { id: 'E5b', file: E, what: 'a timer ends the term the moment the deadline passes', from: 'const remainingMs = this.lease?.remainingMs();\n    if (!remainingMs) return;', to: 'const remainingMs = 0 * (this.lease?.remainingMs() ?? 0);\n    if (!remainingMs) return;' },
  { id: 'E5c', file: E, what: "a new session's deadline is timed from the start", from: "    this.armDeadlineTimer();\n    log.info('session opened');\n", to: "    log.info('session opened');\n" },
  {
    id: 'E5d', file: E, what: 'the deadline timer follows each renewal', from: '    this.armDeadlineTimer();\n    this.emit((l) => l.renewal?.(true));\n', to: '    this.emit((l) => l.renewal?.(true));\n',
    equivalent: 'the timer armed for the previous deadline fires, finds the lease still valid, and arms itself again for what is left',
  },
  {
    id: 'E5', file: E, what: 'a renewal of a session already dropped does not renew the current one', from: 'if (this.session !== session || !this.lease) return 0;', to: 'if (!this.lease) return 0;',
    equivalent: "the dropped session's renewal was sent before the current session was opened, and LeaseDeadline.renewed() ignores a renewal older than the one it counts from (L5)",
  },

  // --- the role and holdsTerm ---
  { id: 'E6', file: E, what: 'a node that is not campaigning is never primary (issue item 14)', from: "view.isSelf && this.campaigning ? 'primary'", to: "view.isSelf ? 'primary'" },
  { id: 'E7', file: E, what: "a node shutting down is 'unknown', never primary", from: "const connected = this.session !== null && this.phase === 'running';", to: 'const connected = this.session !== null;' },
  { id: 'E8', file: E, what: 'holdsTerm: only while primary', from: "return role === 'primary' && leader?.fencingToken === fencingToken;", to: 'return leader?.fencingToken === fencingToken;' },
  { id: 'E9', file: E, what: 'holdsTerm: only for the term asked about', from: "return role === 'primary' && leader?.fencingToken === fencingToken;", to: "return role === 'primary';" },

  // --- resign ---
  { id: 'E10', file: E, what: 'resign releases only after the demote hook has finished (issue item 13)', from: "'resigned: out of the race');\n    await this.options.settle();\n", to: "'resigned: out of the race');\n" },
  { id: 'E11', file: E, what: 'resign leaves the race at once', from: '    const resignation = ++this.resignations;\n    this.campaigning = false;\n', to: '    const resignation = ++this.resignations;\n' },
  { id: 'E12', file: E, what: 'resign publishes the demote before waiting for the hooks', from: '    clearTimeout(this.holdOffTimer);\n    this.reconcile(reason);\n', to: '    clearTimeout(this.holdOffTimer);\n' },
  { id: 'E13', file: E, what: 'a resign replaces the hold-off of an earlier one', from: '    this.campaigning = false;\n    clearTimeout(this.holdOffTimer);\n    this.reconcile(reason);\n', to: '    this.campaigning = false;\n    this.reconcile(reason);\n' },
  {
    id: 'E14', file: E, what: 'the hold-off starts once leadership is released',
    from: "    await this.options.settle();\n    const session = this.session;\n    if (session) {\n      await this.changeCandidacy('withdraw'",
    to: "    if (resignation === this.resignations && this.phase === 'running') this.holdOffTimer = setTimeout(() => this.rejoin(), holdOffMs);\n    await this.options.settle();\n    const session = this.session;\n    if (session) {\n      await this.changeCandidacy('withdraw'",
  },
  { id: 'E15', file: E, what: 'only the latest of overlapping resigns sets the hold-off', from: "if (resignation === this.resignations && this.phase === 'running') {", to: "if (this.phase === 'running') {" },
  { id: 'E16', file: E, what: 'a withdrawal that failed ends the session', from: "if (this.session === session) this.dropSession(`withdraw failed: ${errorMessage(error)}`);", to: 'void error;' },

  // --- stop ---
  { id: 'E17', file: E, what: "stop keeps a primary's lease renewed until its demote hook has finished", from: '    if (wasPrimary) await this.options.settle();\n', to: '' },
  {
    id: 'E17b', file: E, what: 'stop releases only after the hooks have settled', from: '    clearTimeout(this.deadlineTimer);\n    await this.options.settle();\n', to: '    clearTimeout(this.deadlineTimer);\n',
    equivalent: "for safety: a primary's demote has already been waited for (E17); this wait is for a replica's hooks",
  },
  { id: 'E17c', file: E, what: 'the loop goes on renewing while stopping', from: "return this.phase === 'running' || (this.phase === 'stopping' && this.session !== null);", to: "return this.phase === 'running';" },
  { id: 'E18', file: E, what: 'stop publishes the demote before releasing', from: "    this.reconcile('shutdown');\n", to: '' },
  {
    id: 'E19', file: E, what: 'stop leaves the race', from: "    this.phase = 'stopping';\n    this.campaigning = false;\n", to: "    this.phase = 'stopping';\n",
    equivalent: "once stopping, the role is 'unknown' whatever campaigning says, and neither open() nor rejoin() campaigns any more",
  },

  // --- a dropped session ---
  { id: 'E20', file: E, what: 'a dropped session is released only after the demote hook has finished', from: "    const released = this.options\n      .settle()\n      .then(() => this.request('close', () => session.close()))\n", to: "    const released = this.request('close', () => session.close())\n" },
  { id: 'E21', file: E, what: 'a dropped session publishes the demote before it is released', from: "'session ended',\n    );\n    this.reconcile(reason);\n", to: "'session ended',\n    );\n" },

  // --- the publish order and the transitions ---
  {
    id: 'E22', file: E, what: 'publish order: demote before leader-change',
    from: "    if (before.role === 'primary' && (role !== 'primary' || termChanged)) {\n      transitions.push({ event: 'demote', role, leader: before.leader, reason });\n    }\n    if (leader && !sameLeader(this.lastAnnouncedLeader, leader)) {\n      this.lastAnnouncedLeader = leader;\n      transitions.push({ event: 'leader-change', role, leader, reason });\n    }\n",
    to: "    if (leader && !sameLeader(this.lastAnnouncedLeader, leader)) {\n      this.lastAnnouncedLeader = leader;\n      transitions.push({ event: 'leader-change', role, leader, reason });\n    }\n    if (before.role === 'primary' && (role !== 'primary' || termChanged)) {\n      transitions.push({ event: 'demote', role, leader: before.leader, reason });\n    }\n",
  },
  {
    id: 'E23', file: E, what: 'publish order: leader-change before promote',
    from: "    if (leader && !sameLeader(this.lastAnnouncedLeader, leader)) {\n      this.lastAnnouncedLeader = leader;\n      transitions.push({ event: 'leader-change', role, leader, reason });\n    }\n    if (role === 'primary' && (before.role !== 'primary' || termChanged)) {\n      transitions.push({ event: 'promote', role, leader, reason });\n    }\n",
    to: "    if (role === 'primary' && (before.role !== 'primary' || termChanged)) {\n      transitions.push({ event: 'promote', role, leader, reason });\n    }\n    if (leader && !sameLeader(this.lastAnnouncedLeader, leader)) {\n      this.lastAnnouncedLeader = leader;\n      transitions.push({ event: 'leader-change', role, leader, reason });\n    }\n",
  },
  {
    id: 'E24', file: E, what: 'publish order: demote before promote (a primary that goes straight into a new term)',
    from: "    if (before.role === 'primary' && (role !== 'primary' || termChanged)) {\n      transitions.push({ event: 'demote', role, leader: before.leader, reason });\n    }\n    if (leader && !sameLeader(this.lastAnnouncedLeader, leader)) {\n      this.lastAnnouncedLeader = leader;\n      transitions.push({ event: 'leader-change', role, leader, reason });\n    }\n    if (role === 'primary' && (before.role !== 'primary' || termChanged)) {\n      transitions.push({ event: 'promote', role, leader, reason });\n    }\n",
    to: "    if (leader && !sameLeader(this.lastAnnouncedLeader, leader)) {\n      this.lastAnnouncedLeader = leader;\n      transitions.push({ event: 'leader-change', role, leader, reason });\n    }\n    if (role === 'primary' && (before.role !== 'primary' || termChanged)) {\n      transitions.push({ event: 'promote', role, leader, reason });\n    }\n    if (before.role === 'primary' && (role !== 'primary' || termChanged)) {\n      transitions.push({ event: 'demote', role, leader: before.leader, reason });\n    }\n",
  },
  { id: 'E25', file: E, what: 'a primary whose term changes is demoted from the old one', from: "if (before.role === 'primary' && (role !== 'primary' || termChanged)) {", to: "if (before.role === 'primary' && role !== 'primary') {" },
  { id: 'E26', file: E, what: 'a primary whose term changes is promoted in the new one', from: "if (role === 'primary' && (before.role !== 'primary' || termChanged)) {", to: "if (role === 'primary' && before.role !== 'primary') {" },

  // --- candidacy and phases ---
  { id: 'E27', file: E, what: 'campaigns and withdrawals run one at a time, in order', from: 'const next = this.candidacy.then(() => this.request(change, () => session[change]()));', to: 'const next = this.request(change, () => session[change]());' },
  { id: 'E28', file: E, what: 'a new session campaigns only while in the race (not during a hold-off)', from: 'if (this.campaigning) await this.campaign(session);', to: 'await this.campaign(session);' },
  {
    id: 'E29', file: E, what: 'the hold-off ends only while running', from: "  private rejoin(): void {\n    if (this.phase !== 'running') return;\n", to: '  private rejoin(): void {\n',
    equivalent: 'stop() clears the hold-off timer and resign() sets none once stopping, so rejoin() never runs outside running',
  },
  {
    id: 'E30', file: E, what: 'a session that opens after stop began is closed, not used', from: "    if (this.phase !== 'running') {\n      void session.close().catch(() => undefined);\n      return 0;\n    }\n", to: '',
    equivalent: "such a session does not campaign (stop cleared campaigning) and is 'unknown' (not running); stop() closes this.session after the loop, so it is closed either way",
  },
  { id: 'E32', file: E, what: 'a session reported lost while it opened is closed, not used', from: '    if (attempt.lost) {\n', to: '    if (false) {\n' },
  { id: 'E31', file: E, what: 'resign does nothing once stopping (POST /resign answers 503)', from: "    if (this.phase !== 'running') return false;\n    const resignation", to: '    const resignation' },

  // --- the failover gate (src/elector.ts, src/member.ts) ---
  { id: 'G1', file: E, what: 'a candidacy that comes first is promoted only once the gate confirms it', from: "        if (this.confirmedToken === token) role = 'primary';", to: "        role = 'primary';" },
  { id: 'G2', file: E, what: 'a candidacy the gate refused is spent (withdrawn, never promoted)', from: '          this.spentThrough = Math.max(this.spentThrough, token);\n          this.options.log.info({ fencingToken: token }', to: '          this.options.log.info({ fencingToken: token }' },
  { id: 'G3', file: E, what: 'a node still leading in the backend keeps renewing through its shutdown demote', from: "const holding = this.published.role === 'primary' || this.attempt?.view.isSelf === true;", to: "const holding = this.published.role === 'primary';" },
  { id: 'G4', file: E, what: 'an unpromoted own candidacy is not named as leader', from: "      if (role !== 'primary') leader = null;\n", to: '' },
  { id: 'G5', file: M, what: 'a member handing over does not stand', from: "    if (this.handoverTo !== null) return { ok: false, reason: `switching over to ${this.handoverTo}` };\n    if (monotonicMs() < this.steppedBackUntil)", to: '    if (monotonicMs() < this.steppedBackUntil)' },
  { id: 'G6', file: M, what: 'one switchover at a time', from: '    if (this.switching) {', to: '    if (false) {' },
  { id: 'G7', file: M, what: 'nobody stands while another member leads', from: '    if (!leading && leader !== null) return false;\n', to: '' },
  { id: 'G8', file: M, what: 'a primary whose check keeps failing steps down', from: '    if (this.failingSince !== null && monotonicMs() - this.failingSince >= this.options.unhealthyAfterMs) {', to: '    if (false) {' },

  // --- hooks (src/hooks.ts) ---
  { id: 'H1', file: H, what: 'a promote is started only while its term holds (issue item 15)', from: "if (event === 'promote' && !(leader && this.options.holdsTerm(leader.fencingToken))) {", to: 'if (false) {' },
  { id: 'H2', file: H, what: 'a demote cuts a running promote short', from: '      this.running.abort.abort();\n', to: '' },
  { id: 'H3', file: H, what: 'a running hook is known, so that a demote can cut it short', from: '    this.running = { event, abort };\n', to: '' },
  { id: 'H4', file: H, what: 'a failed promote makes the node resign', from: "if (event === 'promote' && !abort.signal.aborted) this.options.promoteFailed(", to: 'if (false) this.options.promoteFailed(' },
  { id: 'H5', file: H, what: 'a promote cut short by a demote is no failure (no resign, no hold-off)', from: "if (event === 'promote' && !abort.signal.aborted) this.options.promoteFailed(", to: "if (event === 'promote') this.options.promoteFailed(" },
  { id: 'H6', file: H, what: 'hooks run one at a time', from: 'while ((next = this.queue.shift())) await this.handle(next);', to: 'while ((next = this.queue.shift())) void this.handle(next);' },
  { id: 'H7', file: H, what: 'idle() waits for every hook enqueued so far', from: '    return this.drained;\n', to: '    return Promise.resolve();\n' },
  { id: 'H8', file: H, what: 'a hook is done when its command has exited', from: '        await run();\n', to: '        void run().catch(() => undefined);\n' },
  { id: 'H9', file: H, what: 'a promote stops at its first failed target (the URL is not told of a promote whose command failed)', from: "        if (event === 'promote') break;\n", to: '' },
  { id: 'H10', file: H, what: 'a promote cut short is killed at once, so that the demote starts now', from: "const onCancel = () => stop('cancelled', 0);", to: "const onCancel = () => stop('cancelled', KILL_GRACE_MS);" },
];

interface Outcome {
  mutant: Mutant;
  result: 'killed' | 'survived' | 'does not apply' | 'build failed';
  /** The tests that failed, as "file: test". */
  failed: string[];
  seconds: number;
}

function run(command: string, args: string[], cwd: string, logFile: string, timeoutMs: number): Promise<number | null> {
  return new Promise((resolve) => {
    const child = spawn(command, args, { cwd, stdio: ['ignore', 'pipe', 'pipe'], detached: true, env: { ...process.env, FORCE_COLOR: '0' } });
    let output = '';
    child.stdout.on('data', (c) => (output += c));
    child.stderr.on('data', (c) => (output += c));
    const timer = setTimeout(() => {
      output += `\n[mutants] timed out after ${timeoutMs / 1000} s\n`;
      try {
        process.kill(-child.pid!, 'SIGKILL');
      } catch {
        // gone
      }
    }, timeoutMs);
    child.once('exit', (code) => {
      clearTimeout(timer);
      // Sidecars a killed run left behind are in its process group too.
      try {
        process.kill(-child.pid!, 'SIGKILL');
      } catch {
        // gone
      }
      writeFileSync(logFile, output);
      resolve(code);
    });
  });
}

/** `commit` (HEAD), with the working tree's tests laid over it and node_modules linked in. */
async function prepareBase(work: string, commit: string): Promise<string> {
  const base = join(work, 'base');
  mkdirSync(base, { recursive: true });
  const archive = await run('/bin/sh', ['-c', `git -C '${ROOT}' archive ${commit} | tar -x -C '${base}'`], ROOT, join(work, 'archive.log'), 120000);
  if (archive !== 0) throw new Error(`git archive failed: ${readFileSync(join(work, 'archive.log'), 'utf8')}`);
  for (const file of TESTS_FROM_WORKTREE) {
    mkdirSync(dirname(join(base, file)), { recursive: true });
    cpSync(join(ROOT, file), join(base, file));
  }
  symlinkSync(join(ROOT, 'node_modules'), join(base, 'node_modules'));
  return base;
}

async function test(copy: string, log: string, bail: boolean, skip: string | undefined): Promise<{ ok: boolean; failed: string[]; built: boolean }> {
  const build = await run('npx', ['tsc', '-p', 'tsconfig.json'], copy, `${log}.build`, 300000);
  if (build !== 0) return { ok: false, failed: [], built: false };
  rmSync(join(copy, '.test-results.json'), { force: true });
  const filter = skip === undefined ? [] : ['-t', `^(?!.*(?:${skip}))`];
  const files = TEST_FILES.filter((file) => existsSync(join(copy, file)));
  const code = await run('npx', ['vitest', 'run', ...(bail ? ['--bail=1'] : []), ...filter, ...files], copy, log, 15 * 60000);
  const failed: string[] = [];
  try {
    const report = JSON.parse(readFileSync(join(copy, '.test-results.json'), 'utf8')) as {
      testResults: Array<{ name: string; assertionResults: Array<{ status: string; title: string }> }>;
    };
    for (const file of report.testResults) {
      for (const t of file.assertionResults) if (t.status === 'failed') failed.push(`${basename(file.name)}: ${t.title}`);
    }
  } catch {
    if (code !== 0) failed.push(`(no report; exit ${code}: see ${log})`);
  }
  return { ok: code === 0 && failed.length === 0, failed, built: true };
}

async function main(): Promise<number> {
  const { values } = parseArgs({
    options: { only: { type: 'string' }, skip: { type: 'string' }, bail: { type: 'boolean', default: false }, keep: { type: 'boolean', default: false }, work: { type: 'string' } },
  });
  const only = values.only?.split(',');
  const mutants = MUTANTS.filter((m) => !only || only.includes(m.id));
  const work = values.work ?? mkdtempSync(join(tmpdir(), 'leaderd-mutants-'));
  mkdirSync(work, { recursive: true });
  console.error(`[mutants] working in ${work}`);
  const head = await new Promise<string>((resolve, reject) => {
    const git = spawn('git', ['-C', ROOT, 'rev-parse', '--short', 'HEAD']);
    let out = '';
    git.stdout.on('data', (c) => (out += c));
    git.once('close', (code) => (code === 0 ? resolve(out.trim()) : reject(new Error('git rev-parse HEAD failed'))));
  });
  const base = await prepareBase(work, head);

  const started = Date.now();
  const baseline = await test(base, join(work, 'baseline.log'), false, values.skip);
  if (!baseline.ok) {
    console.error(`[mutants] the unmutated copy fails (${baseline.failed.join('; ') || 'build'}): see ${work}/baseline.log`);
    return 2;
  }
  console.error(`[mutants] baseline passes (${Math.round((Date.now() - started) / 1000)} s)`);

  const outcomes: Outcome[] = [];
  for (const mutant of mutants) {
    const t0 = Date.now();
    const copy = join(work, mutant.id);
    rmSync(copy, { recursive: true, force: true });
    cpSync(base, copy, { recursive: true, verbatimSymlinks: true, filter: (src) => !src.startsWith(join(base, 'dist')) });
    const path = join(copy, mutant.file);
    const source = readFileSync(path, 'utf8');
    const count = source.split(mutant.from).length - 1;
    let outcome: Outcome;
    if (count !== 1) {
      outcome = { mutant, result: 'does not apply', failed: [`the text is found ${count} times`], seconds: 0 };
    } else {
      writeFileSync(path, source.replace(mutant.from, () => mutant.to));
      const result = await test(copy, join(work, `${mutant.id}.log`), values.bail, values.skip);
      outcome = {
        mutant,
        result: !result.built ? 'build failed' : result.ok ? 'survived' : 'killed',
        failed: result.failed,
        seconds: (Date.now() - t0) / 1000,
      };
    }
    outcomes.push(outcome);
    console.error(`[mutants] ${mutant.id} ${outcome.result} (${Math.round(outcome.seconds)} s)${outcome.failed.length ? `: ${outcome.failed.join(' | ')}` : ''}`);
    if (!values.keep && outcome.result !== 'build failed') rmSync(copy, { recursive: true, force: true });
  }

  const cell = (s: string) => s.replace(/\|/g, '\\|').replace(/\n/g, ' ');
  const lines = [
    `## Mutants of the safety logic (${today()})`,
    '',
    `HEAD (${head}) plus the working tree's safety tests; test files: ${TEST_FILES.join(', ')}` +
      `${values.skip ? `, without the tests matching /${values.skip}/` : ''}. ${Math.round((Date.now() - started) / 60000)} min.`,
    '',
    '| mutant | file | the line promises | result | failing tests |',
    '|---|---|---|---|---|',
    ...outcomes.map(
      (o) =>
        `| ${o.mutant.id} | ${o.mutant.file} | ${cell(o.mutant.what)} | ${o.result}${o.result === 'survived' && o.mutant.equivalent ? ' (equivalent)' : ''} | ${cell(
          o.result === 'survived' ? (o.mutant.equivalent ?? '') : o.failed.join('; '),
        )} |`,
    ),
    '',
  ];
  const report = lines.join('\n');
  console.log(report);
  console.error(`[mutants] written to ${writeReport(`mutants-${today()}.md`, report, false)}`);
  if (!values.keep) rmSync(work, { recursive: true, force: true });
  const bad = outcomes.filter((o) => o.result === 'does not apply' || o.result === 'build failed' || (o.result === 'survived' && !o.mutant.equivalent));
  return bad.length === 0 ? 0 : 1;
}

main().then(
  (code) => process.exit(code),
  (error: Error) => {
    console.error(`mutants: ${error.stack ?? error.message}`);
    process.exit(2);
  },
);

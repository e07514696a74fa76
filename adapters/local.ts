/**
 * local: candidates are processes on one host sharing a directory. At most one of them holds the
 * lock at a time, and every term's fencing token is larger than every earlier term's, also after
 * a cleaner (systemd-tmpfiles, a tmpfs /tmp after a reboot) removed part or all of the directory.
 * Built from atomic file-system operations only (rename, unlink, O_EXCL create, rmdir), never from
 * reading then writing.
 *
 * Layout under DIR/ELECTION/:
 *   lock/                     exists while someone holds the lock. It is created by renaming a
 *                             staged directory into place, which fails when a non-empty one is
 *                             there, and it holds exactly one of:
 *   lock/claim.<session>.<a>  the lock was just taken (attempt a) and its token is not chosen yet:
 *                             nobody leads.
 *   lock/beat.<session>.<token>.<n>
 *                             the leader's heartbeat. Its content names the leader; its name
 *                             carries the term's fencing token.
 *   tokens/<t>                the fencing counter, one O_EXCL-created file per token taken.
 *   staging/                  where a lock directory is prepared before it is renamed into place.
 *
 * The heartbeat is the *name* of the beat file. The leader renews by renaming beat.S.T.n to
 * beat.S.T.n+1; a peer that has watched the same name for a whole ttl on its own monotonic clock
 * expires it by unlinking exactly that name. Both operations name the state they saw, so they are
 * a compare-and-swap: exactly one of them succeeds. A renewal therefore cannot resurrect a lock a
 * peer has expired, and a peer cannot expire a lock renewed less than a ttl ago. The token T
 * makes every name unique to one term, so a name seen long ago never matches a later term. A claim
 * expires the same way.
 *
 * The token is chosen only once the lock is held, and the claim becomes the beat by a rename that
 * fails if a peer expired the claim meanwhile. Terms therefore take their tokens in the order in
 * which they hold the lock, so each is larger than every earlier term's, and no observer ever sees
 * a lock carrying a token smaller than one it saw before. (Choosing the token first, as before,
 * let a candidate that stalled between its token and its rename show up holding the lock with a
 * token smaller than the term that came in between, until its own check released it.)
 *
 * The next token is one more than the largest of: the numbers in tokens/; every token this process
 * has taken, or seen in tokens/ or in a beat name; and the wall clock in milliseconds. The first
 * two survive a cleaner that empties tokens/ (and the leader puts its own token back on every
 * renewal). Only the clock survives a wipe of the whole directory with every sidecar restarted (a
 * reboot with /tmp on tmpfs): a second copy of the counter anywhere on disk could be wiped by the
 * same cleaner, and nothing in memory outlives the processes. The clock alone would not do either,
 * since it can be stepped back; as a floor under the other two it only matters when both are
 * gone. Tokens are therefore large (about 1.8e12 today, safe integers for another 285,000 years),
 * and after a total wipe they keep growing only if the wall clock was not stepped back past the
 * last token issued.
 *
 * A leader whose process is gone (same boot, same PID namespace, no such PID) is expired at once,
 * which makes a crash failover nearly immediate; a frozen (SIGSTOPped) leader still has a live
 * PID and is expired only after the ttl, like on any other backend.
 *
 * What a cleaner removed is created again before it is used (tokens/ and staging/ on every attempt
 * and every renewal). --local-dir and the election's directory must belong to the user running
 * leaderd. Even so, everything read from them is untrusted: an entry leaderd did not write is
 * warned about once, then expired after the ttl (a claim or beat), removed (anything else in
 * lock/) or ignored (in tokens/).
 */
import { randomBytes } from 'node:crypto';
import { watch, type FSWatcher, readFileSync, readlinkSync } from 'node:fs';
import { mkdir, readdir, readFile, rename, rm, rmdir, stat, unlink, writeFile } from 'node:fs/promises';
import { join, resolve } from 'node:path';
import type { Backend, Leader, Session, SessionContext } from '../src/backend.js';
import { BackendConfigError, SessionLostError, started } from '../src/backend.js';
import { monotonicMs } from '../src/clock.js';
import { errorMessage } from '../src/elector.js';

export interface LocalOptions {
  readonly dir: string;
}

export class LocalBackend implements Backend {
  readonly kind = 'local';

  constructor(private readonly options: LocalOptions) {}

  open(context: SessionContext): Promise<Session> {
    return started(new LocalSession(resolve(this.options.dir), context));
  }

  async shutdown(): Promise<void> {}
}

/** What the lock's file says about its holder; the fencing token is in a beat's name. */
interface HolderRecord {
  readonly id: string;
  readonly address: string;
  readonly pid: number;
  /** Boot and PID namespace: where `pid` means something. */
  readonly processScope: string | null;
}

/** An entry of the lock directory: a claim (no token yet) or a beat. */
interface LockEntry {
  readonly name: string;
  /** null for a claim, and for a name that does not parse (it still expires after the ttl). */
  readonly fencingToken: number | null;
  /** null when unreadable (it still expires after the ttl). */
  readonly record: HolderRecord | null;
}

const PROCESS_SCOPE = readProcessScope();

const BEAT_NAME = /^beat\.([0-9a-f]{16})\.([1-9][0-9]{0,15})\.(0|[1-9][0-9]{0,15})$/;
const CLAIM_NAME = /^claim\.([0-9a-f]{16})\.([1-9][0-9]{0,15})$/;
const TOKEN_NAME = /^[1-9][0-9]{0,15}$/;

/**
 * Per election directory, the largest token this process has taken or seen (in tokens/ or in a
 * beat name). Kept outside the session: a new session of the same process still remembers.
 */
const highestSeen = new Map<string, number>();

function remember(dir: string, token: number): void {
  if (token > (highestSeen.get(dir) ?? 0)) highestSeen.set(dir, token);
}

/** Names already warned about, so that a malformed entry is reported once, not on every look. */
const warned = new Set<string>();

class LocalSession implements Session {
  private readonly sessionId = randomBytes(8).toString('hex');
  private readonly dir: string;
  private readonly lockDir: string;
  private readonly tokensDir: string;
  private readonly stagingDir: string;
  private campaigning = false;
  private closed = false;
  private attempts = 0;
  private holding: { beat: number; fencingToken: number; record: HolderRecord } | null = null;
  /** The foreign lock entry last seen, and since when (monotonic), for expiry. */
  private seen: { name: string; since: number } | null = null;
  private queue: Promise<unknown> = Promise.resolve();
  private observeQueued = false;
  private watcher: FSWatcher | null = null;
  /** The election directory the watcher watches: a new one (removed, then made again) needs a new watcher. */
  private watchedInode: number | null = null;
  private pollTimer: NodeJS.Timeout | undefined;

  constructor(
    private readonly root: string,
    private readonly context: SessionContext,
  ) {
    this.dir = join(root, context.election);
    this.lockDir = join(this.dir, 'lock');
    this.tokensDir = join(this.dir, 'tokens');
    this.stagingDir = join(this.dir, 'staging');
  }

  private get ttlMs(): number {
    return this.context.ttlSeconds * 1000;
  }

  async start(): Promise<void> {
    // Another user's directory could be emptied or filled by them: tokens could go down, and a
    // lock could be faked. Both the directory itself and the election's are checked.
    await ownDirectory(this.root);
    await ownDirectory(this.dir);
    await this.ensureLayout();
    // Polling catches what the watcher does not report: renewals inside the lock directory, which
    // expiry is timed by.
    this.pollTimer = setInterval(() => this.scheduleObserve(), Math.min(Math.max(this.ttlMs / 10, 100), 1000));
    await this.observe();
  }

  renew(): Promise<void> {
    return this.serially(async () => {
      if (!this.holding) {
        await this.ensureLayout();
        return;
      }
      const { fencingToken, beat } = this.holding;
      const next = beat + 1;
      try {
        await rename(this.beatPath(fencingToken, beat), this.beatPath(fencingToken, next));
      } catch (error) {
        if (code(error) !== 'ENOENT') throw error;
        this.holding = null;
        throw new SessionLostError('a peer expired our lock');
      }
      this.holding = { ...this.holding, beat: next };
      // A cleaner may have emptied tokens/: the leader puts its own token back, so that even a
      // candidate that never saw this term (a process started later) takes a larger one. The
      // renewal rests on the heartbeat alone, so this upkeep failing only warns.
      try {
        await this.ensureLayout();
        await this.createToken(fencingToken);
      } catch (error) {
        this.context.log.warn({ err: errorMessage(error) }, 'cannot restore the election directory');
      }
    });
  }

  async campaign(): Promise<void> {
    this.campaigning = true;
    await this.observe();
  }

  async withdraw(): Promise<void> {
    this.campaigning = false;
    await this.serially(() => this.release());
    await this.observe();
  }

  async close(): Promise<void> {
    this.closed = true;
    this.campaigning = false;
    this.watcher?.close();
    clearInterval(this.pollTimer);
    await this.serially(() => this.release());
  }

  private serially<T>(operation: () => Promise<T>): Promise<T> {
    const result = this.queue.then(operation);
    this.queue = result.catch(() => undefined);
    return result;
  }

  /**
   * Creates what a cleaner removed (mkdir -p), and watches the election directory again when it
   * is a new one: a watcher on a removed directory reports nothing more.
   */
  private async ensureLayout(): Promise<void> {
    for (const dir of [this.tokensDir, this.stagingDir]) await mkdir(dir, { recursive: true, mode: 0o700 });
    const inode = (await stat(this.dir)).ino;
    if (inode === this.watchedInode || this.closed) return;
    this.watcher?.close();
    // Changes to the lock directory's entry wake us at once.
    this.watcher = watch(this.dir, () => this.scheduleObserve());
    this.watcher.on('error', () => undefined);
    this.watchedInode = inode;
  }

  private scheduleObserve(): void {
    if (this.observeQueued || this.closed) return;
    this.observeQueued = true;
    void this.observe().catch((error) => this.context.log.warn({ err: errorMessage(error) }, 'cannot read the election directory'));
  }

  private observe(): Promise<void> {
    return this.serially(async () => {
      this.observeQueued = false;
      if (this.closed) return;
      await this.observeOnce();
    });
  }

  private async observeOnce(): Promise<void> {
    const { events } = this.context;
    const entry = await this.currentEntry();
    if (entry === 'busy') return this.scheduleObserve();
    if (entry) {
      if (this.holding && entry.name === this.beatName(this.holding.fencingToken, this.holding.beat)) {
        events.view({ leader: leaderOf(this.holding.record, this.holding.fencingToken), isSelf: true });
        return;
      }
      if (this.holding) {
        this.holding = null;
        events.lost(new SessionLostError('another candidate holds our lock'));
        return;
      }
      if (entry.fencingToken !== null) remember(this.dir, entry.fencingToken);
      const leader = entry.record && entry.fencingToken !== null ? leaderOf(entry.record, entry.fencingToken) : null;
      events.view({ leader, isSelf: false });
      if (!this.expired(entry)) return;
      await this.expire(entry.name);
      return this.scheduleObserve();
    }
    if (this.holding) {
      this.holding = null;
      events.lost(new SessionLostError('our lock is gone'));
      return;
    }
    this.seen = null;
    events.view({ leader: null, isSelf: false });
    if (this.campaigning) await this.acquire();
  }

  /** The claim or beat in the lock directory; null when nobody holds it; 'busy' mid-change. */
  private async currentEntry(): Promise<LockEntry | null | 'busy'> {
    let names: string[];
    try {
      names = await readdir(this.lockDir);
    } catch (error) {
      if (code(error) === 'ENOENT') return null;
      if (code(error) !== 'ENOTDIR') throw error;
      // Not a directory (nothing leaderd makes): it would refuse every lock. unlink() cannot
      // remove a directory, so a lock renamed into place meanwhile is safe from it.
      this.warnOnce('lock', 'the lock is not a directory; removing it');
      await unlink(this.lockDir).catch(() => undefined);
      return null;
    }
    const own = this.holding && this.beatName(this.holding.fencingToken, this.holding.beat);
    const held = names.filter((name) => name.startsWith('beat.') || name.startsWith('claim.'));
    const name = held.find((n) => n === own) ?? held[0];
    if (!name) {
      // A lock directory whose beat was just released or expired: finish removing it. Anything
      // else in it is not leaderd's and would keep the lock taken forever. A lock renamed into
      // place is never empty of its claim, so it is never mistaken for this.
      for (const stray of names) {
        this.warnOnce(`lock/${stray}`, 'removing a stray entry from the lock directory', { entry: stray });
        await rm(join(this.lockDir, stray), { recursive: true, force: true }).catch(() => undefined);
      }
      await rmdir(this.lockDir).catch(() => undefined);
      return null;
    }
    const beat = BEAT_NAME.exec(name);
    const fencingToken = beat && Number.isSafeInteger(Number(beat[2]) + 1) ? Number(beat[2]) : null;
    if (fencingToken === null && !CLAIM_NAME.test(name)) {
      this.warnOnce(`lock/${name}`, 'the lock holds an entry of unknown form; it expires after the ttl', { entry: name });
    }
    let text: string;
    try {
      text = await readFile(join(this.lockDir, name), 'utf8');
    } catch (error) {
      if (code(error) === 'ENOENT') return 'busy';
      if (code(error) !== 'EISDIR') throw error;
      text = '';
    }
    const record = parseRecord(text);
    if (!record) this.warnOnce(`lock/${name}`, 'the lock holds an unreadable record; it expires after the ttl', { entry: name });
    return { name, fencingToken, record };
  }

  private expired(entry: LockEntry): boolean {
    const now = monotonicMs();
    if (this.seen?.name !== entry.name) this.seen = { name: entry.name, since: now };
    if (now - this.seen.since >= this.ttlMs) return true;
    const { record } = entry;
    return record !== null && record.processScope !== null && record.processScope === PROCESS_SCOPE && !processExists(record.pid);
  }

  private async expire(name: string): Promise<void> {
    const path = join(this.lockDir, name);
    try {
      await unlink(path);
    } catch (error) {
      if (code(error) === 'ENOENT') return; // renewed or expired meanwhile: look again
      if (code(error) !== 'EISDIR') throw error;
      await rm(path, { recursive: true, force: true }); // not leaderd's: nobody renews it
    }
    this.context.log.info({ entry: name }, 'expired the lock of a leader that stopped renewing');
    await rmdir(this.lockDir).catch(() => undefined);
  }

  private async acquire(): Promise<void> {
    await this.ensureLayout();
    const attempt = ++this.attempts;
    const claim = `claim.${this.sessionId}.${attempt}`;
    const record: HolderRecord = {
      id: this.context.candidate.id,
      address: this.context.candidate.address,
      pid: process.pid,
      processScope: PROCESS_SCOPE,
    };
    const staged = join(this.stagingDir, `${this.sessionId}.${attempt}`);
    try {
      await mkdir(staged);
      await writeFile(join(staged, claim), JSON.stringify(record));
      await rename(staged, this.lockDir);
    } catch (error) {
      await rm(staged, { recursive: true, force: true });
      if (['ENOTEMPTY', 'EEXIST'].includes(code(error) ?? '')) return; // a peer was faster
      throw error;
    }
    // The lock is ours. Only now is the token taken: every earlier term's token was taken before
    // its lock was released, so it is on disk or remembered, and ours is larger.
    const dropClaim = async () => {
      await unlink(join(this.lockDir, claim)).catch(() => undefined);
      await rmdir(this.lockDir).catch(() => undefined);
    };
    let fencingToken: number;
    try {
      fencingToken = await this.nextToken();
    } catch (error) {
      await dropClaim();
      throw error;
    }
    try {
      await rename(join(this.lockDir, claim), this.beatPath(fencingToken, 0));
    } catch (error) {
      if (code(error) !== 'ENOENT') {
        await dropClaim();
        throw error;
      }
      // We stalled for a ttl and a peer expired our claim: the lock is someone else's now.
      this.context.log.info({ entry: claim }, 'our claim on the lock expired before it became a term');
      return this.scheduleObserve();
    }
    this.holding = { beat: 0, fencingToken, record };
    this.context.events.view({ leader: leaderOf(record, fencingToken), isSelf: true });
  }

  private async release(): Promise<void> {
    if (!this.holding) return;
    const beat = this.beatPath(this.holding.fencingToken, this.holding.beat);
    this.holding = null;
    await unlink(beat).catch(() => undefined);
    await rmdir(this.lockDir).catch(() => undefined);
  }

  private async nextToken(): Promise<number> {
    for (;;) {
      const candidate = Math.max(await this.largestToken(), highestSeen.get(this.dir) ?? 0, Date.now()) + 1;
      remember(this.dir, candidate);
      if (!(await this.createToken(candidate))) continue;
      await this.pruneTokensBelow(candidate);
      return candidate;
    }
  }

  /** Creates tokens/<token> (and tokens/ when a cleaner removed it); false when it was there already. */
  private async createToken(token: number): Promise<boolean> {
    for (let tries = 1; ; tries++) {
      try {
        await writeFile(join(this.tokensDir, String(token)), '', { flag: 'wx' });
        return true;
      } catch (error) {
        if (code(error) === 'EEXIST') return false;
        if (code(error) !== 'ENOENT' || tries === 3) throw error;
      }
      await mkdir(this.tokensDir, { recursive: true, mode: 0o700 });
    }
  }

  /** The largest token in tokens/ (0 when a cleaner removed it: memory and the clock remain). */
  private async largestToken(): Promise<number> {
    let largest = 0;
    for (const name of await readdir(this.tokensDir).catch(ignoreMissing)) {
      const token = Number(name);
      if (!TOKEN_NAME.test(name) || !Number.isSafeInteger(token + 1)) {
        this.warnOnce(`tokens/${name}`, 'ignoring an entry of tokens/ that is not a token', { entry: name });
        continue;
      }
      largest = Math.max(largest, token);
    }
    remember(this.dir, largest);
    return largest;
  }

  // Smaller numbers only keep the directory growing; the largest is what makes tokens grow.
  private async pruneTokensBelow(limit: number): Promise<void> {
    for (const name of await readdir(this.tokensDir).catch(ignoreMissing)) {
      if (TOKEN_NAME.test(name) && Number(name) < limit) await unlink(join(this.tokensDir, name)).catch(() => undefined);
    }
  }

  private warnOnce(key: string, message: string, details: Record<string, unknown> = {}): void {
    const id = `${this.dir}/${key}`;
    if (warned.has(id)) return;
    warned.add(id);
    this.context.log.warn({ dir: this.dir, ...details }, message);
  }

  private beatName(fencingToken: number, n: number): string {
    return `beat.${this.sessionId}.${fencingToken}.${n}`;
  }

  private beatPath(fencingToken: number, n: number): string {
    return join(this.lockDir, this.beatName(fencingToken, n));
  }
}

/**
 * Makes `path` if it is missing and checks that it is a directory of the user running leaderd.
 * A wrong one cannot become right by retrying: BackendConfigError, naming local-dir.
 */
async function ownDirectory(path: string): Promise<void> {
  try {
    await mkdir(path, { recursive: true, mode: 0o700 });
  } catch (error) {
    const reason = code(error);
    if (reason === 'EEXIST' || reason === 'ENOTDIR') throw new BackendConfigError(`local-dir: ${path} is not a directory`);
    if (reason === 'EACCES' || reason === 'EPERM' || reason === 'EROFS') {
      throw new BackendConfigError(`local-dir: cannot create ${path} (${reason}); choose a directory of your own with --local-dir`);
    }
    throw error;
  }
  const info = await stat(path);
  if (!info.isDirectory()) throw new BackendConfigError(`local-dir: ${path} is not a directory`);
  if (process.getuid && info.uid !== process.getuid()) {
    throw new BackendConfigError(`local-dir: ${path} belongs to another user (uid ${info.uid}); choose a directory of your own`);
  }
}

/** The record of a claim or beat, or null when it is not one leaderd wrote. */
function parseRecord(text: string): HolderRecord | null {
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch {
    return null;
  }
  if (typeof value !== 'object' || value === null) return null;
  const { id, address, pid, processScope } = value as Record<string, unknown>;
  if (typeof id !== 'string' || id === '' || id.length > 253 || typeof address !== 'string' || address.length > 1024) return null;
  if (!Number.isSafeInteger(pid) || (pid as number) <= 0) return null;
  if (processScope !== null && typeof processScope !== 'string') return null;
  return { id, address, pid: pid as number, processScope };
}

function leaderOf(record: HolderRecord, fencingToken: number): Leader {
  return { id: record.id, address: record.address, fencingToken };
}

/** A zombie (killed, not yet reaped: common under a PID 1 that does not reap) counts as gone. */
function processExists(pid: number): boolean {
  try {
    process.kill(pid, 0);
  } catch (error) {
    return code(error) !== 'ESRCH';
  }
  try {
    // The state follows the parenthesised command name, which may itself contain spaces.
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    return stat.slice(stat.lastIndexOf(')') + 2, stat.lastIndexOf(')') + 3) !== 'Z';
  } catch {
    return true;
  }
}

/** Boot id plus PID namespace: two processes with equal scopes see the same PIDs. */
function readProcessScope(): string | null {
  try {
    const boot = readFileSync('/proc/sys/kernel/random/boot_id', 'utf8').trim();
    return `${boot}/${readlinkSync('/proc/self/ns/pid')}`;
  } catch {
    return null;
  }
}

function ignoreMissing(error: unknown): string[] {
  if (code(error) === 'ENOENT') return [];
  throw error;
}

function code(error: unknown): string | undefined {
  return (error as NodeJS.ErrnoException | null)?.code;
}

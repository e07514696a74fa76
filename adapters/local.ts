/**
 * local: candidates are processes on one host sharing a directory. Built from atomic file-system
 * operations only (rename, unlink, O_EXCL create, rmdir), never from reading then writing.
 *
 * Layout under DIR/ELECTION/:
 *   lock/beat.<session>.<token>.<n>
 *                             exists while someone leads; its content names the leader and its
 *                             fencing token. The lock directory is created by renaming a staged
 *                             directory into place, which fails when a non-empty one is there.
 *   tokens/<t>                the fencing counter: each attempt to lead creates the next number
 *                             with O_EXCL. The largest is never deleted.
 *   staging/                  where a lock directory is prepared before it is renamed into place.
 *
 * The heartbeat is the *name* of the beat file. The leader renews by renaming beat.S.T.n to
 * beat.S.T.n+1; a peer that has watched the same name for a whole ttl on its own monotonic clock
 * expires it by unlinking exactly that name. Both operations name the state they saw, so they are
 * a compare-and-swap: exactly one of them succeeds. A renewal therefore cannot resurrect a lock a
 * peer has expired, and a peer cannot expire a lock renewed less than a ttl ago. The token T
 * makes every name unique to one term, so a name seen long ago never matches a later term.
 *
 * A leader whose process is gone (same boot, same PID namespace, no such PID) is expired at once,
 * which makes a crash failover nearly immediate; a frozen (SIGSTOPped) leader still has a live
 * PID and is expired only after the ttl, like on any other backend.
 */
import { randomBytes } from 'node:crypto';
import { watch, type FSWatcher, readFileSync, readlinkSync } from 'node:fs';
import { access, mkdir, readdir, readFile, rename, rm, rmdir, stat, unlink, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
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
    return started(new LocalSession(join(this.options.dir, context.election), context));
  }

  async shutdown(): Promise<void> {}
}

/** What the beat file says about its leader. */
interface BeatRecord {
  readonly id: string;
  readonly address: string;
  readonly fencingToken: number;
  readonly pid: number;
  /** Boot and PID namespace: where `pid` means something. */
  readonly processScope: string | null;
}

const PROCESS_SCOPE = readProcessScope();

class LocalSession implements Session {
  private readonly sessionId = randomBytes(8).toString('hex');
  private readonly lockDir: string;
  private readonly tokensDir: string;
  private readonly stagingDir: string;
  private campaigning = false;
  private closed = false;
  private holding: { beat: number; record: BeatRecord } | null = null;
  /** The foreign beat last seen, and since when (monotonic), for expiry. */
  private seen: { name: string; since: number } | null = null;
  private queue: Promise<unknown> = Promise.resolve();
  private observeQueued = false;
  private watcher: FSWatcher | null = null;
  private pollTimer: NodeJS.Timeout | undefined;

  constructor(
    private readonly dir: string,
    private readonly context: SessionContext,
  ) {
    this.lockDir = join(dir, 'lock');
    this.tokensDir = join(dir, 'tokens');
    this.stagingDir = join(dir, 'staging');
  }

  private get ttlMs(): number {
    return this.context.ttlSeconds * 1000;
  }

  async start(): Promise<void> {
    for (const dir of [this.tokensDir, this.stagingDir]) await mkdir(dir, { recursive: true, mode: 0o700 });
    const owner = (await stat(this.dir)).uid;
    if (process.getuid && owner !== process.getuid()) {
      throw new BackendConfigError(`local-dir: ${this.dir} belongs to another user (uid ${owner}); choose a directory of your own`);
    }
    // Changes to the lock directory's entry wake us at once; polling catches the rest (renewals
    // inside it, which expiry is timed by).
    this.watcher = watch(this.dir, () => this.scheduleObserve());
    this.watcher.on('error', () => undefined);
    this.pollTimer = setInterval(() => this.scheduleObserve(), Math.min(Math.max(this.ttlMs / 10, 100), 1000));
    await this.observe();
  }

  renew(): Promise<void> {
    return this.serially(async () => {
      if (!this.holding) {
        await access(this.dir);
        return;
      }
      const { record, beat } = this.holding;
      const next = beat + 1;
      try {
        await rename(this.beatPath(record.fencingToken, beat), this.beatPath(record.fencingToken, next));
      } catch (error) {
        if (code(error) !== 'ENOENT') throw error;
        this.holding = null;
        throw new SessionLostError('a peer expired our lock');
      }
      this.holding = { ...this.holding, beat: next };
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
    const beat = await this.currentBeat();
    if (beat === 'busy') return this.scheduleObserve();
    if (beat) {
      if (this.holding && beat.name === this.beatName(this.holding.record.fencingToken, this.holding.beat)) {
        events.view({ leader: leaderOf(this.holding.record), isSelf: true });
        return;
      }
      if (this.holding) {
        this.holding = null;
        events.lost(new SessionLostError('another candidate holds our lock'));
        return;
      }
      events.view({ leader: beat.record ? leaderOf(beat.record) : null, isSelf: false });
      if (!this.expired(beat.name, beat.record)) return;
      await this.expire(beat.name);
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

  /**
   * The beat file in the lock directory (its record null when unreadable: it still expires after
   * the ttl); null when nobody leads; 'busy' mid-change.
   */
  private async currentBeat(): Promise<{ name: string; record: BeatRecord | null } | null | 'busy'> {
    let names: string[];
    try {
      names = (await readdir(this.lockDir)).filter((name) => name.startsWith('beat.'));
    } catch (error) {
      if (code(error) === 'ENOENT') return null;
      throw error;
    }
    const name = names[0];
    if (!name) {
      // A lock directory whose beat was just released or expired: finish removing it.
      await rmdir(this.lockDir).catch(() => undefined);
      return null;
    }
    let text: string;
    try {
      text = await readFile(join(this.lockDir, name), 'utf8');
    } catch (error) {
      if (code(error) === 'ENOENT') return 'busy';
      throw error;
    }
    try {
      return { name, record: JSON.parse(text) as BeatRecord };
    } catch {
      this.context.log.warn({ beat: name }, 'the lock holds an unreadable record; it expires after the ttl');
      return { name, record: null };
    }
  }

  private expired(name: string, record: BeatRecord | null): boolean {
    const now = monotonicMs();
    if (this.seen?.name !== name) this.seen = { name, since: now };
    if (now - this.seen.since >= this.ttlMs) return true;
    return record !== null && record.processScope !== null && record.processScope === PROCESS_SCOPE && !processExists(record.pid);
  }

  private async expire(name: string): Promise<void> {
    try {
      await unlink(join(this.lockDir, name));
    } catch (error) {
      if (code(error) === 'ENOENT') return; // renewed or expired meanwhile: look again
      throw error;
    }
    this.context.log.info({ beat: name }, 'expired the lock of a leader that stopped renewing');
    await rmdir(this.lockDir).catch(() => undefined);
  }

  private async acquire(): Promise<void> {
    const fencingToken = await this.nextToken();
    const record: BeatRecord = {
      id: this.context.candidate.id,
      address: this.context.candidate.address,
      fencingToken,
      pid: process.pid,
      processScope: PROCESS_SCOPE,
    };
    const staged = join(this.stagingDir, `${this.sessionId}.${fencingToken}`);
    await mkdir(staged);
    await writeFile(join(staged, this.beatName(fencingToken, 0)), JSON.stringify(record));
    try {
      await rename(staged, this.lockDir);
    } catch (error) {
      await rm(staged, { recursive: true, force: true });
      if (['ENOTEMPTY', 'EEXIST'].includes(code(error) ?? '')) return; // a peer was faster
      throw error;
    }
    this.holding = { beat: 0, record };
    // A peer that took its token before ours but reached the lock after a later term would lead
    // with a smaller token than that term's: only the largest token ever taken may lead.
    if ((await this.largestToken()) > fencingToken) {
      await this.release();
      return this.scheduleObserve();
    }
    this.context.events.view({ leader: leaderOf(record), isSelf: true });
  }

  private async release(): Promise<void> {
    if (!this.holding) return;
    const beat = this.beatPath(this.holding.record.fencingToken, this.holding.beat);
    this.holding = null;
    await unlink(beat).catch(() => undefined);
    await rmdir(this.lockDir).catch(() => undefined);
  }

  private async nextToken(): Promise<number> {
    for (;;) {
      const candidate = (await this.largestToken()) + 1;
      try {
        await writeFile(join(this.tokensDir, String(candidate)), '', { flag: 'wx' });
      } catch (error) {
        if (code(error) === 'EEXIST') continue;
        throw error;
      }
      await this.pruneTokensBelow(candidate - 100);
      return candidate;
    }
  }

  private async largestToken(): Promise<number> {
    const names = await readdir(this.tokensDir);
    return names.reduce((max, name) => Math.max(max, Number.parseInt(name, 10) || 0), 0);
  }

  // Old numbers only keep the directory growing; the largest is what makes tokens grow.
  private async pruneTokensBelow(limit: number): Promise<void> {
    if (limit <= 0) return;
    for (const name of await readdir(this.tokensDir)) {
      if (Number.parseInt(name, 10) < limit) await unlink(join(this.tokensDir, name)).catch(() => undefined);
    }
  }

  private beatName(fencingToken: number, n: number): string {
    return `beat.${this.sessionId}.${fencingToken}.${n}`;
  }

  private beatPath(fencingToken: number, n: number): string {
    return join(this.lockDir, this.beatName(fencingToken, n));
  }
}

function leaderOf(record: BeatRecord): Leader {
  return { id: record.id, address: record.address, fencingToken: record.fencingToken };
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

function code(error: unknown): string | undefined {
  return (error as NodeJS.ErrnoException | null)?.code;
}

/**
 * local: candidates are processes on one host sharing a directory. At most one of them holds the
 * lock at a time. While its holder lives and has not let it go, no other candidate takes it until
 * at least a ttl after the holder's last successful open() or renew() was called (the promise of
 * src/backend.ts), also when a cleaner removed the whole election directory under it (see
 * "recreated" below, and the two cases it cannot cover). Every term's fencing token is larger than
 * every earlier term's, also after a cleaner (systemd-tmpfiles, a tmpfs /tmp after a reboot)
 * removed part or all of the directory, and none is above LAST_TOKEN. Built from atomic
 * file-system operations only (rename, unlink, O_EXCL create, mkdir, rmdir), never from reading
 * then writing.
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
 *   recreated.<boot>.<ms>     the election directory or its layout had to be made again, at <ms>
 *                             on CLOCK_MONOTONIC of boot <boot>: nobody takes the lock before
 *                             <ms> + ttl.
 *   members/<session>.<scope>.<pid>.<n>
 *                             a session's member record, as the core wrote it (never parsed here).
 *                             Outside lock/, so it is never a candidate. <scope> is a digest of
 *                             the writer's boot and PID namespace, <n> its renewal count.
 *   leader-position           the last leader's position record, which outlives every session.
 *
 * The heartbeat is the *name* of the beat file. The leader renews by renaming beat.S.T.n to
 * beat.S.T.n+1; a peer that has watched the same name for a whole ttl on its own monotonic clock
 * expires it by unlinking exactly that name. Both operations name the state they saw, so they are
 * a compare-and-swap: exactly one of them succeeds. A renewal therefore cannot resurrect a lock a
 * peer has expired, and a peer cannot expire a lock renewed less than a ttl ago. The token T
 * makes every name unique to one term, so a name seen long ago never matches a later term. A claim
 * expires the same way, and so does an entry leaderd did not write, whatever it is: its content is
 * read without following a symlink, without waiting on a FIFO, and only up to a few KiB.
 *
 * A cleaner that removes the whole election directory removes the beat without any compare: a
 * peer finding no lock could take it at once, while the holder, its last renewal a moment old,
 * still acts as primary until it notices. So whoever has to make the directory or its layout
 * again, or finds the directory replaced (a new inode), after it has seen a term of the election,
 * first leaves a recreated.* marker, and no candidate takes the lock while a marker of this boot is
 * younger than a ttl: by then the holder's last renewal, which came before the removal, is a ttl
 * old. A candidate looks once before taking the lock and again after (a removal may come between
 * the look and the rename), and gives the lock back if it must wait. A brand-new election has no
 * marker and no wait. Two cases stay uncovered. A process that has seen no term cannot tell a
 * removed directory from a new one, so one that starts just after the removal, before any peer
 * has marked it, may lead at once. And a cleaner that removes only lock/ does to the holder
 * exactly what a release does. The fencing token, larger for the next term (after a removal of
 * everything, as long as the clock was not stepped back: see below), covers both.
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
 * last token issued. A token is never above LAST_TOKEN: a foreign file at it stops every election
 * with an error naming it, rather than issuing a token a double cannot tell from the next.
 *
 * A leader whose process is gone (same boot, same PID namespace, no such PID) is expired at once,
 * which makes a crash failover nearly immediate; a frozen (SIGSTOPped) leader still has a live
 * PID and is expired only after the ttl, like on any other backend.
 *
 * Member records must go with their session, and no server expires them: like the beat, a
 * record's name is its heartbeat. Every renew() renames members/S.x.p.n to S.x.p.n+1; readCluster()
 * leaves out, and unlinks, a record whose name its session has watched unchanged for a ttl, or
 * whose process is gone (the lock's test, so a crashed leader's record does not outlive its lock
 * and hold back the failover). Rename and unlink name what they saw, so they are a compare-and-swap
 * as for the lock; a bumped mtime could not be one (a peer could unlink a record renewed after it
 * looked), and a wall-clock age would step with the clock. A session counts a record it sees for
 * the first time as live until it has watched it for a ttl: it cannot tell a fresh name from a
 * stale one, and a live member renames its record more often than that. So a record left by a
 * crash in another boot or PID namespace is shown for a ttl by each new session, then removed. A
 * renewal that finds its record gone (the session stalled for a ttl and a peer expired it, or a
 * cleaner emptied members/) writes it again. publishMember() renames a staged file onto the
 * current name, so nobody sees two records of one session; close() unlinks it before releasing
 * the lock, so a successor does not find the record of the leader it replaces. leader-position is
 * written the same way and never expires. members/ is made again like the rest of the layout, but
 * without a recreated.* marker: no term rests on it. Costs, all local system calls: a publish is a
 * staged write and a rename; a renewal one rename more; readCluster() an lstat and a readdir of
 * members/, then an open, fstat, read and close per record and for leader-position, and an unlink
 * per record it expires. A record renamed between the listing and its read is looked for under
 * its session's newer name (a listing more), so a renewal in between hides no live record.
 *
 * What a cleaner removed is made again before it is used (on every attempt and every renewal),
 * and anything else in the place of lock/, tokens/ or staging/ (a file, a symlink) is unlinked,
 * never followed. --local-dir and the election's directory must be directories of the user
 * running leaderd that not every user may write to (unless sticky); that is checked at the start
 * and again on every attempt and renewal, since a cleaner may remove them and someone else make
 * them again. Even so, everything read from them is untrusted: an entry leaderd did not write is
 * warned about once, then expired after the ttl (a claim or beat, a member record), removed
 * (anything else in lock/, whatever a crash left in staging/ for a ttl, a stale marker, a directory
 * where a record is written) or ignored (in tokens/ and members/, and a record over
 * MAX_RECORD_BYTES).
 */
import { createHash, randomBytes } from 'node:crypto';
import { constants, watch, type FSWatcher, readFileSync, readlinkSync, type Stats } from 'node:fs';
import { access, lstat, mkdir, open, readdir, rename, rm, rmdir, stat, statfs, unlink, writeFile } from 'node:fs/promises';
import { dirname, join, resolve } from 'node:path';
import type { Backend, ClusterRecords, Leader, Session, SessionContext } from '../src/backend.js';
import { BackendConfigError, MAX_RECORD_BYTES, SessionLostError, started } from '../src/backend.js';
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

/** CLOCK_MONOTONIC readings compare only within one boot. */
const BOOT_ID = fromProc(() => readFileSync('/proc/sys/kernel/random/boot_id', 'utf8').trim());
/** Boot id plus PID namespace: two processes with equal scopes see the same PIDs. */
const PROCESS_SCOPE = BOOT_ID && fromProc(() => `${BOOT_ID}/${readlinkSync('/proc/self/ns/pid')}`);

const BEAT_NAME = /^beat\.([0-9a-f]{16})\.([1-9][0-9]{0,15})\.(0|[1-9][0-9]{0,15})$/;
const CLAIM_NAME = /^claim\.([0-9a-f]{16})\.([1-9][0-9]{0,15})$/;
const TOKEN_NAME = /^[1-9][0-9]{0,15}$/;
const MARKER_NAME = /^recreated\.([0-9a-z-]{1,64})\.([0-9]{1,16})$/;
const MEMBER_NAME = /^([0-9a-f]{16})\.([0-9a-f]{16}|none)\.([1-9][0-9]{0,9})\.(0|[1-9][0-9]{0,15})$/;

/**
 * PROCESS_SCOPE in a form that fits a file name: a member record's name, unlike a lock entry's
 * content (which the core's opaque record replaces), is all that tells where its pid means something.
 */
const SCOPE_TAG = PROCESS_SCOPE ? createHash('sha256').update(PROCESS_SCOPE).digest('hex').slice(0, 16) : 'none';

/** The largest token: the one after it would no longer be exact in a double (2^53 - 1). */
const LAST_TOKEN = Number.MAX_SAFE_INTEGER - 1;

/**
 * How much of a lock entry is read. The largest record leaderd writes is under 4 KiB (an id of
 * 253 and an address of 1024 characters, at most 3 bytes each in UTF-8, and the rest); a longer
 * entry is not one of ours, and reading it all could exhaust memory.
 */
const RECORD_LIMIT = 8192;

/** The sticky bit of a mode (not among Node's fs.constants). */
const STICKY = 0o1000;

/** How many foreign names are warned about, each once; then one line says the rest are not. */
const WARN_LIMIT = 100;

/**
 * Per election directory, what this process knows, kept outside the session so that a new
 * session of the same process still knows it: the largest token it has taken or seen (in tokens/
 * or in a beat name), and the directory's inode when it last made sure of the layout.
 */
interface Known {
  token: number;
  inode: number | null;
  /** The refusal to lead past LAST_TOKEN has been logged. */
  refused: boolean;
}
const known = new Map<string, Known>();

function knownOf(dir: string): Known {
  let entry = known.get(dir);
  if (!entry) known.set(dir, (entry = { token: 0, inode: null, refused: false }));
  return entry;
}

function remember(dir: string, token: number): void {
  const entry = knownOf(dir);
  if (token > entry.token) entry.token = token;
}

/** Names already warned about, so that a foreign entry is reported once, not on every look. */
const warned = new Set<string>();

class LocalSession implements Session {
  private readonly sessionId = randomBytes(8).toString('hex');
  private readonly dir: string;
  private readonly lockDir: string;
  private readonly tokensDir: string;
  private readonly stagingDir: string;
  private readonly membersDir: string;
  private readonly positionPath: string;
  private campaigning = false;
  private closed = false;
  private attempts = 0;
  private holding: { beat: number; fencingToken: number; record: HolderRecord } | null = null;
  /** The foreign lock entry last seen, and since when (monotonic), for expiry. */
  private seen: { name: string; since: number } | null = null;
  /** Entries of staging/ and since when (monotonic) they have been seen there. */
  private staged = new Map<string, number>();
  /** Our member record, once published, and its renewal count (the <n> of its name). */
  private member: { record: string; beat: number } | null = null;
  /** Other sessions' member records and since when (monotonic) each name has been seen, for expiry. */
  private members = new Map<string, number>();
  /** Files staged for a record so far: each gets a name of its own. */
  private writes = 0;
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
    this.membersDir = join(this.dir, 'members');
    this.positionPath = join(this.dir, 'leader-position');
  }

  private get ttlMs(): number {
    return this.context.ttlSeconds * 1000;
  }

  async start(): Promise<void> {
    await this.ensureLayout();
    // Polling catches what the watcher does not report: renewals inside the lock directory, which
    // expiry is timed by. It also retries a candidate that had to wait.
    this.pollTimer = setInterval(() => this.scheduleObserve(), Math.min(Math.max(this.ttlMs / 10, 100), 1000));
    await this.observe();
  }

  renew(): Promise<void> {
    return this.serially(async () => {
      if (this.holding) {
        const { fencingToken, beat } = this.holding;
        try {
          await rename(this.beatPath(fencingToken, beat), this.beatPath(fencingToken, beat + 1));
        } catch (error) {
          if (code(error) !== 'ENOENT') throw error;
          this.holding = null;
          throw new SessionLostError('a peer expired our lock');
        }
        this.holding = { ...this.holding, beat: beat + 1 };
      }
      // Upkeep, which the renewal does not rest on, so its failing only warns: what a cleaner
      // removed is made again; the leader puts its own token back, so that even a candidate that
      // never saw this term (a process started later) takes a larger one; our member record is
      // renewed (failing, it expires as a dead member's would, which is what it then is to the
      // others); what a crash left in staging/ goes. A directory that fails the checks of the
      // start ends the session instead: the next start refuses it, or, if it may pass by itself
      // (a read-only remount), tries again.
      try {
        await this.ensureLayout();
        if (this.holding) await this.createToken(this.holding.fencingToken);
        await this.renewMember();
        await this.removeAbandonedStaging();
      } catch (error) {
        if (error instanceof BackendConfigError || error instanceof LocalDirError) throw new SessionLostError(error.message);
        this.context.log.warn({ err: errorMessage(error) }, 'cannot restore the election directory or renew our member record');
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
    await this.serially(async () => {
      // First: a successor must not find the record of the leader it replaces.
      if (this.member) await unlink(this.memberPath(this.member.beat)).catch(() => undefined);
      this.member = null;
      await this.release();
    });
  }

  publishMember(record: string): Promise<void> {
    return this.context.measure('write', () =>
      this.serially(async () => {
        // Nobody would renew or remove it: it would count as a live member for a ttl.
        if (this.closed) throw new Error('the session is closed');
        const beat = this.member?.beat ?? 0;
        await this.writeRecord(this.memberPath(beat), record);
        this.member = { record, beat };
      }),
    );
  }

  publishLeaderPosition(record: string): Promise<void> {
    return this.context.measure('write', () => this.serially(() => this.writeRecord(this.positionPath, record)));
  }

  readCluster(): Promise<ClusterRecords> {
    return this.context.measure('read', () => this.serially(() => this.readRecords()));
  }

  /** Renames our member record to its next name, or writes it again when it is gone. */
  private async renewMember(): Promise<void> {
    if (!this.member) return;
    const { beat, record } = this.member;
    try {
      await rename(this.memberPath(beat), this.memberPath(beat + 1));
    } catch (error) {
      if (code(error) !== 'ENOENT') throw error;
      // A peer expired it (we stalled for a ttl), or a cleaner removed it: we are live again.
      await this.writeRecord(this.memberPath(beat + 1), record);
    }
    this.member = { record, beat: beat + 1 };
  }

  /**
   * Puts `text` at `target` atomically: staged in staging/, then renamed into place, so a reader
   * sees the old record or the new one, never part of one. What a cleaner removed is made again,
   * and a directory in the target's place (nothing leaderd makes) is removed.
   */
  private async writeRecord(target: string, text: string): Promise<void> {
    const staged = join(this.stagingDir, `record.${this.sessionId}.${++this.writes}`);
    for (let tries = 1; ; tries++) {
      try {
        await writeFile(staged, text, { flag: 'wx', mode: 0o600 });
        await rename(staged, target);
        return;
      } catch (error) {
        await unlink(staged).catch(() => undefined);
        if (tries === 3 || !['ENOENT', 'EISDIR', 'ENOTEMPTY', 'EEXIST'].includes(code(error) ?? '')) throw error;
        if (code(error) === 'ENOENT') await this.ensureLayout();
        else {
          this.context.log.warn({ entry: target }, 'removing a directory in the place of a record');
          await rm(target, { recursive: true, force: true });
        }
      }
    }
  }

  /**
   * Every live member record and the leader's position. A record is looked at without trusting
   * it (readEntry); one renamed between the listing and its read is followed (readMember), and
   * only one that keeps moving makes the listing be taken again, so that a renewal in between
   * does not hide a live record.
   */
  private async readRecords(): Promise<ClusterRecords> {
    for (let tries = 1; ; tries++) {
      const members = await this.readMembers();
      if (members) {
        const position = await this.readRecord(this.positionPath, 'leader-position');
        return { members, leaderPosition: position === 'gone' ? null : position };
      }
      if (tries === 3) throw new Error('members/ kept changing while it was read');
    }
  }

  /** The live member records; null when one changed under the read. */
  private async readMembers(): Promise<string[] | null> {
    // A symlink in the place of members/ is not followed: the layout check replaces it.
    if (!(await lstatOrNull(this.membersDir))?.isDirectory()) return [];
    const names = await readdir(this.membersDir).catch(ignoreMissing);
    const now = monotonicMs();
    const own = this.member && this.memberName(this.member.beat);
    const seen = new Map<string, number>();
    const members: string[] = [];
    // Names read under, when a record was followed to a newer one: listed too, it is not read twice.
    const read = new Set<string>();
    for (const name of names) {
      if (read.has(name)) continue;
      const member = MEMBER_NAME.exec(name);
      if (!member) {
        this.warnOnce(`members/${name}`, 'ignoring an entry of members/ that is not a member record', { entry: name });
        continue;
      }
      const path = join(this.membersDir, name);
      if (name !== own) {
        const since = this.members.get(name) ?? now;
        const gone = member[2] === SCOPE_TAG && SCOPE_TAG !== 'none' && !processExists(Number(member[3]));
        if (gone || now - since >= this.ttlMs) {
          try {
            await unlink(path);
            this.context.log.info({ entry: name }, 'expired the member record of a session that stopped renewing or whose process is gone');
          } catch {
            // Renamed meanwhile by a renewal a ttl late: found under its new name next time. Or
            // not removable (a directory): it stays expired.
            seen.set(name, since);
          }
          continue;
        }
        seen.set(name, since);
      }
      const found = await this.readMember(member, `members/${member[1]}`);
      if (found === 'gone') return null;
      read.add(found.name);
      if (found.record !== null) members.push(found.record);
    }
    this.members = seen;
    return members;
  }

  /**
   * A member's record as listed under `name`, or under the name its renewals have moved it to
   * since (a renewal renames it: the beat at the end of the name moves on). With many members
   * renewing, some record is renamed during almost every read of them all, so it is followed by
   * its session rather than the whole listing taken again. null when its session has ended since
   * (no name of it is left: it is no live record); 'gone' when it keeps moving.
   */
  private async readMember(listed: RegExpExecArray, key: string): Promise<{ name: string; record: string | null } | 'gone'> {
    const [, session, scope, pid] = listed;
    let name = listed[0];
    let beat = Number(listed[4]);
    for (let looks = 0; looks < 5; looks++) {
      const record = await this.readRecord(join(this.membersDir, name), key);
      if (record !== 'gone') return { name, record };
      // Its newest name: the same session and process, a later beat (anything else is not its).
      let newest: RegExpExecArray | null = null;
      for (const other of await readdir(this.membersDir).catch(ignoreMissing)) {
        const m = MEMBER_NAME.exec(other);
        if (m && m[1] === session && m[2] === scope && m[3] === pid && Number(m[4]) > Number(newest?.[4] ?? beat)) newest = m;
      }
      if (newest === null) return { name, record: null };
      name = newest[0];
      beat = Number(newest[4]);
    }
    return 'gone';
  }

  /** A record's text; null when it is none (not a regular file, too large); 'gone' when it vanished. */
  private async readRecord(path: string, key: string): Promise<string | null | 'gone'> {
    const bytes = await readEntry(path, MAX_RECORD_BYTES + 1);
    if (bytes === 'gone') return 'gone';
    if (bytes === null) {
      this.warnOnce(key, 'ignoring a record that is no readable file', { entry: path });
      return null;
    }
    if (bytes.length > MAX_RECORD_BYTES) {
      this.warnOnce(key, `ignoring a record larger than ${MAX_RECORD_BYTES} bytes`, { entry: path });
      return null;
    }
    return bytes.toString('utf8');
  }

  private serially<T>(operation: () => Promise<T>): Promise<T> {
    const result = this.queue.then(operation);
    this.queue = result.catch(() => undefined);
    return result;
  }

  /**
   * Checks --local-dir and the election directory, makes again what a cleaner removed, replaces
   * what is not a directory where one belongs, and watches the election directory again when it
   * is a new one (a watcher on a removed directory reports nothing more). Having to make any of it,
   * or finding a new directory, once this process has seen a term, means that a live leader may
   * have lost its lock without a compare: the marker is left before the layout is made, so that
   * no candidate can stage a lock in it without finding the marker.
   */
  private async ensureLayout(): Promise<void> {
    // Until the directories have once been fit for use, what is wrong with them is the
    // configuration's; after that it may pass (a read-only remount, a cleaner racing us).
    const strict = !USABLE_DIRECTORIES.has(this.dir);
    await ownDirectory(this.root, strict);
    const { made, inode } = await ownDirectory(this.dir, strict);
    const layout = [this.tokensDir, this.stagingDir];
    const intact = (await Promise.all(layout.map(async (path) => (await lstatOrNull(path))?.isDirectory() ?? false))).every(Boolean);
    const election = knownOf(this.dir);
    if (election.token > 0 && (made || !intact || (election.inode !== null && election.inode !== inode))) await this.markRecreated();
    election.inode = inode;
    if (!intact) for (const path of layout) await directoryAt(path);
    // Member records are no part of a term: made again, members/ needs no marker.
    await directoryAt(this.membersDir);
    USABLE_DIRECTORIES.add(this.dir);
    if (inode === this.watchedInode || this.closed) return;
    this.watcher?.close();
    // Changes to the lock directory's entry wake us at once.
    this.watcher = watch(this.dir, () => this.scheduleObserve());
    this.watcher.on('error', () => undefined);
    this.watchedInode = inode;
  }

  private async markRecreated(): Promise<void> {
    // Rounded up: the marker must not claim a moment before the removal it was made after.
    const marker = `recreated.${BOOT_ID ?? 'unknown'}.${Math.ceil(monotonicMs())}`;
    try {
      await writeFile(join(this.dir, marker), '', { flag: 'wx', mode: 0o600 });
    } catch (error) {
      if (code(error) !== 'EEXIST') throw error;
    }
    this.context.log.warn({ dir: this.dir, marker }, 'the election directory was removed or replaced: nobody takes the lock until a ttl has passed');
  }

  /**
   * How long no candidate may take the lock yet: until a ttl after the youngest marker of this
   * boot. Markers of another boot (no leader of it is alive), older than a ttl, or from the future
   * (not written on this clock) are removed.
   */
  private async recreatedWaitMs(): Promise<number> {
    const names = await readdir(this.dir).catch(ignoreMissing);
    // Read after the listing: every marker in it was written after its writer read the clock,
    // and rounded up by under 1 ms, so none of ours can be more than 1 ms ahead of `now`.
    const now = monotonicMs();
    let waitMs = 0;
    for (const name of names) {
      const marker = MARKER_NAME.exec(name);
      if (!marker) continue;
      const ageMs = now - Number(marker[2]);
      if (marker[1] === (BOOT_ID ?? 'unknown') && ageMs >= -1 && ageMs < this.ttlMs) waitMs = Math.max(waitMs, this.ttlMs - ageMs);
      else await unlink(join(this.dir, name)).catch(() => undefined);
    }
    return waitMs;
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
    // lstat: a lock that is a symlink must not be followed, or the cleanup below would empty the
    // directory it points to.
    const info = await lstatOrNull(this.lockDir);
    if (!info) return null;
    if (!info.isDirectory()) {
      // Nothing leaderd makes: it would refuse every lock. unlink() cannot remove a directory, so
      // a lock renamed into place meanwhile is safe from it.
      this.warnOnce('lock', 'the lock is not a directory; removing it');
      await unlink(this.lockDir).catch(() => undefined);
      return null;
    }
    let names: string[];
    try {
      names = await readdir(this.lockDir);
    } catch (error) {
      if (code(error) === 'ENOENT' || code(error) === 'ENOTDIR') return 'busy'; // changed since the lstat
      throw error;
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
    const fencingToken = beat ? parseToken(beat[2]!) : null;
    if (fencingToken === null && !CLAIM_NAME.test(name)) {
      this.warnOnce(`lock/${name}`, 'the lock holds an entry of unknown form; it expires after the ttl', { entry: name });
    }
    const text = await readEntry(join(this.lockDir, name), RECORD_LIMIT);
    if (text === 'gone') return 'busy'; // renamed or expired since the readdir
    const record = text === null ? null : parseRecord(text.toString('utf8'));
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

  /**
   * False while no candidate may take the lock: within a ttl of a marker (the poll looks again),
   * or with no token left. Also makes sure of the layout the lock is staged in.
   */
  private async mayAcquire(): Promise<boolean> {
    await this.ensureLayout();
    return (await this.recreatedWaitMs()) === 0 && !this.refuseToLead(knownOf(this.dir).token);
  }

  private async acquire(): Promise<void> {
    if (!(await this.mayAcquire())) return;
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
    // its lock was released, so it is on disk or remembered, and ours is larger. Nobody leads on a
    // claim, so giving it back is harmless.
    const dropClaim = async () => {
      await unlink(join(this.lockDir, claim)).catch(() => undefined);
      await rmdir(this.lockDir).catch(() => undefined);
    };
    let fencingToken: number | null;
    try {
      // Looked at again: a removal of the directory between the first look and the rename would
      // have gone unnoticed.
      fencingToken = (await this.mayAcquire()) ? await this.nextToken() : null;
    } catch (error) {
      await dropClaim();
      throw error;
    }
    if (fencingToken === null) return dropClaim();
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

  /** The next token, or null when there is none left (refuseToLead). */
  private async nextToken(): Promise<number | null> {
    for (;;) {
      const largest = Math.max(await this.largestToken(), knownOf(this.dir).token, Date.now());
      if (this.refuseToLead(largest)) return null;
      remember(this.dir, largest + 1);
      if (!(await this.createToken(largest + 1))) continue;
      await this.pruneTokensBelow(largest + 1);
      return largest + 1;
    }
  }

  /**
   * True when `largest` leaves no token to take. Only a foreign file in tokens/ can get there (the
   * clock will not for 285,000 years): it stays until removed, and every sidecar that saw it
   * remembers it, so the error says so once and names it.
   */
  private refuseToLead(largest: number): boolean {
    if (largest < LAST_TOKEN) return false;
    const election = knownOf(this.dir);
    if (!election.refused) {
      election.refused = true;
      this.context.log.error(
        { file: join(this.tokensDir, String(largest)) },
        'no fencing token is left above this file (only a file in tokens/ that leaderd did not write leads there): refusing to lead; stop every sidecar of the election, remove the file, start them again',
      );
    }
    return true;
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
      await directoryAt(this.tokensDir);
    }
  }

  /** The largest token in tokens/ (0 when a cleaner removed it: memory and the clock remain). */
  private async largestToken(): Promise<number> {
    let largest = 0;
    for (const name of await readdir(this.tokensDir).catch(ignoreMissing)) {
      const token = parseToken(name);
      if (token === null) {
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
      const token = parseToken(name);
      if (token !== null && token < limit) await unlink(join(this.tokensDir, name)).catch(() => undefined);
    }
  }

  /**
   * Removes what has stayed in staging/ for a ttl: a candidate stages for a moment only, so it is
   * what a crash left between staging and renaming (or not leaderd's). Timed by our own watching,
   * like expiry, so a clock step cannot make a fresh one look old.
   */
  private async removeAbandonedStaging(): Promise<void> {
    const now = monotonicMs();
    const seen = new Map<string, number>();
    for (const name of await readdir(this.stagingDir).catch(ignoreMissing)) {
      const since = this.staged.get(name) ?? now;
      if (now - since < this.ttlMs) {
        seen.set(name, since);
        continue;
      }
      await rm(join(this.stagingDir, name), { recursive: true, force: true });
      this.context.log.info({ entry: name }, 'removed what a crash left in staging/');
    }
    this.staged = seen;
  }

  private warnOnce(key: string, message: string, details: Record<string, unknown> = {}): void {
    const id = `${this.dir}/${key}`;
    // Bounded: a directory that keeps filling with new names must not fill memory.
    if (warned.has(id) || warned.size > WARN_LIMIT) return;
    if (warned.size === WARN_LIMIT) {
      warned.add('');
      this.context.log.warn({ dir: this.dir }, `${WARN_LIMIT} entries leaderd did not write have been warned about; further ones are not`);
      return;
    }
    warned.add(id);
    this.context.log.warn({ dir: this.dir, ...details }, message);
  }

  private memberName(n: number): string {
    return `${this.sessionId}.${SCOPE_TAG}.${process.pid}.${n}`;
  }

  private memberPath(n: number): string {
    return join(this.membersDir, this.memberName(n));
  }

  private beatName(fencingToken: number, n: number): string {
    return `beat.${this.sessionId}.${fencingToken}.${n}`;
  }

  private beatPath(fencingToken: number, n: number): string {
    return join(this.lockDir, this.beatName(fencingToken, n));
  }
}

/** Election directories this process has once found fit for use (see ensureLayout). */
const USABLE_DIRECTORIES = new Set<string>();

/** Something wrong with --local-dir that may pass by itself: it ends the session, which is retried. */
class LocalDirError extends Error {}

/**
 * Makes `path` if it is missing and checks that it is a directory of the user running leaderd
 * that not every user may write to, unless it is sticky (then nobody else can remove or rename
 * what leaderd keeps there), and that leaderd can write in it. A wrong one cannot become right by
 * retrying: BackendConfigError, naming local-dir. What may pass by itself (no permission or a
 * read-only filesystem now, a parent removed meanwhile, in a directory of our own) is one only
 * when `strict`, and else a LocalDirError.
 */
async function ownDirectory(path: string, strict: boolean): Promise<{ made: boolean; inode: number }> {
  const mayPass = (message: string) => (strict ? new BackendConfigError(message) : new LocalDirError(message));
  let made: boolean;
  try {
    made = await makeDirectories(resolve(path));
  } catch (error) {
    const reason = code(error);
    if (reason === 'EEXIST' || reason === 'ENOTDIR') throw new BackendConfigError(`local-dir: ${path} is not a directory`);
    if (reason === 'EACCES' || reason === 'EPERM' || reason === 'EROFS' || reason === 'ENOENT') {
      throw mayPass(`local-dir: cannot create ${path} (${reason}); choose a directory of your own with --local-dir`);
    }
    throw error;
  }
  const info = await stat(path);
  if (!info.isDirectory()) throw new BackendConfigError(`local-dir: ${path} is not a directory`);
  const filesystem = PSEUDO_FILESYSTEMS.get((await statfs(path)).type);
  if (filesystem) throw new BackendConfigError(`local-dir: ${path} is on ${filesystem}, which cannot hold files; choose a directory on a real filesystem`);
  // Whose it is comes first: a directory someone else made in its place must be refused, never
  // taken for one of ours that cannot be written just now.
  if (process.getuid && info.uid !== process.getuid()) {
    throw new BackendConfigError(`local-dir: ${path} belongs to another user (uid ${info.uid}); choose a directory of your own`);
  }
  if ((info.mode & constants.S_IWOTH) !== 0 && (info.mode & STICKY) === 0) {
    throw new BackendConfigError(`local-dir: ${path} is writable by every user; chmod o-w, or chmod +t so that nobody can remove what is not theirs`);
  }
  try {
    // Root passes every permission check but a read-only mount's (EROFS).
    await access(path, constants.W_OK | constants.X_OK);
  } catch (error) {
    throw mayPass(`local-dir: cannot write in ${path} (${code(error)}); choose a directory of your own with --local-dir`);
  }
  return { made, inode: info.ino };
}

/**
 * Kernel pseudo-filesystems (statfs f_type) where directories can exist but leaderd's files cannot
 * be made: there, every open would fail again forever.
 */
const PSEUDO_FILESYSTEMS = new Map<number, string>([
  [0x9fa0, 'procfs'],
  [0x62656572, 'sysfs'],
  [0x27e0eb, 'cgroupfs'],
  [0x63677270, 'cgroup2fs'],
  [0x64626720, 'debugfs'],
  [0x74726163, 'tracefs'],
  [0x73636673, 'securityfs'],
  [0x1cd1, 'devpts'],
  [0x62656570, 'configfs'],
  [0xcafe4a11, 'bpffs'],
]);

/**
 * `mkdir -p`, true when it made `path`. Node's recursive mkdir loops forever where mkdir answers
 * ENOENT under a parent that exists (any path under /proc): here the parent is made at most once
 * per level, and a second ENOENT is an answer.
 */
async function makeDirectories(path: string): Promise<boolean> {
  try {
    await mkdir(path, { mode: 0o700 });
    return true;
  } catch (error) {
    if (code(error) === 'EEXIST' && (await stat(path)).isDirectory()) return false;
    if (code(error) !== 'ENOENT' || dirname(path) === path) throw error;
  }
  await makeDirectories(dirname(path));
  try {
    await mkdir(path, { mode: 0o700 });
    return true;
  } catch (error) {
    if (code(error) === 'EEXIST' && (await stat(path)).isDirectory()) return false;
    throw error;
  }
}

/**
 * Makes `path` a directory: whatever else is in its place, a symlink included, is unlinked first,
 * never followed. unlink() cannot remove a directory, so one a peer made meanwhile stays.
 */
async function directoryAt(path: string): Promise<void> {
  for (let tries = 1; ; tries++) {
    const info = await lstatOrNull(path);
    if (info?.isDirectory()) return;
    try {
      if (info) await unlink(path);
      await mkdir(path, { mode: 0o700 });
      return;
    } catch (error) {
      // A peer was replacing it too: look again.
      if (tries === 3 || !['ENOENT', 'EEXIST', 'EISDIR'].includes(code(error) ?? '')) throw error;
    }
  }
}

/**
 * An entry's bytes, read without trusting the entry: never through a symlink, never waiting on a
 * FIFO or a device, never more than `limit` bytes. null when it is no readable regular file;
 * 'gone' when it vanished meanwhile.
 */
async function readEntry(path: string, limit: number): Promise<Buffer | null | 'gone'> {
  let file;
  try {
    file = await open(path, constants.O_RDONLY | constants.O_NOFOLLOW | constants.O_NONBLOCK);
  } catch (error) {
    return code(error) === 'ENOENT' ? 'gone' : null;
  }
  try {
    if (!(await file.stat()).isFile()) return null;
    const buffer = Buffer.alloc(limit);
    const { bytesRead } = await file.read(buffer, 0, limit, 0);
    return buffer.subarray(0, bytesRead);
  } catch {
    return null;
  } finally {
    await file.close().catch(() => undefined);
  }
}

/** A token as leaderd writes it, or null: a name leaderd cannot have written is no token. */
function parseToken(name: string): number | null {
  const token = Number(name);
  return TOKEN_NAME.test(name) && token <= LAST_TOKEN ? token : null;
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

/** What `read` finds in /proc, or null where there is no /proc. */
function fromProc(read: () => string): string | null {
  try {
    return read();
  } catch {
    return null;
  }
}

async function lstatOrNull(path: string): Promise<Stats | null> {
  try {
    return await lstat(path);
  } catch (error) {
    if (code(error) === 'ENOENT') return null;
    throw error;
  }
}

function ignoreMissing(error: unknown): string[] {
  if (code(error) === 'ENOENT') return [];
  throw error;
}

function code(error: unknown): string | undefined {
  return (error as NodeJS.ErrnoException | null)?.code;
}

/**
 * Stopping a hook's process group: everything the hook started, not only the hook itself.
 *
 * The promise: `stopGroup(...).done` always resolves, after a bounded time (the grace, then
 * KILL_SETTLE_MS), and by then every member of the group has been sent SIGTERM and, if it was
 * still running after the grace, SIGKILL. It does not wait for an exit that may never be reported
 * (a process in uninterruptible sleep on a hung disk): a hook that cannot be killed must not hold
 * up the demote behind it, the hook queue or leaderd's shutdown for ever.
 *
 * Members are found in /proc, because kill(-pgid, 0) also counts members that have exited and
 * that nobody has reaped yet (orphans go to PID 1, which need not reap them). Only the members
 * seen running last time are read again on each poll; the whole of /proc is read only when none
 * of them runs any more while the group still exists.
 */
import { readdirSync, readFileSync } from 'node:fs';
import { sleep } from './clock.js';

/** How often a stopped group is checked for members left. */
const POLL_MS = 50;
/** How long a SIGKILLed group gets to vanish (a process in uninterruptible sleep dies late). */
const KILL_SETTLE_MS = 1000;

export interface GroupStop {
  /** Resolves once the group has no running member, or has been SIGKILLed and given a moment. */
  readonly done: Promise<void>;
  /** Cuts the grace short: SIGKILL now. */
  killNow(): void;
}

/** SIGTERM to group `pgid`, then SIGKILL to whatever still runs after `graceMs`. */
export function stopGroup(pgid: number, graceMs: number): GroupStop {
  const members = new Members(pgid);
  const skip = new AbortController();
  const done = (async () => {
    signal(pgid, 'SIGTERM');
    if (!(await members.goneBy(performance.now() + graceMs, skip.signal))) {
      signal(pgid, 'SIGKILL');
      await members.goneBy(performance.now() + KILL_SETTLE_MS);
    }
    // What /proc shows as exited can still hold running threads (a main thread that exited
    // alone). While the group id exists it is still this group's, and a SIGKILL ends those too.
    if (signal(pgid, 0)) signal(pgid, 'SIGKILL');
  })();
  return { done, killNow: () => skip.abort() };
}

class Members {
  /** Members seen running at the last look; the group leader to begin with. */
  private running: number[];

  constructor(private readonly pgid: number) {
    this.running = [pgid];
  }

  /** True once no member runs; false if some still does at `deadline` or when `skip` fires. */
  async goneBy(deadline: number, skip?: AbortSignal): Promise<boolean> {
    while (this.anyRunning()) {
      if (performance.now() >= deadline || skip?.aborted) return false;
      await sleep(POLL_MS, skip);
    }
    return true;
  }

  private anyRunning(): boolean {
    if (!signal(this.pgid, 0)) return false;
    if (this.running.some((pid) => runsInGroup(pid, this.pgid))) return true;
    const found = runningMembers(this.pgid);
    // Without /proc, kill(-pgid, 0) is all there is to go by.
    if (found === null) return true;
    this.running = found;
    return found.length > 0;
  }
}

/** The members of group `pgid` that have not exited; null when /proc cannot be read. */
function runningMembers(pgid: number): number[] | null {
  let entries: string[];
  try {
    entries = readdirSync('/proc');
  } catch {
    return null;
  }
  return entries.filter((entry) => /^\d+$/.test(entry) && runsInGroup(Number(entry), pgid)).map(Number);
}

function runsInGroup(pid: number, pgid: number): boolean {
  let stat: string;
  try {
    stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
  } catch {
    return false; // gone
  }
  // "pid (comm) state ppid pgrp ...": comm may hold spaces and parentheses.
  const [state, , pgrp] = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  return Number(pgrp) === pgid && state !== 'Z' && state !== 'X';
}

/** Sends `name` (0: none, only a check) to group `pgid`; false when the group has no members. */
function signal(pgid: number, name: NodeJS.Signals | 0): boolean {
  try {
    process.kill(-pgid, name);
    return true;
  } catch (error) {
    // ESRCH: gone. EPERM: members left that are not ours to signal, so the group exists.
    return (error as NodeJS.ErrnoException).code !== 'ESRCH';
  }
}

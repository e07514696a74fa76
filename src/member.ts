/**
 * This node as the other members see it, and the gate that decides whether it may lead.
 *
 * Every check interval it runs the check (src/check.ts), reads the member records, publishes its
 * own record when something in it changed (a position at most once per interval), and, while
 * primary, the election's last-leader-position record. It reads again at once when the leader
 * changes, and the elector asks it once more, with a fresh check and a fresh read, before this
 * node is promoted (Gate.confirm). The rule itself is `mayTakeLeadership` in cluster.ts.
 *
 * A member with a check does not stand while someone else leads: the question of who comes next
 * is asked when the leader is gone, so replicas whose positions move do not join and leave the
 * backend's queue all the time. A member without one keeps its place in the queue, as without a
 * gate, unless it knows of a better member (see standsBehindLeader). Positions are published at
 * most once per check interval, so when the leader goes, every member with a check checks and
 * publishes its position at once (its record then names the leader that went, `leaderGone`).
 * Members stand on the records they have (an older record can only understate a position); the
 * first in line compares itself only with records published since, waiting for them up to one
 * check interval: else a replica further behind, checked later, would win over a better one whose
 * record was older. A member that came first but may not lead steps back, and stands again no
 * sooner than one check interval later, on fresh facts.
 *
 * A primary is not held to that rule: it keeps its term while its check passes, and hands over
 * when the check has failed without a pass for --unhealthy-after (one failed run is not an
 * outage), or when it is switching over.
 */
import { monotonicMs } from './clock.js';
import { runCheck } from './check.js';
import {
  ALWAYS_HEALTHY,
  ownVerdict,
  bestCandidate,
  lagBehind,
  leaderPositionText,
  mayTakeLeadership,
  memberText,
  newestById,
  parseLeaderPosition,
  parseMember,
  positionJson,
  switchoverRefusal,
  type CheckResult,
  type LeaderPosition,
  type MemberRecord,
  type Verdict,
} from './cluster.js';
import type { Leader } from './backend.js';
import type { Elector, Gate, Status } from './elector.js';
import { errorMessage } from './elector.js';
import type { Logger } from './log.js';
import { RepeatedWarning } from './backoff.js';

export interface MemberOptions {
  readonly election: string;
  readonly id: string;
  readonly address: string;
  /** argv, run without a shell; null: always healthy, position unknown. */
  readonly check: readonly string[] | null;
  readonly checkIntervalMs: number;
  readonly checkTimeoutMs: number;
  readonly priority: number;
  readonly maxLag: bigint | null;
  /** A primary whose check has failed without a pass for this long steps down. */
  readonly unhealthyAfterMs: number;
  readonly ttlMs: number;
  readonly log: Logger;
  readonly elector: () => Elector;
  readonly listener?: MemberListener;
}

export type SwitchoverResult = 'completed' | 'refused' | 'timeout' | 'failed';

export interface MemberListener {
  checkRun?(healthy: boolean): void;
  switchover?(result: SwitchoverResult): void;
}

/** What /role adds about this member. */
export interface MemberState {
  readonly healthy: boolean;
  readonly eligible: boolean;
  readonly priority: number;
  readonly position: bigint | null;
  /** Behind the last leader's published position; null when unknown. */
  readonly lag: bigint | null;
}

export interface ClusterView {
  readonly election: string;
  readonly leader: { id: string; address: string; fencingToken: number } | null;
  readonly members: ReadonlyArray<{
    id: string;
    address: string;
    role: string;
    healthy: boolean;
    eligible: boolean;
    priority: number;
    position: number | string | null;
    lag: number | string | null;
    updatedAt: string;
  }>;
}

export interface SwitchoverAnswer {
  readonly status: 200 | 409 | 412 | 503;
  readonly body: Record<string, unknown>;
}

/** How often a switchover looks for its candidate's promotion. */
const SWITCHOVER_POLL_MS = 100;
/** How often the first in line reads the records while waiting for the others' positions after the leader went. */
const FRESHNESS_POLL_MS = 50;

export class Member implements Gate {
  private check: CheckResult;
  /** When the check started failing without a pass since (monotonic ms); null while it passes. */
  private failingSince: number | null = null;
  /** The other members' live records, as last read. */
  private others: readonly MemberRecord[] = [];
  private leaderPosition: LeaderPosition | null = null;
  private readFailed = false;
  /** Named in this member's record: the switchover's candidate. */
  private handoverTo: string | null = null;
  /** Stepping down for the switchover: set only once the record naming the candidate is published. */
  private handingOver = false;
  /** The leader that went (its token) and when; null while someone leads. */
  private gone: { token: number; at: number } | null = null;
  /** The token of the last leader gone before the last check started: what `leaderGone` publishes. */
  private checkedSinceGone: number | null = null;
  /** A switchover is being handled (from the request's arrival, before handoverTo is known). */
  private switching = false;
  /** After a step-back: not standing again before this (monotonic ms). */
  private steppedBackUntil = 0;
  /** What was last published, without its time; null: publish at the next chance. */
  private publishedRecord: { key: string; position: bigint | null; at: number; record: MemberRecord } | null = null;
  private publishedPosition: { token: number; position: bigint; at: number } | null = null;
  private publishing: Promise<void> = Promise.resolve();
  /** The last reason for not standing, its numbers left out, so that a moving lag is not news. */
  private lastRefusal = '';
  private lastLeader: Leader | null = null;
  private timer: NodeJS.Timeout | undefined;
  private stopped = false;

  /** Failures that repeat while the backend is unreachable: logged less and less often. */
  private readonly publishFailures: RepeatedWarning;
  private readonly positionFailures: RepeatedWarning;

  constructor(private readonly options: MemberOptions) {
    this.publishFailures = new RepeatedWarning(options.log, 'cannot publish the member record');
    this.positionFailures = new RepeatedWarning(options.log, 'cannot publish the leader position');
    this.check = options.check ? { healthy: false, eligible: false, position: null, reason: 'not checked yet' } : ALWAYS_HEALTHY;
  }

  start(): void {
    const elector = this.options.elector();
    // Deferred: these come from inside the elector's reconcile(), which the work below would
    // enter again (it reads the status).
    elector.subscribe({
      sessionOpened: () =>
        setImmediate(() => {
          this.publishedRecord = null;
          void this.refresh();
        }),
      change: (status) => {
        const leaderChanged = this.noteLeader(status);
        setImmediate(() => this.statusChanged(status, leaderChanged));
      },
    });
    const tick = async () => {
      if (this.stopped) return;
      await this.refresh();
      if (!this.stopped) this.timer = setTimeout(tick, this.options.checkIntervalMs);
    };
    void tick();
  }

  stop(): void {
    this.stopped = true;
    clearTimeout(this.timer);
  }

  // --- the gate (asked by the elector) ---

  allows(leading: boolean, leader: Leader | null): boolean {
    // Following a live leader is the normal state of a replica, not news for the log.
    if (!leading && leader !== null) return this.standsBehindLeader();
    const verdict = leading ? this.mayKeepLeading() : this.mayStand();
    const refusal = verdict.ok ? '' : verdict.reason.replace(/[0-9]+/g, 'N');
    if (refusal !== this.lastRefusal) {
      if (verdict.ok) this.options.log.info('standing for leadership');
      else this.options.log.info({ reason: verdict.reason }, 'not standing for leadership');
    }
    this.lastRefusal = refusal;
    return verdict.ok;
  }

  async confirm(): Promise<boolean> {
    if (this.handoverTo !== null) return false;
    let read = await this.refresh({ publish: false });
    // Positions as they are since the leader went: records older than that may understate them.
    // A switchover's candidate does not compare positions: nothing to wait for.
    while (read && !this.stopped && !this.named() && this.staleAfterLeaderGone().length > 0) {
      await new Promise((resolve) => setTimeout(resolve, FRESHNESS_POLL_MS));
      read = await this.read();
    }
    const verdict: Verdict = read ? mayTakeLeadership(this.gateFacts()) : { ok: false, reason: 'the member records cannot be read' };
    if (verdict.ok) return true;
    this.options.log.info({ reason: verdict.reason }, 'first in line, but may not lead');
    // What the check just said (unhealthy, say), for the others, who may be giving way to this member.
    void this.publish(this.options.elector().status());
    return false;
  }

  steppedBack(): void {
    this.steppedBackUntil = monotonicMs() + this.options.checkIntervalMs;
  }

  /**
   * Whether this node keeps its place in the backend's queue while someone else leads. A member
   * without a check does, while it knows of no better member: its own facts never move, so
   * standing costs no churn, and the next in line takes over as without a gate (no extra
   * campaign, the backend's order kept), confirmed at the front on a fresh read. A member with a
   * check stands only once the leader has gone, on a position checked since.
   */
  private standsBehindLeader(): boolean {
    if (this.options.check !== null || this.handoverTo !== null) return false;
    if (monotonicMs() < this.steppedBackUntil) return false;
    // Not ahead of a better member it knows of: it would only step back at the front, and the
    // better one, if it has a check, stands only once nobody is first.
    return mayTakeLeadership(this.gateFacts()).ok;
  }

  /** Whether this node may stand while nobody leads. */
  private mayStand(): Verdict {
    if (this.handoverTo !== null) return { ok: false, reason: `switching over to ${this.handoverTo}` };
    if (monotonicMs() < this.steppedBackUntil) return { ok: false, reason: 'stepped back: waiting for the next check' };
    if (this.readFailed) return { ok: false, reason: 'the member records cannot be read' };
    // Records older than the leader's going can only understate the others' positions (they
    // grow): a member they show ahead is ahead. Whether one is ahead that they show behind is
    // for the first in line to find out (confirm).
    return mayTakeLeadership(this.gateFacts());
  }

  /** The primary is handing over to this member. */
  private named(): boolean {
    return this.others.some((m) => m.handoverTo === this.options.id);
  }

  /**
   * Members that might lead whose records predate the leader's going, while it is worth waiting
   * for them. Not only those whose record says `candidate`: that is as old as its position. Not
   * those healthy without a position (no check, or one that reports none): checked again, they
   * still have none, and nobody is behind them.
   */
  private staleAfterLeaderGone(): string[] {
    const gone = this.gone;
    if (!gone || !this.goneWindowOpen()) return [];
    const mayMove = (m: MemberRecord) => m.position !== null || !m.healthy;
    return this.others.filter((m) => m.role !== 'primary' && m.priority > 0 && mayMove(m) && (m.leaderGone ?? -1) < gone.token).map((m) => m.id);
  }

  private mayKeepLeading(): Verdict {
    if (this.handingOver) return { ok: false, reason: `switching over to ${this.handoverTo}` };
    if (this.failingSince !== null && monotonicMs() - this.failingSince >= this.options.unhealthyAfterMs) {
      return { ok: false, reason: `the check has failed for ${this.options.unhealthyAfterMs / 1000} s: ${this.check.reason ?? ''}` };
    }
    return { ok: true };
  }

  private gateFacts() {
    return {
      id: this.options.id,
      priority: this.options.priority,
      check: this.check,
      others: this.others,
      leaderPosition: this.leaderPosition,
      maxLag: this.options.maxLag,
    };
  }

  // --- what the API shows ---

  state(): MemberState {
    const primary = this.options.elector().status().role === 'primary';
    return {
      healthy: this.check.healthy,
      eligible: this.check.eligible,
      priority: this.options.priority,
      position: this.check.position,
      lag: primary ? 0n : lagBehind(this.leaderPosition, this.check.position),
    };
  }

  cluster(): ClusterView {
    const status = this.options.elector().status();
    // This member as the others see it: the record last published, the same on every node.
    const self = this.publishedRecord?.record ?? this.record(status);
    const members = newestById([...this.others, self]).map((m) => ({
      id: m.id,
      address: m.address,
      role: m.role,
      healthy: m.healthy,
      eligible: m.eligible,
      priority: m.priority,
      position: positionJson(m.position),
      lag: positionJson(m.role === 'primary' ? 0n : lagBehind(this.leaderPosition, m.position)),
      updatedAt: m.updatedAt,
    }));
    const leader = status.leader;
    return {
      election: this.options.election,
      leader: leader ? { id: leader.id, address: leader.address, fencingToken: leader.fencingToken } : null,
      members,
    };
  }

  // --- switchover ---

  /**
   * Hands leadership to `candidate` (or to the best member), as POST /switchover asks: this node
   * names it in its record, steps down (demote hook first, as always), and waits for the
   * candidate's record to show it promoted. Nobody else stands while the record names it.
   */
  async switchover(candidate: string | undefined): Promise<SwitchoverAnswer> {
    const elector = this.options.elector();
    const status = elector.status();
    if (status.role !== 'primary' || !status.leader) {
      return { status: 409, body: { error: 'this node is not the primary', leader: status.leader ? { id: status.leader.id, address: status.leader.address } : null } };
    }
    const from = status.leader;
    if (this.switching) {
      return { status: 409, body: { error: 'a switchover is already in flight', leader: { id: from.id, address: from.address } } };
    }
    this.switching = true;
    try {
      return await this.handOver(candidate, from);
    } finally {
      this.switching = false;
    }
  }

  private async handOver(candidate: string | undefined, from: Leader): Promise<SwitchoverAnswer> {
    const elector = this.options.elector();
    if (!(await this.refresh({ publish: false }))) return this.refused(503, 'the member records cannot be read');
    // The term may have ended while the records were read.
    if (!elector.holdsTerm(from.fencingToken)) return { status: 409, body: { error: 'this node is no longer the primary' } };
    if (candidate === this.options.id) return this.refused(412, `${candidate} is already the primary`);
    // Measured against this primary as it is now, not its last published position.
    const here: LeaderPosition | null =
      this.check.position === null ? this.leaderPosition : { id: from.id, fencingToken: from.fencingToken, position: this.check.position, updatedAt: '' };
    const others = this.others.filter((m) => m.id !== this.options.id);
    let target: MemberRecord | null;
    if (candidate === undefined) {
      target = bestCandidate(others, here, this.options.maxLag);
      if (!target) return this.refused(412, 'no member can take over: none is healthy, eligible, of priority above 0 and within max-lag');
    } else {
      target = others.find((m) => m.id === candidate) ?? null;
      if (!target) return this.refused(412, `${candidate} is not a live member of this election`);
      const refusal = switchoverRefusal(target, here, this.options.maxLag);
      if (refusal) return this.refused(412, refusal);
    }
    const to = target.id;
    this.options.log.info({ to }, 'switchover: handing over');
    this.handoverTo = to;
    try {
      // Everyone must see whom the leadership goes to before it is let go.
      await this.publish(elector.status(), { force: true });
      if (this.publishedRecord?.record.handoverTo !== to) throw new Error('cannot publish the switchover in the member record');
      // Steps down: resolves once the demote hook has finished and the candidacy is withdrawn.
      this.handingOver = true;
      await elector.reevaluate(`switchover to ${to}`);
      // The candidate has a ttl from here, however long the demote took.
      const deadline = monotonicMs() + this.options.ttlMs;
      for (;;) {
        const promoted = this.others.find((m) => m.id === to && m.role === 'primary' && m.fencingToken !== null && m.fencingToken > from.fencingToken);
        if (promoted) {
          this.options.listener?.switchover?.('completed');
          this.options.log.info({ to, fencingToken: promoted.fencingToken }, 'switchover: completed');
          return { status: 200, body: { from: from.id, to, fencingToken: promoted.fencingToken } };
        }
        if (monotonicMs() >= deadline || this.stopped) break;
        await new Promise((resolve) => setTimeout(resolve, SWITCHOVER_POLL_MS));
        await this.read();
      }
      this.options.listener?.switchover?.('timeout');
      this.options.log.warn({ to }, 'switchover: not completed within the ttl; back to a normal election');
      return { status: 503, body: { error: `the switchover to ${to} did not complete within the ttl; a normal election follows` } };
    } catch (error) {
      this.options.listener?.switchover?.('failed');
      this.options.log.warn({ to, err: errorMessage(error) }, 'switchover: failed');
      return { status: 503, body: { error: `switchover to ${to} failed: ${errorMessage(error)}` } };
    } finally {
      this.handoverTo = null;
      this.handingOver = false;
      await this.publish(elector.status(), { force: true });
      void elector.reevaluate('switchover over');
    }
  }

  private refused(status: 412 | 503, error: string): SwitchoverAnswer {
    this.options.listener?.switchover?.('refused');
    return { status, body: { error } };
  }

  // --- the loop ---

  /**
   * Notes a leader that went, at once (not deferred: the check a leader change starts must be
   * credited to it). Gone is gone whatever comes next: nobody, or straight away another member
   * (the next in line, which is still to be confirmed). Only within one session: a session of our
   * own that ended also shows no leader, while the leader lives on. A leader that goes within a
   * check interval of the one before (a first in line that stepped back, say) keeps the window
   * open, not restarted.
   */
  private noteLeader(status: Status): boolean {
    // A session's first look may come before it has seen anyone lead: a leader seen in an earlier
    // session has not gone for that.
    if (!status.connected) {
      this.lastLeader = null;
      return false;
    }
    const before = this.lastLeader;
    const leader = status.leader;
    this.lastLeader = leader;
    // (A member without a check has no position to bring up to date, and nobody waits for it.)
    const changed = before?.id !== leader?.id || before?.fencingToken !== leader?.fencingToken;
    if (before && changed && !this.goneWindowOpen()) this.gone = { token: before.fencingToken, at: monotonicMs() };
    return changed;
  }

  private goneWindowOpen(): boolean {
    return this.gone !== null && monotonicMs() - this.gone.at < this.options.checkIntervalMs;
  }

  private statusChanged(status: Status, leaderChanged: boolean): void {
    if (!status.connected) return;
    // Published at once (a new role is news, a switchover waits for it); and with a new leader, or
    // none, checked and read now, so that a failover is decided on positions as they are.
    void this.publish(this.options.elector().status()).then(async () => {
      if (!leaderChanged) return;
      // Without a check there is nothing to bring up to date, and a member that stands reads the
      // records when it comes first: the others need not all read them at once. One that gave way
      // to a better member reads them now: that member may be gone, or a switchover may name it.
      if (!this.options.check && mayTakeLeadership(this.gateFacts()).ok) return;
      await this.refresh();
    });
  }

  /** Runs the check and reads the records (in parallel), then publishes. False when the read failed. */
  private async refresh({ publish = true } = {}): Promise<boolean> {
    const [, read] = await Promise.all([this.runCheck(), this.read()]);
    const elector = this.options.elector();
    if (publish && !this.stopped) {
      await this.publish(elector.status());
      void elector.reevaluate('checked');
    }
    return read;
  }

  private async runCheck(): Promise<void> {
    const argv = this.options.check;
    if (!argv) return;
    const status = this.options.elector().status();
    const gone = this.gone;
    const result = await runCheck({
      argv,
      timeoutMs: this.options.checkTimeoutMs,
      facts: {
        election: this.options.election,
        id: this.options.id,
        role: status.role,
        leader: status.leader ? { id: status.leader.id, address: status.leader.address } : null,
        fencingToken: status.leader?.fencingToken ?? null,
      },
      log: this.options.log,
    });
    this.options.listener?.checkRun?.(result.healthy);
    if (result.healthy !== this.check.healthy || result.reason !== this.check.reason) {
      if (result.healthy) this.options.log.info('check: healthy');
      else this.options.log.warn({ reason: result.reason }, 'check: unhealthy');
    }
    if (result.healthy) this.failingSince = null;
    else this.failingSince ??= monotonicMs();
    this.check = result;
    // Credited only to the window the check started in.
    if (gone && this.gone === gone) this.checkedSinceGone = gone.token;
  }

  private async read(): Promise<boolean> {
    const elector = this.options.elector();
    // No session yet, or none any more: nothing to read, and the elector says so itself.
    if (!elector.status().connected) return false;
    let records;
    try {
      records = await elector.readCluster();
    } catch (error) {
      if (!this.readFailed) this.options.log.warn({ err: errorMessage(error) }, 'cannot read the member records');
      this.readFailed = true;
      return false;
    }
    if (this.readFailed) this.options.log.info('member records readable again');
    this.readFailed = false;
    const members: MemberRecord[] = [];
    let unreadable = 0;
    for (const text of records.members) {
      const record = parseMember(text);
      if (record) members.push(record);
      else unreadable++;
    }
    if (unreadable > 0) this.options.log.debug({ unreadable }, 'member records that are not leaderd’s were skipped');
    this.others = newestById(members).filter((m) => m.id !== this.options.id);
    this.leaderPosition = records.leaderPosition === null ? null : parseLeaderPosition(records.leaderPosition);
    return true;
  }

  private record(status: Status): MemberRecord {
    const primary = status.role === 'primary';
    return {
      id: this.options.id,
      address: this.options.address,
      role: status.role,
      // A member that cannot read the others' records cannot stand: it must not look as if it could.
      candidate: status.inRace && this.handoverTo === null && !this.readFailed && ownVerdict(this.gateFacts()).ok,
      healthy: this.check.healthy,
      eligible: this.check.eligible,
      priority: this.options.priority,
      position: this.check.position,
      fencingToken: primary ? (status.leader?.fencingToken ?? null) : null,
      handoverTo: this.handoverTo,
      leaderGone: this.checkedSinceGone,
      updatedAt: new Date().toISOString(),
    };
  }

  /**
   * Publishes this member's record when something in it changed (a moved position: at most once
   * per check interval), and the last-leader-position record while primary. One write at a time.
   */
  private publish(status: Status, { force = false } = {}): Promise<void> {
    const next = this.publishing.then(() => this.publishNow(status, force));
    this.publishing = next.catch(() => undefined);
    return next;
  }

  private async publishNow(status: Status, force: boolean): Promise<void> {
    if (!status.connected) return;
    const elector = this.options.elector();
    const record = this.record(status);
    const { updatedAt: _at, position, ...rest } = record;
    const key = JSON.stringify(rest);
    const now = monotonicMs();
    const last = this.publishedRecord;
    const due = force || last === null || last.key !== key || (last.position !== position && now - last.at >= this.options.checkIntervalMs);
    if (due) {
      try {
        await elector.publishMember(memberText(record));
        this.publishedRecord = { key, position, at: now, record };
        this.publishFailures.recovered();
      } catch (error) {
        this.publishedRecord = null;
        this.publishFailures.failed({ err: errorMessage(error) });
      }
    }
    const token = record.fencingToken;
    if (token === null || position === null) return;
    const lastPosition = this.publishedPosition;
    const positionDue =
      lastPosition === null ||
      lastPosition.token !== token ||
      // Overwritten since (a demoted primary's late write): this term's position is the one that counts.
      (this.leaderPosition !== null && this.leaderPosition.fencingToken !== token) ||
      (lastPosition.position !== position && now - lastPosition.at >= this.options.checkIntervalMs);
    // Only the holder of the term writes it: a demoted primary's late write would misstate the
    // position its successors must reach.
    if (!positionDue || !elector.holdsTerm(token)) return;
    try {
      await elector.publishLeaderPosition(leaderPositionText({ id: this.options.id, fencingToken: token, position, updatedAt: record.updatedAt }));
      this.publishedPosition = { token, position, at: now };
      this.positionFailures.recovered();
    } catch (error) {
      this.positionFailures.failed({ err: errorMessage(error) });
    }
  }
}

/**
 * The election state machine: one per election, backend-agnostic.
 *
 * Invariant: this node reports itself primary, and lets the application act as primary, only
 * while (a) its session's view says its own candidacy leads, (b) it is campaigning, and (c) its
 * lease deadline (see lease.ts) has not passed. All three are re-checked by `status()` at the
 * moment of every answer and every action, not only by timers, so a process that was frozen
 * past its deadline cannot answer or act as primary when it resumes: its first look at the
 * clock ends the term.
 *
 * A term that ends for any reason ends the session with it, or at least the candidacy; the next
 * term needs a new candidacy, hence a strictly larger fencing token. A candidacy whose term has
 * ended is *spent*: it is never promoted again, only withdrawn.
 *
 * Who may stand at all is the gate's to say (src/member.ts: health, position, priority, a
 * switchover in flight). The gate is asked again, with fresh facts, when this node's candidacy
 * comes first, before it is promoted: a member that fails then steps back, and its next
 * candidacy, if any, has a larger token. Without a gate, every candidate stands and the first one
 * leads.
 *
 * Role changes are derived, never stored: `reconcile()` computes (role, leader) from the facts
 * above, compares them with what was last published, and announces the differences in a fixed
 * order: demote, then leader-change, then promote.
 */
import type { Backend, Candidate, ClusterRecords, Leader, Session, View } from './backend.js';
import { NO_VIEW, SessionLostError, BackendConfigError } from './backend.js';
import { monotonicMs, withTimeout } from './clock.js';
import { LeaseDeadline, now, type Instant } from './lease.js';
import type { Logger } from './log.js';
import { RepeatedWarning, reopenDelayMs } from './backoff.js';

export type Role = 'primary' | 'replica' | 'unknown';
export type TransitionEvent = 'promote' | 'demote' | 'leader-change';

export interface Timing {
  readonly ttlMs: number;
  /** How often the session is renewed (ttl/3). */
  readonly renewIntervalMs: number;
  /** How long after the last successful renewal was sent this node may still act (< ttl). */
  readonly renewDeadlineMs: number;
}

export interface Status {
  readonly role: Role;
  readonly leader: Leader | null;
  /** When `role` last changed (wall clock, for people). */
  readonly since: Date;
  /** A session exists and its lease deadline has not passed. */
  readonly connected: boolean;
  /** The election loop ran within one ttl. */
  readonly alive: boolean;
  /** Milliseconds left on the lease deadline (0 without a session). */
  readonly leaseRemainingMs: number;
  /** In the race: running, and not resigned (in a hold-off). */
  readonly inRace: boolean;
}

/** Who may stand for leadership (src/member.ts). */
export interface Gate {
  /**
   * From the latest facts: may this node stand? `leading`: it holds a term now; `leader`: whom
   * the election names (null while nobody leads, or this node is still to be confirmed).
   */
  allows(leading: boolean, leader: Leader | null): boolean;
  /**
   * Asked when this node's candidacy comes first, before the term is announced: fresh facts
   * (the check run now, the records read now), fresh verdict. Never rejects.
   */
  confirm(): Promise<boolean>;
  /**
   * This node's candidacy came first and was not promoted (refused by confirm, or no longer let
   * stand before it was): the gate holds off a new one for a while, so that a refused member does
   * not come straight back and cycle through the queue ahead of the member it gave way to.
   */
  steppedBack(): void;
}

export interface Transition {
  readonly event: TransitionEvent;
  /** The role after the transition. */
  readonly role: Role;
  /** For promote/leader-change, the new leader; for demote, the leader whose term ended. */
  readonly leader: Leader | null;
  readonly reason: string;
}

/** What the rest of leaderd may observe; every method optional. */
export interface ElectorListener {
  transition?(transition: Transition, status: Status): void;
  change?(status: Status): void;
  backendRequest?(operation: string, seconds: number, failed: boolean): void;
  renewal?(succeeded: boolean): void;
  /** A new session is open: what was published in the old one is gone. */
  sessionOpened?(): void;
}

export interface ElectorOptions {
  readonly election: string;
  readonly candidate: Candidate;
  readonly backend: Backend;
  readonly timing: Timing;
  readonly log: Logger;
  /**
   * Resolves once the application has acted on every transition announced so far (the hooks
   * have run). Leadership is released only after it, so the application has stepped down
   * before a peer can be promoted.
   */
  readonly settle: () => Promise<void>;
  /** The backend refused the configuration; leaderd cannot go on. */
  readonly fatal: (error: Error) => void;
  /** Without one, every candidate stands and the first one leads. */
  readonly gate?: Gate;
}

/** stopping: the hooks settle while the session is still renewed; releasing: the session is closed. */
type Phase = 'running' | 'stopping' | 'releasing' | 'stopped';

/** How often the lease deadline is checked when nothing else happens. */
const CLOCK_CHECK_MS = 250;

interface Attempt {
  view: View;
  /** The session was reported lost before it finished opening. */
  lost: Error | null;
}

interface Published {
  role: Role;
  leader: Leader | null;
  connected: boolean;
  /** In the race (Status.inRace): listeners hear when it changes too (member records show it). */
  inRace: boolean;
  since: Date;
}

export class Elector {
  private phase: Phase = 'running';
  private session: Session | null = null;
  private attempt: Attempt | null = null;
  private lease: LeaseDeadline | null = null;
  /** Not resigned, not stopping: whether this node stands is then the gate's to say. */
  private inRace = true;
  /** The session whose candidacy is in the race (as last changed), if any. */
  private standingIn: Session | null = null;
  /** Every token of this node's up to here is spent: its term ended, or the gate refused it. */
  private spentThrough = 0;
  /** The token the gate confirmed, and the one it is being asked about. */
  private confirmedToken: number | null = null;
  private confirming: number | null = null;
  /** The session whose candidacy was promoted (until withdrawn): its withdrawal waits for the demote hook. */
  private promotedIn: Session | null = null;
  /** The session whose candidacy is being withdrawn: it is never promoted meanwhile. */
  private withdrawingIn: Session | null = null;
  private alignment: Promise<void> | null = null;
  private lastTickAt = monotonicMs();
  private lastAnnouncedLeader: Leader | null = null;
  private published: Published = { role: 'unknown', leader: null, connected: false, inRace: true, since: new Date() };
  private readonly listeners: ElectorListener[] = [];
  private resignations = 0;
  private loopTimer: NodeJS.Timeout | undefined;
  private clockCheck: NodeJS.Timeout | undefined;
  private holdOffTimer: NodeJS.Timeout | undefined;
  private deadlineTimer: NodeJS.Timeout | undefined;
  private loopWake: (() => void) | null = null;
  private loopDone: Promise<void> = Promise.resolve();
  /** Ended sessions still being released (once the hooks have settled); a shutdown waits for them. */
  private releasing: Promise<void> = Promise.resolve();

  /** Failures that repeat while a backend is unreachable: logged less and less often. */
  private readonly openFailures: RepeatedWarning;
  private readonly renewFailures: RepeatedWarning;

  constructor(private readonly options: ElectorOptions) {
    this.openFailures = new RepeatedWarning(options.log, 'cannot open a session; retrying');
    this.renewFailures = new RepeatedWarning(options.log, 'lease renewal failed');
  }

  /** Returns the function that unsubscribes. */
  subscribe(listener: ElectorListener): () => void {
    this.listeners.push(listener);
    return () => {
      const index = this.listeners.indexOf(listener);
      if (index >= 0) this.listeners.splice(index, 1);
    };
  }

  start(): void {
    this.loopDone = this.loop();
    // Makes a silent expiry visible (log, hooks, metrics) even when no one asks; correctness does
    // not depend on it, since every answer re-checks the clock. A timer at the deadline starts the
    // demote hook on time (see armDeadlineTimer); this short period catches what such a timer
    // misses: timers run on the monotonic clock, which stands still through a suspend.
    this.clockCheck = setInterval(() => this.reconcile('clock check'), CLOCK_CHECK_MS);
  }

  /** The current state, checked against the clock now. */
  status(): Status {
    this.reconcile('checked');
    return this.statusSnapshot();
  }

  /** True while `fencingToken`'s term is this node's and its lease is valid: asked before acting. */
  holdsTerm(fencingToken: number): boolean {
    const { role, leader } = this.status();
    return role === 'primary' && leader?.fencingToken === fencingToken;
  }

  /**
   * Steps down now and stays out of the race for `holdOffMs`. Resolves once leadership has been
   * released (after the demote hook), so a peer can win at once; with false, doing nothing, when
   * leaderd is shutting down (the shutdown releases leadership itself).
   */
  async resign(holdOffMs: number, reason: string): Promise<boolean> {
    if (this.phase !== 'running') return false;
    const resignation = ++this.resignations;
    this.inRace = false;
    clearTimeout(this.holdOffTimer);
    this.reconcile(reason);
    this.options.log.info({ holdOffSeconds: holdOffMs / 1000, reason }, 'resigned: out of the race');
    await this.options.settle();
    await this.align();
    // The hold-off starts once leadership is released: rejoining before the withdrawal has landed
    // would find the old candidacy still in place and lead again on it.
    if (resignation === this.resignations && this.phase === 'running') {
      this.holdOffTimer = setTimeout(() => this.rejoin(), holdOffMs);
    }
    return true;
  }

  /** Demotes if primary, releases leadership, ends the session. */
  async stop(): Promise<void> {
    if (this.phase !== 'running') return this.loopDone;
    // Leading in the backend, whatever the role says: a primary, or one stepping down (a resign,
    // a switchover, a failing check) whose demote hook still runs before it withdraws.
    const holding = this.published.role === 'primary' || this.attempt?.view.isSelf === true;
    this.phase = 'stopping';
    this.inRace = false;
    clearTimeout(this.holdOffTimer);
    this.reconcile('shutdown');
    // A primary's lease is renewed until the application has acted on the demote: letting it
    // lapse earlier would let a successor be promoted while this node's demote hook still runs.
    // (Hook runs are bounded, see hooks.ts, so this ends.) A replica has nothing to hold.
    if (holding) await this.options.settle();
    this.phase = 'releasing';
    clearInterval(this.clockCheck);
    this.wakeLoop();
    await this.loopDone;
    clearTimeout(this.deadlineTimer);
    await this.options.settle();
    const session = this.session;
    this.session = null;
    this.attempt = null;
    this.lease = null;
    if (session) await this.request('close', () => session.close()).catch(() => undefined);
    // A session the deadline ended during the shutdown is released too, before the process exits.
    await this.releasing;
    await this.options.backend.shutdown().catch(() => undefined);
    this.phase = 'stopped';
    this.reconcile('stopped');
  }

  /**
   * The gate's facts changed (src/member.ts): takes them into account now. Resolves once the
   * candidacy is in line with them (withdrawn after the demote hook, or standing).
   */
  reevaluate(reason: string): Promise<void> {
    this.reconcile(reason);
    return this.align();
  }

  /** Writes this node's member record in the current session (see Session.publishMember). */
  publishMember(record: string): Promise<void> {
    return this.withSession('publish member', (session) => session.publishMember(record));
  }

  publishLeaderPosition(record: string): Promise<void> {
    return this.withSession('publish position', (session) => session.publishLeaderPosition(record));
  }

  readCluster(): Promise<ClusterRecords> {
    return this.withSession('read cluster', (session) => session.readCluster());
  }

  private withSession<T>(operation: string, call: (session: Session) => Promise<T>): Promise<T> {
    const session = this.session;
    if (!session) return Promise.reject(new Error('no session with the backend'));
    return this.request(operation, () => call(session));
  }

  private rejoin(): void {
    if (this.phase !== 'running') return;
    this.options.log.info('back in the race');
    this.inRace = true;
    void this.reevaluate('back in the race');
  }

  /** Whether this node stands for leadership now: in the race, and let by the gate. */
  private get campaigning(): boolean {
    return this.standsWith(this.published.leader);
  }

  /** Whether this node stands while `leader` leads (as this node last announced it). */
  private standsWith(leader: Leader | null): boolean {
    const { gate } = this.options;
    if (!this.inRace || this.phase !== 'running') return false;
    return gate ? gate.allows(this.published.role === 'primary', leader) : true;
  }

  /** This session's candidacy leads, and its term is spent. */
  private spent(): boolean {
    const view = this.attempt?.view;
    return view?.isSelf === true && view.leader !== null && view.leader.fencingToken <= this.spentThrough;
  }

  /**
   * Brings the session's candidacy in line with `campaigning`. Campaigns and withdrawals run one
   * at a time, so a withdrawal never overtakes the campaign it undoes: no adapter has to cope
   * with the two interleaving. A candidacy is withdrawn only once the application has acted on
   * the demote, so it has stepped down before a peer can be promoted. A session whose candidacy
   * cannot be changed is dropped (one we could not withdraw would go on leading on our renewals),
   * and the next one starts afresh.
   */
  private align(): Promise<void> {
    this.alignment ??= this.alignLoop().finally(() => {
      this.alignment = null;
    });
    return this.alignment;
  }

  private async alignLoop(): Promise<void> {
    for (;;) {
      const session = this.session;
      if (!session) return;
      const standing = this.standingIn === session;
      let change: 'campaign' | 'withdraw';
      if (standing && (!this.campaigning || this.spent())) {
        // A promoted candidacy is let go only once the demote hook has finished; one that was
        // never promoted (a step-back) has nothing to wait for.
        if (this.promotedIn === session) await this.options.settle();
        if (this.session !== session || (this.campaigning && !this.spent())) continue;
        change = 'withdraw';
      } else if (!standing && this.campaigning) {
        change = 'campaign';
      } else {
        return;
      }
      if (change === 'withdraw') this.withdrawingIn = session;
      try {
        await this.request(change, () => session[change]());
      } catch (error) {
        if (this.session === session) this.dropSession(`${change} failed: ${errorMessage(error)}`);
        return;
      } finally {
        if (this.withdrawingIn === session) this.withdrawingIn = null;
      }
      if (this.session !== session) continue;
      this.standingIn = change === 'campaign' ? session : null;
      if (change === 'withdraw') this.promotedIn = null;
      this.reconcile(change === 'campaign' ? 'campaigned' : 'withdrew');
      // A fresh candidacy is not checked for being spent before a view of it has come in.
      if (change === 'campaign') return;
    }
  }

  /** Asks the gate about the term `token` before it is announced. */
  private confirm(token: number): void {
    const gate = this.options.gate;
    if (this.confirming === token) return;
    if (!gate) {
      this.confirmedToken = token;
      return;
    }
    this.confirming = token;
    // Asked from the next tick: the gate reads the status, and reconcile() is not re-entrant.
    void Promise.resolve()
      .then(() => gate.confirm())
      .catch(() => false)
      .then((ok) => {
        if (this.confirming !== token) return;
        this.confirming = null;
        if (ok && token > this.spentThrough) this.confirmedToken = token;
        else this.stepBack(token);
        void this.reevaluate(ok ? 'confirmed' : 'stepped back');
      });
  }

  /**
   * A candidacy that came first is not promoted: it is spent (withdrawn; a new one, if the gate
   * lets it, goes behind the others), and the gate hears of it. Once per candidacy.
   */
  private stepBack(token: number): void {
    if (token <= this.spentThrough) return;
    this.spentThrough = token;
    this.options.log.info({ fencingToken: token }, 'first in line, but not the member that should lead: stepping back');
    this.options.gate?.steppedBack();
  }

  // The election loop: one step at a time, either opening a session or renewing it.
  private async loop(): Promise<void> {
    while (this.looping) {
      this.lastTickAt = monotonicMs();
      const delay = this.session ? await this.renew(this.session) : await this.open();
      if (!this.looping) break;
      await new Promise<void>((resolve) => {
        this.loopWake = resolve;
        this.loopTimer = setTimeout(resolve, delay);
      });
      this.loopWake = null;
    }
  }

  /** Opens and renews sessions while running; while stopping, only renews the one it has. */
  private get looping(): boolean {
    return this.phase === 'running' || (this.phase === 'stopping' && this.session !== null);
  }

  private wakeLoop(): void {
    clearTimeout(this.loopTimer);
    this.loopWake?.();
  }

  private get retryDelayMs(): number {
    return Math.min(this.options.timing.renewIntervalMs, 1000);
  }

  /** Opens a session; returns how long to wait before the next step. */
  private async open(): Promise<number> {
    const { backend, candidate, election, log, timing } = this.options;
    const attempt: Attempt = { view: NO_VIEW, lost: null };
    const sentAt = now();
    const opening = backend.open({
      election,
      candidate,
      ttlSeconds: timing.ttlMs / 1000,
      requestTimeoutMs: this.requestTimeoutMs,
      log: log.child({ backend: backend.kind }),
      measure: (operation, request) => this.request(operation, request),
      events: {
        view: (view) => {
          attempt.view = view;
          if (this.attempt === attempt) this.reconcile('observed');
        },
        lost: (reason) => {
          attempt.lost ??= reason;
          if (this.attempt === attempt) this.dropSession(`session lost: ${reason.message}`);
        },
      },
    });
    let session: Session;
    try {
      session = await this.request('open', () => opening);
    } catch (error) {
      // A session that opens after we stopped waiting would live on unseen: close it.
      void opening.then((late) => late.close(), () => undefined).catch(() => undefined);
      if (error instanceof BackendConfigError) {
        this.options.fatal(error);
        return this.retryDelayMs;
      }
      this.openFailures.failed({ err: errorMessage(error) });
      this.reconcile('backend unreachable');
      return reopenDelayMs(this.retryDelayMs, this.openFailures.inARow, timing.ttlMs);
    }
    if (this.phase !== 'running') {
      void session.close().catch(() => undefined);
      return 0;
    }
    // Lost while it opened (a ZooKeeper reconnect that renegotiated the timeout, say): unusable.
    if (attempt.lost) {
      void session.close().catch(() => undefined);
      log.warn({ err: attempt.lost.message }, 'the session was lost while it opened; retrying');
      return this.retryDelayMs;
    }
    this.session = session;
    this.attempt = attempt;
    this.lease = new LeaseDeadline(timing.renewDeadlineMs, sentAt);
    this.armDeadlineTimer();
    this.openFailures.recovered();
    log.info('session opened');
    this.emit((l) => l.sessionOpened?.());
    // Not awaited: a withdrawal queued before may wait for a slow demote hook, and this loop
    // must go on renewing meanwhile.
    void this.align();
    this.reconcile('session opened');
    return this.session ? this.untilNextRenewal(sentAt) : this.retryDelayMs;
  }

  /** Renews the session; returns how long to wait before the next step. */
  private async renew(session: Session): Promise<number> {
    if (!this.lease?.isValid()) {
      this.reconcile('lease deadline passed');
      return 0;
    }
    const sentAt = now();
    try {
      await this.request('renew', () => session.renew());
    } catch (error) {
      if (this.session !== session) return 0;
      this.emit((l) => l.renewal?.(false));
      if (error instanceof SessionLostError) {
        this.dropSession(`session lost: ${error.message}`);
        return 0;
      }
      this.renewFailures.failed({ err: errorMessage(error) });
      this.reconcile('renewal failed');
      return this.retryDelayMs;
    }
    if (this.session !== session || !this.lease) return 0;
    this.renewFailures.recovered();
    this.lease.renewed(sentAt);
    this.armDeadlineTimer();
    this.emit((l) => l.renewal?.(true));
    this.reconcile('renewed');
    return this.untilNextRenewal(sentAt);
  }

  /**
   * Ends the term the moment the deadline passes. The safety margin between a node's deadline and
   * the earliest a successor can be granted the lease (DEADLINE_MARGIN_SECONDS in config.ts) is
   * small next to the clock check's period, so the demote hook must not wait for the next check.
   */
  private armDeadlineTimer(): void {
    clearTimeout(this.deadlineTimer);
    const remainingMs = this.lease?.remainingMs();
    if (!remainingMs) return;
    // A timer can fire a little before the deadline by the clocks the lease is measured on: then
    // the lease is still valid, and the timer is armed again for what is left.
    this.deadlineTimer = setTimeout(() => {
      this.reconcile('lease deadline passed');
      this.armDeadlineTimer();
    }, remainingMs + 1);
  }

  /** The next renewal is due one renew interval after the last lease-extending request was sent. */
  private untilNextRenewal(sentAt: Instant): number {
    return Math.max(0, this.options.timing.renewIntervalMs - (now().monotonic - sentAt.monotonic));
  }

  private get requestTimeoutMs(): number {
    return this.options.timing.renewIntervalMs;
  }

  /** Runs one request to the backend with a timeout, and reports its latency. */
  private async request<T>(operation: string, call: () => Promise<T>): Promise<T> {
    const started = monotonicMs();
    let failed = true;
    try {
      const result = await withTimeout(call(), this.requestTimeoutMs, `backend ${operation}`);
      failed = false;
      return result;
    } finally {
      const seconds = (monotonicMs() - started) / 1000;
      this.emit((l) => l.backendRequest?.(operation, seconds, failed));
    }
  }

  /** Ends the current session (its term, if any, with it); the loop opens a new one. */
  private dropSession(noticed: string): void {
    const session = this.session;
    if (!session) return;
    // Whatever brought the news (after a freeze, the backend's word that the session is gone may
    // be read before any timer runs), a deadline that had passed ended the term first.
    const reason = this.lease?.isValid() === false ? 'lease deadline passed' : noticed;
    const lateMs = this.lease?.noticedLateMs;
    this.session = null;
    this.attempt = null;
    this.lease = null;
    this.standingIn = null;
    this.promotedIn = null;
    clearTimeout(this.deadlineTimer);
    this.options.log.warn(
      { reason, ...(reason !== noticed ? { noticed } : {}), ...(lateMs != null ? { lateMs: Math.round(lateMs) } : {}) },
      'session ended',
    );
    this.reconcile(reason);
    // Release only once the application has acted on the demote, as on a clean stop. Nobody
    // renews the lease any more, so it expires meanwhile if releasing takes long.
    const released = this.options
      .settle()
      .then(() => this.request('close', () => session.close()))
      .catch(() => undefined);
    this.releasing = Promise.all([this.releasing, released]).then(() => undefined);
    this.wakeLoop();
  }

  private reconcile(reason: string): void {
    if (this.session && !this.lease?.isValid()) {
      this.dropSession('lease deadline passed');
      return;
    }
    const view = this.attempt?.view ?? NO_VIEW;
    const connected = this.session !== null && this.phase === 'running';
    // With its own candidacy first, nobody else leads: not the leader announced before it.
    const campaigning = view.isSelf ? this.standsWith(null) : this.campaigning;
    let role: Role = connected ? 'replica' : 'unknown';
    let leader = connected ? view.leader : null;
    if (connected && view.isSelf && view.leader) {
      const token = view.leader.fencingToken;
      // First in line, not promoted, and no longer standing: this candidacy is spent, whatever a
      // confirmation still in flight says.
      if (!campaigning && this.confirmedToken !== token) {
        // Refused by the gate (not a resignation or a stop, which are no step-back).
        if (this.inRace && this.phase === 'running') this.stepBack(token);
        else this.spentThrough = Math.max(this.spentThrough, token);
        this.confirming = null;
      }
      if (campaigning && token > this.spentThrough && this.withdrawingIn !== this.session) {
        if (this.confirmedToken !== token) this.confirm(token);
        if (this.confirmedToken === token) role = 'primary';
      }
      // This node's own candidacy, not (or no longer) promoted, leads nothing: it must not tell
      // the application to follow itself.
      if (role !== 'primary') leader = null;
    }
    this.publish(role, leader, connected, reason);
    if (this.session && (this.standingIn === this.session ? !campaigning || this.spent() : campaigning)) void this.align();
  }

  private publish(role: Role, leader: Leader | null, connected: boolean, reason: string): void {
    const before = this.published;
    const termChanged = !sameLeader(before.leader, leader);
    const inRace = this.inRace && this.phase === 'running';
    if (before.role === role && !termChanged && before.connected === connected && before.inRace === inRace) return;

    const since = before.role === role ? before.since : new Date();
    this.published = { role, leader, connected, inRace, since };
    const transitions: Transition[] = [];
    if (before.role === 'primary' && (role !== 'primary' || termChanged)) {
      transitions.push({ event: 'demote', role, leader: before.leader, reason });
    }
    if (leader && !sameLeader(this.lastAnnouncedLeader, leader)) {
      this.lastAnnouncedLeader = leader;
      transitions.push({ event: 'leader-change', role, leader, reason });
    }
    if (role === 'primary' && (before.role !== 'primary' || termChanged)) {
      transitions.push({ event: 'promote', role, leader, reason });
      this.promotedIn = this.session;
    }
    // A term ends once: whatever becomes of its candidacy, it is never promoted again.
    if (before.role === 'primary' && before.leader && (role !== 'primary' || termChanged)) {
      this.spentThrough = Math.max(this.spentThrough, before.leader.fencingToken);
    }

    const status = this.statusSnapshot();
    if (before.role !== role) {
      this.options.log.info(
        { role, previousRole: before.role, leader: leader?.id ?? null, fencingToken: leader?.fencingToken ?? null, reason },
        `role: ${role}`,
      );
    } else if (leader && transitions.some((t) => t.event === 'leader-change')) {
      // The same role under a new leader (a replica's usual failover): the role line above is not written.
      this.options.log.info({ role, leader: leader.id, fencingToken: leader.fencingToken, reason }, `leader: ${leader.id}`);
    }
    for (const transition of transitions) this.emit((l) => l.transition?.(transition, status));
    this.emit((l) => l.change?.(status));
  }

  private statusSnapshot(): Status {
    return {
      role: this.published.role,
      leader: this.published.leader,
      since: this.published.since,
      connected: this.published.connected,
      alive: this.phase === 'running' && monotonicMs() - this.lastTickAt < this.options.timing.ttlMs,
      leaseRemainingMs: this.lease?.remainingMs() ?? 0,
      inRace: this.inRace && this.phase === 'running',
    };
  }

  private emit(call: (listener: ElectorListener) => void): void {
    for (const listener of this.listeners) {
      try {
        call(listener);
      } catch (error) {
        this.options.log.error({ err: errorMessage(error) }, 'listener failed');
      }
    }
  }
}

function sameLeader(a: Leader | null, b: Leader | null): boolean {
  return a?.id === b?.id && a?.fencingToken === b?.fencingToken;
}

/**
 * An error's message, followed by its causes': fetch's "fetch failed" alone hides whether the
 * connection was refused, reset or timed out (".. fetch failed: connect ECONNREFUSED 127.0.0.1:8500").
 */
export function errorMessage(error: unknown): string {
  if (!(error instanceof Error)) return String(error);
  let message = error.message;
  let cause: unknown = error.cause;
  for (let depth = 0; cause !== undefined && cause !== null && depth < 3; depth++) {
    const text = cause instanceof Error ? cause.message : String(cause);
    if (text && !message.includes(text)) message += `: ${text}`;
    cause = cause instanceof Error ? cause.cause : undefined;
  }
  return message;
}

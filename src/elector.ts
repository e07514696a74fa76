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
 * A term that ends for any reason ends the session with it; the next term needs a new session
 * and a new candidacy, hence a strictly larger fencing token.
 *
 * Role changes are derived, never stored: `reconcile()` computes (role, leader) from the facts
 * above, compares them with what was last published, and announces the differences in a fixed
 * order: demote, then leader-change, then promote.
 */
import type { Backend, Candidate, Leader, Session, View } from './backend.js';
import { NO_VIEW, SessionLostError, BackendConfigError } from './backend.js';
import { monotonicMs, withTimeout } from './clock.js';
import { LeaseDeadline, now, type Instant } from './lease.js';
import type { Logger } from './log.js';

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
  since: Date;
}

export class Elector {
  private phase: Phase = 'running';
  private session: Session | null = null;
  private attempt: Attempt | null = null;
  private lease: LeaseDeadline | null = null;
  private campaigning = true;
  private lastTickAt = monotonicMs();
  private lastAnnouncedLeader: Leader | null = null;
  private published: Published = { role: 'unknown', leader: null, connected: false, since: new Date() };
  private readonly listeners: ElectorListener[] = [];
  private resignations = 0;
  private candidacy: Promise<void> = Promise.resolve();
  private loopTimer: NodeJS.Timeout | undefined;
  private clockCheck: NodeJS.Timeout | undefined;
  private holdOffTimer: NodeJS.Timeout | undefined;
  private deadlineTimer: NodeJS.Timeout | undefined;
  private loopWake: (() => void) | null = null;
  private loopDone: Promise<void> = Promise.resolve();
  /** Ended sessions still being released (once the hooks have settled); a shutdown waits for them. */
  private releasing: Promise<void> = Promise.resolve();

  constructor(private readonly options: ElectorOptions) {}

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
    this.campaigning = false;
    clearTimeout(this.holdOffTimer);
    this.reconcile(reason);
    this.options.log.info({ holdOffSeconds: holdOffMs / 1000, reason }, 'resigned: out of the race');
    await this.options.settle();
    const session = this.session;
    if (session) {
      await this.changeCandidacy('withdraw', session).catch((error: unknown) => {
        // A candidacy we could not withdraw would go on leading on our renewals: end the session.
        if (this.session === session) this.dropSession(`withdraw failed: ${errorMessage(error)}`);
      });
    }
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
    const wasPrimary = this.published.role === 'primary';
    this.phase = 'stopping';
    this.campaigning = false;
    clearTimeout(this.holdOffTimer);
    this.reconcile('shutdown');
    // A primary's lease is renewed until the application has acted on the demote: letting it
    // lapse earlier would let a successor be promoted while this node's demote hook still runs.
    // (Hook runs are bounded, see hooks.ts, so this ends.) A replica has nothing to hold.
    if (wasPrimary) await this.options.settle();
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

  private rejoin(): void {
    if (this.phase !== 'running') return;
    this.options.log.info('back in the race');
    this.campaigning = true;
    if (this.session) void this.campaign(this.session);
  }

  /** Joins the race; a session that cannot campaign is dropped, and the next one campaigns. */
  private campaign(session: Session): Promise<void> {
    return this.changeCandidacy('campaign', session).catch((error: unknown) => {
      if (this.session === session) this.dropSession(`campaign failed: ${errorMessage(error)}`);
    });
  }

  /**
   * Campaigns and withdrawals run one at a time and in the order asked, so a withdrawal never
   * overtakes the campaign it undoes: no adapter has to cope with the two interleaving.
   */
  private changeCandidacy(change: 'campaign' | 'withdraw', session: Session): Promise<void> {
    const next = this.candidacy.then(() => this.request(change, () => session[change]()));
    this.candidacy = next.catch(() => undefined);
    return next;
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
      log.warn({ err: errorMessage(error) }, 'cannot open a session; retrying');
      this.reconcile('backend unreachable');
      return this.retryDelayMs;
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
    log.info('session opened');
    if (this.campaigning) await this.campaign(session);
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
      this.options.log.warn({ err: errorMessage(error) }, 'lease renewal failed');
      this.reconcile('renewal failed');
      return this.retryDelayMs;
    }
    if (this.session !== session || !this.lease) return 0;
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
  private dropSession(reason: string): void {
    const session = this.session;
    if (!session) return;
    const lateMs = this.lease?.noticedLateMs;
    this.session = null;
    this.attempt = null;
    this.lease = null;
    clearTimeout(this.deadlineTimer);
    this.options.log.warn({ reason, ...(lateMs != null ? { lateMs: Math.round(lateMs) } : {}) }, 'session ended');
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
    const role: Role = !connected ? 'unknown' : view.isSelf && this.campaigning ? 'primary' : 'replica';
    const leader = connected ? view.leader : null;
    this.publish(role, leader, connected, reason);
  }

  private publish(role: Role, leader: Leader | null, connected: boolean, reason: string): void {
    const before = this.published;
    const termChanged = !sameLeader(before.leader, leader);
    if (before.role === role && !termChanged && before.connected === connected) return;

    const since = before.role === role ? before.since : new Date();
    this.published = { role, leader, connected, since };
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
    }

    const status = this.statusSnapshot();
    if (before.role !== role) {
      this.options.log.info(
        { role, previousRole: before.role, leader: leader?.id ?? null, fencingToken: leader?.fencingToken ?? null, reason },
        `role: ${role}`,
      );
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

export function errorMessage(error: unknown): string {
  return error instanceof Error ? error.message : String(error);
}

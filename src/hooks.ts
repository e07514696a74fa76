/**
 * Failover hooks: how the application learns it must promote itself, step down, or follow a
 * new primary.
 *
 * Hooks run one at a time, in the order the elector announced the transitions. A promote is
 * started only if the term it was announced for is still this node's at that moment (the
 * elector re-checks its lease deadline); a demote announced while a promote is still running
 * cuts the promote short, since the node no longer holds the lease it was promoting on. Demote
 * needs nothing from the backend, so it runs even when the backend is gone.
 *
 * An event goes to each of its targets in turn, the command and then the URL. A demote or a
 * leader-change is news every target must hear, so each runs whatever the others did. A promote
 * stops at its first failed target: the rest of the application must not act on a promotion that
 * did not happen.
 *
 * A failed leader-change is run again, 1 s, 2 s, 4 s, ... at most a minute apart, until it succeeds
 * or newer news comes (any transition): a replica that could not follow its new primary once (the
 * primary still starting, a copy that failed half way) would otherwise stay behind until the
 * next change of leader, which may be weeks away. A failed promote is the elector's to handle (it
 * resigns); a failed demote is not run again, since its term is over and a successor may lead by
 * the time a retry came.
 */
import type { Transition, TransitionEvent } from './elector.js';
import { errorMessage } from './elector.js';
import type { Logger } from './log.js';
import { inheritedEnvironment, runCommand } from './command.js';
import { backoffMs } from './backoff.js';

/** What a hook is told, as environment variables (exec) or as a JSON body (HTTP). */
export interface HookFacts {
  readonly event: TransitionEvent;
  readonly election: string;
  readonly id: string;
  readonly role: string;
  readonly leader: { readonly id: string; readonly address: string } | null;
  readonly fencingToken: number | null;
}

export interface HookListener {
  hookRun?(event: TransitionEvent, seconds: number, failed: boolean): void;
}

export interface HookOptions {
  readonly election: string;
  readonly id: string;
  /** argv per event, run without a shell. */
  readonly exec: Partial<Record<TransitionEvent, readonly string[]>>;
  readonly url: string | null;
  readonly timeoutMs: number;
  readonly log: Logger;
  /** Asked right before a promote starts. */
  readonly holdsTerm: (fencingToken: number) => boolean;
  /** A promote failed or timed out. */
  readonly promoteFailed: (reason: string) => void;
  readonly listener?: HookListener;
}

/** Grace between SIGTERM and SIGKILL for an exec hook that overran. */
const KILL_GRACE_MS = 5000;
/** A failed leader-change hook runs again after 1 s, then twice as long each time, at most a minute. */
const FIRST_RETRY_MS = 1000;
const MAX_RETRY_MS = 60_000;

type HookTarget = 'command' | 'url';

export class HookRunner {
  private readonly queue: Transition[] = [];
  private running: { event: TransitionEvent; abort: AbortController; retry: boolean } | null = null;
  private drained: Promise<void> = Promise.resolve();
  private draining = false;
  private readonly http: HttpTarget | null;
  /** The failed leader-change waiting to run again, and how many times in a row it has failed. */
  private retry: { timer: NodeJS.Timeout | undefined; failures: number } = { timer: undefined, failures: 0 };
  /** A failed leader-change put back in the queue by its timer, until it has run. */
  private retried: Transition | null = null;
  private retrying = true;

  constructor(private readonly options: HookOptions) {
    this.http = options.url === null ? null : httpTarget(options.url);
  }

  enqueue(transition: Transition): void {
    if (transition.event === 'demote' && this.running?.event === 'promote') {
      this.options.log.warn('demoting while the promote hook runs: cutting it short');
      this.running.abort.abort();
    }
    // Newer news: a leader-change running again is out of date, and must not hold it up.
    this.dropRetry('newer news');
    this.retry = { timer: undefined, failures: 0 };
    this.push(transition);
  }

  /** No failed leader-change runs again from now on (leaderd is shutting down). */
  stopRetrying(): void {
    this.retrying = false;
    this.dropRetry('shutting down');
  }

  /**
   * Forgets the failed leader-change waiting to run again, whether its timer has yet to fire or it
   * waits in the queue; one already running again is killed at once (a hook may be killed at any
   * time: its timeout does the same), so that the news behind it is not held up.
   */
  private dropRetry(why: string): void {
    clearTimeout(this.retry.timer);
    if (this.running?.retry && !this.running.abort.signal.aborted) {
      this.options.log.warn({ hook: this.running.event, reason: why }, 'cutting the leader-change hook run again short');
      this.running.abort.abort();
    }
    const queued = this.retried;
    this.retried = null;
    if (queued) this.queue.splice(0, this.queue.length, ...this.queue.filter((t) => t !== queued));
  }

  private push(transition: Transition): void {
    this.queue.push(transition);
    if (!this.draining) this.drained = this.drain();
  }

  /** Runs a failed leader-change again later, unless newer news is already waiting. */
  private retryLater(transition: Transition): void {
    if (!this.retrying || this.queue.length > 0) return;
    const failures = this.retry.failures + 1;
    const delayMs = backoffMs(FIRST_RETRY_MS, failures, MAX_RETRY_MS);
    this.options.log.warn(
      { hook: transition.event, failuresInARow: failures, retryInSeconds: delayMs / 1000, leader: transition.leader?.id ?? null },
      'the leader-change hook failed: running it again later',
    );
    const timer = setTimeout(() => {
      this.retried = transition;
      this.push(transition);
    }, delayMs);
    this.retry = { timer, failures };
  }

  /** Resolves when every transition enqueued so far has been handled. */
  idle(): Promise<void> {
    return this.drained;
  }

  private async drain(): Promise<void> {
    this.draining = true;
    let next: Transition | undefined;
    try {
      while ((next = this.queue.shift())) await this.handle(next);
    } finally {
      this.draining = false;
    }
  }

  private async handle(transition: Transition): Promise<void> {
    const { event, leader } = transition;
    const argv = this.options.exec[event];
    const http = this.http;
    if (!argv && !http) return;
    if (event === 'promote' && !(leader && this.options.holdsTerm(leader.fencingToken))) {
      this.options.log.warn({ fencingToken: leader?.fencingToken }, 'promote hook not started: the term is already over');
      return;
    }
    const facts = this.facts(transition);
    const abort = new AbortController();
    const targets: Array<[HookTarget, () => Promise<void>]> = [];
    if (argv) targets.push(['command', () => this.runExec(argv, facts, abort.signal)]);
    if (http) targets.push(['url', () => this.runHttp(http, facts, abort.signal)]);
    const retry = transition === this.retried;
    if (retry) this.retried = null;
    this.running = { event, abort, retry };
    const started = performance.now();
    let failure: string | null = null;
    for (const [target, run] of targets) {
      try {
        await run();
      } catch (error) {
        const err = errorMessage(error);
        failure ??= err;
        this.options.log.error({ hook: event, target, fencingToken: facts.fencingToken, err }, 'hook failed');
        // See the top of this file: only a promote stops at a failed target.
        if (event === 'promote') break;
      }
    }
    this.running = null;
    const seconds = (performance.now() - started) / 1000;
    // One run per event, failed if any of its targets failed.
    this.options.listener?.hookRun?.(event, seconds, failure !== null);
    if (failure === null) {
      this.options.log.info({ hook: event, fencingToken: facts.fencingToken, seconds: Math.round(seconds * 1000) / 1000 }, 'hook succeeded');
      this.retry.failures = 0;
      return;
    }
    if (event === 'promote' && !abort.signal.aborted) this.options.promoteFailed(`promote hook failed: ${failure}`);
    if (event === 'leader-change') this.retryLater(transition);
  }

  private facts({ event, role, leader }: Transition): HookFacts {
    return {
      event,
      election: this.options.election,
      id: this.options.id,
      role,
      leader: leader ? { id: leader.id, address: leader.address } : null,
      fencingToken: leader?.fencingToken ?? null,
    };
  }

  private runExec(argv: readonly string[], facts: HookFacts, cancel: AbortSignal): Promise<void> {
    const log = this.options.log.child({ hook: facts.event, command: argv[0] });
    return runCommand(argv, {
      env: { ...inheritedEnvironment(), ...hookEnvironment(facts) },
      timeoutMs: this.options.timeoutMs,
      killGraceMs: KILL_GRACE_MS,
      // Cancelled: a promote whose term has ended. It must not go on acting, and the demote
      // waiting behind it must start now, not after a grace period: killed at once.
      cancel,
      line: (stream, line) => log.info({ stream, line }, 'hook output'),
    });
  }

  private async runHttp(target: HttpTarget, facts: HookFacts, cancel: AbortSignal): Promise<void> {
    const signal = AbortSignal.any([cancel, AbortSignal.timeout(this.options.timeoutMs)]);
    const headers: Record<string, string> = { 'content-type': 'application/json' };
    if (target.authorization) headers.authorization = target.authorization;
    let response: Response;
    try {
      response = await fetch(target.url, { method: 'POST', headers, body: JSON.stringify(facts), signal });
      await response.arrayBuffer();
    } catch (error) {
      if (cancel.aborted) throw new Error('cancelled');
      if (signal.aborted) throw new Error(`timed out after ${this.options.timeoutMs / 1000} s`);
      // fetch's own messages (and their causes, which say why: "fetch failed" alone does not) may
      // quote the URL: scrub them.
      throw new Error(`POST ${target.shown}: ${target.scrub(errorMessage(error))}`);
    }
    if (!response.ok) throw new Error(`POST ${target.shown} answered ${response.status}`);
  }
}

/** Where the HTTP hook posts, and what of it must never reach a log. */
interface HttpTarget {
  /** The URL without its credentials: fetch refuses URLs that carry any. */
  readonly url: string;
  /** `Basic …` from the URL's credentials, or null without any. */
  readonly authorization: string | null;
  /** The URL as logs show it. */
  readonly shown: string;
  /** Removes every form of the URL and its credentials from a message. */
  scrub(message: string): string;
}

function httpTarget(raw: string): HttpTarget {
  const url = new URL(raw);
  const { username, password, search } = url;
  const userinfo = username || password ? `${username}:${password}` : '';
  const credentials = userinfo && `${decodeUserinfo(username)}:${decodeUserinfo(password)}`;
  const token = credentials && Buffer.from(credentials, 'utf8').toString('base64');
  const withCredentials = url.href;
  url.username = url.password = '';
  const shown = redactUrl(url.href);
  // Longest first, so a whole URL is replaced before any part of it.
  const secrets: Array<[string, string]> = [
    [raw, shown],
    [withCredentials, shown],
    [url.href, shown],
    [token, '***'],
    [userinfo, '***'],
    [credentials, '***'],
    [username, '***'],
    [decodeUserinfo(username), '***'],
    [password, '***'],
    [decodeUserinfo(password), '***'],
    // Logs never show the query either (see redactUrl): it may carry a token.
    [search, '?…'],
  ];
  const scrubbed = secrets.filter(([secret]) => secret !== '').sort(([a], [b]) => b.length - a.length);
  return {
    url: url.href,
    authorization: token ? `Basic ${token}` : null,
    shown,
    scrub: (message) => scrubbed.reduce((text, [secret, replacement]) => text.replaceAll(secret, replacement), message),
  };
}

/** A URL's percent-encoded user or password as the user meant it; a stray "%" is taken literally. */
function decodeUserinfo(encoded: string): string {
  try {
    return decodeURIComponent(encoded);
  } catch {
    return encoded;
  }
}

export function hookEnvironment(facts: HookFacts): Record<string, string> {
  return {
    LEADERD_EVENT: facts.event,
    LEADERD_ELECTION: facts.election,
    LEADERD_ID: facts.id,
    LEADERD_ROLE: facts.role,
    LEADERD_LEADER_ID: facts.leader?.id ?? '',
    LEADERD_LEADER_ADDRESS: facts.leader?.address ?? '',
    LEADERD_FENCING_TOKEN: facts.fencingToken === null ? '' : String(facts.fencingToken),
  };
}

/** A URL without credentials or query, for logs. */
export function redactUrl(raw: string): string {
  try {
    const url = new URL(raw);
    if (url.username || url.password) url.username = url.password = '***';
    // Appended, not set: URL would percent-encode the ellipsis.
    const query = url.search ? '?…' : '';
    url.search = url.hash = '';
    return `${url.toString()}${query}`;
  } catch {
    return '<invalid url>';
  }
}

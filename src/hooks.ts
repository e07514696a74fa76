/**
 * Failover hooks: how the application learns it must promote itself, step down, or follow a
 * new primary.
 *
 * Hooks run one at a time, in the order the elector announced the transitions. A promote is
 * started only if the term it was announced for is still this node's at that moment (the
 * elector re-checks its lease deadline); a demote announced while a promote is still running
 * cuts the promote short, since the node no longer holds the lease it was promoting on. Demote
 * needs nothing from the backend, so it runs even when the backend is gone.
 */
import { spawn } from 'node:child_process';
import { createInterface } from 'node:readline';
import type { Transition, TransitionEvent } from './elector.js';
import { errorMessage } from './elector.js';
import type { Logger } from './log.js';

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

/** Grace between SIGTERM and SIGKILL for an exec hook that overran or was cut short. */
const KILL_GRACE_MS = 5000;
/** How long output is still read after a hook exited, from pipes something else holds open. */
const OUTPUT_DRAIN_MS = 200;

export class HookRunner {
  private readonly queue: Transition[] = [];
  private running: { event: TransitionEvent; abort: AbortController } | null = null;
  private drained: Promise<void> = Promise.resolve();
  private draining = false;

  constructor(private readonly options: HookOptions) {}

  enqueue(transition: Transition): void {
    if (transition.event === 'demote' && this.running?.event === 'promote') {
      this.options.log.warn('demoting while the promote hook runs: cutting it short');
      this.running.abort.abort();
    }
    this.queue.push(transition);
    if (!this.draining) this.drained = this.drain();
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
    const hasHook = this.options.exec[event] !== undefined || this.options.url !== null;
    if (!hasHook) return;
    if (event === 'promote' && !(leader && this.options.holdsTerm(leader.fencingToken))) {
      this.options.log.warn({ fencingToken: leader?.fencingToken }, 'promote hook not started: the term is already over');
      return;
    }
    const facts = this.facts(transition);
    const abort = new AbortController();
    this.running = { event, abort };
    const started = performance.now();
    let failure: string | null = null;
    try {
      const argv = this.options.exec[event];
      if (argv) await this.runExec(argv, facts, abort.signal);
      if (this.options.url) await this.runHttp(this.options.url, facts, abort.signal);
    } catch (error) {
      failure = errorMessage(error);
    } finally {
      this.running = null;
    }
    const seconds = (performance.now() - started) / 1000;
    this.options.listener?.hookRun?.(event, seconds, failure !== null);
    if (failure === null) {
      this.options.log.info({ hook: event, fencingToken: facts.fencingToken, seconds }, 'hook succeeded');
      return;
    }
    this.options.log.error({ hook: event, fencingToken: facts.fencingToken, err: failure }, 'hook failed');
    if (event === 'promote' && !abort.signal.aborted) this.options.promoteFailed(`promote hook failed: ${failure}`);
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
    const [command, ...args] = argv as [string, ...string[]];
    const log = this.options.log.child({ hook: facts.event, command });
    return new Promise((resolve, reject) => {
      const child = spawn(command, args, {
        env: { ...process.env, ...hookEnvironment(facts) },
        stdio: ['ignore', 'pipe', 'pipe'],
        // Its own process group, so a timeout stops everything the hook started.
        detached: true,
      });
      for (const stream of ['stdout', 'stderr'] as const) {
        createInterface({ input: child[stream] }).on('line', (line) => log.info({ stream, line }, 'hook output'));
      }
      let stopReason: string | null = null;
      let killTimer: NodeJS.Timeout | undefined;
      const stop = (why: string) => {
        if (stopReason !== null) return;
        stopReason = why;
        signalGroup(child.pid, 'SIGTERM');
        killTimer = setTimeout(() => signalGroup(child.pid, 'SIGKILL'), Math.min(KILL_GRACE_MS, this.options.timeoutMs));
      };
      const timeout = setTimeout(() => stop(`timed out after ${this.options.timeoutMs / 1000} s`), this.options.timeoutMs);
      const onCancel = () => stop('cancelled');
      cancel.addEventListener('abort', onCancel, { once: true });
      child.once('error', (error) => finish(`cannot run ${command}: ${error.message}`));
      // The hook is done when its process exits. Its output pipes may stay open for longer, held by
      // something it started in the background: read what is left for a moment, then let go.
      child.once('exit', (code, signal) => {
        const outcome = stopReason ?? (code === 0 ? null : signal ? `killed by ${signal}` : `exited with status ${code}`);
        const drained = setTimeout(() => {
          child.stdout?.destroy();
          child.stderr?.destroy();
          finish(outcome);
        }, OUTPUT_DRAIN_MS);
        child.once('close', () => {
          clearTimeout(drained);
          finish(outcome);
        });
      });
      let finished = false;
      function finish(failure: string | null): void {
        if (finished) return;
        finished = true;
        clearTimeout(timeout);
        clearTimeout(killTimer);
        cancel.removeEventListener('abort', onCancel);
        if (failure === null) resolve();
        else reject(new Error(failure));
      }
    });
  }

  private async runHttp(url: string, facts: HookFacts, cancel: AbortSignal): Promise<void> {
    const signal = AbortSignal.any([cancel, AbortSignal.timeout(this.options.timeoutMs)]);
    let response: Response;
    try {
      response = await fetch(url, {
        method: 'POST',
        headers: { 'content-type': 'application/json' },
        body: JSON.stringify(facts),
        signal,
      });
      await response.arrayBuffer();
    } catch (error) {
      if (cancel.aborted) throw new Error('cancelled');
      if (signal.aborted) throw new Error(`timed out after ${this.options.timeoutMs / 1000} s`);
      throw new Error(`POST ${redactUrl(url)}: ${errorMessage(error)}`);
    }
    if (!response.ok) throw new Error(`POST ${redactUrl(url)} answered ${response.status}`);
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

/** A URL without credentials, for logs. */
export function redactUrl(raw: string): string {
  try {
    const url = new URL(raw);
    if (url.username || url.password) url.username = url.password = '***';
    url.search = url.search ? '?…' : '';
    return url.toString();
  } catch {
    return '<invalid url>';
  }
}

function signalGroup(pid: number | undefined, signal: NodeJS.Signals): void {
  if (pid === undefined) return;
  try {
    process.kill(-pid, signal);
  } catch {
    // already gone
  }
}

/**
 * Runs a command the user configured (a hook, the check): without a shell, in a process group of
 * its own, bounded in time. A command stopped at its timeout or cancelled is over only once its
 * whole group is: something it started may ignore SIGTERM and outlive it, and must not survive
 * into the next term or past leaderd (see process-group.ts).
 */
import { spawn } from 'node:child_process';
import { createInterface } from 'node:readline';
import { stopGroup, type GroupStop } from './process-group.js';

export interface CommandOptions {
  readonly env: NodeJS.ProcessEnv;
  readonly timeoutMs: number;
  /** Grace between SIGTERM and SIGKILL when the timeout stops the command. */
  readonly killGraceMs: number;
  /** Stops the command at once (no grace). */
  readonly cancel?: AbortSignal;
  /** Each line the command writes, as it comes. */
  readonly line: (stream: 'stdout' | 'stderr', line: string) => void;
}

/** How long output is still read after a command exited, from pipes something else holds open. */
const OUTPUT_DRAIN_MS = 200;

/** Resolves when the command succeeded (exit 0); rejects with the reason it did not. */
export function runCommand(argv: readonly string[], options: CommandOptions): Promise<void> {
  const [command, ...args] = argv as [string, ...string[]];
  const { cancel, timeoutMs } = options;
  return new Promise((resolve, reject) => {
    const child = spawn(command, args, { env: options.env, stdio: ['ignore', 'pipe', 'pipe'], detached: true });
    for (const stream of ['stdout', 'stderr'] as const) {
      createInterface({ input: child[stream] }).on('line', (line) => options.line(stream, line));
    }
    let stopReason: string | null = null;
    let stopping: GroupStop | null = null;
    const stop = (why: string, graceMs: number) => {
      if (stopping) {
        // Already stopping on a timeout, now cancelled too: no more grace.
        if (graceMs === 0) stopping.killNow();
        return;
      }
      stopReason = why;
      if (child.pid === undefined) return;
      stopping = stopGroup(child.pid, graceMs);
      // Over once the group is, even if the command's own exit is never reported (stopGroup).
      void stopping.done.then(() => finish(stopReason));
    };
    const timeout = setTimeout(() => stop(`timed out after ${timeoutMs / 1000} s`, Math.min(options.killGraceMs, timeoutMs)), timeoutMs);
    const onCancel = () => stop('cancelled', 0);
    cancel?.addEventListener('abort', onCancel, { once: true });
    child.once('error', (error) => finish(`cannot run ${command}: ${error.message}`));
    // The command is done when its process exits. Its output pipes may stay open for longer, held
    // by something it started in the background: read what is left for a moment, then let go. A
    // command that exited by itself is not stopped any more: what it left running in the
    // background (a daemon it started, say) is the application's.
    child.once('exit', (code, signal) => {
      clearTimeout(timeout);
      cancel?.removeEventListener('abort', onCancel);
      const outcome = stopReason ?? (code === 0 ? null : signal ? `killed by ${signal}` : `exited with status ${code}`);
      const output = new Promise<void>((done) => {
        const drained = setTimeout(() => {
          child.stdout?.destroy();
          child.stderr?.destroy();
          done();
        }, OUTPUT_DRAIN_MS);
        child.once('close', () => {
          clearTimeout(drained);
          done();
        });
      });
      void Promise.all([output, stopping?.done]).then(() => finish(outcome));
    });
    let finished = false;
    function finish(failure: string | null): void {
      if (finished) return;
      finished = true;
      clearTimeout(timeout);
      cancel?.removeEventListener('abort', onCancel);
      if (failure === null) resolve();
      else reject(new Error(failure));
    }
  });
}

/**
 * leaderd's environment without its own settings (LEADERD_*): some are secrets (the admin token,
 * the Consul token, ZooKeeper credentials, a hook URL's credentials), and a command that prints
 * its environment would put them in the log. A command's LEADERD_* variables are the facts it is
 * told.
 */
export function inheritedEnvironment(): NodeJS.ProcessEnv {
  return Object.fromEntries(Object.entries(process.env).filter(([name]) => !name.startsWith('LEADERD_')));
}

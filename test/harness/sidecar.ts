/**
 * A leaderd sidecar as users run it: a separate process, real HTTP, real signals. Waiting is done
 * on events the sidecar emits (its /watch stream, its log lines, its exit), never by sleeping.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { writeFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { createInterface } from 'node:readline';
import { EventSourceParserStream } from 'eventsource-parser/stream';

export const BIN = fileURLToPath(new URL('../../bin/leaderd.js', import.meta.url));

export interface RoleBody {
  election: string;
  id: string;
  role: 'primary' | 'replica' | 'unknown';
  leader: { id: string; address: string } | null;
  fencingToken: number | null;
  since: string;
  ttlSeconds: number;
  backend: { kind: string; connected: boolean };
  healthy: boolean;
  eligible: boolean;
  priority: number;
  position: number | string | null;
  lag: number | string | null;
}

export interface LogLine {
  level: 'fatal' | 'error' | 'warn' | 'info' | 'debug' | 'trace';
  msg: string;
  [key: string]: unknown;
}

export interface Exit {
  code: number | null;
  signal: NodeJS.Signals | null;
}

const running = new Set<Sidecar>();
/**
 * Every sidecar started since the killAll() before the last start, stopped ones too: whose logs a
 * failed test shows (after its teardown has killed them).
 */
let started: Sidecar[] = [];
let killedAll = false;

export class Sidecar {
  readonly logs: LogLine[] = [];
  stderr = '';
  readonly exited: Promise<Exit>;
  private logWaiters: Array<() => void> = [];

  private constructor(
    readonly id: string,
    readonly child: ChildProcess,
    readonly url: string,
    logs: LogLine[],
    exited: Promise<Exit>,
  ) {
    this.logs = logs;
    this.exited = exited;
  }

  /**
   * Starts `leaderd ARGS --id ID --http 127.0.0.1:0` and resolves once it listens (where `env`
   * names LEADERD_HTTP, there, and without the flag, which would win over it). `command`: how
   * leaderd is started (the clone's bin under this Node by default, an installed bin for the package).
   */
  static async start(
    id: string,
    args: readonly string[],
    env: NodeJS.ProcessEnv = {},
    command: readonly [string, ...string[]] = [process.execPath, BIN],
  ): Promise<Sidecar> {
    const [file, ...before] = command;
    const http = env.LEADERD_HTTP === undefined ? ['--http', '127.0.0.1:0'] : [];
    const child = spawn(file, [...before, '--id', id, ...http, ...args], {
      env: { ...process.env, ...env },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    const logs: LogLine[] = [];
    let sidecar: Sidecar | undefined;
    let stderr = '';
    child.stderr!.on('data', (chunk) => {
      stderr += chunk;
      if (sidecar) sidecar.stderr = stderr;
    });
    const exited = new Promise<Exit>((resolve) => child.once('exit', (code, signal) => resolve({ code, signal })));
    const url = await new Promise<string>((resolve, reject) => {
      createInterface({ input: child.stdout! }).on('line', (text) => {
        let line: LogLine;
        try {
          line = JSON.parse(text) as LogLine;
        } catch {
          line = { level: 'info', msg: `(not JSON) ${text}` };
        }
        logs.push(line);
        if (line.msg === 'leaderd started') resolve(`http://${line.http as string}`);
        sidecar?.notifyLog();
      });
      void exited.then(({ code }) => reject(new Error(`leaderd ${id} exited with ${code} before listening: ${stderr}`)));
    });
    sidecar = new Sidecar(id, child, url, logs, exited);
    sidecar.stderr = stderr;
    running.add(sidecar);
    if (killedAll) started = [];
    killedAll = false;
    started.push(sidecar);
    void exited.then(() => running.delete(sidecar!));
    return sidecar;
  }

  /** Kills every sidecar still running (test teardown). */
  static async killAll(): Promise<void> {
    killedAll = true;
    const all = [...running];
    for (const sidecar of all) sidecar.child.kill('SIGKILL');
    await Promise.all(all.map((s) => s.exited));
  }

  /** Writes the logs of the sidecars of the last test (see `started`) to `file`; returns it. */
  static dumpLogs(file: string): string {
    writeFileSync(file, started.map((s) => `--- ${s.id}\n${s.logs.map((l) => JSON.stringify(l)).join('\n')}\n`).join(''));
    return file;
  }

  get pid(): number {
    return this.child.pid!;
  }

  signal(signal: NodeJS.Signals): void {
    this.child.kill(signal);
  }

  fetch(path: string, init?: RequestInit): Promise<Response> {
    return fetch(`${this.url}${path}`, { ...init, signal: init?.signal ?? AbortSignal.timeout(10000) });
  }

  async role(): Promise<RoleBody> {
    return (await (await this.fetch('/role')).json()) as RoleBody;
  }

  /** Resolves with the first state from /watch (the current one, then every change) that matches. */
  async waitForState(
    matches: (state: RoleBody) => boolean,
    timeoutMs: number,
    what = 'state',
    cancel?: AbortSignal,
  ): Promise<RoleBody> {
    const abort = new AbortController();
    const timer = setTimeout(() => abort.abort(), timeoutMs);
    cancel?.addEventListener('abort', () => abort.abort(), { once: true });
    let last: RoleBody | undefined;
    try {
      const response = await fetch(`${this.url}/watch`, { signal: abort.signal });
      const events = response.body!.pipeThrough(new TextDecoderStream()).pipeThrough(new EventSourceParserStream());
      for await (const event of events) {
        last = JSON.parse(event.data) as RoleBody;
        if (matches(last)) return last;
      }
      throw new Error('stream ended');
    } catch (error) {
      throw new Error(`${this.id}: no ${what} within ${timeoutMs} ms (last: ${JSON.stringify(last)}): ${String(error)}`);
    } finally {
      clearTimeout(timer);
      abort.abort();
    }
  }

  waitForRole(role: RoleBody['role'], timeoutMs: number, cancel?: AbortSignal): Promise<RoleBody> {
    return this.waitForState((s) => s.role === role, timeoutMs, `role ${role}`, cancel);
  }

  /** Resolves with the `count`-th log line (already written or to come) that matches. */
  waitForLog(matches: (line: LogLine) => boolean, timeoutMs: number, what = 'log line', count = 1): Promise<LogLine> {
    return new Promise((resolve, reject) => {
      const check = () => {
        const line = this.logs.filter(matches)[count - 1];
        if (!line) return false;
        done();
        resolve(line);
        return true;
      };
      const timer = setTimeout(() => {
        done();
        reject(new Error(`${this.id}: no ${what} within ${timeoutMs} ms`));
      }, timeoutMs);
      const done = () => {
        clearTimeout(timer);
        this.logWaiters = this.logWaiters.filter((w) => w !== waiter);
      };
      const waiter = () => void check();
      if (!check()) this.logWaiters.push(waiter);
    });
  }

  /** SIGTERM, then the exit. */
  async stop(): Promise<Exit> {
    this.signal('SIGTERM');
    return this.exited;
  }

  private notifyLog(): void {
    for (const waiter of [...this.logWaiters]) waiter();
  }
}

/** Runs leaderd to completion (for --help, bad configuration, ...). */
export function runLeaderd(args: readonly string[], env: NodeJS.ProcessEnv = {}): Promise<{ code: number | null; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    const child = spawn(process.execPath, [BIN, ...args], { env: { ...process.env, ...env }, stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (c) => (stdout += c));
    child.stderr.on('data', (c) => (stderr += c));
    child.once('exit', (code) => resolve({ code, stdout, stderr }));
  });
}

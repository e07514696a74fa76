/**
 * The things the benchmark elects: leaderd sidecars and the peer tools (`etcdctl elect`,
 * `consul lock`), each wrapped as a Contender that says when it became the leader. Every
 * contender announces that the same way where it can: its promote hook (leaderd) or its child
 * command (consul lock) opens a TCP connection to the benchmark's Arrivals server and names
 * itself, stamped on arrival; `etcdctl elect` runs no command, so its own line on stdout is used.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { createServer, type Server } from 'node:net';
import { createInterface } from 'node:readline';
import { Sidecar } from '../test/harness/sidecar.js';
import { monotonicNow } from '../test/chaos/world.js';

export interface Contender {
  readonly name: string;
  /** When it became the leader (host monotonic ms); pending until then. */
  readonly elected: Promise<number>;
  readonly pid: number;
  signal(signal: 'SIGTERM' | 'SIGKILL'): void;
  readonly exited: Promise<void>;
}

/** A loopback TCP server that stamps who connected and when. */
export class Arrivals {
  private readonly seen = new Map<string, number>();
  private readonly waiting = new Map<string, (at: number) => void>();

  private constructor(
    private readonly server: Server,
    readonly port: number,
  ) {}

  static start(): Promise<Arrivals> {
    return new Promise((resolve) => {
      let arrivals: Arrivals;
      const server = createServer((socket) => {
        let text = '';
        let at = 0;
        socket.on('data', (chunk) => {
          at ||= monotonicNow();
          text += chunk;
        });
        socket.on('end', () => arrivals.arrived(text.trim(), at));
        socket.on('error', () => undefined);
      });
      server.listen(0, '127.0.0.1', () => {
        arrivals = new Arrivals(server, (server.address() as { port: number }).port);
        resolve(arrivals);
      });
    });
  }

  /** argv that announces `name` and exits (a promote hook). */
  announce(name: string): string[] {
    return ['bash', '-c', `echo ${name} >/dev/tcp/127.0.0.1/${this.port}`];
  }

  /** When `name` arrives (or arrived). */
  of(name: string): Promise<number> {
    const at = this.seen.get(name);
    if (at !== undefined) return Promise.resolve(at);
    return new Promise((resolve) => this.waiting.set(name, resolve));
  }

  close(): Promise<void> {
    return new Promise((resolve) => this.server.close(() => resolve()));
  }

  private arrived(name: string, at: number): void {
    if (this.seen.has(name)) return;
    this.seen.set(name, at);
    this.waiting.get(name)?.(at);
    this.waiting.delete(name);
  }
}

/** A leaderd sidecar whose promote hook announces it. */
export async function leaderdContender(arrivals: Arrivals, name: string, args: readonly string[]): Promise<Contender & { sidecar: Sidecar }> {
  const hook = arrivals.announce(name).map((a) => `'${a}'`).join(' ');
  const sidecar = await Sidecar.start(name, [...args, '--on-promote', hook]);
  return {
    name,
    sidecar,
    elected: arrivals.of(name),
    pid: sidecar.pid,
    signal: (signal) => sidecar.signal(signal),
    exited: sidecar.exited.then(() => undefined),
  };
}

/** `etcdctl elect ELECTION NAME`: it prints the proposal once it leads. */
export function etcdctlContender(endpoint: string, election: string, name: string): Contender {
  const child = spawn('etcdctl', ['--endpoints', endpoint, 'elect', election, name], {
    env: { ...process.env, ETCDCTL_API: '3' },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  const elected = new Promise<number>((resolve) => {
    createInterface({ input: child.stdout! }).on('line', (line) => {
      if (line === name) resolve(monotonicNow());
    });
  });
  return wrap(name, child, elected);
}

/**
 * `consul lock PREFIX CHILD`, whose child announces it and then stays (a held lock). It runs in a
 * process group of its own, so that after a kill -9 its orphaned child can be cleaned up.
 */
export function consulLockContender(binary: string, httpAddr: string, arrivals: Arrivals, prefix: string, name: string): Contender {
  const announceThenHold = `echo ${name} >/dev/tcp/127.0.0.1/${arrivals.port}; exec sleep 100000`;
  // -shell=false: the child's argv as given (the default joins it into one shell line).
  const child = spawn(binary, ['lock', '-shell=false', `-http-addr=${httpAddr}`, `-name=${name}`, prefix, 'bash', '-c', announceThenHold], {
    stdio: ['ignore', 'ignore', 'ignore'],
    detached: true,
  });
  const contender = wrap(name, child, arrivals.of(name));
  void contender.exited.then(() => {
    try {
      process.kill(-child.pid!, 'SIGKILL');
    } catch {
      // the group is already gone
    }
  });
  return contender;
}

function wrap(name: string, child: ChildProcess, elected: Promise<number>): Contender {
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
  return { name, elected, pid: child.pid!, signal: (signal) => child.kill(signal), exited };
}

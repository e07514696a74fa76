/**
 * A TCP proxy between one sidecar and its coordination service, on loopback, that can cut the
 * network while both ends keep running: `blackhole()` stops forwarding in both directions and
 * holds the sockets open (as a partition does: no reset, no FIN), `delay(ms)` slows every chunk,
 * `heal()` goes back to forwarding. What was sent into the blackhole is delivered on heal, in
 * order: packets a partition drops are retransmitted by TCP once it heals, so a connection that
 * outlives a partition carries the same bytes late, never a stream with a hole in it.
 *
 * `wedge()` is the other kind of silence: the connections open now go dead for good, without a
 * reset, while new ones work (a server host that vanished, a lost conntrack entry). Only a
 * client that notices the silence on its own and reconnects gets through again.
 */
import { createServer, connect, type Server, type Socket } from 'node:net';

type Mode = { kind: 'forward' } | { kind: 'blackhole' } | { kind: 'delay'; ms: number };

export class TcpProxy {
  private mode: Mode = { kind: 'forward' };
  private readonly sockets = new Set<Socket>();
  /** The connections open now, each with whether it has been wedged. */
  private readonly links = new Set<{ wedged: boolean }>();
  /** Writes waiting for the blackhole to heal, in the order they were sent. */
  private readonly held: Array<() => void> = [];

  private constructor(
    private readonly server: Server,
    readonly port: number,
  ) {}

  /** Listens on a free loopback port and forwards to `target` ("host:port"). */
  static start(target: string): Promise<TcpProxy> {
    const [host, port] = splitHostPort(target);
    return new Promise((resolve, reject) => {
      let proxy: TcpProxy;
      const server = createServer((client) => proxy.accept(client, host, port));
      server.once('error', reject);
      server.listen(0, '127.0.0.1', () => {
        proxy = new TcpProxy(server, (server.address() as { port: number }).port);
        resolve(proxy);
      });
    });
  }

  get address(): string {
    return `127.0.0.1:${this.port}`;
  }

  blackhole(): void {
    this.setMode({ kind: 'blackhole' });
  }

  delay(ms: number): void {
    this.setMode({ kind: 'delay', ms });
  }

  heal(): void {
    this.setMode({ kind: 'forward' });
  }

  /** The connections open now carry nothing more, in either direction, and stay open. */
  wedge(): void {
    for (const link of this.links) link.wedged = true;
  }

  private setMode(mode: Mode): void {
    this.mode = mode;
    if (mode.kind !== 'blackhole') for (const release of this.held.splice(0)) release();
  }

  async stop(): Promise<void> {
    for (const socket of this.sockets) socket.destroy();
    await new Promise<void>((resolve) => this.server.close(() => resolve()));
  }

  private accept(client: Socket, host: string, port: number): void {
    const upstream = connect(port, host);
    const link = { wedged: false };
    this.links.add(link);
    for (const socket of [client, upstream]) {
      this.sockets.add(socket);
      socket.on('close', () => this.sockets.delete(socket));
      socket.on('error', () => undefined);
    }
    this.pipe(client, upstream, link);
    this.pipe(upstream, client, link);
    client.on('close', () => upstream.destroy());
    upstream.on('close', () => client.destroy());
    client.on('close', () => this.links.delete(link));
  }

  private pipe(from: Socket, to: Socket, link: { readonly wedged: boolean }): void {
    // A chunk never overtakes an earlier one, whatever the mode did in between: a TCP stream
    // that arrives out of order is a corrupt stream, not a slow one.
    let lastDue = 0;
    let blocked: Buffer[] | null = null;
    const write = (chunk: Buffer) => {
      if (link.wedged) return;
      if (this.mode.kind === 'blackhole') {
        if (!blocked) {
          blocked = [];
          this.held.push(() => {
            const chunks = blocked ?? [];
            blocked = null;
            for (const c of chunks) write(c);
          });
        }
        blocked.push(chunk);
      } else if (!to.destroyed) {
        to.write(chunk);
      }
    };
    from.on('data', (chunk: Buffer) => {
      if (link.wedged) return;
      if (blocked) return void blocked.push(chunk);
      const mode = this.mode;
      const now = performance.now();
      const due = Math.max(now + (mode.kind === 'delay' ? mode.ms : 0), lastDue);
      lastDue = due;
      if (due <= now) write(chunk);
      else setTimeout(() => (blocked ? blocked.push(chunk) : write(chunk)), due - now);
    });
  }
}

function splitHostPort(target: string): [string, number] {
  const match = /^(?:\[(.+)\]|([^:]+)):(\d+)$/.exec(target);
  if (!match) throw new Error(`not host:port: ${target}`);
  return [match[1] ?? match[2]!, Number(match[3])];
}

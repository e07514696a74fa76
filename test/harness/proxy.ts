/**
 * A TCP proxy between one sidecar and its coordination service, on loopback, that can cut the
 * network while both ends keep running: `blackhole()` stops forwarding in both directions and
 * holds the sockets open (as a partition does: no reset, no FIN), `delay(ms)` slows every chunk,
 * `heal()` goes back to forwarding (held data is dropped, as a partition drops packets).
 */
import { createServer, connect, type Server, type Socket } from 'node:net';

type Mode = { kind: 'forward' } | { kind: 'blackhole' } | { kind: 'delay'; ms: number };

export class TcpProxy {
  private mode: Mode = { kind: 'forward' };
  private readonly sockets = new Set<Socket>();

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
    this.mode = { kind: 'blackhole' };
  }

  delay(ms: number): void {
    this.mode = { kind: 'delay', ms };
  }

  heal(): void {
    this.mode = { kind: 'forward' };
  }

  async stop(): Promise<void> {
    for (const socket of this.sockets) socket.destroy();
    await new Promise<void>((resolve) => this.server.close(() => resolve()));
  }

  private accept(client: Socket, host: string, port: number): void {
    const upstream = connect(port, host);
    for (const socket of [client, upstream]) {
      this.sockets.add(socket);
      socket.on('close', () => this.sockets.delete(socket));
      socket.on('error', () => undefined);
    }
    this.pipe(client, upstream);
    this.pipe(upstream, client);
    client.on('close', () => upstream.destroy());
    upstream.on('close', () => client.destroy());
  }

  private pipe(from: Socket, to: Socket): void {
    // A chunk never overtakes an earlier one, whatever the mode did in between: a TCP stream
    // that arrives out of order is a corrupt stream, not a slow one.
    let lastDue = 0;
    from.on('data', (chunk) => {
      const mode = this.mode;
      if (mode.kind === 'blackhole') return;
      const now = performance.now();
      const due = Math.max(now + (mode.kind === 'delay' ? mode.ms : 0), lastDue);
      lastDue = due;
      const write = () => {
        if (this.mode.kind !== 'blackhole' && !to.destroyed) to.write(chunk);
      };
      if (due <= now) write();
      else setTimeout(write, due - now);
    });
  }
}

function splitHostPort(target: string): [string, number] {
  const match = /^(?:\[(.+)\]|([^:]+)):(\d+)$/.exec(target);
  if (!match) throw new Error(`not host:port: ${target}`);
  return [match[1] ?? match[2]!, Number(match[3])];
}

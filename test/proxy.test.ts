import { createServer, connect, type Server, type Socket } from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { TcpProxy } from './harness/proxy.js';

let echo: Server;
let echoPort: number;

beforeAll(async () => {
  echo = createServer((socket) => socket.pipe(socket));
  await new Promise<void>((resolve) => echo.listen(0, '127.0.0.1', resolve));
  echoPort = (echo.address() as { port: number }).port;
});
afterAll(() => new Promise<void>((resolve) => echo.close(() => resolve())));

function client(proxy: TcpProxy): Promise<Socket> {
  return new Promise((resolve) => {
    const socket = connect(proxy.port, '127.0.0.1', () => resolve(socket));
  });
}

/** The next chunk the socket receives, or null if none arrives within `ms`. */
function nextChunk(socket: Socket, ms: number): Promise<string | null> {
  return new Promise((resolve) => {
    const timer = setTimeout(() => {
      socket.off('data', onData);
      resolve(null);
    }, ms);
    const onData = (chunk: Buffer) => {
      clearTimeout(timer);
      resolve(chunk.toString());
    };
    socket.once('data', onData);
  });
}

describe('the TCP proxy used to cut one sidecar off its backend', () => {
  it('forwards, blackholes without closing, delivers what it held on heal, delays in order', async () => {
    const proxy = await TcpProxy.start(`127.0.0.1:${echoPort}`);
    const socket = await client(proxy);
    try {
      socket.write('one');
      expect(await nextChunk(socket, 2000)).toBe('one');

      proxy.blackhole();
      socket.write('held');
      expect(await nextChunk(socket, 300)).toBeNull();
      expect(socket.destroyed).toBe(false);
      const arrives = nextChunk(socket, 2000);
      proxy.heal();
      expect(await arrives).toBe('held');

      proxy.delay(200);
      const sentAt = performance.now();
      socket.write('slow');
      expect(await nextChunk(socket, 2000)).toBe('slow');
      // Delayed on the way out and on the way back.
      expect(performance.now() - sentAt).toBeGreaterThanOrEqual(390);

      proxy.heal();
      socket.write('two');
      expect(await nextChunk(socket, 2000)).toBe('two');
    } finally {
      socket.destroy();
      await proxy.stop();
    }
  });

  it('wedges the connections open now for good, and lets new ones through', async () => {
    const proxy = await TcpProxy.start(`127.0.0.1:${echoPort}`);
    const old = await client(proxy);
    try {
      proxy.wedge();
      old.write('lost');
      expect(await nextChunk(old, 300)).toBeNull();
      expect(old.destroyed).toBe(false);
      proxy.heal();
      expect(await nextChunk(old, 300)).toBeNull();

      const fresh = await client(proxy);
      fresh.write('new');
      expect(await nextChunk(fresh, 2000)).toBe('new');
      fresh.destroy();
    } finally {
      old.destroy();
      await proxy.stop();
    }
  });
});

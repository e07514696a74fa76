/**
 * The local HTTP API: what the application, its readiness probe and Prometheus ask.
 *
 * Every answer about the role is computed by `elector.status()` at the moment of answering, so
 * it is as fresh as the lease deadline allows. Errors are JSON with a status code that says
 * what is wrong; nothing a client sends can stop the sidecar from answering the next request.
 */
import { createHash, timingSafeEqual } from 'node:crypto';
import type { Server } from 'node:http';
import express, { type NextFunction, type Request, type Response } from 'express';
import { z } from 'zod';
import type { Elector, Status } from './elector.js';
import { errorMessage } from './elector.js';
import type { Logger } from './log.js';
import type { Metrics } from './metrics.js';

export interface HttpOptions {
  readonly election: string;
  readonly id: string;
  readonly ttlSeconds: number;
  readonly backend: string;
  readonly elector: Elector;
  readonly metrics: Metrics;
  /** null: admin endpoints answer 403. */
  readonly adminToken: string | null;
  readonly log: Logger;
}

const resignBody = z
  .object({ holdOffSeconds: z.number().min(0).max(86400).optional() })
  .strict();

/** SSE keep-alive, so proxies and clients see a live stream. */
const WATCH_KEEPALIVE_MS = 15000;

export function createApp(options: HttpOptions): express.Express {
  const { elector } = options;
  const app = express();
  app.disable('x-powered-by');
  app.set('etag', false);

  const body = (status: Status) => roleBody(options, status);
  const route = (path: string, methods: string[]) => app.all(path, methodNotAllowed(methods));

  app.get('/role', (_req, res) => {
    res.json(body(elector.status()));
  });
  app.get('/primary', (_req, res) => {
    const status = elector.status();
    res.status(status.role === 'primary' ? 200 : 503).json(body(status));
  });
  app.get('/replica', (_req, res) => {
    const status = elector.status();
    const ready = status.role === 'replica' && status.leader !== null;
    res.status(ready ? 200 : 503).json(body(status));
  });
  app.get('/healthz', (_req, res) => {
    const status = elector.status();
    res.status(status.alive ? 200 : 503).json({ alive: status.alive });
  });
  app.get('/', (_req, res) => {
    res.json({ name: elector.status().leader?.id ?? '' });
  });
  app.get('/metrics', async (_req, res) => {
    res.type(options.metrics.registry.contentType).send(await options.metrics.registry.metrics());
  });
  app.get('/watch', (req, res) => {
    res.writeHead(200, {
      'content-type': 'text/event-stream',
      'cache-control': 'no-store',
      connection: 'keep-alive',
    });
    const send = (status: Status) => res.write(`event: role\ndata: ${JSON.stringify(body(status))}\n\n`);
    const unsubscribe = elector.subscribe({ change: send });
    const keepalive = setInterval(() => res.write(': keep-alive\n\n'), WATCH_KEEPALIVE_MS);
    req.on('close', () => {
      clearInterval(keepalive);
      unsubscribe();
    });
    send(elector.status());
  });
  app.post('/resign', requireAdmin(options.adminToken), express.json({ limit: '4kb' }), async (req, res) => {
    const parsed = resignBody.safeParse(req.body ?? {});
    if (!parsed.success) {
      res.status(400).json({ error: `invalid body: ${parsed.error.issues.map(describeIssue).join('; ')}` });
      return;
    }
    const holdOffSeconds = parsed.data.holdOffSeconds ?? options.ttlSeconds;
    const before = elector.status().role;
    await elector.resign(holdOffSeconds * 1000, 'resign requested over HTTP');
    res.json({ resigned: true, previousRole: before, holdOffSeconds, ...body(elector.status()) });
  });

  route('/role', ['GET', 'HEAD']);
  route('/primary', ['GET', 'HEAD']);
  route('/replica', ['GET', 'HEAD']);
  route('/healthz', ['GET', 'HEAD']);
  route('/', ['GET', 'HEAD']);
  route('/metrics', ['GET', 'HEAD']);
  route('/watch', ['GET']);
  route('/resign', ['POST']);
  app.use((req, res) => {
    res.status(404).json({ error: `no such endpoint: ${req.path}` });
  });
  app.use((error: unknown, _req: Request, res: Response, _next: NextFunction) => {
    const status = httpStatusOf(error);
    if (status >= 500) options.log.error({ err: errorMessage(error) }, 'HTTP handler failed');
    if (res.headersSent) return void res.end();
    const message = status === 400 ? 'malformed JSON body' : status === 413 ? 'body too large' : errorMessage(error);
    res.status(status).json({ error: message });
  });
  return app;
}

export function roleBody(options: HttpOptions, status: Status) {
  return {
    election: options.election,
    id: options.id,
    role: status.role,
    leader: status.leader ? { id: status.leader.id, address: status.leader.address } : null,
    fencingToken: status.leader?.fencingToken ?? null,
    since: status.since.toISOString(),
    ttlSeconds: options.ttlSeconds,
    backend: { kind: options.backend, connected: status.connected },
  };
}

export function listen(app: express.Express, host: string, port: number): Promise<Server> {
  return new Promise((resolve, reject) => {
    const server = app.listen(port, host);
    server.once('listening', () => resolve(server));
    server.once('error', reject);
    // Slow or idle clients must not pin the sidecar's sockets (SSE streams are exempt).
    server.headersTimeout = 10000;
    server.requestTimeout = 10000;
  });
}

function methodNotAllowed(methods: string[]) {
  return (_req: Request, res: Response) => {
    res.set('allow', methods.join(', ')).status(405).json({ error: `method not allowed; use ${methods.join(' or ')}` });
  };
}

function requireAdmin(token: string | null) {
  const expected = token === null ? null : digest(token);
  return (req: Request, res: Response, next: NextFunction) => {
    if (expected === null) {
      res.status(403).json({ error: 'admin endpoints are disabled: start leaderd with --admin-token-file' });
      return;
    }
    const match = /^Bearer (.+)$/.exec(req.get('authorization') ?? '');
    // Compare digests, so the comparison takes the same time whatever the length presented.
    if (!match?.[1] || !timingSafeEqual(digest(match[1]), expected)) {
      res.status(401).set('www-authenticate', 'Bearer').json({ error: 'missing or wrong bearer token' });
      return;
    }
    next();
  };
}

function digest(value: string): Buffer {
  return createHash('sha256').update(value).digest();
}

function httpStatusOf(error: unknown): number {
  const status = (error as { status?: unknown } | null)?.status;
  return typeof status === 'number' && status >= 400 && status < 600 ? status : 500;
}

function describeIssue(issue: z.core.$ZodIssue): string {
  return issue.path.length ? `${issue.path.join('.')}: ${issue.message}` : issue.message;
}

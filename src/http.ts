/**
 * The local HTTP API: what the application, its readiness probe and Prometheus ask.
 *
 * Every answer about the role is computed by `elector.status()` at the moment of answering, so
 * it is as fresh as the lease deadline allows. Errors are JSON with a status code that says
 * what is wrong; nothing a client sends can stop the sidecar from answering the next request.
 *
 * The role answers are what applications poll and probes hit, on every node, all the time. The
 * server gives them straight from a table and hands every other request to express, whose
 * per-request setup costs several times the answer itself (see the HTTP benchmark in docs/benchmarks.md).
 * Express serves the same table, so a path the table does not match exactly (`/role/`, `/ROLE`)
 * gets the same answer, only slower.
 */
import { createHash, timingSafeEqual } from 'node:crypto';
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import express, { type NextFunction, type Request, type Response } from 'express';
import { z } from 'zod';
import type { Elector, Status } from './elector.js';
import { errorMessage } from './elector.js';
import type { Logger } from './log.js';
import type { Member } from './member.js';
import type { Metrics } from './metrics.js';
import { positionJson } from './cluster.js';

export interface HttpOptions {
  readonly election: string;
  readonly id: string;
  readonly ttlSeconds: number;
  readonly backend: string;
  readonly elector: Elector;
  readonly member: Member;
  readonly metrics: Metrics;
  /** null: admin endpoints answer 403. */
  readonly adminToken: string | null;
  /** --max-lag: how far behind /readiness may be when the probe names no ?lag=. null: no limit. */
  readonly maxLag: bigint | null;
  readonly log: Logger;
}

const resignBody = z
  .object({ holdOffSeconds: z.number().min(0).max(86400).optional() })
  .strict();

const switchoverBody = z.object({ candidate: z.string().min(1).max(253).optional() }).strict();

/** `lag` of /replica?lag=N: the same units as the check's positions. */
const LAG = /^(0|[1-9][0-9]{0,77})$/;

/** SSE keep-alive, so proxies and clients see a live stream. */
const WATCH_KEEPALIVE_MS = 15000;

interface Answer {
  readonly status: number;
  readonly body: unknown;
}

type RoleAnswer = (status: Status, query: string) => Answer;
type RoleAnswers = ReadonlyMap<string, RoleAnswer>;

/**
 * The methods a role answer takes. Load balancers probe with HEAD and OPTIONS (HAProxy's
 * `option httpchk` sends OPTIONS unless told otherwise): both get GET's status and headers,
 * without its body.
 */
const ROLE_METHODS = ['GET', 'HEAD', 'OPTIONS'];

/**
 * Not `OPTIONS /`: HAProxy's bare `option httpchk` sends exactly that, and `/` answers 200 on
 * every node (the leader-elector's answer names the leader), so every node would look like the
 * primary. Refused (405), it marks every node down, and docs/http-api.md says to name the path.
 */
function methodsFor(path: string): readonly string[] {
  return path === '/' ? ['GET', 'HEAD'] : ROLE_METHODS;
}

/**
 * Answers about the role, by path. Patroni's names are here where leaderd can mean the same
 * thing (docs/http-api.md says where it cannot); Patroni's `GET /` is `/primary`, but leaderd's `/`
 * stays the Kubernetes leader-elector's answer, which deployments already read.
 */
function roleAnswers(options: HttpOptions): RoleAnswers {
  const body = (status: Status) => roleBody(options, status);
  const leads = (status: Status) => status.role === 'primary';
  const following = (status: Status) => status.role === 'replica' && status.leader !== null;
  const healthy = () => options.member.state().healthy;
  const primary: RoleAnswer = (status) => ({ status: leads(status) ? 200 : 503, body: body(status) });
  const alive: RoleAnswer = (status) => ({ status: status.alive ? 200 : 503, body: { alive: status.alive } });
  return new Map<string, RoleAnswer>([
    ['/role', (status) => ({ status: 200, body: body(status) })],
    ['/primary', primary],
    ['/leader', primary],
    ['/read-write', primary],
    ['/replica', (status, query) => lagAnswer(options, status, query, null, (within) => following(status) && within)],
    // Serves reads on either role: a readiness probe that does not depend on who leads.
    ['/read-only', (status, query) => lagAnswer(options, status, query, null, (within) => leads(status) || (following(status) && within))],
    // As Patroni's: a replica is ready once its application is (the check) and near enough.
    ['/readiness', (status, query) =>
      lagAnswer(options, status, query, options.maxLag, (within) => leads(status) || (following(status) && healthy() && within))],
    ['/health', (status) => ({ status: healthy() ? 200 : 503, body: body(status) })],
    ['/healthz', alive],
    ['/liveness', alive],
    ['/', (status) => ({ status: 200, body: { name: status.leader?.id ?? '' } })],
  ]);
}

/** The HTTP server: role answers from the table, everything else through express. */
export function createHttpServer(options: HttpOptions): Server {
  const answers = roleAnswers(options);
  const app = createApp(options, answers);
  return createServer((req, res) => {
    const path = pathOf(req);
    const answer = methodsFor(path).includes(req.method ?? '') ? answers.get(path) : undefined;
    if (answer) {
      try {
        return send(res, answer(options.elector.status(), queryOf(req)), req.method);
      } catch {
        // Nothing is sent before the answer is whole: express asks again, and answers a failure
        // as it answers any other (500, logged).
      }
    }
    void app(req, res);
  });
}

function createApp(options: HttpOptions, answers: RoleAnswers): express.Express {
  const { elector } = options;
  const app = express();
  app.disable('x-powered-by');
  app.set('etag', false);

  const body = (status: Status) => roleBody(options, status);
  const route = (path: string, methods: string[]) => app.all(path, methodNotAllowed(methods));

  for (const [path, answer] of answers) {
    const handler = (req: Request, res: Response) => send(res, answer(elector.status(), queryOf(req)), req.method);
    app.get(path, handler);
    if (methodsFor(path).includes('OPTIONS')) app.options(path, handler);
  }
  app.get('/cluster', (_req, res) => {
    res.json(options.member.cluster());
  });
  app.get('/metrics', async (_req, res) => {
    res.type(options.metrics.registry.contentType).send(await options.metrics.registry.metrics());
  });
  app.get('/watch', (req, res) => {
    // Express routes HEAD here too: it gets the stream's headers, and no stream to wait on (nor a
    // connection kept open for one).
    const head = req.method === 'HEAD';
    res.writeHead(200, {
      'content-type': 'text/event-stream',
      'cache-control': 'no-store',
      ...(head ? {} : { connection: 'keep-alive' }),
    });
    if (head) return void res.end();
    const push = (status: Status) => res.write(`event: role\ndata: ${JSON.stringify(body(status))}\n\n`);
    const unsubscribe = elector.subscribe({ change: push });
    const keepalive = setInterval(() => res.write(': keep-alive\n\n'), WATCH_KEEPALIVE_MS);
    options.metrics.watchClient(1);
    req.on('close', () => {
      clearInterval(keepalive);
      unsubscribe();
      options.metrics.watchClient(-1);
    });
    push(elector.status());
  });
  app.post('/resign', requireAdmin(options.adminToken), jsonBody(), async (req, res) => {
    const parsed = resignBody.safeParse(req.body ?? {});
    if (!parsed.success) {
      res.status(400).json({ error: `invalid body: ${parsed.error.issues.map(describeIssue).join('; ')}` });
      return;
    }
    const holdOffSeconds = parsed.data.holdOffSeconds ?? options.ttlSeconds;
    const before = elector.status().role;
    if (!(await elector.resign(holdOffSeconds * 1000, 'resign requested over HTTP'))) {
      res.status(503).json({ error: 'shutting down: there is nothing to resign' });
      return;
    }
    res.json({ resigned: true, previousRole: before, holdOffSeconds, ...body(elector.status()) });
  });

  for (const path of answers.keys()) route(path, [...methodsFor(path)]);
  route('/metrics', ['GET', 'HEAD']);
  route('/watch', ['GET', 'HEAD']);
  app.post('/switchover', requireAdmin(options.adminToken), jsonBody(), async (req, res) => {
    const parsed = switchoverBody.safeParse(req.body ?? {});
    if (!parsed.success) {
      res.status(400).json({ error: `invalid body: ${parsed.error.issues.map(describeIssue).join('; ')}` });
      return;
    }
    const answer = await options.member.switchover(parsed.data.candidate);
    res.status(answer.status).json(answer.body);
  });

  route('/resign', ['POST']);
  route('/switchover', ['POST']);
  route('/cluster', ['GET', 'HEAD']);
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

/**
 * An answer that may depend on `?lag=N` (Patroni's max-lag): `ready` is told whether this member
 * is at most N behind the last leader's published position, or `fallback` behind when the query
 * names no lag (null: no limit). An unknown lag is not within any N; a primary's is 0.
 */
function lagAnswer(
  options: HttpOptions,
  status: Status,
  query: string,
  fallback: bigint | null,
  ready: (withinLag: boolean) => boolean,
): Answer {
  const wanted = new URLSearchParams(query).get('lag');
  if (wanted !== null && !LAG.test(wanted)) return { status: 400, body: { error: 'lag: must be a whole number, at least 0' } };
  const maxLag = wanted === null ? fallback : BigInt(wanted);
  const { lag } = options.member.state();
  const within = maxLag === null || (lag !== null && lag <= maxLag);
  return { status: ready(within) ? 200 : 503, body: roleBody(options, status) };
}

export function roleBody(options: HttpOptions, status: Status) {
  const member = options.member.state();
  return {
    election: options.election,
    id: options.id,
    role: status.role,
    leader: status.leader ? { id: status.leader.id, address: status.leader.address } : null,
    fencingToken: status.leader?.fencingToken ?? null,
    since: status.since.toISOString(),
    ttlSeconds: options.ttlSeconds,
    backend: { kind: options.backend, connected: status.connected },
    healthy: member.healthy,
    eligible: member.eligible,
    priority: member.priority,
    position: positionJson(member.position),
    lag: positionJson(member.lag),
  };
}

/**
 * JSON, as express's res.json sends it. HEAD gets the headers alone: node:http drops the body and
 * the length stays GET's. OPTIONS too, but node:http would send its body, so none is given and the
 * length says 0 (a length with no body behind it would break the connection).
 */
function send(res: ServerResponse, { status, body }: Answer, method = 'GET'): void {
  const text = method === 'OPTIONS' ? '' : JSON.stringify(body);
  res.writeHead(status, { 'content-type': 'application/json; charset=utf-8', 'content-length': Buffer.byteLength(text) });
  res.end(text);
}

/** The request's query string, without the "?". */
function queryOf(req: IncomingMessage): string {
  const url = req.url ?? '';
  const query = url.indexOf('?');
  return query === -1 ? '' : url.slice(query + 1);
}

/** The request's path, without its query string. */
function pathOf(req: IncomingMessage): string {
  const url = req.url ?? '';
  const query = url.indexOf('?');
  return query === -1 ? url : url.slice(0, query);
}

export function listen(server: Server, host: string, port: number): Promise<Server> {
  return new Promise((resolve, reject) => {
    server.listen(port, host);
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

/**
 * The admin endpoints' bodies: JSON, at most 4 KiB. express.json() passes over a body of any
 * other type, so curl's default form encoding would drop holdOffSeconds or a switchover's
 * candidate without a word: 415 instead. An empty body is no body, whatever its type.
 */
function jsonBody() {
  const parse = express.json({ limit: '4kb' });
  return (req: Request, res: Response, next: NextFunction) => {
    const empty = req.get('transfer-encoding') === undefined && Number(req.get('content-length') ?? 0) === 0;
    if (empty || req.is('application/json')) return parse(req, res, next);
    // Named, not echoed whole: a header can be kilobytes long.
    const type = (req.get('content-type') ?? 'none').slice(0, 100);
    res.status(415).json({ error: `the body must be JSON: send content-type: application/json (got ${type})` });
  };
}

function requireAdmin(token: string | null) {
  const expected = token === null ? null : digest(token);
  return (req: Request, res: Response, next: NextFunction) => {
    if (expected === null) {
      res.status(403).json({ error: 'admin endpoints are disabled: start leaderd with --admin-token-file' });
      return;
    }
    // The scheme is case-insensitive (RFC 9110), so "bearer" is as good as "Bearer".
    const match = /^bearer +(\S+) *$/i.exec(req.get('authorization') ?? '');
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

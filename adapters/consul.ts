/**
 * Consul: a session per candidate and a KV lock, the pattern of `consul lock`.
 *
 * Each session is bound to `serfHealth` and to a TTL check of its own that leaderd passes on every
 * renewal, so when a sidecar dies its lock is freed after the short check TTL instead of up to
 * twice the session TTL. That check TTL is therefore the lease the core times its deadline from
 * (Config.leaseSeconds): the check expires no sooner than its TTL after the last pass, and each
 * renewal also renews the session at the servers, so it proves the session alive where locks are
 * decided. Consul can also invalidate a session on its own (its node left or failed), whatever
 * our renewals say; the lock-delay, by default as long as the renew deadline, keeps the next
 * holder out until this one has stepped down.
 *
 * The lock is PREFIX/ELECTION/leader, acquired with ?acquire=<session> and holding {id, address};
 * everyone watches it with blocking queries. The fencing token is the key's ModifyIndex while
 * held: the Raft index of the acquire, which only grows across the whole cluster, even when the
 * key is deleted and created again (a LockIndex would restart at 1 on a new key).
 *
 * The lock is held by this session only while it campaigns. An acquire can land after the client
 * gave up on it, and so after a withdraw (a resign during a server election): the watch then
 * shows the lock held by a session that is out of the race, which would keep it, renewed, with no
 * primary anywhere. Such a lock is released as soon as the watch shows it.
 *
 * What the lock holds is read defensively: a value that is not leaderd's {id, address} names the
 * holder by its session, with one warning per holder.
 *
 * Member records live beside the election, not in it: PREFIX/.cluster/ELECTION/members/<session>,
 * written with ?acquire=<session> so the session holds its record (an acquire by the holder
 * replaces the value), and PREFIX/.cluster/ELECTION/leader-position, a plain key that outlives
 * every session. When Consul invalidates a session it releases, not deletes, the keys it held, so
 * a record counts only while held by the session it names; released ones are leftovers, and
 * readCluster deletes a few per call (guarded by their ModifyIndex, in the background) so dead
 * members do not pile up. close() deletes its own at once. readCluster is one ?consistent
 * recursive GET, seeing every write completed before it; each publish is one PUT.
 *
 * Secured agents: an https:// address with consul-ca-file (and consul-cert-file/consul-key-file
 * when the agent verifies clients), and an ACL token. The files are read again when they change
 * (and on SIGHUP): new requests, and every session's watch, move to a client made with them. A
 * failure only the operator can fix (a token the agent does not know, a permission the token
 * lacks, a certificate refused either way, a scheme that does not match the agent) is logged as
 * one line naming the setting; before any session has opened it ends leaderd (exit 2). The
 * permissions needed are checked when a session opens, not at the first campaign: registering
 * the service and creating the session need theirs anyway, and two releases of keys the new
 * session cannot hold (its lock and its member record) need key write on both without writing.
 */
import { randomBytes } from 'node:crypto';
import Consul from 'consul';
import type { Logger } from 'pino';
import type { Backend, ClusterRecords, Leader, Session, SessionContext } from '../src/backend.js';
import { BackendConfigError, MAX_RECORD_BYTES, SessionLostError, started, candidateFrom } from '../src/backend.js';
import { errorMessage } from '../src/elector.js';
import { watchTlsFiles, type TlsFileSettings, type TlsMaterial } from '../src/tls-files.js';

export interface ConsulOptions {
  /** The agent's HTTP API, e.g. http://127.0.0.1:8500 */
  readonly address: string;
  readonly token: string | null;
  readonly keyPrefix: string;
  readonly datacenter: string | null;
  readonly sessionTtlSeconds: number;
  readonly checkTtlSeconds: number;
  readonly lockDelaySeconds: number;
  readonly tls: TlsFileSettings | null;
}

/** How often the TLS files are compared with what is in use (and at once on SIGHUP). */
const TLS_FILES_CHECK_MS = 10000;
/** How long a replaced client's connections are kept for the requests still under way on them. */
const RETIRED_CLIENT_MS = 30000;

interface KvItem {
  ModifyIndex: number;
  Session?: string;
  Value: string | null;
}

/** An entry of the records' directory, read as bytes so a value's size is known before its text. */
interface RecordItem {
  Key: string;
  ModifyIndex: number;
  Session?: string;
  Value: Buffer | null;
}

/** Leftover member keys deleted per readCluster: enough to keep up with deaths, never a burst. */
const SWEEP_PER_READ = 3;

export class ConsulBackend implements Backend {
  readonly kind = 'consul';
  /** The client new requests go to: replaced, with new TLS files, when they change. */
  private current: Consul;
  private readonly sessions = new Set<ConsulSession>();
  private readonly tlsWatch: ReturnType<typeof watchTlsFiles> | null = null;
  /**
   * Until a session has opened, what only the operator can fix (see explain()) ends leaderd with
   * exit 2; after, it may be a rotation half done, and the node retries, stepping down meanwhile.
   */
  private everOpened = false;

  constructor(
    private readonly options: ConsulOptions,
    private readonly log: Logger,
  ) {
    let material: TlsMaterial = {};
    if (options.tls) {
      this.tlsWatch = watchTlsFiles(
        options.tls,
        TLS_FILES_CHECK_MS,
        (material) => this.replaceClient(material),
        (error) => log.warn({ err: error.message }, 'the changed TLS files cannot be used yet; keeping the ones in use'),
      );
      material = this.tlsWatch.material;
    }
    this.current = this.newClient(material);
  }

  get client(): Consul {
    return this.current;
  }

  private newClient(tls: TlsMaterial): Consul {
    const { address, token, datacenter } = this.options;
    const url = new URL(address);
    return new Consul({
      host: url.hostname,
      port: Number(url.port || (url.protocol === 'https:' ? 443 : 80)),
      secure: url.protocol === 'https:',
      // papi hands ca, cert and key to https.request with every request (its CLIENT_OPTIONS), and
      // the keep-alive https.Agent the consul package makes uses them for its connections. Without
      // a ca, Node verifies the agent with its own CA store.
      ...(tls.ca ? { ca: tls.ca } : {}),
      ...(tls.cert ? { cert: tls.cert, key: tls.key } : {}),
      defaults: { ...(token ? { token } : {}), ...(datacenter ? { dc: datacenter } : {}) },
    } as ConstructorParameters<typeof Consul>[0]);
  }

  async open(context: SessionContext): Promise<Session> {
    const session = new ConsulSession(this, this.options, context);
    // Known before it starts: a client replaced while it starts moves its first watch too.
    this.sessions.add(session);
    session.onClose(() => this.sessions.delete(session));
    try {
      await started(session);
    } catch (error) {
      const explained = this.explain(error);
      if (explained && !this.everOpened && !(await this.refusalMayPass(error, context.requestTimeoutMs))) throw new BackendConfigError(explained);
      throw explained ? new Error(explained, { cause: error }) : error;
    }
    this.everOpened = true;
    return session;
  }

  /**
   * An ACL refusal from an agent that has not reached its servers yet (just booted, say) is not
   * the servers' word: with no cached token it applies `default_policy = deny` to everything. Such
   * a refusal is retried, not a reason to exit; so is one when the agent cannot say.
   */
  private async refusalMayPass(error: unknown, timeoutMs: number): Promise<boolean> {
    if (statusOf(error) !== 403) return false;
    try {
      const leader: unknown = await this.current.status.leader({ timeout: timeoutMs } as never);
      return typeof leader !== 'string' || leader === '';
    } catch {
      return true;
    }
  }

  /** Reads the TLS files again now, if they changed (SIGHUP). */
  reload(): void {
    this.tlsWatch?.check();
  }

  async shutdown(): Promise<void> {
    this.tlsWatch?.stop();
    this.current.destroy();
  }

  /**
   * New requests go to a client with the new files; each session's watch moves to it. The old
   * client's connections are closed once what is under way on them has had its deadline.
   */
  private replaceClient(material: TlsMaterial): void {
    const retired = this.current;
    this.current = this.newClient(material);
    this.log.info('TLS files changed: new connections to Consul use them');
    for (const session of this.sessions) session.rewatch();
    setTimeout(() => retired.destroy(), RETIRED_CLIENT_MS).unref();
  }

  /**
   * A failure only the operator can fix, as one line naming the setting; null for the others.
   * Requests are wrapped by ConsulSession.call, which notes on the error what it was doing, so
   * that a refusal can name the permission it lacked. The token itself is never in the line.
   */
  explain(error: unknown): string | null {
    const status = statusOf(error);
    // The client library keeps a body of over 80 characters, or one without a content type, out
    // of the message ("bad request", "forbidden"): Go's HTTPS server answering plain HTTP with a
    // 400, and Consul 1.11+ saying which permission a token lacks ("Permission denied: token with
    // AccessorID '...' lacks permission 'key:write' on ..."; the accessor id is not the secret).
    const body = (error as { response?: { body?: unknown } } | null)?.response?.body;
    const text = Buffer.isBuffer(body) ? body.toString() : typeof body === 'string' ? body : '';
    const said = (status === 400 || status === 403) && text.length < 500 ? text.trim() : '';
    const message = said || errorMessage(error);
    const tokenSetting = 'consul-token-file (or consul-token)';
    if (status === 403 && /ACL not found/i.test(message)) {
      return `${tokenSetting}: the Consul agent does not know the ACL token (ACL not found)`;
    }
    if (status === 403 && /Permission denied/i.test(message)) {
      const needed = neededFor((error as { operation?: string }).operation, this.options.keyPrefix);
      const whose = this.options.token ? 'the ACL token' : 'a request without an ACL token (none was given)';
      return `${tokenSetting}: ${whose} may not ${needed ?? 'do what leaderd needs'} (permission denied); see the minimum policy in docs/backends.md`;
    }
    if (/Hostname\/IP does not match|ERR_TLS_CERT_ALTNAME/i.test(message)) {
      return `consul-addr: the agent's certificate does not name the host of ${this.options.address}: ${tlsCause(message)}`;
    }
    if (/unable to verify|self[- ]signed certificate|certificate has expired|unable to get (local )?issuer/i.test(message)) {
      return `consul-ca-file: the agent's certificate is not trusted: ${tlsCause(message)}`;
    }
    if (/alert (bad|unknown|unsupported|expired|revoked) certificate|alert unknown ca|alert certificate required|alert handshake failure/i.test(message)) {
      return `consul-cert-file: the agent refused the client certificate${this.options.tls?.cert ? '' : ' (none was given; set consul-cert-file and consul-key-file)'}: ${tlsCause(message)}`;
    }
    if (/wrong version number|packet length too long|HTTP request to an HTTPS server/i.test(message)) {
      return `consul-addr: the scheme does not match the agent (https:// to a plain HTTP API, or http:// to an HTTPS one): ${tlsCause(message)}`;
    }
    return null;
  }
}

/** The permission an operation needs, in the words of an ACL policy. */
function neededFor(operation: string | undefined, keyPrefix: string): string | null {
  switch (operation) {
    case 'register':
    case 'check':
      return 'register the service leaderd and pass its check (service "leaderd" { policy = "write" })';
    case 'session':
      return 'create and renew sessions on the agent\'s node (session "NODE" { policy = "write" })';
    case undefined:
      return null;
    default:
      // Keys are written without a leading "/" (see ConsulSession's constructor).
      return `write keys under ${keyPrefix}/ (key_prefix "${`${keyPrefix}/`.replace(/^\//, '')}" { policy = "write" })`;
  }
}

/** OpenSSL's or Node's reason, without the library's "consul: " in front. */
function tlsCause(message: string): string {
  const ssl = /SSL routines:[^:]*:([^:\n]+)/.exec(message);
  return (ssl?.[1] ?? message.replace(/^consul: /, '')).trim();
}

class ConsulSession implements Session {
  /** Per session: a dropped session's late clean-up must not remove its successor's check. */
  private readonly serviceId: string;
  private readonly checkId: string;
  private readonly key: string;
  private sessionId: string | null = null;
  private campaigning = false;
  private closed = false;
  private watch: ReturnType<Consul['watch']> | null = null;
  /** The lock as the watch last saw it: the watch's answers arrive in order, nothing else's do. */
  private current: KvItem | null = null;
  private acquiring: Promise<void> | null = null;
  /** Releasing a lock that landed while out of the race; one release at a time. */
  private releasingStray: Promise<void> | null = null;
  /** A lock held by this session at or below this index is a stray being released, not a term. */
  private strayThrough = 0;
  private retryTimer: NodeJS.Timeout | undefined;
  /** The last holder whose value was reported as not leaderd's. */
  private notedHolder: string | null = null;
  /** PREFIX/.cluster/ELECTION: the member records and the leader position. */
  private readonly records: string;
  /** Keys there that are not records, already warned about: only those still present are kept. */
  private notedRecords = new Set<string>();
  /** Deleting leftover member keys; one sweep at a time. */
  private sweeping: Promise<void> | null = null;

  private closeListener: (() => void) | null = null;

  constructor(
    private readonly backend: ConsulBackend,
    private readonly options: ConsulOptions,
    private readonly context: SessionContext,
  ) {
    this.serviceId = `leaderd-${context.election}-${randomBytes(6).toString('hex')}`;
    this.checkId = `${this.serviceId}-alive`;
    this.key = `${options.keyPrefix}/${context.election}/leader`.replace(/^\//, '');
    this.records = `${options.keyPrefix}/.cluster/${context.election}`.replace(/^\//, '');
  }

  /** The backend's current client: a TLS rotation moves every new request to a new one. */
  private get client(): Consul {
    return this.backend.client;
  }

  onClose(listener: () => void): void {
    this.closeListener = listener;
  }

  /** Watches again, on the backend's current client (its client was replaced). */
  rewatch(): void {
    // Not watching yet (still starting): start() makes its watch on the current client.
    if (this.closed || this.watch === null) return;
    const old = this.watch;
    // Cleared first: the old watch's end is not a lost watch.
    this.watch = null;
    old?.end();
    this.startWatch();
  }

  private get memberKey(): string {
    return `${this.records}/members/${this.sessionId}`;
  }

  private get timeout() {
    return { timeout: this.context.requestTimeoutMs };
  }

  async start(): Promise<void> {
    const { candidate, election } = this.context;
    // The check belongs to a service of leaderd's own: a node check left critical by a crashed
    // sidecar would make every service on the node look unhealthy. Consul removes a service
    // left behind a minute after its check went critical.
    await this.call('register', () =>
      this.client.agent.service.register({
        id: this.serviceId,
        name: 'leaderd',
        tags: [election],
        check: {
          checkid: this.checkId,
          name: `leaderd ${election} ${candidate.id} is alive`,
          ttl: `${this.options.checkTtlSeconds}s`,
          status: 'passing',
          deregistercriticalserviceafter: '1m',
        },
        ...this.timeout,
      } as never),
    );
    const created = await this.call('session', () =>
      this.client.session.create({
        name: `leaderd ${election} ${candidate.id}`,
        ttl: `${this.options.sessionTtlSeconds}s`,
        lockdelay: `${Math.ceil(this.options.lockDelaySeconds * 1000)}ms`,
        behavior: 'release',
        checks: ['serfHealth', this.checkId],
        ...this.timeout,
      }),
    );
    this.sessionId = created.ID;
    this.context.log.info({ session: created.ID, check: this.checkId }, 'Consul session created');
    // Key write on the lock and on the member records, asked for now rather than at the first
    // campaign: a release by a session that holds neither key changes nothing, but needs it.
    const id = created.ID;
    await Promise.all(
      [this.key, this.memberKey].map((key) => this.call('release', () => this.client.kv.set({ key, value: '', release: id, ...this.timeout }))),
    );
    this.startWatch();
  }

  async renew(): Promise<void> {
    const id = this.sessionId!;
    try {
      await this.call('check', () => this.client.agent.check.pass({ id: this.checkId, ...this.timeout }));
      const renewed = await this.call('session', () => this.client.session.renew({ id, ...this.timeout }), false);
      if (!Array.isArray(renewed) || renewed.length === 0) throw new SessionLostError(`Consul session ${id} is gone`);
    } catch (error) {
      if (statusOf(error) === 404) throw new SessionLostError(`Consul session ${id} was invalidated`);
      throw this.explained(error);
    }
  }

  /** An error that only the operator can fix names its setting in the message (it is logged). */
  private explained(error: unknown): unknown {
    const explanation = error instanceof SessionLostError ? null : this.backend.explain(error);
    return explanation ? new Error(explanation, { cause: error }) : error;
  }

  async campaign(): Promise<void> {
    // A stray lock still being released must be gone before we may lead again (observe()).
    await this.releasingStray;
    this.campaigning = true;
    await this.tryAcquire();
  }

  async withdraw(): Promise<void> {
    this.campaigning = false;
    await this.acquiring;
    await this.release();
  }

  async close(): Promise<void> {
    this.campaigning = false;
    await this.acquiring;
    this.closed = true;
    this.closeListener?.();
    clearTimeout(this.retryTimer);
    this.watch?.end();
    // Releasing first hands over at once; destroying a session that holds a lock would make
    // everyone wait out the lock-delay.
    if (this.sessionId) {
      await this.release().catch(() => undefined);
      const id = this.sessionId;
      await this.call('session', () => this.client.session.destroy({ id, ...this.timeout })).catch(() => undefined);
      // Destroyed, the session no longer holds its record, so nobody reads it; deleted, nobody
      // has to sweep it either.
      const key = this.memberKey;
      await this.call('delete', () => this.client.kv.del({ key, ...this.timeout })).catch(() => undefined);
    }
    await this.call('register', () => this.client.agent.service.deregister({ id: this.serviceId, ...this.timeout }));
  }

  async publishMember(record: string): Promise<void> {
    const key = this.memberKey;
    const written = await this.call('put', () => this.client.kv.set({ key, value: record, acquire: this.sessionId!, ...this.timeout })).catch((error: unknown) => {
      throw this.explained(error);
    });
    // Refused: the session no longer holds its key, as after Consul invalidated it (renew() reports the loss).
    if (!written) throw new Error(`Consul refused the member record ${key}: is the session still valid?`);
  }

  async publishLeaderPosition(record: string): Promise<void> {
    const key = `${this.records}/leader-position`;
    await this.call('put', () => this.client.kv.set({ key, value: record, ...this.timeout })).catch((error: unknown) => {
      throw this.explained(error);
    });
  }

  async readCluster(): Promise<ClusterRecords> {
    const prefix = `${this.records}/`;
    const items = (await this.call('get', () =>
      this.client.kv.get({ key: prefix, recurse: true, consistent: true, buffer: true, ...this.timeout } as never),
    ).catch((error: unknown) => {
      throw this.explained(error);
    })) as unknown as RecordItem[] | undefined;
    const members: string[] = [];
    let leaderPosition: string | null = null;
    const leftovers: RecordItem[] = [];
    const notRecords = new Map<string, string>();
    for (const item of items ?? []) {
      const name = item.Key.slice(prefix.length);
      const holder = /^members\/([^/]+)$/.exec(name)?.[1];
      if (holder !== undefined && !item.Session) {
        leftovers.push(item);
        continue;
      }
      // A record is the position, or a member key held by the session it is named after.
      const isRecord = holder === undefined ? name === 'leader-position' : item.Session === holder;
      const value = item.Value ?? Buffer.alloc(0);
      if (!isRecord) notRecords.set(item.Key, 'not a record');
      else if (value.length > MAX_RECORD_BYTES) notRecords.set(item.Key, `larger than ${MAX_RECORD_BYTES} bytes`);
      else if (holder === undefined) leaderPosition = value.toString();
      else members.push(value.toString());
    }
    for (const [key, why] of notRecords) {
      if (!this.notedRecords.has(key)) this.context.log.warn({ key, why }, 'skipping a Consul key among the member records');
    }
    this.notedRecords = new Set(notRecords.keys());
    this.sweep(leftovers.slice(0, SWEEP_PER_READ));
    return { members, leaderPosition };
  }

  /**
   * Deletes member keys whose session is gone, each only if unchanged since it was read: a key
   * acquired again meanwhile is not a leftover. Best effort; the next read finds what is left.
   */
  private sweep(leftovers: RecordItem[]): void {
    if (this.sweeping || this.closed || leftovers.length === 0) return;
    this.sweeping = Promise.all(
      leftovers.map(({ Key: key, ModifyIndex: cas }) =>
        this.call('delete', () => this.client.kv.del({ key, cas, ...this.timeout })).catch((error) =>
          this.context.log.debug({ key, err: errorMessage(error) }, 'cannot delete a leftover member record'),
        ),
      ),
    ).then(() => {
      this.sweeping = null;
    });
  }

  /**
   * A request, timed for the metrics (unless `measured` is false). A failure carries the
   * operation, so that a refusal can name the permission it needed (ConsulBackend.explain).
   */
  private call<T>(operation: string, request: () => Promise<T>, measured = true): Promise<T> {
    return (measured ? this.context.measure(operation, request) : request()).catch((error: unknown) => {
      if (error && typeof error === 'object' && !('operation' in error)) Object.assign(error, { operation });
      throw error;
    });
  }

  private startWatch(): void {
    const watch = this.client.watch({
      method: this.client.kv.get,
      options: { key: this.key, wait: '30s' },
      backoffFactor: 100,
      backoffMax: 1000,
    });
    // Answers reach observe() in order only from one watch: a replaced one's late answer is dropped.
    watch.on('change', (data: KvItem | null) => {
      if (this.watch === watch) this.observe(data ?? null);
    });
    watch.on('error', (error: unknown) => {
      // A read of the lock needs key read: a refusal names the key prefix.
      if (error && typeof error === 'object' && !('operation' in error)) Object.assign(error, { operation: 'get' });
      this.context.log.warn({ err: this.backend.explain(error) ?? errorMessage(error) }, 'watching the Consul lock failed; retrying');
    });
    // The helper gives up for good on some answers (400, no index): without a watch we are blind.
    // A watch replaced by rewatch() ends too, and is no longer this.watch then.
    watch.on('end', () => {
      if (!this.closed && this.watch === watch) this.context.events.lost(new SessionLostError('the watch on the Consul lock ended'));
    });
    this.watch = watch;
  }

  private observe(item: KvItem | null): void {
    if (this.closed) return;
    this.current = item;
    const held = item?.Session ? item : null;
    const isSelf = held !== null && held.Session === this.sessionId;
    if (held && isSelf && (!this.campaigning || held.ModifyIndex <= this.strayThrough)) {
      // A stray, not a term: nobody leads on it, and it is released. Answers that still show it
      // after we campaign again are stale: only a lock acquired since (a larger index) is ours.
      this.strayThrough = Math.max(this.strayThrough, held.ModifyIndex);
      this.context.events.view({ leader: null, isSelf: false });
      this.releaseStray();
      return;
    }
    this.context.events.view({ leader: held ? this.leaderFrom(held) : null, isSelf });
    if (!held && this.campaigning) void this.tryAcquire();
  }

  /** leaderd's {id, address}; anything else is named by its session, with one warning per holder. */
  private leaderFrom(item: KvItem): Leader {
    const ours = candidateFrom(item.Value ?? '');
    if (ours) return { ...ours, fencingToken: item.ModifyIndex };
    if (this.notedHolder !== item.Session) {
      this.notedHolder = item.Session ?? null;
      this.context.log.warn({ key: this.key, session: item.Session }, 'the Consul lock does not hold leaderd\'s {id, address}: naming its holder by its session');
    }
    return { id: `session ${item.Session}`, address: '', fencingToken: item.ModifyIndex };
  }

  /**
   * The lock is ours while we are out of the race: an acquire landed after we stopped waiting for
   * it. Kept, it would be renewed with every renewal and no one would lead; released, the next
   * candidate acquires it. The view names no leader meanwhile, so the core cannot lead on it,
   * not even if it campaigns again before the release has landed.
   */
  private releaseStray(): void {
    if (this.releasingStray) return;
    this.context.log.warn({ key: this.key, session: this.sessionId }, 'the Consul lock is held by this session while out of the race: releasing it');
    this.releasingStray = this.release()
      .catch((error) => this.context.log.warn({ err: errorMessage(error) }, 'cannot release the Consul lock; the next answer of the watch tries again'))
      .finally(() => {
        this.releasingStray = null;
      });
  }

  /**
   * One acquire at a time. Whatever its outcome, while the lock still looks free it is tried again
   * shortly: a refusal during the lock-delay, or an error while the servers elect a leader, is
   * followed by no change for the watch to report.
   */
  private tryAcquire(): Promise<void> {
    this.acquiring ??= this.acquireOnce()
      .catch((error) => this.context.log.warn({ err: this.backend.explain(error) ?? errorMessage(error) }, 'cannot acquire the Consul lock'))
      .finally(() => {
        this.acquiring = null;
        if (this.closed || !this.campaigning || this.current?.Session) return;
        clearTimeout(this.retryTimer);
        this.retryTimer = setTimeout(() => {
          if (!this.current?.Session) void this.tryAcquire();
        }, this.retryMs);
      });
    return this.acquiring;
  }

  /**
   * Acquires the lock only if it is still as last seen free: a transaction guarded by the index
   * we saw, so an acquire decided on an old answer fails instead of taking the lock again (which
   * would move its ModifyIndex, and with it the fencing token).
   */
  private async acquireOnce(): Promise<void> {
    const seen = this.current;
    if (this.closed || !this.campaigning || seen?.Session) return;
    const value = Buffer.from(JSON.stringify({ id: this.context.candidate.id, address: this.context.candidate.address })).toString('base64');
    const guard = seen ? { Verb: 'check-index', Key: this.key, Index: seen.ModifyIndex } : { Verb: 'check-not-exists', Key: this.key };
    const lock = { Verb: 'lock', Key: this.key, Value: value, Session: this.sessionId };
    try {
      await this.call('acquire', () =>
        this.client.transaction.create([{ KV: guard }, { KV: lock }] as never, this.timeout as never),
      );
    } catch (error) {
      // 409: refused, because the lock changed since we looked or is in its lock-delay.
      if (statusOf(error) !== 409) throw error;
    }
  }

  private get retryMs(): number {
    return Math.min(1000, Math.max(100, (this.options.lockDelaySeconds * 1000) / 4));
  }

  private async release(): Promise<void> {
    const id = this.sessionId;
    if (!id) return;
    // A release by a session that does not hold the lock changes nothing.
    await this.call('release', () => this.client.kv.set({ key: this.key, value: '', release: id, ...this.timeout }));
    if (this.current?.Session === id) {
      this.current = null;
      this.context.events.view({ leader: null, isSelf: false });
    }
  }
}


function statusOf(error: unknown): number | undefined {
  const e = error as { statusCode?: number; response?: { statusCode?: number } } | null;
  return e?.statusCode ?? e?.response?.statusCode;
}

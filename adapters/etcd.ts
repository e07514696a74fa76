/**
 * etcd: the election recipe of etcd's own `concurrency` package.
 *
 * Each session is a lease; its candidacy is the key PREFIX/ELECTION/<lease id in hex>, written
 * with the lease, so it dies with it. Candidates are ordered by create revision and the lowest
 * leads; the leader key's create revision is the fencing token (revisions only grow, cluster
 * wide, and a new candidacy is a new key). Each session reads the candidates once and then keeps
 * its copy current from one watch on the election's prefix: a leader change reaches every
 * replica as a pushed event, so it costs no requests per replica however many there are. A
 * session reads again only after changing its own candidacy or when the watch fails or loses its
 * stream; our own key deleted behind our back means the session is lost.
 *
 * The watch is created before the read, at the current revision, and the read's revision decides
 * which of its events are news. The other order (read, then watch from the read's revision)
 * leaves no gap either, but a watch that starts at a revision already written (our own campaign
 * lands in between) is caught up by etcd's background loop, every 100 ms: a leader change in
 * that window reached the replica up to 100 ms late. So a read waits for the watch: when the
 * watch stream cannot be had, neither can a view, and the core's deadline decides.
 *
 * A watch that loses its stream is replaced, with a read, rather than resumed by the client
 * library: the library resumes from the revision in etcd's answer to the resumed watch, which is
 * the current one, not the one it resumed from, so events still being caught up when the stream
 * drops again would be lost.
 *
 * The client library's retries, circuit breaker and `lost` event are not used: every request
 * has a deadline, and the core decides what a failure means.
 *
 * Other writers share the prefix. `etcdctl elect PREFIX/ELECTION PROPOSAL` is a candidate like
 * ours (same key layout, a lease, its proposal as a plain-text value), named by its proposal.
 * Every key counts, in create-revision order, as in etcd's recipe, whatever it holds: a key
 * without a lease that comes first blocks the election (nobody leads) until someone deletes it,
 * with a warning. Skipping such keys would let a plain `put` that adds or drops a lease reorder
 * the election at once, handing leadership to a key older than the leader's and so with a smaller
 * fencing token. Our own key overwritten by anyone (its lease no longer ours) ends the session.
 * Keys are compared as bytes. What a value says is read defensively and never throws.
 *
 * Member records live beside the election, not in it: PREFIX/.cluster/ELECTION/members/<lease id
 * in hex>, written with the session's lease so that it dies with the session (revoking the lease
 * on close deletes it at once; a killed member's goes when its lease expires), and the durable
 * PREFIX/.cluster/ELECTION/leader-position, without a lease. `.cluster` cannot be an election
 * name, so the election's watch never sees them and they never count as candidates. A publish is
 * one put. readCluster is one linearizable range over PREFIX/.cluster/ELECTION/, members and
 * position together, so it sees every write completed before it; it is measured as `range
 * records`, apart from `range`, which counts reads of the election. Keys there are anyone's to
 * write: a value over MAX_RECORD_BYTES, a key of another shape, and a member key without a lease
 * (nothing would ever delete it: it is no live member's) are skipped with one warning each.
 */
import {
  Etcd3,
  EtcdAuthenticationFailedError,
  EtcdLeaseInvalidError,
  EtcdPermissionDeniedError,
  EtcdUserNotFoundError,
  type IEvent,
  type IKeyValue,
  type IOptions,
  type Watcher,
} from 'etcd3';
import { ExponentialBackoff, noop } from 'cockatiel';
import type { Logger } from 'pino';
import type { Backend, ClusterRecords, Leader, Session, SessionContext } from '../src/backend.js';
import { BackendConfigError, MAX_RECORD_BYTES, SessionLostError, started, candidateFrom, isCandidateName } from '../src/backend.js';
import { sleep } from '../src/clock.js';
import { errorMessage } from '../src/elector.js';
import { watchTlsFiles, type TlsFileSettings, type TlsMaterial } from '../src/tls-files.js';

/** How many foreign keys a session remembers having warned about (in the election, and in the records). */
const NOTED_KEYS = 100;

/** A member record's name under PREFIX/.cluster/ELECTION/: its lease id in hex. */
const MEMBER_NAME = /^members\/[0-9a-f]+$/;
const POSITION_NAME = 'leader-position';

/**
 * A key as candidates are told apart: its bytes, one character each. Keys are bytes in etcd, and
 * two that differ only in bytes that are not UTF-8 would be one key as decoded text.
 */
function keyOf(kv: IKeyValue): string {
  return kv.key.toString('latin1');
}

/** etcd refuses pings more often than every 5 s (`--grpc-keepalive-min-time`): some margin. */
const KEEPALIVE_MS = 6000;
const KEEPALIVE_TIMEOUT_MS = 3000;

/** How often the TLS files are compared with what is in use (and at once on SIGHUP). */
const TLS_FILES_CHECK_MS = 10000;
/** How long a replaced client is kept for the requests still under way on it. */
const RETIRED_CLIENT_MS = 30000;

export interface EtcdOptions {
  readonly endpoints: readonly string[];
  readonly prefix: string;
  readonly tls: TlsFileSettings | null;
  readonly auth: { readonly username: string; readonly password: string } | null;
}

export class EtcdBackend implements Backend {
  readonly kind = 'etcd';
  /** The client new requests go to: replaced, with new TLS files, when they change. */
  private current: Etcd3;
  private readonly sessions = new Set<EtcdSession>();
  private readonly tlsWatch: ReturnType<typeof watchTlsFiles> | null = null;
  /**
   * Until a session has opened, what only the operator can fix (credentials refused, no
   * permission on the prefix, a certificate refused either way) ends leaderd with exit 2; after,
   * it may be a rotation half done, and the node retries, stepping down meanwhile.
   */
  private everOpened = false;
  private requestTimeoutMs = 2000;
  /** The TLS files in use. */
  private material: TlsMaterial = {};
  /**
   * Whether the current client logs in (with --etcd-username). etcd with authentication off
   * refuses every login, and the client library then fails every request: until etcd says
   * authentication is on, requests go without one (as etcd's Go client does), so that
   * credentials can be rolled out before `etcdctl auth enable`.
   */
  private loggingIn: boolean;
  private tokenForgottenAt = -Infinity;

  constructor(
    private readonly options: EtcdOptions,
    private readonly log: Logger,
  ) {
    this.loggingIn = options.auth !== null;
    if (options.tls) {
      this.tlsWatch = watchTlsFiles(
        options.tls,
        TLS_FILES_CHECK_MS,
        (material) => this.replaceClient(material, 'TLS files changed: new connections to etcd use them'),
        (error) => log.warn({ err: error.message }, 'the changed TLS files cannot be used yet; keeping the ones in use'),
      );
      this.material = this.tlsWatch.material;
    }
    this.current = this.newClient();
  }

  get client(): Etcd3 {
    return this.current;
  }

  private newClient(): Etcd3 {
    const { endpoints } = this.options;
    const tls = this.material;
    const auth = this.loggingIn ? this.options.auth : null;
    return new Etcd3({
      hosts: [...endpoints],
      ...(tls.ca || tls.cert ? { credentials: credentialsFrom(tls) } : {}),
      // The token exchange gets a deadline like every other request: a hung one would hold up
      // every request behind it.
      ...(auth ? { auth: { ...auth, callOptions: () => ({ deadline: new Date(Date.now() + this.requestTimeoutMs) }) } } : {}),
      dialTimeout: 2000,
      // A connection that goes silent without a reset (its server host vanished, a lost
      // conntrack entry) would otherwise carry every request into its own deadline until the
      // kernel gives up, many minutes later: the node would stay `unknown` all that time. An
      // unanswered ping closes it, and the next request opens a new one.
      grpcOptions: { 'grpc.keepalive_time_ms': KEEPALIVE_MS, 'grpc.keepalive_timeout_ms': KEEPALIVE_TIMEOUT_MS },
      // No retries or circuit breaker (the core retries on its own schedule), and watches that
      // come back within a second of etcd returning rather than the library's 30 s backoff.
      faultHandling: {
        host: () => noop,
        global: noop,
        watchBackoff: new ExponentialBackoff({ initialDelay: 100, maxDelay: 1000 }).next(),
      },
    });
  }

  async open(context: SessionContext): Promise<Session> {
    const { prefix } = this.options;
    this.requestTimeoutMs = context.requestTimeoutMs;
    const session = new EtcdSession(this, `${prefix}/${context.election}/`, `${prefix}/.cluster/${context.election}/`, context);
    // Known before it starts: a client replaced while it starts moves its first watch too.
    this.sessions.add(session);
    session.onClose(() => this.sessions.delete(session));
    try {
      await started(session);
    } catch (error) {
      this.adaptToAuthentication(error);
      const explained = this.explain(error);
      if (explained && !this.everOpened) throw new BackendConfigError(explained);
      throw explained ? new Error(explained, { cause: error }) : error;
    }
    this.everOpened = true;
    return session;
  }

  /**
   * Follows etcd's authentication being turned off or on (see `loggingIn`): called with every
   * failure a session reports; the request is retried on the session's own schedule.
   */
  adaptToAuthentication(error: unknown): void {
    if (!this.options.auth) return;
    const message = errorMessage(error);
    if (this.loggingIn && /authentication is not enabled/.test(message)) {
      this.loggingIn = false;
      this.replaceClient(this.material, 'etcd has authentication off: requests go without logging in until it is on');
    } else if (!this.loggingIn && /user name is empty|user name not found|invalid auth token|permission denied/.test(message)) {
      this.loggingIn = true;
      this.replaceClient(this.material, 'etcd has authentication on: logging in');
    }
  }

  /** Reads the TLS files again now, if they changed (SIGHUP). */
  reload(): void {
    this.tlsWatch?.check();
  }

  async shutdown(): Promise<void> {
    this.tlsWatch?.stop();
    this.current.close();
  }

  /**
   * New requests go to a client with the new files; each session's watch moves to it. The old
   * client is closed once what is under way on it has had its deadline.
   */
  private replaceClient(material: TlsMaterial, why: string): void {
    const retired = this.current;
    this.material = material;
    this.current = this.newClient();
    this.log.info(why);
    for (const session of this.sessions) session.rewatch();
    setTimeout(() => retired.close(), RETIRED_CLIENT_MS).unref();
  }

  /**
   * A failure only the operator can fix, as one line naming the setting; null for the others.
   * gRPC reports a refused handshake as "unavailable" with OpenSSL's words in the message.
   */
  explain(error: unknown): string | null {
    const { auth, prefix } = this.options;
    const message = errorMessage(error);
    if (error instanceof EtcdAuthenticationFailedError || error instanceof EtcdUserNotFoundError) {
      return `etcd-username: etcd refused ${auth ? `user ${auth.username} and its password (etcd-password-file)` : 'the credentials'}: ${message}`;
    }
    if (/user name is empty/.test(message)) {
      return 'etcd-username: etcd has authentication on and leaderd gave no credentials: set etcd-username and etcd-password-file, or a client certificate (etcd-cert-file) whose common name is a user';
    }
    if (error instanceof EtcdPermissionDeniedError) {
      return `etcd-username: ${auth ? `user ${auth.username}` : 'this client'} may not read and write ${prefix}/ on etcd (permission denied); grant its role readwrite on the prefix ${prefix}/`;
    }
    if (/Hostname\/IP does not match|ERR_TLS_CERT_ALTNAME/i.test(message)) {
      return `etcd-endpoints: etcd's certificate does not name the host it was reached at: ${tlsCause(message)}`;
    }
    if (/unable to verify|self[- ]signed certificate|certificate has expired|unable to get (local )?issuer/i.test(message)) {
      return `etcd-ca-file: etcd's certificate is not trusted: ${tlsCause(message)}`;
    }
    if (/alert (bad|unknown|unsupported|expired|revoked) certificate|alert unknown ca|alert certificate required|alert handshake failure/i.test(message)) {
      return `etcd-cert-file: etcd refused the client certificate${this.options.tls?.cert ? '' : ' (none was given; set etcd-cert-file and etcd-key-file)'}: ${tlsCause(message)}`;
    }
    if (/wrong version number|packet length too long|http\/1\.x server/i.test(message)) {
      return `etcd-endpoints: the scheme does not match the server (https:// to a plain server, or http:// to a TLS one): ${tlsCause(message)}`;
    }
    return null;
  }

  /**
   * Drops the cached authentication token, so that the next request logs in again (see
   * EtcdSession.watch); at most once per renew interval, as a login costs etcd a bcrypt check and
   * a Raft proposal, and an unreachable etcd fails every watch twice a second.
   */
  forgetToken(): void {
    if (!this.loggingIn) return;
    const now = performance.now();
    if (now - this.tokenForgottenAt < this.requestTimeoutMs) return;
    this.tokenForgottenAt = now;
    (this.current as unknown as { pool: { authenticator: { invalidateMetadata(): void } } }).pool.authenticator.invalidateMetadata();
  }
}

function credentialsFrom(tls: TlsMaterial): NonNullable<IOptions['credentials']> {
  // gRPC verifies with the system's CAs when given none.
  return { rootCertificate: tls.ca ?? (null as unknown as Buffer), ...(tls.cert ? { certChain: tls.cert, privateKey: tls.key } : {}) };
}

/** OpenSSL's reason, without the file and line of its source or gRPC's wrapping. */
function tlsCause(message: string): string {
  const ssl = /SSL routines:[^:]*:([^:\n]+)/.exec(message);
  if (ssl) return ssl[1]!.trim();
  const last = /Last error: (?:Error: )?([^.\n]+)/.exec(message);
  return (last?.[1] ?? message).trim();
}

class EtcdSession implements Session {
  private leaseId = '';
  /** The revision at which our candidacy key was known to exist; null while not campaigning. */
  private candidacySince: bigint | null = null;
  private closed = false;
  /** The candidates by key, as of the last read plus every watch event since. */
  private candidates = new Map<string, IKeyValue>();
  /** Keys already reported in the log (without a lease, or naming no one), by create revision. */
  private readonly noted = new Map<string, string>();
  /** The same for keys under the member records that are not records. */
  private readonly notedRecords = new Map<string, string>();
  /** Our candidacy's key as candidates are keyed (bytes, see keyOf). */
  private ownKeyBytes = '';
  /**
   * The revision `candidates` is complete through: the last read's, then the last watch event's.
   * Events at or below it are already in. Null until a read follows the current watch; that
   * watch's events wait in `early` until then.
   */
  private knownThrough: bigint | null = null;
  private early: IEvent[] = [];
  private watcher: Watcher | null = null;
  private syncing: Promise<void> | null = null;
  private syncAgain = false;

  private closeListener: (() => void) | null = null;

  constructor(
    private readonly backend: EtcdBackend,
    private readonly directory: string,
    /** Where the member records and the leader position are, outside the election's prefix. */
    private readonly records: string,
    private readonly context: SessionContext,
  ) {}

  /** The backend's current client: a TLS rotation moves every new request to a new one. */
  private get client(): Etcd3 {
    return this.backend.client;
  }

  onClose(listener: () => void): void {
    this.closeListener = listener;
  }

  /** Watches again, on the backend's current client, and reads (its client was replaced). */
  rewatch(): void {
    if (this.closed) return;
    this.unwatch();
    this.sync();
  }

  private get ownKey(): string {
    return `${this.directory}${BigInt(this.leaseId).toString(16)}`;
  }

  private get memberKey(): string {
    return `${this.records}members/${BigInt(this.leaseId).toString(16)}`;
  }

  private deadline() {
    return { deadline: new Date(Date.now() + this.context.requestTimeoutMs) };
  }

  async start(): Promise<void> {
    const { ttlSeconds } = this.context;
    await this.probePermissions();
    const grant = await this.client.leaseClient.leaseGrant({ TTL: ttlSeconds }, this.deadline());
    this.leaseId = grant.ID;
    this.ownKeyBytes = Buffer.from(this.ownKey).toString('latin1');
    if (Number(grant.TTL) !== ttlSeconds) {
      void this.revoke().catch(() => undefined);
      throw new BackendConfigError(
        `ttl: etcd granted a ${grant.TTL} s lease for the ${ttlSeconds} s asked (its minimum lease TTL is higher); raise --ttl`,
      );
    }
    this.sync();
  }

  /**
   * Asks for read and write permission on both our key ranges, writing nothing: etcd checks a
   * transaction's every branch and comparison before it runs any, and this one's comparison never
   * holds. A role without them fails here, at start, rather than at the first campaign.
   */
  private async probePermissions(): Promise<void> {
    await this.client
      .if(this.directory, 'Create', '<', 0)
      .then(this.client.put(`${this.directory}.permission-probe`).value(''), this.client.put(`${this.records}.permission-probe`).value(''))
      .else(this.client.getAll().prefix(this.directory).limit(1), this.client.getAll().prefix(this.records).limit(1))
      .options(this.deadline())
      .commit();
  }

  async renew(): Promise<void> {
    try {
      await this.keepAlive();
    } catch (error) {
      throw this.explained(error);
    }
  }

  /**
   * An error that only the operator can fix names its setting in the message (it is logged).
   * Every failure is also a chance that etcd forgot our token or turned authentication on or off.
   */
  private explained(error: unknown): unknown {
    this.backend.adaptToAuthentication(error);
    this.backend.forgetToken();
    const explanation = this.backend.explain(error);
    return explanation && !(error instanceof SessionLostError) ? new Error(explanation, { cause: error }) : error;
  }

  private async keepAlive(): Promise<void> {
    const stream = await this.client.leaseClient.leaseKeepAlive(this.deadline());
    try {
      const answer = await new Promise<{ TTL: string }>((resolve, reject) => {
        stream.on('data', resolve);
        stream.on('error', reject);
        stream.write({ ID: this.leaseId });
      });
      if (Number(answer.TTL) <= 0) throw new SessionLostError(`etcd lease ${this.leaseId} has expired`);
    } finally {
      stream.end();
    }
  }

  async campaign(): Promise<void> {
    const value = JSON.stringify({ id: this.context.candidate.id, address: this.context.candidate.address });
    // Create only if absent: a retried campaign must not move the key's create revision.
    const answer = await this.client
      .if(this.ownKey, 'Create', '==', 0)
      .then(this.client.put(this.ownKey).value(value).lease(this.leaseId))
      .options(this.deadline())
      .commit()
      .catch((error: unknown) => {
        throw this.explained(error);
      });
    this.candidacySince = BigInt(answer.header.revision);
    await this.syncNow();
  }

  async withdraw(): Promise<void> {
    this.candidacySince = null;
    await this.client.delete().key(this.ownKey).options(this.deadline()).exec();
    await this.syncNow();
  }

  async close(): Promise<void> {
    this.closed = true;
    this.closeListener?.();
    this.candidacySince = null;
    this.unwatch();
    await this.revoke();
  }

  async publishMember(record: string): Promise<void> {
    try {
      await this.context.measure('put', () => this.client.put(this.memberKey).value(record).lease(this.leaseId).options(this.deadline()).exec());
    } catch (error) {
      // Only a lease that is gone refuses a put on it: so is the session.
      if (!(error instanceof EtcdLeaseInvalidError)) throw error;
      const lost = new SessionLostError(`etcd lease ${this.leaseId} is gone (writing our member record)`);
      this.context.events.lost(lost);
      throw lost;
    }
  }

  async publishLeaderPosition(record: string): Promise<void> {
    await this.context.measure('put', () =>
      this.client.put(`${this.records}${POSITION_NAME}`).value(record).options(this.deadline()).exec(),
    );
  }

  async readCluster(): Promise<ClusterRecords> {
    const answer = await this.context.measure('range records', () => this.client.getAll().prefix(this.records).options(this.deadline()).exec());
    const from = Buffer.from(this.records).length;
    const members: string[] = [];
    let leaderPosition: string | null = null;
    const present = new Set<string>();
    for (const kv of answer.kvs) {
      present.add(keyOf(kv));
      const name = kv.key.subarray(from).toString('latin1');
      if (kv.value.length > MAX_RECORD_BYTES) {
        this.noteOnce(kv, `a value under the member records is larger than ${MAX_RECORD_BYTES} bytes: skipped`, this.notedRecords);
      } else if (name === POSITION_NAME) {
        leaderPosition = kv.value.toString();
      } else if (MEMBER_NAME.test(name) && kv.lease !== '0') {
        members.push(kv.value.toString());
      } else {
        this.noteOnce(kv, 'a key under the member records is not a live record: skipped', this.notedRecords);
      }
    }
    for (const key of this.notedRecords.keys()) if (!present.has(key)) this.notedRecords.delete(key);
    return { members, leaderPosition };
  }

  private async revoke(): Promise<void> {
    await this.client.leaseClient.leaseRevoke({ ID: this.leaseId }, this.deadline());
  }

  private syncNow(): Promise<void> {
    this.sync();
    return this.syncing ?? Promise.resolve();
  }

  /** Reads the candidates, reports the view, and watches what can change it. One at a time. */
  private sync(): void {
    if (this.syncing) {
      this.syncAgain = true;
      return;
    }
    this.syncing = (async () => {
      do {
        this.syncAgain = false;
        await this.syncOnce();
      } while (this.syncAgain && !this.closed);
    })().finally(() => {
      this.syncing = null;
    });
  }

  private async syncOnce(): Promise<void> {
    const { log } = this.context;
    while (!this.closed) {
      try {
        if (!this.watcher) await this.watch();
        const watcher = this.watcher;
        if (this.closed) return;
        if (!watcher) continue;
        const answer = await this.context.measure('range', () => this.client.getAll().prefix(this.directory).options(this.deadline()).exec());
        if (this.closed) return;
        // Read under a watch that has since been replaced: the new one needs a read of its own.
        if (this.watcher !== watcher) continue;
        const revision = BigInt(answer.header.revision);
        // The read and the watch are separate streams: events newer than the read may have been
        // applied before its answer arrived, and then the copy is already newer than the read.
        if (this.knownThrough === null || revision >= this.knownThrough) {
          this.candidates = new Map(answer.kvs.map((kv) => [keyOf(kv), kv]));
          this.knownThrough = revision;
        }
        // Missing from a copy taken after our key was written: deleted behind our back.
        const since = this.candidacySince;
        const own = this.candidates.get(this.ownKeyBytes);
        if (since !== null && this.knownThrough >= since && !own) {
          this.context.events.lost(new SessionLostError(`our candidacy ${this.ownKey} was deleted`));
          return;
        }
        if (own && !this.isOurs(own)) return this.overwritten();
        const early = this.early;
        this.early = [];
        this.apply(early);
        return;
      } catch (error) {
        this.backend.adaptToAuthentication(error);
        log.warn({ err: this.backend.explain(error) ?? errorMessage(error) }, 'cannot read the election; retrying');
        await sleep(Math.min(this.context.requestTimeoutMs, 500));
      }
    }
  }

  /** Applies the events of one watch answer that are news, then reports the view. */
  private apply(events: readonly IEvent[]): void {
    if (this.closed) return;
    const known = this.knownThrough;
    if (known === null) {
      this.early.push(...events);
      return;
    }
    // One answer holds whole revisions (a transaction's events share one): what is news is
    // judged against the bound from before the answer.
    let through = known;
    for (const { type, kv } of events) {
      const revision = BigInt(kv.mod_revision);
      if (revision <= known) continue;
      if (revision > through) through = revision;
      const key = keyOf(kv);
      if (type === 'Put') {
        this.candidates.set(key, kv);
        if (key === this.ownKeyBytes && !this.isOurs(kv)) return this.overwritten();
      } else {
        this.candidates.delete(key);
        const since = this.candidacySince;
        if (key === this.ownKeyBytes && since !== null && revision >= since) {
          this.context.events.lost(new SessionLostError(`our candidacy ${this.ownKey} was deleted`));
          return;
        }
      }
    }
    this.knownThrough = through;
    this.report();
  }

  /** The lowest create revision leads, whatever the key holds (see the module comment). */
  private report(): void {
    for (const key of this.noted.keys()) if (!this.candidates.has(key)) this.noted.delete(key);
    let first: IKeyValue | null = null;
    for (const kv of this.candidates.values()) {
      if (!first || BigInt(kv.create_revision) < BigInt(first.create_revision)) first = kv;
    }
    if (first && first.lease === '0') this.noteOnce(first, 'a key without a lease leads the election: nobody can lead until it is deleted');
    this.context.events.view({ leader: first ? this.leaderFrom(first) : null, isSelf: first !== null && keyOf(first) === this.ownKeyBytes });
  }

  /** Our key as we wrote it: on our lease. A put by anyone else gives it another lease, or none. */
  private isOurs(kv: IKeyValue): boolean {
    return BigInt(kv.lease) === BigInt(this.leaseId);
  }

  private overwritten(): void {
    this.context.events.lost(new SessionLostError(`our candidacy ${this.ownKey} was overwritten by another writer`));
  }

  /** leaderd's {id, address}; else the plain-text proposal of `etcdctl elect`; else the key. */
  private leaderFrom(kv: IKeyValue): Leader {
    const fencingToken = Number(kv.create_revision);
    const text = kv.value.toString();
    const ours = candidateFrom(text);
    if (ours) return { ...ours, fencingToken };
    if (isCandidateName(text)) return { id: text, address: text, fencingToken };
    this.noteOnce(kv, 'the leading key names no candidate: naming it by its key');
    return { id: kv.key.toString(), address: '', fencingToken };
  }

  /** Logs a warning about a key once, not on every event that shows it again. */
  private noteOnce(kv: IKeyValue, message: string, noted = this.noted): void {
    const key = keyOf(kv);
    if (noted.get(key) === kv.create_revision) return;
    // Bounded: thousands of foreign keys must not grow it (or the log) without end. Past the bound
    // new keys go unreported, rather than evicting one that a later read would report again.
    if (noted.size >= NOTED_KEYS) return;
    noted.set(key, kv.create_revision);
    this.context.log.warn({ key: kv.key.toString(), createRevision: kv.create_revision }, message);
  }

  /**
   * Watches the election from the current revision; resolves once etcd has created the watch, so
   * a read after it misses nothing.
   */
  private async watch(): Promise<void> {
    const watcher = this.client.watch().prefix(this.directory).watcher();
    const replace = (what: string) => (error: unknown) => {
      if (this.watcher !== watcher) return;
      this.context.log.warn({ err: errorMessage(error) }, `${what}; watching and reading the election again`);
      this.unwatch();
      this.sync();
    };
    // A watch being cancelled may still deliver: only the current one speaks. An event that
    // cannot be applied would be thrown out of the client's stream handler, which ends the
    // process: the copy is rebuilt from a read instead.
    watcher.on('data', (response) => {
      if (this.watcher !== watcher) return;
      try {
        this.apply(response.events);
      } catch (error) {
        replace('cannot apply a watch event')(error);
      }
    });
    // Refused, or compacted past our revision; or its stream broke (see the module comment).
    watcher.on('error', replace('watch failed'));
    watcher.on('disconnected', replace('watch stream lost'));
    this.watcher = watcher;
    const created = new Promise<void>((resolve, reject) => {
      watcher.once('connected', () => resolve());
      watcher.once('error', reject);
      watcher.once('disconnected', reject);
    });
    try {
      await this.context.measure('watch', () => created);
    } catch (error) {
      // It may still be created later, at whatever revision is current then: cancel it.
      if (this.watcher === watcher) this.unwatch();
      // etcd forgets the tokens it issued when it restarts, and a watch stream refused for that
      // ends without saying why; the client library logs in again only for unary requests, so
      // the watch would be refused forever. A failed watch logs in again (one request).
      this.backend.forgetToken();
      throw error;
    }
  }

  /** Ends the watch; its copy of the candidates is no longer kept current. */
  private unwatch(): void {
    void this.watcher?.cancel().catch(() => undefined);
    this.watcher = null;
    this.knownThrough = null;
    this.early = [];
  }
}

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
 */
import { randomBytes } from 'node:crypto';
import Consul from 'consul';
import type { Backend, ClusterRecords, Leader, Session, SessionContext } from '../src/backend.js';
import { MAX_RECORD_BYTES, SessionLostError, started, candidateFrom } from '../src/backend.js';
import { errorMessage } from '../src/elector.js';

export interface ConsulOptions {
  /** The agent's HTTP API, e.g. http://127.0.0.1:8500 */
  readonly address: string;
  readonly token: string | null;
  readonly keyPrefix: string;
  readonly datacenter: string | null;
  readonly sessionTtlSeconds: number;
  readonly checkTtlSeconds: number;
  readonly lockDelaySeconds: number;
}

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
  private readonly client: Consul;

  constructor(private readonly options: ConsulOptions) {
    const url = new URL(options.address);
    this.client = new Consul({
      host: url.hostname,
      port: Number(url.port || (url.protocol === 'https:' ? 443 : 80)),
      secure: url.protocol === 'https:',
      defaults: { ...(options.token ? { token: options.token } : {}), ...(options.datacenter ? { dc: options.datacenter } : {}) },
    });
  }

  open(context: SessionContext): Promise<Session> {
    return started(new ConsulSession(this.client, this.options, context));
  }

  async shutdown(): Promise<void> {}
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

  constructor(
    private readonly client: Consul,
    private readonly options: ConsulOptions,
    private readonly context: SessionContext,
  ) {
    this.serviceId = `leaderd-${context.election}-${randomBytes(6).toString('hex')}`;
    this.checkId = `${this.serviceId}-alive`;
    this.key = `${options.keyPrefix}/${context.election}/leader`.replace(/^\//, '');
    this.records = `${options.keyPrefix}/.cluster/${context.election}`.replace(/^\//, '');
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
    this.startWatch();
  }

  async renew(): Promise<void> {
    const id = this.sessionId!;
    await this.call('check', () => this.client.agent.check.pass({ id: this.checkId, ...this.timeout }));
    try {
      const renewed = await this.client.session.renew({ id, ...this.timeout });
      if (!Array.isArray(renewed) || renewed.length === 0) throw new SessionLostError(`Consul session ${id} is gone`);
    } catch (error) {
      if (statusOf(error) === 404) throw new SessionLostError(`Consul session ${id} was invalidated`);
      throw error;
    }
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
    const written = await this.call('put', () => this.client.kv.set({ key, value: record, acquire: this.sessionId!, ...this.timeout }));
    // Refused: the session no longer holds its key, as after Consul invalidated it (renew() reports the loss).
    if (!written) throw new Error(`Consul refused the member record ${key}: is the session still valid?`);
  }

  async publishLeaderPosition(record: string): Promise<void> {
    const key = `${this.records}/leader-position`;
    await this.call('put', () => this.client.kv.set({ key, value: record, ...this.timeout }));
  }

  async readCluster(): Promise<ClusterRecords> {
    const prefix = `${this.records}/`;
    const items = (await this.call('get', () =>
      this.client.kv.get({ key: prefix, recurse: true, consistent: true, buffer: true, ...this.timeout } as never),
    )) as unknown as RecordItem[] | undefined;
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

  private call<T>(operation: string, request: () => Promise<T>): Promise<T> {
    return this.context.measure(operation, request);
  }

  private startWatch(): void {
    const watch = this.client.watch({
      method: this.client.kv.get,
      options: { key: this.key, wait: '30s' },
      backoffFactor: 100,
      backoffMax: 1000,
    });
    watch.on('change', (data: KvItem | null) => this.observe(data ?? null));
    watch.on('error', (error: unknown) => this.context.log.warn({ err: errorMessage(error) }, 'watching the Consul lock failed; retrying'));
    // The helper gives up for good on some answers (400, no index): without a watch we are blind.
    watch.on('end', () => {
      if (!this.closed) this.context.events.lost(new SessionLostError('the watch on the Consul lock ended'));
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
      .catch((error) => this.context.log.warn({ err: errorMessage(error) }, 'cannot acquire the Consul lock'))
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

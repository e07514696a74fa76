/**
 * Consul: a session per candidate and a KV lock, the pattern of `consul lock`.
 *
 * Each session is bound to `serfHealth` and to a TTL check of its own that leaderd passes on every
 * renewal, so when a sidecar dies its lock is freed after the short check TTL instead of up to
 * twice the session TTL. That check TTL is therefore the lease the core times its deadline from
 * (Config.leaseSeconds): Consul invalidates the session no sooner than the check TTL after the
 * last pass, and each renewal also renews the session at the servers, so it proves the session
 * alive where locks are decided.
 *
 * The lock is PREFIX/ELECTION/leader, acquired with ?acquire=<session> and holding {id, address};
 * everyone watches it with blocking queries. The fencing token is the key's ModifyIndex while
 * held: the Raft index of the acquire, which only grows across the whole cluster, even when the
 * key is deleted and created again (a LockIndex would restart at 1 on a new key).
 */
import { randomBytes } from 'node:crypto';
import Consul from 'consul';
import type { Backend, Leader, Session, SessionContext } from '../src/backend.js';
import { SessionLostError } from '../src/backend.js';
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

/** Consul refuses session TTLs below 10 s. */
export const CONSUL_MINIMUM_TTL_SECONDS = 10;

interface KvItem {
  ModifyIndex: number;
  Session?: string;
  Value: string | null;
}

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

  async open(context: SessionContext): Promise<Session> {
    const session = new ConsulSession(this.client, this.options, context);
    try {
      await session.start();
    } catch (error) {
      await session.close().catch(() => undefined);
      throw error;
    }
    return session;
  }

  async shutdown(): Promise<void> {}
}

class ConsulSession implements Session {
  private readonly checkId: string;
  private readonly key: string;
  private sessionId: string | null = null;
  private checkRegistered = false;
  private campaigning = false;
  private closed = false;
  private watch: ReturnType<Consul['watch']> | null = null;
  private current: KvItem | null = null;

  constructor(
    private readonly client: Consul,
    private readonly options: ConsulOptions,
    private readonly context: SessionContext,
  ) {
    this.checkId = `leaderd-${context.election}-${randomBytes(6).toString('hex')}`;
    this.key = `${options.keyPrefix}/${context.election}/leader`.replace(/^\//, '');
  }

  private get timeout() {
    return { timeout: this.context.requestTimeoutMs };
  }

  async start(): Promise<void> {
    const { candidate, election } = this.context;
    const name = `leaderd ${election} ${candidate.id}`;
    await this.call('check', () =>
      // No request timeout here: this call's `timeout` would be the check's own (the core still
      // bounds the call).
      this.client.agent.check.register({
        id: this.checkId,
        name,
        ttl: `${this.options.checkTtlSeconds}s`,
        status: 'passing',
      } as unknown as Parameters<Consul['agent']['check']['register']>[0]),
    );
    this.checkRegistered = true;
    const created = await this.call('session', () =>
      this.client.session.create({
        name,
        ttl: `${this.options.sessionTtlSeconds}s`,
        lockdelay: `${this.options.lockDelaySeconds}s`,
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
    this.campaigning = true;
    await this.tryAcquire();
  }

  async withdraw(): Promise<void> {
    this.campaigning = false;
    await this.release();
  }

  async close(): Promise<void> {
    this.closed = true;
    this.campaigning = false;
    this.watch?.end();
    const id = this.sessionId;
    // Destroying the session releases its lock at once.
    if (id) await this.call('session', () => this.client.session.destroy({ id, ...this.timeout })).catch(() => undefined);
    if (this.checkRegistered) await this.call('check', () => this.client.agent.check.deregister({ id: this.checkId, ...this.timeout }));
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
    this.watch = watch;
  }

  private observe(item: KvItem | null): void {
    if (this.closed) return;
    this.current = item;
    const held = item?.Session ? item : null;
    const isSelf = held !== null && held.Session === this.sessionId;
    this.context.events.view({ leader: held ? leaderFrom(held) : null, isSelf });
    if (!held && this.campaigning) {
      void this.tryAcquire().catch((error) => this.context.log.warn({ err: errorMessage(error) }, 'cannot acquire the Consul lock'));
    }
  }

  private async tryAcquire(): Promise<void> {
    // Acquiring again while holding would move the ModifyIndex, and with it the fencing token.
    if (this.closed || this.current?.Session === this.sessionId) return;
    const value = JSON.stringify({ id: this.context.candidate.id, address: this.context.candidate.address });
    // The client answers a refused acquire with undefined rather than false.
    const acquired = await this.call('acquire', () => this.client.kv.set({ key: this.key, value, acquire: this.sessionId!, ...this.timeout }));
    if (!acquired) return;
    // Report it now rather than when the blocking query returns.
    const read = { key: this.key, consistent: true, ...this.timeout } as { key: string };
    const item = await this.call('get', () => this.client.kv.get(read));
    if (item) this.observe(item as KvItem);
  }

  private async release(): Promise<void> {
    if (this.current?.Session !== this.sessionId || !this.sessionId) return;
    await this.call('release', () => this.client.kv.set({ key: this.key, value: '', release: this.sessionId!, ...this.timeout }));
  }
}

function leaderFrom(item: KvItem): Leader {
  let parsed: { id?: unknown; address?: unknown } = {};
  try {
    parsed = JSON.parse(Buffer.from(item.Value ?? '', 'utf8').toString());
  } catch {
    // a lock not written by leaderd
  }
  return {
    id: typeof parsed.id === 'string' ? parsed.id : `session ${item.Session}`,
    address: typeof parsed.address === 'string' ? parsed.address : '',
    fencingToken: item.ModifyIndex,
  };
}

function statusOf(error: unknown): number | undefined {
  const e = error as { statusCode?: number; response?: { statusCode?: number } } | null;
  return e?.statusCode ?? e?.response?.statusCode;
}

/**
 * ZooKeeper: the leader-election recipe from ZooKeeper's own documentation.
 *
 * Each session is a ZooKeeper session whose timeout is the ttl. Its candidacy is an
 * EPHEMERAL|SEQUENTIAL node PREFIX/ELECTION/<guid>-n_<sequence> holding {id, address}; the lowest
 * sequence leads and its czxid (a cluster-wide, ever-growing transaction id) is the fencing token.
 *
 * No herd on a leader change: a candidate lists the children only when its predecessor goes.
 * Everyone also watches the leader, but when it goes, the others learn the new leader by
 * reading forward through the candidates they already know (sequence order never changes, and
 * later arrivals sort after them), one small read each, not a full listing.
 *
 * A create whose reply was lost is found again by its guid. Leadership is claimed only for a
 * node whose ephemeralOwner is this session. A renewal is a `sync`. Answered through a follower,
 * it touches the session at the ensemble leader (where sessions are expired) only with the
 * follower's next ping, and not at all if that ping is lost: the config caps the renew deadline at
 * half the session timeout for that reason (adapters/index.ts).
 *
 * The session timeout is the lease: it must be the ttl on every connection, not only the first.
 * Each server bounds it by its own min/max when a client reconnects, and the client asks for the
 * value it was given on every later reconnect, so a session that came back with another timeout
 * is given up as lost. A server that cannot grant the ttl refuses the configuration when leaderd
 * starts; once a session has been granted it, such a server is a misconfigured member, and opening
 * is tried again.
 *
 * What a candidate node holds is read defensively: anything but leaderd's {id, address} names the
 * candidate by its node, with one warning.
 */
import { randomBytes } from 'node:crypto';
import { createRequire } from 'node:module';
import type ZooKeeperClient from 'zookeeper';
import type { Backend, Leader, Session, SessionContext } from '../src/backend.js';
import { BackendConfigError, SessionLostError, started, candidateFrom } from '../src/backend.js';
import { sleep } from '../src/clock.js';
import { errorMessage } from '../src/elector.js';

// The native client is CommonJS and loaded only when this backend is used.
const require = createRequire(import.meta.url);
type ZooKeeper = InstanceType<typeof ZooKeeperClient>;

export interface ZookeeperOptions {
  /** host:port[,host:port...][/chroot] */
  readonly connect: string;
  readonly prefix: string;
  /** "user:password" for digest authentication, or null. */
  readonly auth: string | null;
}

interface Stat {
  czxid: number;
  ephemeralOwner: string;
}

const CANDIDATE = /^([0-9a-f]{32})-n_(\d{10})$/;

export class ZookeeperBackend implements Backend {
  readonly kind = 'zookeeper';
  /** Whether a session was ever granted the ttl: from then on a server that bounds it lower is not a configuration error. */
  private readonly granted = { once: false };

  constructor(private readonly options: ZookeeperOptions) {}

  open(context: SessionContext): Promise<Session> {
    return started(new ZookeeperSession(this.options, `${this.options.prefix}/${context.election}`, context, this.granted));
  }

  async shutdown(): Promise<void> {}
}

class ZookeeperSession implements Session {
  private readonly guid = randomBytes(16).toString('hex');
  private zk: ZooKeeper | null = null;
  private constants!: typeof ZooKeeperClient.constants;
  private ownNode: string | null = null;
  /** Candidates as last listed, in sequence order. */
  private known: string[] = [];
  private leaderNode: string | null = null;
  private predecessor: string | null = null;
  /** Nodes with a deletion watch armed (ZooKeeper watches fire once). */
  private readonly watched = new Set<string>();
  private closed = false;
  private syncing: Promise<void> | null = null;
  private syncAgain: 'list' | 'follow' | null = null;
  /** Candidate nodes whose data was already reported as not leaderd's. */
  private readonly noted = new Set<string>();

  constructor(
    private readonly options: ZookeeperOptions,
    private readonly path: string,
    private readonly context: SessionContext,
    private readonly granted: { once: boolean },
  ) {}

  async start(): Promise<void> {
    const ZK = require('zookeeper') as typeof ZooKeeperClient;
    this.constants = ZK.constants;
    const timeoutMs = this.context.ttlSeconds * 1000;
    const zk = new ZK({ connect: this.options.connect, timeout: timeoutMs, debug_level: 0, host_order_deterministic: false });
    this.zk = zk;
    // The client retries an unreachable ensemble for ever: give up here, or the session would
    // open long after the core stopped waiting for it.
    await new Promise<void>((resolve, reject) => {
      const fail = () => {
        clearTimeout(timer);
        reject(new Error(`cannot connect to ZooKeeper at ${this.options.connect}`));
      };
      const timer = setTimeout(fail, this.context.requestTimeoutMs);
      zk.once('connect', () => {
        clearTimeout(timer);
        resolve();
      });
      zk.once('close', fail);
      zk.init({});
    });
    // The client passes itself first, then the state it closed in. It reports "expired" both for
    // a session the ensemble expired and for one it gave up on itself (see the README).
    zk.on('close', (_client: unknown, state: number) => {
      if (this.closed) return;
      const why =
        state === this.constants.ZOO_EXPIRED_SESSION_STATE
          ? 'the ZooKeeper client closed the session as expired'
          : `the ZooKeeper session closed (state ${state})`;
      this.context.events.lost(new SessionLostError(why));
    });
    zk.on('connecting', () => this.context.log.warn('connection to ZooKeeper lost; reconnecting'));
    zk.on('connect', () => {
      if (this.closed) return;
      // The server it reconnected to may bound the timeout otherwise, and the client asks for the
      // last one granted on every later reconnect: a session whose timeout is no longer the ttl
      // could expire before the core's deadline, so it is not kept.
      const renegotiated = zk.timeout;
      if (renegotiated !== timeoutMs) {
        this.context.log.warn({ sessionTimeoutMs: renegotiated, askedMs: timeoutMs }, 'ZooKeeper changed the session timeout on reconnecting');
        this.context.events.lost(
          new SessionLostError(`ZooKeeper changed the session timeout to ${renegotiated / 1000} s on reconnecting (the ttl is ${this.context.ttlSeconds} s)`),
        );
        return;
      }
      this.context.log.info({ sessionTimeoutMs: renegotiated }, 'reconnected to ZooKeeper');
      this.sync('list');
    });

    const negotiated = zk.timeout;
    if (negotiated !== timeoutMs) {
      const bounds = `ZooKeeper negotiated a ${negotiated / 1000} s session for the ${this.context.ttlSeconds} s asked`;
      // Granted before, by another server: this one is configured otherwise. Another try may
      // reach a server that grants the ttl; stopping leaderd would not help.
      if (this.granted.once) throw new Error(`${bounds}: this server bounds session timeouts otherwise than the ensemble did before`);
      throw new BackendConfigError(
        `ttl: ${bounds} (servers allow 2 to 20 times their tickTime unless configured otherwise); choose a ttl in that range`,
      );
    }
    this.granted.once = true;
    this.context.log.info({ sessionTimeoutMs: negotiated, sessionId: zk.client_id }, 'ZooKeeper session established');
    if (this.options.auth) await this.call('auth', () => this.addAuth(this.options.auth!));
    await this.call('mkdirp', () => new Promise<void>((resolve, reject) => zk.mkdirp(this.path, (error) => (error ? reject(error) : resolve()))));
    if (this.options.auth) await this.restrict(this.path);
    this.sync('list');
  }

  async renew(): Promise<void> {
    const zk = this.client();
    await zk.sync(this.path);
  }

  async campaign(): Promise<void> {
    if (this.ownNode) return;
    const zk = this.client();
    const data = JSON.stringify({ id: this.context.candidate.id, address: this.context.candidate.address });
    const flags = this.constants.ZOO_EPHEMERAL | this.constants.ZOO_SEQUENCE;
    let created: string;
    try {
      created = await this.call('create', () => zk.create(`${this.path}/${this.guid}-n_`, data, flags));
    } catch (error) {
      // The create may have succeeded with its reply lost: our guid finds it.
      const found = (await this.listCandidates()).find((name) => name.startsWith(this.guid));
      if (!found) throw error;
      created = `${this.path}/${found}`;
    }
    this.ownNode = created.slice(created.lastIndexOf('/') + 1);
    if (this.options.auth) await this.restrict(created);
    await this.syncNow('list');
  }

  async withdraw(): Promise<void> {
    this.ownNode = null;
    // Every node of ours, including one whose create reply was lost.
    for (const node of await this.listCandidates()) {
      if (node.startsWith(this.guid)) await this.deleteIfPresent(`${this.path}/${node}`);
    }
    await this.syncNow('list');
  }

  async close(): Promise<void> {
    this.closed = true;
    this.ownNode = null;
    this.zk?.close();
  }

  private client(): ZooKeeper {
    if (!this.zk || this.closed) throw new SessionLostError('the ZooKeeper session is closed');
    return this.zk;
  }

  private call<T>(operation: string, request: () => Promise<T>): Promise<T> {
    return this.context.measure(operation, request);
  }

  private listCandidates(): Promise<string[]> {
    return this.call('children', async () => {
      const names = (await this.client().get_children(this.path, false)).filter((name) => CANDIDATE.test(name));
      return names.sort((a, b) => sequenceOf(a) - sequenceOf(b));
    });
  }

  private async read(node: string): Promise<{ stat: Stat; data: string } | null> {
    try {
      const [stat, data] = (await this.call('get', () => this.client().get(`${this.path}/${node}`, false))) as [Stat, string];
      return { stat, data: String(data) };
    } catch (error) {
      if (errorCode(error) === this.constants.ZNONODE) return null;
      throw error;
    }
  }

  private syncNow(mode: 'list' | 'follow'): Promise<void> {
    this.sync(mode);
    return this.syncing ?? Promise.resolve();
  }

  /** Re-reads the election and re-arms the watches; one at a time, a listing wins over a follow. */
  private sync(mode: 'list' | 'follow'): void {
    if (this.syncing) {
      if (this.syncAgain !== 'list') this.syncAgain = mode;
      return;
    }
    this.syncing = (async () => {
      let next: 'list' | 'follow' | null = mode;
      while (next && !this.closed) {
        this.syncAgain = null;
        await this.syncOnce(next);
        next = this.syncAgain;
      }
    })().finally(() => {
      this.syncing = null;
    });
  }

  private async syncOnce(mode: 'list' | 'follow'): Promise<void> {
    while (!this.closed) {
      try {
        if (mode === 'list' || this.known.length === 0) await this.list();
        else await this.follow();
        return;
      } catch (error) {
        if (this.closed || error instanceof SessionLostError) return;
        this.context.log.warn({ err: errorMessage(error) }, 'cannot read the election; retrying');
        await sleep(Math.min(this.context.requestTimeoutMs, 500));
      }
    }
  }

  /** Lists the candidates, reports the leader, watches the predecessor, the leader and our node. */
  private async list(): Promise<void> {
    const candidates = await this.listCandidates();
    this.known = candidates;
    const own = this.ownNode;
    const index = own ? candidates.indexOf(own) : -1;
    if (own && index < 0) {
      this.context.events.lost(new SessionLostError(`our candidacy ${this.path}/${own} was deleted`));
      return;
    }
    this.predecessor = own && index > 0 ? candidates[index - 1]! : null;
    if (this.predecessor) this.watchDeletion(this.predecessor);
    if (own) this.watchDeletion(own);
    // Only a full listing can show that no candidate precedes ours: only here may we lead.
    for (const node of candidates) {
      const found = await this.read(node);
      if (!found) continue;
      const isSelf = node === own && found.stat.ephemeralOwner === String(this.client().client_id);
      this.reportLeader(node, found, isSelf);
      return;
    }
    this.leaderNode = null;
    this.context.events.view({ leader: null, isSelf: false });
  }

  /**
   * The leader went: the next known candidate that still exists leads now, unless that is our
   * own node, which only a full listing may conclude.
   */
  private async follow(): Promise<void> {
    const gone = this.leaderNode;
    if (gone && (await this.read(gone))) return;
    for (let i = (gone ? this.known.indexOf(gone) : -1) + 1; i < this.known.length; i++) {
      const node = this.known[i]!;
      if (node === this.ownNode) return this.list();
      const found = await this.read(node);
      if (found) return this.reportLeader(node, found, false);
    }
    await this.list();
  }

  private reportLeader(node: string, found: { stat: Stat; data: string }, isSelf: boolean): void {
    this.leaderNode = node;
    this.watchDeletion(node);
    this.context.events.view({ leader: this.leaderFrom(node, found.stat, found.data), isSelf });
  }

  /** leaderd's {id, address}; anything else is named by its node, with one warning per node. */
  private leaderFrom(node: string, stat: Stat, data: string): Leader {
    const ours = candidateFrom(data);
    if (ours) return { ...ours, fencingToken: stat.czxid };
    if (!this.noted.has(node)) {
      if (this.noted.size >= 100) this.noted.clear();
      this.noted.add(node);
      this.context.log.warn({ node: `${this.path}/${node}` }, 'the leading candidate node does not hold leaderd\'s {id, address}: naming it by its node');
    }
    return { id: node, address: '', fencingToken: stat.czxid };
  }

  /** What a deletion means depends on what the node is to us when it goes. */
  private deleted(node: string): void {
    if (node === this.ownNode || node === this.predecessor) this.sync('list');
    else if (node === this.leaderNode) this.sync('follow');
  }

  private watchDeletion(node: string): void {
    const zk = this.zk;
    if (!zk || this.closed || this.watched.has(node)) return;
    this.watched.add(node);
    zk.w_exists(`${this.path}/${node}`, (type: number) => {
      // The client also hands connection changes to every watcher, and keeps it armed.
      if (type === this.constants.ZOO_SESSION_EVENT) return;
      this.watched.delete(node);
      if (type === this.constants.ZOO_DELETED_EVENT) this.deleted(node);
      else this.watchDeletion(node);
    }).then(
      (stat: Stat | null) => {
        if (stat) return;
        this.watched.delete(node);
        this.deleted(node);
      },
      () => {
        this.watched.delete(node);
        this.deleted(node);
      },
    );
  }

  private async deleteIfPresent(path: string): Promise<void> {
    try {
      await this.call('delete', () => this.client().delete_(path, -1));
    } catch (error) {
      if (errorCode(error) !== this.constants.ZNONODE) throw error;
    }
  }

  private addAuth(credentials: string): Promise<void> {
    return new Promise((resolve, reject) =>
      this.client().add_auth('digest', credentials, (rc: number) => (rc === 0 ? resolve() : reject(new Error(`ZooKeeper digest authentication failed (${rc})`)))),
    );
  }

  /** Only our digest identity may change what we create; anyone may read it. */
  private async restrict(path: string): Promise<void> {
    const { ZOO_PERM_ALL, ZOO_PERM_READ } = this.constants;
    await this.call('setacl', () =>
      this.client().set_acl(path, -1, [
        { perms: ZOO_PERM_ALL, scheme: 'auth', auth: '' },
        { perms: ZOO_PERM_READ, scheme: 'world', auth: 'anyone' },
      ]),
    );
  }
}

function sequenceOf(name: string): number {
  return Number(CANDIDATE.exec(name)?.[2] ?? Number.MAX_SAFE_INTEGER);
}


/**
 * The return code of a failed call: the client rejects with "<rc> <text>", or, when the call
 * could not even be queued, with "... result: \"<NAME> <rc>\"".
 */
function errorCode(error: unknown): number | undefined {
  const message = String((error as Error | null)?.message ?? '');
  const match = /^(-?\d+) /.exec(message) ?? /result: "\w+ (-?\d+)"/.exec(message);
  return match ? Number(match[1]) : undefined;
}

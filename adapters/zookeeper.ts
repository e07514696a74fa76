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
 * later arrivals sort after them), one small read each, not a full listing. A session out of the
 * race (a member the failover gate keeps from standing, a resign's hold-off) has no predecessor,
 * and in an empty election no leader, to watch: it also watches the children, and lists them
 * again when they change.
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
 *
 * Member records live outside the election, under PREFIX/.cluster/ELECTION (made on first use, and
 * again if removed). members/<guid> is an EPHEMERAL node, so the ensemble deletes it with the
 * session: at once on close(), whose close request the client waits for, and a ttl after a member
 * died. Its name is fixed per session, so a create whose reply was lost cannot leave a second
 * one: the next publish finds it and sets it. leader-position is a PERSISTENT node. A publish is
 * one set (the first one: a failed set and a create).
 *
 * ZooKeeper serves reads from the connected server, which may be behind the ensemble's leader, so
 * readCluster syncs that server first. It costs 1 sync + 1 listing + 1 get per member + 1 get for
 * the position, the gets pipelined. A member node not named by a guid or not ephemeral (no
 * session's: nothing would ever delete it) is skipped, and so is a value over MAX_RECORD_BYTES,
 * with one warning each. Such a value is still read in, up to the server's jute.maxbuffer (1 MB by
 * default): ZooKeeper gives a node's size only with its data, or for one more request.
 */
import { randomBytes } from 'node:crypto';
import { createRequire } from 'node:module';
import type ZooKeeperClient from 'zookeeper';
import type { Backend, ClusterRecords, Leader, Session, SessionContext } from '../src/backend.js';
import { BackendConfigError, MAX_RECORD_BYTES, SessionLostError, started, candidateFrom } from '../src/backend.js';
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
/** A member record is named by its session's guid. */
const MEMBER = /^[0-9a-f]{32}$/;
/** How many foreign nodes a session remembers having warned about. */
const NOTED_MAX = 100;

export class ZookeeperBackend implements Backend {
  readonly kind = 'zookeeper';
  /**
   * Whether a session was ever granted the ttl: from then on a server that bounds it lower is not
   * a configuration error. `opened`: whether one ever opened; until then, no permission on the
   * prefix is one (see ZookeeperSession.start).
   */
  private readonly granted = { once: false, opened: false };

  constructor(private readonly options: ZookeeperOptions) {}

  open(context: SessionContext): Promise<Session> {
    const { prefix } = this.options;
    return started(new ZookeeperSession(this.options, `${prefix}/${context.election}`, `${prefix}/.cluster/${context.election}`, context, this.granted));
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
  /** A watch on the election's children is armed (see list()). */
  private watchingChildren = false;
  private leaderNode: string | null = null;
  private predecessor: string | null = null;
  /** Nodes with a deletion watch armed (ZooKeeper watches fire once). */
  private readonly watched = new Set<string>();
  private closed = false;
  private syncing: Promise<void> | null = null;
  private syncAgain: 'list' | 'follow' | null = null;
  /** Foreign nodes already warned about: candidates not holding leaderd's data, non-records. */
  private readonly noted = new Set<string>();
  private readonly members: string;
  private readonly position: string;
  /** With digest auth: nodes we may have created (even by a create that seemed to fail) and not restricted yet. */
  private readonly unrestricted = new Set<string>();

  constructor(
    private readonly options: ZookeeperOptions,
    private readonly path: string,
    /** PREFIX/.cluster/ELECTION: the records, outside what the election counts. */
    private readonly records: string,
    private readonly context: SessionContext,
    private readonly granted: { once: boolean; opened: boolean },
  ) {
    this.members = `${records}/members`;
    this.position = `${records}/leader-position`;
  }

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
    // a session the ensemble expired and for one it gave up on itself (see docs/backends.md).
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
    try {
      await this.mkdirp(this.path);
      if (this.options.auth) await this.restrict(this.path);
    } catch (error) {
      if (errorCode(error) !== this.constants.ZNOAUTH) throw error;
      // Digest authentication never fails by itself: wrong credentials are only an identity the
      // prefix's ACL does not name, and show here.
      const who = this.options.auth ? 'the digest identity of zk-auth(-file)' : 'an unauthenticated client (no zk-auth-file)';
      const message =
        `zk-prefix: ZooKeeper refused ${who} the permission to create and change ${this.path} (NoAuth); ` +
        `the ACL of ${this.options.prefix} must grant it all permissions`;
      throw this.granted.opened ? new Error(message, { cause: error }) : new BackendConfigError(message);
    }
    this.granted.opened = true;
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

  /** Ending the session deletes its ephemeral nodes, our candidacy and member record. */
  async close(): Promise<void> {
    this.closed = true;
    this.ownNode = null;
    this.zk?.close();
  }

  async publishMember(record: string): Promise<void> {
    await this.write('publishMember', `${this.members}/${this.guid}`, record, this.constants.ZOO_EPHEMERAL);
  }

  async publishLeaderPosition(record: string): Promise<void> {
    await this.write('publishLeaderPosition', this.position, record, this.constants.ZOO_PERSISTENT);
  }

  async readCluster(): Promise<ClusterRecords> {
    const zk = this.client();
    // Our server may be behind the ensemble's leader; after the sync it has every write committed before it.
    await this.call('readCluster', () => zk.sync(this.members));
    let names: string[];
    try {
      names = await this.call('readCluster', () => zk.get_children(this.members, false));
    } catch (error) {
      if (errorCode(error) !== this.constants.ZNONODE) throw error;
      names = [];
    }
    const member = async (name: string): Promise<string | null> => {
      const path = `${this.members}/${name}`;
      if (!MEMBER.test(name)) return this.skip(path, 'a node under the member records is not named by a session');
      const found = await this.readRecord(path, { unreadableIsForeign: true });
      // Persistent, it is no session's: nothing would ever delete it.
      if (found?.stat.ephemeralOwner === '0') return this.skip(path, 'a node under the member records is not ephemeral');
      return found?.record ?? null;
    };
    const [position, members] = await Promise.all([this.readRecord(this.position), Promise.all(names.map(member))]);
    return { members: members.filter((record) => record !== null), leaderPosition: position?.record ?? null };
  }

  private client(): ZooKeeper {
    if (!this.zk || this.closed) throw new SessionLostError('the ZooKeeper session is closed');
    return this.zk;
  }

  private call<T>(operation: string, request: () => Promise<T>): Promise<T> {
    return this.context.measure(operation, request);
  }

  private mkdirp(path: string): Promise<void> {
    const zk = this.client();
    return this.call('mkdirp', () => new Promise<void>((resolve, reject) => zk.mkdirp(path, (error) => (error ? reject(error) : resolve()))));
  }

  /**
   * Sets a record's node, creating it when missing. A create that finds the node there sets it
   * instead: its name is fixed, so it is ours from a create whose reply was lost, or (the
   * position) another writer's.
   */
  private async write(operation: string, path: string, record: string, flags: number): Promise<void> {
    const zk = this.client();
    try {
      await this.call(operation, () => zk.set(path, record, -1));
    } catch (error) {
      if (errorCode(error) !== this.constants.ZNONODE) throw error;
      if (this.options.auth) this.unrestricted.add(path);
      await this.create(operation, path, record, flags);
    }
    // Restricted before a publish counts as done, even a node from an earlier, failed publish.
    for (const node of this.unrestricted) {
      await this.restrict(node);
      this.unrestricted.delete(node);
    }
  }

  private async create(operation: string, path: string, record: string, flags: number): Promise<void> {
    const zk = this.client();
    for (let parentsMade = false; ; parentsMade = true) {
      try {
        await this.call(operation, () => zk.create(path, record, flags));
        return;
      } catch (error) {
        const code = errorCode(error);
        if (code === this.constants.ZNODEEXISTS) {
          await this.call(operation, () => zk.set(path, record, -1));
          return;
        }
        if (code !== this.constants.ZNONODE || parentsMade) throw error;
      }
      // The nodes above it are missing: never made yet, or removed.
      if (this.options.auth) for (const node of [this.records, this.members]) this.unrestricted.add(node);
      await this.mkdirp(this.members);
    }
  }

  /** A record node as found; null when it is gone (since the listing, for a member) or too large. */
  /**
   * `unreadableIsForeign`: a member node whose ACL keeps us from reading it is not leaderd's record
   * (skipped, never a reason for every member to stop reading the others). Not so the position:
   * taken for none, it would turn --max-lag off.
   */
  private async readRecord(path: string, { unreadableIsForeign = false } = {}): Promise<{ stat: Stat; record: string } | null> {
    let stat: Stat;
    let data: Buffer | null;
    try {
      [stat, data] = (await this.call('readCluster', () => this.client().get(path, false))) as [Stat, Buffer | null];
    } catch (error) {
      const code = errorCode(error);
      if (code === this.constants.ZNONODE) return null;
      if (unreadableIsForeign && code === this.constants.ZNOAUTH) return this.skip(path, 'a record cannot be read: its ACL forbids it');
      throw error;
    }
    if (data && data.length > MAX_RECORD_BYTES) return this.skip(path, `a record is larger than ${MAX_RECORD_BYTES} bytes`);
    return { stat, record: data ? data.toString() : '' };
  }

  private skip(node: string, why: string): null {
    this.warnOnce(node, `${why}: skipped`);
    return null;
  }

  /** Logs a warning about a foreign node once, not on every read that finds it again. */
  private warnOnce(node: string, message: string): void {
    if (this.noted.has(node)) return;
    if (this.noted.size >= NOTED_MAX) this.noted.clear();
    this.noted.add(node);
    this.context.log.warn({ node }, message);
  }

  /** The candidates in sequence order; `watch`: and list again when they change (see list()). */
  private listCandidates(watch = false): Promise<string[]> {
    return this.call('children', async () => {
      const zk = this.client();
      const names = watch && !this.watchingChildren ? await this.watchChildren(zk) : await zk.get_children(this.path, false);
      return names.filter((name) => CANDIDATE.test(name)).sort((a, b) => sequenceOf(a) - sequenceOf(b));
    });
  }

  private async watchChildren(zk: ZooKeeper): Promise<string[]> {
    this.watchingChildren = true;
    try {
      return await zk.w_get_children(this.path, (type: number) => {
        // The client also hands connection changes to every watcher, and keeps it armed.
        if (type === this.constants.ZOO_SESSION_EVENT) return;
        this.watchingChildren = false;
        if (!this.ownNode) this.sync('list');
      });
    } catch (error) {
      this.watchingChildren = false;
      throw error;
    }
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
    // A session out of the race has no predecessor to watch: a new candidate in an empty election
    // would reach it only through a watch on the children. Members that do not stand (the failover
    // gate, a resign's hold-off) are such sessions, and must still learn who leads.
    const candidates = await this.listCandidates(this.ownNode === null);
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
    this.warnOnce(`${this.path}/${node}`, 'the leading candidate node does not hold leaderd\'s {id, address}: naming it by its node');
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
 * could not even be queued, with "... result: \"<NAME> <rc>\""; its mkdirp with
 * "Zookeeper Error: code=<rc> <text>".
 */
function errorCode(error: unknown): number | undefined {
  const message = String((error as Error | null)?.message ?? '');
  const match = /^(-?\d+) /.exec(message) ?? /result: "\w+ (-?\d+)"/.exec(message) ?? /^Zookeeper Error: code=(-?\d+)/.exec(message);
  return match ? Number(match[1]) : undefined;
}

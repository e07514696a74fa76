/**
 * The contract between the election core and a coordination service.
 *
 * An adapter translates four verbs (open a session, renew it, campaign, withdraw) into its
 * service's primitives and reports what it observes. It decides nothing: the core alone decides
 * when this node may call itself primary, from the views an adapter reports and from its own
 * lease deadline.
 *
 * The one promise every adapter must keep, on which the core's safety rests:
 *
 *   No other candidate can be made leader until at least `ttl` after the moment the last
 *   successful `open()` or `renew()` of this session was *called*.
 *
 * (etcd: a keepalive is sent after the call starts and the server times the lease from its
 * arrival. local: the heartbeat rename happens after the call starts and others expire it only
 * after watching it unchanged for `ttl`.) The core stops calling itself primary `renewDeadline`
 * (< ttl) after that moment, so a lost or frozen node has stepped down before anyone can replace it.
 */
import type { Logger } from 'pino';

export interface Candidate {
  /** Unique within the election: names this node to its peers. */
  readonly id: string;
  /** What replicas should connect to when this node is primary (host:port, URL, ...). */
  readonly address: string;
}

export interface Leader extends Candidate {
  /**
   * Strictly larger for every later term of leadership in the same election (etcd: the leader
   * key's create revision; local: the larger of a counter on disk and the wall clock in ms). Applications fence writes with it.
   */
  readonly fencingToken: number;
}

/** What a session currently sees of the election. */
export interface View {
  readonly leader: Leader | null;
  /** True when the leader is this session's own candidacy. */
  readonly isSelf: boolean;
}

export const NO_VIEW: View = Object.freeze({ leader: null, isSelf: false });

export interface SessionEvents {
  /** The adapter's latest observation; call again whenever it changes. */
  view(view: View): void;
  /** The session is gone for good (lease expired, revoked, key deleted behind our back). */
  lost(reason: Error): void;
}

export interface SessionContext {
  readonly election: string;
  readonly candidate: Candidate;
  readonly ttlSeconds: number;
  /** Upper bound for one request to the service; the core also enforces it. */
  readonly requestTimeoutMs: number;
  readonly events: SessionEvents;
  readonly log: Logger;
  /** Times a request to the service for the metrics; adapters wrap their internal requests in it. */
  measure<T>(operation: string, request: () => Promise<T>): Promise<T>;
}

export interface Session {
  /** Extends the session's lease. Rejects with SessionLostError when the lease is gone. */
  renew(): Promise<void>;
  /** Joins the race (idempotent). A new candidacy always gets a larger fencing token. */
  campaign(): Promise<void>;
  /** Leaves the race and releases leadership if held; the session keeps observing. */
  withdraw(): Promise<void>;
  /** Withdraws and ends the session (revokes the lease), best effort. */
  close(): Promise<void>;
  /**
   * Writes this session's member record, replacing the one it wrote before. The record lives
   * exactly as long as the session (etcd: a key on its lease; ZooKeeper: an ephemeral node;
   * Consul: a key held by the session; local: a file that counts only while renewed), so a member
   * that dies takes its record with it, as it takes its candidacy. Records are keyed by session,
   * not by member id: a restarted member may briefly have two, and the core keeps the newer.
   */
  publishMember(record: string): Promise<void>;
  /** Writes the election's last-leader-position record, which outlives every session. */
  publishLeaderPosition(record: string): Promise<void>;
  /**
   * Reads every live member record and the last-leader-position record as the service holds them
   * now: the read sees every write completed before it was called, by anyone (etcd: a
   * linearizable range; ZooKeeper: after a sync; Consul: ?consistent; local: the files).
   */
  readCluster(): Promise<ClusterRecords>;
}

/**
 * What readCluster() found, as written: untrusted text, parsed by the core (src/cluster.ts). An
 * adapter leaves out only what is not a record at all (a value too large, a record whose session
 * is gone) and never throws on what a value holds.
 */
export interface ClusterRecords {
  /** Every live member record, this session's own included, in no particular order. */
  readonly members: readonly string[];
  /** The last-leader-position record, or null when none was ever written. */
  readonly leaderPosition: string | null;
}

/** Records larger than this are not leaderd's: adapters skip them rather than read them in. */
export const MAX_RECORD_BYTES = 16 * 1024;

export interface Backend {
  readonly kind: string;
  open(context: SessionContext): Promise<Session>;
  /** Reads its TLS files again now, if they changed (on SIGHUP); they are also checked every few seconds. */
  reload?(): void;
  /** Releases connections to the service. */
  shutdown(): Promise<void>;
}

/** What config.ts accepts as an --id: 1-253 characters, no control characters. */
const CANDIDATE_NAME = /^[^\x00-\x1f\x7f]{1,253}$/;
/** What config.ts accepts as an --address. */
const CANDIDATE_ADDRESS = /^[^\x00-\x1f\x7f]{0,1024}$/;

/** True when `text`, read from a backend, could name a candidate. */
export function isCandidateName(text: string): boolean {
  return CANDIDATE_NAME.test(text);
}

/**
 * The {id, address} a leaderd candidacy holds, read from a backend; null for anything else: not
 * JSON, or JSON that is not such an object (`null`, a number, an array). Anything found in a
 * backend is anyone's to write, so this never throws; each adapter decides how to name a holder
 * whose value is not leaderd's.
 */
export function candidateFrom(text: string): Candidate | null {
  let parsed: unknown;
  try {
    parsed = JSON.parse(text);
  } catch {
    return null;
  }
  if (typeof parsed !== 'object' || parsed === null || Array.isArray(parsed)) return null;
  const { id, address } = parsed as { id?: unknown; address?: unknown };
  if (typeof id !== 'string' || !isCandidateName(id)) return null;
  return { id, address: typeof address === 'string' && CANDIDATE_ADDRESS.test(address) ? address : '' };
}

/** The session can never be renewed again: the core drops it and opens a new one. */
export class SessionLostError extends Error {
  override readonly name = 'SessionLostError';
}

/**
 * The service refuses the configuration (e.g. a ttl below its minimum). Retrying cannot help,
 * so the core stops with this message.
 */
export class BackendConfigError extends Error {
  override readonly name = 'BackendConfigError';
}

/** Starts a session; if starting fails, closes it again so nothing it began lives on. */
export async function started<S extends Session & { start(): Promise<void> }>(session: S): Promise<S> {
  try {
    await session.start();
  } catch (error) {
    await session.close().catch(() => undefined);
    throw error;
  }
  return session;
}

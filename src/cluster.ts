/**
 * What the members of an election know of each other, and the rule that decides who may lead.
 *
 * Every sidecar publishes a member record in the backend, tied to its session (see
 * src/backend.ts), and the primary also keeps the election's last-leader-position record, which
 * outlives it. Both are untrusted text when read back: `parseMember` and `parseLeaderPosition`
 * return null for anything that is not leaderd's, and never throw.
 *
 * Positions are arbitrary-precision integers (a WAL position can pass 2^53): bigint here, decimal
 * strings in records, and JSON numbers in answers only while they are safe integers.
 */
import { z } from 'zod';
import { isCandidateName } from './backend.js';
import type { Role } from './elector.js';

/** What this node's check said last. Without a check: healthy, eligible, position unknown. */
export interface CheckResult {
  readonly healthy: boolean;
  readonly eligible: boolean;
  readonly position: bigint | null;
  /** Why the check failed (unhealthy), for the log and /role. */
  readonly reason: string | null;
}

export const ALWAYS_HEALTHY: CheckResult = Object.freeze({ healthy: true, eligible: true, position: null, reason: null });

export interface MemberRecord {
  readonly id: string;
  readonly address: string;
  readonly role: Role;
  /**
   * Could take leadership by its own facts: in the race (not resigned, not shutting down, not
   * handing over), healthy, eligible, of priority above 0 and within its own --max-lag. Only such
   * members count when others ask whether someone is better placed than they are.
   */
  readonly candidate: boolean;
  readonly healthy: boolean;
  readonly eligible: boolean;
  readonly priority: number;
  readonly position: bigint | null;
  /** The term's token while primary. */
  readonly fencingToken: number | null;
  /** Set by a primary handing leadership to this member (POST /switchover). */
  readonly handoverTo: string | null;
  /**
   * The fencing token of the last leader this member saw go, once it has checked its position
   * since: the others wait for such a record before they compare positions.
   */
  readonly leaderGone: number | null;
  readonly updatedAt: string;
}

export interface LeaderPosition {
  readonly id: string;
  readonly fencingToken: number;
  readonly position: bigint;
  readonly updatedAt: string;
}

/** A decimal string of a non-negative integer: how positions travel in records. */
const DECIMAL = /^(0|[1-9][0-9]{0,77})$/;

const positionText = z.string().regex(DECIMAL);

/** The largest --priority. */
export const PRIORITY_LIMIT = 1_000_000;

const memberSchema = z.object({
  id: z.string().refine(isCandidateName),
  address: z.string().max(1024),
  role: z.enum(['primary', 'replica', 'unknown']),
  candidate: z.boolean(),
  healthy: z.boolean(),
  eligible: z.boolean(),
  priority: z.number().int().min(0).max(PRIORITY_LIMIT),
  position: positionText.nullable(),
  fencingToken: z.number().int().nonnegative().nullable(),
  handoverTo: z.string().refine(isCandidateName).nullable(),
  leaderGone: z.number().int().nonnegative().nullable().default(null),
  updatedAt: z.string().max(64),
});

const leaderPositionSchema = z.object({
  id: z.string().refine(isCandidateName),
  fencingToken: z.number().int().nonnegative(),
  position: positionText,
  updatedAt: z.string().max(64),
});

export function memberText(record: MemberRecord): string {
  return JSON.stringify({ ...record, position: record.position === null ? null : record.position.toString() });
}

export function leaderPositionText(record: LeaderPosition): string {
  return JSON.stringify({ ...record, position: record.position.toString() });
}

function parsed<T>(schema: z.ZodType<T>, text: string): T | null {
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch {
    return null;
  }
  const result = schema.safeParse(value);
  return result.success ? result.data : null;
}

export function parseMember(text: string): MemberRecord | null {
  const record = parsed(memberSchema, text);
  return record && { ...record, position: record.position === null ? null : BigInt(record.position) };
}

export function parseLeaderPosition(text: string): LeaderPosition | null {
  const record = parsed(leaderPositionSchema, text);
  return record && { ...record, position: BigInt(record.position) };
}

/**
 * The records of the live members, one per id: a restarted member can briefly have two (its old
 * session's until that expires), and the newer one is the member as it is now.
 */
export function newestById(records: readonly MemberRecord[]): MemberRecord[] {
  const byId = new Map<string, MemberRecord>();
  for (const record of records) {
    const known = byId.get(record.id);
    if (!known || Date.parse(record.updatedAt) > Date.parse(known.updatedAt)) byId.set(record.id, record);
  }
  return [...byId.values()].sort((a, b) => (a.id < b.id ? -1 : a.id > b.id ? 1 : 0));
}

/** `position` as the check's contract and the API give it: a number while exact, else a decimal string. */
export function positionJson(position: bigint | null): number | string | null {
  if (position === null) return null;
  return position <= BigInt(Number.MAX_SAFE_INTEGER) ? Number(position) : position.toString();
}

/** How far `position` is behind the last leader's; 0 when no leader ever published one; null when unknown. */
export function lagBehind(leader: LeaderPosition | null, position: bigint | null): bigint | null {
  if (leader === null) return 0n;
  if (position === null) return null;
  return position >= leader.position ? 0n : leader.position - position;
}

/** -1, 0 or 1 as `a` is behind, level with, or ahead of `b`; an unknown position is behind any known one. */
function comparePositions(a: bigint | null, b: bigint | null): number {
  if (a === b) return 0;
  if (a === null) return -1;
  if (b === null) return 1;
  return a < b ? -1 : a > b ? 1 : 0;
}

/** True when `other` should lead rather than `self`: further ahead, or level and of higher priority. */
function outranks(other: { position: bigint | null; priority: number }, self: { position: bigint | null; priority: number }): boolean {
  const byPosition = comparePositions(other.position, self.position);
  return byPosition > 0 || (byPosition === 0 && other.priority > self.priority);
}

export type Verdict = { readonly ok: true } | { readonly ok: false; readonly reason: string };

const OK: Verdict = Object.freeze({ ok: true });

export interface GateFacts {
  readonly id: string;
  readonly priority: number;
  readonly check: CheckResult;
  /** The other live members (this node's own record left out). */
  readonly others: readonly MemberRecord[];
  readonly leaderPosition: LeaderPosition | null;
  readonly maxLag: bigint | null;
}

/** Rules 1-3 of docs/replication.md ("Who may lead"): what this member's own facts say, whatever the others'. */
export function ownVerdict(facts: Omit<GateFacts, 'others'>): Verdict {
  const { check } = facts;
  if (!check.healthy) return { ok: false, reason: `unhealthy: ${check.reason ?? 'the check failed'}` };
  if (!check.eligible) return { ok: false, reason: 'not eligible: the check says so' };
  if (facts.priority <= 0) return { ok: false, reason: 'priority 0: never leads' };
  const lag = lagBehind(facts.leaderPosition, check.position);
  if (facts.maxLag !== null && lag === null) return { ok: false, reason: 'position unknown: cannot show a lag within max-lag' };
  if (facts.maxLag !== null && lag !== null && lag > facts.maxLag) {
    return { ok: false, reason: `lag ${lag} is beyond max-lag ${facts.maxLag}` };
  }
  return OK;
}

/**
 * May this member take leadership? (docs/replication.md, "Who may lead".) Healthy and eligible
 * by its check, priority above 0, within --max-lag of the last leader's position, and no other
 * live member that could lead is ahead of it, or level with it and of higher priority. A tie on
 * both is left to the backend's order: every tied member stands, and the first one leads, so
 * equal members never wait on each other. While a primary hands over to a member it names, only
 * that member may take leadership, whatever the others' positions.
 */
export function mayTakeLeadership(facts: GateFacts): Verdict {
  const { check, others } = facts;
  const own = ownVerdict(facts);
  if (!own.ok) return own;
  // Whatever the role the handing member shows: it steps down before it matters.
  const handover = others.find((m) => m.handoverTo !== null);
  if (handover) {
    return handover.handoverTo === facts.id ? OK : { ok: false, reason: `a switchover from ${handover.id} to ${handover.handoverTo} is in flight` };
  }
  const self = { position: check.position, priority: facts.priority };
  // A record saying primary is the incumbent's, or a dead or demoted one's last word: asked only
  // when nobody else leads, this is about who comes next, and it competes with no one.
  const ahead = others.find((m) => m.role !== 'primary' && m.candidate && m.healthy && m.eligible && m.priority > 0 && outranks(m, self));
  if (ahead) return { ok: false, reason: `${ahead.id} is a better candidate (position ${ahead.position ?? 'unknown'}, priority ${ahead.priority})` };
  return OK;
}

/** Why `record` cannot take over in a switchover, or null when it can. */
export function switchoverRefusal(record: MemberRecord, leader: LeaderPosition | null, maxLag: bigint | null): string | null {
  if (!record.healthy) return `${record.id} is unhealthy`;
  if (!record.eligible) return `${record.id} is not eligible`;
  if (record.priority <= 0) return `${record.id} has priority 0`;
  if (!record.candidate) return `${record.id} is not standing (resigned, stopping, or beyond its own max-lag)`;
  const lag = lagBehind(leader, record.position);
  if (maxLag !== null && (lag === null || lag > maxLag)) return `${record.id} is beyond max-lag (lag ${lag ?? 'unknown'})`;
  return null;
}

/** The member a switchover without a named candidate goes to: the one that would win a failover. */
export function bestCandidate(records: readonly MemberRecord[], leader: LeaderPosition | null, maxLag: bigint | null): MemberRecord | null {
  let best: MemberRecord | null = null;
  for (const record of records) {
    if (switchoverRefusal(record, leader, maxLag) !== null) continue;
    if (best === null || outranks(record, best)) best = record;
  }
  return best;
}

/**
 * The split-brain check. Its input is one log, stamped on the host's one monotonic clock: the
 * promote and demote hook records of every node, and what the chaos harness did to the nodes
 * (`killed`, `frozen`, `thawed`). From it the checker rebuilds each node's terms as primary and
 * proves that no two of them overlap and that fencing tokens grow from term to term.
 *
 * A term starts when the promote hook starts and ends when the demote hook starts (the moment the
 * application is told to step down), or when the harness killed the node (the instance died with
 * it). While a node is frozen it can do nothing, primary or not, so frozen time is cut out of its
 * terms. What is left of a term after a thaw, until its demote, is a *stale window*: the node
 * learns on waking that its deadline has passed, but its application hears so only when the
 * demote hook starts. Such a window is allowed (and reported) only if the freeze was long enough
 * to have let the node's deadline pass, the window is short, and every term it overlaps began
 * after the freeze began and holds a larger fencing token, so that anything the stale primary
 * still sends is refused by token. Anything else that overlaps is a violation.
 */
export interface HookRecord {
  /** promote, demote, leader-change, or the harness's killed, frozen, thawed. */
  LEADERD_EVENT: string;
  LEADERD_ID: string;
  LEADERD_FENCING_TOKEN?: string;
  at: number;
}

type Interval = [from: number, to: number];

export interface Term {
  id: string;
  token: number;
  from: number;
  /** Infinity while the term has not ended. */
  to: number;
  /** Parts of the term the node spent frozen. */
  frozen: Interval[];
}

export interface Verdict {
  violations: string[];
  /** Lengths (ms) of the fenced stale windows found. */
  staleWindowsMs: number[];
  terms: Term[];
}

/** How long a thawed primary may take to start its demote hook: it checks its deadline first. */
export const STALE_WINDOW_BOUND_MS = 1000;

/** Terms from the log, and the records that make no sense (a second promote without an end). */
export function termsOf(records: readonly HookRecord[]): { terms: Term[]; problems: string[] } {
  const terms: Term[] = [];
  const problems: string[] = [];
  const open = new Map<string, Term>();
  const frozenSince = new Map<string, number>();
  for (const r of [...records].sort((a, b) => a.at - b.at)) {
    const id = r.LEADERD_ID;
    const term = open.get(id);
    switch (r.LEADERD_EVENT) {
      case 'promote': {
        if (term) {
          problems.push(`${id} promoted again at ${r.at} while its term from ${term.from} had not ended`);
          term.to = r.at;
        }
        const next: Term = { id, token: Number(r.LEADERD_FENCING_TOKEN), from: r.at, to: Infinity, frozen: [] };
        open.set(id, next);
        terms.push(next);
        break;
      }
      case 'demote':
      case 'killed':
        // A demote with no term open is harmless: a node told to step down that never stood up.
        if (term) term.to = r.at;
        open.delete(id);
        frozenSince.delete(id);
        break;
      case 'frozen':
        frozenSince.set(id, r.at);
        break;
      case 'thawed': {
        const since = frozenSince.get(id);
        frozenSince.delete(id);
        if (term && since !== undefined) term.frozen.push([Math.max(since, term.from), r.at]);
        break;
      }
    }
  }
  // A node still frozen when the log ends is frozen until then.
  for (const [id, since] of frozenSince) open.get(id)?.frozen.push([since, Infinity]);
  return { terms, problems };
}

interface ActingPart {
  part: Interval;
  /** The freeze this part follows, if any. */
  after: Interval | null;
}

/** The parts of a term in which its node could act as primary: the term minus its frozen time. */
function actingParts(term: Term): ActingPart[] {
  const parts: ActingPart[] = [];
  let start = term.from;
  let after: Interval | null = null;
  for (const freeze of [...term.frozen].sort((a, b) => a[0] - b[0])) {
    if (freeze[0] > start) parts.push({ part: [start, freeze[0]], after });
    start = Math.max(start, freeze[1]);
    after = freeze;
  }
  if (term.to > start) parts.push({ part: [start, term.to], after });
  return parts;
}

export interface CheckOptions {
  /**
   * The shortest freeze that can let a node's deadline pass: its renew deadline minus its renew
   * interval (the last renewal may have been sent just before the freeze). Shorter freezes excuse
   * nothing. Default 0.
   */
  minExpiringFreezeMs?: number;
}

/** A stale window the fencing token covers: short, right after a freeze that could expire the lease, `other` begun since with a larger token. */
function fencedStale(term: Term, { part, after }: ActingPart, other: Term, minExpiringFreezeMs: number): boolean {
  return (
    after !== null &&
    after[1] - after[0] >= minExpiringFreezeMs &&
    part[1] - part[0] <= STALE_WINDOW_BOUND_MS &&
    other.token > term.token &&
    after[0] <= other.from
  );
}

export function check(records: readonly HookRecord[], { minExpiringFreezeMs = 0 }: CheckOptions = {}): Verdict {
  const { terms, problems } = termsOf(records);
  const found = [...problems];
  const stale = new Set<ActingPart>();
  const ordered = [...terms].sort((a, b) => a.from - b.from);
  const parts = new Map(ordered.map((t) => [t, actingParts(t)]));
  for (let i = 0; i < ordered.length; i++) {
    const a = ordered[i]!;
    const b = ordered[i + 1];
    if (b && b.token <= a.token) found.push(`token ${b.token} of ${b.id} does not exceed ${a.token} of ${a.id}`);
    for (const later of ordered.slice(i + 1)) {
      for (const pa of parts.get(a)!) {
        for (const pb of parts.get(later)!) {
          if (!(pa.part[0] < pb.part[1] && pb.part[0] < pa.part[1])) continue;
          if (fencedStale(a, pa, later, minExpiringFreezeMs)) stale.add(pa);
          else if (fencedStale(later, pb, a, minExpiringFreezeMs)) stale.add(pb);
          else {
            found.push(
              `${later.id} (token ${later.token}) promoted at ${later.from} while ${a.id} (token ${a.token}) was primary until ${a.to}` +
                ` (both acting from ${Math.max(pa.part[0], pb.part[0])} to ${Math.min(pa.part[1], pb.part[1])})`,
            );
          }
        }
      }
    }
  }
  return { violations: found, staleWindowsMs: [...stale].map(({ part }) => part[1] - part[0]), terms };
}

/** Describes every violation: overlapping terms, tokens that do not grow. Empty when safe. */
export function violations(records: readonly HookRecord[]): string[] {
  return check(records).violations;
}

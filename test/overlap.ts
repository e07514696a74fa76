/**
 * The split-brain check. Its input is one log, stamped on the host's one monotonic clock: the
 * promote and demote hook records of every node, and what the chaos harness did to the nodes
 * (`killed`, `frozen`, `thawed`). From it the checker rebuilds each node's terms as primary and
 * proves that no two of them overlap and that fencing tokens grow from term to term.
 *
 * A term starts when the promote hook starts. It ends when the application has *finished*
 * stepping down: when the demote hook exits, which the chaos hook records as `demote-done`.
 * docs/safety.md promises exactly that: a successor's promote hook starts only after its predecessor's
 * demote hook has finished, whenever the predecessor was alive to run it. A term also ends when
 * the harness killed its node (the instance died with it; a demote hook still running then does
 * not extend it). Hooks that do not record their end (test/fixtures/record-hook.mjs) end a term
 * when its demote starts, as this checker did before the ends were recorded; so does a demote
 * still running when the log is read. `Term.stepping` tells such a demote apart, and the chaos
 * world waits until none is left before it checks.
 *
 * While a node is frozen it can do nothing, primary or not, so frozen time is cut out of its
 * terms. What is left of a term after a thaw, until it ends, is a *stale window*: the node learns
 * on waking that its deadline has passed, but its application hears so only when the demote hook
 * starts, and has stepped down only when it finishes. Such a window is allowed (and reported)
 * only if the freeze was long enough to have let the node's deadline pass, every term it overlaps
 * began after the freeze began and holds a larger fencing token, so that anything the stale
 * primary still sends is refused by token, and leaderd's own part of it is short: from the thaw to
 * the start of the demote hook at most STALE_WINDOW_BOUND_MS. The demote hook's own run time is
 * not held to that bound. It is the application's time, not leaderd's; the successor could not
 * have waited for it (it was promoted while the predecessor lay frozen, not alive to run any
 * hook, once the backend had let the lease go), and the token fences it as it fences the rest of
 * the window. Counting it would only flag every slow demote hook after a long pause, which is no
 * fault of leaderd's; what leaderd controls, how fast it tells the application, stays bounded.
 * The reported window lengths are that part too (thaw to demote start), so they compare with
 * earlier runs. Anything else that overlaps is a violation.
 */
export interface HookRecord {
  /** promote, demote, leader-change, their `-done` ends, or the harness's killed, frozen, thawed. */
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
  /** When the node was told to step down (its demote hook started); null if it never was. */
  demotedAt: number | null;
  /** Its demote hook started but has not been seen to finish, nor its node killed. */
  stepping: boolean;
  /** Parts of the term the node spent frozen. */
  frozen: Interval[];
}

export interface Verdict {
  violations: string[];
  /** Fenced stale windows found: leaderd's part of each, thaw to demote start (ms). */
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
  const end = (id: string, term: Term, at: number) => {
    term.to = at;
    term.stepping = false;
    const since = frozenSince.get(id);
    if (since !== undefined) term.frozen.push([Math.max(since, term.from), at]);
    open.delete(id);
  };
  for (const r of [...records].sort((a, b) => a.at - b.at)) {
    const id = r.LEADERD_ID;
    const term = open.get(id);
    switch (r.LEADERD_EVENT) {
      case 'promote': {
        if (term?.stepping) {
          // Only hooks that do not record their end get here: one node's hooks run one at a time.
          term.stepping = false;
        } else if (term) {
          problems.push(`${id} promoted again at ${r.at} while its term from ${term.from} had not ended`);
          term.to = r.at;
        }
        const next: Term = { id, token: Number(r.LEADERD_FENCING_TOKEN), from: r.at, to: Infinity, demotedAt: null, stepping: false, frozen: [] };
        open.set(id, next);
        terms.push(next);
        break;
      }
      case 'demote':
        // A demote with no term open is harmless: a node told to step down that never stood up.
        if (term && !term.stepping) {
          term.demotedAt = r.at;
          term.to = r.at;
          term.stepping = true;
        }
        break;
      case 'demote-done':
        if (term?.stepping) end(id, term, r.at);
        break;
      case 'killed':
        if (term) end(id, term, r.at);
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
    if (freeze[0] > start) parts.push({ part: [start, Math.min(freeze[0], term.to)], after });
    start = Math.max(start, freeze[1]);
    after = freeze;
  }
  if (term.to > start) parts.push({ part: [start, term.to], after });
  return parts.filter(({ part }) => part[1] > part[0]);
}

/** leaderd's part of an acting part that follows a thaw: until the demote hook started (or the part ended). */
function reactionMs(term: Term, { part }: ActingPart): number {
  return Math.max(0, Math.min(part[1], term.demotedAt ?? Infinity) - part[0]);
}

export interface CheckOptions {
  /**
   * The shortest freeze that can let a node's deadline pass: its renew deadline minus its renew
   * interval (the last renewal may have been sent just before the freeze). Shorter freezes excuse
   * nothing. Default 0.
   */
  minExpiringFreezeMs?: number;
}

/**
 * A stale window the fencing token covers: right after a freeze that could expire the lease,
 * leaderd quick to start the demote, `other` begun since with a larger token.
 */
function fencedStale(term: Term, acting: ActingPart, other: Term, minExpiringFreezeMs: number): boolean {
  const { after } = acting;
  return (
    after !== null &&
    after[1] - after[0] >= minExpiringFreezeMs &&
    reactionMs(term, acting) <= STALE_WINDOW_BOUND_MS &&
    other.token > term.token &&
    after[0] <= other.from
  );
}

function until(term: Term): string {
  return term.demotedAt !== null && term.to > term.demotedAt ? `${term.to} (its demote hook ran from ${term.demotedAt})` : `${term.to}`;
}

export function check(records: readonly HookRecord[], { minExpiringFreezeMs = 0 }: CheckOptions = {}): Verdict {
  const { terms, problems } = termsOf(records);
  const found = [...problems];
  const stale = new Map<ActingPart, Term>();
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
          if (fencedStale(a, pa, later, minExpiringFreezeMs)) stale.set(pa, a);
          else if (fencedStale(later, pb, a, minExpiringFreezeMs)) stale.set(pb, later);
          else {
            found.push(
              `${later.id} (token ${later.token}) promoted at ${later.from} while ${a.id} (token ${a.token}) was primary until ${until(a)}` +
                ` (both acting from ${Math.max(pa.part[0], pb.part[0])} to ${Math.min(pa.part[1], pb.part[1])})`,
            );
          }
        }
      }
    }
  }
  return { violations: found, staleWindowsMs: [...stale].map(([part, term]) => reactionMs(term, part)), terms };
}

/** Describes every violation: overlapping terms, tokens that do not grow. Empty when safe. */
export function violations(records: readonly HookRecord[]): string[] {
  return check(records).violations;
}

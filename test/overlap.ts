/**
 * The split-brain check: from the promote and demote hook records of every node (stamped on the
 * host's one monotonic clock), primary intervals must never overlap and fencing tokens must grow
 * from term to term.
 */
export interface HookRecord {
  LEADERD_EVENT: string;
  LEADERD_ID: string;
  LEADERD_FENCING_TOKEN: string;
  at: number;
}

export interface Term {
  id: string;
  token: number;
  from: number;
  /** Infinity while the term has not ended. */
  to: number;
}

/** Terms from the records; throws on a demote without its promote or on a second promote. */
export function termsOf(records: readonly HookRecord[]): Term[] {
  const terms: Term[] = [];
  const open = new Map<string, Term>();
  for (const r of [...records].sort((a, b) => a.at - b.at)) {
    if (r.LEADERD_EVENT === 'promote') {
      if (open.has(r.LEADERD_ID)) throw new Error(`${r.LEADERD_ID} promoted twice without a demote`);
      const term = { id: r.LEADERD_ID, token: Number(r.LEADERD_FENCING_TOKEN), from: r.at, to: Infinity };
      open.set(r.LEADERD_ID, term);
      terms.push(term);
    } else if (r.LEADERD_EVENT === 'demote') {
      const term = open.get(r.LEADERD_ID);
      if (!term) throw new Error(`${r.LEADERD_ID} demoted at ${r.at} without being primary`);
      term.to = r.at;
      open.delete(r.LEADERD_ID);
    }
  }
  return terms;
}

/** Describes every violation: overlapping terms, tokens that do not grow. Empty when safe. */
export function violations(records: readonly HookRecord[]): string[] {
  const terms = termsOf(records).sort((a, b) => a.from - b.from);
  const found: string[] = [];
  for (let i = 1; i < terms.length; i++) {
    const [before, after] = [terms[i - 1]!, terms[i]!];
    if (after.from < before.to) found.push(`${after.id} promoted at ${after.from} while ${before.id} was primary until ${before.to}`);
    if (after.token <= before.token) found.push(`token ${after.token} of ${after.id} does not exceed ${before.token} of ${before.id}`);
  }
  return found;
}

/**
 * The PostgreSQL chaos world: a PgCluster (three PostgreSQL 15 servers, each with a sidecar
 * running the example's check and hooks) on a chaos deployment, and the example's writer
 * committing rows through every trial of the run.
 *
 * The split-brain checker (test/overlap.ts) reads one log of hook records. The example's hooks
 * write none, so the records are rebuilt from the sidecars' own JSON logs, which say the same
 * things on one clock (the host's wall clock, in ms; the harness's notes use it too):
 *  - `role: primary` with its fencingToken starts a term (`promote`): a little before the promote
 *    hook starts, so a term here is, if anything, longer than the application's;
 *  - a `role: ...` line whose previousRole is primary is the demote hook being queued (`demote`),
 *    and the end of that hook, `hook succeeded` or `hook failed` with hook `demote`, ends the term
 *    (`demote-done`): PostgreSQL has stopped taking writes only once demote.sh has returned. The
 *    hook may start after it was queued (hooks run one at a time): a `hook succeeded` line gives
 *    its run time, so the `demote` is moved to when the hook started, which is what the
 *    checker's bound on a stale window (thaw → demote start) is about;
 *  - the harness's `killed` (sidecar and whole server, kill -9) ends a term, and `frozen` and
 *    `thawed` (sidecar and every PostgreSQL process stopped) cut it, as in the fixture world.
 * Each node's sidecars are kept once stopped, so the terms of a killed sidecar stay in the log.
 */
import { writeFileSync } from 'node:fs';
import { loadavg } from 'node:os';
import { BACKENDS } from '../../adapters/index.js';
import { renewDeadlineFraction } from '../../src/config.js';
import { check, termsOf, type HookRecord } from '../overlap.js';
import { PgCluster, TTL_SECONDS, type Ack, type PgNode, type Writer } from '../harness/postgres.js';
import type { LogLine, RoleBody, Sidecar } from '../harness/sidecar.js';
import type { Deployment } from './deployments.js';
import { inTheRace, sleep } from './world.js';

export interface PgSettlement {
  primary: PgNode;
  token: number;
}

export class PgWorld {
  /** Every sidecar each node has run, in order: the logs the terms are rebuilt from. */
  private readonly sidecars = new Map<PgNode, Sidecar[]>();
  /** What the harness did to the nodes: killed, frozen, thawed. */
  private readonly notes: HookRecord[] = [];
  private readonly expectedExits = new Set<Sidecar>();
  /** Sidecars that exited without the harness asking them to. */
  readonly crashes: string[] = [];
  /** Violations and stale windows newFindings() has reported. */
  private readonly reported = new Set<string>();
  private staleWindowsReported = 0;
  /** Acknowledged ids already found missing on a primary, so that each is counted once. */
  private readonly lostIds = new Set<number>();
  readonly loadAtStart = loadavg()[0]!;

  private constructor(
    readonly deployment: Deployment,
    readonly pg: PgCluster,
    readonly writer: Writer,
  ) {
    for (const node of pg.nodes) if (node.sidecar) this.track(node, node.sidecar);
  }

  /**
   * The cluster (a proxy between each sidecar and its server, for the partition) and one writer
   * for the whole run. The writer is given each node's sidecar address once: PgCluster keeps a
   * node's HTTP port across restarts, as an operator's sidecar has a port of its own, so the
   * writer never needs restarting, and its acknowledgements are one sequence over the whole run
   * (which the token-order check reads).
   */
  static async start(deployment: Deployment, synchronous: boolean): Promise<PgWorld> {
    const pg = await PgCluster.start(deployment, { synchronous, proxied: true });
    return new PgWorld(deployment, pg, pg.startWriter());
  }

  get nodes(): readonly PgNode[] {
    return this.pg.nodes;
  }

  /**
   * The lease a sidecar's deadline is timed from: PgCluster raises a shorter --ttl to 4 s; on
   * Consul (session ttl 10 s) it is the check ttl.
   */
  get leaseMs(): number {
    return this.deployment.ttlSeconds < TTL_SECONDS ? TTL_SECONDS * 1000 : this.deployment.leaseSeconds * 1000;
  }

  /** Starts (again) a node's sidecar; its leader-change hook (follow.sh) makes it a replica. */
  async launch(node: PgNode): Promise<void> {
    this.track(node, await this.pg.startSidecar(node));
  }

  /** kill -9 of the whole node, sidecar and PostgreSQL; its term (if any) ends when they are gone. */
  async kill(node: PgNode): Promise<void> {
    if (node.sidecar) this.expectedExits.add(node.sidecar);
    await this.pg.killNode(node, () => this.note(node, 'killed'));
  }

  /** kill -9 of a node's sidecar alone (a replica stuck after a failed hook); PostgreSQL runs on. */
  async restartSidecar(node: PgNode): Promise<void> {
    const sidecar = node.sidecar;
    if (sidecar) {
      this.expectedExits.add(sidecar);
      sidecar.signal('SIGKILL');
      await sidecar.exited;
      node.sidecar = null;
    }
    await this.launch(node);
  }

  /** The node (sidecar, its hooks, PostgreSQL) stopped for `ms`, then continued. */
  async freeze(node: PgNode, ms: number): Promise<void> {
    const pids = await node.freeze();
    // Noted conservatively: from when everything is seen stopped until just before SIGCONT.
    this.note(node, 'frozen');
    try {
      await sleep(ms);
    } finally {
      this.note(node, 'thawed');
      node.thaw(pids);
    }
  }

  /** The hook records: what the sidecars logged, and the harness's notes. */
  records(): HookRecord[] {
    const records = [...this.notes];
    for (const [node, sidecars] of this.sidecars) {
      for (const sidecar of sidecars) {
        let demote: HookRecord | undefined;
        for (const line of sidecar.logs) {
          for (const record of recordsOf(node.id, line)) {
            if (record.LEADERD_EVENT === 'demote') demote = record;
            if (record.LEADERD_EVENT === 'demote-done' && demote && typeof line.seconds === 'number') demote.at = Math.max(demote.at, record.at - line.seconds * 1000);
            records.push(record);
          }
        }
      }
    }
    return records.sort((a, b) => a.at - b.at);
  }

  /**
   * What the split-brain check finds that no earlier call reported: each violation and stale
   * window is counted once, by the first trial (or the closing check) whose call sees it, so one
   * that appeared between trials, in a trial that failed, or in a repair is counted too.
   */
  newFindings(): { violations: string[]; staleWindowsMs: number[] } {
    const verdict = this.check();
    const violations = verdict.violations.filter((v) => !this.reported.has(v));
    for (const violation of violations) this.reported.add(violation);
    const staleWindowsMs = verdict.staleWindowsMs.slice(this.staleWindowsReported);
    this.staleWindowsReported = verdict.staleWindowsMs.length;
    return { violations, staleWindowsMs };
  }

  /** The split-brain check over the whole run so far. */
  check(): ReturnType<typeof check> {
    // As the fixture world: the deadline is renew-deadline after the last renewal sent, and
    // renewals go out every lease/3, so a shorter freeze cannot have let it pass.
    const fraction = renewDeadlineFraction(BACKENDS[this.deployment.backend]!);
    return check(this.records(), { minExpiringFreezeMs: this.leaseMs * (fraction - 1 / 3) });
  }

  /**
   * Waits until every node's sidecar runs, exactly one is primary and the others are replicas
   * naming it with its token, every check passes and every node is in the race, the hook records
   * agree (the primary's term the only one open, no demote hook still running), and both other
   * servers stream from the primary's PostgreSQL. With `writes`, also until the writer has had
   * a commit acknowledged by that primary, with that token, since the wait began.
   */
  async settle(timeoutMs: number, writes: boolean): Promise<PgSettlement> {
    const from = Date.now();
    const deadline = from + timeoutMs;
    let why = '';
    for (;;) {
      if (!this.writer.running) throw new Error(`the writer exited: ${this.writer.stderr.slice(-2000)}`);
      const settled = await this.settledNow(from, writes);
      if (typeof settled !== 'string') return settled;
      why = settled;
      if (Date.now() > deadline) throw new Error(`not settled within ${timeoutMs} ms: ${why}`);
      await sleep(100);
    }
  }

  /** The settlement, or what is still missing. */
  private async settledNow(since: number, writes: boolean): Promise<PgSettlement | string> {
    const down = this.nodes.filter((n) => !n.sidecar);
    if (down.length) return `${down.map((n) => n.id).join(', ')} not running`;
    const roles = await Promise.all(this.nodes.map((n) => n.sidecar!.role().catch(() => null)));
    const said = JSON.stringify(roles.map((r, i) => (r ? [r.id, r.role, r.leader?.id, r.fencingToken, r.healthy ? 'healthy' : 'unhealthy'] : [this.nodes[i]!.id, 'no answer'])));
    const primaries = roles.filter((r): r is RoleBody => r?.role === 'primary');
    if (primaries.length !== 1) return `roles: ${said}`;
    const primary = this.nodes.find((n) => n.id === primaries[0]!.id)!;
    const token = primaries[0]!.fencingToken!;
    const agreed = roles.every((r) => r !== null && r.healthy && r.fencingToken === token && r.leader?.id === primary.id && (r.role === 'replica' || r.id === primary.id));
    if (!agreed) return `roles: ${said}`;
    const held = this.nodes.filter((n) => !inTheRace(n.sidecar!));
    if (held.length) return `${held.map((n) => n.id).join(', ')} held off after a resign`;
    const { terms } = termsOf(this.records());
    const open = terms.filter((t) => t.to === Infinity);
    if (open.length !== 1 || open[0]!.id !== primary.id || open[0]!.token !== token || terms.some((t) => t.stepping)) {
      return `hook records: open terms ${JSON.stringify(open.map((t) => [t.id, t.token, t.stepping ? 'demoting' : 'leading']))}`;
    }
    const streaming = await primary.streamingStandbys();
    const behind = this.nodes.filter((n) => n !== primary && !streaming.includes(n.id));
    if (behind.length) return `${behind.map((n) => n.id).join(', ')} not streaming from ${primary.id} (streaming: ${streaming.join(', ') || 'none'})`;
    if (writes && !this.writer.acks().some((a) => a.node === primary.id && a.token === token && a.at >= since)) {
      return `no commit acknowledged by ${primary.id} (token ${token}) yet; the writer said: ${this.writer.stderr.trim().split('\n').at(-1) ?? ''}`;
    }
    return { primary, token };
  }

  /**
   * The first commit acknowledged after a fault by the primary that followed it: a new term's
   * (token above `token`) since the fault began, or the old term's since the fault ended. Null if
   * none came within `timeoutMs`.
   */
  async firstWriteAfter(token: number, startedAt: number, endedAt: number, timeoutMs: number): Promise<Ack | null> {
    const deadline = Date.now() + timeoutMs;
    const first = () => this.writer.acks().find((a) => (a.token > token && a.at >= startedAt) || (a.token === token && a.at >= endedAt)) ?? null;
    for (;;) {
      const ack = first();
      if (ack || Date.now() > deadline || !this.writer.running) return ack;
      await sleep(50);
    }
  }

  /** Acknowledged commits `primary` does not have, each counted the first time it is found missing. */
  async newlyLost(primary: PgNode): Promise<number[]> {
    // The acknowledgements first: every one of them was committed before the rows are read.
    const acks = [...this.writer.acks()];
    const rows = await primary.rowIds();
    const lost = acks.filter((a) => !rows.has(a.id) && !this.lostIds.has(a.id)).map((a) => a.id);
    for (const id of lost) this.lostIds.add(id);
    return lost;
  }

  /** Writes every node's log (every sidecar it ran) and the records next to the cluster, for a post-mortem; returns the file. */
  dumpLogs(): string {
    const file = `${this.pg.dir}.${Date.now()}.nodes.json`;
    const logs = Object.fromEntries(this.nodes.map((n) => [n.id, (this.sidecars.get(n) ?? []).map((s) => s.logs)]));
    const postgres = Object.fromEntries(this.nodes.map((n) => [n.id, n.diagnostics()]));
    writeFileSync(file, JSON.stringify({ logs, records: this.records(), postgres, writer: this.writer.stderr.slice(-5000) }, null, 1));
    return file;
  }

  async stop(): Promise<void> {
    this.writer.kill();
    for (const node of this.nodes) if (node.sidecar) this.expectedExits.add(node.sidecar);
    // A frozen node is continued first, or its processes could not be reaped.
    for (const node of this.nodes) node.thaw(node.sidecar ? [node.sidecar.pid, ...node.processes()] : node.processes());
    await this.pg.stop();
  }

  private track(node: PgNode, sidecar: Sidecar): void {
    this.sidecars.set(node, [...(this.sidecars.get(node) ?? []), sidecar]);
    void sidecar.exited.then((exit) => {
      if (!this.expectedExits.has(sidecar)) this.crashes.push(`${node.id}'s sidecar exited on its own (${JSON.stringify(exit)}): ${sidecar.stderr.slice(-500)}`);
    });
  }

  private note(node: PgNode, event: 'killed' | 'frozen' | 'thawed'): void {
    this.notes.push({ LEADERD_ID: node.id, LEADERD_EVENT: event, at: Date.now() });
  }
}

/** The hook records one sidecar log line stands for (see the top of this file). */
function recordsOf(id: string, line: LogLine): HookRecord[] {
  const at = Date.parse(String(line.time));
  const token = line.fencingToken === null || line.fencingToken === undefined ? undefined : String(line.fencingToken);
  const record = (event: string): HookRecord => ({ LEADERD_ID: id, LEADERD_EVENT: event, at, ...(token === undefined ? {} : { LEADERD_FENCING_TOKEN: token }) });
  if (line.msg === 'role: primary') return [record('promote')];
  if (line.msg.startsWith('role: ') && line.previousRole === 'primary') return [record('demote')];
  // Primary in one term, then in the next without a role change between (leaderd logs the new
  // leader, not a role): the old term's demote and the new term's promote, in that order.
  if (line.msg === `leader: ${id}` && line.role === 'primary') return [record('demote'), { ...record('promote'), at: at + 0.001 }];
  if ((line.msg === 'hook succeeded' || line.msg === 'hook failed') && line.hook === 'demote') return [record('demote-done')];
  return [];
}

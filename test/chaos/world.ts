/**
 * A chaos world: N sidecars (separate processes) in one election on a real deployment, each
 * reaching its server through a TCP proxy of its own, all writing their promote and demote hook
 * records (when each hook started, and when it finished) into one log that the harness also
 * writes what it did to them (killed, frozen, thawed).
 * A trial injects one fault, waits until the election has settled again, and checks the log.
 *
 * Every sidecar runs with a `--check` (test/fixtures/check.sh) that stands in for a replicated
 * application: it reports the node's position, which the world moves on a timer for the world's
 * whole life (so during every fault), and its health, which a fault may take away. The positions
 * model replication: the node the world last settled on as primary writes (its position is the
 * head and grows while its process runs, frozen or cut off too), every other node catches up a
 * random part of the way towards the head now and then. Replicas therefore overtake each other all
 * the time, during failovers too, and the gate's ranking keeps changing. It cannot keep a trial
 * from settling: positions never go back, so of two members each ahead of the other's last
 * published position one has moved since and stands again at its next check; nobody passes the
 * head, so once the writer is dead the replicas close in on it and stop (in a tie, every tied
 * member stands); and no `--max-lag` is given, so a lagging member is never barred from leading.
 * Every sidecar also has an admin token, for POST /switchover.
 */
import { appendFileSync, mkdirSync, mkdtempSync, readFileSync, readdirSync, renameSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { BACKENDS } from '../../adapters/index.js';
import { renewDeadlineFraction } from '../../src/config.js';
import { TcpProxy } from '../harness/proxy.js';
import { Sidecar, type RoleBody } from '../harness/sidecar.js';
import { check, termsOf, type HookRecord } from '../overlap.js';
import type { Deployment } from './deployments.js';
import { readJsonLines } from '../harness/json-lines.js';

const CHAOS_HOOK = fileURLToPath(new URL('../fixtures/chaos-hook.mjs', import.meta.url));
const CHECK = fileURLToPath(new URL('../fixtures/check.sh', import.meta.url));
export const ADMIN_TOKEN = 'chaos-admin-token';

/**
 * Where positions start: just below 2^53, so that they pass it within the first seconds of a
 * world and the checks print them as decimal strings from then on (the check's contract for
 * positions beyond 2^53).
 */
const FIRST_POSITION = 2n ** 53n - 20_000n;
/** The writer's position grows by up to this much per tick. */
const WRITE_STEP = 1000;
/** A tick every 100-400 ms: several per check interval (a third of the lease). */
const TICK_MS: readonly [number, number] = [100, 400];
/** The chance a replica catches up some way on a tick. */
const CATCH_UP_CHANCE = 0.6;

/** What a node's check reports: its position, and the exit status (0 healthy, 3 failing). */
interface Application {
  readonly file: string;
  position: bigint;
  healthy: boolean;
}

export interface Node {
  readonly id: string;
  /** Index of the server this node's sidecar reaches, through `proxy`; -1 on the local backend. */
  readonly server: number;
  readonly proxy: TcpProxy | null;
  sidecar: Sidecar | null;
}

export interface Settlement {
  primary: Node;
  token: number;
  /** Hook notifications that never came: a primary never told to promote, a replica never told to demote. */
  lost: string[];
}

/** The host's monotonic clock in ms, the one the hooks stamp their records with. */
export function monotonicNow(): number {
  return Number(process.hrtime.bigint() / 1000n) / 1000;
}

export function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

/**
 * Polls `condition` every 50 ms until it holds (true) or `timeoutMs` has passed (false): for state
 * with no event to wait on, such as a file other processes append to. A condition that throws
 * counts as not holding yet.
 */
export async function until(condition: () => boolean | Promise<boolean>, timeoutMs: number): Promise<boolean> {
  const deadline = Date.now() + timeoutMs;
  while (!(await Promise.resolve().then(condition).catch(() => false))) {
    if (Date.now() > deadline) return false;
    await sleep(50);
  }
  return true;
}

export class ChaosWorld {
  /** Sidecars that exited without the harness asking them to. */
  readonly crashes: string[] = [];
  private readonly expectedExits = new Set<Sidecar>();
  private readonly apps = new Map<Node, Application>();
  /** The node whose application writes: the primary the world last settled on. */
  private writer: Node | null = null;
  private ticker: NodeJS.Timeout | undefined;

  private constructor(
    readonly deployment: Deployment,
    readonly nodes: readonly Node[],
    private readonly election: string,
    private readonly log: string,
    private readonly control: string,
    private readonly tokenFile: string,
  ) {}

  /** Starts `size` sidecars on the deployment, node i reaching server i mod the server count. */
  static async start(deployment: Deployment, size = 3): Promise<ChaosWorld> {
    const dir = mkdtempSync(join(tmpdir(), `leaderd-chaos-${deployment.backend}-`));
    const control = join(dir, 'control');
    mkdirSync(control);
    const checks = join(dir, 'checks');
    mkdirSync(checks);
    const tokenFile = join(dir, 'admin-token');
    writeFileSync(tokenFile, `${ADMIN_TOKEN}\n`, { mode: 0o600 });
    const tag = `${deployment.backend}-${deployment.topology}-${Date.now().toString(36)}`;
    const nodes: Node[] = [];
    for (let i = 0; i < size; i++) {
      const server = deployment.servers.length > 0 ? i % deployment.servers.length : -1;
      const proxy = server >= 0 ? await TcpProxy.start(deployment.servers[server]!.address) : null;
      nodes.push({ id: `${tag}-n${i + 1}`, server, proxy, sidecar: null });
    }
    const world = new ChaosWorld(deployment, nodes, `chaos-${tag}`, join(dir, 'hooks.log'), control, tokenFile);
    for (const node of nodes) {
      const app: Application = { file: join(checks, node.id), position: FIRST_POSITION, healthy: true };
      world.apps.set(node, app);
      writeApplication(app);
    }
    world.tick();
    await Promise.all(nodes.map((n) => world.launch(n)));
    return world;
  }

  get leaseMs(): number {
    return this.deployment.leaseSeconds * 1000;
  }

  get ttlMs(): number {
    return this.deployment.ttlSeconds * 1000;
  }

  /** How often every sidecar runs its check: the default, a third of the lease. */
  get checkIntervalMs(): number {
    return this.leaseMs / 3;
  }

  /** Starts (again) a node's sidecar, with the same id, proxy and application. */
  async launch(node: Node): Promise<void> {
    const hook = `${process.execPath} ${CHAOS_HOOK} ${this.log} ${this.control}`;
    const sidecar = await Sidecar.start(node.id, [
      ...this.deployment.sidecarArgs(this.election, node.proxy?.address ?? null),
      '--address', `${node.id}.chaos:5432`,
      '--on-promote', hook, '--on-demote', hook,
      '--check', `/bin/sh ${CHECK} ${this.apps.get(node)!.file}`,
      '--admin-token-file', this.tokenFile,
    ]);
    node.sidecar = sidecar;
    void sidecar.exited.then((exit) => {
      if (!this.expectedExits.has(sidecar)) this.crashes.push(`${node.id} exited on its own (${JSON.stringify(exit)}): ${sidecar.stderr.slice(-500)}`);
    });
  }

  /** kill -9; the node's term (if any) ends when it is gone. */
  async kill(node: Node): Promise<void> {
    const sidecar = this.running(node);
    this.expectedExits.add(sidecar);
    sidecar.signal('SIGKILL');
    await sidecar.exited;
    this.note(node, 'killed');
    node.sidecar = null;
  }

  /** SIGTERM: the graceful way out (demote hook, then the backend is told). */
  async terminate(node: Node): Promise<void> {
    const sidecar = this.running(node);
    this.expectedExits.add(sidecar);
    const exit = await sidecar.stop();
    if (exit.code !== 0) this.crashes.push(`${node.id} exited with ${JSON.stringify(exit)} on SIGTERM: ${sidecar.stderr.slice(-500)}`);
    node.sidecar = null;
  }

  /** SIGSTOP for `ms`, then SIGCONT. Frozen time is noted conservatively: from when the process is seen stopped until just before it is continued. */
  async freeze(node: Node, ms: number): Promise<void> {
    const sidecar = this.running(node);
    sidecar.signal('SIGSTOP');
    await until(() => processState(sidecar.pid) === 'T', 5000);
    this.note(node, 'frozen');
    await sleep(ms);
    this.note(node, 'thawed');
    sidecar.signal('SIGCONT');
  }

  /** Makes a node's hooks take `ms` before they exit (0: back to instant). */
  slowHooks(node: Node, ms: number): void {
    writeFileSync(join(this.control, `${node.id}.delay`), String(ms));
  }

  /** Makes a node's next promote hook fail. */
  failNextPromote(node: Node): void {
    writeFileSync(join(this.control, `${node.id}.fail-promote`), '');
  }

  /** Hooks back to instant success. */
  clearHookFaults(): void {
    for (const file of readdirSync(this.control)) rmSync(join(this.control, file));
  }

  /** Makes a node's check fail (exit 3) from its next run on, or pass again. */
  setHealthy(node: Node, healthy: boolean): void {
    const app = this.apps.get(node)!;
    app.healthy = healthy;
    writeApplication(app);
  }

  /** Every fault undone: hooks instant, every check passing. */
  clearFaults(): void {
    this.clearHookFaults();
    for (const node of this.nodes) if (!this.apps.get(node)!.healthy) this.setHealthy(node, true);
  }

  /** POST /switchover to `node` with the admin token, naming `candidate` (or no one). */
  async switchover(node: Node, candidate: string | null): Promise<{ status: number; body: Record<string, unknown> }> {
    const response = await this.running(node).fetch('/switchover', {
      method: 'POST',
      headers: { 'content-type': 'application/json', authorization: `Bearer ${ADMIN_TOKEN}` },
      body: JSON.stringify(candidate === null ? {} : { candidate }),
    });
    return { status: response.status, body: (await response.json()) as Record<string, unknown> };
  }

  /** `node`'s /cluster view. */
  async cluster(node: Node): Promise<ClusterView> {
    return (await (await this.running(node).fetch('/cluster')).json()) as ClusterView;
  }

  /**
   * One tick of the applications: the writer's position grows (while its sidecar runs), every
   * other node catches up part of the way to the head now and then; then the next tick is set.
   * Positions never go back, and no one passes the head.
   */
  private tick(): void {
    const writer = this.writer?.sidecar ? this.writer : null;
    if (writer) this.apps.get(writer)!.position += BigInt(1 + Math.floor(Math.random() * WRITE_STEP));
    const head = [...this.apps.values()].reduce((max, app) => (app.position > max ? app.position : max), 0n);
    for (const [node, app] of this.apps) {
      if (node === writer) {
        writeApplication(app);
        continue;
      }
      const gap = head - app.position;
      if (gap === 0n || Math.random() >= CATCH_UP_CHANCE) continue;
      // At least 1, at most the whole gap: replicas do reach the head (and tie) when no one writes.
      app.position += 1n + (gap - 1n) * BigInt(Math.floor(Math.random() * 1000)) / 999n;
      writeApplication(app);
    }
    const [low, high] = TICK_MS;
    this.ticker = setTimeout(() => this.tick(), low + Math.random() * (high - low));
  }

  /** Writes every node's log so far (and the hook log) next to the hook log, for a post-mortem; returns the file. */
  dumpLogs(): string {
    const file = `${this.log}.${Date.now()}.nodes.json`;
    const logs = Object.fromEntries(this.nodes.map((n) => [n.id, n.sidecar?.logs ?? []]));
    const applications = Object.fromEntries(this.nodes.map((n) => [n.id, { position: String(this.apps.get(n)!.position), healthy: this.apps.get(n)!.healthy }]));
    writeFileSync(file, JSON.stringify({ logs, hooks: this.records(), applications, writer: this.writer?.id ?? null }, null, 1));
    return file;
  }

  records(): HookRecord[] {
    return readJsonLines<HookRecord>(this.log);
  }

  /** The split-brain check over the whole log so far. */
  check(): ReturnType<typeof check> {
    // The deadline is renew-deadline after the last renewal sent, and renewals go out every
    // lease/3: a freeze shorter than the difference cannot have let it pass.
    const fraction = renewDeadlineFraction(BACKENDS[this.deployment.backend]!);
    return check(this.records(), { minExpiringFreezeMs: this.leaseMs * (fraction - 1 / 3) });
  }

  /**
   * Waits until every node runs, exactly one is primary and all others name it with its token,
   * and the hook log agrees: the primary's term is the only one open, with that token, and every
   * demote hook that started has finished (or its node was killed). Every node's check must
   * pass too (a node just started has not run it yet), so that a trial starts with every member
   * able to lead. The roles
   * are read again each time (a node may be primary for a moment and resign), so only an
   * agreement that holds when looked at is accepted. If the roles agree but the log never does,
   * the difference is reported as lost hook notifications.
   */
  async settle(timeoutMs: number): Promise<Settlement> {
    const deadline = Date.now() + timeoutMs;
    let roles: Array<RoleBody | null> = [];
    for (;;) {
      roles = await Promise.all(this.nodes.map((n) => this.running(n).role().catch(() => null)));
      const primaries = roles.filter((r) => r?.role === 'primary');
      const primary = primaries.length === 1 ? this.nodes.find((n) => n.id === primaries[0]!.id)! : null;
      const token = primaries[0]?.fencingToken ?? null;
      const agreed =
        primary !== null &&
        roles.every((r) => r !== null && r.fencingToken === token && r.leader?.id === primary.id && (r.role === 'replica' || r.id === primary.id) && r.healthy);
      const terms = agreed ? termsOf(this.records()).terms : [];
      const open = terms.filter((t) => t.to === Infinity);
      // A demote hook still running: the term it ends is not over until it has finished.
      const stepping = terms.filter((t) => t.stepping);
      // A node still held off after a resign (a failed promote) is not a candidate yet: a fault
      // now would measure the hold-off left over from the trial before, not its own failover.
      const candidates = this.nodes.every((n) => !n.sidecar || inTheRace(n.sidecar));
      if (agreed && candidates && stepping.length === 0 && open.length === 1 && open[0]!.id === primary.id && open[0]!.token === token) {
        this.writer = primary;
        return { primary, token: token!, lost: [] };
      }
      if (Date.now() > deadline) {
        if (!agreed) throw new Error(`no settled election within ${timeoutMs} ms: ${JSON.stringify(roles.map((r) => r && [r.id, r.role, r.leader?.id, r.fencingToken, r.healthy ? 'healthy' : 'unhealthy']))}`);
        const lost: string[] = [];
        if (!open.some((t) => t.id === primary.id && t.token === token)) lost.push(`promotion of ${primary.id} (token ${token})`);
        for (const t of open.filter((t) => t.id !== primary.id || t.token !== token)) lost.push(`demote of ${t.id} (token ${t.token})`);
        for (const t of stepping) lost.push(`end of the demote of ${t.id} (token ${t.token}), started at ${t.demotedAt}`);
        this.writer = primary;
        return { primary, token: token!, lost };
      }
      await sleep(50);
    }
  }

  /** Resolves with the first running node (of `among`, default all) seen primary with a token of at least `token`, and its token. */
  async anyPrimary(token: number, timeoutMs: number, among: readonly Node[] = this.nodes): Promise<{ node: Node; token: number }> {
    const abort = new AbortController();
    try {
      return await Promise.any(
        among
          .filter((n) => n.sidecar)
          .map((n) =>
            n
              .sidecar!.waitForState((r) => r.role === 'primary' && (r.fencingToken ?? 0) >= token, timeoutMs, 'primary', abort.signal)
              .then((r) => ({ node: n, token: r.fencingToken! })),
          ),
      );
    } catch {
      throw new Error(`no primary among the running nodes${among === this.nodes ? '' : ` ${among.map((n) => n.id).join(', ')}`} within ${timeoutMs} ms`);
    } finally {
      abort.abort();
    }
  }

  async stop(): Promise<void> {
    clearTimeout(this.ticker);
    this.ticker = undefined;
    for (const node of this.nodes) {
      if (node.sidecar) this.expectedExits.add(node.sidecar);
      node.sidecar?.signal('SIGCONT');
      node.sidecar?.signal('SIGKILL');
      await node.sidecar?.exited;
      node.sidecar = null;
      await node.proxy?.stop();
    }
    await this.deployment.stop();
  }

  private running(node: Node): Sidecar {
    if (!node.sidecar) throw new Error(`${node.id} is not running`);
    return node.sidecar;
  }

  private note(node: Node, event: 'killed' | 'frozen' | 'thawed'): void {
    appendFileSync(this.log, `${JSON.stringify({ LEADERD_ID: node.id, LEADERD_EVENT: event, at: monotonicNow() })}\n`);
  }
}

/** GET /cluster, as much of it as the chaos suite reads. */
export interface ClusterView {
  leader: { id: string; fencingToken: number } | null;
  members: Array<{ id: string; role: string; healthy: boolean; eligible: boolean; priority: number; position: number | string | null; updatedAt: string }>;
}

/** Writes what a node's check prints (its position) and its exit status, each file atomically. */
function writeApplication(app: Application): void {
  const position = app.position <= BigInt(Number.MAX_SAFE_INTEGER) ? Number(app.position) : app.position.toString();
  for (const [file, text] of [
    [app.file, JSON.stringify({ position })],
    [`${app.file}.exit`, app.healthy ? '0' : '3'],
  ] as const) {
    writeFileSync(`${file}.tmp`, text);
    renameSync(`${file}.tmp`, file);
  }
}

/** The state letter of a process (R running, S sleeping, T stopped...), from /proc. */
function processState(pid: number): string | undefined {
  try {
    return /^\d+ \(.*\) (\S)/.exec(readFileSync(`/proc/${pid}/stat`, 'utf8'))?.[1];
  } catch {
    return undefined;
  }
}

/** Whether a sidecar is a candidate: it has not resigned, or has come back since it last did. */
export function inTheRace(sidecar: Sidecar): boolean {
  const messages = sidecar.logs.map((line) => line.msg);
  const last = (msg: string) => messages.lastIndexOf(msg);
  const resigned = last('resigned: out of the race');
  return resigned === -1 || resigned < last('back in the race');
}

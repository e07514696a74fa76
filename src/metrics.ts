/**
 * Prometheus metrics. Gauges that describe the present (role, lease time left, connection) are
 * computed from `status()` at scrape time, so a scrape after a freeze reports the truth too.
 */
import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from 'prom-client';
import type { ElectorListener, Role, Status, Transition } from './elector.js';
import type { HookListener } from './hooks.js';
import type { MemberListener, MemberState, SwitchoverResult } from './member.js';

const ROLES: readonly Role[] = ['primary', 'replica', 'unknown'];
const SWITCHOVER_RESULTS: readonly SwitchoverResult[] = ['completed', 'refused', 'timeout', 'failed'];
const HOOK_EVENTS: readonly string[] = ['promote', 'demote', 'leader-change'];
/** The elector's own requests to the backend; adapters add theirs as they happen. */
const BACKEND_OPERATIONS: readonly string[] = ['open', 'renew', 'close'];
/**
 * prom-client defaults that are gauges named like counters (promtool: 'non-counter metrics should
 * not have "_total" suffix'). The same counts are exported by type without the suffix
 * (nodejs_active_handles, nodejs_active_resources); sum them for a total.
 */
const MISNAMED_DEFAULTS = ['nodejs_active_handles_total', 'nodejs_active_requests_total', 'nodejs_active_resources_total'];
/** How often the event loop's lag is sampled for `nodejs_eventloop_lag_*`. */
const EVENT_LOOP_SAMPLE_MS = 100;

export interface MetricsOptions {
  readonly election: string;
  readonly id: string;
  readonly backend: string;
  readonly version: string;
  readonly status: () => Status;
  /** Read at scrape time, like `status`; set once the member exists. */
  member?: () => MemberState;
  /** Log lines dropped so far because stdout was full or closed (see log-writer.ts). */
  readonly droppedLogLines?: () => number;
  /** This node's promote hooks that failed in a row (see backoff.ts). */
  readonly promoteFailuresInARow?: () => number;
}

export class Metrics implements ElectorListener, HookListener, MemberListener {
  readonly registry = new Registry();
  private readonly transitions: Counter<'direction'>;
  private readonly leaderChanges: Counter;
  private readonly watchClients: Gauge;
  private readonly lastTransition: Gauge;
  private readonly backendLatency: Histogram<'operation'>;
  private readonly backendErrors: Counter<'operation'>;
  private readonly renewals: Counter<'result'>;
  private readonly hookRuns: Counter<'event'>;
  private readonly hookFailures: Counter<'event'>;
  private readonly hookDuration: Histogram<'event'>;
  private readonly checkRuns: Counter;
  private readonly checkFailures: Counter;
  private readonly switchovers: Counter<'result'>;

  constructor(options: MetricsOptions) {
    const registers = [this.registry];
    const { status } = options;
    // The event-loop lag histogram samples on a timer; prom-client's default (every 10 ms) woke an
    // idle sidecar 100 times a second and cost it about half its idle CPU.
    collectDefaultMetrics({ register: this.registry, eventLoopMonitoringPrecision: EVENT_LOOP_SAMPLE_MS });
    for (const name of MISNAMED_DEFAULTS) this.registry.removeSingleMetric(name);

    new Gauge({
      name: 'leaderd_info',
      help: 'Constant 1, labelled with what this sidecar is.',
      labelNames: ['election', 'id', 'backend', 'version'],
      registers,
    }).set({ election: options.election, id: options.id, backend: options.backend, version: options.version }, 1);

    new Gauge({
      name: 'leader_election_master_status',
      help: '1 while this node is the primary, 0 otherwise (the metric client-go leader election exports).',
      labelNames: ['name'],
      registers,
      collect() {
        this.set({ name: options.election }, status().role === 'primary' ? 1 : 0);
      },
    });
    new Gauge({
      name: 'leaderd_role',
      help: '1 for the role this node is in now, 0 for the others.',
      labelNames: ['role'],
      registers,
      collect() {
        const role = status().role;
        for (const r of ROLES) this.set({ role: r }, r === role ? 1 : 0);
      },
    });
    new Gauge({
      name: 'leaderd_fencing_token',
      help: "The current leader's fencing token; 0 when no leader is known.",
      registers,
      collect() {
        this.set(status().leader?.fencingToken ?? 0);
      },
    });
    new Gauge({
      name: 'leaderd_backend_connected',
      help: '1 while this node holds a session whose lease deadline has not passed.',
      registers,
      collect() {
        this.set(status().connected ? 1 : 0);
      },
    });
    new Gauge({
      name: 'leaderd_lease_remaining_seconds',
      help: 'Seconds left before the local lease deadline, as of the last successful renewal.',
      registers,
      collect() {
        this.set(status().leaseRemainingMs / 1000);
      },
    });

    this.transitions = new Counter({
      name: 'leaderd_transitions_total',
      help: 'Role transitions, by direction (promote, demote).',
      labelNames: ['direction'],
      registers,
    });
    this.leaderChanges = new Counter({
      name: 'leaderd_leader_changes_total',
      help: 'Leader changes this node observed (a different leader, or a new term of the same one); counted on every node.',
      registers,
    });
    this.watchClients = new Gauge({
      name: 'leaderd_watch_clients',
      help: 'Clients connected to GET /watch now.',
      registers,
    });
    this.lastTransition = new Gauge({
      name: 'leaderd_last_transition_timestamp_seconds',
      help: 'Unix time of the last promote or demote.',
      registers,
    });
    this.backendLatency = new Histogram({
      name: 'leaderd_backend_request_duration_seconds',
      help: 'Latency of requests to the coordination service, by operation.',
      labelNames: ['operation'],
      buckets: [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5],
      registers,
    });
    this.backendErrors = new Counter({
      name: 'leaderd_backend_errors_total',
      help: 'Failed requests to the coordination service, by operation.',
      labelNames: ['operation'],
      registers,
    });
    this.renewals = new Counter({
      name: 'leaderd_lease_renewals_total',
      help: 'Lease renewals, by result (success, failure).',
      labelNames: ['result'],
      registers,
    });
    this.hookRuns = new Counter({
      name: 'leaderd_hook_runs_total',
      help: 'Hook runs, by event.',
      labelNames: ['event'],
      registers,
    });
    this.hookFailures = new Counter({
      name: 'leaderd_hook_failures_total',
      help: 'Hook runs that failed or timed out, by event.',
      labelNames: ['event'],
      registers,
    });
    this.hookDuration = new Histogram({
      name: 'leaderd_hook_duration_seconds',
      help: 'How long hooks ran, by event.',
      labelNames: ['event'],
      buckets: [0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60],
      registers,
    });
    const member = () => options.member?.();
    new Gauge({
      name: 'leaderd_member_position',
      help: "This member's position as its check last reported it (absent while unknown).",
      registers,
      collect() {
        this.reset();
        const position = member()?.position;
        if (position != null) this.set(Number(position));
      },
    });
    new Gauge({
      name: 'leaderd_member_lag',
      help: "How far this member's position is behind the last leader's published one (absent while unknown).",
      registers,
      collect() {
        this.reset();
        const lag = member()?.lag;
        if (lag != null) this.set(Number(lag));
      },
    });
    new Gauge({
      name: 'leaderd_member_healthy',
      help: '1 while the check passes.',
      registers,
      collect() {
        this.set(member()?.healthy ? 1 : 0);
      },
    });
    new Gauge({
      name: 'leaderd_member_eligible',
      help: '1 while this member could take leadership by its own facts: healthy, eligible by its check, priority above 0.',
      registers,
      collect() {
        const m = member();
        this.set(m && m.healthy && m.eligible && m.priority > 0 ? 1 : 0);
      },
    });
    new Gauge({
      name: 'leaderd_promote_failures_in_a_row',
      help: "This node's promote hooks that failed in a row; each doubles the hold-off before it stands again.",
      registers,
      collect() {
        this.set(options.promoteFailuresInARow?.() ?? 0);
      },
    });
    new Counter({
      name: 'leaderd_log_lines_dropped_total',
      help: 'Log lines dropped because stdout was full (a stalled reader) or closed.',
      registers,
      collect() {
        this.reset();
        this.inc(options.droppedLogLines?.() ?? 0);
      },
    });
    this.checkRuns = new Counter({ name: 'leaderd_check_runs_total', help: 'Check runs.', registers });
    this.checkFailures = new Counter({ name: 'leaderd_check_failures_total', help: 'Check runs that said unhealthy (failed, timed out, or bad output).', registers });
    this.switchovers = new Counter({
      name: 'leaderd_switchovers_total',
      help: 'Switchovers asked of this node, by result (completed, refused, timeout, failed).',
      labelNames: ['result'],
      registers,
    });
    for (const result of SWITCHOVER_RESULTS) this.switchovers.inc({ result }, 0);
    for (const direction of ['promote', 'demote']) this.transitions.inc({ direction }, 0);
    for (const result of ['success', 'failure']) this.renewals.inc({ result }, 0);
    for (const event of HOOK_EVENTS) {
      this.hookRuns.inc({ event }, 0);
      this.hookFailures.inc({ event }, 0);
    }
    for (const operation of BACKEND_OPERATIONS) this.backendErrors.inc({ operation }, 0);
  }

  transition({ event }: Transition): void {
    if (event === 'leader-change') {
      this.leaderChanges.inc();
      return;
    }
    this.transitions.inc({ direction: event });
    this.lastTransition.set(Date.now() / 1000);
  }

  /** A /watch client connected (+1) or went away (-1). */
  watchClient(delta: 1 | -1): void {
    this.watchClients.inc(delta);
  }

  backendRequest(operation: string, seconds: number, failed: boolean): void {
    this.backendLatency.observe({ operation }, seconds);
    if (failed) this.backendErrors.inc({ operation });
  }

  renewal(succeeded: boolean): void {
    this.renewals.inc({ result: succeeded ? 'success' : 'failure' });
  }

  checkRun(healthy: boolean): void {
    this.checkRuns.inc();
    if (!healthy) this.checkFailures.inc();
  }

  switchover(result: SwitchoverResult): void {
    this.switchovers.inc({ result });
  }

  hookRun(event: string, seconds: number, failed: boolean): void {
    this.hookRuns.inc({ event });
    this.hookDuration.observe({ event }, seconds);
    if (failed) this.hookFailures.inc({ event });
  }
}

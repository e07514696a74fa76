/**
 * leaderd as Prometheus sees it: promtool lints a live /metrics, checks and unit-tests the shipped
 * rules (deploy/prometheus/), and a real Prometheus scrapes three sidecars through a failover.
 */
import { afterEach, describe, expect, it } from 'vitest';
import { newElection, scratchFile } from './conformance.js';
import { PrometheusServer, RULES_FILE, RULES_TEST_FILE, promtool } from './harness/prometheus.js';
import { Sidecar } from './harness/sidecar.js';

const HOOKS = ['--on-promote', 'true', '--on-demote', 'true', '--on-leader-change', 'true'];

describe('Prometheus', () => {
  afterEach(() => Sidecar.killAll());

  it('promtool check metrics finds nothing to say about /metrics, with every family present', async () => {
    const node = await Sidecar.start('metrics-lint', ['--local-dir', scratchFile('dir'), '--election', newElection(), '--ttl', '2', '--check', 'true', ...HOOKS]);
    const watch = new AbortController();
    try {
      await node.waitForRole('primary', 20000);
      // A /watch client, so that its gauge says 1.
      const stream = await node.fetch('/watch', { signal: watch.signal });
      expect(stream.status).toBe(200);
      await node.waitForLog((l) => l.msg === 'hook succeeded' && l.hook === 'promote', 20000, 'promote hook');
      const text = await (await node.fetch('/metrics')).text();
      expect(await promtool(['check', 'metrics'], text)).toEqual({ code: 0, output: '' });
      // Counters with known labels are there from the start; the gauges new with this check.
      for (const line of [
        'leaderd_watch_clients 1',
        'leaderd_leader_changes_total 1',
        'leaderd_hook_failures_total{event="leader-change"} 0',
        'leaderd_backend_errors_total{operation="renew"} 0',
        'leaderd_log_lines_dropped_total 0',
      ]) {
        expect(text.split('\n')).toContain(line);
      }
    } finally {
      watch.abort();
    }
  });

  it('the shipped rules pass promtool check rules and their unit tests', async () => {
    const checked = await promtool(['check', 'rules', RULES_FILE]);
    expect(checked.output).toMatch(/SUCCESS: \d+ rules found/);
    expect(checked.code).toBe(0);
    const tested = await promtool(['test', 'rules', RULES_TEST_FILE]);
    expect(tested.output).toMatch(/SUCCESS/);
    expect(tested.code).toBe(0);
  });

  it('a real Prometheus sees one primary, then the new one alone, through a failover, and no alert fires', async () => {
    const dir = scratchFile('dir');
    const election = newElection();
    const nodes = await Promise.all(['p1', 'p2', 'p3'].map((id) => Sidecar.start(id, ['--local-dir', dir, '--election', election, '--ttl', '2'])));
    const target = (node: Sidecar) => new URL(node.url).host;
    const prometheus = await PrometheusServer.start(nodes.map(target), 500);
    try {
      const primaryOf = async () => (await Promise.race(nodes.map(async (n) => (await n.waitForRole('primary', 20000), n))));
      const first = await primaryOf();
      const onePrimary = (node: Sidecar) => (samples: { metric: Record<string, string> }[]) =>
        samples.length === 1 && samples[0]!.metric.instance === target(node);
      await prometheus.until('leader_election_master_status == 1', onePrimary(first), 20000);
      await prometheus.until('leaderd:primaries:sum', (s) => s.length === 1 && s[0]!.value === 1 && s[0]!.metric.name === election, 20000);

      await first.stop();
      const rest = nodes.filter((n) => n !== first);
      const second = await Promise.race(rest.map(async (n) => (await n.waitForRole('primary', 20000), n)));
      // Prometheus follows: the old primary's target is down, the new one is the only primary.
      await prometheus.until(`up{instance="${target(first)}"} == 0`, (s) => s.length === 1, 20000);
      await prometheus.until('leader_election_master_status == 1', onePrimary(second), 20000);
      await prometheus.until('leaderd:primaries:sum', (s) => s.length === 1 && s[0]!.value === 1, 20000);
      // Every node that stayed saw the leader change.
      await prometheus.until('leaderd_leader_changes_total >= 2', (s) => s.length === 2, 20000);
      // The rules are evaluated (the recording rule above); a failover this quick fires nothing
      // (LeaderdNoPrimary may be pending from the moments before the first election).
      expect(await prometheus.query('ALERTS{alertstate="firing"}')).toEqual([]);
    } finally {
      await prometheus.stop();
    }
  });
});

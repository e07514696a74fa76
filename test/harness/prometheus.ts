/**
 * Prometheus for the tests: Debian's `prometheus` package, which ships `promtool` too. A server
 * scrapes given targets on loopback with leaderd's rules loaded, from a throwaway data directory;
 * `promtool` lints metrics and checks and unit-tests the rules, as an operator would.
 */
import { execFile, spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { freePort } from './ports.js';
import { aptInstall, runs } from './system.js';

export const PROMETHEUS_BINARY = '/usr/bin/prometheus';
export const PROMTOOL_BINARY = '/usr/bin/promtool';
export const RULES_FILE = fileURLToPath(new URL('../../deploy/prometheus/leaderd-rules.yaml', import.meta.url));
export const RULES_TEST_FILE = fileURLToPath(new URL('../../deploy/prometheus/leaderd-rules.test.yaml', import.meta.url));

export function ensurePrometheusInstalled(): void {
  if (runs(PROMTOOL_BINARY, ['--version']) && runs(PROMETHEUS_BINARY, ['--version'])) return;
  aptInstall('prometheus');
  if (!runs(PROMTOOL_BINARY, ['--version'])) throw new Error(`installing prometheus did not provide ${PROMTOOL_BINARY}`);
}

/** Runs promtool; resolves with its exit code and output (stdout and stderr together). */
export function promtool(args: readonly string[], stdin?: string): Promise<{ code: number; output: string }> {
  return new Promise((resolve) => {
    const child = execFile(PROMTOOL_BINARY, [...args], { timeout: 30000 }, (error, stdout, stderr) => {
      const code = error ? (typeof error.code === 'number' ? error.code : 1) : 0;
      resolve({ code, output: `${stdout}${stderr}` });
    });
    if (stdin !== undefined) child.stdin!.end(stdin);
  });
}

export interface Sample {
  metric: Record<string, string>;
  value: number;
}

export class PrometheusServer {
  private constructor(
    readonly url: string,
    private readonly child: ChildProcess,
    private readonly exited: Promise<void>,
    private readonly dataDir: string,
  ) {}

  /**
   * Starts Prometheus scraping `targets` (HOST:PORT) every `intervalMs` as job "leaderd",
   * evaluating leaderd's rules as often; resolves once it is ready.
   */
  static async start(targets: readonly string[], intervalMs: number): Promise<PrometheusServer> {
    const dataDir = mkdtempSync(join(tmpdir(), 'leaderd-prometheus-'));
    const config = join(dataDir, 'prometheus.yml');
    writeFileSync(
      config,
      JSON.stringify({
        global: { scrape_interval: `${intervalMs}ms`, evaluation_interval: `${intervalMs}ms` },
        rule_files: [RULES_FILE],
        scrape_configs: [{ job_name: 'leaderd', static_configs: [{ targets }] }],
      }),
    );
    const url = `http://127.0.0.1:${await freePort()}`;
    const log: string[] = [];
    const child = spawn(
      PROMETHEUS_BINARY,
      [`--config.file=${config}`, `--storage.tsdb.path=${join(dataDir, 'data')}`, `--web.listen-address=${new URL(url).host}`],
      { stdio: ['ignore', 'ignore', 'pipe'] },
    );
    child.stderr!.on('data', (chunk: Buffer) => log.push(chunk.toString()));
    const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
    const server = new PrometheusServer(url, child, exited, dataDir);
    const deadline = Date.now() + 30000;
    for (;;) {
      if (child.exitCode !== null) throw new Error(`prometheus exited: ${log.join('').slice(-2000)}`);
      try {
        if ((await fetch(`${url}/-/ready`, { signal: AbortSignal.timeout(1000) })).ok) return server;
      } catch {
        // not listening yet
      }
      if (Date.now() > deadline) {
        await server.stop();
        throw new Error(`prometheus did not become ready: ${log.join('').slice(-2000)}`);
      }
      await new Promise((r) => setTimeout(r, 100));
    }
  }

  /** An instant query's vector. */
  async query(expr: string): Promise<Sample[]> {
    const response = await fetch(`${this.url}/api/v1/query?query=${encodeURIComponent(expr)}`, { signal: AbortSignal.timeout(5000) });
    const body = (await response.json()) as { status: string; error?: string; data?: { result: Array<{ metric: Record<string, string>; value: [number, string] }> } };
    if (body.status !== 'success') throw new Error(`query ${expr}: ${body.error ?? response.status}`);
    return body.data!.result.map(({ metric, value }) => ({ metric, value: Number(value[1]) }));
  }

  /** Resolves with the first answer to `expr` that `matches`, querying every 100 ms. */
  async until(expr: string, matches: (samples: Sample[]) => boolean, timeoutMs: number): Promise<Sample[]> {
    const deadline = Date.now() + timeoutMs;
    let last: Sample[] = [];
    for (;;) {
      last = await this.query(expr);
      if (matches(last)) return last;
      if (Date.now() > deadline) throw new Error(`no matching answer to ${expr} within ${timeoutMs} ms (last: ${JSON.stringify(last)})`);
      await new Promise((r) => setTimeout(r, 100));
    }
  }

  async stop(): Promise<void> {
    this.child.kill('SIGTERM');
    await this.exited;
    rmSync(this.dataDir, { recursive: true, force: true });
  }
}

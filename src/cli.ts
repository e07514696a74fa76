/**
 * `leaderd`: reads the configuration, wires the elector to its backend, hooks, metrics and HTTP
 * API, and handles the process's life: signals, fatal errors, exit codes.
 *
 * Exit codes: 0 after a clean shutdown, 1 on an unexpected failure, 2 when the configuration
 * (flags, environment, file, or a backend's answer about it) must be fixed.
 */
import { readFileSync } from 'node:fs';
import type { Server } from 'node:http';
import { BACKENDS, createBackend } from '../adapters/index.js';
import { ConfigError, helpText, parseCommand, withSource, type Config } from './config.js';
import { Elector, errorMessage } from './elector.js';
import { HookRunner } from './hooks.js';
import { createHttpServer, listen } from './http.js';
import { createLogging, type Logging } from './log.js';
import { Member } from './member.js';
import { Metrics } from './metrics.js';
import { clusterCommand } from './cluster-command.js';
import { checkCommands } from './preflight.js';
import { PromoteFailures } from './backoff.js';

/** The longest leaderd waits, before exiting, for its last log lines to be written. */
const LOG_FLUSH_MS = 1000;

const VERSION = (JSON.parse(readFileSync(new URL('../../package.json', import.meta.url), 'utf8')) as { version: string }).version;

export async function main(argv: readonly string[]): Promise<void> {
  if (argv[0] === 'cluster') return void process.exit(await clusterCommand(argv.slice(1), process.env));
  let config: Config;
  try {
    const command = parseCommand(argv, process.env, BACKENDS);
    if (command.kind === 'help') return void process.stdout.write(helpText(VERSION));
    if (command.kind === 'version') return void process.stdout.write(`${VERSION}\n`);
    config = command.config;
    checkCommands(config);
  } catch (error) {
    if (!(error instanceof ConfigError)) throw error;
    process.stderr.write(`leaderd: invalid configuration: ${error.message}\n`);
    process.exit(2);
  }
  await run(config);
}

async function run(config: Config): Promise<void> {
  const logging = createLogging(config.logLevel, { election: config.election, id: config.id });
  const { log } = logging;
  process.on('uncaughtException', (error) => crash(logging, error));
  process.on('unhandledRejection', (error) => crash(logging, error));

  const timing = {
    ttlMs: config.leaseSeconds * 1000,
    renewIntervalMs: (config.leaseSeconds * 1000) / 3,
    renewDeadlineMs: config.renewDeadlineSeconds * 1000,
  };
  const backend = await createBackend(config, log.child({ backend: config.backend }));
  let exiting = false;
  const shutdown = async (code: number, reason: string) => {
    if (exiting) return;
    exiting = true;
    log.info({ reason }, 'shutting down');
    member.stop();
    hooks.stopRetrying();
    await elector.stop();
    server?.closeAllConnections();
    server?.close();
    log.info('stopped');
    // The log is written asynchronously: give it a moment to reach a reader, never more.
    await logging.flush(LOG_FLUSH_MS);
    process.exit(code);
  };

  const promoteFailures = new PromoteFailures();
  const member: Member = new Member({
    election: config.election,
    id: config.id,
    address: config.address,
    check: config.member.check,
    checkIntervalMs: config.member.checkIntervalSeconds * 1000,
    checkTimeoutMs: config.member.checkTimeoutSeconds * 1000,
    priority: config.member.priority,
    maxLag: config.member.maxLag,
    unhealthyAfterMs: config.member.unhealthyAfterSeconds * 1000,
    ttlMs: timing.ttlMs,
    log,
    elector: () => elector,
    listener: { checkRun: (healthy) => metrics.checkRun(healthy), switchover: (result) => metrics.switchover(result) },
  });
  const elector: Elector = new Elector({
    election: config.election,
    candidate: { id: config.id, address: config.address },
    backend,
    timing,
    log,
    settle: () => hooks.idle(),
    gate: member,
    fatal: (error) => {
      // Named like a refusal at start: the setting, then where it was set.
      const message = withSource(new ConfigError(error.message), config.sources).message;
      log.error({ err: message }, 'the backend refused the configuration');
      process.stderr.write(`leaderd: invalid configuration: ${message}\n`);
      void shutdown(2, 'configuration refused by the backend');
    },
  });
  const metrics = new Metrics({
    election: config.election,
    id: config.id,
    backend: backend.kind,
    version: VERSION,
    status: () => elector.status(),
    member: () => member.state(),
    droppedLogLines: () => logging.dropped(),
    promoteFailuresInARow: () => promoteFailures.inARow,
  });
  const hooks: HookRunner = new HookRunner({
    election: config.election,
    id: config.id,
    exec: config.hooks.exec,
    url: config.hooks.url,
    timeoutMs: config.hooks.timeoutSeconds * 1000,
    log,
    listener: {
      hookRun: (event, seconds, failed) => {
        metrics.hookRun(event, seconds, failed);
        if (event === 'promote' && !failed) promoteFailures.reset();
      },
    },
    holdsTerm: (token) => elector.holdsTerm(token),
    promoteFailed: (reason) => {
      const holdOffMs = promoteFailures.failed(config.ttlSeconds * 1000);
      if (config.hooks.promoteFailure !== 'resign') return;
      if (promoteFailures.inARow > 1) {
        log.warn(
          { failuresInARow: promoteFailures.inARow, holdOffSeconds: holdOffMs / 1000 },
          'the promote hook keeps failing: staying out of the race longer each time',
        );
      }
      void elector.resign(holdOffMs, reason);
    },
  });
  elector.subscribe(metrics);
  elector.subscribe({
    transition: ({ event, leader }) => {
      if (event === 'leader-change' && leader !== null && leader.id !== config.id) promoteFailures.reset();
    },
  });
  elector.subscribe({ transition: (transition) => hooks.enqueue(transition) });

  let server: Server | undefined;
  const http = createHttpServer({
    election: config.election,
    id: config.id,
    ttlSeconds: config.ttlSeconds,
    backend: backend.kind,
    elector,
    member,
    metrics,
    adminToken: config.adminToken,
    maxLag: config.member.maxLag,
    log,
  });
  try {
    server = await listen(http, config.http.host, config.http.port);
  } catch (error) {
    process.stderr.write(`leaderd: http: cannot listen on ${config.http.host}:${config.http.port}: ${errorMessage(error)}\n`);
    process.exit(2);
  }
  const address = server.address();
  log.info(
    {
      // An IPv6 address bracketed, as in a URL: "[::1]:7070", not "::1:7070".
      http: typeof address === 'object' && address ? `${address.family === 'IPv6' ? `[${address.address}]` : address.address}:${address.port}` : String(address),
      backend: backend.kind,
      ttlSeconds: config.ttlSeconds,
      leaseSeconds: config.leaseSeconds,
      // Durations in whole milliseconds: the default renew deadline is 2/3 of the lease.
      renewDeadlineSeconds: Math.round(config.renewDeadlineSeconds * 1000) / 1000,
      // Which events have hooks, not the commands: their arguments may carry credentials.
      hooks: [...Object.keys(config.hooks.exec), ...(config.hooks.url ? ['url'] : [])],
      admin: config.adminToken !== null,
      check: config.member.check !== null,
      priority: config.member.priority,
      maxLag: config.member.maxLag?.toString() ?? null,
      version: VERSION,
    },
    'leaderd started',
  );
  for (const warning of config.warnings) log.warn(warning);

  // Not the default (exit without a demote): a hangup of the terminal leaderd was started from
  // must not end a primary's term uncleanly, and SIGHUP is how daemons are told to reload.
  process.on('SIGHUP', () => {
    log.info('SIGHUP: reading the TLS files again, if there are any');
    backend.reload?.();
  });
  for (const signal of ['SIGTERM', 'SIGINT'] as const) {
    process.on(signal, () => {
      if (exiting) {
        log.warn({ signal }, 'second signal: exiting at once');
        process.exit(1);
      }
      void shutdown(0, signal);
    });
  }
  elector.start();
  member.start();
}

function crash(logging: Logging, error: unknown): void {
  logging.log.fatal({ err: error instanceof Error ? (error.stack ?? error.message) : String(error) }, 'unexpected failure');
  void logging.flush(LOG_FLUSH_MS).finally(() => process.exit(1));
}

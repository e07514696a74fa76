/**
 * Configuration from flags, LEADERD_* environment variables and a YAML file, in that order of
 * precedence, over built-in defaults. One table (OPTIONS) names every setting once: its flag,
 * its variable (LEADERD_ + the flag in upper snake case) and its file key (the flag's name) all
 * derive from it, and so does `--help`. Validation happens once, here, with messages that name
 * the setting and the relation that is broken.
 */
import { readFileSync, statSync } from 'node:fs';
import { homedir, hostname } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { parse as parseShellWords } from 'shell-quote';
import { parse as parseYaml } from 'yaml';
import { z } from 'zod';
import type { TransitionEvent } from './elector.js';
import { LOG_LEVELS, type LogLevel } from './log.js';
import { PRIORITY_LIMIT } from './cluster.js';
import { hasTlsFiles, readTlsFiles, TlsFileError, type TlsFileSettings } from './tls-files.js';

interface OptionSpec {
  readonly value: string;
  readonly help: string;
  readonly default?: string;
}

export const OPTIONS = {
  config: { value: 'FILE', help: 'YAML file with any of these settings, keyed by flag name' },
  backend: { value: 'KIND', help: 'coordination service: local, etcd, zookeeper or consul', default: 'local' },
  election: { value: 'NAME', help: 'election name; candidates of the same election compete', default: 'default' },
  id: { value: 'ID', help: "this candidate's unique name", default: '(hostname)' },
  address: { value: 'ADDR', help: 'what replicas connect to when this node is primary', default: '(the id)' },
  ttl: { value: 'SECONDS', help: 'lease time to live: how long a dead primary can block a new one', default: '10' },
  'renew-deadline': { value: 'SECONDS', help: 'a primary that could not renew for this long steps down (< the lease)', default: '2/3 of the lease; 1/2 on ZooKeeper' },
  http: { value: 'HOST:PORT', help: 'where the HTTP API listens (port 0: any free port)', default: '127.0.0.1:7070' },
  'etcd-endpoints': { value: 'URLS', help: 'comma-separated etcd client URLs', default: 'http://127.0.0.1:2379' },
  'etcd-prefix': { value: 'PREFIX', help: 'key prefix; keys live under PREFIX/ELECTION/', default: '/leaderd' },
  'etcd-ca-file': { value: 'FILE', help: "CA certificates that verify etcd's (https:// endpoints)", default: "the system's" },
  'etcd-cert-file': { value: 'FILE', help: 'client certificate for mutual TLS (with etcd-key-file)' },
  'etcd-key-file': { value: 'FILE', help: 'private key of etcd-cert-file' },
  'etcd-username': { value: 'USER', help: 'etcd user (with etcd-password-file)' },
  'etcd-password': { value: 'PASSWORD', help: 'password of etcd-username (prefer --etcd-password-file)' },
  'etcd-password-file': { value: 'FILE', help: 'file holding the password of etcd-username' },
  'zk-connect': { value: 'HOSTS', help: 'ZooKeeper host:port[,host:port...][/chroot]', default: '127.0.0.1:2181' },
  'zk-prefix': { value: 'PATH', help: 'znode path; candidates live under PATH/ELECTION/', default: '/leaderd' },
  'zk-auth': { value: 'USER:PASSWORD', help: 'ZooKeeper digest credentials (prefer --zk-auth-file)' },
  'zk-auth-file': { value: 'FILE', help: 'file holding the ZooKeeper digest credentials USER:PASSWORD' },
  'consul-addr': { value: 'URL', help: "the Consul agent's HTTP API", default: 'http://127.0.0.1:8500' },
  'consul-token': { value: 'TOKEN', help: 'Consul ACL token (prefer --consul-token-file)' },
  'consul-token-file': { value: 'FILE', help: 'file holding the Consul ACL token' },
  'consul-ca-file': { value: 'FILE', help: "CA certificates that verify the agent's (https:// consul-addr)", default: "the system's" },
  'consul-cert-file': { value: 'FILE', help: 'client certificate for the agent (with consul-key-file)' },
  'consul-key-file': { value: 'FILE', help: 'private key of consul-cert-file' },
  'consul-key-prefix': { value: 'PREFIX', help: 'KV prefix; the lock is PREFIX/ELECTION/leader', default: 'leaderd' },
  'consul-check-ttl': { value: 'SECONDS', help: "TTL of the candidate's health check: the lease on Consul (< ttl)", default: '3' },
  'consul-lock-delay': { value: 'SECONDS', help: 'Consul lock-delay after a session is invalidated (0-60)', default: 'the renew deadline + 0.25' },
  'consul-datacenter': { value: 'DC', help: 'Consul datacenter', default: "(the agent's)" },
  'local-dir': { value: 'DIR', help: 'directory shared by the candidates of the local backend', default: '/var/lib/leaderd as root, else ${XDG_STATE_HOME:-~/.local/state}/leaderd' },
  'on-promote': { value: 'CMD', help: 'command run (no shell) when this node becomes primary' },
  'on-demote': { value: 'CMD', help: 'command run when this node stops being primary' },
  'on-leader-change': { value: 'CMD', help: 'command run on every node when the leader changes' },
  'hook-url': { value: 'URL', help: 'URL that receives a POST of every hook event as JSON' },
  'hook-timeout': { value: 'SECONDS', help: 'a hook still running after this is stopped and counts as failed', default: '30' },
  check: { value: 'CMD', help: 'health and position check of the application (no shell); see "Replication-aware failover"' },
  'check-interval': { value: 'SECONDS', help: 'how often the check runs', default: 'the renew interval, a third of the lease' },
  'check-timeout': { value: 'SECONDS', help: 'a check still running after this is stopped and counts as failed', default: 'the renew interval' },
  'unhealthy-after': { value: 'SECONDS', help: 'a primary whose check has failed without a pass for this long steps down', default: 'the ttl' },
  priority: { value: 'N', help: `0 never leads; at equal positions the higher priority leads (0-${PRIORITY_LIMIT})`, default: '1' },
  'max-lag': { value: 'N', help: 'never lead when further behind the last leader\'s position (units of the check\'s position)', default: 'unlimited' },
  'promote-failure': { value: 'ACTION', help: 'when the promote hook fails: resign or ignore', default: 'resign' },
  'admin-token': { value: 'TOKEN', help: 'bearer token for POST /resign (prefer --admin-token-file)' },
  'admin-token-file': { value: 'FILE', help: 'file holding the admin bearer token' },
  'log-level': { value: 'LEVEL', help: LOG_LEVELS.join(', '), default: 'info' },
} as const satisfies Record<string, OptionSpec>;

export type OptionName = keyof typeof OPTIONS;
const OPTION_NAMES = Object.keys(OPTIONS) as OptionName[];

export interface BackendRequirements {
  /** Smallest ttl the service honours as asked (seconds). */
  readonly minimumTtlSeconds: number;
  /** The service keeps leases in whole seconds only. */
  readonly wholeSecondTtl?: boolean;
  /**
   * The largest renew deadline, as a fraction of the lease, for which the service keeps the
   * adapter contract (src/backend.ts); when below 2/3, it is also the default.
   */
  readonly maximumRenewDeadlineFraction?: number;
}

/**
 * The least time between a node's renew deadline and the end of its lease. At its deadline a
 * primary stops answering as primary and starts its demote hook; the margin is what separates
 * that moment from the earliest a successor can be granted the lease (timer latency, a hook's
 * start, a service that ends a session right after a renewal). See docs/safety.md.
 */
export const DEADLINE_MARGIN_SECONDS = 0.25;

/** The default renew deadline as a fraction of the lease: 2/3, or the backend's maximum if lower. */
export function renewDeadlineFraction(requirements: BackendRequirements): number {
  return Math.min(2 / 3, requirements.maximumRenewDeadlineFraction ?? 1);
}

export interface Config {
  readonly backend: string;
  readonly election: string;
  readonly id: string;
  readonly address: string;
  /** The backend's own ttl (etcd lease, ZooKeeper session, Consul session). */
  readonly ttlSeconds: number;
  /**
   * The lease the local deadline is timed from: the ttl, except on Consul, where the candidate's
   * health check (shorter) can end the session first.
   */
  readonly leaseSeconds: number;
  readonly renewDeadlineSeconds: number;
  readonly http: { readonly host: string; readonly port: number };
  readonly etcd: {
    readonly endpoints: readonly string[];
    readonly prefix: string;
    /** CA, client certificate and key files; null: plain http://, or https:// with the system's CAs only. */
    readonly tls: TlsFileSettings | null;
    readonly auth: { readonly username: string; readonly password: string } | null;
  };
  readonly zookeeper: { readonly connect: string; readonly prefix: string; readonly auth: string | null };
  readonly consul: {
    readonly address: string;
    readonly token: string | null;
    readonly tls: TlsFileSettings | null;
    readonly keyPrefix: string;
    readonly checkTtlSeconds: number;
    readonly lockDelaySeconds: number;
    readonly datacenter: string | null;
  };
  readonly local: { readonly dir: string };
  readonly hooks: {
    readonly exec: Partial<Record<TransitionEvent, readonly string[]>>;
    readonly url: string | null;
    readonly timeoutSeconds: number;
    readonly promoteFailure: 'resign' | 'ignore';
  };
  readonly member: {
    /** argv, run without a shell; null: always healthy, position unknown. */
    readonly check: readonly string[] | null;
    readonly checkIntervalSeconds: number;
    readonly checkTimeoutSeconds: number;
    readonly priority: number;
    readonly maxLag: bigint | null;
    readonly unhealthyAfterSeconds: number;
  };
  readonly adminToken: string | null;
  readonly logLevel: LogLevel;
  /** Settings that work but deserve a look (a secret file others can read), logged at start. */
  readonly warnings: readonly string[];
  /** Where each setting that was given came from ("set by --ttl"), for messages about it. */
  readonly sources: Readonly<Partial<Record<OptionName, string>>>;
}

/** A configuration a user must fix; the message names the setting. */
export class ConfigError extends Error {
  override readonly name = 'ConfigError';
}

export type Command = { readonly kind: 'help' } | { readonly kind: 'version' } | { readonly kind: 'run'; readonly config: Config };

export function envName(option: string): string {
  return `LEADERD_${option.toUpperCase().replace(/-/g, '_')}`;
}

export function helpText(version: string): string {
  const rows = OPTION_NAMES.map((name) => {
    const spec: OptionSpec = OPTIONS[name];
    const left = `  --${name} ${spec.value}`;
    const def = spec.default ? ` [default: ${spec.default}]` : '';
    return `${left.padEnd(34)}${spec.help}${def}\n${' '.repeat(34)}env ${envName(name)}`;
  });
  return [
    `leaderd ${version}: leader-election sidecar`,
    '',
    'Usage: leaderd [options]',
    '',
    'Options (precedence: flag > environment > --config file > default):',
    ...rows,
    '  -h, --help                      show this help',
    '  -v, --version                   print the version',
    '',
    'HTTP API: GET /role /primary /replica[?lag=N] /healthz / /watch /cluster /metrics; POST /resign /switchover',
    '',
    'Also: leaderd cluster [--http HOST:PORT]   the members of the election, as one sidecar sees them',
    '',
  ].join('\n');
}

export function parseCommand(
  argv: readonly string[],
  env: NodeJS.ProcessEnv,
  backends: Readonly<Record<string, BackendRequirements>>,
): Command {
  let parsed;
  try {
    parsed = parseArgs({
      args: [...argv],
      options: {
        // Every flag is collected as a list so that one given twice is refused below: with
        // last-wins, `--ttl 5 ... --ttl 50` in a long unit file silently means 50.
        ...Object.fromEntries(OPTION_NAMES.map((name) => [name, { type: 'string' as const, multiple: true }])),
        help: { type: 'boolean', short: 'h' },
        version: { type: 'boolean', short: 'v' },
      },
      strict: true,
      allowPositionals: false,
    });
  } catch (error) {
    throw new ConfigError(flagError(error));
  }
  const { help, version, ...given } = parsed.values as Partial<Record<OptionName, string[]>> & { help?: boolean; version?: boolean };
  if (help) return { kind: 'help' };
  if (version) return { kind: 'version' };

  const flags: Partial<Record<OptionName, string>> = {};
  for (const [name, values] of Object.entries(given) as Array<[OptionName, string[]]>) {
    // Without the values: they may be secrets (a token, credentials in a URL, a hook's arguments).
    if (values.length > 1) throw new ConfigError(`${name}: --${name} is given ${values.length} times; give it once`);
    flags[name] = values[0];
  }

  const fromEnv = settingsFromEnvironment(env);
  const sources: Partial<Record<OptionName, string>> = {};
  for (const name of Object.keys(fromEnv) as OptionName[]) sources[name] = `set by ${envName(name)}`;
  for (const name of Object.keys(flags) as OptionName[]) sources[name] = `set by --${name}`;
  const configFile = flags.config ?? fromEnv.config;
  try {
    const fromFile = configFile ? readConfigFile(configFile) : {};
    for (const name of Object.keys(fromFile) as OptionName[]) sources[name] ??= `set in ${configFile}`;
    return { kind: 'run', config: { ...validate({ ...fromFile, ...fromEnv, ...flags }, backends), sources } };
  } catch (error) {
    throw error instanceof ConfigError ? withSource(error, sources) : error;
  }
}

/**
 * The variables a hook or a check is started with (src/hooks.ts, src/check.ts): facts about the
 * leaderd that started it, not settings. Two of them share their names with settings (`id`,
 * `election`) and one with `check`.
 */
const FACT_VARIABLES = [
  'LEADERD_EVENT',
  'LEADERD_ELECTION',
  'LEADERD_ID',
  'LEADERD_ROLE',
  'LEADERD_LEADER_ID',
  'LEADERD_LEADER_ADDRESS',
  'LEADERD_FENCING_TOKEN',
  'LEADERD_CHECK',
] as const;

/** Service-link variables of a Service (Kubernetes) or a linked container (Docker) named leaderd. */
const SERVICE_LINK = /^LEADERD_(SERVICE_HOST|SERVICE_PORT(_\w+)?|PORT(_\w+)?|NAME|ENV_\w+)$/;

/**
 * The LEADERD_* settings in `env`. A variable that names no setting is refused: a typo
 * (`LEADERD_TTLL`) would otherwise leave the default in force without a word, as an unknown key
 * in the config file is refused too. The platform's service-link variables (SERVICE_LINK) are
 * left alone.
 *
 * A leaderd started by a hook or a check of another one (a script that runs `leaderd cluster`, a
 * test harness) inherits that one's facts, never its settings: leaderd strips its own LEADERD_*
 * variables from what it passes on. The facts are recognised by the ones that are always set
 * together (role, leader, token), and are then ignored rather than read as this leaderd's id,
 * election or check.
 */
function settingsFromEnvironment(env: NodeJS.ProcessEnv): Partial<Record<OptionName, string>> {
  const startedByLeaderd = ['LEADERD_ROLE', 'LEADERD_LEADER_ID', 'LEADERD_LEADER_ADDRESS', 'LEADERD_FENCING_TOKEN'].every((name) => env[name] !== undefined);
  const byVariable = new Map(OPTION_NAMES.map((name) => [envName(name), name]));
  const settings: Partial<Record<OptionName, string>> = {};
  for (const [variable, value] of Object.entries(env)) {
    if (!variable.startsWith('LEADERD_') || value === undefined) continue;
    // Not ours, but put there by the platform: Kubernetes gives every pod LEADERD_SERVICE_HOST,
    // LEADERD_PORT_7070_TCP and the like for a Service named leaderd in its namespace, and
    // Docker's --link does the same for a container named leaderd.
    if (SERVICE_LINK.test(variable)) continue;
    if (startedByLeaderd && (FACT_VARIABLES as readonly string[]).includes(variable)) continue;
    const name = byVariable.get(variable);
    if (!name) throw new ConfigError(`${variable}: no such setting${suggestion(variable, [...byVariable.keys()])}`);
    if (value !== '') settings[name] = value;
  }
  return settings;
}

/** "; did you mean X?" for the closest known name when one is close enough to be a typo, else a pointer to --help. */
function suggestion(name: string, known: readonly string[]): string {
  let best: string | undefined;
  let bestDistance = Infinity;
  for (const candidate of known) {
    const distance = editDistance(name, candidate);
    if (distance < bestDistance) [best, bestDistance] = [candidate, distance];
  }
  return best !== undefined && bestDistance <= 2 ? `; did you mean ${best}?` : ' (see --help)';
}

function editDistance(a: string, b: string): number {
  let previous = Array.from({ length: b.length + 1 }, (_, j) => j);
  for (let i = 1; i <= a.length; i++) {
    const current = [i];
    for (let j = 1; j <= b.length; j++) {
      current[j] = Math.min(previous[j]! + 1, current[j - 1]! + 1, previous[j - 1]! + (a[i - 1] === b[j - 1] ? 0 : 1));
    }
    previous = current;
  }
  return previous[b.length]!;
}

/** Appends where the setting a message names came from: a flag, a variable or the file. */
export function withSource(error: ConfigError, sources: Partial<Record<OptionName, string>>): ConfigError {
  const name = /^([a-z-]+):/.exec(error.message)?.[1] as OptionName | undefined;
  const source = name ? sources[name] : undefined;
  return source ? new ConfigError(`${error.message} (${source})`) : error;
}

function flagError(error: unknown): string {
  const message = error instanceof Error ? error.message : String(error);
  const unknown = /Unknown option '([^']+)'/.exec(message);
  if (unknown) return `unknown flag ${unknown[1]} (see --help)`;
  const missing = /Option '([^']+?)(?: <value>)?' argument missing/.exec(message);
  if (missing?.[1]) return `flag ${missing[1].replace(/^-\w, /, '')} needs a value`;
  const ambiguous = /Option '([^']+?)' argument is ambiguous/.exec(message);
  if (ambiguous?.[1]) return `flag ${ambiguous[1].replace(/^-\w, /, '')}: a value that starts with "-" must be written ${ambiguous[1].replace(/^-\w, /, '')}=VALUE`;
  return message.split('\n')[0] ?? message;
}

function readConfigFile(path: string): Record<string, unknown> {
  let text: string;
  try {
    text = readFileSync(path, 'utf8');
  } catch (error) {
    throw new ConfigError(`config: cannot read ${path}: ${(error as NodeJS.ErrnoException).code ?? error}`);
  }
  let document: unknown;
  try {
    document = parseYaml(text);
  } catch (error) {
    throw new ConfigError(`config: ${path} is not valid YAML: ${(error as Error).message.split('\n')[0]}`);
  }
  if (document === null || document === undefined) return {};
  if (typeof document !== 'object' || Array.isArray(document)) {
    throw new ConfigError(`config: ${path} must hold a mapping of settings (e.g. "ttl: 10")`);
  }
  for (const key of Object.keys(document)) {
    if (key === 'config' || !(key in OPTIONS)) throw new ConfigError(`config: unknown setting "${key}" in ${path}`);
  }
  return document as Record<string, unknown>;
}

// ---- validation -------------------------------------------------------------------------------

const text = z.union([z.string(), z.number()]).transform(String);
/** Consul ignores any lock-delay beyond a minute. */
const CONSUL_MAXIMUM_LOCK_DELAY_SECONDS = 60;

/**
 * Timers hold at most 2^31-1 ms (24.8 days); a day is also Consul's longest session TTL. A longer
 * lease could not be timed at all.
 */
const MAXIMUM_SECONDS = 86400;
/**
 * Numbers are written in decimal, as a person means them: Number() alone would take "0x10" for 16,
 * "" for 0 and " 10 " for 10, and a unit ("10s") deserves its own answer.
 */
const DECIMAL = /^-?(\d+(\.\d*)?|\.\d+)(e[+-]?\d+)?$/i;
const decimal = (what: string) =>
  z.union([z.string(), z.number()]).transform((value, ctx) => {
    if (typeof value === 'number') return value;
    if (DECIMAL.test(value)) return Number(value);
    const unit = /^\s*[\d.]+\s*(ms|s|sec|m|min|h)\s*$/i.exec(value);
    ctx.addIssue({ code: 'custom', message: `must be ${what}${unit ? ', without a unit' : ''}, got ${JSON.stringify(value)}` });
    return z.NEVER;
  });
const seconds = (min: number) =>
  decimal('a number of seconds')
    .refine(Number.isFinite, 'must be a number of seconds')
    .refine((n) => n >= min, `must be at least ${min}`)
    .refine((n) => n <= MAXIMUM_SECONDS, `must be at most ${MAXIMUM_SECONDS} (a day)`);
const list = z
  .union([z.string(), z.array(z.string())])
  .transform((v) => (Array.isArray(v) ? v : v.split(',')).map((s) => s.trim()).filter(Boolean));

const command = z.union([z.string(), z.array(z.string())]).transform((value, ctx) => {
  const words = Array.isArray(value) ? value : parseShellWords(value, (name) => `$${name}`);
  const argv: string[] = [];
  for (const word of words) {
    if (typeof word !== 'string') {
      ctx.addIssue({ code: 'custom', message: 'commands run without a shell: pipes, redirections and globs are not allowed (wrap them in a script)' });
      return z.NEVER;
    }
    argv.push(word);
  }
  if (argv.length === 0) {
    ctx.addIssue({ code: 'custom', message: 'must name a command' });
    return z.NEVER;
  }
  return argv;
});

const hostPort = text.transform((value, ctx) => {
  const match = /^(?:\[([0-9a-fA-F:.]+)\]|([^:[\]]+)):(\d{1,5})$/.exec(value);
  const port = Number(match?.[3]);
  if (!match || port > 65535) {
    ctx.addIssue({ code: 'custom', message: `must be HOST:PORT (e.g. 127.0.0.1:7070), got "${value}"` });
    return z.NEVER;
  }
  return { host: (match[1] ?? match[2]) as string, port };
});

/** What each secret must look like, wherever it comes from: flag, environment, file. */
const SECRETS = {
  'admin-token': { shape: /^\S{8,}$/, expected: 'at least 8 characters without spaces' },
  'zk-auth': { shape: /^[^:\s]+:.+$/, expected: 'USER:PASSWORD' },
  'consul-token': { shape: /^\S+$/, expected: 'a token without spaces' },
  'etcd-password': { shape: /^[^\r\n]+$/, expected: 'one line' },
} as const;
const secret = (name: keyof typeof SECRETS) => text.pipe(z.string().regex(SECRETS[name].shape, `must be ${SECRETS[name].expected}`));

const url = (schemes: string[]) =>
  z.string().refine((value) => {
    try {
      return schemes.includes(new URL(value).protocol);
    } catch {
      return false;
    }
  }, `must be a URL (${schemes.join(' or ')})`);

/**
 * Where the local backend keeps its lock and fencing counter by default: state that must outlive
 * reboots and tmp cleaners, never $TMPDIR. XDG's state directory for users (a relative
 * XDG_STATE_HOME is ignored, as the spec says), /var/lib for root.
 */
function defaultLocalDir(): string {
  if (process.getuid?.() === 0) return '/var/lib/leaderd';
  const state = process.env.XDG_STATE_HOME;
  return join(state?.startsWith('/') ? state : join(homedir(), '.local', 'state'), 'leaderd');
}

const schema = z.object({
  backend: z.string().default('local'),
  election: text
    .default('default')
    .pipe(z.string().regex(/^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$/, 'must be 1-128 letters, digits, ".", "_" or "-", starting with a letter or digit')),
  id: text.default(hostname()).pipe(z.string().min(1).max(253).regex(/^[^\x00-\x1f\x7f]+$/, 'must not contain control characters')),
  address: text.optional().pipe(z.string().max(1024).regex(/^[^\x00-\x1f\x7f]*$/, 'must not contain control characters').optional()),
  ttl: seconds(1).default(10),
  'renew-deadline': seconds(0).optional(),
  http: hostPort.default({ host: '127.0.0.1', port: 7070 }),
  'etcd-endpoints': list
    .default(['http://127.0.0.1:2379'])
    .pipe(z.array(url(['http:', 'https:'])).min(1, 'must name at least one endpoint')),
  'etcd-prefix': text.default('/leaderd').pipe(z.string().regex(/^\/[^\x00-\x1f]*[^/]$/, 'must start with "/" and not end with "/"')),
  'etcd-ca-file': text.optional(),
  'etcd-cert-file': text.optional(),
  'etcd-key-file': text.optional(),
  'etcd-username': text.pipe(z.string().regex(/^[^\s:]+$/, 'must be a user name without spaces or ":"')).optional(),
  'etcd-password': secret('etcd-password').optional(),
  'etcd-password-file': text.optional(),
  'zk-connect': text
    .default('127.0.0.1:2181')
    .pipe(z.string().regex(/^[^\s,/]+:\d+(,[^\s,/]+:\d+)*(\/[^\s]*)?$/, 'must be host:port[,host:port...][/chroot]')),
  'zk-prefix': text.default('/leaderd').pipe(z.string().regex(/^\/[^\x00-\x1f]*[^/]$/, 'must start with "/" and not end with "/"')),
  'zk-auth': secret('zk-auth').optional(),
  'zk-auth-file': text.optional(),
  'consul-addr': text.default('http://127.0.0.1:8500').pipe(url(['http:', 'https:'])),
  'consul-token': secret('consul-token').optional(),
  'consul-token-file': text.optional(),
  'consul-ca-file': text.optional(),
  'consul-cert-file': text.optional(),
  'consul-key-file': text.optional(),
  'consul-key-prefix': text.default('leaderd').pipe(z.string().regex(/^[^\x00-\x1f]*[^/]$/, 'must not end with "/"')),
  'consul-check-ttl': seconds(1).default(3),
  'consul-lock-delay': seconds(0).refine((n) => n <= CONSUL_MAXIMUM_LOCK_DELAY_SECONDS, `must be at most ${CONSUL_MAXIMUM_LOCK_DELAY_SECONDS}`).optional(),
  'consul-datacenter': text.optional(),
  'local-dir': text.default(defaultLocalDir()).pipe(z.string().min(1)),
  'on-promote': command.optional(),
  'on-demote': command.optional(),
  'on-leader-change': command.optional(),
  'hook-url': text.pipe(url(['http:', 'https:'])).optional(),
  'hook-timeout': seconds(0.001).default(30),
  check: command.optional(),
  'check-interval': seconds(0.01).optional(),
  'check-timeout': seconds(0.01).optional(),
  'unhealthy-after': seconds(0).optional(),
  priority: decimal('a whole number')
    .pipe(z.number().int('must be a whole number').min(0, 'must be at least 0').max(PRIORITY_LIMIT, `must be at most ${PRIORITY_LIMIT}`))
    .default(1),
  'max-lag': z
    .union([z.string(), z.number()])
    .transform((v) => String(v).trim())
    .pipe(z.string().regex(/^(0|[1-9][0-9]{0,77})$/, 'must be a whole number, at least 0'))
    .transform((v) => BigInt(v))
    .optional(),
  'promote-failure': z.enum(['resign', 'ignore'], { error: 'must be resign or ignore' }).default('resign'),
  'admin-token': secret('admin-token').optional(),
  'admin-token-file': text.optional(),
  // pino's level names; "INFO" from an environment file means info too. Numbers are refused: they
  // are pino's internals, not names an operator should have to know.
  'log-level': text
    .transform((v) => v.toLowerCase())
    .pipe(z.enum(LOG_LEVELS, { error: (issue) => `must be one of ${LOG_LEVELS.join(', ')}, got ${JSON.stringify(issue.input)}` }))
    .default('info'),
  config: z.unknown().optional(),
});

function validate(raw: Record<string, unknown>, backends: Readonly<Record<string, BackendRequirements>>): Omit<Config, 'sources'> {
  const result = schema.safeParse(raw);
  if (!result.success) {
    const issue = result.error.issues[0];
    const key = String(issue?.path[0] ?? 'config');
    throw new ConfigError(`${key}: ${issue?.message ?? 'invalid'}`);
  }
  const c = result.data;
  const requirements = backends[c.backend];
  if (!requirements) throw new ConfigError(`backend: must be one of ${Object.keys(backends).join(', ')}, got "${c.backend}"`);
  if (c.ttl < requirements.minimumTtlSeconds) {
    throw new ConfigError(`ttl: ${c.ttl} s is below the ${c.backend} backend's minimum of ${requirements.minimumTtlSeconds} s`);
  }
  if (requirements.wholeSecondTtl && !Number.isInteger(c.ttl)) {
    throw new ConfigError(`ttl: ${c.backend} leases are whole seconds, got ${c.ttl}`);
  }
  const onConsul = c.backend === 'consul';
  if (onConsul && c['consul-check-ttl'] >= c.ttl) {
    throw new ConfigError(`consul-check-ttl: must be below ttl (${c['consul-check-ttl']} s >= ${c.ttl} s)`);
  }
  const lease = onConsul ? c['consul-check-ttl'] : c.ttl;
  const leaseName = onConsul ? 'consul-check-ttl' : 'ttl';
  const renewDeadline = c['renew-deadline'] ?? lease * renewDeadlineFraction(requirements);
  if (renewDeadline >= lease) throw new ConfigError(`renew-deadline: must be below ${leaseName} (${renewDeadline} s >= ${lease} s)`);
  // Compared in whole milliseconds: 1.13 - 0.25 is not 0.88 in binary floating point.
  if (ms(renewDeadline) > ms(lease) - ms(DEADLINE_MARGIN_SECONDS)) {
    throw new ConfigError(
      `renew-deadline: must end at least ${DEADLINE_MARGIN_SECONDS} s before the ${leaseName} (${renewDeadline} s > ${round(lease - DEADLINE_MARGIN_SECONDS)} s)`,
    );
  }
  const maximum = requirements.maximumRenewDeadlineFraction;
  if (maximum !== undefined && ms(renewDeadline) > ms(lease * maximum)) {
    throw new ConfigError(
      `renew-deadline: must be at most ${maximum === 1 / 2 ? 'half the' : `${round(maximum)} ×`} ${leaseName} on ${backendNames[c.backend] ?? c.backend} ` +
        `(${renewDeadline} s > ${round(lease * maximum)} s)`,
    );
  }
  if (renewDeadline <= lease / 3) {
    throw new ConfigError(`renew-deadline: must be above the renew interval ${leaseName}/3 (${renewDeadline} s <= ${round(lease / 3)} s)`);
  }
  for (const secret of ['admin-token', 'zk-auth', 'consul-token', 'etcd-password'] as const) {
    if (c[secret] !== undefined && c[`${secret}-file`] !== undefined) {
      throw new ConfigError(`${secret}: give either ${secret} or ${secret}-file, not both`);
    }
  }
  const warnings: string[] = [];
  const secretFile = (setting: SecretFileSetting, path: string) => {
    const { secret, warning } = readSecret(setting, path);
    if (warning) warnings.push(warning);
    return secret;
  };

  const etcdPassword = c['etcd-password-file'] !== undefined ? secretFile('etcd-password-file', c['etcd-password-file']) : (c['etcd-password'] ?? null);
  if (c['etcd-username'] !== undefined && etcdPassword === null) throw new ConfigError('etcd-username: needs etcd-password-file (or etcd-password)');
  if (c['etcd-username'] === undefined && etcdPassword !== null) throw new ConfigError(`etcd-password${c['etcd-password-file'] !== undefined ? '-file' : ''}: needs etcd-username`);
  const etcdTls = tlsSettings('etcd', c, 'etcd-endpoints', c['etcd-endpoints'], c.backend === 'etcd');
  if (c.backend === 'etcd' && etcdPassword !== null && new URL(c['etcd-endpoints'][0]!).protocol === 'http:') {
    warnings.push('etcd-username: the password goes to etcd in clear text over http:// endpoints; use https://');
  }
  const consulTls = tlsSettings('consul', c, 'consul-addr', [c['consul-addr']], onConsul);

  const lockDelay = c['consul-lock-delay'] ?? renewDeadline + DEADLINE_MARGIN_SECONDS;
  if (onConsul && lockDelay > CONSUL_MAXIMUM_LOCK_DELAY_SECONDS) {
    throw new ConfigError(
      `renew-deadline: on Consul at most ${CONSUL_MAXIMUM_LOCK_DELAY_SECONDS - DEADLINE_MARGIN_SECONDS} s, so that the lock-delay after it ` +
        `fits Consul's largest, ${CONSUL_MAXIMUM_LOCK_DELAY_SECONDS} s (${round(renewDeadline)} s; lower consul-check-ttl)`,
    );
  }
  if (onConsul && ms(lockDelay) < ms(renewDeadline) + ms(DEADLINE_MARGIN_SECONDS)) {
    warnings.push(
      `consul-lock-delay: ${lockDelay} s leaves less than ${DEADLINE_MARGIN_SECONDS} s after the renew deadline (${round(renewDeadline)} s): ` +
        'when Consul ends a session on its own, a successor can be promoted before this node has stepped down',
    );
  }

  if (c['max-lag'] !== undefined && c.check === undefined) {
    throw new ConfigError('max-lag: needs --check, whose output gives the positions the lag is measured in');
  }
  const checkInterval = c['check-interval'] ?? lease / 3;
  const checkTimeout = c['check-timeout'] ?? lease / 3;
  const unhealthyAfter = c['unhealthy-after'] ?? c.ttl;
  if (c.check !== undefined && ms(unhealthyAfter) <= ms(checkInterval)) {
    throw new ConfigError(
      `unhealthy-after: must be longer than check-interval (${unhealthyAfter} s <= ${round(checkInterval)} s): one failed check is not an outage`,
    );
  }

  const exec: Partial<Record<TransitionEvent, readonly string[]>> = {};
  if (c['on-promote']) exec.promote = c['on-promote'];
  if (c['on-demote']) exec.demote = c['on-demote'];
  if (c['on-leader-change']) exec['leader-change'] = c['on-leader-change'];

  return {
    backend: c.backend,
    election: c.election,
    id: c.id,
    address: c.address ?? c.id,
    ttlSeconds: c.ttl,
    leaseSeconds: lease,
    renewDeadlineSeconds: renewDeadline,
    http: c.http,
    etcd: {
      endpoints: c['etcd-endpoints'],
      prefix: c['etcd-prefix'],
      tls: etcdTls,
      auth: etcdPassword === null ? null : { username: c['etcd-username']!, password: etcdPassword },
    },
    zookeeper: {
      connect: c['zk-connect'],
      prefix: c['zk-prefix'],
      auth: c['zk-auth-file'] !== undefined ? secretFile('zk-auth-file', c['zk-auth-file']) : (c['zk-auth'] ?? null),
    },
    consul: {
      address: c['consul-addr'],
      token: c['consul-token-file'] !== undefined ? secretFile('consul-token-file', c['consul-token-file']) : (c['consul-token'] ?? null),
      tls: consulTls,
      keyPrefix: c['consul-key-prefix'],
      checkTtlSeconds: c['consul-check-ttl'],
      // Past the deadline by the margin: a session Consul ends on its own right after a renewal
      // must not hand the lock over before this node's deadline has passed and its demote begun.
      lockDelaySeconds: lockDelay,
      datacenter: c['consul-datacenter'] ?? null,
    },
    local: { dir: c['local-dir'] },
    hooks: {
      exec,
      url: c['hook-url'] ?? null,
      timeoutSeconds: c['hook-timeout'],
      promoteFailure: c['promote-failure'],
    },
    member: {
      check: c.check ?? null,
      checkIntervalSeconds: checkInterval,
      checkTimeoutSeconds: checkTimeout,
      priority: c.priority,
      maxLag: c['max-lag'] ?? null,
      unhealthyAfterSeconds: unhealthyAfter,
    },
    adminToken: c['admin-token-file'] !== undefined ? secretFile('admin-token-file', c['admin-token-file']) : (c['admin-token'] ?? null),
    logLevel: c['log-level'],
    warnings,
  };
}

const backendNames: Readonly<Record<string, string>> = { zookeeper: 'ZooKeeper', etcd: 'etcd', consul: 'Consul', local: 'local' };

type SecretFileSetting = `${keyof typeof SECRETS}-file`;

/** Reads a secret kept in a file (trimmed), held to the same rule as the setting it stands for. */
function readSecret(setting: SecretFileSetting, path: string): { secret: string; warning: string | null } {
  let secret: string;
  let mode: number;
  try {
    secret = readFileSync(path, 'utf8').trim();
    mode = statSync(path).mode;
  } catch (error) {
    throw new ConfigError(`${setting}: cannot read ${path}: ${(error as NodeJS.ErrnoException).code ?? error}`);
  }
  const rule = SECRETS[setting.slice(0, -'-file'.length) as keyof typeof SECRETS];
  // The message names the file and the rule, never the content.
  if (!rule.shape.test(secret)) throw new ConfigError(`${setting}: ${path} must hold ${rule.expected}`);
  const othersMayRead = (mode & 0o044) !== 0;
  return {
    secret,
    warning: othersMayRead
      ? `${setting}: ${path} can be read by other users (mode ${(mode & 0o777).toString(8)}); ` +
        'chmod 600 it (on a Kubernetes secret volume: defaultMode 0400)'
      : null,
  };
}

/**
 * A backend's TLS files as settings, checked (read, parsed, key matching certificate, in date)
 * when that backend is the one in use. They need https:// addresses: given with http:// they
 * would silently not be used.
 */
function tlsSettings(
  backend: 'etcd' | 'consul',
  c: Partial<Record<`${'etcd' | 'consul'}-${'ca' | 'cert' | 'key'}-file`, string>>,
  addressSetting: string,
  addresses: readonly string[],
  inUse: boolean,
): TlsFileSettings | null {
  const file = (role: 'ca' | 'cert' | 'key') => {
    const setting = `${backend}-${role}-file` as const;
    const path = c[setting];
    return path === undefined ? undefined : { setting, path };
  };
  const settings: TlsFileSettings = { ca: file('ca'), cert: file('cert'), key: file('key') };
  const secure = addresses.map((a) => new URL(a).protocol === 'https:');
  if (inUse && secure.includes(true) && secure.includes(false)) {
    throw new ConfigError(`${addressSetting}: mixes http:// and https:// addresses; use one scheme`);
  }
  if (!hasTlsFiles(settings)) return null;
  if (!inUse) return settings;
  if (!secure[0]) {
    const given = settings.ca ?? settings.cert ?? settings.key!;
    throw new ConfigError(`${given.setting}: needs an https:// ${addressSetting} (${addresses[0]} is plain http, so the file would not be used)`);
  }
  try {
    readTlsFiles(settings);
  } catch (error) {
    if (error instanceof TlsFileError) throw new ConfigError(error.message);
    throw error;
  }
  return settings;
}

function ms(seconds: number): number {
  return Math.round(seconds * 1000);
}

function round(n: number): number {
  return Math.round(n * 1000) / 1000;
}

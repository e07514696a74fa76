/**
 * Configuration from flags, LEADERD_* environment variables and a YAML file, in that order of
 * precedence, over built-in defaults. One table (OPTIONS) names every setting once: its flag,
 * its variable (LEADERD_ + the flag in upper snake case) and its file key (the flag's name) all
 * derive from it, and so does `--help`. Validation happens once, here, with messages that name
 * the setting and the relation that is broken.
 */
import { readFileSync } from 'node:fs';
import { hostname, tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { parse as parseShellWords } from 'shell-quote';
import { parse as parseYaml } from 'yaml';
import { z } from 'zod';
import type { TransitionEvent } from './elector.js';
import { LOG_LEVELS, type LogLevel } from './log.js';

interface OptionSpec {
  readonly value: string;
  readonly help: string;
  readonly default?: string;
}

export const OPTIONS = {
  config: { value: 'FILE', help: 'YAML file with any of these settings, keyed by flag name' },
  backend: { value: 'KIND', help: 'coordination service: local or etcd', default: 'local' },
  election: { value: 'NAME', help: 'election name; candidates of the same election compete', default: 'default' },
  id: { value: 'ID', help: "this candidate's unique name", default: '(hostname)' },
  address: { value: 'ADDR', help: 'what replicas connect to when this node is primary', default: '(the id)' },
  ttl: { value: 'SECONDS', help: 'lease time to live: how long a dead primary can block a new one', default: '10' },
  'renew-deadline': { value: 'SECONDS', help: 'a primary that could not renew for this long steps down (< ttl)', default: '2/3 ttl' },
  http: { value: 'HOST:PORT', help: 'where the HTTP API listens (port 0: any free port)', default: '127.0.0.1:7070' },
  'etcd-endpoints': { value: 'URLS', help: 'comma-separated etcd client URLs', default: 'http://127.0.0.1:2379' },
  'etcd-prefix': { value: 'PREFIX', help: 'key prefix; keys live under PREFIX/ELECTION/', default: '/leaderd' },
  'local-dir': { value: 'DIR', help: 'directory shared by the candidates of the local backend', default: `${join(tmpdir(), 'leaderd')}` },
  'on-promote': { value: 'CMD', help: 'command run (no shell) when this node becomes primary' },
  'on-demote': { value: 'CMD', help: 'command run when this node stops being primary' },
  'on-leader-change': { value: 'CMD', help: 'command run on every node when the leader changes' },
  'hook-url': { value: 'URL', help: 'URL that receives a POST of every hook event as JSON' },
  'hook-timeout': { value: 'SECONDS', help: 'a hook still running after this is stopped and counts as failed', default: '30' },
  'promote-failure': { value: 'ACTION', help: 'when the promote hook fails: resign or ignore', default: 'resign' },
  'admin-token': { value: 'TOKEN', help: 'bearer token for POST /resign (prefer --admin-token-file)' },
  'admin-token-file': { value: 'FILE', help: 'file holding the admin bearer token' },
  'log-level': { value: 'LEVEL', help: LOG_LEVELS.join(', '), default: 'info' },
} as const satisfies Record<string, OptionSpec>;

type OptionName = keyof typeof OPTIONS;
const OPTION_NAMES = Object.keys(OPTIONS) as OptionName[];

export interface BackendRequirements {
  /** Smallest ttl the service honours as asked (seconds). */
  readonly minimumTtlSeconds: number;
}

export interface Config {
  readonly backend: string;
  readonly election: string;
  readonly id: string;
  readonly address: string;
  readonly ttlSeconds: number;
  readonly renewDeadlineSeconds: number;
  readonly http: { readonly host: string; readonly port: number };
  readonly etcd: { readonly endpoints: readonly string[]; readonly prefix: string };
  readonly local: { readonly dir: string };
  readonly hooks: {
    readonly exec: Partial<Record<TransitionEvent, readonly string[]>>;
    readonly url: string | null;
    readonly timeoutSeconds: number;
    readonly promoteFailure: 'resign' | 'ignore';
  };
  readonly adminToken: string | null;
  readonly logLevel: LogLevel;
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
    '  --help                          show this help',
    '  --version                       print the version',
    '',
    'HTTP API: GET /role /primary /replica /healthz / /watch /metrics; POST /resign',
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
        ...Object.fromEntries(OPTION_NAMES.map((name) => [name, { type: 'string' as const }])),
        help: { type: 'boolean', short: 'h' },
        version: { type: 'boolean' },
      },
      strict: true,
      allowPositionals: false,
    });
  } catch (error) {
    throw new ConfigError(flagError(error));
  }
  const flags = parsed.values as Partial<Record<OptionName, string>> & { help?: boolean; version?: boolean };
  if (flags.help) return { kind: 'help' };
  if (flags.version) return { kind: 'version' };

  const fromEnv: Partial<Record<OptionName, string>> = {};
  for (const name of OPTION_NAMES) {
    const value = env[envName(name)];
    if (value !== undefined && value !== '') fromEnv[name] = value;
  }
  const configFile = flags.config ?? fromEnv.config;
  const fromFile = configFile ? readConfigFile(configFile) : {};
  return { kind: 'run', config: validate({ ...fromFile, ...fromEnv, ...flags }, backends) };
}

function flagError(error: unknown): string {
  const message = error instanceof Error ? error.message : String(error);
  const unknown = /Unknown option '([^']+)'/.exec(message);
  if (unknown) return `unknown flag ${unknown[1]} (see --help)`;
  const missing = /Option '([^']+?)(?: <value>)?' argument missing/.exec(message);
  if (missing?.[1]) return `flag ${missing[1].replace(/^-\w, /, '')} needs a value`;
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
const seconds = (min: number) =>
  z.coerce
    .number({ error: 'must be a number of seconds' })
    .refine(Number.isFinite, 'must be a number of seconds')
    .refine((n) => n >= min, `must be at least ${min}`);
const list = z
  .union([z.string(), z.array(z.string())])
  .transform((v) => (Array.isArray(v) ? v : v.split(',')).map((s) => s.trim()).filter(Boolean));

const command = z.union([z.string(), z.array(z.string())]).transform((value, ctx) => {
  const words = Array.isArray(value) ? value : parseShellWords(value, (name) => `$${name}`);
  const argv: string[] = [];
  for (const word of words) {
    if (typeof word !== 'string') {
      ctx.addIssue({ code: 'custom', message: 'hooks run without a shell: pipes, redirections and globs are not allowed (wrap them in a script)' });
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

const url = (schemes: string[]) =>
  z.string().refine((value) => {
    try {
      return schemes.includes(new URL(value).protocol);
    } catch {
      return false;
    }
  }, `must be a URL (${schemes.join(' or ')})`);

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
  'local-dir': text.default(join(tmpdir(), 'leaderd')).pipe(z.string().min(1)),
  'on-promote': command.optional(),
  'on-demote': command.optional(),
  'on-leader-change': command.optional(),
  'hook-url': text.pipe(url(['http:', 'https:'])).optional(),
  'hook-timeout': seconds(0.001).default(30),
  'promote-failure': z.enum(['resign', 'ignore'], { error: 'must be resign or ignore' }).default('resign'),
  'admin-token': text.optional(),
  'admin-token-file': text.optional(),
  'log-level': z.enum(LOG_LEVELS, { error: `must be one of ${LOG_LEVELS.join(', ')}` }).default('info'),
  config: z.unknown().optional(),
});

function validate(raw: Record<string, unknown>, backends: Readonly<Record<string, BackendRequirements>>): Config {
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
  const renewDeadline = c['renew-deadline'] ?? (c.ttl * 2) / 3;
  if (renewDeadline >= c.ttl) throw new ConfigError(`renew-deadline: must be below ttl (${renewDeadline} s >= ${c.ttl} s)`);
  if (renewDeadline <= c.ttl / 3) {
    throw new ConfigError(`renew-deadline: must be above the renew interval ttl/3 (${renewDeadline} s <= ${round(c.ttl / 3)} s)`);
  }
  if (c['admin-token'] !== undefined && c['admin-token-file'] !== undefined) {
    throw new ConfigError('admin-token: give either admin-token or admin-token-file, not both');
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
    renewDeadlineSeconds: renewDeadline,
    http: c.http,
    etcd: { endpoints: c['etcd-endpoints'], prefix: c['etcd-prefix'] },
    local: { dir: c['local-dir'] },
    hooks: {
      exec,
      url: c['hook-url'] ?? null,
      timeoutSeconds: c['hook-timeout'],
      promoteFailure: c['promote-failure'],
    },
    adminToken: c['admin-token-file'] !== undefined ? readToken(c['admin-token-file']) : (c['admin-token'] ?? null),
    logLevel: c['log-level'],
  };
}

function readToken(path: string): string {
  let token: string;
  try {
    token = readFileSync(path, 'utf8').trim();
  } catch (error) {
    throw new ConfigError(`admin-token-file: cannot read ${path}: ${(error as NodeJS.ErrnoException).code ?? error}`);
  }
  if (token.length < 8) throw new ConfigError(`admin-token-file: the token in ${path} is shorter than 8 characters`);
  return token;
}

function round(n: number): number {
  return Math.round(n * 1000) / 1000;
}

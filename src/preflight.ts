/**
 * Checks, before leaderd campaigns, that the commands its configuration names can run on this
 * host. A hook that cannot start fails on every term: a promote hook that does not exist made a
 * node promote, fail, resign and come back a ttl later with a new token, forever. Such a setting
 * can never work, so it stops leaderd at start (exit 2) instead.
 *
 * Kept apart from config.ts, which reads settings wherever they are written: this reads the host
 * the sidecar runs on.
 */
import { accessSync, constants, statSync } from 'node:fs';
import { delimiter, join } from 'node:path';
import { ConfigError, withSource, type Config, type OptionName } from './config.js';

const COMMANDS = {
  'on-promote': (config: Config) => config.hooks.exec.promote,
  'on-demote': (config: Config) => config.hooks.exec.demote,
  'on-leader-change': (config: Config) => config.hooks.exec['leader-change'],
  check: (config: Config) => config.member.check,
} as const satisfies Partial<Record<OptionName, (config: Config) => readonly string[] | null | undefined>>;

/** Throws a ConfigError naming the first command that cannot run, and where it was set. */
export function checkCommands(config: Config, env: NodeJS.ProcessEnv = process.env): void {
  for (const [setting, argvOf] of Object.entries(COMMANDS)) {
    const program = argvOf(config)?.[0];
    if (program === undefined) continue;
    const problem = programProblem(program, env.PATH ?? DEFAULT_PATH);
    if (problem) throw withSource(new ConfigError(`${setting}: ${problem}`), config.sources);
  }
}

/** Where spawning looks for a program without PATH (libuv's execvp: glibc's default path). */
const DEFAULT_PATH = '/usr/bin:/bin';

/**
 * Why `program` cannot be run as commands run (execvp: a name without "/" is looked up in PATH,
 * relative paths from the working directory), or null when it can.
 */
function programProblem(program: string, path: string): string | null {
  // `PGPASSWORD=x promote.sh` is a shell's syntax, and the value may be a secret: not repeated.
  if (/^[A-Za-z_][A-Za-z0-9_]*=/.test(program)) {
    return 'starts with a variable assignment (NAME=value), which only a shell understands: commands run without one; put it in a script';
  }
  if (program.includes('/')) return fileProblem(program);
  for (const dir of path.split(delimiter)) {
    // An empty PATH entry means the working directory, as for execvp.
    if (fileProblem(join(dir || '.', program)) === null) return null;
  }
  return `${JSON.stringify(program)} is not found in PATH; give its full path`;
}

function fileProblem(file: string): string | null {
  let isFile: boolean;
  try {
    isFile = statSync(file).isFile();
  } catch (error) {
    const code = (error as NodeJS.ErrnoException).code;
    return code === 'ENOENT' || code === 'ENOTDIR' ? `${file} does not exist` : `cannot use ${file} (${code})`;
  }
  if (!isFile) return `${file} is not a file`;
  try {
    accessSync(file, constants.X_OK);
  } catch {
    return `${file} is not executable (chmod +x it)`;
  }
  return null;
}

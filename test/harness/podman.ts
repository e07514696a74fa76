/**
 * Podman for the container test: Debian's podman, buildah and runc, with a configuration and an
 * image store of the suite's own under .cache/containers/ (selected with CONTAINERS_CONF and
 * CONTAINERS_STORAGE_CONF), so nothing in /etc/containers or the machine's image store changes.
 *
 * No image registry is reachable here, so the official base image cannot be pulled:
 * scripts/make-base-image.sh (mmdebstrap, Debian's) builds a stand-in for it from Debian's
 * packages and the npm registry.
 */
import { execFile } from 'node:child_process';
import { createHash } from 'node:crypto';
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { aptInstall, runs } from './system.js';

const ROOT = fileURLToPath(new URL('../..', import.meta.url));
const BASE_IMAGE_SCRIPT = join(ROOT, 'scripts', 'make-base-image.sh');
const run = promisify(execFile);

const TOOLS = [
  { pkg: 'podman', path: '/usr/bin/podman', args: ['--version'] },
  { pkg: 'buildah', path: '/usr/bin/buildah', args: ['--version'] },
  // crun, podman's default runtime, refuses this machine's hybrid cgroup layout; runc runs.
  { pkg: 'runc', path: '/usr/sbin/runc', args: ['--version'] },
  { pkg: 'mmdebstrap', path: '/usr/bin/mmdebstrap', args: ['--version'] },
] as const;

/** Installs the container tools that are missing (the test harness runs as root). */
export function ensurePodmanInstalled(): void {
  const missing = TOOLS.filter((tool) => !runs(tool.path, tool.args));
  if (missing.length === 0) return;
  aptInstall(...missing.map((tool) => tool.pkg));
  for (const tool of missing) {
    if (!runs(tool.path, tool.args)) throw new Error(`installing ${tool.pkg} did not provide ${tool.path}`);
  }
}

/**
 * The hard limit of a resource for this process, from /proc/self/limits. Podman sets its default
 * rlimits in every container, and without CAP_SYS_RESOURCE it cannot raise them above ours.
 */
function hardLimit(resource: 'Max open files' | 'Max processes'): number {
  const line = readFileSync('/proc/self/limits', 'utf8').split('\n').find((l) => l.startsWith(resource));
  const hard = line?.slice(resource.length).trim().split(/\s+/)[1];
  return hard === undefined || hard === 'unlimited' ? Number.MAX_SAFE_INTEGER : Number(hard);
}

export interface Output {
  stdout: string;
  stderr: string;
}

export class Podman {
  private constructor(readonly env: NodeJS.ProcessEnv) {}

  /** Podman with the suite's own configuration and image store (written on every call). */
  static forTests(): Podman {
    const dir = join(ROOT, '.cache', 'containers');
    mkdirSync(dir, { recursive: true });
    const nofile = Math.min(hardLimit('Max open files'), 65536);
    const nproc = Math.min(hardLimit('Max processes'), 32768);
    const conf = join(dir, 'containers.conf');
    writeFileSync(
      conf,
      [
        '[containers]',
        `default_ulimits = ["nofile=${nofile}:${nofile}", "nproc=${nproc}:${nproc}"]`,
        '[engine]',
        'runtime = "runc"',
        '',
      ].join('\n'),
    );
    const storage = join(dir, 'storage.conf');
    writeFileSync(
      storage,
      ['[storage]', 'driver = "overlay"', `graphroot = "${join(dir, 'storage')}"`, `runroot = "${join(dir, 'run')}"`, ''].join('\n'),
    );
    return new Podman({ ...process.env, CONTAINERS_CONF: conf, CONTAINERS_STORAGE_CONF: storage });
  }

  /** `podman ARGS`; rejects with its stderr when it exits non-zero. */
  async podman(args: readonly string[], timeoutMs = 60000): Promise<Output> {
    try {
      return await run('podman', [...args], { env: this.env, maxBuffer: 64 * 1024 * 1024, timeout: timeoutMs });
    } catch (error) {
      const { stderr, stdout } = error as Partial<Output>;
      throw new Error(`podman ${args.join(' ')}: ${String(error)}\n${(stderr || stdout || '').slice(-4000)}`);
    }
  }

  async imageExists(ref: string): Promise<boolean> {
    return run('podman', ['image', 'exists', ref], { env: this.env }).then(
      () => true,
      () => false,
    );
  }

  /**
   * The stand-in base image, made by scripts/make-base-image.sh under a tag derived from the
   * script and the Node and npm versions: made once per store, like a pulled base image, and
   * made again whenever the recipe changes. A fresh clone (CI) always makes it.
   */
  async standInBaseImage(): Promise<string> {
    const [node, npm] = [process.version.slice(1), (await run('npm', ['--version'])).stdout.trim()];
    const recipe = createHash('sha256').update(readFileSync(BASE_IMAGE_SCRIPT)).update(`${node} ${npm}`).digest('hex').slice(0, 12);
    const tag = `localhost/leaderd-base:node-${node}-${recipe}`;
    if (await this.imageExists(tag)) return tag;
    try {
      await run(BASE_IMAGE_SCRIPT, [tag], {
        env: { ...this.env, NODE_VERSION: node, NPM_VERSION: npm },
        maxBuffer: 64 * 1024 * 1024,
        timeout: 240000,
      });
    } catch (error) {
      throw new Error(`${BASE_IMAGE_SCRIPT} failed: ${String(error)}\n${((error as Partial<Output>).stderr ?? '').slice(-4000)}`);
    }
    return tag;
  }
}

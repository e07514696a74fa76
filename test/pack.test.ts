/**
 * The package as `npm pack` makes it, installed as a user installs it: into an empty directory,
 * dependencies and all, then its bin run directly (as a supervisor runs it: no npm, no shell in
 * between). It must start, lead, and exit 0 at once on SIGTERM.
 *
 * Installing runs the dependencies' install scripts, and the ZooKeeper client compiles a native
 * addon: 15-25 s here with npm's cache warm from `npm ci` (--prefer-offline keeps it there).
 */
import { execFile } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Sidecar } from './harness/sidecar.js';

const ROOT = fileURLToPath(new URL('..', import.meta.url));
const INSTALL_TIMEOUT_MS = 240000;
const run = promisify(execFile);

/**
 * node-gyp needs Node's headers to compile the addon and downloads them from nodejs.org unless
 * told where they are. A Node installed under a prefix with its headers (Debian's, NodeSource's:
 * /usr/include/node) has them there; this machine has no other way to them.
 */
function nodeHeaders(): NodeJS.ProcessEnv {
  const prefix = dirname(dirname(process.execPath));
  return existsSync(join(prefix, 'include', 'node', 'node.h')) ? { npm_config_nodedir: prefix } : {};
}

interface Packed {
  readonly filename: string;
  readonly files: ReadonlyArray<{ path: string }>;
}

let work: string;
let packed: Packed;

beforeAll(async () => {
  work = mkdtempSync(join(tmpdir(), 'leaderd-pack-'));
  const npm = (args: string[], cwd: string) =>
    run('npm', args, { cwd, env: { ...process.env, ...nodeHeaders() }, maxBuffer: 16 * 1024 * 1024, timeout: INSTALL_TIMEOUT_MS });
  // --json: what went in, as npm reports it. --ignore-scripts: dist/ is built already (pretest),
  // and rebuilding it in place would pull it from under any sidecar running from this tree.
  const { stdout } = await npm(['pack', '--json', '--ignore-scripts', '--pack-destination', work], ROOT);
  packed = (JSON.parse(stdout) as Packed[])[0]!;
  const app = join(work, 'app');
  mkdirSync(app);
  writeFileSync(join(app, 'package.json'), '{"private": true}\n');
  await npm(['install', join(work, packed.filename), '--prefer-offline', '--no-audit', '--no-fund'], app);
}, INSTALL_TIMEOUT_MS + 60000);
afterAll(async () => {
  await Sidecar.killAll();
  // A whole install per run: not worth keeping.
  rmSync(work, { recursive: true, force: true });
});

describe('npm pack', () => {
  it('packs the compiled code, the bin, the README and docs/, and no sources, tests or benchmarks', () => {
    const paths = packed.files.map((f) => f.path);
    expect(paths).toEqual(expect.arrayContaining(['bin/leaderd.js', 'dist/src/cli.js', 'dist/adapters/index.js', 'README.md', 'docs/safety.md', 'package.json']));
    expect(paths.filter((p) => !/^(bin\/|dist\/(src|adapters)\/[^/]+\.js$|README\.md$|docs\/[a-z-]+\.md$|package\.json$)/.test(p))).toEqual([]);
  });

  it('installs into an empty directory; its bin leads and exits 0 at once on SIGTERM', async () => {
    const bin = join(work, 'app', 'node_modules', '.bin', 'leaderd');
    const node = await Sidecar.start('packed', ['--backend', 'local', '--local-dir', join(work, 'election'), '--ttl', '2'], {}, [bin]);
    await node.waitForRole('primary', 10000);
    expect((await node.role()).role).toBe('primary');
    const stoppedAt = performance.now();
    expect(await node.stop()).toEqual({ code: 0, signal: null });
    expect(performance.now() - stoppedAt).toBeLessThan(3000);
  });
});

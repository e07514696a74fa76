/**
 * The container image as deploy/Containerfile builds it, built and run as a user would: on the
 * stand-in for node:20-bookworm-slim (no registry is reachable here, see test/harness/podman.ts),
 * run with the local backend on the host's network, asked for its role over HTTP, and stopped
 * with `podman stop`, whose SIGTERM must reach Node: it leads, then exits 0 at once.
 *
 * Cost on this machine's type (2 cores): about 30 s for the base the first time a store needs it
 * (every CI run), about 45 s for the image, built whole every run.
 */
import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Podman } from './harness/podman.js';
import { Sidecar } from './harness/sidecar.js';

const ROOT = fileURLToPath(new URL('..', import.meta.url));
const IMAGE = 'localhost/leaderd:test';
const CONTAINER = `leaderd-test-${process.pid}`;
/** Where the build finds the host's CA bundle, for hosts whose TLS egress is intercepted. */
const BUILD_CA_PATH = '/run/leaderd-build-ca.crt';
const BUILD_TIMEOUT_MS = 420000;

let podman: Podman;

beforeAll(async () => {
  podman = Podman.private();
  const base = await podman.standInBaseImage();
  const ca = process.env.NODE_EXTRA_CA_CERTS;
  await podman.podman(
    [
      'build',
      // No intermediate images: each run builds every step on the base, as a fresh build host
      // does, and leaves no layer cache behind to grow.
      '--layers=false',
      // RUN steps reach the Debian mirror and the npm registry through the host's network.
      '--network', 'host',
      '--build-arg', `BASE_IMAGE=${base}`,
      ...(ca ? ['--volume', `${ca}:${BUILD_CA_PATH}:ro`, '--build-arg', `NODE_EXTRA_CA_CERTS=${BUILD_CA_PATH}`] : []),
      '--file', 'deploy/Containerfile',
      '--tag', IMAGE,
      ROOT,
    ],
    BUILD_TIMEOUT_MS,
  );
}, 2 * BUILD_TIMEOUT_MS);

afterAll(async () => {
  await Sidecar.killAll();
  // podman rm -f: killing the `podman run` client above leaves its container running.
  await podman?.podman(['rm', '--force', '--ignore', CONTAINER]);
  await podman?.podman(['rmi', '--force', IMAGE]).catch(() => undefined);
});

describe('container image', () => {
  it('runs node bin/leaderd.js directly, as a user other than root', async () => {
    const [image] = JSON.parse((await podman.podman(['image', 'inspect', IMAGE])).stdout) as Array<{
      Config: { User?: string; Entrypoint?: string[]; Cmd?: string[] };
    }>;
    expect(image!.Config.Entrypoint).toEqual(['node', 'bin/leaderd.js']);
    expect(image!.Config.Cmd ?? []).toEqual([]);
    expect(image!.Config.User).toBe('node');
  });

  it('carries the production dependencies only, and the ZooKeeper addon loads', async () => {
    // Every package of the lockfile by where npm installs it: those only development needs
    // (`dev`) must be absent, every other one that is not optional (for another platform) present.
    const lock = JSON.parse(readFileSync(`${ROOT}/package-lock.json`, 'utf8')) as {
      packages: Record<string, { dev?: boolean; optional?: boolean }>;
    };
    const installed = Object.entries(lock.packages).filter(([path]) => path !== '');
    const dev = installed.filter(([, p]) => p.dev).map(([path]) => path);
    const prod = installed.filter(([, p]) => !p.dev && !p.optional).map(([path]) => path);
    expect(dev.length).toBeGreaterThan(0);
    const probe = `
      const { existsSync } = require('node:fs');
      require('zookeeper');
      const [prod, dev] = JSON.parse(process.argv[1]);
      console.log(JSON.stringify({
        uid: process.getuid(),
        missing: prod.filter((path) => !existsSync(path)),
        dev: dev.filter((path) => existsSync(path)),
      }));`;
    const { stdout } = await podman.podman(['run', '--rm', '--network', 'none', '--entrypoint', 'node', IMAGE, '-e', probe, JSON.stringify([prod, dev])]);
    expect(JSON.parse(stdout)).toEqual({ uid: 1000, missing: [], dev: [] });
  });

  it('leads with the local backend, answers /role, and exits 0 at once on podman stop', async () => {
    const node = await Sidecar.start('container', ['--backend', 'local', '--ttl', '2'], podman.env, [
      'podman', 'run', '--name', CONTAINER, '--network', 'host', IMAGE,
    ]);
    await node.waitForRole('primary', 20000);
    const role = await node.role();
    expect(role).toMatchObject({ id: 'container', role: 'primary', backend: { kind: 'local', connected: true } });

    const stoppedAt = performance.now();
    // --time 10: podman's SIGKILL would come 10 s after the SIGTERM, exit status 137.
    await podman.podman(['stop', '--time', '10', CONTAINER]);
    const elapsedMs = performance.now() - stoppedAt;
    expect(await node.exited).toEqual({ code: 0, signal: null });
    expect(node.logs.find((line) => line.msg === 'shutting down')).toMatchObject({ reason: 'SIGTERM' });
    expect(node.logs.at(-1)).toMatchObject({ msg: 'stopped' });
    const { stdout } = await podman.podman(['inspect', '--format', '{{.State.ExitCode}}', CONTAINER]);
    expect(stdout.trim()).toBe('0');
    expect(elapsedMs).toBeLessThan(3000);
  });
});

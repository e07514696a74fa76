/**
 * The container image as deploy/Containerfile builds it, built and run as a user would: on the
 * stand-in for node:20-bookworm-slim (no registry is reachable here, see test/harness/podman.ts),
 * run with the local backend on the host's network, asked for its role over HTTP, and stopped
 * with `podman stop`, whose SIGTERM must reach Node: it leads, then exits 0 at once. Then run as
 * deploy/kubernetes/ runs it, on etcd.
 *
 * Cost on this machine's type (2 cores): about 30 s for the base the first time a store needs it
 * (every CI run), about 45 s for the image, built whole every run, on an otherwise idle machine;
 * two to three times that under heavy load.
 */
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { EtcdServer } from './harness/etcd.js';
import { readManifests } from './harness/kubernetes.js';
import { Podman } from './harness/podman.js';
import { Sidecar } from './harness/sidecar.js';

const ROOT = fileURLToPath(new URL('..', import.meta.url));
const IMAGE = 'localhost/leaderd:test';
const CONTAINER = `leaderd-test-${process.pid}`;
const POD_CONTAINER = `leaderd-test-pod-${process.pid}`;
/** Where the build finds the host's CA bundle, for hosts whose TLS egress is intercepted. */
const BUILD_CA_PATH = '/run/leaderd-build-ca.crt';
const BUILD_TIMEOUT_MS = 420000;

let podman: Podman;
let etcd: EtcdServer | undefined;
const scratch = mkdtempSync(join(tmpdir(), 'leaderd-container-'));

beforeAll(async () => {
  podman = Podman.forTests();
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
      '--file', join(ROOT, 'deploy', 'Containerfile'),
      '--tag', IMAGE,
      ROOT,
    ],
    BUILD_TIMEOUT_MS,
  );
}, 2 * BUILD_TIMEOUT_MS);

afterAll(async () => {
  await Sidecar.killAll();
  // podman rm -f: killing a `podman run` client leaves its container running.
  await podman?.podman(['rm', '--force', '--ignore', CONTAINER, POD_CONTAINER]);
  await podman?.podman(['rmi', '--force', IMAGE]).catch(() => undefined);
  await etcd?.stop();
  rmSync(scratch, { recursive: true, force: true });
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
    const { stdout } = await podman.podman(['run', '--rm', '--pull', 'never', '--network', 'none', '--entrypoint', 'node', IMAGE, '-e', probe, JSON.stringify([prod, dev])]);
    expect(JSON.parse(stdout)).toEqual({ uid: 1000, missing: [], dev: [] });
  });

  it('leads with the local backend, answers /role, and exits 0 at once on podman stop', async () => {
    const node = await Sidecar.start('container', ['--backend', 'local', '--ttl', '2'], podman.env, [
      'podman', 'run', '--pull', 'never', '--name', CONTAINER, '--network', 'host', IMAGE,
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

  it('runs as deploy/kubernetes/ runs it: read-only, unprivileged, with the hooks of the ConfigMap', async () => {
    const k8s = fileURLToPath(new URL('../deploy/kubernetes/', import.meta.url));
    const [statefulSet] = readManifests(join(k8s, 'statefulset.yaml'));
    const [hooks] = readManifests(join(k8s, 'hooks.yaml'));
    const pod = (statefulSet!.spec as { template: { spec: { containers: ManifestContainer[] } } }).template.spec;
    const leaderd = pod.containers.find((c) => c.name === 'leaderd')!;
    const { securityContext: security, volumeMounts } = leaderd;
    // The ConfigMap's files, where the pod mounts them.
    const hookDir = join(scratch, 'hooks');
    mkdirSync(hookDir);
    for (const [key, text] of Object.entries(hooks!.data as Record<string, string>)) writeFileSync(join(hookDir, key), text);
    const env: Record<string, string> = { POD_NAME: 'orders-db-0', POD_NAMESPACE: 'default' };
    // The test's etcd, listening address and id in place of the cluster's.
    const args = leaderd.args
      .filter((arg) => !/^--(etcd-endpoints|http|id)=/.test(arg))
      .map((arg) => arg.replace(/\$\(([A-Za-z_]+)\)/g, (_, name: string) => env[name]!));
    etcd = await EtcdServer.start();

    const node = await Sidecar.start('orders-db-0', [...args, `--etcd-endpoints=${etcd.clientUrl}`], podman.env, [
      'podman', 'run', '--pull', 'never', '--name', POD_CONTAINER, '--network', 'host',
      ...(security.readOnlyRootFilesystem ? ['--read-only'] : []),
      '--user', String(security.runAsUser),
      ...security.capabilities.drop.map((cap) => `--cap-drop=${cap}`),
      ...(security.allowPrivilegeEscalation === false ? ['--security-opt', 'no-new-privileges'] : []),
      '--volume', `${hookDir}:${volumeMounts.find((m) => m.name === 'leaderd-hooks')!.mountPath}:ro`,
      ...Object.entries(env).flatMap(([name, value]) => ['--env', `${name}=${value}`]),
      // No API server here: the hook must say so in one line, and leaderd log it.
      '--env', 'KUBERNETES_SERVICE_HOST=127.0.0.1',
      IMAGE,
    ]);
    await node.waitForRole('primary', 20000);
    expect((await node.fetch('/healthz')).status).toBe(200);
    const failed = await node.waitForLog((line) => line.msg === 'hook output' && line.hook === 'promote', 20000, 'promote hook output');
    expect(failed).toMatchObject({ stream: 'stderr', line: expect.stringMatching(/^label-primary: no service account credentials .*\/var\/run\/secrets\/kubernetes\.io\/serviceaccount\/token/) });

    await podman.podman(['stop', '--time', '30', POD_CONTAINER]);
    expect(await node.exited).toEqual({ code: 0, signal: null });
  });
});

interface ManifestContainer {
  name: string;
  args: string[];
  securityContext: { readOnlyRootFilesystem?: boolean; runAsUser: number; allowPrivilegeEscalation?: boolean; capabilities: { drop: string[] } };
  volumeMounts: Array<{ name: string; mountPath: string }>;
}

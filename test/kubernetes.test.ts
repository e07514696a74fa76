/**
 * deploy/kubernetes/ checked without a cluster: every object against the Kubernetes schemas
 * (strictly), and the things that made the old example unable to work, each as it would bite:
 * pods that never start, a Service that does not exist, hooks at a path nothing mounts, a grace
 * period that SIGKILLs a demote, readiness that keeps replicas unready. leaderd's arguments go
 * through leaderd's own configuration parser, and the hook script runs.
 */
import { execFile } from 'node:child_process';
import { mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { parse } from 'yaml';
import { afterAll, describe, expect, it } from 'vitest';
import { BACKENDS } from '../adapters/index.js';
import { parseCommand, type Config } from '../src/config.js';
import { readManifests, schemaErrors, type Manifest } from './harness/kubernetes.js';

const DIR = fileURLToPath(new URL('../deploy/kubernetes/', import.meta.url));
const run = promisify(execFile);

interface Container {
  name: string;
  image: string;
  args?: string[];
  env?: Array<{ name: string; value?: string; valueFrom?: { fieldRef?: { fieldPath: string } } }>;
  ports?: Array<{ name?: string; containerPort: number }>;
  readinessProbe?: { httpGet?: { path: string; port: string | number } };
  livenessProbe?: { httpGet?: { path: string; port: string | number } };
  volumeMounts?: Array<{ name: string; mountPath: string }>;
}
interface PodSpec {
  serviceAccountName?: string;
  terminationGracePeriodSeconds?: number;
  containers: Container[];
  volumes?: Array<{ name: string; configMap?: { name: string } }>;
}
interface StatefulSetSpec {
  serviceName: string;
  podManagementPolicy?: string;
  selector: { matchLabels: Record<string, string> };
  template: { metadata: { labels: Record<string, string> }; spec: PodSpec };
}
interface ServiceSpec {
  clusterIP?: string;
  publishNotReadyAddresses?: boolean;
  selector: Record<string, string>;
}

const files = readdirSync(DIR).filter((f) => f.endsWith('.yaml') && f !== 'kustomization.yaml');
const manifests = files.flatMap((f) => readManifests(join(DIR, f)));
const ofKind = (kind: string) => manifests.filter((m) => m.kind === kind);
const named = (kind: string, name: string): Manifest | undefined => ofKind(kind).find((m) => m.metadata.name === name);

const statefulSet = ofKind('StatefulSet')[0]!;
const spec = statefulSet.spec as StatefulSetSpec;
const pod = spec.template.spec;
const leaderd = pod.containers.find((c) => c.name === 'leaderd')!;
const podLabels = spec.template.metadata.labels;

/** leaderd's arguments as the kubelet expands them ($(VAR) from the container's env), parsed by leaderd. */
function leaderdConfig(): Config {
  const sample: Record<string, string> = { 'metadata.name': 'orders-db-0', 'metadata.namespace': 'default' };
  const env = Object.fromEntries((leaderd.env ?? []).map((e) => [e.name, e.value ?? sample[e.valueFrom?.fieldRef?.fieldPath ?? ''] ?? '']));
  const argv = (leaderd.args ?? []).map((arg) => arg.replace(/\$\(([A-Za-z_][A-Za-z0-9_]*)\)/g, (whole, name: string) => env[name] ?? whole));
  const command = parseCommand(argv, {}, BACKENDS);
  if (command.kind !== 'run') throw new Error(`leaderd's arguments ask for ${command.kind}`);
  return command.config;
}

/** The ConfigMap key a path inside the leaderd container is, through its volume mounts. */
function configMapFileAt(path: string): { configMap: Manifest; key: string } | null {
  for (const mount of leaderd.volumeMounts ?? []) {
    if (!path.startsWith(`${mount.mountPath}/`)) continue;
    const source = pod.volumes?.find((v) => v.name === mount.name)?.configMap;
    const configMap = source && named('ConfigMap', source.name);
    if (configMap) return { configMap, key: path.slice(mount.mountPath.length + 1) };
  }
  return null;
}

const scratch = mkdtempSync(join(tmpdir(), 'leaderd-k8s-'));
afterAll(() => rmSync(scratch, { recursive: true, force: true }));

describe('Kubernetes manifests', () => {
  it('are valid objects of the Kubernetes API, with no field the schemas do not define', () => {
    expect(manifests.map((m) => `${m.kind}/${m.metadata.name}`).sort()).toEqual([
      'ConfigMap/orders-db-leaderd-hooks',
      'PodDisruptionBudget/orders-db',
      'Role/orders-db-leaderd',
      'RoleBinding/orders-db-leaderd',
      'Service/orders-db',
      'Service/orders-db-primary',
      'Service/orders-db-read',
      'ServiceAccount/orders-db',
      'StatefulSet/orders-db',
    ]);
    expect(manifests.flatMap(schemaErrors)).toEqual([]);
  });

  it('the strict check catches a misspelt field and a wrong type (it can fail)', () => {
    const misspelt = { ...statefulSet, spec: { ...spec, podManagmentPolicy: 'Parallel' } };
    expect(schemaErrors(misspelt)).toEqual([expect.stringContaining('/spec/podManagmentPolicy: not a field of the schema')]);
    expect(schemaErrors({ ...statefulSet, spec: { ...spec, replicas: '3' } })).toEqual([expect.stringContaining('replicas must be integer')]);
  });

  it('kustomization.yaml applies every manifest', () => {
    const kustomization = parse(readFileSync(join(DIR, 'kustomization.yaml'), 'utf8')) as { resources: string[] };
    expect([...kustomization.resources].sort()).toEqual([...files].sort());
  });

  it('starts every pod at once, each with a stable name from an existing headless Service', () => {
    // OrderedReady would wait for each pod to be Ready before starting the next.
    expect(spec.podManagementPolicy).toBe('Parallel');
    const headless = named('Service', spec.serviceName);
    expect(headless, `Service ${spec.serviceName}`).toBeDefined();
    expect(headless!.spec).toMatchObject({ clusterIP: 'None', publishNotReadyAddresses: true, selector: spec.selector.matchLabels });
    expect(spec.template.metadata.labels).toMatchObject(spec.selector.matchLabels);
  });

  it('routes writes to the pod the hook labels primary, and every Service selects these pods', () => {
    const label = leaderdConfig().hooks.exec.promote?.at(-1);
    expect(label).toBe('leaderd.io/role');
    const primary = named('Service', 'orders-db-primary')!.spec as ServiceSpec;
    expect(primary.selector).toEqual({ ...spec.selector.matchLabels, [label!]: 'primary' });
    for (const service of ofKind('Service')) {
      const selector = { ...(service.spec as ServiceSpec).selector };
      delete selector[label!];
      expect(podLabels, `Service ${service.metadata.name}`).toMatchObject(selector);
    }
  });

  it("readiness does not depend on the role; probes reach leaderd's port", () => {
    const ports = new Set((leaderd.ports ?? []).flatMap((p) => [p.name, p.containerPort]));
    const { host, port } = leaderdConfig().http;
    expect(host).toBe('0.0.0.0');
    expect(leaderd.ports?.map((p) => p.containerPort)).toContain(port);
    // The role answers that are 503 on a healthy replica.
    expect(['/primary', '/leader', '/read-write', '/replica', '/readiness']).not.toContain(leaderd.readinessProbe?.httpGet?.path);
    expect(leaderd.readinessProbe?.httpGet?.path).toBe('/read-only');
    expect(leaderd.livenessProbe?.httpGet?.path).toBe('/healthz');
    expect(ports.has(leaderd.readinessProbe!.httpGet!.port)).toBe(true);
    expect(ports.has(leaderd.livenessProbe!.httpGet!.port)).toBe(true);
  });

  it('gives a primary the time to run its demote hook and release its lease before SIGKILL', () => {
    const config = leaderdConfig();
    // A hook is SIGKILLed 5 s after its timeout's SIGTERM; the loop's last request and the
    // release each take at most a third of the lease.
    const shutdownSeconds = config.hooks.timeoutSeconds + 5 + (2 * config.leaseSeconds) / 3;
    expect(pod.terminationGracePeriodSeconds).toBeGreaterThan(shutdownSeconds + 5);
  });

  it('runs hooks from a mounted ConfigMap, with a service account allowed to patch pods', () => {
    const exec = leaderdConfig().hooks.exec;
    expect(Object.keys(exec).sort()).toEqual(['demote', 'leader-change', 'promote']);
    for (const argv of Object.values(exec)) {
      const [program, script] = argv;
      expect(program).toBe('node');
      const file = configMapFileAt(script!);
      expect(file, `${script} is not on a mounted ConfigMap`).not.toBeNull();
      expect(Object.keys(file!.configMap.data as object)).toContain(file!.key);
    }

    const account = pod.serviceAccountName!;
    expect(named('ServiceAccount', account)).toBeDefined();
    const binding = ofKind('RoleBinding').find((b) => (b.subjects as Array<{ kind: string; name: string }>).some((s) => s.kind === 'ServiceAccount' && s.name === account));
    const role = named('Role', (binding!.roleRef as { name: string }).name)!;
    expect(role.rules).toEqual(expect.arrayContaining([expect.objectContaining({ apiGroups: [''], resources: ['pods'], verbs: expect.arrayContaining(['patch']) })]));
  });

  it('the hook script compiles, and outside a pod says in one line what it misses', async () => {
    const [, script, label] = leaderdConfig().hooks.exec.promote!;
    const { configMap, key } = configMapFileAt(script!)!;
    const file = join(scratch, key);
    writeFileSync(file, (configMap.data as Record<string, string>)[key]!);
    await run(process.execPath, ['--check', file]);

    const env = { PATH: process.env.PATH, LEADERD_EVENT: 'promote', LEADERD_ROLE: 'primary', LEADERD_FENCING_TOKEN: '7' };
    const outcome = await run(process.execPath, [file, label!], { env }).then(
      () => ({ code: 0, stderr: '' }),
      (error: { code: number; stderr: string }) => ({ code: error.code, stderr: error.stderr }),
    );
    expect(outcome).toEqual({ code: 2, stderr: expect.stringMatching(/^label-primary: POD_NAME is not set: [^\n]+\n$/) });
  });
});

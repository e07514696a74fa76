/**
 * Kubernetes manifests checked offline, as the API server would check them on `kubectl apply`:
 * against the API's own OpenAPI schemas (the npm kubernetes-models packages, Kubernetes 1.27),
 * and strictly, so that a field the schema does not define (a typo such as podManagmentPolicy,
 * which a lenient check and an old kubectl drop without a word) is an error too.
 */
import { readFileSync } from 'node:fs';
import { parseAllDocuments } from 'yaml';
import { ServiceAccount, Service, ConfigMap } from 'kubernetes-models/v1';
import { StatefulSet } from 'kubernetes-models/apps/v1';
import { PodDisruptionBudget } from 'kubernetes-models/policy/v1';
import { Role, RoleBinding } from 'kubernetes-models/rbac.authorization.k8s.io/v1';

export interface Manifest {
  readonly file: string;
  readonly apiVersion: string;
  readonly kind: string;
  readonly metadata: { name: string; labels?: Record<string, string> };
  readonly [field: string]: unknown;
}

interface Model {
  validate(): void;
}

/** The kinds the manifests use, by apiVersion and kind; anything else has no schema here. */
const MODELS: Record<string, new (data: never) => Model> = {
  'v1/ServiceAccount': ServiceAccount,
  'v1/Service': Service,
  'v1/ConfigMap': ConfigMap,
  'apps/v1/StatefulSet': StatefulSet,
  'policy/v1/PodDisruptionBudget': PodDisruptionBudget,
  'rbac.authorization.k8s.io/v1/Role': Role,
  'rbac.authorization.k8s.io/v1/RoleBinding': RoleBinding,
};

/** Every document of a multi-document YAML file; a syntax error throws, naming the file. */
export function readManifests(file: string): Manifest[] {
  return parseAllDocuments(readFileSync(file, 'utf8')).map((document, index) => {
    if (document.errors.length > 0) throw new Error(`${file}, document ${index + 1}: ${document.errors[0]!.message}`);
    return { ...(document.toJS() as Omit<Manifest, 'file'>), file } as Manifest;
  });
}

/** What is wrong with one object: schema errors and fields the schema does not define. */
export function schemaErrors(manifest: Manifest): string[] {
  const { file, ...object } = manifest;
  const where = `${file}: ${manifest.kind ?? '?'} ${manifest.metadata?.name ?? '?'}`;
  const Model = MODELS[`${manifest.apiVersion}/${manifest.kind}`];
  if (!Model) return [`${where}: no schema for apiVersion ${manifest.apiVersion}, kind ${manifest.kind}`];
  const model = new Model(object as never);
  const recorder = readRecorder(model);
  try {
    recorder.proxy.validate.call(recorder.proxy);
  } catch (error) {
    return [`${where}: ${(error as Error).message}`];
  }
  return recorder.unread().map((path) => `${where}: ${path}: not a field of the schema`);
}

/**
 * The models' validators are compiled from the schemas: they read every property the schema
 * defines and iterate the keys of free-form maps (labels, data). So a property of the object that
 * the validator never read, nor listed, is one the schema does not define. This proxy records
 * what was read, at every depth.
 */
function readRecorder<T extends object>(root: T): { proxy: T; unread: () => string[] } {
  const read = new Map<object, { path: string; keys: Set<PropertyKey> }>();
  const proxies = new WeakMap<object, object>();
  const wrap = (value: unknown, path: string): unknown => {
    if (value === null || typeof value !== 'object') return value;
    let proxy = proxies.get(value);
    if (!proxy) {
      const keys = new Set<PropertyKey>();
      read.set(value, { path, keys });
      proxy = new Proxy(value, {
        get: (target, key, receiver) => {
          keys.add(key);
          return wrap(Reflect.get(target, key, receiver), `${path}/${String(key)}`);
        },
        has: (target, key) => {
          keys.add(key);
          return Reflect.has(target, key);
        },
        ownKeys: (target) => {
          const all = Reflect.ownKeys(target);
          for (const key of all) keys.add(key);
          return all;
        },
      });
      proxies.set(value, proxy);
    }
    return proxy;
  };
  const proxy = wrap(root, '') as T;
  const unread = () =>
    [...read.entries()].flatMap(([object, { path, keys }]) =>
      Object.keys(object)
        .filter((key) => !keys.has(key))
        .map((key) => `${path}/${key}`),
    );
  return { proxy, unread };
}

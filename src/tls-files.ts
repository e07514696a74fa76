/**
 * TLS material for a coordination service: a CA bundle to verify the server with, and a client
 * certificate and key for mutual TLS, each read from a file an operator names by a setting.
 *
 * Files are checked when read, so that a wrong one is refused with the setting's name before any
 * connection is tried: a CA file that holds no certificate, a key that does not belong to its
 * certificate, a client certificate that has expired or is not valid yet. What the server thinks
 * of them (a CA that did not sign its certificate, a client certificate it does not trust) only
 * a connection can tell; the adapters name the setting then.
 *
 * The files are read again when they change (`watchTlsFiles`), so that a rotated certificate is
 * picked up without a restart: a file's content is compared, not its mtime, because a Kubernetes
 * secret volume swaps a symlink and keeps old timestamps. A rotation that leaves the files
 * unusable (a key written before its certificate) keeps the material in use and is read again at
 * every check until it can be used.
 */
import { X509Certificate, createPrivateKey, createHash } from 'node:crypto';
import { readFileSync } from 'node:fs';

/** The settings of one backend's TLS files, by role: e.g. etcd-ca-file, etcd-cert-file, etcd-key-file. */
export interface TlsFileSettings {
  readonly ca?: { readonly setting: string; readonly path: string };
  readonly cert?: { readonly setting: string; readonly path: string };
  readonly key?: { readonly setting: string; readonly path: string };
}

/** What a TLS client needs, as Node's tls and gRPC take it. Absent roles are absent. */
export interface TlsMaterial {
  readonly ca?: Buffer;
  readonly cert?: Buffer;
  readonly key?: Buffer;
}

export class TlsFileError extends Error {
  override readonly name = 'TlsFileError';
}

/** Reads and checks the files; throws TlsFileError naming the setting, never the content. */
export function readTlsFiles(settings: TlsFileSettings, now = new Date()): TlsMaterial {
  if ((settings.cert === undefined) !== (settings.key === undefined)) {
    const given = settings.cert ?? settings.key!;
    const missing = settings.cert === undefined ? 'cert' : 'key';
    throw new TlsFileError(`${given.setting}: needs ${given.setting.replace(/-(cert|key)-file$/, `-${missing}-file`)} too (a client certificate and its key go together)`);
  }
  const read = (file: { setting: string; path: string }): Buffer => {
    try {
      return readFileSync(file.path);
    } catch (error) {
      throw new TlsFileError(`${file.setting}: cannot read ${file.path}: ${(error as NodeJS.ErrnoException).code ?? error}`);
    }
  };
  const material: { ca?: Buffer; cert?: Buffer; key?: Buffer } = {};
  if (settings.ca) {
    material.ca = read(settings.ca);
    const certificates = certificatesIn(material.ca);
    if (certificates.length === 0) throw new TlsFileError(`${settings.ca.setting}: ${settings.ca.path} holds no PEM certificate`);
    for (const certificate of certificates) {
      if (!parses(certificate)) throw new TlsFileError(`${settings.ca.setting}: ${settings.ca.path} holds a certificate that cannot be parsed`);
    }
  }
  if (settings.cert && settings.key) {
    material.cert = read(settings.cert);
    material.key = read(settings.key);
    const first = certificatesIn(material.cert)[0];
    let certificate: X509Certificate;
    try {
      certificate = new X509Certificate(first ?? '');
    } catch {
      throw new TlsFileError(`${settings.cert.setting}: ${settings.cert.path} holds no PEM certificate`);
    }
    let key;
    try {
      key = createPrivateKey(material.key);
    } catch {
      // The parser's message can quote the file; it is a secret.
      throw new TlsFileError(`${settings.key.setting}: ${settings.key.path} holds no usable private key (PEM, unencrypted)`);
    }
    if (!certificate.checkPrivateKey(key)) {
      throw new TlsFileError(`${settings.key.setting}: ${settings.key.path} is not the key of the certificate in ${settings.cert.path}`);
    }
    if (now.getTime() > Date.parse(certificate.validTo)) {
      throw new TlsFileError(`${settings.cert.setting}: the certificate in ${settings.cert.path} expired on ${new Date(certificate.validTo).toISOString()}`);
    }
    if (now.getTime() < Date.parse(certificate.validFrom)) {
      throw new TlsFileError(`${settings.cert.setting}: the certificate in ${settings.cert.path} is not valid before ${new Date(certificate.validFrom).toISOString()}`);
    }
  }
  return material;
}

export function hasTlsFiles(settings: TlsFileSettings): boolean {
  return settings.ca !== undefined || settings.cert !== undefined || settings.key !== undefined;
}

/**
 * Reads the files, then calls `changed` with freshly read material whenever their content
 * changes, checked every `intervalMs` and at once on `check()`. New content that cannot be used
 * is reported to `failed` once, and read again at every check until it can (a certificate not
 * valid yet becomes valid; the other half of a rotation lands); meanwhile the old material stays
 * in use. The first fingerprint is taken before the first read, so that a change landing in
 * between is read again, never missed.
 */
export function watchTlsFiles(
  settings: TlsFileSettings,
  intervalMs: number,
  changed: (material: TlsMaterial) => void,
  failed: (error: TlsFileError) => void,
  clock: () => Date = () => new Date(),
): { material: TlsMaterial; check(): void; stop(): void } {
  let applied = fingerprint(settings);
  const material = readTlsFiles(settings, clock());
  let reported: string | null = null;
  const check = () => {
    const now = fingerprint(settings);
    if (now === applied) return;
    let fresh: TlsMaterial;
    try {
      fresh = readTlsFiles(settings, clock());
    } catch (error) {
      if (now !== reported) failed(error instanceof TlsFileError ? error : new TlsFileError(String(error)));
      reported = now;
      return;
    }
    applied = now;
    reported = null;
    changed(fresh);
  };
  const timer = setInterval(check, intervalMs);
  timer.unref();
  return { material, check, stop: () => clearInterval(timer) };
}

/** A digest of the files' contents (an unreadable file counts as its error code). */
function fingerprint(settings: TlsFileSettings): string {
  const hash = createHash('sha256');
  for (const file of [settings.ca, settings.cert, settings.key]) {
    if (!file) continue;
    try {
      hash.update(readFileSync(file.path));
    } catch (error) {
      hash.update(`unreadable ${(error as NodeJS.ErrnoException).code}`);
    }
    hash.update('\0');
  }
  return hash.digest('hex');
}

function certificatesIn(pem: Buffer): string[] {
  return pem.toString('latin1').match(/-----BEGIN CERTIFICATE-----[\s\S]*?-----END CERTIFICATE-----/g) ?? [];
}

function parses(pem: string): boolean {
  try {
    new X509Certificate(pem);
    return true;
  } catch {
    return false;
  }
}

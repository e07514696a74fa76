import { copyFileSync, mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { watchTlsFiles, type TlsFileError, type TlsMaterial } from '../src/tls-files.js';
import { makePki } from './harness/tls.js';

describe('TLS files rotated on disk', () => {
  const pki = makePki();

  it('a change that cannot be used yet is reported once, read again at every check, and taken once it can be', () => {
    const dir = mkdtempSync(join(tmpdir(), 'leaderd-tls-files-'));
    const [cert, key] = [join(dir, 'client.crt'), join(dir, 'client.key')];
    copyFileSync(pki.client('a').cert, cert);
    copyFileSync(pki.client('a').key, key);
    const applied: TlsMaterial[] = [];
    const failures: TlsFileError[] = [];
    const watch = watchTlsFiles(
      { cert: { setting: 'etcd-cert-file', path: cert }, key: { setting: 'etcd-key-file', path: key } },
      3_600_000,
      (m) => applied.push(m),
      (e) => failures.push(e),
    );
    try {
      expect(watch.material.cert?.toString()).toContain('BEGIN CERTIFICATE');
      watch.check();
      expect(applied).toEqual([]);

      // Half a rotation: the new certificate, the old key.
      copyFileSync(pki.client('b').cert, cert);
      watch.check();
      watch.check();
      expect(failures.map((e) => e.message)).toEqual([expect.stringMatching(/^etcd-key-file: .* is not the key of the certificate in /)]);
      expect(applied).toEqual([]);

      // The other half lands: taken at the next check, without a change of its own being needed twice.
      copyFileSync(pki.client('b').key, key);
      watch.check();
      expect(applied).toHaveLength(1);
      expect(applied[0]!.cert?.equals(watch.material.cert!)).toBe(false);
      watch.check();
      expect(applied).toHaveLength(1);
      expect(failures).toHaveLength(1);
    } finally {
      watch.stop();
    }
  });

  it('a certificate not valid yet (a clock behind its issuer\'s) is taken, unchanged on disk, once it is', () => {
    const dir = mkdtempSync(join(tmpdir(), 'leaderd-tls-files-'));
    const [cert, key] = [join(dir, 'client.crt'), join(dir, 'client.key')];
    let now = new Date();
    copyFileSync(pki.client('a').cert, cert);
    copyFileSync(pki.client('a').key, key);
    const applied: TlsMaterial[] = [];
    const failures: TlsFileError[] = [];
    const files = { cert: { setting: 'consul-cert-file', path: cert }, key: { setting: 'consul-key-file', path: key } };
    const watch = watchTlsFiles(files, 3_600_000, (m) => applied.push(m), (e) => failures.push(e), () => now);
    try {
      // This node's clock falls an hour behind; the new pair was issued just now, by the issuer's.
      now = new Date(Date.now() - 3_600_000);
      copyFileSync(pki.client('c').cert, cert);
      copyFileSync(pki.client('c').key, key);
      watch.check();
      watch.check();
      expect(failures.map((e) => e.message)).toEqual([expect.stringMatching(/^consul-cert-file: the certificate in \S+ is not valid before /)]);
      expect(applied).toEqual([]);
      now = new Date(Date.now() + 60_000);
      watch.check();
      expect(applied).toHaveLength(1);
    } finally {
      watch.stop();
    }
  });
});

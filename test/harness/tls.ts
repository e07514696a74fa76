/**
 * Certificates for the secured deployments, made by the tests themselves with openssl: a CA, a
 * server certificate for 127.0.0.1 and localhost, client certificates (one per name asked for),
 * one client certificate that has expired, and a second CA with a server and a client certificate
 * of its own, which the first CA's side does not trust.
 */
import { execFileSync } from 'node:child_process';
import { chmodSync, mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

export interface CertificateFiles {
  readonly cert: string;
  readonly key: string;
}

export interface Pki {
  readonly dir: string;
  readonly ca: string;
  readonly server: CertificateFiles;
  /** A client certificate whose common name is `name` (etcd takes it as the user name). */
  client(name: string): CertificateFiles;
  readonly expiredClient: CertificateFiles;
  /** Another CA, with certificates of its own: trusted by nobody else here. */
  readonly otherCa: string;
  readonly otherServer: CertificateFiles;
  readonly otherClient: CertificateFiles;
}

function openssl(args: string[], dir: string): void {
  execFileSync('openssl', args, { cwd: dir, stdio: ['ignore', 'ignore', 'pipe'] });
}

function newKey(dir: string, name: string): string {
  openssl(['genpkey', '-algorithm', 'EC', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-out', `${name}.key`], dir);
  chmodSync(join(dir, `${name}.key`), 0o600);
  return join(dir, `${name}.key`);
}

function newCa(dir: string, name: string): void {
  newKey(dir, name);
  openssl(['req', '-x509', '-new', '-key', `${name}.key`, '-subj', `/CN=${name}`, '-days', '2', '-out', `${name}.crt`], dir);
}

/** A certificate signed by `ca`, valid for `days` (negative: expired already). */
function issue(dir: string, ca: string, name: string, usage: 'server' | 'client', days = 2): CertificateFiles {
  const key = newKey(dir, name);
  openssl(['req', '-new', '-key', `${name}.key`, '-subj', `/CN=${name}`, '-out', `${name}.csr`], dir);
  const extensions = join(dir, `${name}.ext`);
  writeFileSync(
    extensions,
    usage === 'server'
      ? 'subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth,clientAuth\n'
      : 'extendedKeyUsage=clientAuth\n',
  );
  openssl(
    ['x509', '-req', '-in', `${name}.csr`, '-CA', `${ca}.crt`, '-CAkey', `${ca}.key`, '-CAcreateserial', '-days', String(days), '-extfile', extensions, '-out', `${name}.crt`],
    dir,
  );
  return { cert: join(dir, `${name}.crt`), key };
}

export function makePki(): Pki {
  const dir = mkdtempSync(join(tmpdir(), 'leaderd-pki-'));
  newCa(dir, 'test-ca');
  newCa(dir, 'other-ca');
  const server = issue(dir, 'test-ca', 'server', 'server');
  const clients = new Map<string, CertificateFiles>();
  return {
    dir,
    ca: join(dir, 'test-ca.crt'),
    server,
    client(name) {
      let files = clients.get(name);
      if (!files) {
        files = issue(dir, 'test-ca', name, 'client');
        clients.set(name, files);
      }
      return files;
    },
    expiredClient: issue(dir, 'test-ca', 'expired-client', 'client', -1),
    otherCa: join(dir, 'other-ca.crt'),
    otherServer: issue(dir, 'other-ca', 'other-server', 'server'),
    otherClient: issue(dir, 'other-ca', 'other-client', 'client'),
  };
}

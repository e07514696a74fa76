import { spawn } from 'node:child_process';
import { chmodSync, mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';
import { BACKENDS } from '../adapters/index.js';
import { OPTIONS, envName, parseCommand, type Config } from '../src/config.js';
import { hookEnvironment } from '../src/hooks.js';
import { checkCommands } from '../src/preflight.js';
import { scratchFile } from './conformance.js';
import { BIN, runLeaderd } from './harness/sidecar.js';
import { makePki } from './harness/tls.js';

function config(argv: string[], env: NodeJS.ProcessEnv = {}): Config {
  const command = parseCommand(argv, env, BACKENDS);
  if (command.kind !== 'run') throw new Error(`not a run: ${command.kind}`);
  return command.config;
}

function yamlFile(text: string): string {
  const file = scratchFile('config.yaml');
  writeFileSync(file, text);
  return file;
}

describe('configuration', () => {
  it('has safe defaults: loopback HTTP, local backend, ttl 10 s, renew deadline 2/3 ttl', () => {
    const c = config([]);
    expect(c.http).toEqual({ host: '127.0.0.1', port: 7070 });
    expect(c.backend).toBe('local');
    expect(c.ttlSeconds).toBe(10);
    expect(c.renewDeadlineSeconds).toBeCloseTo(20 / 3);
    expect(c.adminToken).toBeNull();
    expect(c.hooks).toMatchObject({ timeoutSeconds: 30, promoteFailure: 'resign', url: null, exec: {} });
  });

  it('reads the failover settings: check, its interval and timeout, priority, max-lag (beyond 2^53 too)', () => {
    const defaults = config(['--ttl', '6']);
    expect(defaults.member).toEqual({ check: null, checkIntervalSeconds: 2, checkTimeoutSeconds: 2, priority: 1, maxLag: null, unhealthyAfterSeconds: 6 });
    const c = config(['--check', '/usr/bin/pg-check --port 5432', '--check-interval', '5', '--priority', '0', '--max-lag', '98765432109876543210', '--unhealthy-after', '30']);
    expect(c.member).toEqual({
      check: ['/usr/bin/pg-check', '--port', '5432'],
      checkIntervalSeconds: 5,
      checkTimeoutSeconds: 10 / 3,
      priority: 0,
      maxLag: 98765432109876543210n,
      unhealthyAfterSeconds: 30,
    });
    expect(config(['--check', 'c', '--check-timeout', '0.5']).member.checkTimeoutSeconds).toBe(0.5);
    expect(config([], { LEADERD_CHECK: 'c', LEADERD_MAX_LAG: '7' }).member.maxLag).toBe(7n);
    expect(config(['--config', yamlFile('check: [c, "--x"]\nmax-lag: 16\npriority: 3\n')]).member).toMatchObject({ check: ['c', '--x'], maxLag: 16n, priority: 3 });
  });

  it('reads examples/leaderd.yaml as it stands', () => {
    const example = fileURLToPath(new URL('../examples/leaderd.yaml', import.meta.url));
    // The token file it names lives on the deployed host: one of the test's stands in for it.
    const token = scratchFile('admin-token');
    writeFileSync(token, 'example-admin-token', { mode: 0o600 });
    const c = config(['--config', example, '--admin-token-file', token]);
    expect(c.backend).toBe('etcd');
    expect(c.member).toMatchObject({ check: ['/etc/leaderd/pg-position'], maxLag: 16777216n, priority: 1 });
  });

  it('takes flags over environment over file over defaults', () => {
    const file = yamlFile('ttl: 20\nelection: from-file\nid: file-id\naddress: file:1\n');
    const env = { LEADERD_TTL: '15', LEADERD_ELECTION: 'from-env', LEADERD_CONFIG: file };
    const c = config(['--ttl', '12'], env);
    expect(c.ttlSeconds).toBe(12);
    expect(c.election).toBe('from-env');
    expect(c.id).toBe('file-id');
    expect(c.address).toBe('file:1');
  });

  it('splits hook commands like a shell would, but runs them without one', () => {
    const c = config(['--on-promote', `/usr/bin/promote --name "my db" 'x y'`]);
    expect(c.hooks.exec.promote).toEqual(['/usr/bin/promote', '--name', 'my db', 'x y']);
    const fromFile = config(['--config', yamlFile('on-demote: [/bin/demote, "--now"]\n')]);
    expect(fromFile.hooks.exec.demote).toEqual(['/bin/demote', '--now']);
  });

  it('reads the admin token from a file, trimmed', () => {
    const file = scratchFile('token');
    writeFileSync(file, '  a-long-admin-token\n', { mode: 0o600 });
    expect(config(['--admin-token-file', file]).adminToken).toBe('a-long-admin-token');
    expect(config(['--admin-token-file', file]).warnings).toEqual([]);
  });

  it('compares the deadline margin in whole milliseconds, not in binary fractions', () => {
    expect(config(['--ttl', '1.13', '--renew-deadline', '0.88']).renewDeadlineSeconds).toBe(0.88);
  });

  it('holds a secret to one rule wherever it comes from, and warns about a file others can read', () => {
    const file = scratchFile('short-token');
    writeFileSync(file, 'x\n', { mode: 0o600 });
    expect(() => config(['--admin-token-file', file])).toThrow(/^admin-token-file: .* must hold at least 8 characters without spaces \(set by --admin-token-file\)$/);
    expect(config(['--admin-token', 'eight-ch']).adminToken).toBe('eight-ch');
    expect(config([], { LEADERD_ADMIN_TOKEN: 'eight-ch' }).adminToken).toBe('eight-ch');
    expect(config(['--zk-auth', 'user:pass word']).zookeeper.auth).toBe('user:pass word');
    const readable = scratchFile('readable-token');
    writeFileSync(readable, 'a-long-admin-token\n');
    chmodSync(readable, 0o644);
    expect(config(['--admin-token-file', readable]).warnings).toEqual([
      `admin-token-file: ${readable} can be read by other users (mode 644); chmod 600 it (on a Kubernetes secret volume: defaultMode 0400)`,
    ]);
  });

  it('times the deadline from the Consul check TTL, the shorter lease on that backend', () => {
    const c = config(['--backend', 'consul', '--ttl', '15', '--consul-check-ttl', '3']);
    expect(c.ttlSeconds).toBe(15);
    expect(c.leaseSeconds).toBe(3);
    expect(c.renewDeadlineSeconds).toBe(2);
    expect(config(['--backend', 'etcd', '--ttl', '6']).leaseSeconds).toBe(6);
  });

  it('defaults the Consul lock-delay to a margin past the renew deadline, and ZooKeeper\'s renew deadline to half the ttl', () => {
    // A lock-delay equal to the deadline would let a successor acquire at the very moment the
    // old primary's deadline passes, when Consul ends a session right after a renewal.
    expect(config(['--backend', 'consul', '--ttl', '15', '--consul-check-ttl', '3']).consul.lockDelaySeconds).toBe(2.25);
    const noDelay = config(['--backend', 'consul', '--consul-lock-delay', '0']);
    expect(noDelay.consul.lockDelaySeconds).toBe(0);
    expect(noDelay.warnings).toEqual([expect.stringMatching(/^consul-lock-delay: 0 s leaves less than 0.25 s after the renew deadline/)]);
    expect(config(['--backend', 'zookeeper', '--ttl', '10']).renewDeadlineSeconds).toBe(5);
  });

  it('accepts a comma-separated list of etcd endpoints', () => {
    const c = config(['--backend', 'etcd', '--etcd-endpoints', 'https://10.0.0.1:2379, https://10.0.0.2:2379']);
    expect(c.etcd.endpoints).toEqual(['https://10.0.0.1:2379', 'https://10.0.0.2:2379']);
    expect(c.etcd.tls).toBeNull();
    expect(c.etcd.auth).toBeNull();
  });

  describe('TLS files and etcd credentials', () => {
    const pki = makePki();
    const client = pki.client('leaderd');
    const etcd = ['--backend', 'etcd', '--etcd-endpoints', 'https://127.0.0.1:2379'];

    it('takes CA, certificate, key and a password file, and keeps the paths, not the contents', () => {
      const password = scratchFile('etcd-password');
      writeFileSync(password, 'pass word\n', { mode: 0o600 });
      const c = config([...etcd, '--etcd-ca-file', pki.ca, '--etcd-cert-file', client.cert, '--etcd-key-file', client.key, '--etcd-username', 'leaderd', '--etcd-password-file', password]);
      expect(c.etcd.tls).toEqual({
        ca: { setting: 'etcd-ca-file', path: pki.ca },
        cert: { setting: 'etcd-cert-file', path: client.cert },
        key: { setting: 'etcd-key-file', path: client.key },
      });
      expect(c.etcd.auth).toEqual({ username: 'leaderd', password: 'pass word' });
    });

    it('checks the files of the backend in use only', () => {
      expect(config(['--consul-ca-file', '/nonexistent/ca.crt']).consul.tls).toEqual({ ca: { setting: 'consul-ca-file', path: '/nonexistent/ca.crt' } });
    });

    const junk = scratchFile('junk.pem');
    writeFileSync(junk, 'not a certificate: s3cret-content\n');
    const refusals: Array<[string, string[], RegExp]> = [
      ['TLS files with an http:// endpoint', ['--backend', 'etcd', '--etcd-ca-file', pki.ca], /^etcd-ca-file: needs an https:\/\/ etcd-endpoints \(http:\/\/127\.0\.0\.1:2379 is plain http, so the file would not be used\)/],
      ['http:// and https:// endpoints mixed', ['--backend', 'etcd', '--etcd-endpoints', 'http://a:2379,https://b:2379'], /^etcd-endpoints: mixes http:\/\/ and https:\/\/ addresses; use one scheme/],
      ['a CA file that cannot be read', [...etcd, '--etcd-ca-file', '/nonexistent/ca.crt'], /^etcd-ca-file: cannot read \/nonexistent\/ca\.crt: ENOENT \(set by --etcd-ca-file\)$/],
      ['a CA file without a certificate', [...etcd, '--etcd-ca-file', junk], /^etcd-ca-file: \S+junk\.pem holds no PEM certificate/],
      ['a certificate without its key', [...etcd, '--etcd-cert-file', client.cert], /^etcd-cert-file: needs etcd-key-file too/],
      ['a key without its certificate', [...etcd, '--etcd-key-file', client.key], /^etcd-key-file: needs etcd-cert-file too/],
      ['a key that is not a key', [...etcd, '--etcd-cert-file', client.cert, '--etcd-key-file', junk], /^etcd-key-file: \S+junk\.pem holds no usable private key/],
      ['a key of another certificate', [...etcd, '--etcd-cert-file', client.cert, '--etcd-key-file', pki.otherClient.key], /^etcd-key-file: \S+ is not the key of the certificate in /],
      ['an expired client certificate', [...etcd, '--etcd-cert-file', pki.expiredClient.cert, '--etcd-key-file', pki.expiredClient.key], /^etcd-cert-file: the certificate in \S+ expired on \d{4}-/],
      ['a user without a password', [...etcd, '--etcd-username', 'leaderd'], /^etcd-username: needs etcd-password-file \(or etcd-password\)/],
      ['a password without a user', [...etcd, '--etcd-password', 's3cret-content'], /^etcd-password: needs etcd-username/],
      ['a password and a password file', [...etcd, '--etcd-username', 'u', '--etcd-password', 's3cret-content', '--etcd-password-file', junk], /^etcd-password: give either etcd-password or etcd-password-file, not both/],
      ['Consul TLS files with an http:// address', ['--backend', 'consul', '--ttl', '15', '--consul-cert-file', client.cert, '--consul-key-file', client.key], /^consul-cert-file: needs an https:\/\/ consul-addr/],
    ];
    for (const [what, argv, message] of refusals) {
      it(`refuses ${what}, never showing a file's content or a password`, () => {
        let error: unknown;
        try {
          config(argv);
        } catch (caught) {
          error = caught;
        }
        expect(String((error as Error | undefined)?.message)).toMatch(message);
        expect(String((error as Error).message)).not.toContain('s3cret-content');
      });
    }
  });

  const refused: Array<[string, string[], NodeJS.ProcessEnv, RegExp]> = [
    ['a ttl that is not a number', ['--ttl', 'abc'], {}, /^ttl: must be a number of seconds, got "abc" \(set by --ttl\)$/],
    ['a renew deadline not below the ttl', ['--ttl', '3', '--renew-deadline', '3'], {}, /^renew-deadline: must be below ttl/],
    ['a renew deadline not above the renew interval', ['--ttl', '9', '--renew-deadline', '2'], {}, /^renew-deadline: must be above the renew interval/],
    ['an unknown backend', ['--backend', 'zk'], {}, /^backend: must be one of local, etcd, zookeeper, consul, got "zk" \(set by --backend\)$/],
    ['a ttl below the backend minimum', ['--backend', 'etcd', '--ttl', '1'], {}, /^ttl: 1 s is below the etcd backend's minimum of 2 s \(set by --ttl\)$/],
    ['an unknown flag', ['--bogus', 'x'], {}, /^unknown flag --bogus/],
    ['a flag without its value', ['--ttl'], {}, /^flag --ttl needs a value$/],
    ['a bad listen address', ['--http', 'localhost'], {}, /^http: must be HOST:PORT/],
    ['a bad endpoint', ['--backend', 'etcd', '--etcd-endpoints', 'ftp://x'], {}, /^etcd-endpoints: must be a URL/],
    ['a hook that needs a shell', ['--on-promote', 'promote | tee log'], {}, /^on-promote: commands run without a shell/],
    ['a bad election name', ['--election', '../etc'], {}, /^election: must be 1-128 letters/],
    ['a bad promote-failure action', ['--promote-failure', 'panic'], {}, /^promote-failure: must be resign or ignore \(set by --promote-failure\)$/],
    ['a bad value from the environment', [], { LEADERD_HOOK_TIMEOUT: '-1' }, /^hook-timeout: must be at least/],
    ['both admin token sources', ['--admin-token', 'aaaaaaaaaa', '--admin-token-file', '/dev/null'], {}, /^admin-token: give either/],
    ['a missing token file', ['--admin-token-file', '/nonexistent/token'], {}, /^admin-token-file: cannot read \/nonexistent\/token: ENOENT \(set by --admin-token-file\)$/],
    ['a Consul check TTL not below the session TTL', ['--backend', 'consul', '--ttl', '10', '--consul-check-ttl', '10'], {}, /^consul-check-ttl: must be below ttl/],
    ['a Consul lock-delay above 60 s', ['--consul-lock-delay', '90'], {}, /^consul-lock-delay: must be at most 60 \(set by --consul-lock-delay\)$/],
    ['a bad ZooKeeper connect string', ['--zk-connect', 'zk1'], {}, /^zk-connect: must be host:port/],
    ['both ZooKeeper credential sources', ['--zk-auth', 'u:p', '--zk-auth-file', '/dev/null'], {}, /^zk-auth: give either/],
    ['a ZooKeeper renew deadline above half the ttl', ['--backend', 'zookeeper', '--ttl', '10', '--renew-deadline', '9'], {}, /^renew-deadline: must be at most half the ttl on ZooKeeper \(9 s > 5 s\)/],
    ['a renew deadline closer than 0.25 s to the lease', ['--ttl', '3', '--renew-deadline', '2.9'], {}, /^renew-deadline: must end at least 0.25 s before the ttl \(2.9 s > 2.75 s\) \(set by --renew-deadline\)$/],
    ['a ttl longer than a timer can hold', ['--ttl', '1e9'], {}, /^ttl: must be at most 86400 \(a day\) \(set by --ttl\)$/],
    ['a ZooKeeper ttl too short for a margin after half of it', ['--backend', 'zookeeper', '--ttl', '1'], {}, /^ttl: 1 s is below the zookeeper backend's minimum of 1.5 s \(set by --ttl\)$/],
    ['a default Consul lock-delay beyond the 60 s Consul honours', ['--backend', 'consul', '--ttl', '300', '--consul-check-ttl', '100'], {}, /^renew-deadline: on Consul at most 59.75 s/],
    ['a fractional ttl on etcd, whose leases are whole seconds', ['--backend', 'etcd', '--ttl', '2.5'], {}, /^ttl: etcd leases are whole seconds, got 2.5 \(set by --ttl\)$/],
    ['a short admin token from a flag', ['--admin-token', 'x'], {}, /^admin-token: must be at least 8 characters without spaces \(set by --admin-token\)$/],
    ['a short admin token from the environment', [], { LEADERD_ADMIN_TOKEN: 'x' }, /^admin-token: must be at least 8 characters without spaces \(set by LEADERD_ADMIN_TOKEN\)$/],
    ['an empty admin token', ['--admin-token', ''], {}, /^admin-token: must be at least 8 characters without spaces \(set by --admin-token\)$/],
    ['a check that needs a shell', ['--check', 'pg_isready && echo ok'], {}, /^check: commands run without a shell/],
    ['a negative priority', ['--priority=-1'], {}, /^priority: must be at least 0 \(set by --priority\)$/],
    ['a value that looks like a flag', ['--priority', '-1'], {}, /^flag --priority: a value that starts with "-" must be written --priority=VALUE$/],
    ['a fractional priority', ['--priority', '1.5'], {}, /^priority: must be a whole number \(set by --priority\)$/],
    ['a priority that is not a number', ['--priority', 'high'], {}, /^priority: must be a whole number, got "high" \(set by --priority\)$/],
    ['a negative max-lag', ['--check', 'true', '--max-lag=-5'], {}, /^max-lag: must be a whole number, at least 0 \(set by --max-lag\)$/],
    ['a max-lag in other units', ['--check', 'true', '--max-lag', '16MB'], {}, /^max-lag: must be a whole number, at least 0 \(set by --max-lag\)$/],
    ['a max-lag without a check to measure it', ['--max-lag', '100'], {}, /^max-lag: needs --check/],
    ['a check interval of zero', ['--check', 'true', '--check-interval', '0'], {}, /^check-interval: must be at least 0.01 \(set by --check-interval\)$/],
    ['a primary that would step down on one failed check', ['--check', 'true', '--ttl', '6', '--unhealthy-after', '2'], {}, /^unhealthy-after: must be longer than check-interval \(2 s <= 2 s\): one failed check is not an outage \(set by --unhealthy-after\)$/],
    ['a missing config file', ['--config', '/nonexistent.yaml'], {}, /^config: cannot read \/nonexistent.yaml: ENOENT \(set by --config\)$/],
  ];
  for (const [what, argv, env, message] of refused) {
    it(`refuses ${what}, naming the setting`, () => {
      expect(() => config(argv, env)).toThrow(message);
    });
  }

  const oddValues: Array<[string, string[], NodeJS.ProcessEnv, RegExp]> = [
    ['a hexadecimal number', ['--ttl', '0x10'], {}, /^ttl: must be a number of seconds, got "0x10" \(set by --ttl\)$/],
    ['an empty value', ['--ttl='], {}, /^ttl: must be a number of seconds, got "" \(set by --ttl\)$/],
    ['a number with a unit', ['--ttl', '10s'], {}, /^ttl: must be a number of seconds, without a unit, got "10s" \(set by --ttl\)$/],
    ['a negative number', ['--ttl=-5'], {}, /^ttl: must be at least 1 \(set by --ttl\)$/],
    ['zero', ['--hook-timeout', '0'], {}, /^hook-timeout: must be at least 0.001 \(set by --hook-timeout\)$/],
    ['NaN', ['--check-interval', 'NaN', '--check', 'c'], {}, /^check-interval: must be a number of seconds, got "NaN" \(set by --check-interval\)$/],
    ['Infinity', ['--hook-timeout', 'Infinity'], {}, /^hook-timeout: must be a number of seconds, got "Infinity" \(set by --hook-timeout\)$/],
    ['a huge number', ['--hook-timeout', '1e300'], {}, /^hook-timeout: must be at most 86400 \(a day\) \(set by --hook-timeout\)$/],
    ['a hexadecimal priority', ['--priority', '0x2'], {}, /^priority: must be a whole number, got "0x2" \(set by --priority\)$/],
    ['trailing garbage from the environment', [], { LEADERD_TTL: '10 s' }, /^ttl: must be a number of seconds, without a unit, got "10 s" \(set by LEADERD_TTL\)$/],
    ['a scalar flag given twice', ['--ttl', '5', '--election', 'e', '--ttl', '50'], {}, /^ttl: --ttl is given 2 times; give it once$/],
    ['a hook flag given twice', ['--on-promote', 'a', '--on-promote', 'b'], {}, /^on-promote: --on-promote is given 2 times; give it once$/],
    ['a misspelt variable', [], { LEADERD_TTLL: '5' }, /^LEADERD_TTLL: no such setting; did you mean LEADERD_TTL\?$/],
    ['an unknown variable', [], { LEADERD_FLAVOUR: 'x' }, /^LEADERD_FLAVOUR: no such setting \(see --help\)$/],
    ['an unknown variable, even when empty', [], { LEADERD_TTLL: '' }, /^LEADERD_TTLL: no such setting; did you mean LEADERD_TTL\?$/],
    ['a log level by number', ['--log-level', '30'], {}, /^log-level: must be one of fatal, error, warn, info, debug, trace, silent, got "30" \(set by --log-level\)$/],
    ['an unknown log level', [], { LEADERD_LOG_LEVEL: 'verbose' }, /^log-level: must be one of .*, got "verbose" \(set by LEADERD_LOG_LEVEL\)$/],
    ['a fact variable outside a hook', [], { LEADERD_ROLE: 'primary' }, /^LEADERD_ROLE: no such setting/],
  ];
  it('never shows the values of a flag given twice: they may be secrets', () => {
    expect(() => config(['--admin-token', 's3cret-one', '--admin-token', 's3cret-two'])).toThrow(/^admin-token: --admin-token is given 2 times; give it once$/);
  });

  it('leaves alone the variables Kubernetes and Docker make for a Service or container named leaderd', () => {
    const links = { LEADERD_SERVICE_HOST: '10.96.0.12', LEADERD_SERVICE_PORT: '7070', LEADERD_SERVICE_PORT_HTTP: '7070', LEADERD_PORT: 'tcp://10.96.0.12:7070', LEADERD_PORT_7070_TCP_ADDR: '10.96.0.12' };
    expect(config(['--ttl', '12'], links).ttlSeconds).toBe(12);
  });

  for (const [what, argv, env, message] of oddValues) {
    it(`refuses ${what}, naming the setting and where it was set`, () => {
      expect(() => config(argv, env)).toThrow(message);
    });
  }

  it('takes pino\'s level names for --log-level, in any case', () => {
    expect(config([]).logLevel).toBe('info');
    expect(config(['--log-level', 'debug']).logLevel).toBe('debug');
    expect(config([], { LEADERD_LOG_LEVEL: 'WARN' }).logLevel).toBe('warn');
    expect(config(['--log-level', 'silent']).logLevel).toBe('silent');
  });

  it('says which file a bad value was read from', () => {
    const file = yamlFile('ttl: 10s\n');
    expect(() => config(['--config', file])).toThrow(`ttl: must be a number of seconds, without a unit, got "10s" (set in ${file})`);
    // A flag over the file is what is reported: it is the value in force.
    expect(() => config(['--config', file, '--ttl', 'x'])).toThrow(/^ttl: must be a number of seconds, got "x" \(set by --ttl\)$/);
  });

  it('ignores the facts a hook or a check is told, so that leaderd can be run from one', () => {
    const facts = { event: 'promote', election: 'parents', id: 'parent', role: 'primary', leader: { id: 'parent', address: 'p:1' }, fencingToken: 7 } as const;
    const inHook = hookEnvironment(facts);
    const c = config(['--id', 'child', '--ttl', '5'], inHook);
    expect(c.id).toBe('child');
    expect(c.election).toBe('default');
    expect(c.sources).toEqual({ id: 'set by --id', ttl: 'set by --ttl' });
    // A check is told the same facts but the event, and LEADERD_CHECK=1.
    const { LEADERD_EVENT: _event, ...inCheck } = inHook;
    expect(config([], { ...inCheck, LEADERD_CHECK: '1' }).member.check).toBeNull();
    // Settings given on purpose still count there, and typos are still refused.
    expect(config([], { ...inHook, LEADERD_TTL: '4' }).ttlSeconds).toBe(4);
    expect(() => config([], { ...inHook, LEADERD_TTLL: '4' })).toThrow(/^LEADERD_TTLL: no such setting/);
  });

  it('finds hook and check commands as they will be run: by path, or by name in PATH', () => {
    const dir = scratchFile('bin');
    mkdirSync(dir);
    writeFileSync(join(dir, 'promote'), '#!/bin/sh\n', { mode: 0o755 });
    writeFileSync(join(dir, 'plain'), '#!/bin/sh\n', { mode: 0o644 });
    const env = { PATH: `/nonexistent:${dir}` };
    expect(() => checkCommands(config(['--on-promote', 'promote --now', '--on-demote', `${dir}/promote`, '--check', 'promote']), env)).not.toThrow();
    expect(() => checkCommands(config(['--on-promote', 'plain']), env)).toThrow(/^on-promote: "plain" is not found in PATH; give its full path \(set by --on-promote\)$/);
    expect(() => checkCommands(config(['--on-demote', `${dir}/plain`]), env)).toThrow(`on-demote: ${dir}/plain is not executable (chmod +x it) (set by --on-demote)`);
    expect(() => checkCommands(config(['--on-leader-change', dir]), env)).toThrow(`on-leader-change: ${dir} is not a file (set by --on-leader-change)`);
    expect(() => checkCommands(config([], { ...env, LEADERD_CHECK: `${dir}/missing` }), env)).toThrow(`check: ${dir}/missing does not exist (set by LEADERD_CHECK)`);
  });

  it('looks for a command in the default path when PATH is unset, as spawning it would', () => {
    expect(() => checkCommands(config(['--on-promote', 'true']), {})).not.toThrow();
  });

  it('refuses a shell-style variable assignment before a command without repeating its value', () => {
    const attempt = () => checkCommands(config(['--on-promote', 'PGPASSWORD=s3cret /usr/bin/promote']), { PATH: '/usr/bin' });
    expect(attempt).toThrow(/^on-promote: starts with a variable assignment \(NAME=value\), which only a shell understands/);
    expect(attempt).not.toThrow(/s3cret/);
  });

  it('refuses an unknown key, invalid YAML and a non-mapping in the config file', () => {
    expect(() => config(['--config', yamlFile('tll: 10\n')])).toThrow(/^config: unknown setting "tll"/);
    expect(() => config(['--config', yamlFile('ttl: [1\n')])).toThrow(/^config: .* is not valid YAML/);
    expect(() => config(['--config', yamlFile('- ttl\n')])).toThrow(/must hold a mapping/);
    expect(() => config(['--config', yamlFile('ttl: -5\n')])).toThrow(/^ttl: must be at least 1 \(set in .*config.yaml\)$/);
  });
});

describe('the leaderd command', () => {
  it('exits 2 with a one-line message naming the field, and no stack trace', async () => {
    const result = await runLeaderd(['--ttl', '3', '--renew-deadline', '5']);
    expect(result.code).toBe(2);
    expect(result.stderr).toBe('leaderd: invalid configuration: renew-deadline: must be below ttl (5 s >= 3 s) (set by --renew-deadline)\n');
    expect(result.stdout).toBe('');
  });

  it('exits 2 when the HTTP address is taken', async () => {
    const { createServer } = await import('node:net');
    const server = createServer().listen(0, '127.0.0.1');
    await new Promise((r) => server.once('listening', r));
    const { port } = server.address() as { port: number };
    try {
      const result = await runLeaderd(['--http', `127.0.0.1:${port}`, '--local-dir', scratchFile('dir')]);
      expect(result.code).toBe(2);
      expect(result.stderr).toMatch(new RegExp(`^leaderd: http: cannot listen on 127.0.0.1:${port}: .*EADDRINUSE`));
    } finally {
      server.close();
    }
  });

  it('exits 2 at once when a hook command cannot run, before campaigning', async () => {
    const result = await runLeaderd(['--on-promote', '/nonexistent/promote --now', '--http', '127.0.0.1:0', '--local-dir', scratchFile('dir')]);
    expect(result.code).toBe(2);
    expect(result.stderr).toBe('leaderd: invalid configuration: on-promote: /nonexistent/promote does not exist (set by --on-promote)\n');
    expect(result.stdout).toBe('');
  });

  it('exits 2 with one line for a --local-dir on a pseudo-filesystem, instead of retrying (or hanging) forever', async () => {
    for (const [dir, message] of [
      ['/proc/leaderd', 'cannot create /proc/leaderd (ENOENT)'],
      ['/proc/self', '/proc/self is on procfs, which cannot hold files'],
      ['/sys/kernel', '/sys/kernel is on sysfs, which cannot hold files'],
    ] as const) {
      const result = await runLeaderd(['--http', '127.0.0.1:0', '--local-dir', dir, '--election', 'pseudo']);
      expect(result.code, dir).toBe(2);
      expect(result.stderr).toMatch(new RegExp(`^leaderd: invalid configuration: local-dir: ${message.replace(/[()]/g, '\\$&')}[^\\n]* \\(set by --local-dir\\)\\n$`));
    }
  });

  it('logs levels by name, the startup line with rounded durations and a bracketed IPv6 address', async () => {
    const child = spawn(process.execPath, [BIN, '--id', 'v6', '--http', '[::1]:0', '--local-dir', scratchFile('dir'), '--election', 'v6', '--ttl', '1'], {
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    const exited = new Promise((resolve) => child.once('exit', (code) => resolve(code)));
    try {
      const first = await new Promise<string>((resolve) => createInterface({ input: child.stdout }).once('line', resolve));
      expect(first).toMatch(/^\{"level":"info",/);
      const started = JSON.parse(first) as { msg: string; http: string; renewDeadlineSeconds: number };
      expect(started).toMatchObject({ msg: 'leaderd started', http: expect.stringMatching(/^\[::1\]:\d+$/), renewDeadlineSeconds: 0.667 });
      const role = await fetch(`http://${started.http}/role`, { signal: AbortSignal.timeout(10000) });
      expect(role.status).toBe(200);
    } finally {
      child.kill('SIGTERM');
      await exited;
    }
  });

  it('-h and -v are --help and --version', async () => {
    expect((await runLeaderd(['-h'])).stdout).toBe((await runLeaderd(['--help'])).stdout);
    const version = await runLeaderd(['-v']);
    expect(version.code).toBe(0);
    expect(version.stdout).toMatch(/^\d+\.\d+\.\d+\n$/);
  });

  it('--help lists every flag with its environment variable', async () => {
    const result = await runLeaderd(['--help']);
    expect(result.code).toBe(0);
    for (const name of Object.keys(OPTIONS)) {
      expect(result.stdout).toContain(`--${name} `);
      expect(result.stdout).toContain(envName(name));
    }
  });
});

import { chmodSync, writeFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';
import { BACKENDS } from '../adapters/index.js';
import { OPTIONS, envName, parseCommand, type Config } from '../src/config.js';
import { scratchFile } from './conformance.js';
import { runLeaderd } from './harness/sidecar.js';

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
    expect(() => config(['--admin-token-file', file])).toThrow(/^admin-token-file: .* must hold at least 8 characters without spaces$/);
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
    const c = config(['--backend', 'etcd', '--etcd-endpoints', 'http://10.0.0.1:2379, https://10.0.0.2:2379']);
    expect(c.etcd.endpoints).toEqual(['http://10.0.0.1:2379', 'https://10.0.0.2:2379']);
  });

  const refused: Array<[string, string[], NodeJS.ProcessEnv, RegExp]> = [
    ['a ttl that is not a number', ['--ttl', 'abc'], {}, /^ttl: must be a number of seconds$/],
    ['a renew deadline not below the ttl', ['--ttl', '3', '--renew-deadline', '3'], {}, /^renew-deadline: must be below ttl/],
    ['a renew deadline not above the renew interval', ['--ttl', '9', '--renew-deadline', '2'], {}, /^renew-deadline: must be above the renew interval/],
    ['an unknown backend', ['--backend', 'zk'], {}, /^backend: must be one of local, etcd, zookeeper, consul, got "zk"$/],
    ['a ttl below the backend minimum', ['--backend', 'etcd', '--ttl', '1'], {}, /^ttl: 1 s is below the etcd backend's minimum of 2 s$/],
    ['an unknown flag', ['--bogus', 'x'], {}, /^unknown flag --bogus/],
    ['a flag without its value', ['--ttl'], {}, /^flag --ttl needs a value$/],
    ['a bad listen address', ['--http', 'localhost'], {}, /^http: must be HOST:PORT/],
    ['a bad endpoint', ['--backend', 'etcd', '--etcd-endpoints', 'ftp://x'], {}, /^etcd-endpoints: must be a URL/],
    ['a hook that needs a shell', ['--on-promote', 'promote | tee log'], {}, /^on-promote: commands run without a shell/],
    ['a bad election name', ['--election', '../etc'], {}, /^election: must be 1-128 letters/],
    ['a bad promote-failure action', ['--promote-failure', 'panic'], {}, /^promote-failure: must be resign or ignore$/],
    ['a bad value from the environment', [], { LEADERD_HOOK_TIMEOUT: '-1' }, /^hook-timeout: must be at least/],
    ['both admin token sources', ['--admin-token', 'aaaaaaaaaa', '--admin-token-file', '/dev/null'], {}, /^admin-token: give either/],
    ['a missing token file', ['--admin-token-file', '/nonexistent/token'], {}, /^admin-token-file: cannot read \/nonexistent\/token: ENOENT$/],
    ['a Consul check TTL not below the session TTL', ['--backend', 'consul', '--ttl', '10', '--consul-check-ttl', '10'], {}, /^consul-check-ttl: must be below ttl/],
    ['a Consul lock-delay above 60 s', ['--consul-lock-delay', '90'], {}, /^consul-lock-delay: must be at most 60$/],
    ['a bad ZooKeeper connect string', ['--zk-connect', 'zk1'], {}, /^zk-connect: must be host:port/],
    ['both ZooKeeper credential sources', ['--zk-auth', 'u:p', '--zk-auth-file', '/dev/null'], {}, /^zk-auth: give either/],
    ['a ZooKeeper renew deadline above half the ttl', ['--backend', 'zookeeper', '--ttl', '10', '--renew-deadline', '9'], {}, /^renew-deadline: must be at most half the ttl on ZooKeeper \(9 s > 5 s\)/],
    ['a renew deadline closer than 0.25 s to the lease', ['--ttl', '3', '--renew-deadline', '2.9'], {}, /^renew-deadline: must end at least 0.25 s before the ttl \(2.9 s > 2.75 s\)$/],
    ['a ttl longer than a timer can hold', ['--ttl', '1e9'], {}, /^ttl: must be at most 86400 \(a day\)$/],
    ['a ZooKeeper ttl too short for a margin after half of it', ['--backend', 'zookeeper', '--ttl', '1'], {}, /^ttl: 1 s is below the zookeeper backend's minimum of 1.5 s$/],
    ['a default Consul lock-delay beyond the 60 s Consul honours', ['--backend', 'consul', '--ttl', '300', '--consul-check-ttl', '100'], {}, /^renew-deadline: on Consul at most 59.75 s/],
    ['a fractional ttl on etcd, whose leases are whole seconds', ['--backend', 'etcd', '--ttl', '2.5'], {}, /^ttl: etcd leases are whole seconds, got 2.5$/],
    ['a short admin token from a flag', ['--admin-token', 'x'], {}, /^admin-token: must be at least 8 characters without spaces$/],
    ['a short admin token from the environment', [], { LEADERD_ADMIN_TOKEN: 'x' }, /^admin-token: must be at least 8 characters without spaces$/],
    ['an empty admin token', ['--admin-token', ''], {}, /^admin-token: must be at least 8 characters without spaces$/],
    ['a check that needs a shell', ['--check', 'pg_isready && echo ok'], {}, /^check: commands run without a shell/],
    ['a negative priority', ['--priority=-1'], {}, /^priority: must be at least 0$/],
    ['a value that looks like a flag', ['--priority', '-1'], {}, /^flag --priority: a value that starts with "-" must be written --priority=VALUE$/],
    ['a fractional priority', ['--priority', '1.5'], {}, /^priority: must be a whole number$/],
    ['a priority that is not a number', ['--priority', 'high'], {}, /^priority: must be a whole number$/],
    ['a negative max-lag', ['--check', 'true', '--max-lag=-5'], {}, /^max-lag: must be a whole number, at least 0$/],
    ['a max-lag in other units', ['--check', 'true', '--max-lag', '16MB'], {}, /^max-lag: must be a whole number, at least 0$/],
    ['a max-lag without a check to measure it', ['--max-lag', '100'], {}, /^max-lag: needs --check/],
    ['a check interval of zero', ['--check', 'true', '--check-interval', '0'], {}, /^check-interval: must be at least 0.01$/],
    ['a primary that would step down on one failed check', ['--check', 'true', '--ttl', '6', '--unhealthy-after', '2'], {}, /^unhealthy-after: must be longer than check-interval \(2 s <= 2 s\): one failed check is not an outage$/],
    ['a missing config file', ['--config', '/nonexistent.yaml'], {}, /^config: cannot read \/nonexistent.yaml: ENOENT$/],
  ];
  for (const [what, argv, env, message] of refused) {
    it(`refuses ${what}, naming the setting`, () => {
      expect(() => config(argv, env)).toThrow(message);
    });
  }

  it('refuses an unknown key, invalid YAML and a non-mapping in the config file', () => {
    expect(() => config(['--config', yamlFile('tll: 10\n')])).toThrow(/^config: unknown setting "tll"/);
    expect(() => config(['--config', yamlFile('ttl: [1\n')])).toThrow(/^config: .* is not valid YAML/);
    expect(() => config(['--config', yamlFile('- ttl\n')])).toThrow(/must hold a mapping/);
    expect(() => config(['--config', yamlFile('ttl: -5\n')])).toThrow(/^ttl: must be at least 1$/);
  });
});

describe('the leaderd command', () => {
  it('exits 2 with a one-line message naming the field, and no stack trace', async () => {
    const result = await runLeaderd(['--ttl', '3', '--renew-deadline', '5']);
    expect(result.code).toBe(2);
    expect(result.stderr).toBe('leaderd: invalid configuration: renew-deadline: must be below ttl (5 s >= 3 s)\n');
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

  it('--help lists every flag with its environment variable', async () => {
    const result = await runLeaderd(['--help']);
    expect(result.code).toBe(0);
    for (const name of Object.keys(OPTIONS)) {
      expect(result.stdout).toContain(`--${name} `);
      expect(result.stdout).toContain(envName(name));
    }
  });
});

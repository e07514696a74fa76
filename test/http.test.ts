import { writeFileSync } from 'node:fs';
import { connect } from 'node:net';
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import { newElection, scratchFile } from './conformance.js';
import { Sidecar } from './harness/sidecar.js';

let node: Sidecar;
const token = 'http-test-admin-token';

beforeAll(async () => {
  const tokenFile = scratchFile('token');
  writeFileSync(tokenFile, token);
  node = await Sidecar.start('http-node', [
    '--local-dir', scratchFile('dir'), '--election', newElection(), '--ttl', '2', '--admin-token-file', tokenFile,
  ]);
  await node.waitForRole('primary', 10000);
});
afterAll(() => Sidecar.killAll());

/** Everything the sidecar sends back for `request`, written raw, until it closes the connection. */
function exchange(request: string): Promise<string> {
  const { hostname, port } = new URL(node.url);
  return new Promise((resolve, reject) => {
    const socket = connect(Number(port), hostname, () => socket.write(request));
    let data = '';
    socket.on('data', (chunk) => (data += chunk));
    socket.on('close', () => resolve(data));
    socket.on('error', reject);
  });
}

describe('HTTP API: bad requests get JSON errors and never hurt the sidecar', () => {
  it('answers 404 with JSON for an unknown path', async () => {
    const response = await node.fetch('/nope');
    expect(response.status).toBe(404);
    expect(await response.json()).toEqual({ error: 'no such endpoint: /nope' });
  });

  it('answers 405 with JSON and an Allow header for a wrong method', async () => {
    const response = await node.fetch('/role', { method: 'DELETE' });
    expect(response.status).toBe(405);
    expect(response.headers.get('allow')).toBe('GET, HEAD, OPTIONS');
    expect((await response.json()).error).toMatch(/method not allowed/);
    expect((await node.fetch('/resign')).status).toBe(405);
  });

  it('answers 400 with JSON for a malformed body, and 413 for an oversized one', async () => {
    const post = (body: string) =>
      node.fetch('/resign', {
        method: 'POST',
        headers: { authorization: `Bearer ${token}`, 'content-type': 'application/json' },
        body,
      });
    const malformed = await post('{"holdOffSeconds": ');
    expect(malformed.status).toBe(400);
    expect(await malformed.json()).toEqual({ error: 'malformed JSON body' });
    const unknownField = await post('{"holdOff": 3}');
    expect(unknownField.status).toBe(400);
    expect((await unknownField.json()).error).toMatch(/invalid body/);
    const huge = await post(JSON.stringify({ pad: 'x'.repeat(100000) }));
    expect(huge.status).toBe(413);
    expect((await node.role()).role).toBe('primary');
  });

  it('survives garbage on the socket and keeps answering', async () => {
    const reply = await exchange('\x00\x01 NOT HTTP \r\n\r\n');
    expect(reply).toMatch(/^HTTP\/1\.1 400/);
    expect((await node.fetch('/healthz')).status).toBe(200);
  });

  it('streams the current state at once on /watch', async () => {
    const state = await node.waitForState(() => true, 5000);
    expect(state).toMatchObject({ id: 'http-node', role: 'primary', backend: { kind: 'local', connected: true } });
    expect(Date.parse(state.since)).not.toBeNaN();
  });

  it('answers a role path with a query string, a trailing slash or in capitals alike, and HEAD with the status alone', async () => {
    const answers = await Promise.all(['/role', '/role?probe=1', '/role/', '/ROLE'].map((path) => node.fetch(path)));
    for (const answer of answers) {
      expect(answer.status).toBe(200);
      expect(answer.headers.get('content-type')).toBe('application/json; charset=utf-8');
    }
    const bodies = await Promise.all(answers.map((a) => a.json()));
    for (const body of bodies) expect(body).toEqual(bodies[0]);

    // A primary is no replica: the 503 is the same whichever way the path is written.
    const refusals = await Promise.all(['/replica', '/replica/'].map((path) => node.fetch(path)));
    expect(refusals.map((r) => r.status)).toEqual([503, 503]);
    const [exact, slashed] = await Promise.all(refusals.map((r) => r.json()));
    expect(slashed).toEqual(exact);

    // fetch() never reads a body for HEAD, so look at the bytes.
    const [head, body] = (await exchange('HEAD /primary HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n')).split('\r\n\r\n');
    expect(head).toMatch(/^HTTP\/1\.1 200 /);
    expect(head).toMatch(/^content-length: [1-9]/im);
    expect(body).toBe('');
    expect((await node.fetch('/replica', { method: 'HEAD' })).status).toBe(503);
  });

  it('answers the leader-elector sidecar\'s GET / and the liveness probe', async () => {
    expect(await (await node.fetch('/')).json()).toEqual({ name: 'http-node' });
    expect(await (await node.fetch('/healthz')).json()).toEqual({ alive: true });
  });
});

/** A raw answer's status, its headers (lower-cased, without Date) and its body. */
function parseAnswer(raw: string) {
  const [head = '', ...rest] = raw.split('\r\n\r\n');
  const [statusLine = '', ...lines] = head.split('\r\n');
  const headers = Object.fromEntries(
    lines.map((line) => line.split(/: */, 2).map((part) => part.toLowerCase())).filter(([name]) => name !== 'date'),
  ) as Record<string, string>;
  return { status: statusLine.split(' ')[1], headers, body: rest.join('\r\n\r\n') };
}

const PROBES = ['/role', '/primary', '/leader', '/read-write', '/replica', '/read-only', '/readiness', '/health', '/healthz', '/liveness', '/'];

describe('HTTP API: probes as load balancers send them', () => {
  it('answers OPTIONS on every probe endpoint as GET, without the body (HAProxy\'s option httpchk)', async () => {
    // A trailing slash goes through the router rather than the table: it must answer alike.
    for (const path of [...PROBES.filter((p) => p !== '/'), '/primary/', '/replica?lag=0']) {
      const request = (method: string) => `${method} ${path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n`;
      const get = parseAnswer(await exchange(request('GET')));
      const options = parseAnswer(await exchange(request('OPTIONS')));
      expect(get.body, path).not.toBe('');
      expect(options, path).toEqual({ status: get.status, headers: { ...get.headers, 'content-length': '0' }, body: '' });
    }
  });

  it('refuses OPTIONS / (HAProxy\'s bare option httpchk): / answers 200 on every node, so every node would look like the primary', async () => {
    for (const target of ['/', '/?x=1']) {
      const answer = parseAnswer(await exchange(`OPTIONS ${target} HTTP/1.0\r\n\r\n`));
      expect(answer.status, target).toBe('405');
      expect(answer.headers.allow?.toUpperCase(), target).toBe('GET, HEAD');
    }
  });

  it('answers HAProxy\'s own check, OPTIONS over HTTP/1.0 without a Host, with the status alone', async () => {
    const answer = parseAnswer(await exchange('OPTIONS /primary HTTP/1.0\r\n\r\n'));
    expect(answer.status).toBe('200');
    expect(answer.body).toBe('');
  });

  it('answers Patroni\'s probe names on the primary: it leads, serves reads and writes, and is alive', async () => {
    const answers = await Promise.all(PROBES.map(async (path) => [path, (await node.fetch(path)).status] as const));
    expect(Object.fromEntries(answers)).toEqual({
      '/role': 200, '/primary': 200, '/leader': 200, '/read-write': 200, '/replica': 503, '/read-only': 200,
      '/readiness': 200, '/health': 200, '/healthz': 200, '/liveness': 200, '/': 200,
    });
    expect(await (await node.fetch('/liveness')).json()).toEqual({ alive: true });
    expect((await (await node.fetch('/read-write')).json()).role).toBe('primary');
    // A primary is 0 behind itself, so any lag holds it; a lag that is no number is refused everywhere.
    expect((await node.fetch('/read-only?lag=0')).status).toBe(200);
    for (const path of ['/read-only?lag=x', '/readiness?lag=-1', '/replica?lag=1.5']) {
      const refused = await node.fetch(path);
      expect(refused.status, path).toBe(400);
      expect(await refused.json()).toEqual({ error: 'lag: must be a whole number, at least 0' });
    }
  });

  it('answers them on replicas: /read-only follows the lag, /readiness the check and --max-lag, /health the check', async () => {
    const election = newElection();
    const dir = scratchFile('dir');
    const args = (...more: string[]) => ['--local-dir', dir, '--election', election, '--ttl', '2', ...more];
    const at = (position: number) => `echo '{"position": ${position}}'`;
    const leader = await Sidecar.start('probe-leader', args('--check', at(100)));
    await leader.waitForRole('primary', 10000);
    // Neither may ever lead: one fails its check, the other is beyond --max-lag.
    const [sick, behind] = await Promise.all([
      Sidecar.start('probe-sick', args('--check', '/bin/false')),
      Sidecar.start('probe-behind', args('--check', at(40), '--max-lag', '50')),
    ]);
    await Promise.all([sick, behind].map((r) => r.waitForState((s) => s.role === 'replica' && s.leader?.id === 'probe-leader', 10000)));
    await sick.waitForLog((l) => l.msg === 'check: unhealthy', 10000, 'a failed check');
    await vi.waitFor(async () => expect((await behind.role()).lag).toBe(60), { timeout: 10000, interval: 50 });

    const statuses = async (replica: Sidecar) =>
      Object.fromEntries(await Promise.all(PROBES.map(async (path) => [path, (await replica.fetch(path)).status] as const)));
    const replica = { '/role': 200, '/primary': 503, '/leader': 503, '/read-write': 503, '/replica': 200, '/read-only': 200, '/healthz': 200, '/liveness': 200, '/': 200 };
    expect(await statuses(sick)).toEqual({ ...replica, '/readiness': 503, '/health': 503 });
    expect(await statuses(behind)).toEqual({ ...replica, '/readiness': 503, '/health': 200 });
    const status = async (replica: Sidecar, path: string) => (await replica.fetch(path)).status;
    expect(await status(behind, '/readiness?lag=60')).toBe(200);
    expect(await status(behind, '/read-only?lag=60')).toBe(200);
    expect(await status(behind, '/read-only?lag=59')).toBe(503);
    expect(await status(sick, '/readiness?lag=1000')).toBe(503);
  });
});

describe('HTTP API: answers that used to hang or drop input', () => {
  it('answers HEAD /watch with the stream\'s headers and no stream', async () => {
    const response = await node.fetch('/watch', { method: 'HEAD' });
    expect(response.status).toBe(200);
    expect(response.headers.get('content-type')).toBe('text/event-stream');
  });

  it('answers 415 to an admin body that is not JSON (curl\'s default form encoding), naming the problem', async () => {
    const before = await node.role();
    for (const path of ['/resign', '/switchover']) {
      const response = await node.fetch(path, {
        method: 'POST',
        headers: { authorization: `Bearer ${token}`, 'content-type': 'application/x-www-form-urlencoded' },
        body: 'holdOffSeconds=5',
      });
      expect(response.status, path).toBe(415);
      expect(await response.json()).toEqual({
        error: 'the body must be JSON: send content-type: application/json (got application/x-www-form-urlencoded)',
      });
    }
    expect(await node.role()).toMatchObject({ role: 'primary', fencingToken: before.fencingToken });
  });

  it('logs a replica\'s leader change: one line naming the new leader and its token', async () => {
    const tokenFile = scratchFile('token');
    writeFileSync(tokenFile, token);
    const dir = scratchFile('dir');
    const election = newElection();
    const args = (...more: string[]) => ['--local-dir', dir, '--election', election, '--ttl', '2', ...more];
    const leader = await Sidecar.start('change-leader', args('--admin-token-file', tokenFile));
    const first = await leader.waitForRole('primary', 10000);
    // A failing check never stands: the replica stays one while the leader starts a new term.
    const replica = await Sidecar.start('change-replica', args('--check', '/bin/false'));
    await replica.waitForState((s) => s.role === 'replica' && s.leader?.id === 'change-leader', 10000);
    // No body and no content type, as `curl -X POST` sends: nothing to refuse.
    const resigned = await leader.fetch('/resign', { method: 'POST', headers: { authorization: `Bearer ${token}` } });
    expect(resigned.status).toBe(200);
    const next = await leader.waitForState((s) => s.role === 'primary' && s.fencingToken! > first.fencingToken!, 10000, 'a new term');
    const line = await replica.waitForLog((l) => l.msg === 'leader: change-leader' && l.fencingToken === next.fencingToken, 5000, 'the change');
    expect(line).toMatchObject({ level: 'info', role: 'replica', leader: 'change-leader', fencingToken: next.fencingToken });
    expect(replica.logs.filter((l) => l.fencingToken === next.fencingToken && l.leader === 'change-leader')).toHaveLength(1);
  });
});

describe('HTTP API: the admin endpoint', () => {
  it('accepts the bearer scheme in any case, as HTTP allows', async () => {
    const state = await node.role();
    const response = await node.fetch('/resign', {
      method: 'POST',
      headers: { authorization: `bearer ${token}`, 'content-type': 'application/json' },
      body: '{"holdOffSeconds": 0}',
    });
    expect(response.status).toBe(200);
    const after = await node.waitForState((s) => s.role === 'primary' && s.fencingToken! > state.fencingToken!, 10000, 'a new term');
    expect(after.id).toBe('http-node');
  });

  it('answers 503 to POST /resign during shutdown, when there is nothing left to resign', async () => {
    const tokenFile = scratchFile('token');
    writeFileSync(tokenFile, token);
    const demoted = scratchFile('demote-started');
    const stopping = await Sidecar.start('http-stopping', [
      '--local-dir', scratchFile('dir'), '--election', newElection(), '--ttl', '2', '--admin-token-file', tokenFile,
      // A slow demote keeps the shutdown going long enough to ask during it.
      '--on-demote', `/bin/sh -c "touch ${demoted}; sleep 2"`,
    ]);
    await stopping.waitForRole('primary', 10000);
    stopping.signal('SIGTERM');
    await stopping.waitForLog((l) => l.msg === 'shutting down', 5000, 'shutdown');
    const response = await stopping.fetch('/resign', {
      method: 'POST',
      headers: { authorization: `Bearer ${token}`, 'content-type': 'application/json' },
      body: '{}',
    });
    expect(response.status).toBe(503);
    expect(await response.json()).toEqual({ error: 'shutting down: there is nothing to resign' });
    expect(await stopping.exited).toEqual({ code: 0, signal: null });
  });
});

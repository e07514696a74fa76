/**
 * deploy/systemd/leaderd.service checked offline: systemd-analyze verify (syntax, known keys,
 * the program ExecStart runs) and the choices that keep a stop clean: node running leaderd's bin
 * directly, SIGTERM to leaderd alone, and a stop timeout above what a demote and release can take.
 * No systemd runs on the test machines, so the unit is not started here.
 */
import { execFile } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { describe, expect, it } from 'vitest';
import { BACKENDS } from '../adapters/index.js';
import { parseCommand } from '../src/config.js';
import { SYSTEMD_ANALYZE } from './harness/systemd.js';

const UNIT = fileURLToPath(new URL('../deploy/systemd/leaderd.service', import.meta.url));
const run = promisify(execFile);

/** The unit's [Service] settings (each key's values, in order). */
function serviceSettings(): Map<string, string[]> {
  const settings = new Map<string, string[]>();
  let section = '';
  for (const raw of readFileSync(UNIT, 'utf8').split('\n')) {
    const line = raw.trim();
    if (line === '' || line.startsWith('#')) continue;
    if (line.startsWith('[')) section = line;
    else if (section === '[Service]') {
      const [key, ...value] = line.split('=');
      settings.set(key!, [...(settings.get(key!) ?? []), value.join('=')]);
    }
  }
  return settings;
}

describe('systemd unit', () => {
  it('passes systemd-analyze verify without a warning', async () => {
    const { stdout, stderr } = await run(SYSTEMD_ANALYZE, ['verify', UNIT]);
    expect({ stdout, stderr }).toEqual({ stdout: '', stderr: '' });
  });

  it('runs leaderd under node directly, and stops it with SIGTERM to leaderd alone', () => {
    const service = serviceSettings();
    const [node, bin, ...args] = service.get('ExecStart')![0]!.split(/\s+/);
    expect(node).toMatch(/^\/\S+\/node$/);
    expect(bin).toMatch(/\/bin\/leaderd\.js$/);
    expect(args).not.toContain('npx');
    expect(service.get('Type')).toEqual(['exec']);
    expect(service.get('KillSignal')).toEqual(['SIGTERM']);
    expect(service.get('KillMode')).toEqual(['mixed']);
    expect(service.get('RestartPreventExitStatus')).toEqual(['2']);
  });

  it("keeps the local backend's state in its StateDirectory", () => {
    const service = serviceSettings();
    expect(service.get('StateDirectory')).toEqual(['leaderd']);
    expect(service.get('Environment')).toContain('LEADERD_LOCAL_DIR=%S/leaderd');
  });

  it('waits longer than a demote hook and the release can take with the default settings', () => {
    const command = parseCommand([], {}, BACKENDS);
    if (command.kind !== 'run') throw new Error(command.kind);
    const { hooks, leaseSeconds } = command.config;
    // A hook is SIGKILLed 5 s after its timeout; the loop's last request and the release each
    // take at most a third of the lease.
    const shutdownSeconds = hooks.timeoutSeconds + 5 + (2 * leaseSeconds) / 3;
    const timeoutStopSeconds = Number(/^(\d+)s?$/.exec(serviceSettings().get('TimeoutStopSec')![0]!)?.[1]);
    expect(timeoutStopSeconds).toBeGreaterThan(shutdownSeconds + 5);
  });
});

/**
 * The check: what leaderd knows of its application. A command run without a shell, like the
 * hooks, whose exit status says whether the application is healthy and whose output may say how
 * far its copy of the data has come:
 *
 *   exit 0, no output                       healthy, eligible, position unknown
 *   exit 0, {"position": 1234}              healthy, eligible, at 1234
 *   exit 0, {"position": "98765432109876543210", "eligible": false}
 *   exit non-zero, timed out, or any other output: unhealthy, with the reason
 *
 * It is told the same facts as a hook (LEADERD_ROLE, LEADERD_LEADER_ADDRESS, ...) and
 * LEADERD_CHECK=1, so one script can be both.
 */
import { z } from 'zod';
import type { CheckResult } from './cluster.js';
import { inheritedEnvironment, runCommand } from './command.js';
import { errorMessage } from './elector.js';
import { hookEnvironment, type HookFacts } from './hooks.js';
import type { Logger } from './log.js';

/** More output than this is not the one JSON object of the contract. */
const MAX_OUTPUT_BYTES = 4096;
/** Grace between SIGTERM and SIGKILL for a check that overran: checks are meant to be quick. */
const KILL_GRACE_MS = 1000;

const output = z
  .object({
    position: z.union([z.number().int().nonnegative().max(Number.MAX_SAFE_INTEGER), z.string().regex(/^(0|[1-9][0-9]{0,77})$/)]).optional(),
    eligible: z.boolean().optional(),
  })
  .strict();

export interface CheckRun {
  readonly argv: readonly string[];
  readonly timeoutMs: number;
  readonly facts: Omit<HookFacts, 'event'>;
  readonly log: Logger;
  readonly cancel?: AbortSignal;
}

/** Runs the check once; never rejects: a check that cannot run is an unhealthy application. */
export async function runCheck({ argv, timeoutMs, facts, log, cancel }: CheckRun): Promise<CheckResult> {
  const { LEADERD_EVENT: _event, ...environment } = hookEnvironment({ ...facts, event: 'leader-change' });
  let stdout = '';
  let overflow = false;
  let lastError = '';
  try {
    await runCommand(argv, {
      env: { ...inheritedEnvironment(), ...environment, LEADERD_CHECK: '1' },
      timeoutMs,
      killGraceMs: KILL_GRACE_MS,
      cancel,
      line: (stream, line) => {
        if (stream === 'stderr') {
          lastError = line.slice(0, 200);
          log.debug({ stream, line }, 'check output');
          return;
        }
        if (stdout.length + line.length > MAX_OUTPUT_BYTES) overflow = true;
        else stdout += `${line}\n`;
      },
    });
  } catch (error) {
    return unhealthy(`${errorMessage(error)}${lastError ? ` (${lastError})` : ''}`);
  }
  if (overflow) return unhealthy(`its output is longer than ${MAX_OUTPUT_BYTES} bytes`);
  const text = stdout.trim();
  if (text === '') return { healthy: true, eligible: true, position: null, reason: null };
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch {
    return unhealthy(`its output is not JSON: ${JSON.stringify(text.slice(0, 80))}`);
  }
  const result = output.safeParse(value);
  if (!result.success) {
    const issue = result.error.issues[0];
    const field = issue?.path.length ? `"${issue.path.join('.')}"` : 'the output';
    return unhealthy(`${field} is not what the check may print: ${issue?.message ?? 'invalid'} (see --check in docs/replication.md)`);
  }
  const { position, eligible = true } = result.data;
  return { healthy: true, eligible, position: position === undefined ? null : BigInt(position), reason: null };
}

function unhealthy(reason: string): CheckResult {
  return { healthy: false, eligible: false, position: null, reason };
}

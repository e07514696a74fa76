/**
 * The chaos suite, short version: every fault once, on every backend (on a 3-server cluster; the
 * local backend on one host), each against three sidecars whose checks report moving positions.
 * The long, randomised version is `npm run chaos`, on one server or a cluster. The one fault a
 * single server adds, the whole coordination service stopped, is also in every backend's
 * conformance suite ("server stopped"); the short version leaves the single-server worlds out to
 * keep CI within its time budget.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { serverCount, startDeployment, type BackendName, type Topology } from './chaos/deployments.js';
import { FAULTS, runTrial, seededRandom } from './chaos/faults.js';
import { ChaosWorld } from './chaos/world.js';

const WORLDS: Array<[BackendName, Topology]> = [
  ['local', 'single'],
  ['etcd', 'cluster'],
  ['zookeeper', 'cluster'],
  ['consul', 'cluster'],
];

for (const [backend, topology] of WORLDS) {
  describe(`chaos: ${backend}, ${topology === 'single' ? 'one server' : '3-server cluster'}, three sidecars`, () => {
    let world: ChaosWorld;
    const rng = seededRandom(1);

    beforeAll(async () => {
      world = await ChaosWorld.start(await startDeployment(backend, topology));
      const first = await world.settle(30000);
      expect(first.lost).toEqual([]);
    }, 120000);
    afterAll(async () => {
      await world?.stop();
    }, 60000);

    for (const fault of FAULTS.filter((f) => f.applies(serverCount(backend, topology)))) {
      it(`${fault.kind}, ${fault.description}: never two primaries, tokens grow, a primary is back within the bound`, async () => {
        const trial = await runTrial(world, fault, rng);
        // Where the nodes' logs and the hook log went, for a post-mortem of a failed trial.
        const logs = trial.violations.length + trial.lost.length + trial.problems.length > 0 ? `the nodes' logs: ${world.dumpLogs()}` : '';
        if (trial.notes.length) console.warn(`${backend} ${topology} ${fault.kind}: ${trial.notes.join('; ')} (the nodes' logs: ${world.dumpLogs()})`);
        expect(trial.violations, logs).toEqual([]);
        expect(trial.lost, logs).toEqual([]);
        expect(trial.problems, logs).toEqual([]);
        expect(trial.recoveryMs).toBeLessThan(trial.boundMs);
      }, 180000);
    }
  });
}

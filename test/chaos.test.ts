/**
 * The chaos suite, short version: every fault once, on every backend, on one server and on a
 * 3-server cluster, each against three sidecars. The long, randomised version is `npm run chaos`.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { serverCount, startDeployment, type BackendName, type Topology } from './chaos/deployments.js';
import { FAULTS, runTrial, seededRandom } from './chaos/faults.js';
import { ChaosWorld } from './chaos/world.js';

const WORLDS: Array<[BackendName, Topology]> = [
  ['local', 'single'],
  ['etcd', 'single'],
  ['etcd', 'cluster'],
  ['zookeeper', 'single'],
  ['zookeeper', 'cluster'],
  ['consul', 'single'],
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
      it(`${fault.description}: never two primaries, tokens grow, a primary is back within the bound`, async () => {
        const trial = await runTrial(world, fault, rng);
        expect(trial.violations).toEqual([]);
        expect(trial.lost).toEqual([]);
        expect(trial.recoveryMs).toBeLessThan(trial.boundMs);
      }, 180000);
    }
  });
}

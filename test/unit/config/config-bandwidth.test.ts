// The bandwidth flags (--max-bps, --user-max-bps, --bps-capacity): they reach the config
// in bytes per second, and a limit too small for any full-size datagram is refused
// (the token bucket holds one second of it, turn/bandwidth.ts).

import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { buildConfig } from '../../../src/config/index.js';
import { BASE, refused } from '../../helpers/config.js';

describe('config: bandwidth limits', () => {
  it('reads the three limits, 0 (none) by default', () => {
    assert.deepEqual(buildConfig(BASE).bandwidth, { maxBps: 0, userMaxBps: 0, bpsCapacity: 0 });
    const config = buildConfig({ ...BASE, 'max-bps': 125_000, 'user-max-bps': 250_000, 'bps-capacity': 12_500_000 });
    assert.deepEqual(config.bandwidth, { maxBps: 125_000, userMaxBps: 250_000, bpsCapacity: 12_500_000 });
  });

  for (const flag of ['max-bps', 'user-max-bps', 'bps-capacity'] as const) {
    it(`refuses --${flag} from 1 to 1499, naming the flag, the value and what is allowed`, () => {
      const err = refused({ [flag]: 1000 });
      assert.equal(err.flag, flag);
      assert.match(err.message, new RegExp(`--${flag}`));
      assert.match(err.message, /1000/);
      assert.match(err.message, /at least 1500/);
      assert.equal(
        buildConfig({ ...BASE, [flag]: 1500 }).bandwidth[flag === 'max-bps' ? 'maxBps' : flag === 'user-max-bps' ? 'userMaxBps' : 'bpsCapacity'],
        1500,
      );
    });
  }
});

// --region (docs/scaling.md "Regions"): a name of [a-z0-9-]{1,32}, only with a shared
// store, and the store's key prefix it gives (anyturn:region:NAME:).

import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { buildConfig } from '../../../src/config/index.js';
import { DEFAULT_KEY_PREFIX, regionKeyPrefix } from '../../../src/store/redis/keys.js';
import { BASE, refused } from '../../helpers/config.js';

const STORE = { 'redis-url': 'redis://127.0.0.1:6379', 'mesh-address': '127.0.0.1:7000', 'cluster-secret': 'a-cluster-secret-of-16+' };

describe('config: --region', () => {
  it('reaches the cluster config as given; absent without the flag', () => {
    assert.equal(buildConfig({ ...BASE, ...STORE, region: 'eu-west-1' }).cluster?.region, 'eu-west-1');
    assert.equal(buildConfig({ ...BASE, ...STORE, region: 'x'.repeat(32) }).cluster?.region, 'x'.repeat(32));
    assert.equal(buildConfig({ ...BASE, ...STORE }).cluster?.region, undefined);
    assert.ok(!('region' in buildConfig({ ...BASE, ...STORE }).cluster!), 'no region key at all: configs of old compare equal');
  });

  for (const bad of ['EU', 'eu_west', 'eu west', 'eu:west', '', 'x'.repeat(33), 'région']) {
    it(`refuses ${JSON.stringify(bad)}, naming the flag, the value and what is allowed`, () => {
      const err = refused({ ...STORE, region: bad });
      assert.equal(err.flag, 'region');
      assert.ok(err.message.includes('--region'), err.message);
      assert.ok(err.message.includes(JSON.stringify(bad)), err.message);
      assert.match(err.message, /1 to 32 lowercase letters, digits and hyphens/);
    });
  }

  it('is refused without a shared store', () => {
    const err = refused({ region: 'eu-west' });
    assert.equal(err.flag, 'region');
    assert.match(err.message, /only with a shared store/);
  });

  it('gives the store its own key prefix, which no key without a region starts with', () => {
    assert.equal(regionKeyPrefix(undefined), DEFAULT_KEY_PREFIX);
    assert.equal(regionKeyPrefix('eu-west'), 'anyturn:region:eu-west:');
    assert.notEqual(regionKeyPrefix('a'), regionKeyPrefix('ab').slice(0, regionKeyPrefix('a').length), 'a region is never a prefix of another');
  });
});

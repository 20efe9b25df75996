// The per-user share rule of turn/bandwidth.ts, on numbers.

import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { RateBucket, userShare } from '../../../src/turn/bandwidth.js';

describe('userShare', () => {
  it('alone: the whole limit', () => {
    assert.equal(userShare(10_000, 8000, 0, 0), 10_000);
    assert.equal(userShare(10_000, 0, 0, 0), 10_000);
  });
  it('everyone together under the limit: the limit less what the others use', () => {
    assert.equal(userShare(10_000, 2000, 3000, 1), 7000);
    assert.equal(userShare(10_000, 2000, 6000, 1), 4000);
  });
  it('over it: in proportion to demand, the shares adding up to the limit', () => {
    assert.equal(userShare(10_000, 30_000, 10_000, 1), 7500);
    assert.equal(userShare(10_000, 10_000, 30_000, 1), 2500);
    assert.equal(userShare(10_000, 10_000, 30_000, 3), 2500);
  });
  it('quiet here: what the others leave, never under the limit over the nodes with traffic, so a new flow is not starved', () => {
    assert.equal(userShare(10_000, 0, 20_000, 1), 5000);
    assert.equal(userShare(10_000, 0, 20_000, 3), 2500);
    assert.equal(userShare(10_000, 0, 3000, 1), 7000);
  });
});

describe('RateBucket', () => {
  it('starts full with one second, refills at the rate up to it, and a smaller rate cuts the tokens', () => {
    const b = new RateBucket(10_000);
    assert.equal(b.has(10_000, 1000), true);
    b.take(10_000);
    assert.equal(b.has(1, 1000), false);
    assert.equal(b.has(2500, 1250), true);
    assert.equal(b.has(2501, 1250), false);
    assert.equal(b.has(10_000, 60_000), true);
    assert.equal(b.has(10_001, 60_000), false, 'never more than one second');
    b.setRate(4000);
    assert.equal(b.has(4001, 60_000), false);
    assert.equal(b.has(4000, 60_000), true);
  });
});

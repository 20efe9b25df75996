// CoarseTime: the reading the engine's per-packet expiry checks use with the system
// clock. It follows its source within a timer period, and its timer stops when nobody reads.

import { describe, it } from 'node:test';
import assert from 'node:assert/strict';

import { type Clock, CoarseTime, ManualClock, systemClock } from '../../../src/turn/clock.js';

/** Waits (without a fixed sleep) until `done()` holds; fails after `timeoutMs`. */
async function waitFor(done: () => boolean, timeoutMs = 2000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!done()) {
    if (Date.now() > deadline) throw new Error('timed out');
    await new Promise<void>((resolve) => setTimeout(resolve, 1));
  }
}

describe('CoarseTime', () => {
  it('reads its source on first use, then once per period while it is read', async () => {
    const source = new ManualClock(1000);
    let reads = 0;
    const coarse = new CoarseTime(2, () => {
      reads++;
      return source.now();
    });
    assert.equal(coarse.running, false, 'no timer before the first read');
    assert.equal(coarse.now(), 1000);
    assert.equal(coarse.running, true);
    source.advance(5);
    assert.equal(coarse.now(), 1000, 'between refreshes: the last reading, without reading the source');
    assert.equal(reads, 1);
    await waitFor(() => coarse.now() === 1005);
    coarse.stop();
    assert.equal(coarse.running, false);
  });

  it('stops its timer when nobody reads it, and starts afresh on the next read', async () => {
    const source = new ManualClock(0);
    const coarse = new CoarseTime(1, () => source.now());
    coarse.now();
    await waitFor(() => !coarse.running);
    source.advance(60_000);
    assert.equal(coarse.now(), 60_000, 'a fresh reading, not the one from before the pause');
    assert.equal(coarse.running, true);
    coarse.stop();
  });

  it('lags the system clock by at most about a period', async () => {
    const reading = systemClock.nowCoarse?.();
    assert.ok(reading !== undefined, 'the system clock has a coarse reading');
    const now = Date.now();
    assert.ok(reading <= now && now - reading < 1000, `${reading} vs ${now}`);
  });

  it('is absent from ManualClock, so engine tests stay exact', () => {
    const clock: Clock = new ManualClock();
    assert.equal(clock.nowCoarse, undefined);
  });
});

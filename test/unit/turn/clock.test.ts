// CoarseTime: the reading the engine's per-packet expiry checks use with the system
// clock. It follows its source within a timer period, and its timer stops when nobody reads.

import { describe, it } from 'node:test';
import assert from 'node:assert/strict';

import { COARSE_CLOCK_MS, type Clock, CoarseTime, ManualClock, systemClock } from '../../../src/turn/clock.js';

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

  // With setInterval mocked, not against the real clock's speed: the reading is Date.now()
  // as of the first read or the last refresh (bracketed by Date.now() before and after),
  // and it is refreshed exactly when a COARSE_CLOCK_MS period has passed.
  it('the system clock reads Date.now() through a CoarseTime of COARSE_CLOCK_MS', (t) => {
    t.mock.timers.enable({ apis: ['setInterval'] });
    const read = (): number => {
      const reading = systemClock.nowCoarse?.();
      assert.ok(reading !== undefined, 'the system clock has a coarse reading');
      return reading;
    };
    const bracket = (f: () => void): [number, number] => {
      const before = Date.now();
      f();
      return [before, Date.now()];
    };
    let first = 0;
    const [b1, a1] = bracket(() => (first = read()));
    assert.ok(b1 <= first && first <= a1, `first read ${first} is Date.now() then: [${b1}, ${a1}]`);
    t.mock.timers.tick(COARSE_CLOCK_MS - 1);
    assert.equal(read(), first, 'within a period: the same reading');
    const [b2, a2] = bracket(() => t.mock.timers.tick(1));
    const second = read();
    assert.ok(b2 <= second && second <= a2, `after one period ${second} is Date.now() at the refresh: [${b2}, ${a2}]`);
    t.mock.timers.tick(2 * COARSE_CLOCK_MS); // unread: its timer stops before the mock is reset
  });

  it('is absent from ManualClock, so engine tests stay exact', () => {
    const clock: Clock = new ManualClock();
    assert.equal(clock.nowCoarse, undefined);
  });
});

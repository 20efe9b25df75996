// The per-sender anti-replay window of mesh frames (cluster/mesh.ts): every number
// accepted once, reordering tolerated within REPLAY_WINDOW, anything older refused.

import { describe, it } from 'node:test';
import assert from 'node:assert/strict';

import { REPLAY_WINDOW, ReplayWindow } from '../../../src/cluster/mesh.js';

/** Sequence numbers as senders use them: microseconds since the epoch at start, then +1. */
const BASE = 1_700_000_000_000_000;

function accepts(w: ReplayWindow, seq: number): boolean {
  if (w.isReplay(seq)) return false;
  w.accept(seq, 0);
  return true;
}

describe('ReplayWindow', () => {
  it('accepts each number once, in order or reordered within the window', () => {
    const w = new ReplayWindow(Buffer.alloc(4));
    assert.equal(accepts(w, BASE + 5), true, 'a first number is taken, whatever it is');
    assert.equal(accepts(w, BASE + 5), false);
    assert.equal(accepts(w, BASE + 7), true);
    assert.equal(accepts(w, BASE + 6), true, 'late but within the window');
    assert.equal(accepts(w, BASE + 6), false);
    assert.equal(accepts(w, BASE + 4), true, 'below the first number seen, still within the window');
    assert.equal(accepts(w, BASE + 4), false);
  });

  it('refuses a number REPLAY_WINDOW or more behind the highest, takes one just inside', () => {
    const w = new ReplayWindow(Buffer.alloc(4));
    assert.equal(accepts(w, BASE + REPLAY_WINDOW), true);
    assert.equal(accepts(w, BASE), false, 'exactly REPLAY_WINDOW behind');
    assert.equal(accepts(w, BASE + 1), true, 'REPLAY_WINDOW - 1 behind');
    assert.equal(accepts(w, BASE + 1), false);
  });

  it('forgets nothing it must remember as the window slides, bit by bit and in jumps', () => {
    const w = new ReplayWindow(Buffer.alloc(4));
    // Every other number over three windows: each is taken once, the skipped ones stay open while in the window.
    for (let i = 0; i < 3 * REPLAY_WINDOW; i += 2) assert.equal(accepts(w, BASE + i), true, `${i}`);
    const top = BASE + 3 * REPLAY_WINDOW - 2;
    for (let i = 1; i < REPLAY_WINDOW; i++) {
      const seq = top - i;
      // Slots reused from two windows ago must not look taken, nor the taken ones free.
      assert.equal(w.isReplay(seq), i % 2 === 0, `${i} behind the top`);
    }
    // Numbers skipped over take the slots of ones that just left the window: they must be free.
    const full = new ReplayWindow(Buffer.alloc(4));
    for (let i = 0; i < REPLAY_WINDOW; i++) assert.equal(accepts(full, BASE + i), true);
    assert.equal(accepts(full, BASE + REPLAY_WINDOW + REPLAY_WINDOW / 2), true);
    for (let i = REPLAY_WINDOW / 2 + 1; i < REPLAY_WINDOW; i++) assert.equal(full.isReplay(BASE + i), true, `${i}, still in the window`);
    for (let i = REPLAY_WINDOW; i < REPLAY_WINDOW + REPLAY_WINDOW / 2; i++) assert.equal(accepts(full, BASE + i), true, `${i}, skipped over`);
    // A jump of more than a window clears it; the old top is now far behind.
    assert.equal(accepts(w, top + 5 * REPLAY_WINDOW), true);
    assert.equal(accepts(w, top), false);
    assert.equal(accepts(w, top + 5 * REPLAY_WINDOW - 1), true);
    // A jump of less than a window keeps what is still inside it.
    assert.equal(accepts(w, top + 5 * REPLAY_WINDOW + 100), true);
    assert.equal(w.isReplay(top + 5 * REPLAY_WINDOW), true);
    assert.equal(w.isReplay(top + 5 * REPLAY_WINDOW - 1), true);
    assert.equal(w.isReplay(top + 5 * REPLAY_WINDOW + 50), false);
  });
});

// The soak's flatness rule (test/reliability/flatness.ts): a V8 heap sawtooth whose
// floors stay put is flat wherever its collections fall; one whose floors climb is not.

import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { type NodeSeries, collectionFloors, flatness } from '../../reliability/flatness.js';

/** A 60-sample node: heap used climbs 0.4 MiB a sample from `floor(k)` and drops at each index in `gcs`. */
function node(gcs: readonly number[], floor: (k: number) => number, rss = 70): NodeSeries {
  const heap: number[] = [];
  let k = 0;
  let h = floor(0);
  for (let i = 0; i < 60; i++) {
    if (gcs.includes(i)) h = floor(++k);
    else if (i > 0) h += 0.4;
    heap.push(h);
  }
  return { rssMb: heap.map(() => rss), heapUsedMb: heap, heapTotalMb: heap.map(() => 20), fds: heap.map(() => 62) };
}

const byName = (f: ReturnType<typeof flatness>, what: string) => {
  const x = f.find((e) => e.what === what);
  assert.ok(x, what);
  return x;
};

describe('soak flatness rule', () => {
  it('finds the collections of a sawtooth', () => {
    assert.deepEqual(collectionFloors([13, 14, 15, 16, 17, 13.2, 14]), [5]);
    assert.deepEqual(collectionFloors([13, 14, 15, 14.5, 16]), []);
  });

  it('a sawtooth with a steady floor is flat even when its one collection after warm-up falls in the middle third', () => {
    // The shape N2 had in the hour of 2026-12-05: the last third is all rising edge.
    const f = flatness({ N2: node([12, 27], () => 12) });
    const heap = byName(f, 'N2 heap_used_mb');
    assert.equal(heap.judged, false);
    assert.equal(heap.ok, true);
    assert.ok(f.every((e) => e.ok));
  });

  it('a sawtooth with steady floors in both thirds is judged and flat', () => {
    const heap = byName(flatness({ N1: node([13, 32, 52], () => 13.4) }), 'N1 heap_used_mb');
    assert.deepEqual([heap.judged, heap.ok, heap.middle, heap.last], [true, true, 13.4, 13.4]);
  });

  it('floors that climb more than 10 % fail, whatever the means say', () => {
    // Floors 13, 14, 15, 16: +14 % from the first floor after warm-up to the last.
    const heap = byName(flatness({ N1: node([13, 25, 37, 49], (k) => 12 + k) }), 'N1 heap_used_mb');
    assert.equal(heap.judged, true);
    assert.equal(heap.ok, false);
  });

  it('RSS, heap total and fds are judged by their means', () => {
    const s = node([13, 32, 52], () => 13);
    const leaking: NodeSeries = { ...s, rssMb: s.rssMb.map((_, i) => 70 + i) };
    const f = flatness({ N1: leaking });
    assert.equal(byName(f, 'N1 rss_mb').ok, false);
    assert.equal(byName(f, 'N1 fds').ok, true);
    assert.equal(byName(f, 'N1 heap_total_mb').ok, true);
  });
});

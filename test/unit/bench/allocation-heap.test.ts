// What one live allocation keeps on the heap, by kind of object (docs/scaling.md, "At
// scale"): the heap bench's node (bench/allocation-heap/node.ts: the scale node's
// configuration, real Allocate and CreatePermission requests, shared relay sockets on
// 127.0.0.1-3 where nothing is sent) makes allocations between two heap snapshots, and the
// growth per allocation (bench/allocation-heap/breakdown.ts) must hold none of what was
// cut: no Map, Set, promise or typed array of its own, no closure beside the relay
// handler, the store key as one flat string. Counts, not bytes: they do not depend on V8's
// object sizes.

import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import v8 from 'node:v8';

import { type BreakdownRow, type HeapSnapshotJson, breakdown, summarize } from '../../../bench/allocation-heap/breakdown.js';
import { startHeapNode } from '../../../bench/allocation-heap/node.js';

const ALLOCATIONS = 500;
const WARM_UP = 300;

function writeSnapshot(name: string): string {
  return v8.writeHeapSnapshot(join(tmpdir(), `allocation-heap-${process.pid}-${name}.heapsnapshot`));
}

/** Read once both are written: what reading one keeps (its summary) is in neither. */
function readSnapshot(file: string): ReturnType<typeof summarize> {
  try {
    return summarize(JSON.parse(readFileSync(file, 'utf8')) as HeapSnapshotJson);
  } finally {
    rmSync(file, { force: true });
  }
}

function countOf(rows: readonly BreakdownRow[], group: string): number {
  return rows.find((r) => r.group === group)?.countPerAllocation ?? 0;
}

describe('the heap of one live allocation', () => {
  it('holds no map, set, promise, typed array or extra closure of its own, and its key as one string', async () => {
    const node = await startHeapNode();
    try {
      // Allocations first, so that one-off costs (the code they compile, pools) are in the first snapshot.
      await node.driver.ramp(ALLOCATIONS, WARM_UP);
      const before = writeSnapshot('before');
      await node.driver.ramp(0, ALLOCATIONS);
      assert.equal(node.engine.allocations, WARM_UP + ALLOCATIONS);
      const after = writeSnapshot('after');
      const rows = breakdown(readSnapshot(before), readSnapshot(after), ALLOCATIONS);
      const per = (group: string): number => countOf(rows, group);
      assert.ok(per('Allocation') > 0.99 && per('Allocation') < 1.01, `one Allocation each (${per('Allocation')})`);
      // Their permission index holds the one permission in a field (peer-permissions.ts); no
      // channel: the shared empty slots and set; their writes done: the shared settled promise.
      for (const group of ['Map', 'Set', 'Array', 'Promise']) assert.ok(per(group) < 0.1, `${group}: ${per(group)} per allocation`);
      // The Allocate response in a shared slab (kept-responses.ts), the IPv4 permission's
      // empty IPv6 address shared.
      for (const group of ['ArrayBuffer', 'Uint8Array', 'Buffer']) assert.ok(per(group) < 0.1, `${group}: ${per(group)} per allocation`);
      // The relay socket closes through its shared address (shared-relay.ts), not a closure of its own.
      assert.ok(per('(closure) ') < 0.1, `anonymous closures: ${per('(closure) ')} per allocation`);
      assert.ok(per('(closure) onPacket') < 1.1, `relay handlers: ${per('(closure) onPacket')} per allocation`);
      // The store's index holds the allocation itself, not an object per entry (table.ts).
      assert.ok(per('Object') < 0.5, `plain objects: ${per('Object')} per allocation`);
      // Key, client address, username, peer address: no tree of concatenations (store/types.ts fiveTupleKey).
      assert.ok(per('(string)') < 4.5, `strings: ${per('(string)')} per allocation`);
    } finally {
      await node.close();
    }
  });
});

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
import { PerformanceObserver, performance } from 'node:perf_hooks';
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
  for (const portsPerAddress of [5000, 1]) {
    it(`holds no map, set, promise, typed array or extra closure of its own, and its key as one string (${portsPerAddress === 1 ? 'one allocation per client address' : `${portsPerAddress} client ports per address`})`, async () => {
      const node = await startHeapNode({ portsPerAddress });
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
        // One more where every client has its own address: that address's string.
        const strings = portsPerAddress === 1 ? 5.5 : 4.5;
        assert.ok(per('(string)') < strings, `strings: ${per('(string)')} per allocation`);
      } finally {
        await node.close();
      }
    });
  }
});

describe('the heap of one live allocation with a relay socket each (no kernel path)', () => {
  it('holds one bare UDP handle, no dgram Socket, EventEmitter state or closure of its own (src/transport/udp/udp-handle.ts)', async () => {
    const node = await startHeapNode({ portsPerAddress: 5000, relaySockets: 'per-allocation' });
    try {
      await node.driver.ramp(ALLOCATIONS, WARM_UP);
      const before = writeSnapshot('before-sockets');
      await node.driver.ramp(0, ALLOCATIONS);
      const after = writeSnapshot('after-sockets');
      const rows = breakdown(readSnapshot(before), readSnapshot(after), ALLOCATIONS);
      const per = (group: string): number => countOf(rows, group);
      assert.ok(per('UDP') > 0.99 && per('UDP') < 1.01, `one UDP handle each (${per('UDP')})`);
      assert.ok(per('HandleRelaySocket') > 0.99 && per('HandleRelaySocket') < 1.01, `one HandleRelaySocket each (${per('HandleRelaySocket')})`);
      // What a dgram.Socket brought: the Socket, its state and _events objects, a bound lookup, dgram's closures.
      assert.ok(per('Socket') < 0.1, `dgram Sockets: ${per('Socket')} per allocation`);
      assert.ok(per('(closure) onmessage') < 0.1, `onmessage closures: ${per('(closure) onmessage')} per allocation`);
      assert.ok(per('(closure) native_bind') < 0.1, `bound functions: ${per('(closure) native_bind')} per allocation`);
      assert.ok(per('(closure) ') < 0.1, `anonymous closures: ${per('(closure) ')} per allocation`);
      assert.ok(per('Object') < 0.5, `plain objects: ${per('Object')} per allocation`);
    } finally {
      await node.close();
    }
  });
});

/** Bytes in V8's young generation now: what was allocated since the last scavenge. */
function youngBytes(): number {
  return v8.getHeapSpaceStatistics().find((s) => s.space_name === 'new_space')?.space_used_size ?? 0;
}

describe('the once-a-second upkeep of live allocations', () => {
  it('allocates nothing per allocation: at 100,000 that garbage was a minor collection every few seconds on the relay path', async (t) => {
    // One allocation per client address, as most clients come (the scale bench's 5,000 ports
    // per address would hide what the walk costs per address).
    const node = await startHeapNode({ portsPerAddress: 1 });
    const scavenges: number[] = [];
    const observer = new PerformanceObserver((list) => {
      for (const e of list.getEntries()) scavenges.push(e.startTime);
    });
    observer.observe({ entryTypes: ['gc'] });
    /** The fewest young-generation bytes one tick allocated, over ticks without a collection in them. */
    const perTick = async (): Promise<number> => {
      node.clock.advance(1000);
      await node.engine.tick(); // compiled, and a first tick's one-off work done
      const samples: number[] = [];
      for (let attempt = 0; attempt < 20 && samples.length < 3; attempt++) {
        node.clock.advance(1000);
        const t0 = performance.now();
        const y0 = youngBytes();
        await node.engine.tick();
        const y1 = youngBytes();
        const t1 = performance.now();
        await new Promise<void>((resolve) => setTimeout(resolve, 20)); // the observer's entries arrive
        // A collection during the tick empties the young generation: that sample says nothing.
        if (scavenges.some((at) => at >= t0 && at <= t1) || y1 < y0) continue;
        samples.push(y1 - y0);
      }
      assert.ok(samples.length >= 3, `ticks without a collection in them: ${samples.length}`);
      return Math.min(...samples);
    };
    try {
      await node.driver.ramp(0, 5000);
      const bytes = await perTick();
      t.diagnostic(`young-generation bytes per tick at 5,000 allocations: ${bytes}`);
      // What a tick allocates whatever the size (the yields between slices, timers) is a few
      // KB; before, the walk left 40-160 B per allocation.
      assert.ok(bytes / 5000 < 8, `a tick allocates ${(bytes / 5000).toFixed(2)} B per live allocation`);
    } finally {
      observer.disconnect();
      await node.close();
    }
  });
});

// The heap bench's breakdown (bench/allocation-heap/breakdown.ts): a heap snapshot's nodes
// summed by kind (constructor, closure, strings of any shape together), and the difference
// of two snapshots per allocation, largest first. Checked on a hand-made snapshot in V8's
// format, and on a real one of this process.

import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import v8 from 'node:v8';

import { type HeapSnapshotJson, breakdown, formatBreakdown, groupName, summarize } from '../../../bench/allocation-heap/breakdown.js';

const TYPES = ['hidden', 'array', 'string', 'object', 'code', 'closure', 'regexp', 'number', 'native', 'synthetic', 'concatenated string', 'sliced string'];

/** A snapshot in V8's layout: nodes of [type, name, id, self_size, edge_count]. */
function snapshot(nodes: readonly (readonly [string, string, number])[]): HeapSnapshotJson {
  const strings: string[] = [];
  const flat: number[] = [];
  nodes.forEach(([type, name, size], id) => {
    let at = strings.indexOf(name);
    if (at < 0) at = strings.push(name) - 1;
    flat.push(TYPES.indexOf(type), at, id, size, 0);
  });
  return { snapshot: { meta: { node_fields: ['type', 'name', 'id', 'self_size', 'edge_count'], node_types: [TYPES, 'string'] } }, nodes: flat, strings };
}

describe('heap breakdown', () => {
  it('names kinds: constructors as they are, strings of every shape as one, the rest by type', () => {
    assert.equal(groupName('object', 'Allocation'), 'Allocation');
    assert.equal(groupName('concatenated string', 'udp|'), '(string)');
    assert.equal(groupName('sliced string', 'x'), '(string)');
    assert.equal(groupName('string', 'abc'), '(string)');
    assert.equal(groupName('number', 'heap number'), '(heap number)');
    assert.equal(groupName('closure', 'onPacket'), '(closure) onPacket');
  });

  it('sums by kind and gives the growth per allocation, largest first, leaving out what did not move', () => {
    const before = summarize(
      snapshot([
        ['object', 'Allocation', 240],
        ['object', 'Engine', 500],
        ['string', 'a', 32],
      ]),
    );
    const after = summarize(
      snapshot([
        ['object', 'Allocation', 240],
        ['object', 'Allocation', 240],
        ['object', 'Allocation', 240],
        ['object', 'Engine', 500],
        ['string', 'a', 32],
        ['concatenated string', 'b', 32],
        ['string', 'c', 40],
        ['closure', 'onPacket', 56],
        ['closure', 'onPacket', 56],
      ]),
    );
    assert.deepEqual(after.get('Allocation'), { count: 3, bytes: 720 });
    const rows = breakdown(before, after, 2);
    assert.deepEqual(rows, [
      { group: 'Allocation', countPerAllocation: 1, bytesPerAllocation: 240 },
      { group: '(closure) onPacket', countPerAllocation: 1, bytesPerAllocation: 56 },
      { group: '(string)', countPerAllocation: 1, bytesPerAllocation: 36 },
    ]);
    assert.deepEqual(
      breakdown(before, after, 2, 50).map((r) => r.group),
      ['Allocation', '(closure) onPacket'],
      'under minBytes left out',
    );
    assert.match(formatBreakdown(rows), /332\.0 B +total of the rows/);
  });

  it('counts a kind that went away as negative', () => {
    const rows = breakdown(summarize(snapshot([['object', 'Gone', 100]])), summarize(snapshot([])), 1);
    assert.deepEqual(rows, [{ group: 'Gone', countPerAllocation: -1, bytesPerAllocation: -100 }]);
  });

  it('refuses what is not a snapshot it can read, and a count of allocations that is not positive', () => {
    assert.throws(() => summarize({ ...snapshot([]), snapshot: { meta: { node_fields: ['type', 'id'], node_types: [TYPES] } } }), /no type, name or self_size/);
    assert.throws(() => summarize({ ...snapshot([]), nodes: [1, 2, 3] }), /not a multiple/);
    assert.throws(() => breakdown(new Map(), new Map(), 0), /allocations must be positive/);
  });

  it('reads a real snapshot of this process: objects made between two snapshots show up per object', () => {
    class HeapBreakdownProbe {
      constructor(readonly n: number) {}
    }
    const read = (name: string): ReturnType<typeof summarize> => {
      const file = v8.writeHeapSnapshot(join(tmpdir(), `heap-breakdown-${process.pid}-${name}.heapsnapshot`));
      try {
        return summarize(JSON.parse(readFileSync(file, 'utf8')) as HeapSnapshotJson);
      } finally {
        rmSync(file, { force: true });
      }
    };
    const before = read('before');
    const kept = Array.from({ length: 1000 }, (_, i) => new HeapBreakdownProbe(i));
    const after = read('after');
    const row = breakdown(before, after, kept.length).find((r) => r.group === 'HeapBreakdownProbe');
    assert.ok(row, 'the probes are a row');
    assert.equal(row.countPerAllocation, 1);
    assert.ok(row.bytesPerAllocation > 0);
    assert.equal(kept.length, 1000);
  });
});

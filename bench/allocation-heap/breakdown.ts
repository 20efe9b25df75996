// What a V8 heap snapshot (the .heapsnapshot JSON of v8.writeHeapSnapshot) holds, summed
// by kind of object, and the difference between two snapshots per allocation: where the
// heap of an allocation goes (docs/scaling.md, "At scale"). Self sizes only: an object's
// own bytes, never what it references, so the rows add up to the heap's growth.

/** The parts of a heap snapshot this file reads. */
export interface HeapSnapshotJson {
  readonly snapshot: {
    readonly meta: {
      readonly node_fields: readonly string[];
      /** The first entry lists the names of the node types. */
      readonly node_types: readonly unknown[];
    };
  };
  readonly nodes: readonly number[];
  readonly strings: readonly string[];
}

/** Objects of one kind: how many, and their own bytes. */
export interface HeapGroup {
  readonly count: number;
  readonly bytes: number;
}

/** Strings of every shape are one row: their contents differ per object, their cost does not. */
const STRING_TYPES = new Set(['string', 'concatenated string', 'sliced string']);

/**
 * The kind of a node: "Allocation" for an object of that constructor, "(closure) name" for
 * a function, "(string)", "(heap number)", "(code)", and "(type) name" otherwise (V8's
 * internal arrays are named by their role, e.g. "(array) (object properties)").
 */
export function groupName(type: string, name: string): string {
  if (type === 'object') return name;
  if (STRING_TYPES.has(type)) return '(string)';
  if (type === 'number' || type === 'heap number') return '(heap number)';
  if (type === 'code') return '(code)';
  return `(${type}) ${name}`;
}

/** Sums a snapshot's nodes by groupName. */
export function summarize(snap: HeapSnapshotJson): Map<string, HeapGroup> {
  const fields = snap.snapshot.meta.node_fields;
  const types = snap.snapshot.meta.node_types[0];
  if (!Array.isArray(types)) throw new Error('heap snapshot: node_types[0] is not the list of type names');
  const typeAt = fields.indexOf('type');
  const nameAt = fields.indexOf('name');
  const sizeAt = fields.indexOf('self_size');
  if (typeAt < 0 || nameAt < 0 || sizeAt < 0) throw new Error('heap snapshot: no type, name or self_size field');
  const width = fields.length;
  const nodes = snap.nodes;
  if (nodes.length % width !== 0) throw new Error(`heap snapshot: ${nodes.length} node values is not a multiple of ${width} fields`);
  const out = new Map<string, { count: number; bytes: number }>();
  for (let i = 0; i < nodes.length; i += width) {
    const type = String(types[nodes[i + typeAt]!]);
    const name = snap.strings[nodes[i + nameAt]!] ?? '';
    const key = groupName(type, name);
    const group = out.get(key);
    if (group) {
      group.count++;
      group.bytes += nodes[i + sizeAt]!;
    } else out.set(key, { count: 1, bytes: nodes[i + sizeAt]! });
  }
  return out;
}

/** One row of a difference: what each allocation added of one kind. */
export interface BreakdownRow {
  readonly group: string;
  /** Objects per allocation (0.5: one every other allocation). */
  readonly countPerAllocation: number;
  /** Bytes per allocation. */
  readonly bytesPerAllocation: number;
}

/**
 * (after - before) / allocations per kind, the largest first; kinds that moved by less
 * than `minBytes` per allocation (either way) are left out.
 */
export function breakdown(before: ReadonlyMap<string, HeapGroup>, after: ReadonlyMap<string, HeapGroup>, allocations: number, minBytes = 0): BreakdownRow[] {
  if (!(allocations > 0)) throw new Error(`allocations must be positive, not ${allocations}`);
  const rows: BreakdownRow[] = [];
  const groups = new Set([...before.keys(), ...after.keys()]);
  for (const group of groups) {
    const a = after.get(group) ?? { count: 0, bytes: 0 };
    const b = before.get(group) ?? { count: 0, bytes: 0 };
    const bytesPerAllocation = (a.bytes - b.bytes) / allocations;
    if (Math.abs(bytesPerAllocation) < minBytes || bytesPerAllocation === 0) continue;
    rows.push({ group, countPerAllocation: (a.count - b.count) / allocations, bytesPerAllocation });
  }
  return rows.sort((x, y) => y.bytesPerAllocation - x.bytesPerAllocation || x.group.localeCompare(y.group));
}

/** The rows as a text table, with their total. */
export function formatBreakdown(rows: readonly BreakdownRow[]): string {
  const total = rows.reduce((sum, r) => sum + r.bytesPerAllocation, 0);
  const lines = rows.map((r) => `${r.bytesPerAllocation.toFixed(1).padStart(9)} B ${r.countPerAllocation.toFixed(2).padStart(7)} x  ${r.group}`);
  lines.push(`${total.toFixed(1).padStart(9)} B            total of the rows`);
  return lines.join('\n');
}

// The V8 heap one live allocation costs, measured in one process (docs/scaling.md, "At
// scale"): a TurnEngine configured as the scale benchmark's node (anycast relay mode, one
// user, relay sockets shared per relay address, the kernel's steering replaced by a
// no-op), N allocations made through the real request path (401, then an authenticated
// Allocate with LIFETIME 3600 and a CreatePermission to one peer), then gc() and the heap
// against the empty engine's. The store keeps nothing per allocation, as Redis does for
// the node (its records live in redis-server): what is measured is the node's own state.
// Twice: right after the ramp (every allocation still keeps its Allocate response for
// retransmissions) and 41 s later, after a tick let those go.
//
//   node --expose-gc dist/bench/allocation-heap.js [--allocations 100000] [--ports-per-address 5000] [--channels] [--snapshot]
//        [--relay-sockets shared|per-allocation|per-allocation-dgram]
//
// --relay-sockets: shared (the default, the scale bench's node), or a real socket per
// allocation as a node without the kernel path binds them: bare UDP handles, or dgram
// sockets as before (src/transport/udp/relay.ts). A socket is a descriptor: keep
// --allocations under the open-file limit (20,000 here), e.g. 10000.
//
// --channels: each allocation also binds a channel to the peer (as WebRTC clients do), with
// the kernel path's bookkeeping on (src/dataplane/offload.ts over maps kept in the kernel).
//
// --snapshot writes heap snapshots of the empty engine and of each measurement to
// bench/results/ and prints what grew, per allocation, by kind of object
// (bench/allocation-heap/breakdown.ts). Snapshots of 100,000 allocations take a few GB of
// memory to read: --allocations 20000 gives the same per-allocation rows.

import { mkdirSync, readFileSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import v8 from 'node:v8';

import { type HeapGroup, type HeapSnapshotJson, breakdown, formatBreakdown, summarize } from './allocation-heap/breakdown.js';
import { type HeapRelaySockets, startHeapNode } from './allocation-heap/node.js';
import { findRepoRoot, runMain } from './host.js';

const GC_ROUNDS = 4;

interface Options {
  readonly allocations: number;
  readonly snapshot: boolean;
  /** Client ports per client address: 5,000 as the scale bench, 1 as most clients come (a map per address in the table). */
  readonly portsPerAddress: number;
  /** Each allocation also binds a channel (and the kernel path's bookkeeping is on). */
  readonly channels: boolean;
  readonly relaySockets: HeapRelaySockets;
}

const RELAY_SOCKETS: readonly HeapRelaySockets[] = ['shared', 'per-allocation', 'per-allocation-dgram'];

function parseOptions(argv: readonly string[]): Options {
  let allocations = 100_000;
  let snapshot = false;
  let portsPerAddress = 5000;
  let channels = false;
  let relaySockets: HeapRelaySockets = 'shared';
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i];
    if (arg === '--snapshot') snapshot = true;
    else if (arg === '--relay-sockets') {
      const value = argv[++i] as HeapRelaySockets;
      if (!RELAY_SOCKETS.includes(value)) throw new Error(`--relay-sockets must be one of ${RELAY_SOCKETS.join(', ')}, not ${String(value)}`);
      relaySockets = value;
    } else if (arg === '--channels') channels = true;
    else if (arg === '--allocations') {
      allocations = Number(argv[++i]);
      if (!Number.isInteger(allocations) || allocations < 1 || allocations > 150_000) {
        throw new Error(`--allocations must be an integer from 1 to 150000, not ${argv[i]}`);
      }
    } else if (arg === '--ports-per-address') {
      portsPerAddress = Number(argv[++i]);
      if (!Number.isInteger(portsPerAddress) || portsPerAddress < 1 || portsPerAddress > 5000) {
        throw new Error(`--ports-per-address must be an integer from 1 to 5000, not ${argv[i]}`);
      }
    } else
      throw new Error(
        `unknown argument ${arg}; usage: node --expose-gc dist/bench/allocation-heap.js [--allocations 100000] [--ports-per-address 5000] [--channels] [--snapshot] [--relay-sockets shared|per-allocation|per-allocation-dgram]`,
      );
  }
  return { allocations, snapshot, portsPerAddress, channels, relaySockets };
}

function collect(): void {
  const gc = (globalThis as { gc?: () => void }).gc;
  if (!gc) throw new Error('run with node --expose-gc');
  for (let i = 0; i < GC_ROUNDS; i++) gc();
}

interface Sample {
  readonly heapUsed: number;
  readonly external: number;
  readonly rss: number;
  /** The heap snapshot's file (--snapshot), read once every snapshot is written: what a read keeps is never in a snapshot. */
  readonly file: string | undefined;
}

/** Allocations made and deleted before the empty figure: the code they compile is in it. */
const WARM_UP = 1000;

function sample(o: Options, label: string): Sample {
  collect();
  // Read before the snapshot: writing one grows the heap's spaces.
  const m = process.memoryUsage();
  const heapUsed = v8.getHeapStatistics().used_heap_size;
  let file: string | undefined;
  if (o.snapshot) {
    const dir = join(findRepoRoot(), 'bench', 'results');
    mkdirSync(dir, { recursive: true });
    file = v8.writeHeapSnapshot(join(dir, `allocation-heap-${label}.heapsnapshot`));
    collect();
  }
  return { heapUsed, external: m.external, rss: m.rss, file };
}

function readSnapshot(file: string): Map<string, HeapGroup> {
  try {
    return summarize(JSON.parse(readFileSync(file, 'utf8')) as HeapSnapshotJson);
  } finally {
    rmSync(file, { force: true });
  }
}

function report(label: string, n: number, empty: Sample, at: Sample): void {
  const per = (a: number, b: number): string => ((a - b) / n).toFixed(0);
  console.log(
    `${label}: ${n} allocations: V8 heap ${per(at.heapUsed, empty.heapUsed)} B/alloc, external ${per(at.external, empty.external)} B/alloc, RSS ${per(at.rss, empty.rss)} B/alloc (RSS of one process after gc(): indicative)`,
  );
}

async function main(): Promise<number> {
  const o = parseOptions(process.argv.slice(2));
  const { engine, clock, driver, close } = await startHeapNode({ portsPerAddress: o.portsPerAddress, channels: o.channels, relaySockets: o.relaySockets });
  // Made and deleted first (client addresses after the ramp's): code and one-off pools are in the empty figure.
  await driver.ramp(o.allocations, WARM_UP);
  clock.advance(3_601_000);
  await engine.tick();
  clock.advance(1_000);
  if (engine.allocations !== 0) throw new Error(`${engine.allocations} allocations left after the warm-up`);
  const empty = sample(o, 'empty');
  await driver.ramp(0, o.allocations);
  if (engine.allocations !== o.allocations) throw new Error(`${engine.allocations} allocations live, not ${o.allocations}`);
  await engine.tick();
  const ramp = sample(o, 'ramp');
  clock.advance(41_000);
  await engine.tick();
  const later = sample(o, 'later');
  await close();
  const after = [
    ['after the ramp', ramp],
    ['41 s later (Allocate responses let go)', later],
  ] as const;
  for (const [label, at] of after) report(label, o.allocations, empty, at);
  if (empty.file === undefined) return 0;
  const before = readSnapshot(empty.file);
  for (const [label, at] of after) {
    if (at.file === undefined) continue;
    console.log(`\n${label}: what grew, per allocation, by kind of object (self sizes)`);
    console.log(formatBreakdown(breakdown(before, readSnapshot(at.file), o.allocations, 1)));
  }
  return 0;
}

runMain(main);

// The scale part's report: one table per measure on stdout, and the figures each table is made
// of (per-allocation deltas against the empty node) for bench/results/allocations-scale.json.
import { fmt, table } from '../format.js';
import { CLIENT_CPU, SERVER_CPU } from '../host.js';
import type { LatencySummary } from '../turn-driver.js';
import { reportStoreOps } from './report.js';
import { SOCKET_CACHES } from './slab.js';
import type { ScaleOptions } from './scale-options.js';
import type { StartTiming } from './scale-node.js';
import type { LatencyResult, NodeSample, RampResult, ScaleOpsResult, SyncResult } from './scale-measure.js';

export interface SizeResult {
  readonly size: number;
  readonly ramp: RampResult;
  readonly sample: NodeSample;
  sync?: SyncResult;
}

export interface ScaleResults {
  baseline: { readonly start: StartTiming; readonly sample: NodeSample } | undefined;
  readonly sizes: SizeResult[];
  readonly latency: LatencyResult[];
  ops: ScaleOpsResult | undefined;
  readonly failures: string[];
}

export interface SlabDelta {
  /** Every cache, host-wide: includes whatever else the machine did meanwhile. */
  readonly totalBytes: number;
  /** The caches a bound UDP socket takes objects from (slab.ts, part 2's calibration). */
  readonly socketBytes: number;
  /** The caches that grew most, bytes. */
  readonly top: readonly (readonly [string, number])[];
}

export function slabDelta(base: NodeSample['slab'], now: NodeSample['slab']): SlabDelta | undefined {
  if (base === undefined || now === undefined) return undefined;
  const d = Object.keys(now).map((k): [string, number] => [k, (now[k] ?? 0) - (base[k] ?? 0)]);
  d.sort((a, b) => b[1] - a[1]);
  const socketBytes = d.filter(([k]) => SOCKET_CACHES.includes(k)).reduce((s, [, v]) => s + v, 0);
  return { totalBytes: d.reduce((s, [, v]) => s + v, 0), socketBytes, top: d.slice(0, 6) };
}

/** Per-allocation figures of a sample against the empty node. */
export interface PerAllocation {
  readonly fds: number | undefined;
  readonly rssKb: number | undefined;
  readonly heapBytes: number | undefined;
  /** Host-wide slab growth since the empty node (bytes, not per allocation). */
  readonly kernelSlab: SlabDelta | undefined;
  readonly redisBytes: number | undefined;
}

export function perAllocation(base: NodeSample, s: NodeSample): PerAllocation {
  const per = (a: number | undefined, b: number | undefined): number | undefined =>
    a === undefined || b === undefined || s.live === 0 ? undefined : (b - a) / s.live;
  return {
    fds: per(base.proc.fds, s.proc.fds),
    rssKb: per(base.proc.rssKb, s.proc.rssKb),
    heapBytes: per(base.heapUsedBytes, s.heapUsedBytes),
    kernelSlab: slabDelta(base.slab, s.slab),
    redisBytes: per(base.redisUsedMemory, s.redisUsedMemory),
  };
}

const mb = (bytes: number | undefined): string => fmt(bytes === undefined ? undefined : bytes / 1048576, 1);
const us = (ms: number | undefined): string => fmt(ms === undefined ? undefined : ms * 1000, 0);
const minus = (a: number | undefined, b: number | undefined): number | undefined => (a === undefined || b === undefined ? undefined : a - b);

function memoryTable(r: ScaleResults, base: NodeSample): string[] {
  const rows: string[][] = [
    [
      'live',
      'ok/asked',
      'alloc/s',
      'CPU us/alloc',
      'fds',
      'fds/alloc',
      'RSS MB',
      'RSS KB/alloc',
      'heap MB',
      'heap B/alloc',
      'slab MB (host)',
      'slab B/alloc',
      'socket slab B/alloc',
      'BPF maps KB',
      'redis B/alloc',
      'anyturn_allocations',
    ],
  ];
  for (const s of r.sizes) {
    const p = perAllocation(base, s.sample);
    const x = s.sample;
    rows.push([
      String(x.live),
      `${s.ramp.ok}/${s.ramp.to - s.ramp.from}`,
      fmt(s.ramp.allocationsPerSecond, 0),
      fmt(s.ramp.serverCpuMicrosPerAllocation, 0),
      x.proc.fds === undefined ? '-' : String(x.proc.fds),
      fmt(p.fds, 3),
      fmt(x.proc.rssKb === undefined ? undefined : x.proc.rssKb / 1024, 1),
      fmt(p.rssKb, 2),
      mb(x.heapUsedBytes),
      fmt(p.heapBytes, 0),
      mb(p.kernelSlab?.totalBytes),
      fmt(p.kernelSlab === undefined || x.live === 0 ? undefined : p.kernelSlab.totalBytes / x.live, 0),
      fmt(p.kernelSlab === undefined || x.live === 0 ? undefined : p.kernelSlab.socketBytes / x.live, 0),
      fmt(x.bpf === undefined ? undefined : x.bpf.memlockBytes / 1024, 0),
      fmt(p.redisBytes, 0),
      x.allocationsReported === undefined ? '-' : String(x.allocationsReported),
    ]);
  }
  const lines = [table(rows, 0)];
  const last = r.sizes[r.sizes.length - 1];
  const d = last === undefined ? undefined : slabDelta(base.slab, last.sample.slab);
  if (last !== undefined && d !== undefined && last.sample.live > 0) {
    lines.push(`   slab growth at ${last.sample.live} by cache, B/alloc: ${d.top.map(([c, b]) => `${c} ${(b / last.sample.live).toFixed(0)}`).join(', ')}`);
  }
  for (const s of r.sizes) {
    if (s.sample.proc.childFds > 0)
      lines.push(`   at ${s.sample.live}: the node's helper process(es): ${s.sample.proc.childFds} fds, ${fmt(s.sample.proc.childRssKb / 1024, 1)} MB RSS`);
    if (s.sample.bpf) lines.push(`   at ${s.sample.live}: ${s.sample.bpf.maps} BPF maps, ${fmt(s.sample.bpf.memlockBytes / 1024, 0)} KB memlock`);
    for (const e of s.ramp.errors) lines.push(`   ramp to ${s.size}, errors: ${e}`);
  }
  return lines;
}

function pct(s: LatencySummary | undefined): [number | undefined, number | undefined, number | undefined] {
  return [s?.p50, s?.p99, s?.max];
}

/**
 * The added p50 and p99 (ms) of each latency round, grouped by the live count they ran at, in
 * order: of the pairs' differences (relayed - direct round trip of two probes sent together)
 * where the round has them, else the difference of the two distributions' percentiles.
 */
export function addedByLive(latency: readonly LatencyResult[]): { live: number; p50: number[]; p99: number[] }[] {
  const groups: { live: number; p50: number[]; p99: number[] }[] = [];
  for (const l of latency) {
    const p50 = l.added?.p50 ?? minus(l.relay?.rttMs.p50, l.direct?.rttMs.p50);
    const p99 = l.added?.p99 ?? minus(l.relay?.rttMs.p99, l.direct?.rttMs.p99);
    if (p50 === undefined || p99 === undefined) continue;
    let g = groups.find((x) => x.live === l.live);
    if (g === undefined) groups.push((g = { live: l.live, p50: [], p99: [] }));
    g.p50.push(p50);
    g.p99.push(p99);
  }
  return groups;
}

/** The median (the mean of the middle two for an even count). */
export function median(values: readonly number[]): number | undefined {
  if (values.length === 0) return undefined;
  const sorted = [...values].sort((a, b) => a - b);
  const mid = sorted.length >> 1;
  return sorted.length % 2 === 1 ? sorted[mid] : (sorted[mid - 1]! + sorted[mid]!) / 2;
}

function latencyTable(r: ScaleResults): string[] {
  const rows: string[][] = [
    [
      'live',
      'churn/s',
      'direct p50/p99/max us',
      'relay p50/p99/max us',
      'added p50/p99/max us',
      'lost relay/direct',
      'GC major n/ms',
      'GC minor n/ms',
      'GC >10 ms',
    ],
  ];
  for (const l of r.latency) {
    const [d50, d99, dmax] = pct(l.direct?.rttMs);
    const [r50, r99, rmax] = pct(l.relay?.rttMs);
    const major = l.gc.byKind.major;
    const minor = l.gc.byKind.minor;
    const over = Object.values(l.gc.byKind).reduce((s, k) => s + k.over10ms, 0);
    rows.push([
      String(l.live),
      l.churn === undefined ? '-' : fmt((l.churn.created + l.churn.deleted) / 2 / l.churn.seconds, 0),
      `${us(d50)}/${us(d99)}/${us(dmax)}`,
      `${us(r50)}/${us(r99)}/${us(rmax)}`,
      l.added === undefined
        ? `${us(minus(r50, d50))}/${us(minus(r99, d99))}/${us(minus(rmax, dmax))}`
        : `${us(l.added.p50)}/${us(l.added.p99)}/${us(l.added.max)}`,
      `${l.relay?.lost ?? '-'}/${l.direct?.lost ?? '-'}`,
      major === undefined ? '0' : `${major.count}/${fmt(major.totalMs, 0)}`,
      minor === undefined ? '0' : `${minor.count}/${fmt(minor.totalMs, 0)}`,
      String(over),
    ]);
  }
  const lines = [table(rows, 0)];
  for (const round of addedByLive(r.latency)) {
    if (round.p99.length > 1) {
      lines.push(
        `   at ${round.live}: added p50 median ${us(median(round.p50))} us, added p99 median ${us(median(round.p99))} us (${round.p99.map((v) => us(v)).join(', ')}) over ${round.p99.length} rounds`,
      );
    }
  }
  for (const l of r.latency) {
    const c = l.churn;
    if (c !== undefined) {
      lines.push(
        `   at ${l.live}: churn created ${c.created}, deleted ${c.deleted} in ${fmt(c.seconds, 1)} s (skipped ${c.skipped}, create p50/p99 ${fmt(c.createMs.p50, 1)}/${fmt(c.createMs.p99, 1)} ms)`,
      );
      for (const e of c.errors) lines.push(`   at ${l.live}: churn errors: ${e}`);
    }
    for (const e of l.errors) lines.push(`   at ${l.live}: ${e}`);
  }
  return lines;
}

function syncTable(r: ScaleResults, base: StartTiming): string[] {
  const rows: string[][] = [
    [
      'live',
      'records',
      'adopted',
      'spawn->line ms',
      'spawn->ready ms',
      'sync ms',
      'sync ms (node log)',
      'us/alloc',
      'RSS MB after',
      'fds after',
      'anyturn_allocations after',
    ],
  ];
  for (const s of r.sizes) {
    const y = s.sync;
    if (y === undefined) continue;
    const sync = minus(y.timing.spawnToSyncLineMs, base.spawnToSyncLineMs);
    rows.push([
      String(y.live),
      String(y.recordsInStore),
      y.timing.adopted === undefined ? '-' : String(y.timing.adopted),
      fmt(y.timing.spawnToSyncLineMs, 0),
      fmt(y.timing.spawnToReadyMs, 0),
      fmt(sync, 0),
      fmt(y.timing.syncMsFromLog, 0),
      fmt(sync === undefined || !y.timing.adopted ? undefined : (1000 * sync) / y.timing.adopted, 0),
      fmt(y.after.proc.rssKb === undefined ? undefined : y.after.proc.rssKb / 1024, 1),
      y.after.proc.fds === undefined ? '-' : String(y.after.proc.fds),
      y.after.allocationsReported === undefined ? '-' : String(y.after.allocationsReported),
    ]);
  }
  return [table(rows, 0)];
}

export function reportScale(r: ScaleResults, o: ScaleOptions, commandLine: string, nofile: number): string[] {
  const out: string[] = [];
  const flags = [
    o.kernel ? 'kernel data plane' : 'JavaScript data plane',
    o.relaySockets === undefined ? 'relay sockets as built' : `--relay-sockets ${o.relaySockets}`,
    o.channels ? 'each allocation with a permission and a channel' : 'each allocation with a permission, no channel',
  ];
  out.push(
    `Scale: live allocations on one anycast-relay node in namespaces (${flags.join(', ')}); node on CPU ${SERVER_CPU}, drivers and redis on CPU ${CLIENT_CPU}`,
  );
  out.push(`   node: ${commandLine}`);
  out.push(`   open-file limit of the node: ${nofile}`);
  const base = r.baseline;
  if (base === undefined) return [...out, '   the node did not start', '', 'failures:', ...r.failures.map((f) => `  ${f}`)];
  const b = base.sample;
  out.push(
    `   empty node: ${b.proc.fds ?? '-'} fds, ${fmt((b.proc.rssKb ?? 0) / 1024, 1)} MB RSS, ${mb(b.heapUsedBytes)} MB heap; start on an empty store: spawn->sync line ${fmt(base.start.spawnToSyncLineMs, 0)} ms, ->ready ${fmt(base.start.spawnToReadyMs, 0)} ms`,
  );
  out.push('');
  out.push('1. Memory, fds and kernel memory at N live allocations (per allocation: against the empty node; slab is /proc/slabinfo, host-wide;');
  out.push(`   socket slab = the caches a bound UDP socket uses: ${SOCKET_CACHES.join(', ')})`);
  out.push(...memoryTable(r, b));
  if (r.latency.length > 0) {
    out.push('');
    out.push(
      `2. Added latency on the relay path (Send indication -> echo peer -> Data indication) at ${o.probeRate}/s for ${o.probeSeconds} s, against the direct round trip sent at the same moment from the same process (added: pair by pair), while ${o.churnRate} allocations/s are deleted and created`,
    );
    out.push(...latencyTable(r));
  }
  if (r.sizes.some((s) => s.sync !== undefined)) {
    out.push('');
    out.push(
      '3. Start-up sync: the node is SIGKILLed and a new one starts with the same flags on the same Redis; sync = spawn->line minus the empty-store start',
    );
    out.push(...syncTable(r, base.start));
  }
  if (r.ops !== undefined) {
    out.push('');
    out.push(...reportStoreOps([r.ops.ops]).map((l) => l.replace(/^4\. /, '4. (at scale) ')));
    const deliveries = r.ops.subscribers === undefined ? undefined : r.ops.ops.publishesPerLifecycle * r.ops.subscribers;
    out.push(
      `   at ${r.ops.live} live: event deliveries per lifecycle = publishes x subscribers = ${fmt(deliveries, 2)}; events the node counted (anyturn_store_events_received_total): ${fmt(r.ops.eventsHeardPerLifecycle, 2)} per lifecycle`,
    );
  }
  if (r.failures.length > 0) out.push('', 'failures:', ...r.failures.map((f) => `  ${f}`));
  return out;
}

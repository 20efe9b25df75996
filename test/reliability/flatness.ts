// The soak's flatness rule (docs/reliability.md, "Soak"), on plain per-minute series so it
// can judge a run as it ends or a recorded CSV again (`node dist/bench/soak.js --judge
// docs/soak.csv`).
//
// The first third of the samples is warm-up (JIT, buffer pools, the first collections);
// the middle third is the reference and the last third is judged against it, 10 % allowed.
//
// RSS, open fds and V8's committed heap (heap total) are judged by their means. V8's heap
// *used* is not: between major collections it climbs steadily (garbage accumulates) and a
// major collection drops it back to the live data, a sawtooth whose period here (about 20
// minutes at the soak's load) is as long as a third of the hour. The mean of a third then
// depends on where the collections fell: the hour run of 2026-12-05 had N2's only major
// collection in the middle third, so its last third sat on a rising edge (+15 % by the
// mean) while the live data had not grown. What a leak moves is the floor the heap falls
// back to after a major collection (the live data), so heap used is judged by its floors:
// every sample that is at least 15 % below the sample before it is a collection's floor; the
// last floor in the last third must be at most 10 % above the first floor after the
// warm-up. A node with no such floor after the warm-up cannot be judged on heap used and
// says so (`judged: false`); heap total (which V8 grows only when the live data needs the
// room) still is.

export interface NodeSeries {
  readonly rssMb: readonly number[];
  readonly heapUsedMb: readonly number[];
  readonly heapTotalMb: readonly number[];
  readonly fds: readonly number[];
}

export interface Flatness {
  readonly what: string;
  /** The reference: the middle third's mean, or for heap used the first floor after the warm-up. */
  readonly middle: number;
  /** The judged value: the last third's mean, or for heap used the last floor in the last third. */
  readonly last: number;
  readonly ok: boolean;
  /** False when the series gave nothing to judge (heap used without floors); `ok` is then true. */
  readonly judged: boolean;
  readonly how: 'mean' | 'floor';
}

export const FLAT_TOLERANCE = 0.1;
/** A drop of at least this fraction from one sample to the next is a major collection. */
export const COLLECTION_DROP = 0.15;

const mean = (xs: readonly number[]): number => xs.reduce((s, x) => s + x, 0) / Math.max(xs.length, 1);
const round = (x: number): number => Math.round(x * 100) / 100;

/** Indices i where series[i] is at least COLLECTION_DROP below series[i - 1]. */
export function collectionFloors(series: readonly number[]): number[] {
  const out: number[] = [];
  for (let i = 1; i < series.length; i++) if (series[i]! <= series[i - 1]! * (1 - COLLECTION_DROP)) out.push(i);
  return out;
}

export function flatness(nodes: Readonly<Record<string, NodeSeries>>): Flatness[] {
  const out: Flatness[] = [];
  for (const [node, s] of Object.entries(nodes)) {
    const n = s.rssMb.length;
    const third = Math.floor(n / 3);
    if (third === 0) continue;
    const byMean = (what: string, xs: readonly number[]): Flatness => {
      const m = mean(xs.slice(third, 2 * third));
      const l = mean(xs.slice(2 * third));
      return { what: `${node} ${what}`, middle: round(m), last: round(l), ok: l <= m * (1 + FLAT_TOLERANCE), judged: true, how: 'mean' };
    };
    out.push(byMean('rss_mb', s.rssMb), byMean('heap_total_mb', s.heapTotalMb), byMean('fds', s.fds));
    const floors = collectionFloors(s.heapUsedMb).filter((i) => i >= third);
    const first = floors[0];
    const lastFloor = floors.filter((i) => i >= 2 * third).at(-1);
    if (first === undefined || lastFloor === undefined) {
      out.push({
        what: `${node} heap_used_mb`,
        middle: first === undefined ? Number.NaN : round(s.heapUsedMb[first]!),
        last: Number.NaN,
        ok: true,
        judged: false,
        how: 'floor',
      });
      continue;
    }
    const ref = s.heapUsedMb[first]!;
    const judged = s.heapUsedMb[lastFloor]!;
    out.push({ what: `${node} heap_used_mb`, middle: round(ref), last: round(judged), ok: judged <= ref * (1 + FLAT_TOLERANCE), judged: true, how: 'floor' });
  }
  return out;
}

/** The per-node series of a soak CSV (test/reliability/soak.ts CSV_HEADER), for judging a recorded run. */
export function seriesFromCsv(csv: string, nodeNames: readonly string[]): Record<string, NodeSeries> {
  const [header, ...lines] = csv.trim().split('\n');
  const cols = header!.split(',');
  const rows = lines.map((l) => l.split(',').map(Number));
  const column = (name: string): number[] => {
    const i = cols.indexOf(name);
    if (i < 0) throw new Error(`the CSV has no column ${name} (columns: ${cols.join(', ')})`);
    return rows.map((r) => r[i]!);
  };
  const out: Record<string, NodeSeries> = {};
  for (const n of nodeNames)
    out[n] = { rssMb: column(`${n}_rss_mb`), heapUsedMb: column(`${n}_heap_used_mb`), heapTotalMb: column(`${n}_heap_total_mb`), fds: column(`${n}_fds`) };
  return out;
}

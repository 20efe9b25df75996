// The soak (docs/reliability.md, "Soak"): `npm run soak` (an hour), or
//   npm run soak -- --minutes 15 --sample-seconds 60 --concurrent 20 --lifetime-seconds 30 --pps 200
//   node dist/bench/soak.js --judge docs/soak.csv
// Allocation churn with relayed traffic across two anyturn processes in anycast relay
// mode on one redis-server, in network namespaces (test/reliability/soak.ts says how).
// Needs root, iproute2, redis-server, and gnuplot for the plot (Debian: apt-get install
// gnuplot-nox; without it the CSV is still written and the plot skipped).
//
// Writes <out>.csv and <out>.png (default docs/soak) and prints a JSON summary. Exits 1
// when a probe was lost, a request failed, the store did not return to its baseline, or
// the run was not flat (the rule: test/reliability/flatness.ts). `--judge <csv>` judges
// a recorded run's CSV by that rule instead of running.

import { spawnSync } from 'node:child_process';
import { readFileSync, writeFileSync } from 'node:fs';
import { type Flatness, type NodeSeries, flatness, seriesFromCsv } from '../test/reliability/flatness.js';
import { CSV_HEADER, type Sample, csvRow, runSoak } from '../test/reliability/soak.js';

interface Args {
  minutes: number;
  sampleSeconds: number;
  concurrent: number;
  lifetimeSeconds: number;
  pps: number;
  out: string;
  /** A recorded CSV to judge by the flatness rule instead of running (empty: run). */
  judge: string;
}

function parseArgs(argv: readonly string[]): Args {
  const a: Args = { minutes: 60, sampleSeconds: 60, concurrent: 20, lifetimeSeconds: 30, pps: 200, out: 'docs/soak', judge: '' };
  for (let i = 0; i < argv.length; i += 2) {
    const name = argv[i]!.replace(/^--/, '').replace(/-([a-z])/g, (_, c: string) => c.toUpperCase());
    const value = argv[i + 1];
    if (!(name in a) || value === undefined)
      throw new Error(`unknown or valueless flag ${argv[i]} (flags: --minutes, --sample-seconds, --concurrent, --lifetime-seconds, --pps, --out, --judge)`);
    if (name === 'out') a.out = value;
    else if (name === 'judge') a.judge = value;
    else {
      const n = Number(value);
      if (!(n > 0)) throw new Error(`${argv[i]}: a positive number, not ${value}`);
      (a as unknown as Record<string, number>)[name] = n;
    }
  }
  return a;
}

const NODES = ['N1', 'N2'] as const;

function judgeSamples(samples: readonly Sample[]): Flatness[] {
  const series: Record<string, NodeSeries> = {};
  for (const n of NODES)
    series[n] = {
      rssMb: samples.map((s) => s.nodes[n].rssBytes / 1048576),
      heapUsedMb: samples.map((s) => s.nodes[n].heapUsedBytes / 1048576),
      heapTotalMb: samples.map((s) => s.nodes[n].heapTotalBytes / 1048576),
      fds: samples.map((s) => s.nodes[n].openFds),
    };
  return flatness(series);
}

/** Column number (1-based) of a CSV column, for gnuplot. */
function col(name: string): number {
  const i = CSV_HEADER.split(',').indexOf(name);
  if (i < 0) throw new Error(`no CSV column ${name}`);
  return i + 1;
}

function plot(csv: string, png: string, title: string): string | undefined {
  const line = (c: string, label: string): string => `'${csv}' using 1:${col(c)} with lines title '${label}'`;
  const script = [
    "set datafile separator ','",
    'set key autotitle columnhead',
    "set terminal pngcairo size 1400,900 font 'sans,10'",
    `set output '${png}'`,
    `set multiplot layout 2,2 title '${title}'`,
    "set xlabel 'minutes'",
    'set xtics auto',
    "set format x '%g'",
    'set yrange [0:*]',
    "set ylabel 'MiB'",
    "set title 'RSS and V8 heap used'",
    `plot ${[line('N1_rss_mb', 'N1 RSS'), line('N2_rss_mb', 'N2 RSS'), line('N1_heap_used_mb', 'N1 heap used'), line('N2_heap_used_mb', 'N2 heap used')].join(', ')}`,
    "set ylabel 'count'",
    "set title 'open fds and live allocations'",
    `plot ${[line('N1_fds', 'N1 fds'), line('N2_fds', 'N2 fds'), line('N1_allocations', 'N1 allocations'), line('N2_allocations', 'N2 allocations')].join(', ')}`,
    "set title 'Redis keys'",
    `plot ${[line('dbsize', 'DBSIZE'), line('keys_alloc', 'alloc:'), line('keys_port', 'port:'), line('keys_user', 'user:')].join(', ')}`,
    "set ylabel 'ms'",
    "set title 'event-loop delay since the previous sample'",
    `plot ${[line('N1_lag_p99_ms', 'N1 p99'), line('N2_lag_p99_ms', 'N2 p99'), line('N1_lag_max_ms', 'N1 max'), line('N2_lag_max_ms', 'N2 max')].join(', ')}`,
    'unset multiplot',
  ]
    .join('\n')
    // The CSV's first column is seconds; the plot reads minutes.
    .replaceAll('using 1:', 'using ($1/60):');
  const r = spawnSync('gnuplot', [], { input: script, encoding: 'utf8' });
  if (r.error) return `gnuplot not run (${r.error.message}); apt-get install gnuplot-nox`;
  if (r.status !== 0) return `gnuplot failed: ${r.stderr}`;
  return undefined;
}

async function main(): Promise<void> {
  const a = parseArgs(process.argv.slice(2));
  if (a.judge) {
    const flat = flatness(seriesFromCsv(readFileSync(a.judge, 'utf8'), NODES));
    console.log(JSON.stringify({ csv: a.judge, flatness: flat, flat: flat.every((f) => f.ok) }, null, 2));
    process.exit(flat.every((f) => f.ok) ? 0 : 1);
  }
  const csvPath = `${a.out}.csv`;
  const pngPath = `${a.out}.png`;
  const rows = [CSV_HEADER];
  const startedAt = new Date().toISOString();
  console.error(
    `soak: ${a.minutes} min, a sample every ${a.sampleSeconds} s, ${a.concurrent} allocations of ${a.lifetimeSeconds} s at a time, ${a.pps} probes/s`,
  );
  const r = await runSoak({
    durationMs: a.minutes * 60_000,
    sampleMs: a.sampleSeconds * 1000,
    concurrent: a.concurrent,
    lifetimeMs: a.lifetimeSeconds * 1000,
    pps: a.pps,
    settleDeadlineMs: 60_000,
    onSample: (s) => {
      rows.push(csvRow(s));
      writeFileSync(csvPath, `${rows.join('\n')}\n`);
      console.error(csvRow(s));
    },
  });
  rows.push(csvRow(r.final));
  writeFileSync(csvPath, `${rows.join('\n')}\n`);
  const plotError = plot(
    csvPath,
    pngPath,
    `anyturn soak: ${a.minutes} min, 2 nodes (anycast relay), ${a.concurrent}x${a.lifetimeSeconds}s allocations, ${a.pps} probes/s`,
  );
  const flat = judgeSamples(r.samples);
  const first = r.samples[0];
  const last = r.samples.at(-1);
  const s = r.summary;
  const pass =
    s.lost === 0 &&
    s.echoed === s.sent &&
    s.failedAllocations === 0 &&
    Object.keys(s.failures).length === 0 &&
    r.settledAfterS !== undefined &&
    flat.every((f) => f.ok);
  const node = (x: Sample | undefined, n: 'N1' | 'N2') =>
    x && {
      rssMiB: +(x.nodes[n].rssBytes / 1048576).toFixed(1),
      heapUsedMiB: +(x.nodes[n].heapUsedBytes / 1048576).toFixed(1),
      fds: x.nodes[n].openFds,
      lagP99Ms: +x.nodes[n].lagP99Ms.toFixed(1),
    };
  const report = {
    startedAt,
    args: a,
    samples: r.samples.length,
    load: { ...s, errors: s.errors.slice(0, 5), allocationsPerMinute: +(s.allocated / a.minutes).toFixed(1) },
    start: { N1: node(first, 'N1'), N2: node(first, 'N2') },
    end: { N1: node(last, 'N1'), N2: node(last, 'N2') },
    maxLagP99Ms: Math.max(...r.samples.flatMap((x) => [x.nodes.N1.lagP99Ms, x.nodes.N2.lagP99Ms])).toFixed(1),
    keys: { baseline: r.baseline.keys, maxDbsize: Math.max(...r.samples.map((x) => x.dbsize)), final: r.final.keys, settledAfterS: r.settledAfterS },
    flatness: flat,
    nodeWarnings: r.nodeWarnings,
    // Warm-up probes (uncounted) may meet a node that has not heard of the permission yet.
    drops: r.drops,
    csv: csvPath,
    png: plotError ?? pngPath,
    pass,
  };
  console.log(JSON.stringify(report, null, 2));
  process.exit(pass ? 0 : 1);
}

await main();

// npm run bench:dataplane: anyturn with the kernel data plane, anyturn on the
// JavaScript path, coturn and the Node floor, one at a time in a namespace topology
// (bench/dataplane/topology.ts), under the same ChannelData load, against a direct
// run of that load with no relay at all. Method: docs/performance.md, "Kernel data
// plane benchmark".
//
// Usage: node dist/bench/dataplane.js [--only ...] [--rounds N] [--messages N] [--rate N] ... (--help)
//
// Sections: relay cost per relayed packet (every round: direct, then each server;
// the summary takes each server's median), added latency at light load (every round),
// and the max lossless rate (once). Needs root, iproute2, ethtool, a C compiler,
// libssl-dev (the generator's HMAC) and coturn's turnserver. Every process runs in
// the benchmark's own namespaces and is stopped, and the namespaces deleted, at the
// end, on failure and on Ctrl-C; each step has a timeout and the whole run a watchdog.
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, relative } from 'node:path';
import { fileURLToPath } from 'node:url';

import { ProcessGroup, stopOnSignals } from './processes.js';
import { commandOutput, findRepoRoot, requireCommands, runMain, startWatchdog } from './host.js';
import { irqTimeAccounting } from './dataplane/cpu.js';
import { buildLoadgen, startEcho, type LoadSpec } from './dataplane/loadgen.js';
import { runOnce, type RunResult } from './dataplane/measure.js';
import { parseOptions, type Options } from './dataplane/options.js';
import { latencyTable, methodNotes, rateTable, roundsLines, runsTable, summarize, summaryTable, type RateSearch } from './dataplane/report.js';
import { hasDataplaneFlag, type DataplaneContext, type Target } from './dataplane/servers.js';
import { BenchTopology } from './dataplane/topology.js';

const LATENCY_WARMUP = 200;

function progress(label: string, r: RunResult): void {
  const l = r.load;
  const what = r.skipped
    ? `n/a (${r.failure ?? ''})`
    : !r.ok
      ? `FAILED: ${r.failure ?? ''}`
      : `${l?.received}/${l?.sent} back${r.cpu === undefined ? '' : `, CPU all ${r.cpu.totalMs.toFixed(0)} ms (server ${r.cpu.serverMs.toFixed(0)})`}` +
        `${l?.rtt.p50 === undefined ? '' : `, RTT p50/p99 ${l.rtt.p50}/${l.rtt.p99} us`}`;
  process.stderr.write(`[bench:dataplane] ${label}: ${what}\n`);
}

/** Hard bound on the whole run: every step's own bound, summed, and a minute. */
function budgetMs(o: Options): number {
  const targets = o.servers.length + 1;
  const perRun = 45_000;
  const cost = o.rounds * targets * (perRun + (2000 * o.messages) / o.rate);
  const latency = o.latency ? o.rounds * targets * (perRun + (2000 * (o.latencyMessages + LATENCY_WARMUP)) / o.latencyRate) : 0;
  const rate = o.maxRate ? targets * o.rateSteps.length * (perRun + 2000 * o.rateSeconds) : 0;
  return 60_000 + cost + latency + rate;
}

async function rounds(ctx: DataplaneContext, o: Options, label: string, spec: LoadSpec, measureCpu: boolean, stop: () => boolean): Promise<RunResult[]> {
  const out: RunResult[] = [];
  for (let round = 1; round <= o.rounds; round++) {
    for (const target of ['direct', ...o.servers] as Target[]) {
      if (stop()) return out;
      const r = await runOnce(ctx, target, spec, label, round, measureCpu);
      progress(`${label} round ${round}/${o.rounds} ${target}`, r);
      out.push(r);
    }
  }
  return out;
}

async function rateSearch(ctx: DataplaneContext, o: Options, stop: () => boolean): Promise<RateSearch[]> {
  const out: RateSearch[] = [];
  for (const target of ['direct', ...o.servers] as Target[]) {
    const steps: RateSearch['steps'][number][] = [];
    for (const offered of o.rateSteps) {
      if (stop()) break;
      const spec = { sessions: o.sessions, rate: offered, count: offered * o.rateSeconds, size: o.size, warmup: 0 };
      const run = await runOnce(ctx, target, spec, `rate-${offered}`, 1, false);
      progress(`max rate ${target} ${offered} msg/s`, run);
      const lossless = run.ok && run.lost === 0 && run.load?.sendErrors === 0;
      const generatorLimited = run.load !== undefined && run.load.achievedRate < 0.98 * offered;
      steps.push({ offered, run, lossless, generatorLimited });
      if (!lossless) break;
    }
    out.push({ target, steps });
  }
  return out;
}

async function main(): Promise<number> {
  const o = parseOptions(process.argv.slice(2));
  if (typeof process.getuid === 'function' && process.getuid() !== 0) throw new Error('bench:dataplane needs root (network namespaces, the eBPF program)');
  requireCommands(['ip', 'ethtool', ...(o.servers.includes('coturn') ? ['turnserver'] : [])]);
  const repoRoot = findRepoRoot();
  const resultsDir = join(repoRoot, 'bench', 'results');
  const logDir = join(resultsDir, 'logs', 'dataplane');
  mkdirSync(logDir, { recursive: true });
  const loadgen = buildLoadgen(repoRoot);
  const anyturnCli = fileURLToPath(new URL('../src/cli.js', import.meta.url));
  const floorScript = fileURLToPath(new URL('./floor-forwarder.js', import.meta.url));
  const anyturnHasDataplane = hasDataplaneFlag(anyturnCli);
  const irqTime = irqTimeAccounting();
  const scratchDir = mkdtempSync(join(tmpdir(), 'anyturn-bench-dataplane-'));
  const group = new ProcessGroup();
  const signals = stopOnSignals(group, scratchDir);
  const stop = (): boolean => signals.interrupted;
  const budget = budgetMs(o);
  const watchdog = startWatchdog(group, budget, `bench:dataplane exceeded ${budget} ms; stopping`);
  const topo = await BenchTopology.build(o.txChecksumOff);
  let cost: RunResult[] = [];
  let latency: RunResult[] = [];
  let rates: RateSearch[] = [];
  try {
    const peer = await startEcho(group, topo, loadgen);
    const ctx: DataplaneContext = { group, topo, loadgen, peer, scratchDir, logDir, anyturnCli, floorScript, anyturnHasDataplane };
    // One untimed second of the direct load first: the first run after the namespaces are
    // built would otherwise pay for cold caches and first-touch page faults in every process.
    progress(
      'warm-up direct',
      await runOnce(ctx, 'direct', { sessions: o.sessions, rate: o.rate, count: o.rate, size: o.size, warmup: 0 }, 'warmup', 0, false),
    );
    cost = await rounds(ctx, o, 'cost', { sessions: o.sessions, rate: o.rate, count: o.messages, size: o.size, warmup: 0 }, true, stop);
    if (o.latency) {
      const spec = { sessions: 1, rate: o.latencyRate, count: o.latencyMessages + LATENCY_WARMUP, size: o.size, warmup: LATENCY_WARMUP };
      latency = await rounds(ctx, o, 'latency', spec, false, stop);
    }
    if (o.maxRate) rates = await rateSearch(ctx, o, stop);
  } finally {
    await group.stopAll();
    topo.teardown();
    rmSync(scratchDir, { recursive: true, force: true });
    clearTimeout(watchdog);
  }

  const summary = summarize(o.servers, cost, latency, rates, o.rounds);
  const lines = ['kernel data plane benchmark (bench/dataplane.ts)', ...methodNotes(o, irqTime).map((n) => `  ${n}`)];
  if (!anyturnHasDataplane) lines.push('  this build of anyturn has no --dataplane: anyturn-kernel is n/a, anyturn-js is anyturn as built');
  lines.push('', 'cost runs (CPU in ms during the load, by who spent it):', runsTable(cost));
  const noisy = cost.filter((r) => r.cpu !== undefined && r.cpu.otherMs > 0.05 * Math.abs(r.cpu.totalMs));
  if (noisy.length > 0) {
    lines.push(
      `WARNING: in ${noisy.length} of ${cost.length} runs other processes used over 5 % of the CPU counted: the machine was not quiet; do not use these relay costs`,
    );
  }
  if (latency.length > 0) {
    lines.push(
      '',
      `latency runs: 1 session, ${o.latencyRate} msg/s, ${o.latencyMessages} timed after ${LATENCY_WARMUP}; added = RTT through the relay - RTT direct, same round, same percentile`,
    );
    lines.push(latencyTable(latency));
  }
  if (rates.length > 0) {
    lines.push(
      '',
      `max lossless rate: ${o.sessions} sessions, ${o.rateSeconds} s per step, a fresh server per step, stops at the first step that loses a message;`,
    );
    lines.push('  "generator limit": the generator sent under 98 % of the offer (then the figure bounds the generator, not the relay)');
    lines.push(rateTable(rates));
  }
  lines.push(
    '',
    'summary (relay cost: median over rounds; ratio to coturn below 1 = cheaper):',
    ...summaryTable(
      summary,
      rates.find((r) => r.target === 'direct'),
    ),
  );
  if (o.rounds > 1) lines.push('', ...roundsLines(summary, o.rounds));
  console.log(lines.join('\n'));

  const out = join(resultsDir, 'dataplane.json');
  const json = {
    generatedAt: new Date().toISOString(),
    options: o,
    host: { node: process.version, kernel: commandOutput('uname', ['-r']), coturn: commandOutput('turnserver', ['--version']), irqTimeAccounting: irqTime },
    method: methodNotes(o, irqTime),
    summary,
    cost,
    latency,
    maxLosslessRate: rates,
  };
  writeFileSync(out, `${JSON.stringify(json, null, 2)}\n`);
  console.log(`\nJSON: ${relative(process.cwd(), out)}; logs: ${relative(process.cwd(), logDir)}/`);
  const failed = [...cost, ...latency, ...rates.flatMap((r) => r.steps.map((s) => s.run))].some((r) => !r.ok && !r.skipped);
  return failed || stop() ? 1 : 0;
}

runMain(main);

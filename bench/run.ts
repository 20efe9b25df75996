// npm run bench: the same turnutils_uclient load against anyturn, coturn and the
// floor (bench/floor-forwarder.ts, a minimal relay in plain Node), each server pinned
// to one core, and server CPU per relayed packet compared; then a latency probe
// (bench/latency.ts) and a 'max lossless rate' search per server.
//
// Usage: node dist/bench/run.js [--only anyturn|coturn|floor] [--cases channel,send,...]
//                               [-n N] [--rounds N] [--no-latency] [--no-rate] [--rate-steps 40,60,80,100]
//
// --rounds N runs every case N times, the servers taking turns within each round; the
// table shows each server's median run, and the ratios of every round are printed too
// (one run on a shared VM moves by 10-20 %).
//
// All traffic stays on 127.0.0.1. Every spawned process is stopped at the end,
// on failure and on Ctrl-C; each step has a timeout.
//
// This file is the orchestration; the parts live in bench/run/: options.ts (the command
// line), placement.ts (cores), servers.ts (starting a server), measure.ts (one run),
// compare.ts (ratios, medians), latency.ts and rate.ts (the sections), report.ts (stdout).
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, relative } from 'node:path';
import { fileURLToPath } from 'node:url';

import { ProcessGroup, stopOnSignals, clkTck } from './processes.js';
import { freeUdpPort } from './net.js';
import { CASE_NAMES, defaultCases, rateCase, uclientTimeoutMs, type CaseName, type LoadCase } from './uclient.js';
import { DEFAULT_LATENCY_OPTIONS } from './latency.js';
import { CLIENT_CPU, SERVER_CPU, commandOutput, findRepoRoot, pinSelfToClientCpu, requireCommands, runMain, sleep, startWatchdog } from './host.js';
import { fmt } from './format.js';
import { parseOptions, type Options } from './run/options.js';
import { SCALING, onePlacement } from './run/placement.js';
import { READY_TIMEOUT_MS, type RunContext } from './run/servers.js';
import { runOne, type RunResult } from './run/measure.js';
import { medianRuns, ratios, roundRatios } from './run/compare.js';
import { runLatency, type LatencyReport } from './run/latency.js';
import { RATE_MESSAGES_PER_SESSION, runRate, type RateReport } from './run/rate.js';
import { METHOD_NOTES, report, roundsReport, scalingReport } from './run/report.js';

/** Hard bound on the whole run: every step's own timeout, summed, and a minute. */
function budgetMs(options: Options, cases: Record<CaseName, LoadCase>, rateMessages: number): number {
  const perServer = READY_TIMEOUT_MS + 10_000;
  const o = DEFAULT_LATENCY_OPTIONS;
  const latencyMs = options.latency ? options.servers.length * (perServer + 20_000 + ((o.count + o.warmup) * 1000) / o.ratePerSecond) : 0;
  const rateMs =
    options.rate || options.scaling
      ? options.rateSteps.length * (options.scaling ? SCALING.length : options.servers.length) * (perServer + uclientTimeoutMs(rateCase(1, rateMessages)))
      : 0;
  return (
    60_000 + latencyMs + rateMs + options.cases.reduce((sum, c) => sum + uclientTimeoutMs(cases[c]) + perServer, 0) * options.servers.length * options.rounds
  );
}

/** The main table's runs: every case, round by round, the servers taking turns. */
async function runCases(ctx: RunContext, options: Options, cases: Record<CaseName, LoadCase>, interrupted: () => boolean): Promise<RunResult[]> {
  const results: RunResult[] = [];
  for (const caseName of options.cases) {
    for (let round = 1; round <= options.rounds; round++) {
      for (const serverName of options.servers) {
        if (interrupted()) break;
        const c = cases[caseName];
        const roundText = options.rounds > 1 ? ` (round ${round}/${options.rounds})` : '';
        process.stderr.write(`[bench] ${caseName} / ${serverName}${roundText}: -n ${c.messagesPerSession} ... `);
        const r = await runOne(ctx, serverName, c);
        if (interrupted()) break;
        process.stderr.write(
          r.skipped
            ? `n/a (${r.failure ?? ''})\n`
            : r.ok
              ? `${r.received}/${r.sent} back, ${fmt(r.cpuMicrosPerRelayedPacket, 2)} us/pkt\n`
              : `FAILED: ${r.failure ?? ''}\n`,
        );
        results.push(options.rounds > 1 ? { ...r, round } : r);
      }
    }
  }
  return results;
}

/** --scaling: prints the section and writes scaling.json; the exit status. */
function finishScaling(scaling: RateReport, resultsDir: string, logDir: string): number {
  console.log(scalingReport(scaling).join('\n'));
  const out = join(resultsDir, 'scaling.json');
  writeFileSync(out, `${JSON.stringify({ generatedAt: new Date().toISOString(), node: process.version, scaling }, null, 2)}\n`);
  console.log(`\nJSON: ${relative(process.cwd(), out)}; logs: ${relative(process.cwd(), logDir)}/`);
  return scaling.servers.every((x) => x.steps.every((st) => st.result.ok)) ? 0 : 1;
}

interface Outcome {
  readonly results: RunResult[];
  readonly latency: LatencyReport | undefined;
  readonly rate: RateReport | undefined;
}

/** Prints the report, writes latest.json; the exit status. */
function finish(options: Options, cases: Record<CaseName, LoadCase>, { results, latency, rate }: Outcome, resultsDir: string, logDir: string): number {
  const shown = options.rounds > 1 ? medianRuns(results) : results;
  const rs = ratios(shown);
  console.log(report(shown, rs, cases, latency, rate));
  const perRound = options.rounds > 1 ? roundRatios(results) : undefined;
  if (perRound) console.log(`\n${roundsReport(perRound, options.rounds).join('\n')}`);
  const json = {
    generatedAt: new Date().toISOString(),
    method: METHOD_NOTES,
    host: {
      node: process.version,
      coturn: commandOutput('turnserver', ['--version']),
      clockTicksPerSecond: clkTck(),
      serverCpu: SERVER_CPU,
      clientCpu: CLIENT_CPU,
    },
    cases: options.cases.map((c) => cases[c]),
    rounds: options.rounds,
    /** Every run; with --rounds, `medianRuns` are the ones the table and the ratios use. */
    results,
    medianRuns: options.rounds > 1 ? shown : undefined,
    ratiosAnyturnOverCoturn: rs,
    ratiosPerRound: perRound,
    latency,
    maxLosslessRate: rate,
  };
  const out = join(resultsDir, 'latest.json');
  writeFileSync(out, `${JSON.stringify(json, null, 2)}\n`);
  console.log(`\nJSON: ${relative(process.cwd(), out)}; logs: ${relative(process.cwd(), logDir)}/`);
  const latencyOk = latency === undefined || latency.servers.every((s) => s.ok);
  const rateOk = rate === undefined || rate.servers.every((s) => s.steps.every((st) => st.result.ok));
  return results.every((r) => r.ok || r.skipped) && latencyOk && rateOk ? 0 : 1;
}

async function main(): Promise<number> {
  const options = parseOptions(process.argv.slice(2));
  requireCommands(['taskset', 'turnutils_uclient', 'turnutils_peer', ...(options.servers.includes('coturn') ? ['turnserver'] : [])]);
  // The orchestrator (and so the latency probe it runs) belongs with the load generators.
  pinSelfToClientCpu();
  const repoRoot = findRepoRoot();
  const resultsDir = join(repoRoot, 'bench', 'results');
  const logDir = join(resultsDir, 'logs');
  mkdirSync(logDir, { recursive: true });
  const scratchDir = mkdtempSync(join(tmpdir(), 'anyturn-bench-'));
  const anyturnCli = fileURLToPath(new URL('../src/cli.js', import.meta.url));
  const floorScript = fileURLToPath(new URL('./floor-forwarder.js', import.meta.url));

  const cases = defaultCases();
  if (options.messagesPerSession !== undefined) {
    for (const c of CASE_NAMES) cases[c] = { ...cases[c], messagesPerSession: options.messagesPerSession };
  }
  const rateMessages = options.messagesPerSession ?? RATE_MESSAGES_PER_SESSION;

  const group = new ProcessGroup();
  const signals = stopOnSignals(group, scratchDir);
  const interrupted = (): boolean => signals.interrupted;
  const budget = budgetMs(options, cases, rateMessages);
  const watchdog = startWatchdog(group, budget, `benchmark exceeded ${budget} ms; stopping`);

  let outcome: Outcome;
  try {
    // turnutils_peer echoes on its port and the next one (RTCP); it binds both.
    const peerPort = await freeUdpPort(1);
    const peer = group.start('peer', CLIENT_CPU, 'turnutils_peer', ['-L', '127.0.0.1', '-p', String(peerPort)]);
    await sleep(300);
    if (peer.hasExited()) throw new Error(`turnutils_peer exited: ${peer.tail().join('\n')}`);
    const ctx: RunContext = { group, peerPort, scratchDir, logDir, repoRoot, anyturnCli, floorScript };

    if (options.scaling) return finishScaling(await runRate(ctx, SCALING, options.rateSteps, rateMessages, interrupted), resultsDir, logDir);

    const results = await runCases(ctx, options, cases, interrupted);
    const latency = options.latency && !signals.interrupted ? await runLatency(ctx, options.servers, interrupted) : undefined;
    const rate =
      options.rate && !signals.interrupted
        ? await runRate(
            ctx,
            options.servers.map((server) => ({ server, placement: onePlacement(server) })),
            options.rateSteps,
            rateMessages,
            interrupted,
          )
        : undefined;
    outcome = { results, latency, rate };
  } finally {
    await group.stopAll();
    rmSync(scratchDir, { recursive: true, force: true });
    clearTimeout(watchdog);
  }
  return finish(options, cases, outcome, resultsDir, logDir);
}

runMain(main);

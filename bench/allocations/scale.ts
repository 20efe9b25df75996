// node dist/bench/allocations.js --parts scale: one anyturn node at 1,000, 10,000, 100,000 ...
// live allocations (--live-sizes), in network namespaces (scale-topology.ts): what the node holds
// at each size (fds, RSS, V8 heap, kernel slab, BPF maps), the added latency on its relay path
// while allocations churn (at the smallest and the largest size), the Redis commands per
// allocation lifecycle (at the smallest size), and the start-up sync of a restarted node (at each
// size). Method and figures: docs/scaling.md, "At scale".
//
// Needs root (namespaces), iproute2, taskset, prlimit, redis-server (and ethtool with --kernel).
// Every process runs in the benchmark's own namespaces and is stopped, and the namespaces
// deleted, at the end, on failure and on Ctrl-C; each step has a timeout and the whole run a
// watchdog (--budget-minutes, 20 by default). Figures go to stdout and to
// bench/results/allocations-scale.json; the node's logs to bench/results/logs/scale/.
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, relative } from 'node:path';
import { spawnSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { performance } from 'node:perf_hooks';

import { ProcessGroup, stopOnSignals } from '../processes.js';
import { CLIENT_CPU, commandOutput, findRepoRoot, pinSelfToClientCpu, requireCommands, sleep, startWatchdog } from '../host.js';
import { SETTLE_MS } from './context.js';
import type { RedisHandle } from './redis.js';
import { PEER_ADDRESS, PEER_PORT, LISTENING_ADDRESS, rampAddressCount } from './scale-plan.js';
import { parseScaleOptions, type ScaleOptions } from './scale-options.js';
import { ScaleTopology } from './scale-topology.js';
import { LISTENING_PORT, commandLineOf, jsonLine, startBridge, startIn, startNode, startRedisInS, type NodeContext } from './scale-node.js';
import { latency, ramp, restart, sample, stopNode, storeOps, type ScaleContext } from './scale-measure.js';
import { perAllocation, reportScale, slabDelta, type ScaleResults, type SizeResult } from './scale-report.js';

/** Linux's default fs.nr_open: no process gets more open files than this. */
const NR_OPEN = 1_048_576;

/** The node's open-file limit: enough for one socket per allocation where permitted, else the bench's own hard limit. */
function nodeNofile(o: ScaleOptions): number {
  const largest = o.sizes[o.sizes.length - 1]!;
  const wanted = Math.min(NR_OPEN, Math.max(65_536, largest + 10_000));
  if (spawnSync('prlimit', [`--nofile=${wanted}:${wanted}`, 'true'], { stdio: 'ignore' }).status === 0) return wanted;
  const hard = Number(/^Max open files\s+\S+\s+(\d+)/m.exec(readFileSync('/proc/self/limits', 'utf8'))?.[1]);
  if (!Number.isInteger(hard) || hard <= 0) throw new Error('cannot read the open-file hard limit');
  console.error(
    `note: an open-file limit of ${wanted} is not permitted here; the node runs with ${hard}:${hard} (one socket per allocation fits ${hard} minus a few dozen)`,
  );
  return hard;
}

type Step = <T>(label: string, f: () => Promise<T>) => Promise<T | undefined>;

/** At one size: ramp, sample, then (where asked) latency, store operations, restart. */
async function atSize(ctx: ScaleContext, results: ScaleResults, step: Step, i: number, from: number, live: number): Promise<number | undefined> {
  const o = ctx.options;
  const size = o.sizes[i]!;
  const r = await step(`ramp ${from} -> ${size} live allocations`, () => ramp(ctx, from, size));
  if (r === undefined) return undefined;
  const nowLive = live + r.ok;
  await sleep(SETTLE_MS);
  const s = await step(`sample at ${nowLive}`, () => sample(ctx, nowLive));
  if (s === undefined) return undefined;
  const entry: SizeResult = { size, ramp: r, sample: s };
  results.sizes.push(entry);
  const last = i === o.sizes.length - 1;
  if (o.latency && (i === 0 || last)) {
    for (let round = 0; round < o.latencyRounds; round++) {
      const run = (i === 0 ? 0 : o.latencyRounds) + round;
      const l = await step(`latency at ${nowLive}, round ${round + 1} of ${o.latencyRounds}`, () => latency(ctx, nowLive, run));
      if (l) results.latency.push(l);
    }
  }
  if (i === 0 && o.lifecycles > 0) results.ops = await step(`${o.lifecycles} lifecycles at ${nowLive}`, () => storeOps(ctx, nowLive));
  if (o.sync) {
    const y = await step(`restart at ${nowLive}`, () => restart(ctx, nowLive));
    if (y === undefined) return undefined; // no node to go on with
    entry.sync = y;
  }
  return nowLive;
}

async function runSizes(ctx: ScaleContext, results: ScaleResults, step: Step, stop: () => boolean): Promise<void> {
  await sleep(SETTLE_MS);
  results.baseline = { start: ctx.node.start, sample: await sample(ctx, 0) };
  let from = 0;
  let live = 0;
  for (let i = 0; i < ctx.options.sizes.length && !stop(); i++) {
    const next = await atSize(ctx, results, step, i, from, live);
    if (next === undefined) break;
    from = ctx.options.sizes[i]!; // pairs are never reused: the next ramp starts after this one's
    live = next;
  }
}

function makeStep(results: ScaleResults, stop: () => boolean): Step {
  return async (label, f) => {
    if (stop()) return undefined;
    process.stderr.write(`[bench:allocations scale] ${label} ... `);
    const t0 = performance.now();
    try {
      const r = await f();
      process.stderr.write(`done in ${((performance.now() - t0) / 1000).toFixed(1)} s\n`);
      return r;
    } catch (err) {
      const msg = err instanceof Error ? err.message : String(err);
      process.stderr.write(`FAILED: ${msg}\n`);
      results.failures.push(`${label}: ${msg}`);
      return undefined;
    }
  };
}

/** The processes every measure needs: redis-server, the ops bridge, the echo peer, the first node. */
async function setUp(nctx: NodeContext, driverScript: string, logDir: string): Promise<ScaleContext> {
  const redis: RedisHandle = await startRedisInS(nctx);
  const opsSocket = await startBridge(nctx);
  const peer = { address: PEER_ADDRESS, port: PEER_PORT };
  const echo = startIn(nctx, 'P', 'echo', CLIENT_CPU, process.execPath, [nctx.probeScript, 'echo', JSON.stringify({ bind: peer })]);
  await jsonLine(echo, 'ready', 10_000);
  const node = await startNode(nctx, opsSocket, 'node-1');
  return { ...nctx, driverScript, logDir, redis, opsSocket, server: { address: LISTENING_ADDRESS, port: LISTENING_PORT }, peer, node, starts: 1 };
}

function writeJson(file: string, o: ScaleOptions, results: ScaleResults, commandLine: string, nofile: number): void {
  const base = results.baseline?.sample;
  const json = {
    generatedAt: new Date().toISOString(),
    host: {
      node: process.version,
      kernel: commandOutput('uname', ['-r']),
      redis: commandOutput('redis-server', ['--version']),
      cpus: commandOutput('nproc'),
      nofile,
    },
    options: o,
    commandLine,
    baseline: results.baseline,
    sizes: results.sizes.map((s) => ({
      ...s,
      perAllocation: base === undefined ? undefined : perAllocation(base, s.sample),
      kernelSlabAfterSync: base === undefined || s.sync === undefined ? undefined : slabDelta(base.slab, s.sync.after.slab),
    })),
    latency: results.latency,
    storeOps: results.ops,
    failures: results.failures,
  };
  // The raw /proc/slabinfo maps are only the inputs of the deltas above.
  writeFileSync(file, `${JSON.stringify(json, (k, v: unknown) => (k === 'slab' ? undefined : v), 2)}\n`);
}

export async function runScaleBench(argv: readonly string[]): Promise<number> {
  const o = parseScaleOptions(argv);
  if (typeof process.getuid === 'function' && process.getuid() !== 0) throw new Error('--parts scale needs root (network namespaces)');
  requireCommands(['ip', 'taskset', 'prlimit', 'redis-server', ...(o.kernel ? ['ethtool'] : [])]);
  const repoRoot = findRepoRoot();
  const resultsDir = join(repoRoot, 'bench', 'results');
  const logDir = join(resultsDir, 'logs', 'scale');
  mkdirSync(logDir, { recursive: true });
  pinSelfToClientCpu();
  const nofile = nodeNofile(o);
  const scratchDir = mkdtempSync(join(tmpdir(), 'anyturn-bench-scale-'));
  const group = new ProcessGroup();
  const signals = stopOnSignals(group, scratchDir);
  const stop = (): boolean => signals.interrupted;
  const budgetMs = o.budgetMinutes * 60_000;
  const watchdog = startWatchdog(group, budgetMs, `the scale part exceeded ${budgetMs / 1000} s; stopping`);
  const results: ScaleResults = { baseline: undefined, sizes: [], latency: [], ops: undefined, failures: [] };
  const step = makeStep(results, stop);
  let topo: ScaleTopology | undefined;
  let ctx: ScaleContext | undefined;
  let commandLine = '';
  const t0 = performance.now();
  try {
    const largest = o.sizes[o.sizes.length - 1]!;
    topo = await ScaleTopology.build({
      rampAddresses: rampAddressCount(largest, o.portsPerAddress),
      relayAddresses: o.relayIps,
      txChecksumOff: o.kernel,
      scratchDir,
    });
    const nctx: NodeContext = {
      group,
      topo,
      options: o,
      scratchDir,
      anyturnCli: fileURLToPath(new URL('../../src/cli.js', import.meta.url)),
      probeScript: fileURLToPath(new URL('./scale-probe.js', import.meta.url)),
      nofile,
    };
    commandLine = commandLineOf(nctx);
    ctx = await step('namespaces built; redis-server, echo peer and the first node', () =>
      setUp(nctx, fileURLToPath(new URL('./scale-driver.js', import.meta.url)), logDir),
    );
    if (ctx !== undefined) await runSizes(ctx, results, step, stop);
  } finally {
    if (ctx !== undefined) {
      await stopNode(ctx, ctx.node, 'SIGTERM').catch(() => undefined);
      ctx.redis.client.disconnect();
    }
    await group.stopAll();
    await topo?.teardown();
    rmSync(scratchDir, { recursive: true, force: true });
    clearTimeout(watchdog);
  }
  console.log([...reportScale(results, o, commandLine, nofile), '', `total ${((performance.now() - t0) / 1000).toFixed(0)} s`].join('\n'));
  const file = join(resultsDir, 'allocations-scale.json');
  writeJson(file, o, results, commandLine, nofile);
  console.log(`JSON: ${relative(process.cwd(), file)}; node logs: ${relative(process.cwd(), logDir)}/`);
  return results.failures.length === 0 ? 0 : 1;
}

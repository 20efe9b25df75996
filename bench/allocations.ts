// npm run bench:allocations: what an allocation costs, with anyturn on the memory
// store, anyturn on Redis, and coturn side by side.
//
//   1. allocation rate with authentication (Allocate with its 401 round trip,
//      CreatePermission, ChannelBind) from concurrent client sockets;
//   2. memory (VmRSS) and open file descriptors per allocation at 10,000 live ones,
//      kernel slab per UDP socket, and (2b) how full a 1,000-port relay range gets;
//   3. start-up sync of a restarted anycast-relay node over the allocations in Redis;
//   4. Redis commands per allocation lifecycle (INFO commandstats, MONITOR), and what
//      hearing the event channel costs a node and Redis;
//   5. event deliveries per lifecycle in forward mode with 1, 2 and 4 nodes on one Redis
//      (--feed-baseline DIST_DIR measures another build, e.g. main's, beside this one).
//
// docs/scaling.md explains the method and the figures.
//
// Usage: node dist/bench/allocations.js [--parts 1,2,3,4,5] [--allocations N] [--live N]
//                                       [--lifecycles N] [--workers N] [--feed-baseline DIST_DIR]
//                                       [--rate-baseline DIST_DIR] [--rounds N]
//        node dist/bench/allocations.js --parts scale [--live-sizes 1000,10000,100000] ... (--help):
//        the scale part, in network namespaces (root), with a command line of its own
//        (bench/allocations/scale.ts).
//
// All traffic stays on 127.0.0.1. Every spawned process (servers, redis-server) is
// tracked and stopped at the end, on failure and on Ctrl-C; every step has a
// timeout and the whole run a watchdog. Figures go to stdout and to
// bench/results/allocations.json; server output to bench/results/logs/.//
// This file is the orchestration; the parts live in bench/allocations/: options.ts (the
// command line), context.ts (what the parts share), redis.ts, servers.ts (the servers under
// test), rate.ts (1) with floor-allocate.ts (part 1's Node floor), live.ts and slab.ts (2), fill.ts (2b), sync.ts (3), store-ops.ts and
// event-cost.ts (4), feed-fanout.ts (5), report.ts (stdout).
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, relative } from 'node:path';
import { spawnSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { performance } from 'node:perf_hooks';

import { ProcessGroup, stopOnSignals, nofileLimit } from './processes.js';
import { CountingPeer } from './turn-driver.js';
import { CLIENT_CPU, SERVER_CPU, commandOutput, findRepoRoot, pinSelfToClientCpu, requireCommands, runMain, startWatchdog } from './host.js';
import { RELAY_MAX, RELAY_MIN, parseOptions, type Options } from './allocations/options.js';
import { REDIS_CPU, type Context, type ServerKind } from './allocations/context.js';
import { runRate } from './allocations/rate.js';
import { runLive } from './allocations/live.js';
import { slabPerSocket } from './allocations/slab.js';
import { FILL_ATTEMPTS, FILL_PORTS, runFill } from './allocations/fill.js';
import { runSync } from './allocations/sync.js';
import { runStoreOps } from './allocations/store-ops.js';
import { FANOUT_NODES, reportFanout, runFanout } from './allocations/feed-fanout.js';
import { reportFill, reportLive, reportRate, reportStoreOps, reportSync, type Results } from './allocations/report.js';
import { isScaleRun } from './allocations/scale-options.js';
import { runScaleBench } from './allocations/scale.js';

/** Open-file limit asked for every server process (prlimit), so 10,000 relay sockets fit with
 *  room to spare; where raising the hard limit is not permitted (no CAP_SYS_RESOURCE, as in
 *  many containers), the servers get soft = hard = the bench's own hard limit instead. */
const WANTED_NOFILE = 65536;

/** Raises the bench's own open-file limit (room for 10,000+ client sockets); returns the servers' limit. */
function raiseNofile(): number {
  if (spawnSync('prlimit', [`--nofile=${WANTED_NOFILE}:${WANTED_NOFILE}`, 'true'], { stdio: 'ignore' }).status === 0) {
    spawnSync('prlimit', ['--pid', String(process.pid), `--nofile=${WANTED_NOFILE}:${WANTED_NOFILE}`], { stdio: 'ignore' });
    return WANTED_NOFILE;
  }
  const hard = Number(/^Max open files\s+\S+\s+(\d+)/m.exec(readFileSync('/proc/self/limits', 'utf8'))?.[1]);
  if (!Number.isInteger(hard) || hard <= 0) throw new Error('cannot read the open-file hard limit');
  console.error(`note: raising the open-file hard limit to ${WANTED_NOFILE} is not permitted here; servers run with ${hard}:${hard}`);
  return hard;
}

function warnIfEphemeralOverlapsRelay(): void {
  const ephemeral = readFileSync('/proc/sys/net/ipv4/ip_local_port_range', 'utf8').trim().split(/\s+/).map(Number);
  if ((ephemeral[0] ?? 0) <= RELAY_MAX && (ephemeral[1] ?? 0) >= RELAY_MIN) {
    console.error(
      `warning: ip_local_port_range ${ephemeral.join('-')} overlaps the relay range ${RELAY_MIN}-${RELAY_MAX}; client sockets may take relay ports`,
    );
  }
}

type Step = <T>(label: string, f: () => Promise<T>) => Promise<T | undefined>;

/** Parts 2 and 3: the live allocations per server, and node B's sync over the anycast run's records. */
async function runLiveAndSync(ctx: Context, options: Options, step: Step, results: Results): Promise<void> {
  if (options.parts.includes(2)) results.slab = await step('part 2: kernel memory per UDP socket', () => slabPerSocket(options.live));
  const kinds: ServerKind[] = options.parts.includes(2) ? ['anyturn-memory', 'anyturn-redis-anycast', 'coturn'] : ['anyturn-redis-anycast'];
  for (const kind of kinds) {
    const keepForSync = kind === 'anyturn-redis-anycast' && options.parts.includes(3);
    const r = await step(`part 2, ${kind}: ${options.live} live allocations`, () => runLive(ctx, kind, keepForSync));
    if (r === undefined) continue;
    if (options.parts.includes(2)) results.live.push(r.result);
    if (r.keep) {
      const keep = r.keep;
      const s = await step(`part 3: node B syncs ${r.result.ok} allocations`, () => runSync(ctx, keep));
      if (s) results.sync = s;
    }
  }
}

async function runParts(ctx: Context, options: Options, step: Step, results: Results): Promise<void> {
  if (options.parts.includes(1)) {
    // The floor (bench/allocations/floor-allocate.ts) beside anyturn and coturn; with
    // --rate-baseline another build's anyturn too, and with --rounds all of them again in turn.
    const kinds: ServerKind[] = ['anyturn-memory', 'anyturn-redis', 'floor', 'floor-shared', 'coturn'];
    if (options.rateBaseline !== undefined) kinds.unshift('anyturn-memory-baseline');
    for (let round = 1; round <= options.rounds; round++) {
      for (const kind of kinds) {
        const r = await step(`part 1${options.rounds > 1 ? ` round ${round}` : ''}, ${kind}: ${options.allocations} allocations`, () => runRate(ctx, kind));
        if (r) results.rate.push(r);
      }
    }
  }
  if (options.parts.includes(2) || options.parts.includes(3)) await runLiveAndSync(ctx, options, step, results);
  if (options.parts.includes(2)) {
    for (const kind of ['anyturn-memory', 'anyturn-redis-anycast', 'coturn'] as const) {
      const r = await step(`part 2b, ${kind}: ${FILL_ATTEMPTS} Allocates on ${FILL_PORTS} relay ports`, () => runFill(ctx, kind));
      if (r) results.fill.push(r);
    }
  }
  if (options.parts.includes(4)) {
    for (const kind of ['anyturn-redis', 'anyturn-redis-anycast'] as const) {
      const r = await step(`part 4, ${kind}: ${options.lifecycles} lifecycles`, () => runStoreOps(ctx, kind));
      if (r) results.storeOps.push(r);
    }
  }
  if (options.parts.includes(5)) await runFanoutPart(ctx, options, step, results);
}

/** Part 5: this build, and the baseline build when given, with 1, 2 and 4 nodes. */
async function runFanoutPart(ctx: Context, options: Options, step: Step, results: Results): Promise<void> {
  const baselineCli = options.feedBaseline === undefined ? undefined : join(options.feedBaseline, 'src', 'cli.js');
  if (baselineCli !== undefined && !existsSync(baselineCli)) throw new Error(`--feed-baseline: ${baselineCli} does not exist`);
  const builds = baselineCli === undefined ? (['this'] as const) : (['baseline', 'this'] as const);
  for (const build of builds) {
    for (const nodes of FANOUT_NODES) {
      const r = await step(`part 5, ${build} build, ${nodes} forward-mode node(s): ${options.lifecycles} lifecycles`, () =>
        runFanout(ctx, build, nodes, baselineCli),
      );
      if (r) results.fanout.push(r);
    }
  }
}

/** Prints the report and writes allocations.json; the exit status. */
function finish(options: Options, results: Results, serverNofile: number, totalMs: number, resultsDir: string, logDir: string): number {
  const out: string[] = [];
  out.push(
    `anyturn allocation benchmark (node ${process.version}, ${commandOutput('turnserver', ['--version']) ? `coturn ${commandOutput('turnserver', ['--version'])}` : 'coturn ?'}, ${commandOutput('redis-server', ['--version']).split(' ').slice(0, 3).join(' ')}); all on 127.0.0.1`,
  );
  if (results.rate.length > 0) out.push('', ...reportRate(results.rate, options));
  if (results.live.length > 0) out.push('', ...reportLive(results.live, results.slab, options, serverNofile));
  if (results.fill.length > 0) out.push('', ...reportFill(results.fill));
  if (results.sync) out.push('', ...reportSync(results.sync));
  if (results.storeOps.length > 0) out.push('', ...reportStoreOps(results.storeOps));
  if (results.fanout.length > 0) out.push('', ...reportFanout(results.fanout));
  if (results.failures.length > 0) out.push('', 'failures:', ...results.failures.map((f) => `  ${f}`));
  out.push('', `total ${(totalMs / 1000).toFixed(0)} s`);
  console.log(out.join('\n'));

  const json = {
    generatedAt: new Date().toISOString(),
    host: {
      node: process.version,
      coturn: commandOutput('turnserver', ['--version']),
      redis: commandOutput('redis-server', ['--version']),
      cpus: commandOutput('nproc'),
      serverCpu: SERVER_CPU,
      clientCpu: CLIENT_CPU,
      redisCpu: REDIS_CPU,
      relayPorts: `${RELAY_MIN}-${RELAY_MAX}`,
      serverNofile: serverNofile,
      benchNofile: nofileLimit(process.pid),
    },
    options,
    ...results,
  };
  const file = join(resultsDir, 'allocations.json');
  writeFileSync(file, `${JSON.stringify(json, null, 2)}\n`);
  console.log(`JSON: ${relative(process.cwd(), file)}; server logs: ${relative(process.cwd(), logDir)}/allocations-*.log`);
  return results.failures.length === 0 ? 0 : 1;
}

async function main(): Promise<number> {
  if (isScaleRun(process.argv.slice(2))) return runScaleBench(process.argv.slice(2));
  const options = parseOptions(process.argv.slice(2));
  requireCommands(['taskset', 'prlimit', 'turnserver', 'redis-server']);
  const repoRoot = findRepoRoot();
  const resultsDir = join(repoRoot, 'bench', 'results');
  const logDir = join(resultsDir, 'logs');
  mkdirSync(logDir, { recursive: true });
  const anyturnCli = fileURLToPath(new URL('../src/cli.js', import.meta.url));
  if (!existsSync(anyturnCli)) throw new Error(`${anyturnCli} does not exist (npm run build first)`);
  warnIfEphemeralOverlapsRelay();

  // The driver on CPU 0 (all its threads), and room for 10,000+ client sockets.
  pinSelfToClientCpu();
  const serverNofile = raiseNofile();

  const scratchDir = mkdtempSync(join(tmpdir(), 'anyturn-bench-alloc-'));
  const group = new ProcessGroup();
  const signals = stopOnSignals(group, scratchDir);
  const budgetMs = 10 * 60_000;
  const watchdog = startWatchdog(group, budgetMs, `benchmark exceeded ${budgetMs / 1000} s; stopping`);

  const peer = await CountingPeer.open();
  const ctx: Context = { group, scratchDir, logDir, repoRoot, anyturnCli, peer, options, stop: () => signals.interrupted, serverNofile };
  const results: Results = { rate: [], live: [], slab: undefined, fill: [], sync: undefined, storeOps: [], fanout: [], failures: [] };
  const step: Step = async (label, f) => {
    if (signals.interrupted) return undefined;
    process.stderr.write(`[bench:allocations] ${label} ... `);
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
  const t0 = performance.now();
  try {
    await runParts(ctx, options, step, results);
  } finally {
    await group.stopAll();
    peer.close();
    rmSync(scratchDir, { recursive: true, force: true });
    clearTimeout(watchdog);
  }
  return finish(options, results, serverNofile, performance.now() - t0, resultsDir, logDir);
}

runMain(main);

// The scale part's measurements (bench/allocations/scale.ts runs them at each size): the ramp
// to N live allocations, what the node holds then, the added latency on the relay path while
// allocations churn, the Redis commands per lifecycle, and a restart's start-up sync.
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { performance } from 'node:perf_hooks';

import { safeCpuMicros, processTree, type TrackedProcess } from '../processes.js';
import type { Endpoint, LatencySummary } from '../turn-driver.js';
import { CLIENT_CPU, sleep } from '../host.js';
import { SETTLE_MS } from './context.js';
import { commandCalls, countKeys, redisInfo, type RedisHandle } from './redis.js';
import { slabBytes } from './slab.js';
import { commandRows, startMonitor, type StoreOpsResult } from './store-ops.js';
import { CHURN_ADDRESS, DIRECT_PROBE_ADDRESS, LIFECYCLE_ADDRESS, RAMP_FIRST_PORT, RELAY_PROBE_ADDRESS, slices } from './scale-plan.js';
import {
  bpfMaps,
  commandLineOf,
  jsonLine,
  metricSum,
  processFigures,
  readMetrics,
  startIn,
  startNode,
  type BpfMaps,
  type NodeContext,
  type ProcessFigures,
  type RunningNode,
  type StartTiming,
} from './scale-node.js';
import type { ProbeConfig } from './scale-probe.js';

/** LIFETIME the ramp asks for: longer than any run (the watchdog ends one long before). */
export const RAMP_LIFETIME_S = 3600;
/** Seconds of churn held in the churn's ring. */
const CHURN_RING_SECONDS = 5;
const PROBE_SIZE = 100;

export interface ScaleContext extends NodeContext {
  readonly driverScript: string;
  readonly logDir: string;
  readonly redis: RedisHandle;
  readonly opsSocket: string;
  readonly server: Endpoint;
  readonly peer: Endpoint;
  /** The node now serving (a restart replaces it). */
  node: RunningNode;
  /** Nodes started so far (names the next one). */
  starts: number;
}

async function runDriver<T>(ctx: ScaleContext, name: string, script: string, mode: string, config: object, timeoutMs: number): Promise<T> {
  const p = startIn(ctx, 'C', name, CLIENT_CPU, process.execPath, [script, mode, JSON.stringify(config)]);
  try {
    return await jsonLine<T>(p, 'done', timeoutMs);
  } finally {
    await ctx.group.stop(p);
  }
}

interface CreateDone {
  readonly ok: number;
  readonly errors: string[];
  readonly retransmits: number;
}

export interface RampResult {
  readonly from: number;
  readonly to: number;
  readonly ok: number;
  readonly errors: string[];
  readonly seconds: number;
  readonly allocationsPerSecond: number;
  readonly serverCpuMicrosPerAllocation: number | undefined;
  readonly retransmits: number;
}

/** Ramp allocations [from, to), split over the driver processes. */
export async function ramp(ctx: ScaleContext, from: number, to: number): Promise<RampResult> {
  const o = ctx.options;
  const pid = ctx.node.proc.pid;
  const cpu0 = safeCpuMicros(pid);
  const t0 = performance.now();
  const done = await Promise.all(
    slices(from, to, o.drivers).map((s, k) =>
      runDriver<CreateDone>(
        ctx,
        `ramp-${to}-${k}`,
        ctx.driverScript,
        'create',
        {
          server: ctx.server,
          peer: ctx.peer,
          lifetime: RAMP_LIFETIME_S,
          channel: o.channels,
          from: s.from,
          to: s.to,
          portsPerAddress: o.portsPerAddress,
          concurrency: o.driverConcurrency,
        },
        120_000 + (s.to - s.from) * 20,
      ),
    ),
  );
  const seconds = (performance.now() - t0) / 1000;
  const cpu1 = safeCpuMicros(pid);
  const ok = done.reduce((s, d) => s + d.ok, 0);
  return {
    from,
    to,
    ok,
    errors: done.flatMap((d) => d.errors),
    seconds,
    allocationsPerSecond: ok / seconds,
    serverCpuMicrosPerAllocation: cpu0 === undefined || cpu1 === undefined || ok === 0 ? undefined : (cpu1 - cpu0) / ok,
    retransmits: done.reduce((s, d) => s + d.retransmits, 0),
  };
}

export interface NodeSample {
  /** Ramp allocations the benchmark holds live at the node. */
  readonly live: number;
  readonly proc: ProcessFigures;
  readonly heapUsedBytes: number | undefined;
  readonly allocationsReported: number | undefined;
  /** /proc/slabinfo, cache -> bytes in active objects: host-wide. */
  readonly slab: Record<string, number> | undefined;
  readonly bpf: BpfMaps | undefined;
  readonly redisUsedMemory: number | undefined;
  readonly redisKeys: number | undefined;
}

export async function sample(ctx: ScaleContext, live: number): Promise<NodeSample> {
  const pid = ctx.node.proc.pid;
  // Slab first: reading /proc/PID/fd (here, and prom-client's on each /metrics scrape) fills
  // proc_inode_cache and dentry with an entry per descriptor read.
  const slab = slabBytes();
  const proc = processFigures(pid);
  const bpf = ctx.options.kernel ? bpfMaps(pid) : undefined;
  const m = await readMetrics(ctx.opsSocket);
  const memory = await redisInfo(ctx.redis, 'memory');
  return {
    live,
    proc,
    heapUsedBytes: metricSum(m, 'anyturn_process_nodejs_heap_size_used_bytes'),
    allocationsReported: metricSum(m, 'anyturn_allocations'),
    slab: slab === undefined ? undefined : Object.fromEntries(slab),
    bpf,
    redisUsedMemory: Number(memory.get('used_memory')),
    redisKeys: await ctx.redis.client.dbsize(),
  };
}

export interface ProbeDone {
  readonly sent: number;
  readonly received: number;
  readonly lost: number;
  readonly rttMs: LatencySummary;
  readonly maxLagMs: number;
}

export interface ChurnDone {
  readonly seconds: number;
  readonly created: number;
  readonly deleted: number;
  readonly skipped: number;
  readonly errors: string[];
  readonly createMs: LatencySummary;
  readonly left: number;
}

export interface GcWindow {
  readonly seconds: number;
  /** By kind (major, minor, incremental, weakcb): collections, their total duration, and those over 10 ms. */
  readonly byKind: Record<string, { count: number; totalMs: number; over10ms: number }>;
}

const GC = 'anyturn_process_nodejs_gc_duration_seconds';

/** prom-client's GC histogram between two scrapes. */
function gcWindow(m0: Map<string, number>, m1: Map<string, number>, seconds: number): GcWindow {
  const byKind: GcWindow['byKind'] = {};
  for (const [key, v1] of m1) {
    if (!key.startsWith(GC)) continue;
    const kind = /kind="([^"]+)"/.exec(key)?.[1] ?? 'all';
    const d = v1 - (m0.get(key) ?? 0);
    const k = (byKind[kind] ??= { count: 0, totalMs: 0, over10ms: 0 });
    if (key.startsWith(`${GC}_count`)) {
      k.count += d;
      k.over10ms += d;
    } else if (key.startsWith(`${GC}_sum`)) k.totalMs += d * 1000;
    else if (key.startsWith(`${GC}_bucket`) && /le="0\.01"/.test(key)) k.over10ms -= d;
  }
  return { seconds, byKind };
}

export interface LatencyResult {
  readonly live: number;
  readonly direct: ProbeDone | undefined;
  readonly relay: ProbeDone | undefined;
  /** Relayed minus direct round trip, pair by pair (the two sent together), ms. */
  readonly added: LatencySummary | undefined;
  readonly churn: ChurnDone | undefined;
  readonly gc: GcWindow;
  readonly errors: string[];
}

async function startChurn(ctx: ScaleContext, run: number): Promise<TrackedProcess | undefined> {
  const o = ctx.options;
  if (o.churnRate === 0) return undefined;
  const ring = o.churnRate * CHURN_RING_SECONDS;
  // Each run its own block of ports, so a pair left by an earlier run is never reused.
  const config = {
    server: ctx.server,
    peer: ctx.peer,
    address: CHURN_ADDRESS,
    firstPort: RAMP_FIRST_PORT + (run % 2) * 25_000,
    ports: Math.min(25_000, 4 * ring + 1000),
    rate: o.churnRate,
    channel: o.channels,
    ring,
  };
  const p = startIn(ctx, 'C', `churn-${run}`, CLIENT_CPU, process.execPath, [ctx.driverScript, 'churn', JSON.stringify(config)], true);
  try {
    await jsonLine(p, 'ready', 60_000 + 2 * CHURN_RING_SECONDS * 1000);
  } catch (err) {
    await ctx.group.stop(p); // no churn going on behind the next measures
    throw err;
  }
  return p;
}

/** Added latency at light load on the relay path (Send/Data indications), while allocations churn. */
export async function latency(ctx: ScaleContext, live: number, run: number): Promise<LatencyResult> {
  const o = ctx.options;
  const errors: string[] = [];
  const churnProc = await startChurn(ctx, run);
  let churn: ChurnDone | undefined;
  let direct: ProbeDone | undefined;
  let relay: ProbeDone | undefined;
  let added: LatencySummary | undefined;
  const m0 = await readMetrics(ctx.opsSocket);
  const t0 = performance.now();
  try {
    const warmup = o.probeRate; // one second
    const base = { server: ctx.server, peer: ctx.peer, rate: o.probeRate, count: o.probeRate * o.probeSeconds + warmup, warmup, size: PROBE_SIZE };
    const timeoutMs = 60_000 + 2000 * o.probeSeconds;
    // One process sends both at the same moments (bench/allocations/scale-probe.ts).
    const port = 40_000 + run;
    const config: ProbeConfig = { ...base, bind: { address: RELAY_PROBE_ADDRESS, port }, directBind: { address: DIRECT_PROBE_ADDRESS, port } };
    const done = await runDriver<{ relay: ProbeDone; direct: ProbeDone; addedMs: LatencySummary }>(
      ctx,
      `probe-${run}`,
      ctx.probeScript,
      'probe',
      config,
      timeoutMs,
    ).catch((err: unknown) => {
      errors.push(`probe: ${err instanceof Error ? err.message : String(err)}`);
      return undefined;
    });
    direct = done?.direct;
    relay = done?.relay;
    added = done?.addedMs;
  } finally {
    if (churnProc !== undefined) {
      churnProc.child.stdin?.write('stop\n');
      churn = await jsonLine<ChurnDone>(churnProc, 'done', 60_000).catch((err: unknown) => {
        errors.push(`churn: ${err instanceof Error ? err.message : String(err)}`);
        return undefined;
      });
      await ctx.group.stop(churnProc);
    }
  }
  const seconds = (performance.now() - t0) / 1000;
  const gc = gcWindow(m0, await readMetrics(ctx.opsSocket), seconds);
  return { live, direct, relay, added, churn, gc, errors };
}

interface LifecycleDone {
  readonly ok: number;
  readonly errors: string[];
  readonly latencyMs: LatencySummary;
}

export interface ScaleOpsResult {
  readonly live: number;
  readonly ops: StoreOpsResult;
  /** PUBSUB NUMSUB of the event channel at the end. */
  readonly subscribers: number | undefined;
  /** Events the node says it received (anyturn_store_events_received_total, where the build has it), per lifecycle. */
  readonly eventsHeardPerLifecycle: number | undefined;
}

/** Part 4's measure at scale: INFO commandstats and MONITOR around `lifecycles` lifecycles from C. */
export async function storeOps(ctx: ScaleContext, live: number): Promise<ScaleOpsResult> {
  const redis = ctx.redis;
  await redis.client.config('RESETSTAT');
  const b0 = performance.now();
  await sleep(3000);
  const bg = await commandCalls(redis);
  const bgSeconds = (performance.now() - b0) / 1000;
  const m = await startMonitor(redis);
  try {
    await sleep(200);
    await redis.client.config('RESETSTAT');
    m.issued.clear();
    m.inScripts.clear();
    m.eventBytes.clear();
    const e0 = metricSum(await readMetrics(ctx.opsSocket), 'anyturn_store_events_received_total');
    const w0 = performance.now();
    const count = ctx.options.lifecycles;
    const config = { server: ctx.server, peer: ctx.peer, address: LIFECYCLE_ADDRESS, firstPort: RAMP_FIRST_PORT, count, concurrency: 8 };
    const done = await runDriver<LifecycleDone>(ctx, 'lifecycles', ctx.driverScript, 'lifecycle', config, 120_000 + count * 100);
    await sleep(1200); // one engine tick (1 s): anything written later than the response shows up
    const calls = await commandCalls(redis);
    const windowSeconds = (performance.now() - w0) / 1000;
    const ok = done.ok;
    const rows = commandRows(calls, m, bg, bgSeconds, windowSeconds, ok);
    m.monitor.disconnect(); // before the benchmark's own commands below
    const subs = (await redis.client.pubsub('NUMSUB', 'anyturn:events')) as [string, number | string];
    const e1 = metricSum(await readMetrics(ctx.opsSocket), 'anyturn_store_events_received_total');
    const avgEventBytes: Record<string, number> = {};
    for (const [t, e] of m.eventBytes) avgEventBytes[t] = e.bytes / e.n;
    const background: Record<string, number> = {};
    for (const [k, v] of bg) background[k] = v / bgSeconds;
    const ops: StoreOpsResult = {
      eventCost: undefined,
      kind: 'anyturn-redis-anycast',
      lifecycles: count,
      ok,
      errors: done.errors,
      windowSeconds,
      rows,
      roundTripsPerLifecycle: rows.reduce((s, r) => s + r.issuedPerLifecycle, 0),
      commandsPerLifecycle: rows.reduce((s, r) => s + r.callsPerLifecycle, 0),
      publishesPerLifecycle: rows.find((r) => r.command === 'publish')?.callsPerLifecycle ?? 0,
      eventSubscribers: Number(subs[1]),
      avgEventBytes,
      latencyMs: done.latencyMs,
      background,
      commandLine: commandLineOf(ctx),
    };
    const heard = e0 === undefined || e1 === undefined || ok === 0 ? undefined : (e1 - e0) / ok;
    return { live, ops, subscribers: Number(subs[1]), eventsHeardPerLifecycle: heard };
  } finally {
    m.monitor.disconnect();
  }
}

/** Stops a node (SIGKILL: a crash) with whatever it started (the kernel data plane's helper), and keeps its log. */
export async function stopNode(ctx: ScaleContext, node: RunningNode, signal: 'SIGTERM' | 'SIGKILL'): Promise<void> {
  const children = node.proc.hasExited() ? [] : processTree(node.proc.pid).filter((p) => p !== node.proc.pid);
  if (signal === 'SIGKILL') {
    if (!node.proc.hasExited()) node.proc.child.kill('SIGKILL');
    await node.proc.exited;
  } else await ctx.group.stop(node.proc);
  for (const p of children) {
    try {
      process.kill(p, 'SIGKILL'); // orphans of the node (by pid, known to be its children)
    } catch {
      // gone with it
    }
  }
  writeFileSync(join(ctx.logDir, `allocations-scale-${node.name}.log`), `# ${commandLineOf(ctx)}\n${node.proc.output()}`);
}

export interface SyncResult {
  readonly live: number;
  readonly recordsInStore: number;
  readonly timing: StartTiming;
  /** The restarted node, settled. */
  readonly after: NodeSample;
}

/** SIGKILL the node, start a new one with the same flags on the same Redis, time it to serving. */
export async function restart(ctx: ScaleContext, live: number): Promise<SyncResult> {
  const recordsInStore = await countKeys(ctx.redis, 'anyturn:alloc:*');
  await stopNode(ctx, ctx.node, 'SIGKILL');
  ctx.node = await startNode(ctx, ctx.opsSocket, `node-${++ctx.starts}`, 120_000 + live * 2);
  await sleep(SETTLE_MS);
  return { live, recordsInStore, timing: ctx.node.start, after: await sample(ctx, live) };
}

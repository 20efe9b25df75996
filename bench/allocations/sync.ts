// Part 3: start-up sync of a restarted anycast-relay node over the allocations in Redis.
import { performance } from 'node:perf_hooks';

import type { TrackedProcess } from '../processes.js';
import { runPool, type AllocationClient } from '../turn-driver.js';
import { sleep } from '../host.js';
import { closeAll, distinct, type Context } from './context.js';
import { commandCalls, countKeys, stopRedis } from './redis.js';
import { anyturnMetrics, sample, startServer, stopServer, type ProcessSample, type ServerHandle } from './servers.js';
import type { LiveKeep } from './live.js';

const SYNC_TIMEOUT_MS = 120_000;
const PROBE_SAMPLE = 100;

export interface SyncResult {
  readonly recordsInStore: number;
  readonly adopted: number | undefined;
  readonly startToSyncLineMs: number | undefined;
  readonly startToReadyMs: number | undefined;
  readonly baselineStartToSyncLineMs: number | undefined;
  readonly baselineAdopted: number | undefined;
  readonly syncMs: number | undefined;
  /** From B's log: "redis connection ready" -> sync line. */
  readonly syncMsFromLog: number | undefined;
  readonly microsPerAllocation: number | undefined;
  readonly after: ProcessSample;
  readonly liveAllocationsReported: number | undefined;
  readonly probeSample: number;
  readonly probeRefreshOk: number;
  readonly probeRelayOk: number;
  readonly probeErrors: string[];
  /** INFO commandstats from just before B's start to its readiness. */
  readonly redisCallsDuringStart: Record<string, number>;
  readonly commandLine: string;
}

const SYNC_LINE = /anycast relay: took on the allocations in the store/;

/**
 * From B's own log: `adopted`, and the time from its last "redis connection ready"
 * line to the sync line (pino's timestamps, 1 ms resolution): the sync itself,
 * without Node's start-up.
 */
function syncLine(p: TrackedProcess): { adopted: number | undefined; logMs: number | undefined } {
  let readyAt: number | undefined;
  for (const line of p.tail()) {
    let j: { adopted?: unknown; time?: unknown; msg?: unknown };
    try {
      j = JSON.parse(line) as typeof j;
    } catch {
      continue;
    }
    const t = typeof j.time === 'string' ? Date.parse(j.time) : typeof j.time === 'number' ? j.time : NaN;
    if (j.msg === 'redis connection ready' && Number.isFinite(t)) readyAt = t;
    if (typeof j.msg === 'string' && SYNC_LINE.test(j.msg)) {
      return { adopted: typeof j.adopted === 'number' ? j.adopted : undefined, logMs: readyAt !== undefined && Number.isFinite(t) ? t - readyAt : undefined };
    }
  }
  return { adopted: undefined, logMs: undefined };
}

/** Starts node B in A's place and times until its sync line; returns ms (undefined if the line never came). */
async function startAndTimeSync(
  ctx: Context,
  keep: LiveKeep,
  name: string,
): Promise<{
  server: ServerHandle | undefined;
  lineMs: number | undefined;
  readyMs: number | undefined;
  adopted: number | undefined;
  logMs?: number;
  error?: string;
}> {
  const t0 = performance.now();
  let lineAt: number | undefined;
  let server: ServerHandle | undefined;
  try {
    server = await startServer(ctx, 'anyturn-redis-anycast', {
      redis: keep.redis,
      listeningPort: keep.listeningPort,
      meshPort: keep.meshPort,
      logLevel: 'info',
      name,
      readyTimeoutMs: SYNC_TIMEOUT_MS,
      // The line comes before the ops endpoint answers: watch for it from the spawn on.
      onSpawn: (p) =>
        void p.waitForLine(SYNC_LINE, SYNC_TIMEOUT_MS).then((ok) => {
          if (ok) lineAt = performance.now();
        }),
    });
  } catch (err) {
    return { server: undefined, lineMs: undefined, readyMs: undefined, adopted: undefined, error: err instanceof Error ? err.message : String(err) };
  }
  const readyMs = performance.now() - t0;
  for (let i = 0; i < 20 && lineAt === undefined; i++) await sleep(10);
  const fromLog = syncLine(server.proc);
  return { server, lineMs: lineAt === undefined ? undefined : lineAt - t0, readyMs, adopted: fromLog.adopted, logMs: fromLog.logMs };
}

/** Do the clients' allocations work on B? Refresh through B, and a Send indication to the peer. */
async function probeClients(
  ctx: Context,
  clients: readonly AllocationClient[],
): Promise<{ sample: number; refreshOk: number; relayOk: number; errors: string[] }> {
  const step = Math.max(1, Math.floor(clients.length / PROBE_SAMPLE));
  const probes = clients.filter((_, i) => i % step === 0).slice(0, PROBE_SAMPLE);
  const peer = ctx.peer.endpoint;
  const before = new Map(probes.map((c) => [c.relayed?.port ?? -1, ctx.peer.bySourcePort.get(c.relayed?.port ?? -1) ?? 0]));
  const refreshed = await runPool(probes.length, 8, async (i) => {
    await probes[i]!.refresh(600);
    return 1;
  });
  for (const c of probes) c.sendIndication(peer, Buffer.from('probe after restart'));
  await sleep(1000);
  let relayOk = 0;
  for (const c of probes) {
    const port = c.relayed?.port ?? -1;
    if ((ctx.peer.bySourcePort.get(port) ?? 0) > (before.get(port) ?? 0)) relayOk++;
  }
  return { sample: probes.length, refreshOk: refreshed.results.length, relayOk, errors: distinct(refreshed.errors) };
}

export async function runSync(ctx: Context, keep: LiveKeep): Promise<SyncResult> {
  let b: ServerHandle | undefined;
  try {
    // Node A dies (SIGKILL: a crash; SIGTERM would do as well, anycast nodes leave the records).
    await stopServer(ctx, keep.server, 'SIGKILL');
    const recordsInStore = await countKeys(keep.redis, 'anyturn:alloc:*');

    await keep.redis.client.config('RESETSTAT');
    const first = await startAndTimeSync(ctx, keep, 'sync-node-b');
    if (first.server === undefined) throw new Error(`node B did not start: ${first.error ?? ''}`);
    b = first.server;
    const startCalls = await commandCalls(keep.redis);
    const redisCallsDuringStart: Record<string, number> = {};
    for (const [k, v] of startCalls) if (k !== 'config|resetstat') redisCallsDuringStart[k] = v;
    const after = sample(b.proc.pid);
    const m = await anyturnMetrics(b);
    const probe = await probeClients(ctx, keep.clients);
    const commandLine = b.commandLine;
    await stopServer(ctx, b, 'SIGKILL');
    b = undefined;

    // Baseline: the same start with an empty store (Node start-up, Redis connect, membership).
    await keep.redis.client.flushall();
    const base = await startAndTimeSync(ctx, keep, 'sync-node-b-empty');
    if (base.server !== undefined) await stopServer(ctx, base.server, 'SIGKILL');

    const syncMs = first.lineMs !== undefined && base.lineMs !== undefined ? first.lineMs - base.lineMs : undefined;
    return {
      recordsInStore,
      adopted: first.adopted,
      startToSyncLineMs: first.lineMs,
      startToReadyMs: first.readyMs,
      baselineStartToSyncLineMs: base.lineMs,
      baselineAdopted: base.adopted,
      syncMs,
      syncMsFromLog: first.logMs,
      microsPerAllocation: syncMs !== undefined && first.adopted ? (1000 * syncMs) / first.adopted : undefined,
      after,
      liveAllocationsReported: m.allocations,
      probeSample: probe.sample,
      probeRefreshOk: probe.refreshOk,
      probeRelayOk: probe.relayOk,
      probeErrors: probe.errors,
      redisCallsDuringStart,
      commandLine,
    };
  } finally {
    await stopServer(ctx, b, 'SIGKILL');
    await closeAll(keep.clients);
    await stopRedis(ctx, keep.redis);
  }
}

// Part 4: Redis commands per allocation lifecycle (INFO commandstats, MONITOR), and
// what hearing the event channel costs a node and Redis.
import { performance } from 'node:perf_hooks';

import type { Redis } from 'ioredis';

import { AllocationClient, DriverStats, runPool, summarize, type LatencySummary } from '../turn-driver.js';
import { PASSWORD, USER } from '../servers.js';
import { sleep } from '../host.js';
import { CHANNEL, distinct, type Context } from './context.js';
import { commandCalls, type RedisHandle } from './redis.js';
import { startServer, withRig, type ServerHandle } from './servers.js';
import { measureEventCost, type EventCost } from './event-cost.js';

export interface CommandRow {
  readonly command: string;
  /** INFO commandstats calls in the window, minus the idle background for as long. */
  readonly callsPerLifecycle: number;
  /** From MONITOR: issued by anyturn (round trips) vs run inside its Lua scripts. */
  readonly issuedPerLifecycle: number;
  readonly inScriptsPerLifecycle: number;
  readonly rawCalls: number;
  readonly backgroundPerSecond: number;
}

export interface StoreOpsResult {
  readonly eventCost: EventCost | undefined;
  readonly kind: 'anyturn-redis' | 'anyturn-redis-anycast';
  readonly lifecycles: number;
  readonly ok: number;
  readonly errors: string[];
  readonly windowSeconds: number;
  readonly rows: CommandRow[];
  readonly roundTripsPerLifecycle: number;
  readonly commandsPerLifecycle: number;
  readonly publishesPerLifecycle: number;
  readonly eventSubscribers: number | undefined;
  readonly avgEventBytes: Record<string, number>;
  readonly latencyMs: LatencySummary;
  readonly background: Record<string, number>;
  readonly commandLine: string;
}

const BENCH_OWN_COMMANDS = new Set(['info', 'config|resetstat', 'monitor', 'ping', 'client|setname', 'client|info', 'dbsize', 'flushall', 'select']);

/** What MONITOR saw: commands issued by clients and run in Lua scripts, and the events published. */
export interface Monitored {
  readonly monitor: Redis;
  readonly issued: Map<string, number>;
  readonly inScripts: Map<string, number>;
  readonly eventBytes: Map<string, { n: number; bytes: number }>;
  readonly eventSamples: Map<string, string>;
}

export async function startMonitor(redis: RedisHandle): Promise<Monitored> {
  const monitor = await redis.client.monitor();
  monitor.on('error', () => undefined);
  const m: Monitored = { monitor, issued: new Map(), inScripts: new Map(), eventBytes: new Map(), eventSamples: new Map() };
  monitor.on('monitor', (_time: string, args: string[], source: string) => {
    const cmd = (args[0] ?? '').toLowerCase();
    const counts = source === 'lua' ? m.inScripts : m.issued;
    counts.set(cmd, (counts.get(cmd) ?? 0) + 1);
    if (cmd === 'publish' && args[2] !== undefined) {
      const type = /"type":"([a-z-]+)"/.exec(args[2])?.[1] ?? 'other';
      const e = m.eventBytes.get(type) ?? { n: 0, bytes: 0 };
      e.n++;
      e.bytes += Buffer.byteLength(args[2]);
      m.eventBytes.set(type, e);
      if (!m.eventSamples.has(type)) m.eventSamples.set(type, args[2]);
    }
  });
  return m;
}

/** Allocate (401 + auth), CreatePermission, ChannelBind, Refresh 600, Refresh 0, from concurrent sockets. */
function lifecycles(ctx: Context, server: ServerHandle, clients: AllocationClient[]): ReturnType<typeof runPool<number>> {
  const stats = new DriverStats();
  const peer = ctx.peer.endpoint;
  return runPool(
    ctx.options.lifecycles,
    ctx.options.workers,
    async () => {
      const c = await AllocationClient.open(server.endpoint, { username: USER, password: PASSWORD }, stats);
      clients.push(c);
      const t0 = performance.now();
      await c.allocate();
      await c.createPermission(peer);
      await c.channelBind(CHANNEL, peer);
      await c.refresh(600);
      await c.refresh(0);
      return performance.now() - t0;
    },
    ctx.stop,
  );
}

/** Per command: calls in the window less the idle background, per lifecycle; most called first. */
export function commandRows(
  calls: Map<string, number>,
  m: Monitored,
  bg: Map<string, number>,
  bgSeconds: number,
  windowSeconds: number,
  ok: number,
): CommandRow[] {
  const names = new Set([...calls.keys(), ...m.issued.keys(), ...m.inScripts.keys()]);
  const rows: CommandRow[] = [];
  for (const name of names) {
    if (BENCH_OWN_COMMANDS.has(name)) continue;
    const bgRate = (bg.get(name) ?? 0) / bgSeconds;
    const background = bgRate * windowSeconds;
    const raw = calls.get(name) ?? 0;
    const net = (x: number): number => Math.max(0, x - background) / Math.max(1, ok);
    const issuedNet = Math.max(0, (m.issued.get(name) ?? 0) - background) / Math.max(1, ok);
    rows.push({
      command: name,
      callsPerLifecycle: net(raw),
      issuedPerLifecycle: issuedNet,
      inScriptsPerLifecycle: (m.inScripts.get(name) ?? 0) / Math.max(1, ok),
      rawCalls: raw,
      backgroundPerSecond: bgRate,
    });
  }
  rows.sort((a, b) => b.callsPerLifecycle - a.callsPerLifecycle || a.command.localeCompare(b.command));
  return rows;
}

export function runStoreOps(ctx: Context, kind: 'anyturn-redis' | 'anyturn-redis-anycast'): Promise<StoreOpsResult> {
  return withRig(ctx, kind, 'ops', async (rig) => {
    const redis = rig.redis!;
    const server = (rig.server = await startServer(ctx, kind, { redis, name: `ops-${kind}` }));
    await sleep(1500);
    // Idle background (node heartbeats, event-channel heartbeats) per second.
    await redis.client.config('RESETSTAT');
    const b0 = performance.now();
    await sleep(3000);
    const bg = await commandCalls(redis);
    const bgSeconds = (performance.now() - b0) / 1000;

    let m: Monitored | undefined;
    try {
      m = await startMonitor(redis);
      await sleep(200);
      await redis.client.config('RESETSTAT');
      m.issued.clear();
      m.inScripts.clear();
      m.eventBytes.clear();
      const w0 = performance.now();
      const pool = await lifecycles(ctx, server, rig.clients);
      await sleep(1200); // one engine tick (1 s): anything written later than the response shows up
      const calls = await commandCalls(redis);
      const windowSeconds = (performance.now() - w0) / 1000;
      await sleep(100);
      const subs = (await redis.client.pubsub('NUMSUB', 'anyturn:events')) as [string, number];
      const ok = pool.results.length;
      const rows = commandRows(calls, m, bg, bgSeconds, windowSeconds, ok);
      const avgEventBytes: Record<string, number> = {};
      for (const [t, e] of m.eventBytes) avgEventBytes[t] = e.bytes / e.n;
      const background: Record<string, number> = {};
      for (const [k, v] of bg) if (!BENCH_OWN_COMMANDS.has(k)) background[k] = v / bgSeconds;
      m.monitor.disconnect(); // MONITOR would add to Redis's cost per publish
      const updated = m.eventSamples.get('updated');
      m = undefined;
      const eventCost = kind === 'anyturn-redis' && updated !== undefined ? await measureEventCost(redis, server, updated) : undefined;
      return {
        eventCost,
        kind,
        lifecycles: ctx.options.lifecycles,
        ok,
        errors: distinct(pool.errors),
        windowSeconds,
        rows,
        roundTripsPerLifecycle: rows.reduce((s, r) => s + r.issuedPerLifecycle, 0),
        commandsPerLifecycle: rows.reduce((s, r) => s + r.callsPerLifecycle, 0),
        publishesPerLifecycle: rows.find((r) => r.command === 'publish')?.callsPerLifecycle ?? 0,
        eventSubscribers: typeof subs[1] === 'number' ? subs[1] : Number(subs[1]),
        avgEventBytes,
        latencyMs: summarize(pool.results),
        background,
        commandLine: server.commandLine,
      };
    } finally {
      m?.monitor.disconnect();
    }
  });
}

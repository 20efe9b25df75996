// Part 5: event deliveries per allocation lifecycle in forward mode, by the number of
// nodes on one Redis (docs/scaling.md "The event feed"). 1, 2 and 4 forward-mode nodes
// on a fresh redis-server; --lifecycles lifecycles (Allocate with its 401,
// CreatePermission, ChannelBind, Refresh 600, Refresh 0), 8 at a time, all through the
// first node, as clients that are never rerouted. An observer (a plain subscriber of every
// event channel, old and new) counts the events published. Deliveries to the nodes:
// - this build: the sum over the nodes of anyturn_store_events_received_total;
// - a baseline build (--feed-baseline DIR: another build's dist, e.g. main's before the
//   per-allocation channels), which has no such counter: the events times the nodes
//   subscribed to its one event channel (PUBSUB NUMSUB): pub/sub delivers every message
//   of a channel to each of its subscribers.
import { performance } from 'node:perf_hooks';

import { Redis } from 'ioredis';

import { sleep } from '../host.js';
import { PASSWORD, USER } from '../servers.js';
import { AllocationClient, DriverStats, LOOPBACK, runPool } from '../turn-driver.js';
import { RELAY_MAX, RELAY_MIN } from './options.js';
import { CHANNEL, distinct, type Context } from './context.js';
import { startServer, stopServer, withRig, type ServerHandle } from './servers.js';

export const FANOUT_NODES = [1, 2, 4] as const;

export interface FanoutRow {
  /** 'this' build, or the 'baseline' given with --feed-baseline. */
  readonly build: 'this' | 'baseline';
  readonly nodes: number;
  readonly lifecycles: number;
  readonly ok: number;
  readonly errors: string[];
  /** Events published in the window (the observer's count). */
  readonly events: number;
  /** Events delivered to the anyturn nodes, all together. */
  readonly deliveries: number;
  /** Per node, first node (the one the clients use) first; baseline: every subscriber hears the same. */
  readonly perNode: number[];
  readonly how: 'counters' | 'numsub';
  readonly seconds: number;
}

/** anyturn_store_events_received_total of one node; undefined when the build has no such counter. */
async function eventsReceived(s: ServerHandle): Promise<number | undefined> {
  if (s.metricsPort === undefined) return undefined;
  const res = await fetch(`http://${LOOPBACK}:${s.metricsPort}/metrics`, { signal: AbortSignal.timeout(5000) });
  const text = await res.text();
  const line = text.split('\n').find((l) => l.startsWith('anyturn_store_events_received_total '));
  return line === undefined ? undefined : Number(line.slice(line.lastIndexOf(' ') + 1));
}

/** A subscriber of every event channel (the per-allocation ones and the one of old): counts what is published. */
async function observe(port: number): Promise<{ count: () => number; close: () => void }> {
  const sub = new Redis({ host: LOOPBACK, port, maxRetriesPerRequest: 1 });
  sub.on('error', () => undefined);
  let n = 0;
  sub.on('message', (channel: string) => {
    if (channel === 'anyturn:events') n++;
  });
  sub.on('pmessage', () => n++);
  await sub.psubscribe('anyturn:ev:{*');
  await sub.subscribe('anyturn:events');
  return { count: () => n, close: () => sub.disconnect() };
}

async function lifecycles(ctx: Context, server: ServerHandle, clients: AllocationClient[]) {
  const stats = new DriverStats();
  const peer = ctx.peer.endpoint;
  return await runPool(
    ctx.options.lifecycles,
    ctx.options.workers,
    async () => {
      const c = await AllocationClient.open(server.endpoint, { username: USER, password: PASSWORD }, stats);
      clients.push(c);
      await c.allocate();
      await c.createPermission(peer);
      await c.channelBind(CHANNEL, peer);
      await c.refresh(600);
      await c.refresh(0);
      return 0;
    },
    ctx.stop,
  );
}

/** One measurement: `nodes` forward-mode nodes of `build` on a fresh redis-server. */
export function runFanout(ctx: Context, build: 'this' | 'baseline', nodes: number, baselineCli: string | undefined): Promise<FanoutRow> {
  return withRig(ctx, 'anyturn-redis', `fanout-${build}-${nodes}`, async (rig) => {
    const redis = rig.redis!;
    const servers: ServerHandle[] = [];
    const slice = Math.floor((RELAY_MAX - RELAY_MIN + 1) / nodes);
    try {
      for (let i = 0; i < nodes; i++) {
        servers.push(
          await startServer(ctx, 'anyturn-redis', {
            redis,
            name: `fanout-${build}-${nodes}-${i}`,
            nodeId: `fanout-${i}`,
            relayPorts: { min: RELAY_MIN + i * slice, max: RELAY_MIN + (i + 1) * slice - 1 },
            ...(build === 'baseline' && baselineCli !== undefined ? { cli: baselineCli } : {}),
          }),
        );
      }
      const observer = await observe(redis.port);
      try {
        await sleep(1500); // every node's first heartbeat and subscription in place
        const before = await Promise.all(servers.map(eventsReceived));
        const e0 = observer.count();
        const t0 = performance.now();
        const pool = await lifecycles(ctx, servers[0]!, rig.clients);
        await sleep(1200); // one engine tick, and every event delivered
        const seconds = (performance.now() - t0) / 1000;
        const events = observer.count() - e0;
        const after = await Promise.all(servers.map(eventsReceived));
        const counted = after.every((a, i) => a !== undefined && before[i] !== undefined);
        let perNode: number[];
        if (counted) perNode = after.map((a, i) => a! - before[i]!);
        else {
          const subs = (await redis.client.pubsub('NUMSUB', 'anyturn:events')) as [string, number];
          const subscribers = Number(subs[1]) - 1; // less the observer
          perNode = servers.map((_, i) => (i < subscribers ? events : 0));
        }
        return {
          build,
          nodes,
          lifecycles: ctx.options.lifecycles,
          ok: pool.results.length,
          errors: distinct(pool.errors),
          events,
          deliveries: perNode.reduce((a, b) => a + b, 0),
          perNode,
          how: counted ? 'counters' : 'numsub',
          seconds,
        };
      } finally {
        observer.close();
      }
    } finally {
      for (const s of servers) await stopServer(ctx, s);
    }
  });
}

export function reportFanout(rows: readonly FanoutRow[]): string[] {
  const lines = [
    '5. Event deliveries per lifecycle in forward mode (Allocate with 401, CreatePermission, ChannelBind, Refresh 600, Refresh 0; every client on node 1)',
    '',
    '| build | nodes | ok | events / lifecycle | deliveries / lifecycle | per node (node 1 first) | counted by |',
    '|---|---:|---|---:|---:|---|---|',
  ];
  for (const r of rows) {
    const per = (n: number): string => (n / Math.max(1, r.ok)).toFixed(2);
    lines.push(
      `| ${r.build} | ${r.nodes} | ${r.ok}/${r.lifecycles} | ${per(r.events)} | ${per(r.deliveries)} | ${r.perNode.map(per).join(' / ')} | ${r.how === 'counters' ? 'anyturn_store_events_received_total' : 'PUBSUB NUMSUB x events'} |`,
    );
    if (r.errors.length > 0) lines.push(`  errors (${r.build}, ${r.nodes} nodes): ${r.errors.join('; ')}`);
  }
  return lines;
}

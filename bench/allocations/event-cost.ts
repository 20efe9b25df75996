// Part 4, the event channel: what hearing anyturn:events costs a node and Redis.
import { performance } from 'node:perf_hooks';

import { Redis } from 'ioredis';

import { safeCpuMicros } from '../processes.js';
import { LOOPBACK } from '../turn-driver.js';
import { sleep } from '../host.js';
import type { RedisHandle } from './redis.js';
import type { ServerHandle } from './servers.js';

export interface EventCost {
  readonly events: number;
  readonly ratePerSecond: number;
  readonly eventBytes: number;
  /** Subscribers that got each PUBLISH (the reply of PUBLISH). */
  readonly receiversPerPublish: number;
  /** anyturn's CPU per event it hears and has no allocation for (idle CPU subtracted). */
  readonly nodeMicrosPerEvent: number | undefined;
  /** redis-server's CPU per PUBLISH to that many subscribers (idle subtracted; pipelined). */
  readonly redisMicrosPerPublish: number | undefined;
  /** The same with EXTRA_SUBSCRIBERS more (plain ioredis subscribers in the bench process). */
  readonly wideSubscribers: number | undefined;
  readonly wideRedisMicrosPerPublish: number | undefined;
  /** (wide - narrow) / extra subscribers: Redis's cost of one more delivery. */
  readonly redisMicrosPerDelivery: number | undefined;
}

const EXTRA_SUBSCRIBERS = 19;

const EVENT_COST_EVENTS = 20_000;
const EVENT_COST_RATE = 5_000;

/**
 * What hearing the event channel costs a node: publishes copies of a real 'updated'
 * event (captured above, for an allocation that is gone, so the node only parses and
 * discards it, as a forward-mode node does for allocations it has not cached) at a
 * steady rate, and reads the node's and redis-server's CPU time around it.
 */
async function publishRun(
  redis: RedisHandle,
  server: ServerHandle,
  event: string,
): Promise<{ rate: number; receivers: number; nodeUs: number | undefined; redisUs: number | undefined }> {
  const idleMs = 2000;
  const n0 = safeCpuMicros(server.proc.pid);
  const r0 = safeCpuMicros(redis.proc.pid);
  await sleep(idleMs);
  const n1 = safeCpuMicros(server.proc.pid);
  const r1 = safeCpuMicros(redis.proc.pid);
  const batch = 50;
  const intervalMs = (1000 * batch) / EVENT_COST_RATE;
  let receivers = 0;
  const t0 = performance.now();
  for (let sent = 0; sent < EVENT_COST_EVENTS; sent += batch) {
    const p = redis.client.pipeline();
    for (let i = 0; i < batch; i++) p.publish('anyturn:events', event);
    const replies = (await p.exec()) ?? [];
    for (const [err, n] of replies) if (err === null) receivers += Number(n);
    const due = t0 + ((sent + batch) / batch) * intervalMs;
    const wait = due - performance.now();
    if (wait > 0) await sleep(wait);
  }
  await sleep(300);
  const windowMs = performance.now() - t0;
  const n2 = safeCpuMicros(server.proc.pid);
  const r2 = safeCpuMicros(redis.proc.pid);
  const net = (a: number | undefined, b: number | undefined, d: number | undefined): number | undefined =>
    a === undefined || b === undefined || d === undefined ? undefined : Math.max(0, d - b - ((b - a) * windowMs) / idleMs) / EVENT_COST_EVENTS;
  return { rate: EVENT_COST_EVENTS / (windowMs / 1000), receivers: receivers / EVENT_COST_EVENTS, nodeUs: net(n0, n1, n2), redisUs: net(r0, r1, r2) };
}

export async function measureEventCost(redis: RedisHandle, server: ServerHandle, event: string): Promise<EventCost> {
  const narrow = await publishRun(redis, server, event);
  const extra: Redis[] = [];
  let wide: Awaited<ReturnType<typeof publishRun>> | undefined;
  try {
    for (let i = 0; i < EXTRA_SUBSCRIBERS; i++) {
      const sub = new Redis({ host: LOOPBACK, port: redis.port, maxRetriesPerRequest: 1 });
      sub.on('error', () => undefined);
      extra.push(sub);
      await sub.subscribe('anyturn:events');
      sub.on('message', () => undefined);
    }
    wide = await publishRun(redis, server, event);
  } finally {
    for (const sub of extra) sub.disconnect();
  }
  return {
    events: EVENT_COST_EVENTS,
    ratePerSecond: narrow.rate,
    eventBytes: Buffer.byteLength(event),
    receiversPerPublish: narrow.receivers,
    nodeMicrosPerEvent: narrow.nodeUs,
    redisMicrosPerPublish: narrow.redisUs,
    wideSubscribers: wide?.receivers,
    wideRedisMicrosPerPublish: wide?.redisUs,
    redisMicrosPerDelivery:
      wide?.redisUs !== undefined && narrow.redisUs !== undefined && wide.receivers > narrow.receivers
        ? (wide.redisUs - narrow.redisUs) / (wide.receivers - narrow.receivers)
        : undefined,
  };
}

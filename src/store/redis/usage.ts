// The per-user bandwidth exchange on Redis (AllocationStore.exchangeUsage, turn/bandwidth.ts).
// One hash per user, <p>bw:{sha256(username)}: node id -> "up down untilMs" (bytes per
// second offered on that node in each direction, and when the report goes stale by the
// writer's clock). One script per user and exchange: it writes this node's field, drops
// stale fields, and returns the sum of the others'. The key's TTL (ttlMs) removes a user
// nobody reports any more. Cost: one EVALSHA per user with traffic per node per exchange
// (1 s), sent together (ioredis pipelines the concurrent calls on one connection).

import type { UsageReport, UsageTotals } from '../types.js';
import type { RedisClient } from './connection.js';
import type { KeySpace } from './keys.js';
import { USAGE_EXCHANGE } from './scripts.js';

function finite(value: unknown): number {
  const n = Number(value);
  return Number.isFinite(n) && n > 0 ? n : 0;
}

export async function exchangeUsage(
  client: RedisClient,
  keys: KeySpace,
  nodeId: string,
  reports: readonly UsageReport[],
  nowMs: number,
  ttlMs: number,
): Promise<UsageTotals[]> {
  const ttl = Math.max(1, Math.ceil(ttlMs));
  return await Promise.all(
    reports.map(async (report) => {
      const reply = (await USAGE_EXCHANGE.run(client, keys.bandwidth(report.username), nodeId, report.up, report.down, nowMs, nowMs + ttl, ttl)) as unknown[];
      return { up: finite(reply[0]), down: finite(reply[1]), upNodes: finite(reply[2]), downNodes: finite(reply[3]) };
    }),
  );
}

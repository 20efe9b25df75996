// A redis-server of the benchmark's own (loopback, no persistence), and what the
// benchmark reads from it: INFO sections, command counts, key counts.
import { mkdtempSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';

import { Redis } from 'ioredis';

import type { TrackedProcess } from '../processes.js';
import { freeTcpPort } from '../net.js';
import { LOOPBACK } from '../turn-driver.js';
import { sleep } from '../host.js';
import { READY_TIMEOUT_MS, REDIS_CPU, type Context } from './context.js';

export interface RedisHandle {
  readonly name: string;
  readonly proc: TrackedProcess;
  readonly port: number;
  readonly url: string;
  readonly client: Redis;
}

export async function startRedis(ctx: Context, name: string): Promise<RedisHandle> {
  const port = await freeTcpPort();
  const dir = mkdtempSync(join(ctx.scratchDir, `${name}-`));
  const proc = ctx.group.start(name, REDIS_CPU, 'redis-server', [
    '--port',
    String(port),
    '--bind',
    LOOPBACK,
    '--save',
    '',
    '--appendonly',
    'no',
    '--protected-mode',
    'no',
    '--dir',
    dir,
    '--loglevel',
    'warning',
  ]);
  const client = new Redis({ host: LOOPBACK, port, lazyConnect: true, maxRetriesPerRequest: 1, retryStrategy: () => null });
  client.on('error', () => undefined); // connect failures while it starts are retried below
  const deadline = Date.now() + READY_TIMEOUT_MS;
  for (;;) {
    if (proc.hasExited()) throw new Error(`redis-server exited: ${proc.tail().join('\n')}`);
    try {
      await client.connect();
      await client.ping();
      break;
    } catch (err) {
      client.disconnect();
      if (Date.now() > deadline) throw new Error(`redis-server not answering on ${port}: ${String(err)}`);
      await sleep(50);
    }
  }
  return { name, proc, port, url: `redis://${LOOPBACK}:${port}`, client };
}

export async function stopRedis(ctx: Context, r: RedisHandle | undefined): Promise<void> {
  if (r === undefined) return;
  r.client.disconnect();
  await ctx.group.stop(r.proc);
  writeFileSync(join(ctx.logDir, `allocations-${r.name}.log`), r.proc.output());
}

export async function redisInfo(r: RedisHandle, section: string): Promise<Map<string, string>> {
  const text = await r.client.info(section);
  const out = new Map<string, string>();
  for (const line of text.split('\r\n')) {
    const i = line.indexOf(':');
    if (i > 0 && !line.startsWith('#')) out.set(line.slice(0, i), line.slice(i + 1));
  }
  return out;
}

/** INFO commandstats as command -> calls. */
export async function commandCalls(r: RedisHandle): Promise<Map<string, number>> {
  const out = new Map<string, number>();
  for (const [k, v] of await redisInfo(r, 'commandstats')) {
    const m = /(?:^|,)calls=(\d+)/.exec(v);
    if (k.startsWith('cmdstat_') && m?.[1] !== undefined) out.set(k.slice('cmdstat_'.length), Number(m[1]));
  }
  return out;
}

export async function countKeys(r: RedisHandle, pattern: string): Promise<number> {
  let cursor = '0';
  let n = 0;
  do {
    const [next, keys] = await r.client.scan(cursor, 'MATCH', pattern, 'COUNT', 1000);
    cursor = next;
    n += keys.length;
  } while (cursor !== '0');
  return n;
}

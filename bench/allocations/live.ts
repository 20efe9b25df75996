// Part 2: memory and sockets per allocation at N live allocations.
import { nofileLimit, threadCount } from '../processes.js';
import { freeUdpPort } from '../net.js';
import { DriverStats, runPool, type AllocationClient } from '../turn-driver.js';
import { sleep } from '../host.js';
import { LABELS, SETTLE_MS, distinct, fullSequence, type Context, type ServerKind } from './context.js';
import { redisInfo, type RedisHandle } from './redis.js';
import { anyturnMetrics, sample, startServer, withRig, type ProcessSample, type ServerHandle } from './servers.js';

export interface LiveResult {
  readonly kind: ServerKind;
  readonly server: string;
  readonly store: string;
  readonly attempted: number;
  readonly ok: number;
  readonly errors: string[];
  readonly createSeconds: number;
  readonly before: ProcessSample;
  readonly after: ProcessSample;
  readonly rssKbPerAllocation: number | undefined;
  readonly fdsPerAllocation: number | undefined;
  readonly nofileLimit: string | undefined;
  readonly serverThreads: number | undefined;
  readonly liveAllocationsReported: number | undefined;
  readonly heapUsedBytesBefore: number | undefined;
  readonly heapUsedBytesAfter: number | undefined;
  readonly heapBytesPerAllocation: number | undefined;
  readonly redisUsedMemoryBefore: number | undefined;
  readonly redisUsedMemoryAfter: number | undefined;
  readonly redisBytesPerAllocation: number | undefined;
  readonly redisKeysPerAllocation: number | undefined;
  readonly commandLine: string;
}

/** What part 3 takes over from the anycast run of part 2. */
export interface LiveKeep {
  readonly server: ServerHandle;
  readonly redis: RedisHandle;
  readonly clients: AllocationClient[];
  readonly listeningPort: number;
  readonly meshPort: number;
}

/** The server's process, its /metrics and its redis-server, at one moment. */
async function snapshot(server: ServerHandle, redis: RedisHandle | undefined) {
  const proc = sample(server.proc.pid);
  const metrics = await anyturnMetrics(server);
  const redisMemory = redis ? Number((await redisInfo(redis, 'memory')).get('used_memory')) : undefined;
  const redisKeys = redis ? await redis.client.dbsize() : undefined;
  return { proc, metrics, redisMemory, redisKeys };
}

export function runLive(ctx: Context, kind: ServerKind, keepForSync: boolean): Promise<{ result: LiveResult; keep?: LiveKeep }> {
  return withRig(ctx, kind, 'live', async (rig) => {
    const { redis, clients } = rig;
    const listeningPort = await freeUdpPort();
    const meshPort = await freeUdpPort();
    const server = (rig.server = await startServer(ctx, kind, { redis, listeningPort, meshPort, name: `live-${kind}` }));
    await sleep(SETTLE_MS);
    const s0 = await snapshot(server, redis);

    const stats = new DriverStats();
    const peer = ctx.peer.endpoint;
    const pool = await runPool(ctx.options.live, ctx.options.liveWorkers, () => fullSequence(server.endpoint, peer, stats, clients, false), ctx.stop);
    await sleep(SETTLE_MS);
    const s1 = await snapshot(server, redis);
    const ok = pool.results.length;
    const per = (a: number | undefined, b: number | undefined): number | undefined =>
      a === undefined || b === undefined || ok === 0 ? undefined : (b - a) / ok;
    const result: LiveResult = {
      kind,
      ...LABELS[kind],
      attempted: ctx.options.live,
      ok,
      errors: distinct(pool.errors),
      createSeconds: pool.wallMs / 1000,
      before: s0.proc,
      after: s1.proc,
      rssKbPerAllocation: per(s0.proc.rssKb, s1.proc.rssKb),
      fdsPerAllocation: per(s0.proc.fds, s1.proc.fds),
      nofileLimit: nofileLimit(server.proc.pid),
      serverThreads: threadCount(server.proc.pid),
      liveAllocationsReported: s1.metrics.allocations,
      heapUsedBytesBefore: s0.metrics.heapUsedBytes,
      heapUsedBytesAfter: s1.metrics.heapUsedBytes,
      heapBytesPerAllocation: per(s0.metrics.heapUsedBytes, s1.metrics.heapUsedBytes),
      redisUsedMemoryBefore: s0.redisMemory,
      redisUsedMemoryAfter: s1.redisMemory,
      redisBytesPerAllocation: per(s0.redisMemory, s1.redisMemory),
      redisKeysPerAllocation: per(s0.redisKeys, s1.redisKeys),
      commandLine: server.commandLine,
    };
    if (keepForSync && redis !== undefined) {
      rig.handedOver = true;
      return { result, keep: { server, redis, clients, listeningPort, meshPort } };
    }
    return { result };
  });
}

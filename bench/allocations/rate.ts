// Part 1: the allocation rate with authentication, from concurrent client sockets.
import { cpusAllowed, safeCpuMicros, threadCount } from '../processes.js';
import { DriverStats, runPool, summarize, type LatencySummary } from '../turn-driver.js';
import { LABELS, distinct, fullSequence, restCredentials, staticCredential, type Context, type ServerKind } from './context.js';
import { startServer, withRig } from './servers.js';

export interface RateResult {
  readonly kind: ServerKind;
  readonly server: string;
  readonly store: string;
  readonly attempted: number;
  readonly ok: number;
  readonly errors: string[];
  readonly wallSeconds: number;
  readonly allocationsPerSecond: number;
  readonly latencyMs: LatencySummary;
  readonly retransmits: number;
  readonly challenges: number;
  readonly rechallenges: number;
  readonly serverCpuMicrosPerAllocation: number | undefined;
  readonly redisCpuMicrosPerAllocation: number | undefined;
  readonly driverCpuPercent: number;
  readonly serverThreads: number | undefined;
  readonly serverCpusAllowed: string | undefined;
  readonly commandLine: string;
}

export function runRate(ctx: Context, kind: ServerKind): Promise<RateResult> {
  return withRig(ctx, kind, 'rate', async (rig) => {
    const { redis, clients } = rig;
    const server = (rig.server = await startServer(ctx, kind, { redis, name: `rate-${kind}` }));
    const peer = ctx.peer.endpoint;
    // --credentials rest: a time-limited credential per allocation where the server takes them (not the floor).
    const credential = ctx.options.credentials === 'rest' && !kind.startsWith('floor') ? restCredentials() : staticCredential;
    // Warm-up (not measured): JIT for anyturn, first-touch allocations for both.
    const warm = new DriverStats();
    await runPool(ctx.options.warmup, ctx.options.workers, () => fullSequence(server.endpoint, peer, warm, clients, true, credential), ctx.stop);

    const stats = new DriverStats();
    const serverCpu0 = safeCpuMicros(server.proc.pid);
    const redisCpu0 = redis ? safeCpuMicros(redis.proc.pid) : undefined;
    const driverCpu0 = process.cpuUsage();
    const pool = await runPool(
      ctx.options.allocations,
      ctx.options.workers,
      () => fullSequence(server.endpoint, peer, stats, clients, true, credential),
      ctx.stop,
    );
    const driverCpu = process.cpuUsage(driverCpu0);
    const serverCpu1 = safeCpuMicros(server.proc.pid);
    const redisCpu1 = redis ? safeCpuMicros(redis.proc.pid) : undefined;
    const ok = pool.results.length;
    const per = (a: number | undefined, b: number | undefined): number | undefined =>
      a === undefined || b === undefined || ok === 0 ? undefined : (b - a) / ok;
    return {
      kind,
      ...LABELS[kind],
      attempted: ctx.options.allocations,
      ok,
      errors: distinct(pool.errors),
      wallSeconds: pool.wallMs / 1000,
      allocationsPerSecond: ok / (pool.wallMs / 1000),
      latencyMs: summarize(pool.results),
      retransmits: stats.retransmits,
      challenges: stats.challenges,
      rechallenges: stats.rechallenges,
      serverCpuMicrosPerAllocation: per(serverCpu0, serverCpu1),
      redisCpuMicrosPerAllocation: per(redisCpu0, redisCpu1),
      driverCpuPercent: (100 * (driverCpu.user + driverCpu.system)) / 1000 / pool.wallMs,
      serverThreads: threadCount(server.proc.pid),
      serverCpusAllowed: cpusAllowed(server.proc.pid),
      commandLine: server.commandLine,
    };
  });
}

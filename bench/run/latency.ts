// npm run bench's latency section: bench/latency.ts's probe through each server,
// interleaved with as many direct round trips.
import { join } from 'node:path';

import { DEFAULT_LATENCY_OPTIONS, probeThroughServer, type LatencyResult } from '../latency.js';
import { LOOPBACK } from '../turn-driver.js';
import { PASSWORD, USER, type ServerName } from '../servers.js';
import { fmt } from '../format.js';
import { saveServerLog, startServer, type RunContext } from './servers.js';

export interface LatencyReport {
  readonly options: typeof DEFAULT_LATENCY_OPTIONS;
  readonly servers: {
    readonly server: ServerName;
    readonly ok: boolean;
    readonly failure: string | undefined;
    readonly result: LatencyResult | undefined;
    /** The direct probes interleaved with this server's. */
    readonly direct: LatencyResult | undefined;
    readonly addedP50Micros: number | undefined;
    readonly addedP99Micros: number | undefined;
  }[];
}

type ServerLatency = LatencyReport['servers'][number];

/** One server's probe on a fresh server; the server is stopped and its log written whatever happens. */
async function probeOne(ctx: RunContext, serverName: ServerName): Promise<ServerLatency> {
  const o = DEFAULT_LATENCY_OPTIONS;
  const peer = { address: LOOPBACK, port: ctx.peerPort };
  const serverLog = join(ctx.logDir, `latency-${serverName}-server.log`);
  const s = await startServer(ctx, serverName, false);
  const started = 'failure' in s ? s.started : s;
  try {
    if ('failure' in s) throw new Error(s.failure);
    const { through, direct } = await probeThroughServer({ address: LOOPBACK, port: s.listeningPort }, { username: USER, password: PASSWORD }, peer, o);
    const added = (x: number | undefined, y: number | undefined): number | undefined => (x === undefined || y === undefined ? undefined : x - y);
    process.stderr.write(
      `p50 ${fmt(through.rttMicros.p50, 0)} us (direct ${fmt(direct.rttMicros.p50, 0)}), p99 ${fmt(through.rttMicros.p99, 0)} us (direct ${fmt(direct.rttMicros.p99, 0)}), ${through.received}/${through.sent} back\n`,
    );
    return {
      server: serverName,
      ok: through.received > 0 && direct.received > 0,
      failure: through.received > 0 ? undefined : 'nothing came back',
      result: through,
      direct,
      addedP50Micros: added(through.rttMicros.p50, direct.rttMicros.p50),
      addedP99Micros: added(through.rttMicros.p99, direct.rttMicros.p99),
    };
  } catch (err) {
    const why = err instanceof Error ? err.message : String(err);
    process.stderr.write(`FAILED: ${why}\n`);
    return { server: serverName, ok: false, failure: why, result: undefined, direct: undefined, addedP50Micros: undefined, addedP99Micros: undefined };
  } finally {
    if (started !== undefined) {
      await ctx.group.stop(started.server);
      saveServerLog(serverLog, started);
    }
  }
}

export async function runLatency(ctx: RunContext, servers: readonly ServerName[], interrupted: () => boolean): Promise<LatencyReport> {
  const o = DEFAULT_LATENCY_OPTIONS;
  const out: LatencyReport['servers'] = [];
  for (const serverName of servers) {
    if (interrupted()) break;
    process.stderr.write(`[bench] latency / ${serverName}: ${o.count} round trips at ${o.ratePerSecond}/s, interleaved with direct ones ... `);
    out.push(await probeOne(ctx, serverName));
  }
  return { options: o, servers: out };
}

// One run of npm run bench:dataplane: a fresh server in S (none for the direct run),
// the load generator set up in C, then the CPU of every task sampled just before
// "go" and just after the generator's result.
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';

import { PASSWORD, USER } from '../servers.js';
import { breakdown, descendants, difference, snapshot, type CpuBreakdown } from './cpu.js';
import { finish, go, startLoad, type LoadOutput, type LoadSpec } from './loadgen.js';
import { LISTENING_PORT, kernelCounters, startServer, stopServer, type DataplaneContext, type Target } from './servers.js';
import { LISTENING_ADDRESS } from './topology.js';

export interface RunResult {
  readonly target: Target;
  readonly label: string;
  readonly round: number;
  readonly spec: LoadSpec;
  readonly ok: boolean;
  /** Not run: this build has no kernel path. Neither ok nor failed. */
  readonly skipped: boolean;
  readonly failure: string | undefined;
  readonly load: LoadOutput | undefined;
  readonly lost: number;
  readonly cpu: CpuBreakdown | undefined;
  /** anyturn-kernel: the kernel program's packet counters by event (anyturn's /metrics), after the load. */
  readonly kernel?: Record<string, number>;
}

/** Messages lost or never sent: counted against the run. */
function lostOf(load: LoadOutput): number {
  return load.sent - load.received;
}

/** Generous bound: the paced sending time, the drain, and slack for a busy machine. */
function loadTimeoutMs(spec: LoadSpec): number {
  return 20_000 + (2000 * spec.count) / spec.rate;
}

export async function runOnce(ctx: DataplaneContext, target: Target, spec: LoadSpec, label: string, round: number, measureCpu: boolean): Promise<RunResult> {
  const base = { target, label, round, spec };
  const none = { load: undefined, lost: 0, cpu: undefined };
  const server = target === 'direct' ? undefined : await startServer(ctx, target);
  if (server !== undefined && 'failure' in server) {
    const skipped = server.failure.startsWith('n/a');
    return { ...base, ...none, ok: false, skipped, failure: server.failure };
  }
  const fileName = `${label}-r${round}-${target}`;
  try {
    const turn = server === undefined ? undefined : { server: `${LISTENING_ADDRESS}:${LISTENING_PORT}`, credentials: { user: USER, password: PASSWORD } };
    let gen: Awaited<ReturnType<typeof startLoad>>;
    try {
      gen = await startLoad(ctx.group, ctx.topo, ctx.loadgen, spec, turn);
    } catch (err) {
      return { ...base, ...none, ok: false, skipped: false, failure: err instanceof Error ? err.message : String(err) };
    }
    const before = measureCpu ? snapshot() : undefined;
    const load = await go(gen, loadTimeoutMs(spec));
    const after = measureCpu ? snapshot() : undefined;
    await finish(ctx.group, gen);
    writeFileSync(join(ctx.logDir, `${fileName}-loadgen.log`), gen.output());
    if (load === undefined)
      return { ...base, ...none, ok: false, skipped: false, failure: `no result from the load generator within ${loadTimeoutMs(spec)} ms` };
    if (server?.process.hasExited()) return { ...base, ...none, load, ok: false, skipped: false, failure: 'the server exited during the load' };
    let cpu: CpuBreakdown | undefined;
    if (before !== undefined && after !== undefined) {
      const roles = { server: server === undefined ? new Set<number>() : descendants(after, server.process.pid), generator: gen.pid, peer: ctx.peer.pid };
      cpu = breakdown(difference(before, after), roles);
    }
    const kernel = target === 'anyturn-kernel' ? await kernelCounters(ctx) : undefined;
    return {
      ...base,
      load,
      lost: lostOf(load),
      cpu,
      kernel,
      ok: load.received > 0,
      skipped: false,
      failure: load.received > 0 ? undefined : 'no message came back',
    };
  } finally {
    if (server !== undefined) await stopServer(ctx, server, join(ctx.logDir, `${fileName}-server.log`));
  }
}

/** Relay cost of a run in us per relayed packet: (its CPU - the direct run's) / (2 x messages back). */
export function relayCostMicros(run: RunResult, direct: RunResult | undefined): number | undefined {
  if (!run.ok || direct?.ok !== true || run.cpu === undefined || direct.cpu === undefined || run.load === undefined) return undefined;
  const relayed = 2 * run.load.received;
  return relayed === 0 ? undefined : ((run.cpu.totalMs - direct.cpu.totalMs) * 1000) / relayed;
}

/** The server process tree's own CPU per relayed packet (what npm run bench measures), us. */
export function serverOwnMicros(run: RunResult): number | undefined {
  if (!run.ok || run.cpu === undefined || run.load === undefined || run.load.received === 0) return undefined;
  return (run.cpu.serverMs * 1000) / (2 * run.load.received);
}

/** The share of relayed packets the kernel program relayed (anyturn-kernel), 0-1. */
export function kernelShare(run: RunResult): number | undefined {
  const k = run.kernel;
  if (k === undefined || run.load === undefined || run.load.received === 0) return undefined;
  return ((k.relayed_to_peer ?? 0) + (k.relayed_to_client ?? 0)) / (2 * run.load.received);
}

// CPU of every task on the machine between two samples (npm run bench:dataplane).
//
// Why every task: on veth, the kernel path (and the socket delivery of any server)
// runs in the softirq of whichever task sends (veth_xmit -> netif_rx -> the backlog
// on the sending CPU, processed when the sender re-enables bottom halves), so it is
// charged to the load generator, the echo peer or ksoftirqd, not to the server. This
// kernel has no CONFIG_IRQ_TIME_ACCOUNTING (checked at start-up: see irqTimeAccounting),
// so softirq time run in a task's context is part of that task's runtime.
//
// Why not /proc/stat: its per-CPU user/system/softirq columns are tick samples of
// what the CPU was doing at each timer tick, which alias with 1 ms periodic loads.
// Per-task runtime is not sampled: the scheduler adds up the time between context
// switches (sum_exec_runtime), and utime+stime in /proc/PID/stat are scaled so that
// they add up to it (only the user/system split is tick-sampled).
//
// Per process: when the process has the same threads at both samples, the sum of its
// threads' sum_exec_runtime (/proc/PID/task/TID/schedstat, ns); otherwise (a thread
// started or exited) the process's utime+stime (/proc/PID/stat, clock ticks, which
// include exited threads). Plus, always, the change of cutime+cstime: children reaped
// during the window. A process that exits during the window is subtracted at its first
// sample's value (its whole life reaches its parent's cutime); one that starts is
// counted in full. Tasks that never run in a task's context (hardirqs and softirqs
// taken while a CPU idles) are charged to the idle task, which /proc does not show.
import { readFileSync, readdirSync } from 'node:fs';
import { gunzipSync } from 'node:zlib';

import { clkTck } from '../processes.js';

interface ProcessSample {
  readonly pid: number;
  readonly ppid: number;
  readonly comm: string;
  /** utime+stime of the whole process (exited threads included), ns (tick resolution). */
  readonly ownTicksNs: number;
  /** cutime+cstime, ns (tick resolution). */
  readonly childrenNs: number;
  /** tid -> sum_exec_runtime ns; undefined when schedstat cannot be read. */
  readonly threads: Map<number, number> | undefined;
}

export type Snapshot = Map<number, ProcessSample>;

function readStat(path: string): { comm: string; fields: string[] } | undefined {
  let text: string;
  try {
    text = readFileSync(path, 'utf8');
  } catch {
    return undefined;
  }
  const close = text.lastIndexOf(')');
  return { comm: text.slice(text.indexOf('(') + 1, close), fields: text.slice(close + 2).split(' ') };
}

function threadRuntimes(pid: number): Map<number, number> | undefined {
  const out = new Map<number, number>();
  try {
    for (const tid of readdirSync(`/proc/${pid}/task`)) {
      const first = readFileSync(`/proc/${pid}/task/${tid}/schedstat`, 'utf8').split(' ')[0];
      out.set(Number(tid), Number(first));
    }
  } catch {
    return undefined;
  }
  return out;
}

/** Every process now. */
export function snapshot(): Snapshot {
  const tick = 1e9 / clkTck();
  const out: Snapshot = new Map();
  for (const entry of readdirSync('/proc')) {
    if (!/^\d+$/.test(entry)) continue;
    const pid = Number(entry);
    const threads = threadRuntimes(pid);
    const stat = readStat(`/proc/${pid}/stat`);
    if (stat === undefined) continue; // gone meanwhile
    // fields[0] is field 3 (state): ppid = field 4, utime..cstime = fields 14-17.
    const f = stat.fields;
    const n = (i: number): number => Number(f[i] ?? 0);
    out.set(pid, { pid, ppid: n(1), comm: stat.comm, ownTicksNs: (n(11) + n(12)) * tick, childrenNs: (n(13) + n(14)) * tick, threads });
  }
  return out;
}

function sameThreads(a: Map<number, number>, b: Map<number, number>): boolean {
  if (a.size !== b.size) return false;
  for (const tid of a.keys()) if (!b.has(tid)) return false;
  return true;
}

function sumValues(m: Map<number, number>): number {
  let s = 0;
  for (const v of m.values()) s += v;
  return s;
}

export interface CpuUse {
  /** pid -> ns during the window (negative only for a process that exited: see the file comment). */
  readonly perProcess: Map<number, { readonly comm: string; readonly ppid: number; readonly ns: number }>;
  readonly totalNs: number;
}

export function difference(before: Snapshot, after: Snapshot): CpuUse {
  const perProcess = new Map<number, { comm: string; ppid: number; ns: number }>();
  let totalNs = 0;
  for (const [pid, b] of after) {
    const a = before.get(pid);
    let ns: number;
    if (a === undefined) ns = b.ownTicksNs + b.childrenNs;
    else {
      const own =
        a.threads !== undefined && b.threads !== undefined && sameThreads(a.threads, b.threads)
          ? sumValues(b.threads) - sumValues(a.threads)
          : b.ownTicksNs - a.ownTicksNs;
      ns = own + (b.childrenNs - a.childrenNs);
    }
    if (ns !== 0) perProcess.set(pid, { comm: b.comm, ppid: b.ppid, ns });
    totalNs += ns;
  }
  for (const [pid, a] of before) {
    if (after.has(pid)) continue;
    const ns = -(a.ownTicksNs + a.childrenNs);
    if (ns !== 0) perProcess.set(pid, { comm: a.comm, ppid: a.ppid, ns });
    totalNs += ns;
  }
  return { perProcess, totalNs };
}

/** The pid and its live descendants in a snapshot. */
export function descendants(snap: Snapshot, root: number): Set<number> {
  const out = new Set<number>([root]);
  let grew = true;
  while (grew) {
    grew = false;
    for (const p of snap.values()) {
      if (!out.has(p.pid) && out.has(p.ppid)) {
        out.add(p.pid);
        grew = true;
      }
    }
  }
  return out;
}

export interface CpuBreakdown {
  readonly totalMs: number;
  readonly serverMs: number;
  readonly generatorMs: number;
  readonly peerMs: number;
  /** Kernel threads (children of kthreadd, pid 2): ksoftirqd/N, kworkers, rcu, ... */
  readonly kernelThreadsMs: number;
  /** This bench process. */
  readonly benchMs: number;
  /** Everything else: other processes on the machine; large = the machine was not quiet. */
  readonly otherMs: number;
  /** The kernel threads by name with the CPU/worker number stripped (ksoftirqd, kworker/u...), ms. */
  readonly kernelThreads: Record<string, number>;
}

/** Splits a window's CPU by who spent it; `server` is the server's pid tree (empty for the direct run). */
export function breakdown(use: CpuUse, roles: { server: ReadonlySet<number>; generator: number; peer: number }): CpuBreakdown {
  let serverNs = 0;
  let generatorNs = 0;
  let peerNs = 0;
  let kernelNs = 0;
  let benchNs = 0;
  const kernelThreads: Record<string, number> = {};
  for (const [pid, p] of use.perProcess) {
    if (roles.server.has(pid)) serverNs += p.ns;
    else if (pid === roles.generator) generatorNs += p.ns;
    else if (pid === roles.peer) peerNs += p.ns;
    else if (pid === process.pid) benchNs += p.ns;
    else if (pid === 2 || p.ppid === 2) {
      kernelNs += p.ns;
      const name = p.comm.split('/')[0] ?? p.comm;
      kernelThreads[name] = (kernelThreads[name] ?? 0) + p.ns / 1e6;
    }
  }
  const ms = (ns: number): number => ns / 1e6;
  const otherNs = use.totalNs - serverNs - generatorNs - peerNs - kernelNs - benchNs;
  return {
    totalMs: ms(use.totalNs),
    serverMs: ms(serverNs),
    generatorMs: ms(generatorNs),
    peerMs: ms(peerNs),
    kernelThreadsMs: ms(kernelNs),
    benchMs: ms(benchNs),
    otherMs: ms(otherNs),
    kernelThreads,
  };
}

/** Whether this kernel charges irq/softirq time to CPUs instead of tasks (then the method cannot see softirq work). */
export function irqTimeAccounting(): 'off' | 'on' | 'unknown' {
  try {
    const config = gunzipSync(readFileSync('/proc/config.gz')).toString('utf8');
    return /^CONFIG_IRQ_TIME_ACCOUNTING=y/m.test(config) ? 'on' : 'off';
  } catch {
    return 'unknown';
  }
}

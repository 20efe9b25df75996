// npm run bench:dataplane's tables: every run, the summary the issue asks for
// (relay cost, ratio to coturn, max lossless rate, added latency), the rounds.
import { fmt, table } from '../format.js';
import type { Options } from './options.js';
import { kernelShare, relayCostMicros, serverOwnMicros, type RunResult } from './measure.js';
import type { ServerTarget, Target } from './servers.js';

export function methodNotes(o: Options, irqTime: string): string[] {
  return [
    "topology: namespaces C -- S -- P joined by veth (198.18.0.0/15); the server listens on S's veth to C and relays from S's veth to P; " +
      "the direct run sends C -> P through S's IP forwarding, so both cross the same two veths per direction",
    `load: bench/dataplane/loadgen.c, ${o.sessions} sessions (one allocation and channel each), ${o.rate} msg/s in total, ${o.messages} msgs, ` +
      `${o.size}-byte payload; msg = one round trip C -> relay -> P (echo) -> relay -> C; relayed pkts = 2 x msgs back`,
    `tx checksum offload on C's and P's veths: ${o.txChecksumOff ? 'off (docs/dataplane.md: the kernel path passes CHECKSUM_PARTIAL datagrams to user space)' : 'on'}`,
    'CPU = every task on the machine (per process from /proc/PID/task/TID/schedstat, /proc/PID/stat where threads came or went; kernel threads, ' +
      'the generator, the peer and this process included), sampled just before the load starts and just after its last echo; never /proc/stat',
    'relay cost = (CPU of the run - CPU of the same load run direct in the same round) / relayed pkts',
    `sees: softirq work run in a task's context (veth delivery, tc/eBPF, UDP receive), which is charged to the sending task: ` +
      `CONFIG_IRQ_TIME_ACCOUNTING is ${irqTime} on this kernel${irqTime === 'on' ? ' (so softirq time is NOT in any task: the relay cost misses it)' : ''}`,
    'cannot see: interrupts and softirqs taken while a CPU is idle (charged to the idle task); time of tasks that came and went ' +
      'is at clock-tick resolution; other processes on the machine count too (column "other": large = not a quiet machine)',
    "server own = the server process tree alone (what npm run bench measures): the kernel path's work is not in it",
    "in kernel = share of relayed pkts the eBPF program relayed (anyturn_dataplane_kernel_packets_total on anyturn's /metrics, read after the load)",
  ];
}

function median(values: readonly number[]): number | undefined {
  if (values.length === 0) return undefined;
  const s = [...values].sort((a, b) => a - b);
  return s[Math.floor((s.length - 1) / 2)];
}

/** The direct run of the same round and label. */
function directOf(runs: readonly RunResult[], r: RunResult): RunResult | undefined {
  return runs.find((x) => x.target === 'direct' && x.round === r.round && x.label === r.label);
}

export function runsTable(runs: readonly RunResult[]): string {
  const rows = [
    [
      'round',
      'target',
      'sent',
      'back',
      'lost',
      'sent msg/s',
      'CPU all ms',
      'server',
      'generator',
      'peer',
      'kthreads',
      'bench',
      'other',
      'relay cost us/pkt',
      'server own us/pkt',
      'in kernel',
    ],
  ];
  for (const r of runs) {
    const c = r.cpu;
    const l = r.load;
    if (!r.ok) {
      rows.push([String(r.round), r.target, r.skipped ? 'n/a' : `FAILED: ${r.failure ?? ''}`]);
      continue;
    }
    rows.push([
      String(r.round),
      r.target,
      String(l?.sent ?? '-'),
      String(l?.received ?? '-'),
      String(r.lost),
      fmt(l?.achievedRate, 0),
      fmt(c?.totalMs, 0),
      fmt(c?.serverMs, 0),
      fmt(c?.generatorMs, 0),
      fmt(c?.peerMs, 0),
      fmt(c?.kernelThreadsMs, 0),
      fmt(c?.benchMs, 0),
      fmt(c?.otherMs, 0),
      r.target === 'direct' ? '-' : fmt(relayCostMicros(r, directOf(runs, r)), 2),
      r.target === 'direct' ? '-' : fmt(serverOwnMicros(r), 2),
      r.target === 'anyturn-kernel' ? `${fmt(100 * (kernelShare(r) ?? Number.NaN), 1)} %` : '-',
    ]);
  }
  return table(rows);
}

/** The light-load latency runs: RTT percentiles and, for servers, the same minus the direct run's of the round. */
export function latencyTable(runs: readonly RunResult[]): string {
  const rows = [['round', 'target', 'back/sent', 'RTT p50 us', 'RTT p90 us', 'RTT p99 us', 'RTT max us', 'added p50 us', 'added p99 us']];
  for (const r of runs) {
    const l = r.load;
    if (!r.ok || l === undefined) {
      rows.push([String(r.round), r.target, r.skipped ? 'n/a' : `FAILED: ${r.failure ?? ''}`]);
      continue;
    }
    const d = r.target === 'direct' ? undefined : directOf(runs, r)?.load?.rtt;
    const minus = (a: number | undefined, b: number | undefined): number | undefined => (a === undefined || b === undefined ? undefined : a - b);
    rows.push([
      String(r.round),
      r.target,
      `${l.received}/${l.sent}`,
      fmt(l.rtt.p50, 0),
      fmt(l.rtt.p90, 0),
      fmt(l.rtt.p99, 0),
      fmt(l.rtt.max, 0),
      fmt(minus(l.rtt.p50, d?.p50), 0),
      fmt(minus(l.rtt.p99, d?.p99), 0),
    ]);
  }
  return table(rows);
}

export interface RateStep {
  readonly offered: number;
  readonly run: RunResult;
  readonly lossless: boolean;
  /** Sent less than 98 % of the offer: the generator, not the relay, was the limit. */
  readonly generatorLimited: boolean;
}

export interface RateSearch {
  readonly target: Target;
  readonly steps: readonly RateStep[];
}

/** "N msg/s" for the highest lossless step, with what stopped the search. */
export function maxLossless(s: RateSearch | undefined): string {
  if (s === undefined || s.steps.length === 0) return '-';
  const ok = s.steps.filter((x) => x.lossless);
  const best = ok[ok.length - 1];
  const last = s.steps[s.steps.length - 1]!;
  if (best === undefined) return last.run.skipped ? 'n/a' : `< ${s.steps[0]!.offered}`;
  if (best === last) return `>= ${best.offered}${best.generatorLimited ? ' (generator limit)' : ' (last step)'}`;
  return `${best.offered}${last.generatorLimited ? ' (generator limit)' : ''}`;
}

export function rateTable(searches: readonly RateSearch[]): string {
  const rows = [['target', 'offered msg/s', 'sent msg/s', 'sent', 'back', 'lost', 'send errors', 'max lag us', 'verdict']];
  for (const s of searches) {
    for (const st of s.steps) {
      const l = st.run.load;
      rows.push([
        s.target,
        String(st.offered),
        fmt(l?.achievedRate, 0),
        String(l?.sent ?? '-'),
        String(l?.received ?? '-'),
        st.run.ok ? String(st.run.lost) : st.run.skipped ? 'n/a' : 'FAILED',
        String(l?.sendErrors ?? '-'),
        fmt(l?.maxLagUs, 0),
        st.lossless ? 'lossless' : st.run.skipped ? 'n/a' : `lossy${st.generatorLimited ? ', generator limit' : ''}`,
      ]);
    }
  }
  return table(rows);
}

export interface Summary {
  readonly target: ServerTarget;
  readonly relayCost: number | undefined;
  readonly overCoturn: number | undefined;
  readonly serverOwn: number | undefined;
  readonly maxLossless: string;
  readonly addedP50: number | undefined;
  readonly addedP99: number | undefined;
  /** Per round: relay cost / coturn's in the same round. */
  readonly roundRatios: readonly (number | undefined)[];
}

function added(latency: readonly RunResult[], target: ServerTarget, q: 'p50' | 'p99'): number | undefined {
  const values: number[] = [];
  for (const r of latency.filter((x) => x.target === target && x.ok)) {
    const d = directOf(latency, r);
    const a = r.load?.rtt[q];
    const b = d?.ok === true ? d.load?.rtt[q] : undefined;
    if (a !== undefined && b !== undefined) values.push(a - b);
  }
  return median(values);
}

export function summarize(
  servers: readonly ServerTarget[],
  cost: readonly RunResult[],
  latency: readonly RunResult[],
  rates: readonly RateSearch[],
  rounds: number,
): Summary[] {
  const costOf = (target: ServerTarget, round: number): number | undefined => {
    const r = cost.find((x) => x.target === target && x.round === round);
    return r === undefined ? undefined : relayCostMicros(r, directOf(cost, r));
  };
  const medianCost = (target: ServerTarget): number | undefined => {
    const v: number[] = [];
    for (let round = 1; round <= rounds; round++) {
      const c = costOf(target, round);
      if (c !== undefined) v.push(c);
    }
    return median(v);
  };
  const coturn = medianCost('coturn');
  return servers.map((target) => {
    const own = cost.filter((x) => x.target === target).map(serverOwnMicros);
    const roundRatios: (number | undefined)[] = [];
    for (let round = 1; round <= rounds; round++) {
      const a = costOf(target, round);
      const b = costOf('coturn', round);
      roundRatios.push(a === undefined || b === undefined || b <= 0 ? undefined : a / b);
    }
    const relayCost = medianCost(target);
    return {
      target,
      relayCost,
      overCoturn: relayCost === undefined || coturn === undefined || coturn <= 0 ? undefined : relayCost / coturn,
      serverOwn: median(own.filter((v): v is number => v !== undefined)),
      maxLossless: maxLossless(rates.find((s) => s.target === target)),
      addedP50: added(latency, target, 'p50'),
      addedP99: added(latency, target, 'p99'),
      roundRatios,
    };
  });
}

export function summaryTable(summary: readonly Summary[], direct: RateSearch | undefined): string[] {
  const rows = [['server', 'relay cost us/pkt', '/ coturn', 'server own us/pkt', 'max lossless msg/s', 'added p50 us', 'added p99 us']];
  for (const s of summary) {
    rows.push([
      s.target,
      fmt(s.relayCost, 2),
      s.overCoturn === undefined ? '-' : `${s.overCoturn.toFixed(2)}x`,
      fmt(s.serverOwn, 2),
      s.maxLossless,
      fmt(s.addedP50, 0),
      fmt(s.addedP99, 0),
    ]);
  }
  const lines = [table(rows)];
  if (direct !== undefined) lines.push(`direct (no relay) max lossless: ${maxLossless(direct)} msg/s: no relay can be shown faster than this on this machine`);
  return lines;
}

export function roundsLines(summary: readonly Summary[], rounds: number): string[] {
  const lines = [`relay cost / coturn's, by round (${rounds} rounds; the summary shows the median relay cost):`];
  for (const s of summary) {
    if (s.target === 'coturn') continue;
    lines.push(`  ${s.target.padEnd(15)} ${s.roundRatios.map((r) => (r === undefined ? '-' : r.toFixed(2))).join(' ')}`);
  }
  return lines;
}

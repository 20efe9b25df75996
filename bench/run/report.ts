// npm run bench's report on stdout: the method, the table of runs, the ratios, the
// rounds, the latency probe, the max lossless rate and the scaling section.
import { clkTck } from '../processes.js';
import { CASE_NAMES, PAYLOAD_BYTES, SESSIONS, type CaseName, type LoadCase } from '../uclient.js';
import type { ServerName } from '../servers.js';
import { summarize } from '../turn-driver.js';
import { CLIENT_CPU, SERVER_CPU } from '../host.js';
import { fmt, table } from '../format.js';
import type { RunResult } from './measure.js';
import type { Ratio, RoundRatio } from './compare.js';
import type { LatencyReport } from './latency.js';
import type { RateReport } from './rate.js';
import { SCALING } from './placement.js';

export const METHOD_NOTES = [
  `load: turnutils_uclient, ${SESSIONS} sessions (-m ${SESSIONS} -c: one allocation each), ${PAYLOAD_BYTES}-byte payload unless the case says otherwise, peer = turnutils_peer; all on 127.0.0.1`,
  'servers: anyturn; coturn --relay-threads 0; floor = bench/floor-forwarder.ts, a minimal relay in plain Node (no auth check, no permissions, UDP only: n/a for tcp)',
  `server pinned to CPU ${SERVER_CPU} (taskset -c ${SERVER_CPU}); uclient and peer on CPU ${CLIENT_CPU}; a fresh server process per case`,
  'msg = one uclient round trip: client -> relay -> peer -> relay -> client (c2c: one message client -> relay A -> relay B -> client)',
  'relayed pkt = one datagram the server forwards from one side to the other; each received msg = 2 relayed pkts',
  'CPU = server utime+stime, all threads (/proc/PID/stat), sampled just before uclient starts and just after it exits',
  'CPU/pkt = CPU us / (2 x msgs received); ratios = anyturn / coturn and anyturn / floor (below 1 = anyturn cheaper)',
  'of which kernel = the stime part of CPU/pkt: syscalls, and the loopback delivery of what the server sends',
  'RTT = uclient round trip delay (ms resolution); rcvbuf drops = UDP RcvbufErrors during the load, whole host',
];

export function roundsReport(perRound: readonly RoundRatio[], rounds: number): string[] {
  const lines = [`per round (${rounds} rounds; the table above shows each server's median run):`];
  const rows: string[][] = [['case', 'anyturn/coturn by round', 'median', 'min-max', 'anyturn/floor by round', 'median', 'lost anyturn/coturn/floor']];
  for (const c of CASE_NAMES) {
    const mine = perRound.filter((r) => r.case === c);
    if (mine.length === 0) continue;
    const col = (pick: (r: RoundRatio) => number | undefined): [string, string, string] => {
      const values = mine.map(pick).filter((v): v is number => v !== undefined);
      const range = values.length === 0 ? '-' : `${fmt(Math.min(...values), 2)}-${fmt(Math.max(...values), 2)}`;
      return [mine.map((r) => fmt(pick(r), 2)).join(' '), fmt(summarize(values).p50, 2), range];
    };
    const [byCoturn, medCoturn, rangeCoturn] = col((r) => r.overCoturn);
    const [byFloor, medFloor] = col((r) => r.overFloor);
    const lost = (s: ServerName): string => {
      const values = mine.map((r) => r.lost[s]).filter((v): v is number => v !== undefined);
      return values.length === 0 ? '-' : String(values.reduce((a, b) => a + b, 0));
    };
    rows.push([c, byCoturn, medCoturn, rangeCoturn, byFloor, medFloor, `${lost('anyturn')}/${lost('coturn')}/${lost('floor')}`]);
  }
  lines.push(table(rows));
  return lines;
}

/** The max-lossless-rate table and the figure per server. */
function rateLines(rate: RateReport): string[] {
  const lines: string[] = [];
  lines.push(`max lossless rate: ${rate.method}`);
  const rateRows: string[][] = [
    ['server', 'sessions', 'offered msg/s', 'peak sent msg/s', 'msgs sent', 'lost', 'lost %', 'CPU us / relayed pkt', 'rcvbuf drops'],
  ];
  for (const s of rate.servers) {
    for (const st of s.steps) {
      const r = st.result;
      rateRows.push([
        s.label,
        String(st.sessions),
        String(st.offeredPerSecond),
        fmt(r.uclient.peakSendRate, 0),
        String(r.sent),
        r.ok ? String(r.lost) : 'FAILED',
        fmt(r.lostPercent, 3),
        fmt(r.cpuMicrosPerRelayedPacket, 2),
        r.udpReceiveBufferErrors === undefined ? '-' : String(r.udpReceiveBufferErrors),
      ]);
    }
  }
  lines.push(table(rateRows));
  for (const s of rate.servers) {
    const v = s.maxLosslessPerSecond;
    const first = s.steps[0]?.offeredPerSecond ?? '?';
    const what =
      v === undefined
        ? s.atLeast
          ? `unknown (${s.stoppedBy ?? 'no step ran'})`
          : `< ${first} msg/s (lost at the first step)`
        : `${s.atLeast ? '>= ' : ''}${v} msg/s offered (${2 * v} relayed pkt/s)${s.stoppedBy === undefined ? '' : `; ${s.stoppedBy}`}`;
    lines.push(`  ${s.label.padEnd(8)} max lossless: ${what}`);
  }
  return lines;
}

/** The scaling section: each server's max lossless rate on one core and on two, and the gain. */
export function scalingReport(rate: RateReport): string[] {
  const lines = ['scaling: one core against two (--scaling)'];
  for (const x of SCALING) {
    lines.push(
      `  ${x.placement.label}: server on CPU ${x.placement.serverCpus}, uclient on CPU ${x.placement.clientCpus}, turnutils_peer on CPU ${CLIENT_CPU}`,
    );
  }
  lines.push('  on this 2-core machine the 2-core runs share both cores with the load generator, so their gain is a lower bound');
  lines.push('');
  lines.push(...rateLines(rate));
  lines.push('');
  const figure = (label: string): { readonly v: number | undefined; readonly atLeast: boolean } => {
    const s = rate.servers.find((x) => x.label === label);
    return { v: s?.maxLosslessPerSecond, atLeast: s?.atLeast ?? false };
  };
  for (const [server, one, two] of [
    ['anyturn', 'anyturn 1 proc', 'anyturn --workers 2'],
    ['coturn', 'coturn 1 thread', 'coturn 2 threads'],
  ] as const) {
    const a = figure(one);
    const b = figure(two);
    const show = (f: { readonly v: number | undefined; readonly atLeast: boolean }): string => (f.v === undefined ? '-' : `${f.atLeast ? '>= ' : ''}${f.v}`);
    const gain = a.v !== undefined && b.v !== undefined ? `${(b.v / a.v).toFixed(2)}x${b.atLeast ? ' or more' : ''}` : '-';
    lines.push(`  ${server.padEnd(8)} max lossless msg/s: 1 core ${show(a)}, 2 cores ${show(b)}: ${gain}`);
  }
  return lines;
}

/** The heading: the method notes and the cases that ran. */
function methodLines(results: readonly RunResult[], cases: Record<CaseName, LoadCase>): string[] {
  const lines: string[] = [];
  lines.push('anyturn vs coturn vs floor (turnutils_uclient load)');
  for (const n of METHOD_NOTES) lines.push(`  ${n}`);
  lines.push(`  CPU resolution: 1 clock tick = ${(1_000_000 / clkTck()).toFixed(0)} us`);
  lines.push('  cases:');
  for (const c of CASE_NAMES) {
    const lc = cases[c];
    if (!results.some((r) => r.case === c)) continue;
    lines.push(`    ${c.padEnd(13)}${lc.description}; -n ${lc.messagesPerSession} per session`);
  }
  return lines;
}

function resultsTable(results: readonly RunResult[]): string {
  const rows: string[][] = [
    [
      'case',
      'server',
      'msgs sent',
      'msgs recv',
      'lost',
      'lost %',
      'server CPU ms',
      'CPU us / relayed pkt',
      'of which kernel',
      'RTT avg/max ms',
      'rcvbuf drops',
      'load s',
    ],
  ];
  for (const r of results) {
    if (r.skipped) {
      rows.push([r.case, r.server, 'n/a', 'n/a', 'n/a', 'n/a', 'n/a', 'n/a', 'n/a', 'n/a', 'n/a', 'n/a']);
      continue;
    }
    rows.push([
      r.case,
      r.server,
      String(r.sent),
      String(r.received),
      String(r.lost),
      fmt(r.lostPercent, 2),
      fmt(r.serverCpuMicros === undefined ? undefined : r.serverCpuMicros / 1000, 0),
      fmt(r.cpuMicrosPerRelayedPacket, 2),
      fmt(r.serverSystemMicros === undefined || r.relayedPackets === 0 ? undefined : r.serverSystemMicros / r.relayedPackets, 2),
      `${fmt(r.uclient.rttAverageMs, 1)}/${fmt(r.uclient.rttMaxMs, 0)}`,
      r.udpReceiveBufferErrors === undefined ? '-' : String(r.udpReceiveBufferErrors),
      fmt(r.loadWallSeconds, 1),
    ]);
  }
  return table(rows);
}

function ratioLines(rs: readonly Ratio[]): string[] {
  const ratioRows: string[][] = [
    ['case', '', 'anyturn/coturn', 'anyturn/floor', 'server CPU anyturn/coturn', 'lost % anyturn', 'lost % coturn', 'lost % floor'],
  ];
  const times = (n: number | undefined): string => (n === undefined ? '-' : `${n.toFixed(2)}x`);
  for (const r of rs) {
    ratioRows.push([
      r.case,
      '',
      times(r.cpuMicrosPerRelayedPacket),
      times(r.cpuMicrosPerRelayedPacketOverFloor),
      times(r.serverCpuMicros),
      fmt(r.lostPercentAnyturn, 2),
      fmt(r.lostPercentCoturn, 2),
      fmt(r.lostPercentFloor, 2),
    ]);
  }
  return ['', 'ratios (CPU us / relayed pkt):', table(ratioRows)];
}

function latencyLines(latency: LatencyReport): string[] {
  const o = latency.options;
  const lines = [
    '',
    `latency probe (bench/latency.ts): one allocation, ${o.count} ChannelData round trips of ${o.payloadBytes} bytes at ${o.ratePerSecond}/s ` +
      `(after ${o.warmup} untimed), no other load, taking turns with as many direct round trips (client -> peer -> client);`,
    '  added = RTT through the server - RTT direct, at the same percentile',
  ];
  const latRows: string[][] = [
    ['server', '', 'recv/sent', 'RTT p50 us', 'RTT p99 us', 'RTT max us', 'direct p50 us', 'direct p99 us', 'added p50 us', 'added p99 us'],
  ];
  for (const s of latency.servers) {
    const r = s.result?.rttMicros;
    const d = s.direct?.rttMicros;
    latRows.push([
      s.server,
      '',
      s.result === undefined ? `FAILED: ${s.failure ?? ''}` : `${s.result.received}/${s.result.sent}`,
      fmt(r?.p50, 0),
      fmt(r?.p99, 0),
      fmt(r?.max, 0),
      fmt(d?.p50, 0),
      fmt(d?.p99, 0),
      fmt(s.addedP50Micros, 0),
      fmt(s.addedP99Micros, 0),
    ]);
  }
  lines.push(table(latRows));
  return lines;
}

function failureLines(results: readonly RunResult[], rate: RateReport | undefined): string[] {
  const failures = results.filter((r) => !r.ok && !r.skipped);
  const rateFailures = rate?.servers.flatMap((s) => s.steps.map((st) => st.result)).filter((r) => !r.ok) ?? [];
  if (failures.length === 0 && rateFailures.length === 0) return [];
  const lines = ['', 'failures:'];
  for (const f of [...failures, ...rateFailures]) {
    lines.push(`  ${f.label} ${f.server}: ${f.failure ?? ''}`);
    for (const e of f.uclient.errors.slice(0, 5)) lines.push(`      uclient: ${e.trim()}`);
  }
  return lines;
}

export function report(
  results: readonly RunResult[],
  rs: readonly Ratio[],
  cases: Record<CaseName, LoadCase>,
  latency: LatencyReport | undefined,
  rate: RateReport | undefined,
): string {
  const lines = methodLines(results, cases);
  lines.push('');
  lines.push(resultsTable(results));
  if (rs.length > 0) lines.push(...ratioLines(rs));
  if (latency !== undefined) lines.push(...latencyLines(latency));
  if (rate !== undefined) lines.push('', ...rateLines(rate));
  lines.push(...failureLines(results, rate));
  return lines.join('\n');
}

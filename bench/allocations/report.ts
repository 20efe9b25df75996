// npm run bench:allocations's report on stdout: a section per part.
import type { FanoutRow } from './feed-fanout.js';
import { nofileLimit } from '../processes.js';
import { CLIENT_CPU, SERVER_CPU } from '../host.js';
import { fmt, ratio, table } from '../format.js';
import { SETTLE_MS } from './context.js';
import type { Options } from './options.js';
import type { RateResult } from './rate.js';
import type { LiveResult } from './live.js';
import type { SlabCalibration } from './slab.js';
import { FILL_ATTEMPTS, FILL_PORTS, type FillResult } from './fill.js';
import type { SyncResult } from './sync.js';
import type { StoreOpsResult } from './store-ops.js';

export interface Results {
  rate: RateResult[];
  live: LiveResult[];
  slab: SlabCalibration | undefined;
  fill: FillResult[];
  sync: SyncResult | undefined;
  storeOps: StoreOpsResult[];
  fanout: FanoutRow[];
  failures: string[];
}

export function reportRate(rs: readonly RateResult[], o: Options): string[] {
  const lines: string[] = [];
  lines.push(`1. Allocation rate with authentication: Allocate (401 + authenticated) + CreatePermission + ChannelBind`);
  lines.push(
    `   ${o.allocations} allocations (after ${o.warmup} unmeasured warm-up ones), ${o.workers} concurrent client sockets, one new socket per allocation;`,
  );
  lines.push(`   server on CPU ${SERVER_CPU}, driver and redis-server on CPU ${CLIENT_CPU}; latency = first Allocate sent -> ChannelBind success`);
  lines.push(
    o.credentials === 'rest'
      ? '   credentials: a time-limited one (--use-auth-secret) per allocation for anyturn and coturn; the Node floor: its static user'
      : '   credentials: one static user for every allocation',
  );
  const rows: string[][] = [
    ['server', 'store', 'ok', 'alloc/s', 'p50 ms', 'p99 ms', 'max ms', 'retransmits', 'server CPU us/alloc', 'redis CPU us/alloc', 'driver CPU %'],
  ];
  for (const r of rs) {
    rows.push([
      r.server,
      r.store,
      `${r.ok}/${r.attempted}`,
      fmt(r.allocationsPerSecond, 0),
      fmt(r.latencyMs.p50, 2),
      fmt(r.latencyMs.p99, 2),
      fmt(r.latencyMs.max, 1),
      String(r.retransmits),
      fmt(r.serverCpuMicrosPerAllocation, 0),
      fmt(r.redisCpuMicrosPerAllocation, 0),
      fmt(r.driverCpuPercent, 0),
    ]);
  }
  lines.push(table(rows));
  lines.push('', ...rateSummary(rs));
  for (const r of rs) for (const e of r.errors) lines.push(`   errors ${r.server}/${r.store}: ${e}`);
  return lines;
}

function median(xs: readonly (number | undefined)[]): number | undefined {
  const v = xs.filter((x): x is number => x !== undefined).sort((a, b) => a - b);
  if (v.length === 0) return undefined;
  const mid = v.length >> 1;
  return v.length % 2 === 1 ? v[mid] : (v[mid - 1]! + v[mid]!) / 2;
}

/**
 * Per server (medians over the rounds when --rounds N): alloc/s and server CPU per
 * allocation, beside coturn's and the Node floor's (floor-allocate.ts, a relay socket per
 * allocation): how far anyturn is from what any Node server spends, and from coturn.
 */
export function rateSummary(rs: readonly RateResult[]): string[] {
  const kinds = [...new Set(rs.map((r) => r.kind))];
  const byKind = new Map(kinds.map((k) => [k, rs.filter((r) => r.kind === k)]));
  const cpu = (k: string): number | undefined => median((byKind.get(k as RateResult['kind']) ?? []).map((r) => r.serverCpuMicrosPerAllocation));
  const rate = (k: string): number | undefined => median((byKind.get(k as RateResult['kind']) ?? []).map((r) => r.allocationsPerSecond));
  const rows: string[][] = [['server', 'store', 'runs', 'alloc/s', 'server CPU us/alloc', 'alloc/s vs coturn', 'CPU vs coturn', 'CPU vs floor']];
  for (const k of kinds) {
    const first = byKind.get(k)![0]!;
    rows.push([
      first.server,
      first.store,
      String(byKind.get(k)!.length),
      fmt(rate(k), 0),
      fmt(cpu(k), 0),
      ratio(rate(k), rate('coturn')),
      ratio(cpu(k), cpu('coturn')),
      ratio(cpu(k), cpu('floor')),
    ]);
  }
  return ['   per server (medians over the runs); floor = node floor with a relay socket per allocation:', table(rows)];
}

export function reportLive(rs: readonly LiveResult[], slab: Results['slab'], o: Options, serverNofile: number): string[] {
  const lines: string[] = [];
  lines.push(`2. Memory and sockets per allocation: ${o.live} live allocations, each with one permission (no refresh; lifetime 600 s)`);
  lines.push(
    `   before = ${SETTLE_MS / 1000} s after the server is ready; after = ${SETTLE_MS / 1000} s after the last allocation; RSS = VmRSS, fds = entries in /proc/PID/fd;`,
  );
  lines.push('   V8 heap = anyturn_process_nodejs_heap_size_used_bytes from /metrics (no forced GC: garbage included, noisy)');
  lines.push(
    `   every server runs under prlimit --nofile=${serverNofile}:${serverNofile} (the bench shell's limit is ${nofileLimit(process.pid) ?? '?'}; coturn sizes its session table from it)`,
  );
  const rows: string[][] = [
    [
      'server',
      'store',
      'ok',
      'RSS MB before',
      'RSS MB after',
      'RSS KB/alloc',
      'fds before',
      'fds after',
      'fds/alloc',
      'V8 heap B/alloc',
      'redis B/alloc',
      'redis keys/alloc',
      'create s',
    ],
  ];
  for (const r of rs) {
    rows.push([
      r.server,
      r.store,
      `${r.ok}/${r.attempted}`,
      fmt(r.before.rssKb === undefined ? undefined : r.before.rssKb / 1024, 1),
      fmt(r.after.rssKb === undefined ? undefined : r.after.rssKb / 1024, 1),
      fmt(r.rssKbPerAllocation, 2),
      r.before.fds === undefined ? '-' : String(r.before.fds),
      r.after.fds === undefined ? '-' : String(r.after.fds),
      fmt(r.fdsPerAllocation, 3),
      fmt(r.heapBytesPerAllocation, 0),
      fmt(r.redisBytesPerAllocation, 0),
      fmt(r.redisKeysPerAllocation, 2),
      fmt(r.createSeconds, 1),
    ]);
  }
  lines.push(table(rows));
  for (const r of rs) {
    const reported = r.liveAllocationsReported === undefined ? '' : `, anyturn_allocations = ${r.liveAllocationsReported}`;
    lines.push(`   ${r.server}/${r.store}: nofile ${r.nofileLimit ?? '?'}, ${r.serverThreads ?? '?'} threads${reported}`);
    for (const e of r.errors) lines.push(`   errors: ${e}`);
  }
  const coturn = rs.find((r) => r.kind === 'coturn');
  if (coturn) {
    lines.push('');
    lines.push('   ratio anyturn/coturn:');
    const rr: string[][] = [['server', 'store', 'RSS/alloc', 'fds/alloc']];
    for (const r of rs)
      if (r.kind !== 'coturn')
        rr.push([r.server, r.store, ratio(r.rssKbPerAllocation, coturn.rssKbPerAllocation), ratio(r.fdsPerAllocation, coturn.fdsPerAllocation)]);
    lines.push(table(rr));
  }
  if (slab) {
    const parts = Object.entries(slab.byCache)
      .map(([c, b]) => `${c} ${b.toFixed(0)}`)
      .join(', ');
    lines.push(
      `   kernel memory outside RSS: ~${fmt(slab.bytesPerSocket, 0)} bytes of slab per bound UDP socket (${parts}; /proc/slabinfo delta while the driver binds ${slab.sockets} sockets; host-wide, rough)`,
    );
  }
  return lines;
}

export function reportFill(rs: readonly FillResult[]): string[] {
  const lines: string[] = [];
  lines.push(
    `2b. Filling a relay range: ${FILL_ATTEMPTS} Allocates, one after the other, on a range of ${FILL_PORTS} relay ports (the capacity bound: one port per allocation)`,
  );
  const rows: string[][] = [['server', 'store', 'ports', 'allocated', 'first refusal at', 'refused with ports free', 'refusals']];
  for (const r of rs) {
    rows.push([
      r.server,
      r.store,
      String(r.ports),
      `${r.ok}/${r.attempted}`,
      r.firstRefusal === undefined ? '-' : `#${r.firstRefusal}`,
      String(r.refusedWhileFree),
      r.errors.join('; ') || '-',
    ]);
  }
  lines.push(table(rows));
  return lines;
}

export function reportSync(s: SyncResult): string[] {
  const lines: string[] = [];
  lines.push('3. Start-up sync, anycast relay mode: node A made the allocations of part 2 and was killed (SIGKILL);');
  lines.push('   node B starts in its place (same relay IP, ports, Redis) and takes on every record before serving.');
  lines.push('   sync = (B start -> "took on the allocations" line) minus the same with an empty store;');
  lines.push('   sync (B log) = B\'s own log time from "redis connection ready" to that line; us/alloc from sync ms');
  const rows: string[][] = [
    [
      'records in store',
      'adopted',
      'start->line ms',
      'empty store ms',
      'sync ms',
      'sync ms (B log)',
      'us/alloc',
      'start->ready ms',
      'RSS MB after',
      'fds after',
      'refresh ok',
      'relay ok',
    ],
  ];
  rows.push([
    String(s.recordsInStore),
    s.adopted === undefined ? '-' : String(s.adopted),
    fmt(s.startToSyncLineMs, 0),
    fmt(s.baselineStartToSyncLineMs, 0),
    fmt(s.syncMs, 0),
    fmt(s.syncMsFromLog, 0),
    fmt(s.microsPerAllocation, 0),
    fmt(s.startToReadyMs, 0),
    fmt(s.after.rssKb === undefined ? undefined : s.after.rssKb / 1024, 1),
    s.after.fds === undefined ? '-' : String(s.after.fds),
    `${s.probeRefreshOk}/${s.probeSample}`,
    `${s.probeRelayOk}/${s.probeSample}`,
  ]);
  lines.push(table(rows, 0));
  lines.push(`   refresh ok = Refresh through B from a sample of A's clients; relay ok = their Send indication reached the peer from the same relayed port`);
  const calls = Object.entries(s.redisCallsDuringStart)
    .sort((a, b) => b[1] - a[1])
    .map(([c, n]) => `${c} ${n}`)
    .join(', ');
  lines.push(`   Redis commands from B's start to its readiness: ${calls || '-'}`);
  for (const e of s.probeErrors) lines.push(`   probe errors: ${e}`);
  return lines;
}

export function reportStoreOps(rs: readonly StoreOpsResult[]): string[] {
  const lines: string[] = [];
  lines.push('4. Redis commands per allocation lifecycle: Allocate (401 + auth), CreatePermission, ChannelBind, Refresh 600, Refresh 0');
  lines.push('   INFO commandstats after CONFIG RESETSTAT (idle background per second measured first and subtracted);');
  lines.push('   "issued" = commands anyturn sends (round trips), "in scripts" = commands its Lua scripts run (both from MONITOR)');
  for (const r of rs) {
    lines.push('');
    lines.push(
      `   ${r.kind === 'anyturn-redis' ? 'unicast relay mode (forward mode)' : 'anycast relay mode'}: ${r.ok}/${r.lifecycles} lifecycles in ${fmt(r.windowSeconds, 1)} s, p50 ${fmt(r.latencyMs.p50, 2)} ms per lifecycle; ${r.eventSubscribers ?? '?'} subscriber(s) on anyturn:events`,
    );
    const rows: string[][] = [['command', 'calls/lifecycle', 'issued', 'in scripts', 'background/s']];
    for (const row of r.rows) {
      if (row.callsPerLifecycle < 0.005 && row.issuedPerLifecycle < 0.005 && row.inScriptsPerLifecycle < 0.005) continue;
      rows.push([
        row.command,
        fmt(row.callsPerLifecycle, 2),
        fmt(row.issuedPerLifecycle, 2),
        fmt(row.inScriptsPerLifecycle, 2),
        fmt(row.backgroundPerSecond, 2),
      ]);
    }
    rows.push([
      'total',
      fmt(r.commandsPerLifecycle, 2),
      fmt(r.roundTripsPerLifecycle, 2),
      fmt(
        r.rows.reduce((s, x) => s + x.inScriptsPerLifecycle, 0),
        2,
      ),
      '',
    ]);
    lines.push(table(rows, 1));
    const sizes = Object.entries(r.avgEventBytes)
      .map(([t, b]) => `${t} ${b.toFixed(0)} B`)
      .join(', ');
    lines.push(`   published events per lifecycle: ${fmt(r.publishesPerLifecycle, 2)}; mean payload: ${sizes || '-'}`);
    const e = r.eventCost;
    if (e) {
      lines.push(
        `   hearing the event channel: ${e.events} copies of an 'updated' event (${e.eventBytes} B) at ${fmt(e.ratePerSecond, 0)}/s, ${fmt(e.receiversPerPublish, 0)} subscriber(s): ` +
          // A forward-mode node no longer subscribes to anyturn:events (per-allocation channels, docs/scaling.md "The event feed").
          `${e.receiversPerPublish > 0 ? `anyturn ${fmt(e.nodeMicrosPerEvent, 1)} us CPU per event heard` : 'anyturn hears none of them'}, redis-server ${fmt(e.redisMicrosPerPublish, 1)} us per PUBLISH (pipelined);`,
      );
      lines.push(
        `   with ${fmt(e.wideSubscribers, 0)} subscribers: redis-server ${fmt(e.wideRedisMicrosPerPublish, 1)} us per PUBLISH, ${fmt(e.redisMicrosPerDelivery, 2)} us per extra delivery`,
      );
    }
    for (const e of r.errors) lines.push(`   errors: ${e}`);
  }
  return lines;
}

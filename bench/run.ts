// npm run bench: the same turnutils_uclient load against anyturn, coturn and the
// floor (bench/floor-forwarder.ts, a minimal relay in plain Node), each server pinned
// to one core, and server CPU per relayed packet compared; then a latency probe
// (bench/latency.ts) and a 'max lossless rate' search per server.
//
// Usage: node dist/bench/run.js [--only anyturn|coturn|floor] [--cases channel,send,...]
//                               [-n N] [--rounds N] [--no-latency] [--no-rate] [--rate-steps 40,60,80,100]
//
// --rounds N runs every case N times, the servers taking turns within each round; the
// table shows each server's median run, and the ratios of every round are printed too
// (one run on a shared VM moves by 10-20 %).
//
// All traffic stays on 127.0.0.1. Every spawned process is stopped at the end,
// on failure and on Ctrl-C; each step has a timeout.
import { existsSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join, relative } from 'node:path';
import { spawnSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { performance } from 'node:perf_hooks';

import {
  ProcessGroup,
  stopOnSignals,
  clkTck,
  treeCpuMicros,
  treeCpuUserSystemMicros,
  cpusAllowed,
  processTree,
  threadCount,
  udpReceiveBufferErrors,
  type TrackedProcess,
} from './processes.js';
import { freeUdpPort, freeUdpRange, freeUdpTcpPort, stunBindingAnswers } from './net.js';
import {
  CASE_NAMES,
  PAYLOAD_BYTES,
  SESSIONS,
  defaultCases,
  parseUclientOutput,
  peakSendRate,
  rateCase,
  uclientArgs,
  uclientTimeoutMs,
  type CaseName,
  type LoadCase,
  type UclientStats,
} from './uclient.js';
import { SERVER_NAMES, anyturnLaunch, coturnLaunch, floorLaunch, type ServerLaunch, type ServerName } from './servers.js';
import { DEFAULT_LATENCY_OPTIONS, probeThroughServer, type LatencyResult } from './latency.js';
import { LOOPBACK, summarize } from './turn-driver.js';

const SERVER_CPU = 1;
const CLIENT_CPU = 0;

/** Where a server and its load run, and how many cores the server may use. */
interface Placement {
  /** The name in tables: the server, or e.g. 'anyturn x2' in the scaling section. */
  readonly label: string;
  readonly serverCpus: string;
  readonly clientCpus: string;
  /** anyturn --workers; coturn --relay-threads. */
  readonly workers: number;
  readonly relayThreads: number;
}

function onePlacement(server: ServerName): Placement {
  return { label: server, serverCpus: String(SERVER_CPU), clientCpus: String(CLIENT_CPU), workers: 1, relayThreads: 0 };
}

/**
 * The scaling section (--scaling): one core against two. On this 2-core machine the
 * 2-core servers share both cores with uclient and the peer; the 1-core ones have core 1
 * to themselves, as in the main table.
 */
const SCALING: readonly { readonly server: ServerName; readonly placement: Placement }[] = [
  { server: 'anyturn', placement: { label: 'anyturn 1 proc', serverCpus: '1', clientCpus: '0', workers: 1, relayThreads: 0 } },
  { server: 'anyturn', placement: { label: 'anyturn --workers 2', serverCpus: '0,1', clientCpus: '0,1', workers: 2, relayThreads: 0 } },
  { server: 'coturn', placement: { label: 'coturn 1 thread', serverCpus: '1', clientCpus: '0', workers: 1, relayThreads: 0 } },
  { server: 'coturn', placement: { label: 'coturn 2 threads', serverCpus: '0,1', clientCpus: '0,1', workers: 1, relayThreads: 2 } },
];
const DEFAULT_SCALING_STEPS = [40, 60, 80, 100, 120, 140];
const RELAY_PORT_COUNT = 200;
/** The rate steps get a wider relay range: at 80 sessions uclient's 437 retries (a new socket, a new
 *  allocation, the old one left to expire) used up 200 ports on both anyturn and coturn. */
const RATE_RELAY_PORT_COUNT = 1000;
const READY_TIMEOUT_MS = 15_000;
const USER = 'bench';
const PASSWORD = 'bench-password';
const REALM = 'bench.anyturn';
/** Max lossless rate: sessions per step (1 ms interval each, so N sessions = N k msg/s offered). */
const DEFAULT_RATE_STEPS = [40, 60, 80, 100];
/** Messages per session in a rate step: 8 s of sending per session, so that all sessions
 *  (started at random 1-6 s offsets) overlap at the full rate for at least 3 s. */
const RATE_MESSAGES_PER_SESSION = 8000;

const METHOD_NOTES = [
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

interface Options {
  readonly servers: readonly ServerName[];
  readonly cases: readonly CaseName[];
  readonly messagesPerSession: number | undefined;
  /** Runs of each case per server, taking turns; the table shows the median run. */
  readonly rounds: number;
  readonly latency: boolean;
  readonly rate: boolean;
  readonly rateSteps: readonly number[];
  /** Only the scaling section: 1 core against 2 (anyturn --workers 2, coturn --relay-threads 2). */
  readonly scaling: boolean;
}

function usage(): string {
  return `usage: node dist/bench/run.js [--only ${SERVER_NAMES.join('|')}] [--cases ${CASE_NAMES.join(',')}] [-n N] [--rounds N] [--no-latency] [--no-rate] [--rate-steps ${DEFAULT_RATE_STEPS.join(',')}] [--scaling]`;
}

function parseOptions(argv: readonly string[]): Options {
  let servers: readonly ServerName[] = SERVER_NAMES;
  let cases: readonly CaseName[] = CASE_NAMES;
  let messagesPerSession: number | undefined;
  let rounds = 1;
  let latency = true;
  let rate = true;
  let rateSteps: readonly number[] | undefined;
  let scaling = false;
  for (let i = 0; i < argv.length; i++) {
    const flag = argv[i];
    const value = argv[i + 1];
    if (flag === '--help') {
      console.log(usage());
      process.exit(0);
    }
    if (flag === '--no-latency') {
      latency = false;
      continue;
    }
    if (flag === '--no-rate') {
      rate = false;
      continue;
    }
    if (flag === '--scaling') {
      scaling = true;
      continue;
    }
    if (flag !== '--only' && flag !== '--cases' && flag !== '-n' && flag !== '--rounds' && flag !== '--rate-steps') {
      throw new Error(`unknown argument '${flag ?? ''}'; ${usage()}`);
    }
    if (value === undefined) throw new Error(`${flag} needs a value; ${usage()}`);
    i++;
    if (flag === '--only') {
      const s = SERVER_NAMES.find((n) => n === value);
      if (s === undefined) throw new Error(`--only '${value}': allowed are ${SERVER_NAMES.join(', ')}`);
      servers = [s];
    } else if (flag === '--cases') {
      const picked: CaseName[] = [];
      for (const part of value.split(',')) {
        const c = CASE_NAMES.find((n) => n === part.trim());
        if (c === undefined) throw new Error(`--cases '${part}': allowed are ${CASE_NAMES.join(', ')}`);
        if (!picked.includes(c)) picked.push(c);
      }
      cases = picked;
    } else if (flag === '--rounds') {
      const n = Number(value);
      if (!Number.isInteger(n) || n < 1 || n > 50) throw new Error(`--rounds '${value}': runs per case and server, an integer from 1 to 50`);
      rounds = n;
    } else if (flag === '--rate-steps') {
      const steps = value.split(',').map((v) => Number(v.trim()));
      if (steps.some((n) => !Number.isInteger(n) || n < 1 || n > 150)) throw new Error(`--rate-steps '${value}': sessions per step, integers 1-150`);
      rateSteps = [...steps].sort((a, b) => a - b);
    } else {
      const n = Number(value);
      if (!Number.isInteger(n) || n < 1) throw new Error(`-n '${value}': a positive integer is required`);
      messagesPerSession = n;
    }
  }
  return { servers, cases, messagesPerSession, rounds, latency, rate, rateSteps: rateSteps ?? (scaling ? DEFAULT_SCALING_STEPS : DEFAULT_RATE_STEPS), scaling };
}

interface RunResult {
  readonly server: ServerName;
  readonly case: CaseName;
  /** 1-based, with --rounds; every run of a round ran back to back. */
  readonly round?: number;
  /** The run's name in logs: the case, or 'rate-N' for a max-lossless-rate step. */
  readonly label: string;
  /** Not run: the server does not support the case (the floor and TCP). Counts as neither ok nor failed. */
  readonly skipped: boolean;
  readonly ok: boolean;
  readonly failure: string | undefined;
  readonly sent: number;
  readonly received: number;
  readonly lost: number;
  readonly lostPercent: number;
  readonly serverCpuMicros: number | undefined;
  /** The kernel (stime) part of serverCpuMicros: syscalls and the loopback delivery of what the server sends. */
  readonly serverSystemMicros: number | undefined;
  readonly relayedPackets: number;
  readonly cpuMicrosPerRelayedPacket: number | undefined;
  readonly loadWallSeconds: number | undefined;
  /** Host-wide UDP RcvbufErrors during the load (other processes' drops count too). */
  readonly udpReceiveBufferErrors: number | undefined;
  readonly uclient: {
    readonly args: readonly string[];
    readonly finished: boolean;
    readonly timedOut: boolean;
    readonly exit: number | string | undefined;
    readonly reportedLost: number | undefined;
    readonly sendDropped: number | undefined;
    readonly transmitSeconds: number | undefined;
    readonly rttAverageMs: number | undefined;
    readonly rttMaxMs: number | undefined;
    /** Highest messages sent in one second (uclient's progress lines). */
    readonly peakSendRate: number | undefined;
    readonly errors: readonly string[];
  };
  readonly serverProcess: {
    readonly readyBy: string | undefined;
    readonly cpusAllowed: string | undefined;
    readonly threads: number | undefined;
    /** The server's processes (anyturn --workers N: N + 1). */
    readonly processes?: number;
  };
  readonly logs: { readonly server: string; readonly uclient: string | undefined };
}

function findRepoRoot(): string {
  let dir = dirname(fileURLToPath(import.meta.url));
  for (let i = 0; i < 5; i++) {
    if (existsSync(join(dir, 'package.json'))) return dir;
    dir = dirname(dir);
  }
  throw new Error('cannot find package.json above the bench script');
}

function haveCommand(name: string): boolean {
  return spawnSync('sh', ['-c', `command -v ${name}`], { stdio: 'ignore' }).status === 0;
}

function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

/** Ready when the log line appears (if the server has one) or a STUN Binding is answered. */
async function waitReady(server: TrackedProcess, launch: ServerLaunch, port: number): Promise<string | undefined> {
  let byLine = false;
  if (launch.readyLine !== undefined) {
    void server.waitForLine(launch.readyLine, READY_TIMEOUT_MS).then((ok) => {
      byLine = ok;
    });
  }
  const deadline = Date.now() + READY_TIMEOUT_MS;
  while (Date.now() < deadline && !server.hasExited()) {
    if (byLine) return 'log line';
    if (await stunBindingAnswers(port, 200)) return byLine ? 'log line' : 'STUN Binding answered';
    await sleep(100);
  }
  return undefined;
}

function failedResult(
  server: ServerName,
  c: CaseName,
  failure: string,
  logs: RunResult['logs'],
  extra: Partial<Pick<RunResult, 'serverProcess' | 'skipped' | 'label'>> = {},
): RunResult {
  return {
    server,
    case: c,
    label: extra.label ?? c,
    skipped: extra.skipped ?? false,
    ok: false,
    failure,
    sent: 0,
    received: 0,
    lost: 0,
    lostPercent: 0,
    serverCpuMicros: undefined,
    serverSystemMicros: undefined,
    relayedPackets: 0,
    cpuMicrosPerRelayedPacket: undefined,
    loadWallSeconds: undefined,
    udpReceiveBufferErrors: undefined,
    uclient: {
      args: [],
      finished: false,
      timedOut: false,
      exit: undefined,
      reportedLost: undefined,
      sendDropped: undefined,
      transmitSeconds: undefined,
      rttAverageMs: undefined,
      rttMaxMs: undefined,
      peakSendRate: undefined,
      errors: [],
    },
    serverProcess: extra.serverProcess ?? { readyBy: undefined, cpusAllowed: undefined, threads: undefined },
    logs,
  };
}

interface RunContext {
  readonly group: ProcessGroup;
  readonly peerPort: number;
  readonly scratchDir: string;
  readonly logDir: string;
  readonly repoRoot: string;
  readonly anyturnCli: string;
  readonly floorScript: string;
}

interface StartedServer {
  readonly server: TrackedProcess;
  readonly launch: ServerLaunch;
  readonly listeningPort: number;
}

/** Starts a fresh server pinned to its placement's cores and waits until it is ready; a string says why not. */
async function startServer(
  ctx: RunContext,
  serverName: ServerName,
  tcp: boolean,
  relayPortCount: number = RELAY_PORT_COUNT,
  placement: Placement = onePlacement(serverName),
): Promise<StartedServer | { readonly failure: string; readonly started?: StartedServer }> {
  const script = serverName === 'anyturn' ? ctx.anyturnCli : serverName === 'floor' ? ctx.floorScript : undefined;
  if (script !== undefined && !existsSync(script)) return { failure: `${relative(ctx.repoRoot, script)} does not exist (build first)` };
  const listeningPort = tcp ? await freeUdpTcpPort() : await freeUdpPort();
  const relayPorts = await freeUdpRange(relayPortCount);
  const settings = {
    listeningPort,
    relayPorts,
    user: USER,
    password: PASSWORD,
    realm: REALM,
    scratchDir: ctx.scratchDir,
    tcp,
    workers: placement.workers,
    relayThreads: placement.relayThreads,
  };
  const launch =
    serverName === 'coturn'
      ? coturnLaunch(settings)
      : serverName === 'floor'
        ? floorLaunch(settings, process.execPath, ctx.floorScript)
        : anyturnLaunch(settings, process.execPath, ctx.anyturnCli);
  const server = ctx.group.start(serverName, placement.serverCpus, launch.command, launch.args);
  const started = { server, launch, listeningPort };
  const readyBy = await waitReady(server, launch, listeningPort);
  if (readyBy === undefined) {
    const why = server.hasExited()
      ? `server exited (${String(await server.exited)}) before it was ready`
      : `server not ready within ${READY_TIMEOUT_MS} ms (no ready line, no STUN Binding answer)`;
    return { failure: why, started };
  }
  readyByOf.set(server, readyBy);
  return started;
}
const readyByOf = new WeakMap<TrackedProcess, string>();

async function runOne(
  ctx: RunContext,
  serverName: ServerName,
  c: LoadCase,
  label: string = c.name,
  relayPortCount = RELAY_PORT_COUNT,
  placement: Placement = onePlacement(serverName),
): Promise<RunResult> {
  const fileName = placement.label.replace(/[^a-z0-9]+/gi, '-');
  const serverLog = join(ctx.logDir, `${label}-${fileName}-server.log`);
  const uclientLog = join(ctx.logDir, `${label}-${fileName}-uclient.log`);
  const logs = { server: relative(ctx.repoRoot, serverLog), uclient: undefined };
  if (serverName === 'floor' && c.tcp) {
    writeFileSync(serverLog, 'not started: the floor relays UDP clients only\n');
    return failedResult(serverName, c.name, 'n/a: the floor has no TCP listener', logs, { skipped: true, label });
  }
  const s = await startServer(ctx, serverName, c.tcp, relayPortCount, placement);
  if ('failure' in s) {
    if (s.started !== undefined) {
      await ctx.group.stop(s.started.server);
      writeFileSync(serverLog, `# ${s.started.launch.command} ${s.started.launch.args.join(' ')}\n${s.started.server.output()}`);
    } else writeFileSync(serverLog, `not started: ${s.failure}\n`);
    return failedResult(serverName, c.name, `${s.failure}; see ${logs.server}`, logs, { label });
  }
  const { server, launch, listeningPort } = s;
  try {
    const readyBy = readyByOf.get(server);
    const serverProcess = {
      readyBy,
      cpusAllowed: cpusAllowed(server.pid),
      threads: threadCount(server.pid),
      processes: processTree(server.pid).length,
    };

    const args = uclientArgs(c, { serverPort: listeningPort, peerPort: ctx.peerPort, user: USER, password: PASSWORD });
    const rcvbufBefore = udpReceiveBufferErrors();
    // The whole process tree: anyturn --workers forks its workers.
    const cpuBefore = treeCpuMicros(server.pid);
    const splitBefore = treeCpuUserSystemMicros(server.pid);
    const t0 = performance.now();
    const uclient = ctx.group.start('uclient', placement.clientCpus, 'turnutils_uclient', args);
    let timedOut = false;
    const timeoutMs = uclientTimeoutMs(c);
    const timer = setTimeout(() => {
      timedOut = true;
      void ctx.group.stop(uclient);
    }, timeoutMs);
    const exit = await uclient.exited;
    clearTimeout(timer);
    let cpuAfter: number | undefined;
    let systemMicros: number | undefined;
    try {
      cpuAfter = treeCpuMicros(server.pid);
      systemMicros = treeCpuUserSystemMicros(server.pid).system - splitBefore.system;
    } catch {
      cpuAfter = undefined;
    }
    const loadWallSeconds = (performance.now() - t0) / 1000;
    const rcvbufAfter = udpReceiveBufferErrors();
    writeFileSync(uclientLog, `# turnutils_uclient ${args.join(' ')}\n# exit: ${String(exit)}\n${uclient.output()}`);
    const stats: UclientStats = parseUclientOutput(uclient.output());

    const serverCpuMicros = cpuAfter === undefined ? undefined : cpuAfter - cpuBefore;
    const relayedPackets = 2 * stats.received;
    const lost = stats.sent - stats.received;
    let failure: string | undefined;
    if (cpuAfter === undefined || server.hasExited()) failure = 'server exited during the load';
    else if (timedOut) failure = `uclient did not finish within ${timeoutMs} ms (killed)`;
    else if (!stats.finished) failure = `uclient exited (${String(exit)}) without final statistics`;
    else if (stats.received === 0) failure = 'no message came back';
    return {
      server: serverName,
      case: c.name,
      label,
      skipped: false,
      ok: failure === undefined,
      failure: failure === undefined ? undefined : `${failure}; see ${relative(ctx.repoRoot, uclientLog)}`,
      sent: stats.sent,
      received: stats.received,
      lost,
      lostPercent: stats.sent === 0 ? 0 : (100 * lost) / stats.sent,
      serverCpuMicros,
      serverSystemMicros: systemMicros,
      relayedPackets,
      cpuMicrosPerRelayedPacket:
        serverCpuMicros === undefined || relayedPackets === 0 ? undefined : serverCpuMicros / relayedPackets,
      loadWallSeconds,
      udpReceiveBufferErrors:
        rcvbufBefore === undefined || rcvbufAfter === undefined ? undefined : rcvbufAfter - rcvbufBefore,
      uclient: {
        args,
        finished: stats.finished,
        timedOut,
        exit,
        reportedLost: stats.reportedLost,
        sendDropped: stats.sendDropped,
        transmitSeconds: stats.transmitSeconds,
        rttAverageMs: stats.rttAverageMs,
        rttMaxMs: stats.rttMaxMs,
        peakSendRate: peakSendRate(uclient.output()),
        errors: stats.errors,
      },
      serverProcess,
      logs: { server: logs.server, uclient: relative(ctx.repoRoot, uclientLog) },
    };
  } finally {
    await ctx.group.stop(server);
    writeFileSync(serverLog, `# ${launch.command} ${launch.args.join(' ')}\n${server.output()}`);
  }
}

interface Ratio {
  readonly case: CaseName;
  /** anyturn / coturn */
  readonly cpuMicrosPerRelayedPacket: number | undefined;
  readonly serverCpuMicros: number | undefined;
  /** anyturn / floor */
  readonly cpuMicrosPerRelayedPacketOverFloor: number | undefined;
  readonly lostPercentAnyturn: number | undefined;
  readonly lostPercentCoturn: number | undefined;
  readonly lostPercentFloor: number | undefined;
}

function ratios(results: readonly RunResult[]): Ratio[] {
  const out: Ratio[] = [];
  for (const c of CASE_NAMES) {
    const a = results.find((r) => r.case === c && r.server === 'anyturn');
    const b = results.find((r) => r.case === c && r.server === 'coturn');
    const f = results.find((r) => r.case === c && r.server === 'floor');
    if (a === undefined || (b === undefined && f === undefined)) continue;
    const div = (x: number | undefined, y: number | undefined, other: RunResult | undefined): number | undefined =>
      x === undefined || y === undefined || y === 0 || !a.ok || other === undefined || !other.ok ? undefined : x / y;
    out.push({
      case: c,
      cpuMicrosPerRelayedPacket: div(a.cpuMicrosPerRelayedPacket, b?.cpuMicrosPerRelayedPacket, b),
      serverCpuMicros: div(a.serverCpuMicros, b?.serverCpuMicros, b),
      cpuMicrosPerRelayedPacketOverFloor: div(a.cpuMicrosPerRelayedPacket, f?.cpuMicrosPerRelayedPacket, f),
      lostPercentAnyturn: a.ok ? a.lostPercent : undefined,
      lostPercentCoturn: b?.ok === true ? b.lostPercent : undefined,
      lostPercentFloor: f?.ok === true ? f.lostPercent : undefined,
    });
  }
  return out;
}

/**
 * Per case and server, the run with the median CPU per relayed packet (the lower middle for
 * an even count). A failed run is shown instead, so that no failure hides behind a median.
 */
function medianRuns(results: readonly RunResult[]): RunResult[] {
  const out: RunResult[] = [];
  for (const c of CASE_NAMES) {
    for (const s of SERVER_NAMES) {
      const runs = results.filter((r) => r.case === c && r.server === s);
      if (runs.length === 0) continue;
      const failed = runs.find((r) => !r.ok && !r.skipped);
      const measured = runs.filter((r) => r.ok && r.cpuMicrosPerRelayedPacket !== undefined);
      measured.sort((x, y) => x.cpuMicrosPerRelayedPacket! - y.cpuMicrosPerRelayedPacket!);
      out.push(failed ?? measured[Math.floor((measured.length - 1) / 2)] ?? runs[0]!);
    }
  }
  return out;
}

interface RoundRatio {
  readonly case: CaseName;
  readonly round: number;
  /** anyturn / coturn and anyturn / floor, CPU per relayed packet, within the round. */
  readonly overCoturn: number | undefined;
  readonly overFloor: number | undefined;
  /** Messages lost in the round, per server. */
  readonly lost: Partial<Record<ServerName, number>>;
}

function roundRatios(results: readonly RunResult[]): RoundRatio[] {
  const out: RoundRatio[] = [];
  for (const c of CASE_NAMES) {
    const rounds = [...new Set(results.filter((r) => r.case === c && r.round !== undefined).map((r) => r.round!))].sort((x, y) => x - y);
    for (const round of rounds) {
      const inRound = results.filter((r) => r.case === c && r.round === round);
      const cpu = (s: ServerName): number | undefined => {
        const r = inRound.find((x) => x.server === s);
        return r?.ok === true ? r.cpuMicrosPerRelayedPacket : undefined;
      };
      const over = (s: ServerName): number | undefined => {
        const a = cpu('anyturn');
        const b = cpu(s);
        return a === undefined || b === undefined || b === 0 ? undefined : a / b;
      };
      const lost: Partial<Record<ServerName, number>> = {};
      for (const r of inRound) if (!r.skipped) lost[r.server] = r.lost;
      out.push({ case: c, round, overCoturn: over('coturn'), overFloor: over('floor'), lost });
    }
  }
  return out;
}

function roundsReport(perRound: readonly RoundRatio[], rounds: number): string[] {
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

function fmt(n: number | undefined, digits: number): string {
  return n === undefined ? '-' : n.toFixed(digits);
}

function table(rows: readonly (readonly string[])[]): string {
  const widths: number[] = [];
  for (const row of rows) row.forEach((cell, i) => (widths[i] = Math.max(widths[i] ?? 0, cell.length)));
  return rows
    .map((row) => row.map((cell, i) => (i < 2 ? cell.padEnd(widths[i] ?? 0) : cell.padStart(widths[i] ?? 0))).join('  '))
    .join('\n');
}

interface LatencyReport {
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

interface RateStep {
  readonly sessions: number;
  readonly offeredPerSecond: number;
  readonly result: RunResult;
}

interface RateReport {
  readonly method: string;
  readonly messagesPerSession: number;
  readonly servers: {
    readonly server: ServerName;
    /** The server and its placement, as in the table. */
    readonly label: string;
    readonly placement: Placement;
    readonly steps: RateStep[];
    /** Highest offered rate (msg/s) with 0 lost, below the first lossy step; undefined if the first step lost. */
    readonly maxLosslessPerSecond: number | undefined;
    /** True if no step lost a message: the figure is a lower bound (the steps ran out, or the next step failed to run). */
    readonly atLeast: boolean;
    /** Why the step after the figure did not count: it failed to run (not a loss). */
    readonly stoppedBy: string | undefined;
  }[];
}

/** The max-lossless-rate table and the figure per server. */
function rateLines(rate: RateReport): string[] {
  const lines: string[] = [];
  lines.push(`max lossless rate: ${rate.method}`);
  const rateRows: string[][] = [['server', 'sessions', 'offered msg/s', 'peak sent msg/s', 'msgs sent', 'lost', 'lost %', 'CPU us / relayed pkt', 'rcvbuf drops']];
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
function scalingReport(rate: RateReport): string[] {
  const lines = ['scaling: one core against two (--scaling)'];
  for (const x of SCALING) {
    lines.push(`  ${x.placement.label}: server on CPU ${x.placement.serverCpus}, uclient on CPU ${x.placement.clientCpus}, turnutils_peer on CPU ${CLIENT_CPU}`);
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

function report(
  results: readonly RunResult[],
  rs: readonly Ratio[],
  cases: Record<CaseName, LoadCase>,
  latency: LatencyReport | undefined,
  rate: RateReport | undefined,
): string {
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
  lines.push('');
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
  lines.push(table(rows));
  if (rs.length > 0) {
    lines.push('');
    lines.push('ratios (CPU us / relayed pkt):');
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
    lines.push(table(ratioRows));
  }
  if (latency !== undefined) {
    const o = latency.options;
    lines.push('');
    lines.push(
      `latency probe (bench/latency.ts): one allocation, ${o.count} ChannelData round trips of ${o.payloadBytes} bytes at ${o.ratePerSecond}/s ` +
        `(after ${o.warmup} untimed), no other load, taking turns with as many direct round trips (client -> peer -> client);`,
    );
    lines.push('  added = RTT through the server - RTT direct, at the same percentile');
    const latRows: string[][] = [['server', '', 'recv/sent', 'RTT p50 us', 'RTT p99 us', 'RTT max us', 'direct p50 us', 'direct p99 us', 'added p50 us', 'added p99 us']];
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
  }
  if (rate !== undefined) {
    lines.push('');
    lines.push(...rateLines(rate));
  }
  const failures = results.filter((r) => !r.ok && !r.skipped);
  const rateFailures = rate?.servers.flatMap((s) => s.steps.map((st) => st.result)).filter((r) => !r.ok) ?? [];
  if (failures.length > 0 || rateFailures.length > 0) {
    lines.push('');
    lines.push('failures:');
    for (const f of [...failures, ...rateFailures]) {
      lines.push(`  ${f.label} ${f.server}: ${f.failure ?? ''}`);
      for (const e of f.uclient.errors.slice(0, 5)) lines.push(`      uclient: ${e.trim()}`);
    }
  }
  return lines.join('\n');
}

async function runLatency(ctx: RunContext, servers: readonly ServerName[], interrupted: () => boolean): Promise<LatencyReport> {
  const o = DEFAULT_LATENCY_OPTIONS;
  const peer = { address: LOOPBACK, port: ctx.peerPort };
  const out: LatencyReport['servers'] = [];
  for (const serverName of servers) {
    if (interrupted()) break;
    process.stderr.write(`[bench] latency / ${serverName}: ${o.count} round trips at ${o.ratePerSecond}/s, interleaved with direct ones ... `);
    const serverLog = join(ctx.logDir, `latency-${serverName}-server.log`);
    const s = await startServer(ctx, serverName, false);
    const started = 'failure' in s ? s.started : s;
    try {
      if ('failure' in s) throw new Error(s.failure);
      const { through, direct } = await probeThroughServer({ address: LOOPBACK, port: s.listeningPort }, { username: USER, password: PASSWORD }, peer, o);
      const added = (x: number | undefined, y: number | undefined): number | undefined => (x === undefined || y === undefined ? undefined : x - y);
      out.push({
        server: serverName,
        ok: through.received > 0 && direct.received > 0,
        failure: through.received > 0 ? undefined : 'nothing came back',
        result: through,
        direct,
        addedP50Micros: added(through.rttMicros.p50, direct.rttMicros.p50),
        addedP99Micros: added(through.rttMicros.p99, direct.rttMicros.p99),
      });
      process.stderr.write(
        `p50 ${fmt(through.rttMicros.p50, 0)} us (direct ${fmt(direct.rttMicros.p50, 0)}), p99 ${fmt(through.rttMicros.p99, 0)} us (direct ${fmt(direct.rttMicros.p99, 0)}), ${through.received}/${through.sent} back\n`,
      );
    } catch (err) {
      const why = err instanceof Error ? err.message : String(err);
      out.push({ server: serverName, ok: false, failure: why, result: undefined, direct: undefined, addedP50Micros: undefined, addedP99Micros: undefined });
      process.stderr.write(`FAILED: ${why}\n`);
    } finally {
      if (started !== undefined) {
        await ctx.group.stop(started.server);
        writeFileSync(serverLog, `# ${started.launch.command} ${started.launch.args.join(' ')}\n${started.server.output()}`);
      }
    }
  }
  return { options: o, servers: out };
}

const RATE_METHOD =
  'the channel case (100-byte ChannelData, -z 1) with N sessions, so N thousand msg/s offered once all sessions run ' +
  '(they start at random 1-6 s offsets; each sends for -n ms); N steps up per server until a step loses a message, ' +
  'and the highest lossless step is reported. "peak sent" = most messages uclient sent in one second; if it falls short ' +
  'of the offer, the load generator (core 0), not the server, was the limit.';

async function runRate(
  ctx: RunContext,
  entries: readonly { readonly server: ServerName; readonly placement: Placement }[],
  steps: readonly number[],
  messagesPerSession: number,
  interrupted: () => boolean,
): Promise<RateReport> {
  const out: RateReport['servers'] = [];
  for (const { server: serverName, placement } of entries) {
    const done: RateStep[] = [];
    let maxLossless: number | undefined;
    let atLeast = true;
    let stoppedBy: string | undefined;
    for (const sessions of steps) {
      if (interrupted()) break;
      const c = rateCase(sessions, messagesPerSession);
      process.stderr.write(`[bench] rate ${sessions}k msg/s / ${placement.label}: -m ${sessions} -n ${messagesPerSession} ... `);
      const r = await runOne(ctx, serverName, c, `rate-${sessions}`, RATE_RELAY_PORT_COUNT, placement);
      done.push({ sessions, offeredPerSecond: sessions * 1000, result: r });
      process.stderr.write(
        r.ok
          ? `${r.received}/${r.sent} back (lost ${r.lost}), peak ${fmt(r.uclient.peakSendRate, 0)} sent/s, ${fmt(r.cpuMicrosPerRelayedPacket, 2)} us/pkt\n`
          : `FAILED: ${r.failure ?? ''}\n`,
      );
      if (!r.ok) {
        stoppedBy = `the ${sessions}k step failed to run: ${r.failure ?? ''}`;
        break;
      }
      if (r.lost > 0) {
        atLeast = false;
        break;
      }
      maxLossless = sessions * 1000;
    }
    out.push({ server: serverName, label: placement.label, placement, steps: done, maxLosslessPerSecond: maxLossless, atLeast, stoppedBy });
  }
  return { method: RATE_METHOD, messagesPerSession, servers: out };
}

/** The orchestrator (and so the latency probe it runs) belongs with the load generators, on CLIENT_CPU. */
function pinSelf(): void {
  spawnSync('taskset', ['-a', '-p', '-c', String(CLIENT_CPU), String(process.pid)], { stdio: 'ignore' });
}

async function main(): Promise<number> {
  const options = parseOptions(process.argv.slice(2));
  for (const tool of ['taskset', 'turnutils_uclient', 'turnutils_peer', ...(options.servers.includes('coturn') ? ['turnserver'] : [])]) {
    if (!haveCommand(tool)) throw new Error(`'${tool}' is not on PATH`);
  }
  pinSelf();
  const repoRoot = findRepoRoot();
  const resultsDir = join(repoRoot, 'bench', 'results');
  const logDir = join(resultsDir, 'logs');
  mkdirSync(logDir, { recursive: true });
  const scratchDir = mkdtempSync(join(tmpdir(), 'anyturn-bench-'));
  const anyturnCli = fileURLToPath(new URL('../src/cli.js', import.meta.url));
  const floorScript = fileURLToPath(new URL('./floor-forwarder.js', import.meta.url));

  const cases = defaultCases();
  if (options.messagesPerSession !== undefined) {
    for (const c of CASE_NAMES) cases[c] = { ...cases[c], messagesPerSession: options.messagesPerSession };
  }
  const rateMessages = options.messagesPerSession ?? RATE_MESSAGES_PER_SESSION;

  const group = new ProcessGroup();
  const signals = stopOnSignals(group, scratchDir);

  // Hard bound on the whole run, whatever happens inside.
  const perServer = READY_TIMEOUT_MS + 10_000;
  const o = DEFAULT_LATENCY_OPTIONS;
  const latencyMs = options.latency ? options.servers.length * (perServer + 20_000 + ((o.count + o.warmup) * 1000) / o.ratePerSecond) : 0;
  const rateMs = options.rate || options.scaling
    ? options.rateSteps.length * (options.scaling ? SCALING.length : options.servers.length) * (perServer + uclientTimeoutMs(rateCase(1, rateMessages)))
    : 0;
  const budgetMs =
    60_000 +
    latencyMs +
    rateMs +
    options.cases.reduce((sum, c) => sum + uclientTimeoutMs(cases[c]) + perServer, 0) * options.servers.length * options.rounds;
  const watchdog = setTimeout(() => {
    console.error(`benchmark exceeded ${budgetMs} ms; stopping`);
    group.killAllNow();
    process.exit(124);
  }, budgetMs);
  watchdog.unref();

  const results: RunResult[] = [];
  let latency: LatencyReport | undefined;
  let rate: RateReport | undefined;
  try {
    // turnutils_peer echoes on its port and the next one (RTCP); it binds both.
    const peerPort = await freeUdpPort(1);
    const peer = group.start('peer', CLIENT_CPU, 'turnutils_peer', ['-L', '127.0.0.1', '-p', String(peerPort)]);
    await sleep(300);
    if (peer.hasExited()) throw new Error(`turnutils_peer exited: ${peer.tail().join('\n')}`);
    const ctx: RunContext = { group, peerPort, scratchDir, logDir, repoRoot, anyturnCli, floorScript };

    if (options.scaling) {
      const scaling = await runRate(ctx, SCALING, options.rateSteps, rateMessages, () => signals.interrupted);
      console.log(scalingReport(scaling).join('\n'));
      const out = join(resultsDir, 'scaling.json');
      writeFileSync(out, JSON.stringify({ generatedAt: new Date().toISOString(), node: process.version, scaling }, null, 2) + '\n');
      console.log(`\nJSON: ${relative(process.cwd(), out)}; logs: ${relative(process.cwd(), logDir)}/`);
      return scaling.servers.every((x) => x.steps.every((st) => st.result.ok)) ? 0 : 1;
    }

    for (const caseName of options.cases) {
      for (let round = 1; round <= options.rounds; round++) {
        for (const serverName of options.servers) {
          if (signals.interrupted) break;
          const c = cases[caseName];
          const roundText = options.rounds > 1 ? ` (round ${round}/${options.rounds})` : '';
          process.stderr.write(`[bench] ${caseName} / ${serverName}${roundText}: -n ${c.messagesPerSession} ... `);
          const r = await runOne(ctx, serverName, c);
          if (signals.interrupted) break;
          process.stderr.write(
            r.skipped
              ? `n/a (${r.failure ?? ''})\n`
              : r.ok
                ? `${r.received}/${r.sent} back, ${fmt(r.cpuMicrosPerRelayedPacket, 2)} us/pkt\n`
                : `FAILED: ${r.failure ?? ''}\n`,
          );
          results.push(options.rounds > 1 ? { ...r, round } : r);
        }
      }
    }
    if (options.latency && !signals.interrupted) latency = await runLatency(ctx, options.servers, () => signals.interrupted);
    if (options.rate && !signals.interrupted) rate = await runRate(ctx, options.servers.map((server) => ({ server, placement: onePlacement(server) })), options.rateSteps, rateMessages, () => signals.interrupted);
  } finally {
    await group.stopAll();
    rmSync(scratchDir, { recursive: true, force: true });
    clearTimeout(watchdog);
  }

  const shown = options.rounds > 1 ? medianRuns(results) : results;
  const rs = ratios(shown);
  console.log(report(shown, rs, cases, latency, rate));
  const perRound = options.rounds > 1 ? roundRatios(results) : undefined;
  if (perRound) console.log(`\n${roundsReport(perRound, options.rounds).join('\n')}`);
  const json = {
    generatedAt: new Date().toISOString(),
    method: METHOD_NOTES,
    host: {
      node: process.version,
      coturn: spawnSync('turnserver', ['--version'], { encoding: 'utf8' }).stdout.trim(),
      clockTicksPerSecond: clkTck(),
      serverCpu: SERVER_CPU,
      clientCpu: CLIENT_CPU,
    },
    cases: options.cases.map((c) => cases[c]),
    rounds: options.rounds,
    /** Every run; with --rounds, `medianRuns` are the ones the table and the ratios use. */
    results,
    medianRuns: options.rounds > 1 ? shown : undefined,
    ratiosAnyturnOverCoturn: rs,
    ratiosPerRound: perRound,
    latency,
    maxLosslessRate: rate,
  };
  const out = join(resultsDir, 'latest.json');
  writeFileSync(out, JSON.stringify(json, null, 2) + '\n');
  console.log(`\nJSON: ${relative(process.cwd(), out)}; logs: ${relative(process.cwd(), logDir)}/`);
  const latencyOk = latency === undefined || latency.servers.every((s) => s.ok);
  const rateOk = rate === undefined || rate.servers.every((s) => s.steps.every((st) => st.result.ok));
  return results.every((r) => r.ok || r.skipped) && latencyOk && rateOk ? 0 : 1;
}

main().then(
  (code) => process.exit(code),
  (err: unknown) => {
    console.error(err instanceof Error ? err.message : err);
    process.exit(1);
  },
);

// One run of npm run bench: a fresh server, one turnutils_uclient load against it, and
// the server's CPU (utime+stime of its whole process tree) sampled just before uclient
// starts and just after it exits.
import { writeFileSync } from 'node:fs';
import { join, relative } from 'node:path';
import { performance } from 'node:perf_hooks';

import { cpusAllowed, processTree, threadCount, treeCpuMicros, treeCpuUserSystemMicros, udpReceiveBufferErrors } from '../processes.js';
import { parseUclientOutput, peakSendRate, uclientArgs, uclientTimeoutMs, type CaseName, type LoadCase, type UclientStats } from '../uclient.js';
import { PASSWORD, USER, type ServerName } from '../servers.js';
import { onePlacement, type Placement } from './placement.js';
import { RELAY_PORT_COUNT, saveServerLog, startServer, type RunContext, type StartedServer } from './servers.js';

export interface RunResult {
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

/** Runs case `c` against a fresh `serverName` placed as `placement`; the server is stopped and its log written whatever happens. */
export async function runOne(
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
      saveServerLog(serverLog, s.started);
    } else writeFileSync(serverLog, `not started: ${s.failure}\n`);
    return failedResult(serverName, c.name, `${s.failure}; see ${logs.server}`, logs, { label });
  }
  try {
    const load = await measureLoad(ctx, s, c, placement, uclientLog);
    return loadResult(ctx, serverName, c, label, load, { server: logs.server, uclient: uclientLog });
  } finally {
    await ctx.group.stop(s.server);
    saveServerLog(serverLog, s);
  }
}

/** What one uclient load against a running server measured. */
interface LoadMeasurement {
  readonly serverProcess: RunResult['serverProcess'];
  readonly args: string[];
  readonly exit: number | string;
  readonly timedOut: boolean;
  readonly timeoutMs: number;
  readonly stats: UclientStats;
  readonly output: string;
  readonly serverExited: boolean;
  readonly cpuBefore: number;
  readonly cpuAfter: number | undefined;
  readonly systemMicros: number | undefined;
  readonly loadWallSeconds: number;
  readonly rcvbufBefore: number | undefined;
  readonly rcvbufAfter: number | undefined;
}

async function measureLoad(ctx: RunContext, s: StartedServer, c: LoadCase, placement: Placement, uclientLog: string): Promise<LoadMeasurement> {
  const { server, listeningPort } = s;
  const serverProcess = {
    readyBy: s.readyBy,
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
  return {
    serverProcess,
    args,
    exit,
    timedOut,
    timeoutMs,
    stats,
    output: uclient.output(),
    serverExited: server.hasExited(),
    cpuBefore,
    cpuAfter,
    systemMicros,
    loadWallSeconds,
    rcvbufBefore,
    rcvbufAfter,
  };
}

function loadResult(
  ctx: RunContext,
  serverName: ServerName,
  c: LoadCase,
  label: string,
  m: LoadMeasurement,
  logPaths: { server: string; uclient: string },
): RunResult {
  const { stats } = m;
  const serverCpuMicros = m.cpuAfter === undefined ? undefined : m.cpuAfter - m.cpuBefore;
  const relayedPackets = 2 * stats.received;
  const lost = stats.sent - stats.received;
  let failure: string | undefined;
  if (m.cpuAfter === undefined || m.serverExited) failure = 'server exited during the load';
  else if (m.timedOut) failure = `uclient did not finish within ${m.timeoutMs} ms (killed)`;
  else if (!stats.finished) failure = `uclient exited (${String(m.exit)}) without final statistics`;
  else if (stats.received === 0) failure = 'no message came back';
  return {
    server: serverName,
    case: c.name,
    label,
    skipped: false,
    ok: failure === undefined,
    failure: failure === undefined ? undefined : `${failure}; see ${relative(ctx.repoRoot, logPaths.uclient)}`,
    sent: stats.sent,
    received: stats.received,
    lost,
    lostPercent: stats.sent === 0 ? 0 : (100 * lost) / stats.sent,
    serverCpuMicros,
    serverSystemMicros: m.systemMicros,
    relayedPackets,
    cpuMicrosPerRelayedPacket: serverCpuMicros === undefined || relayedPackets === 0 ? undefined : serverCpuMicros / relayedPackets,
    loadWallSeconds: m.loadWallSeconds,
    udpReceiveBufferErrors: m.rcvbufBefore === undefined || m.rcvbufAfter === undefined ? undefined : m.rcvbufAfter - m.rcvbufBefore,
    uclient: {
      args: m.args,
      finished: stats.finished,
      timedOut: m.timedOut,
      exit: m.exit,
      reportedLost: stats.reportedLost,
      sendDropped: stats.sendDropped,
      transmitSeconds: stats.transmitSeconds,
      rttAverageMs: stats.rttAverageMs,
      rttMaxMs: stats.rttMaxMs,
      peakSendRate: peakSendRate(m.output),
      errors: stats.errors,
    },
    serverProcess: m.serverProcess,
    logs: { server: logPaths.server, uclient: relative(ctx.repoRoot, logPaths.uclient) },
  };
}

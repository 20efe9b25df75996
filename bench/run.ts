// npm run bench: the same turnutils_uclient load against anyturn and coturn,
// each server pinned to one core, and server CPU per relayed packet compared.
//
// Usage: node dist/bench/run.js [--only anyturn|coturn] [--cases channel,send,flood] [-n N]
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
  clkTck,
  cpuMicros,
  cpusAllowed,
  threadCount,
  udpReceiveBufferErrors,
  type TrackedProcess,
} from './processes.js';
import { freeUdpPort, freeUdpRange, stunBindingAnswers } from './net.js';
import {
  CASE_NAMES,
  PAYLOAD_BYTES,
  SESSIONS,
  defaultCases,
  parseUclientOutput,
  uclientArgs,
  uclientTimeoutMs,
  type CaseName,
  type LoadCase,
  type UclientStats,
} from './uclient.js';
import { SERVER_NAMES, anyturnLaunch, coturnLaunch, type ServerLaunch, type ServerName } from './servers.js';

const SERVER_CPU = 1;
const CLIENT_CPU = 0;
const RELAY_PORT_COUNT = 200;
const READY_TIMEOUT_MS = 15_000;
const USER = 'bench';
const PASSWORD = 'bench-password';
const REALM = 'bench.anyturn';

const METHOD_NOTES = [
  `load: turnutils_uclient, ${SESSIONS} sessions (-m ${SESSIONS} -c: one allocation each), ${PAYLOAD_BYTES}-byte payload, peer = turnutils_peer; all on 127.0.0.1`,
  `server pinned to CPU ${SERVER_CPU} (taskset -c ${SERVER_CPU}); uclient and peer on CPU ${CLIENT_CPU}; a fresh server process per case`,
  'msg = one uclient round trip: client -> relay -> peer -> relay -> client',
  'relayed pkt = one datagram the server forwards from one side to the other; each received msg = 2 relayed pkts',
  'CPU = server utime+stime, all threads (/proc/PID/stat), sampled just before uclient starts and just after it exits',
  'CPU/pkt = CPU us / (2 x msgs received); ratio = anyturn / coturn (below 1 = anyturn cheaper)',
  'RTT = uclient round trip delay (ms resolution); rcvbuf drops = UDP RcvbufErrors during the load, whole host',
];

interface Options {
  readonly servers: readonly ServerName[];
  readonly cases: readonly CaseName[];
  readonly messagesPerSession: number | undefined;
}

function usage(): string {
  return 'usage: node dist/bench/run.js [--only anyturn|coturn] [--cases channel,send,flood] [-n N]';
}

function parseOptions(argv: readonly string[]): Options {
  let servers: readonly ServerName[] = SERVER_NAMES;
  let cases: readonly CaseName[] = CASE_NAMES;
  let messagesPerSession: number | undefined;
  for (let i = 0; i < argv.length; i++) {
    const flag = argv[i];
    const value = argv[i + 1];
    if (flag === '--help') {
      console.log(usage());
      process.exit(0);
    }
    if (flag !== '--only' && flag !== '--cases' && flag !== '-n') {
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
    } else {
      const n = Number(value);
      if (!Number.isInteger(n) || n < 1) throw new Error(`-n '${value}': a positive integer is required`);
      messagesPerSession = n;
    }
  }
  return { servers, cases, messagesPerSession };
}

interface RunResult {
  readonly server: ServerName;
  readonly case: CaseName;
  readonly ok: boolean;
  readonly failure: string | undefined;
  readonly sent: number;
  readonly received: number;
  readonly lost: number;
  readonly lostPercent: number;
  readonly serverCpuMicros: number | undefined;
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
    readonly errors: readonly string[];
  };
  readonly serverProcess: {
    readonly readyBy: string | undefined;
    readonly cpusAllowed: string | undefined;
    readonly threads: number | undefined;
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
  extra: Partial<Pick<RunResult, 'serverProcess'>> = {},
): RunResult {
  return {
    server,
    case: c,
    ok: false,
    failure,
    sent: 0,
    received: 0,
    lost: 0,
    lostPercent: 0,
    serverCpuMicros: undefined,
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
}

async function runOne(ctx: RunContext, serverName: ServerName, c: LoadCase): Promise<RunResult> {
  const serverLog = join(ctx.logDir, `${c.name}-${serverName}-server.log`);
  const uclientLog = join(ctx.logDir, `${c.name}-${serverName}-uclient.log`);
  const logs = { server: relative(ctx.repoRoot, serverLog), uclient: undefined };
  if (serverName === 'anyturn' && !existsSync(ctx.anyturnCli)) {
    writeFileSync(serverLog, `not started: ${ctx.anyturnCli} does not exist (build src/cli.ts first)\n`);
    return failedResult(serverName, c.name, `${relative(ctx.repoRoot, ctx.anyturnCli)} does not exist`, logs);
  }

  const listeningPort = await freeUdpPort();
  const relayPorts = await freeUdpRange(RELAY_PORT_COUNT);
  const settings = {
    listeningPort,
    relayPorts,
    user: USER,
    password: PASSWORD,
    realm: REALM,
    scratchDir: ctx.scratchDir,
  };
  const launch =
    serverName === 'coturn' ? coturnLaunch(settings) : anyturnLaunch(settings, process.execPath, ctx.anyturnCli);
  const server = ctx.group.start(serverName, SERVER_CPU, launch.command, launch.args);
  try {
    const readyBy = await waitReady(server, launch, listeningPort);
    if (readyBy === undefined) {
      const why = server.hasExited()
        ? `server exited (${String(await server.exited)}) before it was ready`
        : `server not ready within ${READY_TIMEOUT_MS} ms (no ready line, no STUN Binding answer)`;
      return failedResult(serverName, c.name, `${why}; see ${logs.server}`, logs);
    }
    const serverProcess = {
      readyBy,
      cpusAllowed: cpusAllowed(server.pid),
      threads: threadCount(server.pid),
    };

    const args = uclientArgs(c, { serverPort: listeningPort, peerPort: ctx.peerPort, user: USER, password: PASSWORD });
    const rcvbufBefore = udpReceiveBufferErrors();
    const cpuBefore = cpuMicros(server.pid);
    const t0 = performance.now();
    const uclient = ctx.group.start('uclient', CLIENT_CPU, 'turnutils_uclient', args);
    let timedOut = false;
    const timeoutMs = uclientTimeoutMs(c);
    const timer = setTimeout(() => {
      timedOut = true;
      void ctx.group.stop(uclient);
    }, timeoutMs);
    const exit = await uclient.exited;
    clearTimeout(timer);
    let cpuAfter: number | undefined;
    try {
      cpuAfter = cpuMicros(server.pid);
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
      ok: failure === undefined,
      failure: failure === undefined ? undefined : `${failure}; see ${relative(ctx.repoRoot, uclientLog)}`,
      sent: stats.sent,
      received: stats.received,
      lost,
      lostPercent: stats.sent === 0 ? 0 : (100 * lost) / stats.sent,
      serverCpuMicros,
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
  readonly cpuMicrosPerRelayedPacket: number | undefined;
  readonly serverCpuMicros: number | undefined;
  readonly lostPercentAnyturn: number;
  readonly lostPercentCoturn: number;
}

function ratios(results: readonly RunResult[]): Ratio[] {
  const out: Ratio[] = [];
  for (const c of CASE_NAMES) {
    const a = results.find((r) => r.case === c && r.server === 'anyturn');
    const b = results.find((r) => r.case === c && r.server === 'coturn');
    if (a === undefined || b === undefined) continue;
    const div = (x: number | undefined, y: number | undefined): number | undefined =>
      x === undefined || y === undefined || y === 0 || !a.ok || !b.ok ? undefined : x / y;
    out.push({
      case: c,
      cpuMicrosPerRelayedPacket: div(a.cpuMicrosPerRelayedPacket, b.cpuMicrosPerRelayedPacket),
      serverCpuMicros: div(a.serverCpuMicros, b.serverCpuMicros),
      lostPercentAnyturn: a.lostPercent,
      lostPercentCoturn: b.lostPercent,
    });
  }
  return out;
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

function report(results: readonly RunResult[], rs: readonly Ratio[], cases: Record<CaseName, LoadCase>): string {
  const lines: string[] = [];
  lines.push('anyturn vs coturn (turnutils_uclient load)');
  for (const n of METHOD_NOTES) lines.push(`  ${n}`);
  lines.push(`  CPU resolution: 1 clock tick = ${(1_000_000 / clkTck()).toFixed(0)} us`);
  lines.push('  cases:');
  for (const c of CASE_NAMES) {
    const lc = cases[c];
    if (!results.some((r) => r.case === c)) continue;
    lines.push(`    ${c.padEnd(8)}${lc.description}; -n ${lc.messagesPerSession} per session`);
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
      'RTT avg/max ms',
      'rcvbuf drops',
      'load s',
    ],
  ];
  for (const r of results) {
    rows.push([
      r.case,
      r.server,
      String(r.sent),
      String(r.received),
      String(r.lost),
      fmt(r.lostPercent, 2),
      fmt(r.serverCpuMicros === undefined ? undefined : r.serverCpuMicros / 1000, 0),
      fmt(r.cpuMicrosPerRelayedPacket, 2),
      `${fmt(r.uclient.rttAverageMs, 1)}/${fmt(r.uclient.rttMaxMs, 0)}`,
      r.udpReceiveBufferErrors === undefined ? '-' : String(r.udpReceiveBufferErrors),
      fmt(r.loadWallSeconds, 1),
    ]);
  }
  lines.push(table(rows));
  if (rs.length > 0) {
    lines.push('');
    lines.push('ratio anyturn/coturn:');
    const ratioRows: string[][] = [['case', '', 'CPU us / relayed pkt', 'server CPU', 'lost % anyturn', 'lost % coturn']];
    const times = (n: number | undefined): string => (n === undefined ? '-' : `${n.toFixed(2)}x`);
    for (const r of rs) {
      ratioRows.push([
        r.case,
        '',
        times(r.cpuMicrosPerRelayedPacket),
        times(r.serverCpuMicros),
        fmt(r.lostPercentAnyturn, 2),
        fmt(r.lostPercentCoturn, 2),
      ]);
    }
    lines.push(table(ratioRows));
  }
  const failures = results.filter((r) => !r.ok);
  if (failures.length > 0) {
    lines.push('');
    lines.push('failures:');
    for (const f of failures) {
      lines.push(`  ${f.case} ${f.server}: ${f.failure ?? ''}`);
      for (const e of f.uclient.errors.slice(0, 5)) lines.push(`      uclient: ${e.trim()}`);
    }
  }
  return lines.join('\n');
}

async function main(): Promise<number> {
  const options = parseOptions(process.argv.slice(2));
  for (const tool of ['taskset', 'turnutils_uclient', 'turnutils_peer', ...(options.servers.includes('coturn') ? ['turnserver'] : [])]) {
    if (!haveCommand(tool)) throw new Error(`'${tool}' is not on PATH`);
  }
  const repoRoot = findRepoRoot();
  const resultsDir = join(repoRoot, 'bench', 'results');
  const logDir = join(resultsDir, 'logs');
  mkdirSync(logDir, { recursive: true });
  const scratchDir = mkdtempSync(join(tmpdir(), 'anyturn-bench-'));
  const anyturnCli = fileURLToPath(new URL('../src/cli.js', import.meta.url));

  const cases = defaultCases();
  if (options.messagesPerSession !== undefined) {
    for (const c of CASE_NAMES) cases[c] = { ...cases[c], messagesPerSession: options.messagesPerSession };
  }

  const group = new ProcessGroup();
  let interrupted = false;
  const onSignal = (signal: NodeJS.Signals): void => {
    if (interrupted) return;
    interrupted = true;
    console.error(`\n${signal}: stopping all benchmark processes`);
    void group.stopAll().finally(() => {
      rmSync(scratchDir, { recursive: true, force: true });
      process.exit(130);
    });
  };
  process.on('SIGINT', onSignal);
  process.on('SIGTERM', onSignal);
  process.on('exit', () => group.killAllNow());

  // Hard bound on the whole run, whatever happens inside.
  const budgetMs =
    60_000 +
    options.cases.reduce((sum, c) => sum + uclientTimeoutMs(cases[c]) + READY_TIMEOUT_MS + 10_000, 0) *
      options.servers.length;
  const watchdog = setTimeout(() => {
    console.error(`benchmark exceeded ${budgetMs} ms; stopping`);
    group.killAllNow();
    process.exit(124);
  }, budgetMs);
  watchdog.unref();

  const results: RunResult[] = [];
  try {
    // turnutils_peer echoes on its port and the next one (RTCP); it binds both.
    const peerPort = await freeUdpPort(1);
    const peer = group.start('peer', CLIENT_CPU, 'turnutils_peer', ['-L', '127.0.0.1', '-p', String(peerPort)]);
    await sleep(300);
    if (peer.hasExited()) throw new Error(`turnutils_peer exited: ${peer.tail().join('\n')}`);
    const ctx: RunContext = { group, peerPort, scratchDir, logDir, repoRoot, anyturnCli };

    for (const caseName of options.cases) {
      for (const serverName of options.servers) {
        if (interrupted) break;
        const c = cases[caseName];
        process.stderr.write(`[bench] ${caseName} / ${serverName}: -n ${c.messagesPerSession} ... `);
        const r = await runOne(ctx, serverName, c);
        if (interrupted) break;
        process.stderr.write(
          r.ok
            ? `${r.received}/${r.sent} back, ${fmt(r.cpuMicrosPerRelayedPacket, 2)} us/pkt\n`
            : `FAILED: ${r.failure ?? ''}\n`,
        );
        results.push(r);
      }
    }
  } finally {
    await group.stopAll();
    rmSync(scratchDir, { recursive: true, force: true });
    clearTimeout(watchdog);
  }

  const rs = ratios(results);
  console.log(report(results, rs, cases));
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
    results,
    ratiosAnyturnOverCoturn: rs,
  };
  const out = join(resultsDir, 'latest.json');
  writeFileSync(out, JSON.stringify(json, null, 2) + '\n');
  console.log(`\nJSON: ${relative(process.cwd(), out)}; logs: ${relative(process.cwd(), logDir)}/`);
  return results.every((r) => r.ok) ? 0 : 1;
}

main().then(
  (code) => process.exit(code),
  (err: unknown) => {
    console.error(err instanceof Error ? err.message : err);
    process.exit(1);
  },
);

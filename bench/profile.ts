// Where the time goes: a V8 CPU profile of anyturn (or the floor) under the flood
// load of npm run bench, summarised as self time by function.
//
// Usage: node dist/bench/profile.js [--server anyturn|floor] [-n N] [--top 15] [--interval-us 250]
//
// Starts turnutils_peer, then the server with `node --cpu-prof --cpu-prof-dir DIR`
// pinned to core 1, runs the flood case (turnutils_uclient -z 0, 20 sessions) on
// core 0, stops the server with SIGINT (Node writes the profile on exit) and
// prints the top functions by self time, (idle) excluded, plus the split between
// anyturn's own code, Node's JS internals, native/(program) and GC. The profile
// and the summary go to bench/results/ (gitignored); open the .cpuprofile in Chrome
// DevTools or speedscope for the full picture.
//
// Read the summary with care: Node marks the isolate idle around the libuv poll
// phase, so native time spent outside JavaScript there (epoll, the recvmsg of every
// datagram, UDPWrap building the Buffer and rinfo before it calls into JS) is sampled
// as (idle). A synchronous send, on the other hand, runs inside doSend (node:dgram),
// kernel time included. The utime/stime split from /proc says how much is kernel.
//
// All traffic stays on 127.0.0.1; every spawned process is tracked and stopped.
import { mkdirSync, mkdtempSync, readFileSync, readdirSync, rmSync, writeFileSync, copyFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, relative } from 'node:path';

import { CLIENT_CPU, SERVER_CPU, findRepoRoot, runMain, sleep, startWatchdog } from './host.js';
import { ProcessGroup, cpuUserSystemMicros, type TrackedProcess } from './processes.js';
import { freeUdpPort, freeUdpRange, stunBindingAnswers } from './net.js';
import { PASSWORD, REALM, USER, anyturnLaunch, floorLaunch } from './servers.js';
import { defaultCases, parseUclientOutput, uclientArgs, uclientTimeoutMs } from './uclient.js';

interface CpuProfileNode {
  readonly id: number;
  readonly callFrame: { readonly functionName: string; readonly url: string; readonly lineNumber: number; readonly columnNumber: number };
  readonly children?: readonly number[];
}

interface CpuProfile {
  readonly nodes: readonly CpuProfileNode[];
  readonly startTime: number;
  readonly endTime: number;
  readonly samples: readonly number[];
  readonly timeDeltas: readonly number[];
}

export interface SelfTimeRow {
  readonly function: string;
  readonly where: string;
  readonly origin: Origin;
  readonly selfMs: number;
  readonly percent: number;
}

type Origin = 'anyturn' | 'bench' | 'node' | 'native' | 'gc' | 'other';

function originOf(functionName: string, url: string): Origin {
  if (functionName === '(garbage collector)') return 'gc';
  if (url === '') return 'native';
  if (url.startsWith('node:')) return 'node';
  if (url.includes('/dist/src/')) return 'anyturn';
  if (url.includes('/dist/bench/')) return 'bench';
  return 'other';
}

function shortUrl(url: string): string {
  const i = url.indexOf('/dist/');
  if (i >= 0) return url.slice(i + 1);
  return url;
}

/** Self time by function, (idle) excluded, biggest first. */
export function selfTimeByFunction(p: CpuProfile): { rows: SelfTimeRow[]; totalMs: number; idleMs: number; byOrigin: Record<Origin, number> } {
  const byId = new Map<number, CpuProfileNode>();
  for (const n of p.nodes) byId.set(n.id, n);
  const selfUs = new Map<number, number>();
  for (let i = 0; i < p.samples.length; i++) {
    const id = p.samples[i]!;
    // timeDeltas[i] is the time since the previous sample; charge it to the sample
    // that follows it (what V8's own tools do, near enough at these rates).
    const dt = p.timeDeltas[i + 1] ?? 0;
    selfUs.set(id, (selfUs.get(id) ?? 0) + dt);
  }
  const agg = new Map<string, { function: string; where: string; origin: Origin; us: number }>();
  let idleUs = 0;
  let totalUs = 0;
  for (const [id, us] of selfUs) {
    const n = byId.get(id);
    if (n === undefined) continue;
    const f = n.callFrame.functionName === '' ? '(anonymous)' : n.callFrame.functionName;
    if (f === '(idle)') {
      idleUs += us;
      continue;
    }
    totalUs += us;
    const where = n.callFrame.url === '' ? '' : `${shortUrl(n.callFrame.url)}:${n.callFrame.lineNumber + 1}`;
    const key = `${f}\0${where}`;
    const a = agg.get(key);
    if (a === undefined) agg.set(key, { function: f, where, origin: originOf(n.callFrame.functionName, n.callFrame.url), us });
    else a.us += us;
  }
  const byOrigin: Record<Origin, number> = { anyturn: 0, bench: 0, node: 0, native: 0, gc: 0, other: 0 };
  const rows = [...agg.values()]
    .sort((a, b) => b.us - a.us)
    .map((a) => {
      byOrigin[a.origin] += a.us / 1000;
      return { function: a.function, where: a.where, origin: a.origin, selfMs: a.us / 1000, percent: (100 * a.us) / totalUs };
    });
  return { rows, totalMs: totalUs / 1000, idleMs: idleUs / 1000, byOrigin };
}

interface ProfileOptions {
  readonly server: 'anyturn' | 'floor';
  readonly messages: number;
  readonly top: number;
  readonly intervalUs: number;
}

function parseArgs(argv: readonly string[]): ProfileOptions {
  let server: 'anyturn' | 'floor' = 'anyturn';
  let messages = 10000;
  let top = 15;
  let intervalUs = 250;
  for (let i = 0; i < argv.length; i += 2) {
    const flag = argv[i];
    const value = argv[i + 1] ?? '';
    if (flag === '--server' && (value === 'anyturn' || value === 'floor')) server = value;
    else if (flag === '-n' && Number(value) > 0) messages = Number(value);
    else if (flag === '--top' && Number(value) > 0) top = Number(value);
    else if (flag === '--interval-us' && Number(value) > 0) intervalUs = Number(value);
    else throw new Error('usage: node dist/bench/profile.js [--server anyturn|floor] [-n N] [--top 15] [--interval-us 250]');
  }
  return { server, messages, top, intervalUs };
}

/** The server under test, started under --cpu-prof, once it answers a STUN Binding. */
interface ProfiledServer {
  readonly proc: TrackedProcess;
  readonly command: string;
  readonly args: readonly string[];
  readonly listeningPort: number;
}

async function startProfiledServer(group: ProcessGroup, o: ProfileOptions, repoRoot: string, profDir: string): Promise<ProfiledServer> {
  const listeningPort = await freeUdpPort();
  const settings = { listeningPort, relayPorts: await freeUdpRange(200), user: USER, password: PASSWORD, realm: REALM, scratchDir: profDir };
  const launch =
    o.server === 'anyturn'
      ? anyturnLaunch(settings, process.execPath, join(repoRoot, 'dist', 'src', 'cli.js'))
      : floorLaunch(settings, process.execPath, join(repoRoot, 'dist', 'bench', 'floor-forwarder.js'));
  const args = ['--cpu-prof', '--cpu-prof-dir', profDir, `--cpu-prof-interval`, String(o.intervalUs), ...launch.args];
  const proc = group.start(o.server, SERVER_CPU, launch.command, args);
  const deadline = Date.now() + 15_000;
  while (!(await stunBindingAnswers(listeningPort, 200))) {
    if (Date.now() > deadline || proc.hasExited()) throw new Error(`${o.server} did not start: ${proc.tail().join('\n')}`);
    await sleep(100);
  }
  return { proc, command: launch.command, args, listeningPort };
}

/** What the flood did and what it cost the server (utime/stime over the load only). */
interface FloodResult {
  readonly uargs: readonly string[];
  readonly sent: number;
  readonly received: number;
  readonly userUs: number;
  readonly systemUs: number;
}

async function runFlood(group: ProcessGroup, o: ProfileOptions, server: ProfiledServer, peerPort: number): Promise<FloodResult> {
  const flood = { ...defaultCases().flood, messagesPerSession: o.messages };
  const uargs = uclientArgs(flood, { serverPort: server.listeningPort, peerPort, user: USER, password: PASSWORD });
  const cpu0 = cpuUserSystemMicros(server.proc.pid);
  const uclient = group.start('uclient', CLIENT_CPU, 'turnutils_uclient', uargs);
  const timer = setTimeout(() => void group.stop(uclient), uclientTimeoutMs(flood));
  await uclient.exited;
  clearTimeout(timer);
  const cpu1 = cpuUserSystemMicros(server.proc.pid);
  const stats = parseUclientOutput(uclient.output());
  return { uargs, sent: stats.sent, received: stats.received, userUs: cpu1.user - cpu0.user, systemUs: cpu1.system - cpu0.system };
}

/** Stops the server with SIGINT (Node writes the profile on exit); resolves to how it ended. */
async function stopProfiledServer(group: ProcessGroup, server: ProfiledServer): Promise<number | string> {
  const { proc } = server;
  proc.child.kill('SIGINT');
  const exited = await Promise.race([proc.exited, sleep(15_000).then(() => 'timeout')]);
  if (exited === 'timeout') await group.stop(proc);
  return exited;
}

/** Keeps the server's log and its profile in the results; returns where the profile went. */
function keepProfile(server: ProfiledServer, o: ProfileOptions, exited: number | string, profDir: string, resultsDir: string): string {
  writeFileSync(join(resultsDir, 'logs', `profile-${o.server}-server.log`), `# ${server.command} ${server.args.join(' ')}\n${server.proc.output()}`);
  const file = readdirSync(profDir).find((f) => f.endsWith('.cpuprofile'));
  if (file === undefined) throw new Error(`no .cpuprofile written in ${profDir} (server exit: ${String(exited)})`);
  const kept = join(resultsDir, `flood-${o.server}.cpuprofile`);
  copyFileSync(join(profDir, file), kept);
  return kept;
}

type SelfTime = ReturnType<typeof selfTimeByFunction>;

function summary(o: ProfileOptions, f: FloodResult, s: SelfTime, kept: string): string {
  const cpuUs = f.userUs + f.systemUs;
  const lines: string[] = [];
  lines.push(`${o.server} under the flood (uclient ${f.uargs.join(' ')})`);
  lines.push(
    `  ${f.received}/${f.sent} msgs back = ${2 * f.received} relayed pkts; server CPU during the load ${(cpuUs / 1000).toFixed(0)} ms = ${(cpuUs / (2 * Math.max(1, f.received))).toFixed(2)} us / relayed pkt`,
  );
  const perPkt = (us: number): string => (us / (2 * Math.max(1, f.received))).toFixed(2);
  lines.push(
    `  of which user ${(f.userUs / 1000).toFixed(0)} ms (${perPkt(f.userUs)} us/pkt), kernel ${(f.systemUs / 1000).toFixed(0)} ms (${perPkt(f.systemUs)} us/pkt: syscalls and loopback delivery)`,
  );
  lines.push(
    `  profile: ${relative(process.cwd(), kept)}; sampling every ${o.intervalUs} us; non-idle ${s.totalMs.toFixed(0)} ms (whole process life, start-up included), idle ${s.idleMs.toFixed(0)} ms`,
  );
  const pct = (ms: number): string => `${((100 * ms) / s.totalMs).toFixed(1)}%`;
  lines.push(
    `  by origin: anyturn code ${pct(s.byOrigin.anyturn)}, Node JS internals (node:*) ${pct(s.byOrigin.node)}, native/(program) ${pct(s.byOrigin.native)}, GC ${pct(s.byOrigin.gc)}, bench ${pct(s.byOrigin.bench)}, other JS ${pct(s.byOrigin.other)}`,
  );
  lines.push('');
  lines.push(`  ${'self ms'.padStart(8)}  ${'%'.padStart(6)}  ${'origin'.padEnd(7)}  function (where)`);
  for (const r of s.rows.slice(0, o.top)) {
    lines.push(
      `  ${r.selfMs.toFixed(1).padStart(8)}  ${r.percent.toFixed(1).padStart(5)}%  ${r.origin.padEnd(7)}  ${r.function}${r.where === '' ? '' : ` (${r.where})`}`,
    );
  }
  return lines.join('\n');
}

async function main(): Promise<number> {
  const o = parseArgs(process.argv.slice(2));
  const repoRoot = findRepoRoot();
  const resultsDir = join(repoRoot, 'bench', 'results');
  mkdirSync(join(resultsDir, 'logs'), { recursive: true });
  const profDir = mkdtempSync(join(tmpdir(), 'anyturn-prof-'));
  const group = new ProcessGroup();
  process.on('exit', () => group.killAllNow());
  const onSignal = (): void => {
    void group.stopAll().finally(() => process.exit(130));
  };
  process.on('SIGINT', onSignal);
  process.on('SIGTERM', onSignal);
  const watchdog = startWatchdog(group, 180_000, 'profile run exceeded its time budget; stopping');

  try {
    const peerPort = await freeUdpPort(1);
    const peer = group.start('peer', CLIENT_CPU, 'turnutils_peer', ['-L', '127.0.0.1', '-p', String(peerPort)]);
    await sleep(300);
    const server = await startProfiledServer(group, o, repoRoot, profDir);
    const flood = await runFlood(group, o, server, peerPort);
    const exited = await stopProfiledServer(group, server);
    await group.stop(peer);
    const kept = keepProfile(server, o, exited, profDir, resultsDir);
    const s = selfTimeByFunction(JSON.parse(readFileSync(kept, 'utf8')) as CpuProfile);
    console.log(summary(o, flood, s, kept));
    const cpuUs = flood.userUs + flood.systemUs;
    writeFileSync(
      join(resultsDir, `profile-${o.server}.json`),
      `${JSON.stringify(
        {
          generatedAt: new Date().toISOString(),
          server: o.server,
          uclientArgs: flood.uargs,
          sent: flood.sent,
          received: flood.received,
          serverCpuMicros: cpuUs,
          serverUserMicros: flood.userUs,
          serverSystemMicros: flood.systemUs,
          intervalUs: o.intervalUs,
          ...s,
          rows: s.rows.slice(0, 50),
        },
        null,
        2,
      )}\n`,
    );
    return 0;
  } finally {
    await group.stopAll();
    rmSync(profDir, { recursive: true, force: true });
    clearTimeout(watchdog);
  }
}

runMain(main);

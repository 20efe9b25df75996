// npm run bench:allocations: what an allocation costs, with anyturn on the memory
// store, anyturn on Redis, and coturn side by side.
//
//   1. allocation rate with authentication (Allocate with its 401 round trip,
//      CreatePermission, ChannelBind) from concurrent client sockets;
//   2. memory (VmRSS) and open file descriptors per allocation at 10,000 live ones,
//      kernel slab per UDP socket, and (2b) how full a 1,000-port relay range gets;
//   3. start-up sync of a restarted anycast-relay node over the allocations in Redis;
//   4. Redis commands per allocation lifecycle (INFO commandstats, MONITOR), and what
//      hearing the event channel costs a node and Redis.
//
// docs/scaling.md explains the method and the figures.
//
// Usage: node dist/bench/allocations.js [--parts 1,2,3,4] [--allocations N] [--live N]
//                                       [--lifecycles N] [--workers N]
//
// All traffic stays on 127.0.0.1. Every spawned process (servers, redis-server) is
// tracked and stopped at the end, on failure and on Ctrl-C; every step has a
// timeout and the whole run a watchdog. Figures go to stdout and to
// bench/results/allocations.json; server output to bench/results/logs/.
import { existsSync, mkdirSync, mkdtempSync, readFileSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import net from 'node:net';
import dgram from 'node:dgram';
import { tmpdir } from 'node:os';
import { dirname, join, relative } from 'node:path';
import { spawnSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { fileURLToPath } from 'node:url';
import { performance } from 'node:perf_hooks';

import { Redis } from 'ioredis';

import { ProcessGroup, stopOnSignals, cpuMicros, cpusAllowed, threadCount, type TrackedProcess } from './processes.js';
import { freeUdpPort, stunBindingAnswers } from './net.js';
import { coturnLaunch } from './servers.js';
import { AllocationClient, CountingPeer, DriverStats, LOOPBACK, runPool, summarize, type Endpoint, type LatencySummary } from './turn-driver.js';

const SERVER_CPU = 1;
const CLIENT_CPU = 0;
const REDIS_CPU = 0;
/** Relay ports: 20,000 of them, below Linux's default ephemeral range (32768-60999), so the
 *  driver's own client sockets (ephemeral ports on 127.0.0.1) never hold a relay port. */
const RELAY_MIN = 12000;
const RELAY_MAX = 31999;
/** Open-file limit asked for every server process (prlimit), so 10,000 relay sockets fit with
 *  room to spare; where raising the hard limit is not permitted (no CAP_SYS_RESOURCE, as in
 *  many containers), the servers get soft = hard = the bench's own hard limit instead. */
const WANTED_NOFILE = 65536;
let serverNofile = WANTED_NOFILE;
const USER = 'bench';
const PASSWORD = 'bench-password';
const REALM = 'bench.anyturn';
const CLUSTER_SECRET = randomBytes(16).toString('hex'); // 32 characters
const NODE_ID = 'bench-a';
const CHANNEL = 0x4000;
const READY_TIMEOUT_MS = 20_000;
const SYNC_TIMEOUT_MS = 120_000;
const SETTLE_MS = 2_000;
const WARMUP_ALLOCATIONS = 200;
const PROBE_SAMPLE = 100;

type Part = 1 | 2 | 3 | 4;
type ServerKind = 'anyturn-memory' | 'anyturn-redis' | 'anyturn-redis-anycast' | 'coturn';

const LABELS: Record<ServerKind, { server: string; store: string }> = {
  'anyturn-memory': { server: 'anyturn', store: 'memory' },
  'anyturn-redis': { server: 'anyturn', store: 'redis (unicast relay)' },
  'anyturn-redis-anycast': { server: 'anyturn', store: 'redis, --relay-mode anycast' },
  coturn: { server: 'coturn', store: 'memory (its own)' },
};

interface Options {
  readonly parts: readonly Part[];
  readonly allocations: number;
  readonly live: number;
  readonly lifecycles: number;
  readonly workers: number;
  readonly liveWorkers: number;
}

function usage(): string {
  return 'usage: node dist/bench/allocations.js [--parts 1,2,3,4] [--allocations N] [--live N] [--lifecycles N] [--workers N]';
}

function parseOptions(argv: readonly string[]): Options {
  const o = { parts: [1, 2, 3, 4] as Part[], allocations: 2000, live: 10_000, lifecycles: 500, workers: 8, liveWorkers: 16 };
  for (let i = 0; i < argv.length; i++) {
    const flag = argv[i];
    if (flag === '--help' || flag === '-h') {
      console.log(usage());
      process.exit(0);
    }
    const value = argv[++i];
    if (value === undefined) throw new Error(`${flag ?? ''} needs a value; ${usage()}`);
    if (flag === '--parts') {
      const parts = value.split(',').map((p) => Number(p.trim()));
      if (parts.some((p) => ![1, 2, 3, 4].includes(p))) throw new Error(`--parts '${value}': 1, 2, 3 and/or 4`);
      o.parts = [...new Set(parts)].sort() as Part[];
      continue;
    }
    const n = Number(value);
    if (!Number.isInteger(n) || n < 1) throw new Error(`${flag ?? ''} '${value}': a positive integer is required`);
    if (flag === '--allocations') o.allocations = n;
    else if (flag === '--live') o.live = n;
    else if (flag === '--lifecycles') o.lifecycles = n;
    else if (flag === '--workers') o.workers = n;
    else throw new Error(`unknown argument '${flag ?? ''}'; ${usage()}`);
  }
  if (o.live > RELAY_MAX - RELAY_MIN + 1) throw new Error(`--live ${o.live}: at most ${RELAY_MAX - RELAY_MIN + 1} (the relay port range)`);
  return o;
}

// ---------------------------------------------------------------------------
// Small helpers

function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

function haveCommand(name: string): boolean {
  return spawnSync('sh', ['-c', `command -v ${name}`], { stdio: 'ignore' }).status === 0;
}

function findRepoRoot(): string {
  let dir = dirname(fileURLToPath(import.meta.url));
  for (let i = 0; i < 5; i++) {
    if (existsSync(join(dir, 'package.json'))) return dir;
    dir = dirname(dir);
  }
  throw new Error('cannot find package.json above the bench script');
}

function freeTcpPort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = net.createServer();
    s.once('error', reject);
    s.listen(0, LOOPBACK, () => {
      const a = s.address();
      const port = a !== null && typeof a === 'object' ? a.port : 0;
      s.close(() => (port > 0 ? resolve(port) : reject(new Error('no free TCP port'))));
    });
  });
}

function statusKb(pid: number, field: string): number | undefined {
  try {
    const m = new RegExp(`^${field}:\\s*(\\d+)\\s*kB`, 'm').exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
    return m?.[1] === undefined ? undefined : Number(m[1]);
  } catch {
    return undefined;
  }
}

function fdCount(pid: number): number | undefined {
  try {
    return readdirSync(`/proc/${pid}/fd`).length;
  } catch {
    return undefined;
  }
}

/** "soft/hard" of Max open files from /proc/PID/limits. */
function nofileLimit(pid: number): string | undefined {
  try {
    const m = /^Max open files\s+(\S+)\s+(\S+)/m.exec(readFileSync(`/proc/${pid}/limits`, 'utf8'));
    return m ? `${m[1]}/${m[2]}` : undefined;
  } catch {
    return undefined;
  }
}

function meminfoKb(field: string): number | undefined {
  const m = new RegExp(`^${field}:\\s*(\\d+)\\s*kB`, 'm').exec(readFileSync('/proc/meminfo', 'utf8'));
  return m?.[1] === undefined ? undefined : Number(m[1]);
}

function safeCpuMicros(pid: number): number | undefined {
  try {
    return cpuMicros(pid);
  } catch {
    return undefined;
  }
}

function fmt(n: number | undefined, digits: number): string {
  return n === undefined || !Number.isFinite(n) ? '-' : n.toFixed(digits);
}

function ratio(a: number | undefined, b: number | undefined): string {
  return a === undefined || b === undefined || b === 0 ? '-' : `${(a / b).toFixed(2)}x`;
}

function table(rows: readonly (readonly string[])[], leftColumns = 2): string {
  const widths: number[] = [];
  for (const row of rows) row.forEach((cell, i) => (widths[i] = Math.max(widths[i] ?? 0, cell.length)));
  return rows
    .map((row) => row.map((cell, i) => (i < leftColumns ? cell.padEnd(widths[i] ?? 0) : cell.padStart(widths[i] ?? 0))).join('  ').trimEnd())
    .join('\n');
}

function distinct(errors: readonly string[], max = 5): string[] {
  const counts = new Map<string, number>();
  for (const e of errors) counts.set(e, (counts.get(e) ?? 0) + 1);
  return [...counts].slice(0, max).map(([e, n]) => `${n} x ${e}`);
}

// ---------------------------------------------------------------------------
// Processes: redis-server and the servers under test

interface Context {
  readonly group: ProcessGroup;
  readonly scratchDir: string;
  readonly logDir: string;
  readonly repoRoot: string;
  readonly anyturnCli: string;
  readonly peer: CountingPeer;
  readonly options: Options;
  readonly stop: () => boolean;
}

interface RedisHandle {
  readonly name: string;
  readonly proc: TrackedProcess;
  readonly port: number;
  readonly url: string;
  readonly client: Redis;
}

async function startRedis(ctx: Context, name: string): Promise<RedisHandle> {
  const port = await freeTcpPort();
  const dir = mkdtempSync(join(ctx.scratchDir, `${name}-`));
  const proc = ctx.group.start(name, REDIS_CPU, 'redis-server', [
    '--port', String(port),
    '--bind', LOOPBACK,
    '--save', '',
    '--appendonly', 'no',
    '--protected-mode', 'no',
    '--dir', dir,
    '--loglevel', 'warning',
  ]);
  const client = new Redis({ host: LOOPBACK, port, lazyConnect: true, maxRetriesPerRequest: 1, retryStrategy: () => null });
  client.on('error', () => undefined); // connect failures while it starts are retried below
  const deadline = Date.now() + READY_TIMEOUT_MS;
  for (;;) {
    if (proc.hasExited()) throw new Error(`redis-server exited: ${proc.tail().join('\n')}`);
    try {
      await client.connect();
      await client.ping();
      break;
    } catch (err) {
      client.disconnect();
      if (Date.now() > deadline) throw new Error(`redis-server not answering on ${port}: ${String(err)}`);
      await sleep(50);
    }
  }
  return { name, proc, port, url: `redis://${LOOPBACK}:${port}`, client };
}

async function stopRedis(ctx: Context, r: RedisHandle | undefined): Promise<void> {
  if (r === undefined) return;
  r.client.disconnect();
  await ctx.group.stop(r.proc);
  writeFileSync(join(ctx.logDir, `allocations-${r.name}.log`), r.proc.output());
}

async function redisInfo(r: RedisHandle, section: string): Promise<Map<string, string>> {
  const text = await r.client.info(section);
  const out = new Map<string, string>();
  for (const line of text.split('\r\n')) {
    const i = line.indexOf(':');
    if (i > 0 && !line.startsWith('#')) out.set(line.slice(0, i), line.slice(i + 1));
  }
  return out;
}

/** INFO commandstats as command -> calls. */
async function commandCalls(r: RedisHandle): Promise<Map<string, number>> {
  const out = new Map<string, number>();
  for (const [k, v] of await redisInfo(r, 'commandstats')) {
    const m = /(?:^|,)calls=(\d+)/.exec(v);
    if (k.startsWith('cmdstat_') && m?.[1] !== undefined) out.set(k.slice('cmdstat_'.length), Number(m[1]));
  }
  return out;
}

async function countKeys(r: RedisHandle, pattern: string): Promise<number> {
  let cursor = '0';
  let n = 0;
  do {
    const [next, keys] = await r.client.scan(cursor, 'MATCH', pattern, 'COUNT', 1000);
    cursor = next;
    n += keys.length;
  } while (cursor !== '0');
  return n;
}

interface ServerHandle {
  readonly kind: ServerKind;
  readonly name: string;
  readonly proc: TrackedProcess;
  readonly endpoint: Endpoint;
  readonly metricsPort: number | undefined;
  readonly commandLine: string;
  readonly startedAt: number;
}

interface StartOptions {
  readonly redis?: RedisHandle;
  readonly logLevel?: 'warn' | 'info';
  /** Reuse these (a restarted node takes its predecessor's place). */
  readonly listeningPort?: number;
  readonly meshPort?: number;
  readonly name?: string;
  readonly readyTimeoutMs?: number;
  /** Called right after the spawn, before any output can have been read. */
  readonly onSpawn?: (p: TrackedProcess) => void;
  /** Relay port range; default RELAY_MIN-RELAY_MAX. */
  readonly relayPorts?: { readonly min: number; readonly max: number };
}

function anyturnArgs(ctx: Context, kind: ServerKind, listeningPort: number, metricsPort: number, meshPort: number, o: StartOptions): string[] {
  const args = [
    ctx.anyturnCli,
    '--listening-ip', LOOPBACK,
    '--listening-port', String(listeningPort),
    '--relay-ip', LOOPBACK,
    '--min-port', String(o.relayPorts?.min ?? RELAY_MIN),
    '--max-port', String(o.relayPorts?.max ?? RELAY_MAX),
    '--user', `${USER}:${PASSWORD}`,
    '--realm', REALM,
    '--allow-loopback-peers',
    '--no-tcp', '--no-tls',
    '--metrics-ip', LOOPBACK,
    '--metrics-port', String(metricsPort),
    '--log-level', o.logLevel ?? 'warn',
    '--node-id', NODE_ID,
    // Every client of the benchmark comes from 127.0.0.1: without this, anyturn's
    // anti-amplification limit (20 error answers/s per source IP, burst 40) would drop
    // most 401 challenges. Real clients come from many addresses.
    '--unauth-error-rate', '0',
  ];
  if (kind === 'anyturn-redis' || kind === 'anyturn-redis-anycast') {
    if (o.redis === undefined) throw new Error(`${kind} needs a redis-server`);
    args.push('--redis-url', o.redis.url, '--mesh-address', `${LOOPBACK}:${meshPort}`, '--cluster-secret', CLUSTER_SECRET);
    if (kind === 'anyturn-redis-anycast') args.push('--relay-mode', 'anycast');
  }
  return args;
}

async function httpStatus(port: number, path: string): Promise<number | undefined> {
  try {
    const res = await fetch(`http://${LOOPBACK}:${port}${path}`, { signal: AbortSignal.timeout(1000) });
    await res.text();
    return res.status;
  } catch {
    return undefined;
  }
}

async function startServer(ctx: Context, kind: ServerKind, o: StartOptions = {}): Promise<ServerHandle> {
  const listeningPort = o.listeningPort ?? (await freeUdpPort());
  const name = o.name ?? kind;
  let command: string;
  let args: string[];
  let metricsPort: number | undefined;
  if (kind === 'coturn') {
    const launch = coturnLaunch({
      listeningPort,
      relayPorts: o.relayPorts ?? { min: RELAY_MIN, max: RELAY_MAX },
      user: USER,
      password: PASSWORD,
      realm: REALM,
      scratchDir: mkdtempSync(join(ctx.scratchDir, 'coturn-')),
    });
    command = launch.command;
    args = [...launch.args];
  } else {
    metricsPort = await freeTcpPort();
    const meshPort = o.meshPort ?? (await freeUdpPort());
    command = process.execPath;
    args = anyturnArgs(ctx, kind, listeningPort, metricsPort, meshPort, o);
  }
  // taskset -c 1 prlimit --nofile=N:N <server>: both exec, so the pid is the server's.
  const startedAt = performance.now();
  const proc = ctx.group.start(name, SERVER_CPU, 'prlimit', [`--nofile=${serverNofile}:${serverNofile}`, command, ...args]);
  o.onSpawn?.(proc);
  const handle: ServerHandle = {
    kind,
    name,
    proc,
    endpoint: { address: LOOPBACK, port: listeningPort },
    metricsPort,
    commandLine: `taskset -c ${SERVER_CPU} prlimit --nofile=${serverNofile}:${serverNofile} ${command} ${args.join(' ').replace(CLUSTER_SECRET, '<secret>')}`,
    startedAt,
  };
  const deadline = Date.now() + (o.readyTimeoutMs ?? READY_TIMEOUT_MS);
  while (Date.now() < deadline) {
    if (proc.hasExited()) throw new Error(`${name} exited (${String(await proc.exited)}) before it was ready:\n${proc.tail().slice(-15).join('\n')}`);
    // anyturn's ops endpoint starts last (after the anycast start-up sync): /readyz 200 = serving.
    const ready = metricsPort !== undefined ? (await httpStatus(metricsPort, '/readyz')) === 200 : await stunBindingAnswers(listeningPort, 200);
    if (ready) return handle;
    await sleep(50);
  }
  await stopServer(ctx, handle);
  throw new Error(`${name} not ready within ${o.readyTimeoutMs ?? READY_TIMEOUT_MS} ms`);
}

async function stopServer(ctx: Context, s: ServerHandle | undefined, signal: 'SIGTERM' | 'SIGKILL' = 'SIGTERM'): Promise<void> {
  if (s === undefined) return;
  if (signal === 'SIGKILL') {
    if (!s.proc.hasExited()) s.proc.child.kill('SIGKILL');
    await s.proc.exited;
  } else {
    await ctx.group.stop(s.proc);
  }
  writeFileSync(join(ctx.logDir, `allocations-${s.name}.log`), `# ${s.commandLine}\n${s.proc.output()}`);
}

interface AnyturnMetrics {
  readonly allocations: number | undefined;
  readonly heapUsedBytes: number | undefined;
}

async function anyturnMetrics(s: ServerHandle): Promise<AnyturnMetrics> {
  if (s.metricsPort === undefined) return { allocations: undefined, heapUsedBytes: undefined };
  try {
    const res = await fetch(`http://${LOOPBACK}:${s.metricsPort}/metrics`, { signal: AbortSignal.timeout(5000) });
    const text = await res.text();
    let allocations: number | undefined;
    let heap: number | undefined;
    for (const line of text.split('\n')) {
      if (line.startsWith('anyturn_allocations{') || line.startsWith('anyturn_allocations ')) allocations = (allocations ?? 0) + Number(line.slice(line.lastIndexOf(' ') + 1));
      if (line.startsWith('anyturn_process_nodejs_heap_size_used_bytes ')) heap = Number(line.slice(line.lastIndexOf(' ') + 1));
    }
    return { allocations, heapUsedBytes: heap };
  } catch {
    return { allocations: undefined, heapUsedBytes: undefined };
  }
}

// ---------------------------------------------------------------------------
// Part 1: allocation rate

interface RateResult {
  readonly kind: ServerKind;
  readonly server: string;
  readonly store: string;
  readonly attempted: number;
  readonly ok: number;
  readonly errors: string[];
  readonly wallSeconds: number;
  readonly allocationsPerSecond: number;
  readonly latencyMs: LatencySummary;
  readonly retransmits: number;
  readonly challenges: number;
  readonly rechallenges: number;
  readonly serverCpuMicrosPerAllocation: number | undefined;
  readonly redisCpuMicrosPerAllocation: number | undefined;
  readonly driverCpuPercent: number;
  readonly serverThreads: number | undefined;
  readonly serverCpusAllowed: string | undefined;
  readonly commandLine: string;
}

/** Allocate (401, then authenticated) + CreatePermission + ChannelBind on a fresh socket; returns ms. */
async function fullSequence(server: Endpoint, peer: Endpoint, stats: DriverStats, keep: AllocationClient[], channel: boolean): Promise<number> {
  const c = await AllocationClient.open(server, { username: USER, password: PASSWORD }, stats);
  keep.push(c); // kept open: a closed socket's port could come back as a new client with a live 5-tuple
  const t0 = performance.now();
  await c.allocate();
  await c.createPermission(peer);
  if (channel) await c.channelBind(CHANNEL, peer);
  return performance.now() - t0;
}

async function closeAll(clients: readonly AllocationClient[]): Promise<void> {
  await Promise.all(clients.map((c) => c.close()));
}

async function runRate(ctx: Context, kind: ServerKind): Promise<RateResult> {
  const needsRedis = kind !== 'anyturn-memory' && kind !== 'coturn';
  let redis: RedisHandle | undefined;
  let server: ServerHandle | undefined;
  const clients: AllocationClient[] = [];
  try {
    if (needsRedis) redis = await startRedis(ctx, `redis-rate-${kind}`);
    server = await startServer(ctx, kind, { redis, name: `rate-${kind}` });
    const peer = ctx.peer.endpoint;
    // Warm-up (not measured): JIT for anyturn, first-touch allocations for both.
    const warm = new DriverStats();
    await runPool(WARMUP_ALLOCATIONS, ctx.options.workers, () => fullSequence(server!.endpoint, peer, warm, clients, true), ctx.stop);

    const stats = new DriverStats();
    const serverCpu0 = safeCpuMicros(server.proc.pid);
    const redisCpu0 = redis ? safeCpuMicros(redis.proc.pid) : undefined;
    const driverCpu0 = process.cpuUsage();
    const pool = await runPool(ctx.options.allocations, ctx.options.workers, () => fullSequence(server!.endpoint, peer, stats, clients, true), ctx.stop);
    const driverCpu = process.cpuUsage(driverCpu0);
    const serverCpu1 = safeCpuMicros(server.proc.pid);
    const redisCpu1 = redis ? safeCpuMicros(redis.proc.pid) : undefined;
    const ok = pool.results.length;
    const per = (a: number | undefined, b: number | undefined): number | undefined => (a === undefined || b === undefined || ok === 0 ? undefined : (b - a) / ok);
    return {
      kind,
      ...LABELS[kind],
      attempted: ctx.options.allocations,
      ok,
      errors: distinct(pool.errors),
      wallSeconds: pool.wallMs / 1000,
      allocationsPerSecond: ok / (pool.wallMs / 1000),
      latencyMs: summarize(pool.results),
      retransmits: stats.retransmits,
      challenges: stats.challenges,
      rechallenges: stats.rechallenges,
      serverCpuMicrosPerAllocation: per(serverCpu0, serverCpu1),
      redisCpuMicrosPerAllocation: per(redisCpu0, redisCpu1),
      driverCpuPercent: (100 * (driverCpu.user + driverCpu.system)) / 1000 / pool.wallMs,
      serverThreads: threadCount(server.proc.pid),
      serverCpusAllowed: cpusAllowed(server.proc.pid),
      commandLine: server.commandLine,
    };
  } finally {
    await stopServer(ctx, server);
    await closeAll(clients);
    await stopRedis(ctx, redis);
  }
}

// ---------------------------------------------------------------------------
// Part 2: memory and sockets at N live allocations

interface ProcessSample {
  readonly rssKb: number | undefined;
  readonly fds: number | undefined;
}

function sample(pid: number): ProcessSample {
  return { rssKb: statusKb(pid, 'VmRSS'), fds: fdCount(pid) };
}

interface LiveResult {
  readonly kind: ServerKind;
  readonly server: string;
  readonly store: string;
  readonly attempted: number;
  readonly ok: number;
  readonly errors: string[];
  readonly createSeconds: number;
  readonly before: ProcessSample;
  readonly after: ProcessSample;
  readonly rssKbPerAllocation: number | undefined;
  readonly fdsPerAllocation: number | undefined;
  readonly nofileLimit: string | undefined;
  readonly serverThreads: number | undefined;
  readonly liveAllocationsReported: number | undefined;
  readonly heapUsedBytesBefore: number | undefined;
  readonly heapUsedBytesAfter: number | undefined;
  readonly heapBytesPerAllocation: number | undefined;
  readonly redisUsedMemoryBefore: number | undefined;
  readonly redisUsedMemoryAfter: number | undefined;
  readonly redisBytesPerAllocation: number | undefined;
  readonly redisKeysPerAllocation: number | undefined;
  readonly commandLine: string;
}

/** What part 3 takes over from the anycast run of part 2. */
interface LiveKeep {
  readonly server: ServerHandle;
  readonly redis: RedisHandle;
  readonly clients: AllocationClient[];
  readonly listeningPort: number;
  readonly meshPort: number;
}

async function runLive(ctx: Context, kind: ServerKind, keepForSync: boolean): Promise<{ result: LiveResult; keep?: LiveKeep }> {
  const needsRedis = kind !== 'anyturn-memory' && kind !== 'coturn';
  let redis: RedisHandle | undefined;
  let server: ServerHandle | undefined;
  const clients: AllocationClient[] = [];
  let handedOver = false;
  try {
    if (needsRedis) redis = await startRedis(ctx, `redis-live-${kind}`);
    const listeningPort = await freeUdpPort();
    const meshPort = await freeUdpPort();
    server = await startServer(ctx, kind, { redis, listeningPort, meshPort, name: `live-${kind}` });
    await sleep(SETTLE_MS);
    const before = sample(server.proc.pid);
    const m0 = await anyturnMetrics(server);
    const redisMem0 = redis ? Number((await redisInfo(redis, 'memory')).get('used_memory')) : undefined;
    const redisKeys0 = redis ? await redis.client.dbsize() : undefined;

    const stats = new DriverStats();
    const peer = ctx.peer.endpoint;
    const pool = await runPool(ctx.options.live, ctx.options.liveWorkers, () => fullSequence(server!.endpoint, peer, stats, clients, false), ctx.stop);
    await sleep(SETTLE_MS);
    const after = sample(server.proc.pid);
    const m1 = await anyturnMetrics(server);
    const redisMem1 = redis ? Number((await redisInfo(redis, 'memory')).get('used_memory')) : undefined;
    const redisKeys1 = redis ? await redis.client.dbsize() : undefined;
    const ok = pool.results.length;
    const per = (a: number | undefined, b: number | undefined): number | undefined => (a === undefined || b === undefined || ok === 0 ? undefined : (b - a) / ok);
    const result: LiveResult = {
      kind,
      ...LABELS[kind],
      attempted: ctx.options.live,
      ok,
      errors: distinct(pool.errors),
      createSeconds: pool.wallMs / 1000,
      before,
      after,
      rssKbPerAllocation: per(before.rssKb, after.rssKb),
      fdsPerAllocation: per(before.fds, after.fds),
      nofileLimit: nofileLimit(server.proc.pid),
      serverThreads: threadCount(server.proc.pid),
      liveAllocationsReported: m1.allocations,
      heapUsedBytesBefore: m0.heapUsedBytes,
      heapUsedBytesAfter: m1.heapUsedBytes,
      heapBytesPerAllocation: per(m0.heapUsedBytes, m1.heapUsedBytes),
      redisUsedMemoryBefore: redisMem0,
      redisUsedMemoryAfter: redisMem1,
      redisBytesPerAllocation: per(redisMem0, redisMem1),
      redisKeysPerAllocation: per(redisKeys0, redisKeys1),
      commandLine: server.commandLine,
    };
    if (keepForSync && redis !== undefined) {
      handedOver = true;
      return { result, keep: { server, redis, clients, listeningPort, meshPort } };
    }
    return { result };
  } finally {
    if (!handedOver) {
      await stopServer(ctx, server);
      await closeAll(clients);
      await stopRedis(ctx, redis);
    }
  }
}

/** Slab caches a bound UDP socket takes objects from (socket, inode, file, dentry, epoll item). */
const SOCKET_CACHES = ['UDP', 'sock_inode_cache', 'filp', 'dentry', 'eventpoll_epi', 'eventpoll_pwq'];

/** /proc/slabinfo as cache -> bytes in active objects (active_objs x objsize). */
function slabBytes(): Map<string, number> | undefined {
  try {
    const out = new Map<string, number>();
    for (const line of readFileSync('/proc/slabinfo', 'utf8').split('\n').slice(2)) {
      const f = line.split(/\s+/);
      if (f.length > 3) out.set(f[0]!, Number(f[1]) * Number(f[3]));
    }
    return out;
  } catch {
    return undefined;
  }
}

interface SlabCalibration {
  readonly sockets: number;
  /** Kernel slab bytes per bound UDP socket in the socket-related caches. */
  readonly bytesPerSocket: number | undefined;
  readonly byCache: Record<string, number>;
}

/**
 * Kernel memory per bound UDP socket, the part of a relay socket's cost that RSS does
 * not show: the driver binds `n` sockets on 127.0.0.1 (Node dgram, as anyturn's relay
 * sockets, so each is also in libuv's epoll set) and reads /proc/slabinfo before and
 * after. Host-wide: other processes move the same caches, so it is a rough figure.
 */
async function slabPerSocket(n: number): Promise<SlabCalibration> {
  const sockets: dgram.Socket[] = [];
  const s0 = slabBytes();
  try {
    for (let i = 0; i < n; i++) {
      const s = dgram.createSocket('udp4');
      await new Promise<void>((resolve, reject) => {
        s.once('error', reject);
        s.bind(0, LOOPBACK, () => resolve());
      });
      s.on('message', () => undefined);
      sockets.push(s);
    }
    await sleep(200);
    const s1 = slabBytes();
    if (s0 === undefined || s1 === undefined) return { sockets: n, bytesPerSocket: undefined, byCache: {} };
    const byCache: Record<string, number> = {};
    let total = 0;
    for (const c of SOCKET_CACHES) {
      const d = ((s1.get(c) ?? 0) - (s0.get(c) ?? 0)) / n;
      byCache[c] = d;
      total += d;
    }
    return { sockets: n, bytesPerSocket: total, byCache };
  } finally {
    await Promise.all(sockets.map((s) => new Promise<void>((r) => s.close(() => r()))));
  }
}

/** Part 2b: how full a small relay range gets before Allocates are refused. */
const FILL_PORTS = 1000;
const FILL_ATTEMPTS = 1100;

interface FillResult {
  readonly kind: ServerKind;
  readonly server: string;
  readonly store: string;
  readonly ports: number;
  readonly attempted: number;
  readonly ok: number;
  /** 1-based index of the first refused Allocate (sequential, one at a time). */
  readonly firstRefusal: number | undefined;
  /** Refusals while fewer than `ports` allocations were live: a free port existed. */
  readonly refusedWhileFree: number;
  readonly errors: string[];
}

async function runFill(ctx: Context, kind: ServerKind): Promise<FillResult> {
  const needsRedis = kind !== 'anyturn-memory' && kind !== 'coturn';
  let redis: RedisHandle | undefined;
  let server: ServerHandle | undefined;
  const clients: AllocationClient[] = [];
  try {
    if (needsRedis) redis = await startRedis(ctx, `redis-fill-${kind}`);
    server = await startServer(ctx, kind, { redis, name: `fill-${kind}`, relayPorts: { min: RELAY_MIN, max: RELAY_MIN + FILL_PORTS - 1 } });
    const stats = new DriverStats();
    let ok = 0;
    let firstRefusal: number | undefined;
    let refusedWhileFree = 0;
    const errors: string[] = [];
    // One at a time, so the index of the first refusal means something.
    for (let i = 0; i < FILL_ATTEMPTS && !ctx.stop(); i++) {
      const c = await AllocationClient.open(server.endpoint, { username: USER, password: PASSWORD }, stats);
      clients.push(c);
      try {
        await c.allocate();
        ok++;
      } catch (err) {
        firstRefusal ??= i + 1;
        if (ok < FILL_PORTS) refusedWhileFree++;
        errors.push(err instanceof Error ? err.message : String(err));
      }
    }
    return { kind, ...LABELS[kind], ports: FILL_PORTS, attempted: FILL_ATTEMPTS, ok, firstRefusal, refusedWhileFree, errors: distinct(errors) };
  } finally {
    await stopServer(ctx, server);
    await closeAll(clients);
    await stopRedis(ctx, redis);
  }
}

// ---------------------------------------------------------------------------
// Part 3: start-up sync of a restarted anycast-relay node

interface SyncResult {
  readonly recordsInStore: number;
  readonly adopted: number | undefined;
  readonly startToSyncLineMs: number | undefined;
  readonly startToReadyMs: number | undefined;
  readonly baselineStartToSyncLineMs: number | undefined;
  readonly baselineAdopted: number | undefined;
  readonly syncMs: number | undefined;
  /** From B's log: "redis connection ready" -> sync line. */
  readonly syncMsFromLog: number | undefined;
  readonly microsPerAllocation: number | undefined;
  readonly after: ProcessSample;
  readonly liveAllocationsReported: number | undefined;
  readonly probeSample: number;
  readonly probeRefreshOk: number;
  readonly probeRelayOk: number;
  readonly probeErrors: string[];
  /** INFO commandstats from just before B's start to its readiness. */
  readonly redisCallsDuringStart: Record<string, number>;
  readonly commandLine: string;
}

const SYNC_LINE = /anycast relay: took on the allocations in the store/;

/**
 * From B's own log: `adopted`, and the time from its last "redis connection ready"
 * line to the sync line (pino's timestamps, 1 ms resolution): the sync itself,
 * without Node's start-up.
 */
function syncLine(p: TrackedProcess): { adopted: number | undefined; logMs: number | undefined } {
  let readyAt: number | undefined;
  for (const line of p.tail()) {
    let j: { adopted?: unknown; time?: unknown; msg?: unknown };
    try {
      j = JSON.parse(line) as typeof j;
    } catch {
      continue;
    }
    const t = typeof j.time === 'string' ? Date.parse(j.time) : typeof j.time === 'number' ? j.time : NaN;
    if (j.msg === 'redis connection ready' && Number.isFinite(t)) readyAt = t;
    if (typeof j.msg === 'string' && SYNC_LINE.test(j.msg)) {
      return { adopted: typeof j.adopted === 'number' ? j.adopted : undefined, logMs: readyAt !== undefined && Number.isFinite(t) ? t - readyAt : undefined };
    }
  }
  return { adopted: undefined, logMs: undefined };
}

/** Starts node B in A's place and times until its sync line; returns ms (undefined if the line never came). */
async function startAndTimeSync(ctx: Context, keep: LiveKeep, name: string): Promise<{ server: ServerHandle | undefined; lineMs: number | undefined; readyMs: number | undefined; adopted: number | undefined; logMs?: number; error?: string }> {
  const t0 = performance.now();
  let lineAt: number | undefined;
  let server: ServerHandle | undefined;
  try {
    server = await startServer(ctx, 'anyturn-redis-anycast', {
      redis: keep.redis,
      listeningPort: keep.listeningPort,
      meshPort: keep.meshPort,
      logLevel: 'info',
      name,
      readyTimeoutMs: SYNC_TIMEOUT_MS,
      // The line comes before the ops endpoint answers: watch for it from the spawn on.
      onSpawn: (p) =>
        void p.waitForLine(SYNC_LINE, SYNC_TIMEOUT_MS).then((ok) => {
          if (ok) lineAt = performance.now();
        }),
    });
  } catch (err) {
    return { server: undefined, lineMs: undefined, readyMs: undefined, adopted: undefined, error: err instanceof Error ? err.message : String(err) };
  }
  const readyMs = performance.now() - t0;
  for (let i = 0; i < 20 && lineAt === undefined; i++) await sleep(10);
  const fromLog = syncLine(server.proc);
  return { server, lineMs: lineAt === undefined ? undefined : lineAt - t0, readyMs, adopted: fromLog.adopted, logMs: fromLog.logMs };
}

async function runSync(ctx: Context, keep: LiveKeep): Promise<SyncResult> {
  let b: ServerHandle | undefined;
  try {
    // Node A dies (SIGKILL: a crash; SIGTERM would do as well, anycast nodes leave the records).
    await stopServer(ctx, keep.server, 'SIGKILL');
    const recordsInStore = await countKeys(keep.redis, 'anyturn:alloc:*');

    await keep.redis.client.config('RESETSTAT');
    const first = await startAndTimeSync(ctx, keep, 'sync-node-b');
    if (first.server === undefined) throw new Error(`node B did not start: ${first.error ?? ''}`);
    b = first.server;
    const startCalls = await commandCalls(keep.redis);
    const redisCallsDuringStart: Record<string, number> = {};
    for (const [k, v] of startCalls) if (k !== 'config|resetstat') redisCallsDuringStart[k] = v;
    const after = sample(b.proc.pid);
    const m = await anyturnMetrics(b);

    // Do the clients' allocations work on B? Refresh through B, and a Send indication to the peer.
    const stats = new DriverStats();
    const step = Math.max(1, Math.floor(keep.clients.length / PROBE_SAMPLE));
    const probes = keep.clients.filter((_, i) => i % step === 0).slice(0, PROBE_SAMPLE);
    const peer = ctx.peer.endpoint;
    const before = new Map(probes.map((c) => [c.relayed?.port ?? -1, ctx.peer.bySourcePort.get(c.relayed?.port ?? -1) ?? 0]));
    const refreshed = await runPool(probes.length, 8, async (i) => {
      await probes[i]!.refresh(600);
      return 1;
    });
    for (const c of probes) c.sendIndication(peer, Buffer.from('probe after restart'));
    await sleep(1000);
    let relayOk = 0;
    for (const c of probes) {
      const port = c.relayed?.port ?? -1;
      if ((ctx.peer.bySourcePort.get(port) ?? 0) > (before.get(port) ?? 0)) relayOk++;
    }
    const commandLine = b.commandLine;
    await stopServer(ctx, b, 'SIGKILL');
    b = undefined;

    // Baseline: the same start with an empty store (Node start-up, Redis connect, membership).
    await keep.redis.client.flushall();
    const base = await startAndTimeSync(ctx, keep, 'sync-node-b-empty');
    if (base.server !== undefined) await stopServer(ctx, base.server, 'SIGKILL');

    const syncMs = first.lineMs !== undefined && base.lineMs !== undefined ? first.lineMs - base.lineMs : undefined;
    return {
      recordsInStore,
      adopted: first.adopted,
      startToSyncLineMs: first.lineMs,
      startToReadyMs: first.readyMs,
      baselineStartToSyncLineMs: base.lineMs,
      baselineAdopted: base.adopted,
      syncMs,
      syncMsFromLog: first.logMs,
      microsPerAllocation: syncMs !== undefined && first.adopted ? (1000 * syncMs) / first.adopted : undefined,
      after,
      liveAllocationsReported: m.allocations,
      probeSample: probes.length,
      probeRefreshOk: refreshed.results.length,
      probeRelayOk: relayOk,
      probeErrors: distinct(refreshed.errors),
      redisCallsDuringStart,
      commandLine,
    };
  } finally {
    await stopServer(ctx, b, 'SIGKILL');
    await closeAll(keep.clients);
    await stopRedis(ctx, keep.redis);
  }
}

// ---------------------------------------------------------------------------
// Part 4: Redis commands per allocation lifecycle

interface CommandRow {
  readonly command: string;
  /** INFO commandstats calls in the window, minus the idle background for as long. */
  readonly callsPerLifecycle: number;
  /** From MONITOR: issued by anyturn (round trips) vs run inside its Lua scripts. */
  readonly issuedPerLifecycle: number;
  readonly inScriptsPerLifecycle: number;
  readonly rawCalls: number;
  readonly backgroundPerSecond: number;
}

interface EventCost {
  readonly events: number;
  readonly ratePerSecond: number;
  readonly eventBytes: number;
  /** Subscribers that got each PUBLISH (the reply of PUBLISH). */
  readonly receiversPerPublish: number;
  /** anyturn's CPU per event it hears and has no allocation for (idle CPU subtracted). */
  readonly nodeMicrosPerEvent: number | undefined;
  /** redis-server's CPU per PUBLISH to that many subscribers (idle subtracted; pipelined). */
  readonly redisMicrosPerPublish: number | undefined;
  /** The same with EXTRA_SUBSCRIBERS more (plain ioredis subscribers in the bench process). */
  readonly wideSubscribers: number | undefined;
  readonly wideRedisMicrosPerPublish: number | undefined;
  /** (wide - narrow) / extra subscribers: Redis's cost of one more delivery. */
  readonly redisMicrosPerDelivery: number | undefined;
}

const EXTRA_SUBSCRIBERS = 19;

const EVENT_COST_EVENTS = 20_000;
const EVENT_COST_RATE = 5_000;

/**
 * What hearing the event channel costs a node: publishes copies of a real 'updated'
 * event (captured above, for an allocation that is gone, so the node only parses and
 * discards it, as a forward-mode node does for allocations it has not cached) at a
 * steady rate, and reads the node's and redis-server's CPU time around it.
 */
async function publishRun(redis: RedisHandle, server: ServerHandle, event: string): Promise<{ rate: number; receivers: number; nodeUs: number | undefined; redisUs: number | undefined }> {
  const idleMs = 2000;
  const n0 = safeCpuMicros(server.proc.pid);
  const r0 = safeCpuMicros(redis.proc.pid);
  await sleep(idleMs);
  const n1 = safeCpuMicros(server.proc.pid);
  const r1 = safeCpuMicros(redis.proc.pid);
  const batch = 50;
  const intervalMs = (1000 * batch) / EVENT_COST_RATE;
  let receivers = 0;
  const t0 = performance.now();
  for (let sent = 0; sent < EVENT_COST_EVENTS; sent += batch) {
    const p = redis.client.pipeline();
    for (let i = 0; i < batch; i++) p.publish('anyturn:events', event);
    const replies = (await p.exec()) ?? [];
    for (const [err, n] of replies) if (err === null) receivers += Number(n);
    const due = t0 + ((sent + batch) / batch) * intervalMs;
    const wait = due - performance.now();
    if (wait > 0) await sleep(wait);
  }
  await sleep(300);
  const windowMs = performance.now() - t0;
  const n2 = safeCpuMicros(server.proc.pid);
  const r2 = safeCpuMicros(redis.proc.pid);
  const net = (a: number | undefined, b: number | undefined, d: number | undefined): number | undefined =>
    a === undefined || b === undefined || d === undefined ? undefined : Math.max(0, d - b - ((b - a) * windowMs) / idleMs) / EVENT_COST_EVENTS;
  return { rate: EVENT_COST_EVENTS / (windowMs / 1000), receivers: receivers / EVENT_COST_EVENTS, nodeUs: net(n0, n1, n2), redisUs: net(r0, r1, r2) };
}

async function measureEventCost(redis: RedisHandle, server: ServerHandle, event: string): Promise<EventCost> {
  const narrow = await publishRun(redis, server, event);
  const extra: Redis[] = [];
  let wide: Awaited<ReturnType<typeof publishRun>> | undefined;
  try {
    for (let i = 0; i < EXTRA_SUBSCRIBERS; i++) {
      const sub = new Redis({ host: LOOPBACK, port: redis.port, maxRetriesPerRequest: 1 });
      sub.on('error', () => undefined);
      extra.push(sub);
      await sub.subscribe('anyturn:events');
      sub.on('message', () => undefined);
    }
    wide = await publishRun(redis, server, event);
  } finally {
    for (const sub of extra) sub.disconnect();
  }
  return {
    events: EVENT_COST_EVENTS,
    ratePerSecond: narrow.rate,
    eventBytes: Buffer.byteLength(event),
    receiversPerPublish: narrow.receivers,
    nodeMicrosPerEvent: narrow.nodeUs,
    redisMicrosPerPublish: narrow.redisUs,
    wideSubscribers: wide?.receivers,
    wideRedisMicrosPerPublish: wide?.redisUs,
    redisMicrosPerDelivery:
      wide?.redisUs !== undefined && narrow.redisUs !== undefined && wide.receivers > narrow.receivers ? (wide.redisUs - narrow.redisUs) / (wide.receivers - narrow.receivers) : undefined,
  };
}

interface StoreOpsResult {
  readonly eventCost: EventCost | undefined;
  readonly kind: ServerKind;
  readonly lifecycles: number;
  readonly ok: number;
  readonly errors: string[];
  readonly windowSeconds: number;
  readonly rows: CommandRow[];
  readonly roundTripsPerLifecycle: number;
  readonly commandsPerLifecycle: number;
  readonly publishesPerLifecycle: number;
  readonly eventSubscribers: number | undefined;
  readonly avgEventBytes: Record<string, number>;
  readonly latencyMs: LatencySummary;
  readonly background: Record<string, number>;
  readonly commandLine: string;
}

const BENCH_OWN_COMMANDS = new Set(['info', 'config|resetstat', 'monitor', 'ping', 'client|setname', 'client|info', 'dbsize', 'flushall', 'select']);

async function runStoreOps(ctx: Context, kind: 'anyturn-redis' | 'anyturn-redis-anycast'): Promise<StoreOpsResult> {
  let redis: RedisHandle | undefined;
  let server: ServerHandle | undefined;
  let monitor: Redis | undefined;
  const clients: AllocationClient[] = [];
  try {
    redis = await startRedis(ctx, `redis-ops-${kind}`);
    server = await startServer(ctx, kind, { redis, name: `ops-${kind}` });
    await sleep(1500);
    // Idle background (node heartbeats, event-channel heartbeats) per second.
    await redis.client.config('RESETSTAT');
    const b0 = performance.now();
    await sleep(3000);
    const bg = await commandCalls(redis);
    const bgSeconds = (performance.now() - b0) / 1000;

    monitor = await redis.client.monitor();
    monitor.on('error', () => undefined);
    const issued = new Map<string, number>();
    const inScripts = new Map<string, number>();
    const eventBytes = new Map<string, { n: number; bytes: number }>();
    const eventSamples = new Map<string, string>();
    monitor.on('monitor', (_time: string, args: string[], source: string) => {
      const cmd = (args[0] ?? '').toLowerCase();
      const m = source === 'lua' ? inScripts : issued;
      m.set(cmd, (m.get(cmd) ?? 0) + 1);
      if (cmd === 'publish' && args[2] !== undefined) {
        const type = /"type":"([a-z-]+)"/.exec(args[2])?.[1] ?? 'other';
        const e = eventBytes.get(type) ?? { n: 0, bytes: 0 };
        e.n++;
        e.bytes += Buffer.byteLength(args[2]);
        eventBytes.set(type, e);
        if (!eventSamples.has(type)) eventSamples.set(type, args[2]);
      }
    });
    await sleep(200);
    await redis.client.config('RESETSTAT');
    issued.clear();
    inScripts.clear();
    eventBytes.clear();
    const w0 = performance.now();
    const stats = new DriverStats();
    const peer = ctx.peer.endpoint;
    const pool = await runPool(
      ctx.options.lifecycles,
      ctx.options.workers,
      async () => {
        const c = await AllocationClient.open(server!.endpoint, { username: USER, password: PASSWORD }, stats);
        clients.push(c);
        const t0 = performance.now();
        await c.allocate();
        await c.createPermission(peer);
        await c.channelBind(CHANNEL, peer);
        await c.refresh(600);
        await c.refresh(0);
        return performance.now() - t0;
      },
      ctx.stop,
    );
    await sleep(1200); // one engine tick (1 s): anything written later than the response shows up
    const calls = await commandCalls(redis);
    const windowSeconds = (performance.now() - w0) / 1000;
    await sleep(100);
    const subs = (await redis.client.pubsub('NUMSUB', 'anyturn:events')) as [string, number];
    const ok = pool.results.length;
    const names = new Set([...calls.keys(), ...issued.keys(), ...inScripts.keys()]);
    const rows: CommandRow[] = [];
    for (const name of names) {
      if (BENCH_OWN_COMMANDS.has(name)) continue;
      const bgRate = (bg.get(name) ?? 0) / bgSeconds;
      const background = bgRate * windowSeconds;
      const raw = calls.get(name) ?? 0;
      const net = (x: number): number => Math.max(0, x - background) / Math.max(1, ok);
      const issuedNet = Math.max(0, (issued.get(name) ?? 0) - background) / Math.max(1, ok);
      rows.push({
        command: name,
        callsPerLifecycle: net(raw),
        issuedPerLifecycle: issuedNet,
        inScriptsPerLifecycle: (inScripts.get(name) ?? 0) / Math.max(1, ok),
        rawCalls: raw,
        backgroundPerSecond: bgRate,
      });
    }
    rows.sort((a, b) => b.callsPerLifecycle - a.callsPerLifecycle || a.command.localeCompare(b.command));
    const avgEventBytes: Record<string, number> = {};
    for (const [t, e] of eventBytes) avgEventBytes[t] = e.bytes / e.n;
    const background: Record<string, number> = {};
    for (const [k, v] of bg) if (!BENCH_OWN_COMMANDS.has(k)) background[k] = v / bgSeconds;
    monitor.disconnect(); // MONITOR would add to Redis's cost per publish
    monitor = undefined;
    const updated = eventSamples.get('updated');
    const eventCost = kind === 'anyturn-redis' && updated !== undefined ? await measureEventCost(redis, server, updated) : undefined;
    return {
      eventCost,
      kind,
      lifecycles: ctx.options.lifecycles,
      ok,
      errors: distinct(pool.errors),
      windowSeconds,
      rows,
      roundTripsPerLifecycle: rows.reduce((s, r) => s + r.issuedPerLifecycle, 0),
      commandsPerLifecycle: rows.reduce((s, r) => s + r.callsPerLifecycle, 0),
      publishesPerLifecycle: rows.find((r) => r.command === 'publish')?.callsPerLifecycle ?? 0,
      eventSubscribers: typeof subs[1] === 'number' ? subs[1] : Number(subs[1]),
      avgEventBytes,
      latencyMs: summarize(pool.results),
      background,
      commandLine: server.commandLine,
    };
  } finally {
    monitor?.disconnect();
    await stopServer(ctx, server);
    await closeAll(clients);
    await stopRedis(ctx, redis);
  }
}

// ---------------------------------------------------------------------------
// Report

interface Results {
  rate: RateResult[];
  live: LiveResult[];
  slab: SlabCalibration | undefined;
  fill: FillResult[];
  sync: SyncResult | undefined;
  storeOps: StoreOpsResult[];
  failures: string[];
}

function reportRate(rs: readonly RateResult[], o: Options): string[] {
  const lines: string[] = [];
  lines.push(`1. Allocation rate with authentication: Allocate (401 + authenticated) + CreatePermission + ChannelBind`);
  lines.push(`   ${o.allocations} allocations (after ${WARMUP_ALLOCATIONS} unmeasured warm-up ones), ${o.workers} concurrent client sockets, one new socket per allocation;`);
  lines.push(`   server on CPU ${SERVER_CPU}, driver and redis-server on CPU ${CLIENT_CPU}; latency = first Allocate sent -> ChannelBind success`);
  const rows: string[][] = [['server', 'store', 'ok', 'alloc/s', 'p50 ms', 'p99 ms', 'max ms', 'retransmits', 'server CPU us/alloc', 'redis CPU us/alloc', 'driver CPU %']];
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
  const coturn = rs.find((r) => r.kind === 'coturn');
  if (coturn) {
    lines.push('');
    lines.push('   ratio anyturn/coturn:');
    const rr: string[][] = [['server', 'store', 'alloc/s', 'p50', 'p99', 'server CPU/alloc']];
    for (const r of rs) {
      if (r.kind === 'coturn') continue;
      rr.push([r.server, r.store, ratio(r.allocationsPerSecond, coturn.allocationsPerSecond), ratio(r.latencyMs.p50, coturn.latencyMs.p50), ratio(r.latencyMs.p99, coturn.latencyMs.p99), ratio(r.serverCpuMicrosPerAllocation, coturn.serverCpuMicrosPerAllocation)]);
    }
    lines.push(table(rr));
  }
  for (const r of rs) for (const e of r.errors) lines.push(`   errors ${r.server}/${r.store}: ${e}`);
  return lines;
}

function reportLive(rs: readonly LiveResult[], slab: Results['slab'], o: Options): string[] {
  const lines: string[] = [];
  lines.push(`2. Memory and sockets per allocation: ${o.live} live allocations, each with one permission (no refresh; lifetime 600 s)`);
  lines.push(`   before = ${SETTLE_MS / 1000} s after the server is ready; after = ${SETTLE_MS / 1000} s after the last allocation; RSS = VmRSS, fds = entries in /proc/PID/fd;`);
  lines.push('   V8 heap = anyturn_process_nodejs_heap_size_used_bytes from /metrics (no forced GC: garbage included, noisy)');
  lines.push(`   every server runs under prlimit --nofile=${serverNofile}:${serverNofile} (the bench shell's limit is ${nofileLimit(process.pid) ?? '?'}; coturn sizes its session table from it)`);
  const rows: string[][] = [['server', 'store', 'ok', 'RSS MB before', 'RSS MB after', 'RSS KB/alloc', 'fds before', 'fds after', 'fds/alloc', 'V8 heap B/alloc', 'redis B/alloc', 'redis keys/alloc', 'create s']];
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
    for (const r of rs) if (r.kind !== 'coturn') rr.push([r.server, r.store, ratio(r.rssKbPerAllocation, coturn.rssKbPerAllocation), ratio(r.fdsPerAllocation, coturn.fdsPerAllocation)]);
    lines.push(table(rr));
  }
  if (slab) {
    const parts = Object.entries(slab.byCache)
      .map(([c, b]) => `${c} ${b.toFixed(0)}`)
      .join(', ');
    lines.push(`   kernel memory outside RSS: ~${fmt(slab.bytesPerSocket, 0)} bytes of slab per bound UDP socket (${parts}; /proc/slabinfo delta while the driver binds ${slab.sockets} sockets; host-wide, rough)`);
  }
  return lines;
}

function reportFill(rs: readonly FillResult[]): string[] {
  const lines: string[] = [];
  lines.push(`2b. Filling a relay range: ${FILL_ATTEMPTS} Allocates, one after the other, on a range of ${FILL_PORTS} relay ports (the capacity bound: one port per allocation)`);
  const rows: string[][] = [['server', 'store', 'ports', 'allocated', 'first refusal at', 'refused with ports free', 'refusals']];
  for (const r of rs) {
    rows.push([r.server, r.store, String(r.ports), `${r.ok}/${r.attempted}`, r.firstRefusal === undefined ? '-' : `#${r.firstRefusal}`, String(r.refusedWhileFree), r.errors.join('; ') || '-']);
  }
  lines.push(table(rows));
  return lines;
}

function reportSync(s: SyncResult): string[] {
  const lines: string[] = [];
  lines.push('3. Start-up sync, anycast relay mode: node A made the allocations of part 2 and was killed (SIGKILL);');
  lines.push('   node B starts in its place (same relay IP, ports, Redis) and takes on every record before serving.');
  lines.push('   sync = (B start -> "took on the allocations" line) minus the same with an empty store;');
  lines.push('   sync (B log) = B\'s own log time from "redis connection ready" to that line; us/alloc from sync ms');
  const rows: string[][] = [['records in store', 'adopted', 'start->line ms', 'empty store ms', 'sync ms', 'sync ms (B log)', 'us/alloc', 'start->ready ms', 'RSS MB after', 'fds after', 'refresh ok', 'relay ok']];
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

function reportStoreOps(rs: readonly StoreOpsResult[]): string[] {
  const lines: string[] = [];
  lines.push('4. Redis commands per allocation lifecycle: Allocate (401 + auth), CreatePermission, ChannelBind, Refresh 600, Refresh 0');
  lines.push('   INFO commandstats after CONFIG RESETSTAT (idle background per second measured first and subtracted);');
  lines.push('   "issued" = commands anyturn sends (round trips), "in scripts" = commands its Lua scripts run (both from MONITOR)');
  for (const r of rs) {
    lines.push('');
    lines.push(`   ${r.kind === 'anyturn-redis' ? 'unicast relay mode (forward mode)' : 'anycast relay mode'}: ${r.ok}/${r.lifecycles} lifecycles in ${fmt(r.windowSeconds, 1)} s, p50 ${fmt(r.latencyMs.p50, 2)} ms per lifecycle; ${r.eventSubscribers ?? '?'} subscriber(s) on anyturn:events`);
    const rows: string[][] = [['command', 'calls/lifecycle', 'issued', 'in scripts', 'background/s']];
    for (const row of r.rows) {
      if (row.callsPerLifecycle < 0.005 && row.issuedPerLifecycle < 0.005 && row.inScriptsPerLifecycle < 0.005) continue;
      rows.push([row.command, fmt(row.callsPerLifecycle, 2), fmt(row.issuedPerLifecycle, 2), fmt(row.inScriptsPerLifecycle, 2), fmt(row.backgroundPerSecond, 2)]);
    }
    rows.push(['total', fmt(r.commandsPerLifecycle, 2), fmt(r.roundTripsPerLifecycle, 2), fmt(r.rows.reduce((s, x) => s + x.inScriptsPerLifecycle, 0), 2), '']);
    lines.push(table(rows, 1));
    const sizes = Object.entries(r.avgEventBytes)
      .map(([t, b]) => `${t} ${b.toFixed(0)} B`)
      .join(', ');
    lines.push(`   published events per lifecycle: ${fmt(r.publishesPerLifecycle, 2)}; mean payload: ${sizes || '-'}`);
    const e = r.eventCost;
    if (e) {
      lines.push(
        `   hearing the event channel: ${e.events} copies of an 'updated' event (${e.eventBytes} B) at ${fmt(e.ratePerSecond, 0)}/s, ${fmt(e.receiversPerPublish, 0)} subscriber(s): ` +
          `anyturn ${fmt(e.nodeMicrosPerEvent, 1)} us CPU per event heard, redis-server ${fmt(e.redisMicrosPerPublish, 1)} us per PUBLISH (pipelined);`,
      );
      lines.push(
        `   with ${fmt(e.wideSubscribers, 0)} subscribers: redis-server ${fmt(e.wideRedisMicrosPerPublish, 1)} us per PUBLISH, ${fmt(e.redisMicrosPerDelivery, 2)} us per extra delivery`,
      );
    }
    for (const e of r.errors) lines.push(`   errors: ${e}`);
  }
  return lines;
}

// ---------------------------------------------------------------------------

async function main(): Promise<number> {
  const options = parseOptions(process.argv.slice(2));
  for (const tool of ['taskset', 'prlimit', 'turnserver', 'redis-server']) {
    if (!haveCommand(tool)) throw new Error(`'${tool}' is not on PATH`);
  }
  const repoRoot = findRepoRoot();
  const resultsDir = join(repoRoot, 'bench', 'results');
  const logDir = join(resultsDir, 'logs');
  mkdirSync(logDir, { recursive: true });
  const anyturnCli = fileURLToPath(new URL('../src/cli.js', import.meta.url));
  if (!existsSync(anyturnCli)) throw new Error(`${anyturnCli} does not exist (npm run build first)`);
  const ephemeral = readFileSync('/proc/sys/net/ipv4/ip_local_port_range', 'utf8').trim().split(/\s+/).map(Number);
  if ((ephemeral[0] ?? 0) <= RELAY_MAX && (ephemeral[1] ?? 0) >= RELAY_MIN) {
    console.error(`warning: ip_local_port_range ${ephemeral.join('-')} overlaps the relay range ${RELAY_MIN}-${RELAY_MAX}; client sockets may take relay ports`);
  }

  // The driver on CPU 0 (all its threads), and room for 10,000+ client sockets.
  spawnSync('taskset', ['-a', '-p', '-c', String(CLIENT_CPU), String(process.pid)], { stdio: 'ignore' });
  if (spawnSync('prlimit', [`--nofile=${WANTED_NOFILE}:${WANTED_NOFILE}`, 'true'], { stdio: 'ignore' }).status === 0) {
    spawnSync('prlimit', ['--pid', String(process.pid), `--nofile=${WANTED_NOFILE}:${WANTED_NOFILE}`], { stdio: 'ignore' });
  } else {
    const hard = Number(/^Max open files\s+\S+\s+(\d+)/m.exec(readFileSync('/proc/self/limits', 'utf8'))?.[1]);
    if (!Number.isInteger(hard) || hard <= 0) throw new Error('cannot read the open-file hard limit');
    serverNofile = hard;
    console.error(`note: raising the open-file hard limit to ${WANTED_NOFILE} is not permitted here; servers run with ${hard}:${hard}`);
  }

  const scratchDir = mkdtempSync(join(tmpdir(), 'anyturn-bench-alloc-'));
  const group = new ProcessGroup();
  const signals = stopOnSignals(group, scratchDir);
  const budgetMs = 10 * 60_000;
  const watchdog = setTimeout(() => {
    console.error(`benchmark exceeded ${budgetMs / 1000} s; stopping`);
    group.killAllNow();
    process.exit(124);
  }, budgetMs);
  watchdog.unref();

  const peer = await CountingPeer.open();
  const ctx: Context = { group, scratchDir, logDir, repoRoot, anyturnCli, peer, options, stop: () => signals.interrupted };
  const results: Results = { rate: [], live: [], slab: undefined, fill: [], sync: undefined, storeOps: [], failures: [] };
  const step = async <T>(label: string, f: () => Promise<T>): Promise<T | undefined> => {
    if (signals.interrupted) return undefined;
    process.stderr.write(`[bench:allocations] ${label} ... `);
    const t0 = performance.now();
    try {
      const r = await f();
      process.stderr.write(`done in ${((performance.now() - t0) / 1000).toFixed(1)} s\n`);
      return r;
    } catch (err) {
      const msg = err instanceof Error ? err.message : String(err);
      process.stderr.write(`FAILED: ${msg}\n`);
      results.failures.push(`${label}: ${msg}`);
      return undefined;
    }
  };
  const t0 = performance.now();
  try {
    if (options.parts.includes(1)) {
      for (const kind of ['anyturn-memory', 'anyturn-redis', 'coturn'] as const) {
        const r = await step(`part 1, ${kind}: ${options.allocations} allocations`, () => runRate(ctx, kind));
        if (r) results.rate.push(r);
      }
    }
    if (options.parts.includes(2) || options.parts.includes(3)) {
      if (options.parts.includes(2)) results.slab = await step('part 2: kernel memory per UDP socket', () => slabPerSocket(options.live));
      const kinds: ServerKind[] = options.parts.includes(2) ? ['anyturn-memory', 'anyturn-redis-anycast', 'coturn'] : ['anyturn-redis-anycast'];
      for (const kind of kinds) {
        const keepForSync = kind === 'anyturn-redis-anycast' && options.parts.includes(3);
        const r = await step(`part 2, ${kind}: ${options.live} live allocations`, () => runLive(ctx, kind, keepForSync));
        if (r === undefined) continue;
        if (options.parts.includes(2)) results.live.push(r.result);
        if (r.keep) {
          const keep = r.keep;
          const s = await step(`part 3: node B syncs ${r.result.ok} allocations`, () => runSync(ctx, keep));
          if (s) results.sync = s;
        }
      }
    }
    if (options.parts.includes(2)) {
      for (const kind of ['anyturn-memory', 'anyturn-redis-anycast', 'coturn'] as const) {
        const r = await step(`part 2b, ${kind}: ${FILL_ATTEMPTS} Allocates on ${FILL_PORTS} relay ports`, () => runFill(ctx, kind));
        if (r) results.fill.push(r);
      }
    }
    if (options.parts.includes(4)) {
      for (const kind of ['anyturn-redis', 'anyturn-redis-anycast'] as const) {
        const r = await step(`part 4, ${kind}: ${options.lifecycles} lifecycles`, () => runStoreOps(ctx, kind));
        if (r) results.storeOps.push(r);
      }
    }
  } finally {
    await group.stopAll();
    peer.close();
    rmSync(scratchDir, { recursive: true, force: true });
    clearTimeout(watchdog);
  }

  const out: string[] = [];
  out.push(`anyturn allocation benchmark (node ${process.version}, ${spawnSync('turnserver', ['--version'], { encoding: 'utf8' }).stdout.trim() ? `coturn ${spawnSync('turnserver', ['--version'], { encoding: 'utf8' }).stdout.trim()}` : 'coturn ?'}, ${spawnSync('redis-server', ['--version'], { encoding: 'utf8' }).stdout.trim().split(' ').slice(0, 3).join(' ')}); all on 127.0.0.1`);
  if (results.rate.length > 0) out.push('', ...reportRate(results.rate, options));
  if (results.live.length > 0) out.push('', ...reportLive(results.live, results.slab, options));
  if (results.fill.length > 0) out.push('', ...reportFill(results.fill));
  if (results.sync) out.push('', ...reportSync(results.sync));
  if (results.storeOps.length > 0) out.push('', ...reportStoreOps(results.storeOps));
  if (results.failures.length > 0) out.push('', 'failures:', ...results.failures.map((f) => `  ${f}`));
  out.push('', `total ${((performance.now() - t0) / 1000).toFixed(0)} s`);
  console.log(out.join('\n'));

  const json = {
    generatedAt: new Date().toISOString(),
    host: {
      node: process.version,
      coturn: spawnSync('turnserver', ['--version'], { encoding: 'utf8' }).stdout.trim(),
      redis: spawnSync('redis-server', ['--version'], { encoding: 'utf8' }).stdout.trim(),
      cpus: spawnSync('nproc', { encoding: 'utf8' }).stdout.trim(),
      serverCpu: SERVER_CPU,
      clientCpu: CLIENT_CPU,
      redisCpu: REDIS_CPU,
      relayPorts: `${RELAY_MIN}-${RELAY_MAX}`,
      serverNofile: serverNofile,
      benchNofile: nofileLimit(process.pid),
    },
    options,
    ...results,
  };
  const file = join(resultsDir, 'allocations.json');
  writeFileSync(file, JSON.stringify(json, null, 2) + '\n');
  console.log(`JSON: ${relative(process.cwd(), file)}; server logs: ${relative(process.cwd(), logDir)}/allocations-*.log`);
  return results.failures.length === 0 ? 0 : 1;
}

main().then(
  (code) => process.exit(code),
  (err: unknown) => {
    console.error(err instanceof Error ? err.message : err);
    process.exit(1);
  },
);

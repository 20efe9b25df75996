// The servers under test of npm run bench:allocations: anyturn on each store and
// coturn, started on the server core under prlimit, ready when they answer; and what
// is read from a running one (RSS, fds, anyturn's /metrics).
import { mkdtempSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { randomBytes } from 'node:crypto';
import { performance } from 'node:perf_hooks';
import { fileURLToPath } from 'node:url';

import { fdCount, statusKb, type TrackedProcess } from '../processes.js';
import { freeTcpPort, freeUdpPort, stunBindingAnswers } from '../net.js';
import { AUTH_SECRET, PASSWORD, REALM, USER, loopbackTurnArgs, coturnLaunch } from '../servers.js';
import { LOOPBACK, type AllocationClient, type Endpoint } from '../turn-driver.js';
import { SERVER_CPU, sleep } from '../host.js';
import { RELAY_MAX, RELAY_MIN } from './options.js';
import { READY_TIMEOUT_MS, closeAll, needsRedis, type Context, type ServerKind } from './context.js';
import { startRedis, stopRedis, type RedisHandle } from './redis.js';

const CLUSTER_SECRET = randomBytes(16).toString('hex'); // 32 characters
const NODE_ID = 'bench-a';

export interface ServerHandle {
  readonly kind: ServerKind;
  readonly name: string;
  readonly proc: TrackedProcess;
  readonly endpoint: Endpoint;
  readonly metricsPort: number | undefined;
  readonly commandLine: string;
  readonly startedAt: number;
}

export interface StartOptions {
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
  /** --node-id; default NODE_ID (several nodes on one Redis need their own). */
  readonly nodeId?: string;
  /** Another build's dist/src/cli.js (part 5's baseline); default this build's. */
  readonly cli?: string;
}

/**
 * The settings anyturn and coturn share: the port, the relay range, the static user, and with
 * --credentials rest the secret of time-limited credentials (the floor has only its static user).
 */
function commonSettings(ctx: Context, listeningPort: number, o: StartOptions) {
  return {
    listeningPort,
    relayPorts: o.relayPorts ?? { min: RELAY_MIN, max: RELAY_MAX },
    user: USER,
    password: PASSWORD,
    realm: REALM,
    ...(ctx.options.credentials === 'rest' ? { authSecret: AUTH_SECRET } : {}),
  };
}

function anyturnArgs(ctx: Context, kind: ServerKind, listeningPort: number, metricsPort: number, meshPort: number, o: StartOptions): string[] {
  const args = [
    o.cli ?? ctx.anyturnCli,
    ...loopbackTurnArgs(commonSettings(ctx, listeningPort, o)),
    '--no-tcp',
    '--no-tls',
    '--metrics-ip',
    LOOPBACK,
    '--metrics-port',
    String(metricsPort),
    '--log-level',
    o.logLevel ?? 'warn',
    '--node-id',
    o.nodeId ?? NODE_ID,
    // Every client of the benchmark comes from 127.0.0.1: without this, anyturn's
    // anti-amplification limit (20 error answers/s per source IP, burst 40) would drop
    // most 401 challenges. Real clients come from many addresses.
    '--unauth-error-rate',
    '0',
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

/** The command line that starts `kind`, and anyturn's ops port (coturn has none). */
async function launchOf(
  ctx: Context,
  kind: ServerKind,
  listeningPort: number,
  o: StartOptions,
): Promise<{ command: string; args: string[]; metricsPort: number | undefined }> {
  if (kind === 'coturn') {
    const launch = coturnLaunch({ ...commonSettings(ctx, listeningPort, o), scratchDir: mkdtempSync(join(ctx.scratchDir, 'coturn-')) });
    return { command: launch.command, args: [...launch.args], metricsPort: undefined };
  }
  if (kind === 'floor' || kind === 'floor-shared') {
    const floor = fileURLToPath(new URL('./floor-allocate.js', import.meta.url));
    const relay = kind === 'floor' ? 'per-allocation' : 'shared';
    const args = [floor, '--listening-port', String(listeningPort), '--user', `${USER}:${PASSWORD}`, '--realm', REALM, '--relay', relay];
    return { command: process.execPath, args, metricsPort: undefined };
  }
  if (kind === 'anyturn-memory-baseline') {
    if (ctx.options.rateBaseline === undefined) throw new Error(`${kind} needs --rate-baseline`);
    o = { ...o, cli: join(ctx.options.rateBaseline, 'src', 'cli.js') };
  }
  const metricsPort = await freeTcpPort();
  const meshPort = o.meshPort ?? (await freeUdpPort());
  return { command: process.execPath, args: anyturnArgs(ctx, kind, listeningPort, metricsPort, meshPort, o), metricsPort };
}

export async function startServer(ctx: Context, kind: ServerKind, o: StartOptions = {}): Promise<ServerHandle> {
  const listeningPort = o.listeningPort ?? (await freeUdpPort());
  const name = o.name ?? kind;
  const { command, args, metricsPort } = await launchOf(ctx, kind, listeningPort, o);
  const nofile = ctx.serverNofile;
  // taskset -c 1 prlimit --nofile=N:N <server>: both exec, so the pid is the server's.
  const startedAt = performance.now();
  const proc = ctx.group.start(name, SERVER_CPU, 'prlimit', [`--nofile=${nofile}:${nofile}`, command, ...args]);
  o.onSpawn?.(proc);
  const handle: ServerHandle = {
    kind,
    name,
    proc,
    endpoint: { address: LOOPBACK, port: listeningPort },
    metricsPort,
    commandLine: `taskset -c ${SERVER_CPU} prlimit --nofile=${nofile}:${nofile} ${command} ${args.join(' ').replace(CLUSTER_SECRET, '<secret>')}`,
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

export async function stopServer(ctx: Context, s: ServerHandle | undefined, signal: 'SIGTERM' | 'SIGKILL' = 'SIGTERM'): Promise<void> {
  if (s === undefined) return;
  if (signal === 'SIGKILL') {
    if (!s.proc.hasExited()) s.proc.child.kill('SIGKILL');
    await s.proc.exited;
  } else {
    await ctx.group.stop(s.proc);
  }
  writeFileSync(join(ctx.logDir, `allocations-${s.name}.log`), `# ${s.commandLine}\n${s.proc.output()}`);
}

/** A part's processes and clients: its own redis-server (for the Redis kinds), the server, the client sockets. */
export interface Rig {
  readonly redis: RedisHandle | undefined;
  server: ServerHandle | undefined;
  readonly clients: AllocationClient[];
  /** Set when another part takes the rig over (part 3 after part 2): nothing is stopped then. */
  handedOver: boolean;
}

/**
 * Runs `f` with a fresh redis-server if `kind` needs one (named redis-PREFIX-KIND); `f`
 * starts the server. Then stops the server, closes the clients and stops redis-server, in
 * that order, unless `f` handed the rig over.
 */
export async function withRig<T>(ctx: Context, kind: ServerKind, prefix: string, f: (rig: Rig) => Promise<T>): Promise<T> {
  let rig: Rig = { redis: undefined, server: undefined, clients: [], handedOver: false };
  try {
    if (needsRedis(kind)) rig = { ...rig, redis: await startRedis(ctx, `redis-${prefix}-${kind}`) };
    return await f(rig);
  } finally {
    if (!rig.handedOver) {
      await stopServer(ctx, rig.server);
      await closeAll(rig.clients);
      await stopRedis(ctx, rig.redis);
    }
  }
}

export interface ProcessSample {
  readonly rssKb: number | undefined;
  readonly fds: number | undefined;
}

/** A server's VmRSS and open file descriptors now. */
export function sample(pid: number): ProcessSample {
  return { rssKb: statusKb(pid, 'VmRSS'), fds: fdCount(pid) };
}

interface AnyturnMetrics {
  readonly allocations: number | undefined;
  readonly heapUsedBytes: number | undefined;
}

export async function anyturnMetrics(s: ServerHandle): Promise<AnyturnMetrics> {
  if (s.metricsPort === undefined) return { allocations: undefined, heapUsedBytes: undefined };
  try {
    const res = await fetch(`http://${LOOPBACK}:${s.metricsPort}/metrics`, { signal: AbortSignal.timeout(5000) });
    const text = await res.text();
    let allocations: number | undefined;
    let heap: number | undefined;
    for (const line of text.split('\n')) {
      if (line.startsWith('anyturn_allocations{') || line.startsWith('anyturn_allocations '))
        allocations = (allocations ?? 0) + Number(line.slice(line.lastIndexOf(' ') + 1));
      if (line.startsWith('anyturn_process_nodejs_heap_size_used_bytes ')) heap = Number(line.slice(line.lastIndexOf(' ') + 1));
    }
    return { allocations, heapUsedBytes: heap };
  } catch {
    return { allocations: undefined, heapUsedBytes: undefined };
  }
}

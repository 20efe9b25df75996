// The scale part's processes in the server namespace S: redis-server (on S's loopback, and on a
// Unix socket the benchmark reaches from the root namespace), the bridge to anyturn's ops
// endpoint, and anyturn itself (anycast relay mode on that Redis); what is read from a running
// node (fds, RSS, /metrics, BPF maps), and how long a start takes until it serves.
import { mkdirSync, readFileSync, readdirSync, readlinkSync } from 'node:fs';
import http from 'node:http';
import { join } from 'node:path';
import { randomBytes } from 'node:crypto';
import { performance } from 'node:perf_hooks';

import { Redis } from 'ioredis';

import { fdCount, processTree, statusKb, type ProcessGroup, type TrackedProcess } from '../processes.js';
import { PASSWORD, REALM, USER } from '../servers.js';
import { CLIENT_CPU, SERVER_CPU, sleep } from '../host.js';
import { REDIS_CPU } from './context.js';
import type { RedisHandle } from './redis.js';
import { LISTENING_ADDRESS, RELAY_MAX_PORT, RELAY_MIN_PORT } from './scale-plan.js';
import type { ScaleOptions } from './scale-options.js';
import { SERVER_INTERFACES, type ScaleTopology } from './scale-topology.js';

export const LISTENING_PORT = 3478;
const METRICS_PORT = 9641;
const MESH_PORT = 5001;
const REDIS_PORT = 6379;
const NODE_ID = 'bench-scale';
const CLUSTER_SECRET = randomBytes(16).toString('hex');
/** pino's line when the anycast start-up sync is over (src/server/cluster.ts). */
const SYNC_LINE = /anycast relay: took on the allocations in the store/;
const READY_TIMEOUT_MS = 20_000;
const POLL_MS = 50;

export interface NodeContext {
  readonly group: ProcessGroup;
  readonly topo: ScaleTopology;
  readonly options: ScaleOptions;
  readonly scratchDir: string;
  readonly anyturnCli: string;
  readonly probeScript: string;
  /** Open-file limit (soft = hard) the node runs with. */
  readonly nofile: number;
}

/** In the namespace: `taskset -c cpu ip netns exec NS command args` (every step execs: the pid is the command's). */
export function startIn(
  ctx: NodeContext,
  role: 'C' | 'S' | 'P',
  name: string,
  cpu: number,
  command: string,
  args: readonly string[],
  stdin = false,
): TrackedProcess {
  const a = ctx.topo.argv(role, command, args);
  return ctx.group.start(name, cpu, a.command, a.args, stdin);
}

/** Resolves with the first JSON line of `p` whose type is `type`; throws on exit or timeout. */
export async function jsonLine<T>(p: TrackedProcess, type: string, timeoutMs: number): Promise<T> {
  const re = new RegExp(`^\\{"type":"${type}"`);
  if (!(await p.waitForLine(re, timeoutMs))) throw new Error(`${p.name}: no "${type}" line within ${timeoutMs} ms: ${p.tail().slice(-5).join(' | ')}`);
  const line = p.tail().find((l) => re.test(l));
  return JSON.parse(line ?? '{}') as T;
}

export async function startRedisInS(ctx: NodeContext): Promise<RedisHandle> {
  const dir = join(ctx.scratchDir, 'redis');
  mkdirSync(dir, { recursive: true });
  const path = join(dir, 'redis.sock');
  const proc = startIn(ctx, 'S', 'redis-scale', REDIS_CPU, 'redis-server', [
    ...['--port', String(REDIS_PORT), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no', '--protected-mode', 'no'],
    ...['--dir', dir, '--loglevel', 'warning', '--unixsocket', path, '--unixsocketperm', '700'],
  ]);
  const client = new Redis({ path, lazyConnect: true, maxRetriesPerRequest: 1, retryStrategy: () => null });
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
      if (Date.now() > deadline) throw new Error(`redis-server not answering on ${path}: ${String(err)}`);
      await sleep(POLL_MS);
    }
  }
  // url: as anyturn in S sees it; the benchmark's own client goes through the Unix socket.
  return { name: 'redis-scale', proc, port: REDIS_PORT, url: REDIS_URL, client };
}

/** The bridge in S to anyturn's ops endpoint; returns the Unix socket's path. */
export async function startBridge(ctx: NodeContext): Promise<string> {
  const path = join(ctx.scratchDir, 'ops.sock');
  const p = startIn(ctx, 'S', 'ops-bridge', CLIENT_CPU, process.execPath, [ctx.probeScript, 'bridge', JSON.stringify({ path, port: METRICS_PORT })]);
  await jsonLine(p, 'ready', 10_000);
  return path;
}

/** GET through the bridge; undefined when nothing answers. */
export function opsGet(socketPath: string, path: string, timeoutMs = 5000): Promise<{ status: number; body: string } | undefined> {
  return new Promise((resolve) => {
    const req = http.get({ socketPath, path, timeout: timeoutMs, agent: false }, (res) => {
      let body = '';
      res.setEncoding('utf8');
      res.on('data', (c: string) => (body += c));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, body }));
      res.on('error', () => resolve(undefined));
    });
    req.on('timeout', () => req.destroy());
    req.on('error', () => resolve(undefined));
  });
}

/** redis-server in S, as anyturn there reaches it. */
const REDIS_URL = `redis://127.0.0.1:${REDIS_PORT}`;

export function anyturnArgs(ctx: NodeContext): string[] {
  const o = ctx.options;
  return [
    ...o.nodeArgs,
    ctx.anyturnCli,
    ...['--listening-ip', LISTENING_ADDRESS, '--listening-port', String(LISTENING_PORT)],
    ...ctx.topo.relayIps.flatMap((ip) => ['--relay-ip', ip]),
    ...['--min-port', String(RELAY_MIN_PORT), '--max-port', String(RELAY_MAX_PORT)],
    ...['--user', `${USER}:${PASSWORD}`, '--realm', REALM, '--no-tcp', '--no-tls'],
    ...['--metrics-ip', '127.0.0.1', '--metrics-port', String(METRICS_PORT), '--log-level', 'info', '--node-id', NODE_ID],
    // Clients come from a few dozen addresses at thousands of Allocates a second: without this,
    // the anti-amplification limit (20 error answers/s per source IP) would drop most 401s.
    ...['--unauth-error-rate', '0'],
    // 198.18.0.0/15 is a special-purpose block anyturn refuses as a peer by default (src/turn/peer-policy.ts).
    ...['--allowed-peer-ip', '198.18.0.0/15'],
    ...['--redis-url', REDIS_URL, '--mesh-address', `127.0.0.1:${MESH_PORT}`, '--cluster-secret', CLUSTER_SECRET, '--relay-mode', 'anycast'],
    ...(o.kernel ? ['--dataplane', 'kernel', ...SERVER_INTERFACES.flatMap((i) => ['--dataplane-interface', i])] : ['--dataplane', 'js']),
    ...(o.relaySockets === undefined ? [] : ['--relay-sockets', o.relaySockets]),
    ...o.serverArgs,
  ];
}

export function commandLineOf(ctx: NodeContext): string {
  return `taskset -c ${SERVER_CPU} ip netns exec S prlimit --nofile=${ctx.nofile}:${ctx.nofile} node ${anyturnArgs(ctx).join(' ').replace(CLUSTER_SECRET, '<secret>')}`;
}

export interface StartTiming {
  /** Spawn to the sync line (ms), and to /readyz 200. */
  readonly spawnToSyncLineMs: number | undefined;
  readonly spawnToReadyMs: number;
  /** From the node's own log: "redis connection ready" to the sync line. */
  readonly syncMsFromLog: number | undefined;
  readonly adopted: number | undefined;
}

export interface RunningNode {
  readonly proc: TrackedProcess;
  readonly name: string;
  readonly start: StartTiming;
}

/** `adopted` and the time from "redis connection ready" to the sync line, from pino's timestamps. */
function syncFromLog(lines: readonly string[]): { adopted: number | undefined; logMs: number | undefined } {
  let readyAt: number | undefined;
  for (const line of lines) {
    if (!line.startsWith('{')) continue;
    let j: { adopted?: unknown; time?: unknown; msg?: unknown };
    try {
      j = JSON.parse(line) as typeof j;
    } catch {
      continue;
    }
    const t = typeof j.time === 'number' ? j.time : typeof j.time === 'string' ? Date.parse(j.time) : Number.NaN;
    if (j.msg === 'redis connection ready' && Number.isFinite(t)) readyAt = t;
    if (typeof j.msg === 'string' && SYNC_LINE.test(j.msg)) {
      return { adopted: typeof j.adopted === 'number' ? j.adopted : undefined, logMs: readyAt !== undefined && Number.isFinite(t) ? t - readyAt : undefined };
    }
  }
  return { adopted: undefined, logMs: undefined };
}

/** Starts anyturn in S and waits until /readyz says 200 (after the anycast start-up sync). */
export async function startNode(ctx: NodeContext, opsSocket: string, name: string, timeoutMs = READY_TIMEOUT_MS): Promise<RunningNode> {
  const args = [`--nofile=${ctx.nofile}:${ctx.nofile}`, process.execPath, ...anyturnArgs(ctx)];
  const t0 = performance.now();
  const proc = startIn(ctx, 'S', name, SERVER_CPU, 'prlimit', args);
  let lineAt: number | undefined;
  void proc.waitForLine(SYNC_LINE, timeoutMs).then((ok) => {
    if (ok) lineAt = performance.now();
  });
  const deadline = t0 + timeoutMs;
  for (;;) {
    if (proc.hasExited()) throw new Error(`${name} exited (${String(await proc.exited)}) before it was ready:\n${proc.tail().slice(-15).join('\n')}`);
    if ((await opsGet(opsSocket, '/readyz', 1000))?.status === 200) break;
    if (performance.now() > deadline) throw new Error(`${name}: /readyz not 200 within ${timeoutMs} ms`);
    await sleep(POLL_MS);
  }
  const spawnToReadyMs = performance.now() - t0;
  for (let i = 0; i < 20 && lineAt === undefined; i++) await sleep(10);
  const fromLog = syncFromLog(proc.tail());
  return {
    proc,
    name,
    start: { spawnToSyncLineMs: lineAt === undefined ? undefined : lineAt - t0, spawnToReadyMs, syncMsFromLog: fromLog.logMs, adopted: fromLog.adopted },
  };
}

/** What /metrics says: series name{labels} -> value, for the series the report uses. */
export async function readMetrics(opsSocket: string): Promise<Map<string, number>> {
  const res = await opsGet(opsSocket, '/metrics', 30_000);
  const out = new Map<string, number>();
  if (res === undefined || res.status !== 200) return out;
  for (const line of res.body.split('\n')) {
    if (line.startsWith('#')) continue;
    const i = line.lastIndexOf(' ');
    if (i <= 0) continue;
    const key = line.slice(0, i);
    if (/^anyturn_(allocations|process_nodejs_heap_size_used_bytes|process_nodejs_gc_duration_seconds|store_events_received_total)/.test(key)) {
      out.set(key, Number(line.slice(i + 1)));
    }
  }
  return out;
}

/** The sum of every series of `name` (all label sets). */
export function metricSum(m: Map<string, number>, name: string): number | undefined {
  let sum: number | undefined;
  for (const [k, v] of m) if (k === name || k.startsWith(`${name}{`)) sum = (sum ?? 0) + v;
  return sum;
}

export interface BpfMaps {
  readonly maps: number;
  readonly memlockBytes: number;
}

/** BPF maps the node and its helper hold (anon_inode:bpf-map fds, fdinfo `memlock`), each map once. */
export function bpfMaps(pid: number): BpfMaps | undefined {
  const seen = new Map<string, number>();
  for (const p of processTree(pid)) {
    let fds: string[];
    try {
      fds = readdirSync(`/proc/${p}/fd`);
    } catch {
      continue;
    }
    for (const fd of fds) {
      try {
        if (readlinkSync(`/proc/${p}/fd/${fd}`) !== 'anon_inode:bpf-map') continue;
        const info = readFileSync(`/proc/${p}/fdinfo/${fd}`, 'utf8');
        const id = /^map_id:\s*(\d+)/m.exec(info)?.[1];
        const memlock = Number(/^memlock:\s*(\d+)/m.exec(info)?.[1]);
        if (id !== undefined && Number.isFinite(memlock)) seen.set(id, memlock);
      } catch {
        // closed meanwhile
      }
    }
  }
  if (seen.size === 0) return undefined;
  return { maps: seen.size, memlockBytes: [...seen.values()].reduce((a, b) => a + b, 0) };
}

export interface ProcessFigures {
  readonly fds: number | undefined;
  readonly rssKb: number | undefined;
  /** The node's child processes (the kernel data plane's helper), together. */
  readonly childFds: number;
  readonly childRssKb: number;
}

export function processFigures(pid: number): ProcessFigures {
  let childFds = 0;
  let childRssKb = 0;
  for (const p of processTree(pid)) {
    if (p === pid) continue;
    childFds += fdCount(p) ?? 0;
    childRssKb += statusKb(p, 'VmRSS') ?? 0;
  }
  return { fds: fdCount(pid), rssKb: statusKb(pid, 'VmRSS'), childFds, childRssKb };
}

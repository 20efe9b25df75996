// Redis failover under load (docs/reliability.md, "Redis failover under load"), shared
// by its script (bench/failover.ts, `npm run failover`) and its CI test
// (test/integration/redis-failover-load.test.ts).
//
// Three anyturn processes on 127.0.0.1 (each its own listening port and relay port
// range), one cluster on a Redis Sentinel group (test/helpers/redis-topologies.ts: a
// master, a replica, three sentinels), and --allocations live allocations spread over
// the three by load-client processes (./load-client.ts, hold mode), each allocation on
// its own client socket, relaying probes to ./echo.ts and refreshing (Refresh, then
// CreatePermission) every --refresh-ms. Once all relay, the master is SIGKILLed.
//
// Figures: probes sent, echoed and lost; allocations lost (a setup that failed, a
// refresh not answered 200, a record missing from the new master after the failover);
// the promotion time (kill until the sentinels name the replica as master) and the write
// stall: kill until a Refresh processed after the kill is visible in Redis (polled every
// POLL_MS on the master the sentinels name: a record whose expiry is later than the kill
// plus the Refresh's lifetime). The fail-open store (src/server/store.ts, docs/architecture.md
// §5) keeps the nodes answering and relaying meanwhile.

import { fileURLToPath } from 'node:url';
import { Redis } from 'ioredis';
import { type SpawnedProcess, findFreeTcpPort, reserveRelayPortRange, spawnProcess, startAnyturn, type RunningTurnServer } from '../helpers/anyturn-process.js';
import { jsonLines } from '../helpers/netns.js';
import { type HostPort, type SentinelTopology, startSentinelTopology } from '../helpers/redis-topologies.js';
import type { LoadStats } from './load-client.js';

const LOAD_CLIENT_PATH = fileURLToPath(new URL('./load-client.js', import.meta.url));
const ECHO_PATH = fileURLToPath(new URL('./echo.js', import.meta.url));
const REALM = 'failover.test';
const USER = { name: 'alice', password: 'secret' };
const CLUSTER_SECRET = 'failover-load-cluster-secret-0123456789abcdef';
/** The Refresh lifetime the load client asks for (load-client.ts REFRESH_LIFETIME_S). */
const REFRESH_LIFETIME_MS = 600_000;
const POLL_MS = 100;
const READY_DEADLINE_MS = 120_000;

export interface FailoverOptions {
  readonly allocations: number;
  /** Probes per second over all allocations (each echoed: twice the relayed packets). */
  readonly pps: number;
  /** Load-client processes the allocations are spread over (each its own sockets). */
  readonly processes: number;
  readonly refreshMs: number;
  /** Relaying before the kill, and after the writes resumed (at least one refresh round: every record is rewritten). */
  readonly beforeMs: number;
  readonly afterMs: number;
  /** Bounds (not figures): how long the promotion and the write stall may take before the run gives up. */
  readonly deadlineMs: number;
  readonly log?: (text: string) => void;
}

export interface FailoverResult {
  readonly allocations: number;
  /** Set up and relaying when the master was killed. */
  readonly relayingAtKill: number;
  readonly sent: number;
  readonly echoed: number;
  readonly lost: number;
  readonly failures: Record<string, number>;
  readonly failedAllocations: number;
  /** Allocation records in Redis just before the kill, and on the new master after the failover. */
  readonly recordsBefore: number;
  readonly recordsAfter: number;
  /** Relayed before the kill, but no record on the new master after it. */
  readonly missingAfter: number;
  readonly promotedAfterMs: number;
  readonly writeStallMs: number;
  /** Records on the new master once every client deleted its allocations (Refresh 0). */
  readonly recordsAtEnd: number;
  readonly nodesRunning: boolean;
  readonly errors: string[];
  readonly nodeWarnings: string[];
}

/** pino's `err`: a serialized Error, or (src/store/redis/connection.ts) its message alone. */
function errText(err: unknown): string {
  return typeof err === 'string' ? err : String((err as { message?: unknown }).message);
}

function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

/** A short-lived connection to one Redis node. */
async function withRedis<T>(at: HostPort, use: (r: Redis) => Promise<T>): Promise<T> {
  const r = new Redis({
    host: at.host,
    port: at.port,
    lazyConnect: true,
    maxRetriesPerRequest: 0,
    retryStrategy: () => null,
    connectTimeout: 1000,
    commandTimeout: 5000,
  });
  r.on('error', () => undefined);
  try {
    await r.connect();
    return await use(r);
  } finally {
    r.disconnect();
  }
}

/** Allocation records on `at`: key -> expiresAtMs. */
async function records(at: HostPort): Promise<Map<string, number>> {
  return withRedis(at, async (r) => {
    const keys: string[] = [];
    let cursor = '0';
    do {
      const [next, batch] = await r.scan(cursor, 'MATCH', 'anyturn:alloc:*', 'COUNT', 1000);
      cursor = next;
      keys.push(...batch);
    } while (cursor !== '0');
    const out = new Map<string, number>();
    if (keys.length === 0) return out;
    const p = r.pipeline();
    for (const k of keys) p.hget(k, 'r');
    const replies = (await p.exec()) ?? [];
    keys.forEach((k, i) => {
      const json = replies[i]?.[1];
      if (typeof json === 'string') out.set(k, (JSON.parse(json) as { expiresAtMs: number }).expiresAtMs);
    });
    return out;
  });
}

async function startNodes(topology: SentinelTopology, perNode: number): Promise<RunningTurnServer[]> {
  const nodes: RunningTurnServer[] = [];
  for (let i = 1; i <= 3; i++) {
    const mesh = await findFreeTcpPort();
    nodes.push(
      await startAnyturn({
        realm: REALM,
        users: [USER],
        allowLoopbackPeers: true,
        relayPorts: await reserveRelayPortRange(perNode + 50),
        logLevel: 'info',
        extraArgs: [
          ...topology.sentinelAddresses.flatMap((s) => ['--redis-sentinel', `${s.host}:${s.port}`]),
          ...['--redis-sentinel-name', topology.name, '--mesh-address', `127.0.0.1:${mesh}`, '--cluster-secret', CLUSTER_SECRET, '--node-id', `n${i}`],
        ],
      }),
    );
  }
  return nodes;
}

async function waitJson(p: SpawnedProcess, match: (r: Record<string, unknown>) => boolean, deadlineMs: number): Promise<Record<string, unknown>> {
  const end = Date.now() + deadlineMs;
  for (;;) {
    const hit = jsonLines(p.stdout()).find(match);
    if (hit) return hit;
    if (!p.isRunning()) throw new Error(`${p.name} exited:\n${p.outputTail()}`);
    if (Date.now() > end) throw new Error(`${p.name}: nothing matched within ${deadlineMs} ms\n${p.outputTail()}`);
    await sleep(100);
  }
}

/** Runs the scenario and stops everything it started (also on failure). */
export async function runFailover(o: FailoverOptions): Promise<FailoverResult> {
  const log = o.log ?? (() => undefined);
  const topology = await startSentinelTopology('mymaster', 1000);
  const started: { stop(): Promise<unknown> }[] = [];
  try {
    const nodes = await startNodes(topology, Math.ceil(o.allocations / 3));
    started.push(...nodes);
    const echo = spawnProcess(process.execPath, [ECHO_PATH, '--bind', '127.0.0.1', '--ports', '0'], { name: 'echo' });
    started.push(echo);
    const peerPort = ((await waitJson(echo, (r) => r.event === 'listening', 10_000)).ports as number[])[0]!;
    log(`3 nodes on ${nodes.map((n) => n.port).join(', ')}, echo on ${peerPort}`);

    const clients: SpawnedProcess[] = [];
    for (let i = 0; i < o.processes; i++) {
      const share = Math.floor(o.allocations / o.processes) + (i < o.allocations % o.processes ? 1 : 0);
      // Rotate the server list so each process starts on another node: the spread is even.
      const servers = [0, 1, 2].map((k) => nodes[(i + k) % 3]!).map((n) => `127.0.0.1:${n.port}`);
      const c = spawnProcess(
        process.execPath,
        [
          LOAD_CLIENT_PATH,
          ...['--servers', servers.join(','), '--bind', '127.0.0.1', '--peer', `127.0.0.1:${peerPort}`],
          ...['--user', `${USER.name}:${USER.password}`, '--realm', REALM, '--mode', 'hold', '--allocations', String(share)],
          ...['--pps', String(o.pps / o.processes), '--refresh-ms', String(o.refreshMs), '--duration-ms', '3600000', '--stats-ms', '1000'],
        ],
        { name: `load-client-${i + 1}` },
      );
      clients.push(c);
      started.push(c);
    }
    let relayingAtKill = 0;
    for (const c of clients) relayingAtKill += Number((await waitJson(c, (r) => r.event === 'ready', READY_DEADLINE_MS)).relayed);
    log(`${relayingAtKill} allocations relaying`);
    await sleep(o.beforeMs);

    const oldMaster = topology.master.address;
    const recordsBefore = await records(oldMaster);
    await topology.master.kill();
    const killMs = Date.now();
    log('master killed');
    const newMaster = await topology.waitForFailover(oldMaster, o.deadlineMs);
    const promotedAfterMs = Date.now() - killMs;
    log(`replica promoted after ${promotedAfterMs} ms`);
    let writeStallMs: number | undefined;
    while (writeStallMs === undefined) {
      const now = Date.now();
      const seen = await records(newMaster).catch(() => new Map<string, number>());
      if ([...seen.values()].some((e) => e - REFRESH_LIFETIME_MS > killMs)) writeStallMs = now - killMs;
      else if (now - killMs > o.deadlineMs) throw new Error(`no Refresh written to Redis within ${o.deadlineMs} ms of the kill`);
      else await sleep(POLL_MS);
    }
    log(`writes resumed ${writeStallMs} ms after the kill`);
    await sleep(o.afterMs);
    const after = await records(newMaster);
    const missingAfter = [...recordsBefore.keys()].filter((k) => !after.has(k)).length;

    // The end: every client stops refreshing, drains its probes, deletes its allocations.
    const summaries: LoadStats[] = [];
    for (const c of clients) process.kill(c.pid, 'SIGUSR2');
    for (const c of clients) summaries.push((await waitJson(c, (r) => r.event === 'summary', 60_000)) as unknown as LoadStats);
    const recordsAtEnd = (await records(newMaster)).size;
    const failures: Record<string, number> = {};
    for (const s of summaries) for (const [k, v] of Object.entries(s.failures)) failures[k] = (failures[k] ?? 0) + v;
    const sum = (f: (s: LoadStats) => number): number => summaries.reduce((t, s) => t + f(s), 0);
    const nodeWarnings = nodes.flatMap((n) =>
      jsonLines(n.process.stdout())
        .filter((r) => typeof r.level === 'number' && (r.level as number) >= 40)
        .map((r) => `${String(r.msg)}${r.err ? `: ${errText(r.err)}` : ''}`),
    );
    return {
      allocations: o.allocations,
      relayingAtKill,
      sent: sum((s) => s.sent),
      echoed: sum((s) => s.echoed),
      lost: sum((s) => s.lost),
      failures,
      failedAllocations: sum((s) => s.failedAllocations),
      recordsBefore: recordsBefore.size,
      recordsAfter: after.size,
      missingAfter,
      promotedAfterMs,
      writeStallMs,
      recordsAtEnd,
      nodesRunning: nodes.every((n) => n.process.isRunning()),
      errors: summaries.flatMap((s) => s.errors).slice(0, 10),
      nodeWarnings: [...new Set(nodeWarnings)].slice(0, 20),
    };
  } finally {
    for (const p of started.reverse()) await p.stop().catch(() => undefined);
    await topology.stop();
  }
}

// Starting the pieces of an anycast test inside a Topology (test/helpers/netns.ts):
// redis-server in the router namespace, anyturn nodes, the echo peer, the
// stream client and the Allocate probe, plus the analysis of what they report.

import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { ANYCAST_ADDRESS, REDIS_ADDRESS, Topology, jsonLines, type NodeName, type NsProcess } from '../helpers/netns.js';
import type { StreamSummary } from './stream-client.js';
import { Stream } from './wire.js';

/** dist/test/anycast/cluster.js -> dist/src/cli.js */
export const CLI_PATH = fileURLToPath(new URL('../../src/cli.js', import.meta.url));
const STREAM_CLIENT_PATH = fileURLToPath(new URL('./stream-client.js', import.meta.url));
const ECHO_PEER_PATH = fileURLToPath(new URL('./echo-peer.js', import.meta.url));
const ALLOCATE_PROBE_PATH = fileURLToPath(new URL('./allocate-probe.js', import.meta.url));
const FRESH_ALLOCATIONS_PATH = fileURLToPath(new URL('./fresh-allocations.js', import.meta.url));

export const TURN_PORT = 3478;
export const MESH_PORT = 7000;
export const METRICS_PORT = 9641;
/** In a namespace of our own every port is free; this one is below the ≤ 5553 bound we were given. */
export const REDIS_PORT = 5379;
export const REALM = 'anycast.test';
export const USER = 'alice:secret';
export const CLUSTER_SECRET = 'anycast-test-cluster-secret-0123456789abcdef';
export const PEER_PORTS = [40000, 40001] as const;
export const SERVER = `${ANYCAST_ADDRESS}:${TURN_PORT}`;

const READY_DEADLINE_MS = 20_000;

export interface NodeOptions {
  /** Add the cluster flags (--redis-url, --mesh-address, --cluster-secret, --metrics-*). */
  readonly cluster: boolean;
  /**
   * --dataplane: 'kernel' attaches the eBPF path to the node's eth0 (the anycast address
   * lives on lo, so the interface is named) and serves /metrics also without a cluster.
   */
  readonly dataplane?: 'kernel' | 'js';
  /** More flags, appended as given. */
  readonly args?: readonly string[];
}

export function nodeArgs(node: NodeName, options: NodeOptions): string[] {
  const own = Topology.nodeAddress(node);
  const args = [
    CLI_PATH,
    '--listening-ip',
    ANYCAST_ADDRESS,
    '--listening-port',
    String(TURN_PORT),
    '--relay-ip',
    own,
    '--min-port',
    '50000',
    '--max-port',
    '50999',
    '--realm',
    REALM,
    '--user',
    USER,
    '--allowed-peer-ip',
    '198.18.0.0/15',
    '--node-id',
    node.toLowerCase(),
    '--log-level',
    'info',
  ];
  if (options.cluster) {
    args.push('--redis-url', `redis://${REDIS_ADDRESS}:${REDIS_PORT}`, '--mesh-address', `${own}:${MESH_PORT}`, '--cluster-secret', CLUSTER_SECRET);
  }
  if (options.dataplane !== undefined) args.push('--dataplane', options.dataplane, '--dataplane-interface', 'eth0');
  if (options.cluster || options.dataplane !== undefined) {
    // The harness compares scrapes taken moments apart: no cached rendering.
    args.push('--metrics-ip', own, '--metrics-port', String(METRICS_PORT), '--metrics-cache-ms', '0');
  }
  args.push(...(options.args ?? []));
  return args;
}

/**
 * nodeArgs(cluster) for anycast relay mode (docs/architecture.md §4): every node
 * relays from `relayAddress`, an anycast address on every node's loopback.
 */
export function anycastRelayArgs(node: NodeName, relayAddress: string, dataplane?: 'js' | 'kernel'): string[] {
  const args = nodeArgs(node, { cluster: true, dataplane });
  const i = args.indexOf('--relay-ip');
  if (i < 0) throw new Error('nodeArgs has no --relay-ip');
  args[i + 1] = relayAddress;
  args.push('--relay-mode', 'anycast');
  return args;
}

/** Starts anyturn in a node namespace and waits for its "anyturn ready" log line. */
export async function startNode(topo: Topology, node: NodeName, options: NodeOptions): Promise<NsProcess> {
  const p = topo.spawnIn(node, process.execPath, nodeArgs(node, options), { name: `anyturn-${node}` });
  await p.waitForJsonLine((r) => r.msg === 'anyturn ready', READY_DEADLINE_MS);
  return p;
}

export interface Redis {
  readonly process: NsProcess;
  /** SIGKILL the server (an outage, not a shutdown). */
  kill(): Promise<void>;
  /** Starts it again with the same arguments (same port); resolves when it accepts connections. */
  restart(): Promise<NsProcess>;
}

/** redis-server in the router namespace on REDIS_ADDRESS:REDIS_PORT, no persistence. */
export async function startRedis(topo: Topology): Promise<Redis> {
  const dir = mkdtempSync(join(tmpdir(), 'anyturn-anycast-redis-'));
  const args = [
    '--bind',
    REDIS_ADDRESS,
    '--port',
    String(REDIS_PORT),
    '--save',
    '',
    '--appendonly',
    'no',
    '--protected-mode',
    'no',
    '--daemonize',
    'no',
    '--dir',
    dir,
  ];
  let generation = 0;
  const launch = async (): Promise<NsProcess> => {
    const p = topo.spawnIn('R', 'redis-server', args, { name: `redis-${++generation}` });
    await p.waitForLine((l) => /Ready to accept connections/.test(l), READY_DEADLINE_MS);
    return p;
  };
  let current = await launch();
  const redis: Redis = {
    get process() {
      return current;
    },
    kill: async () => {
      await current.stop('SIGKILL');
    },
    restart: async () => {
      current = await launch();
      return current;
    },
  };
  process.once('exit', () => rmSync(dir, { recursive: true, force: true }));
  return redis;
}

/** redis-cli against the test's Redis, from the router namespace; stdout (raw). */
export async function redisCli(topo: Topology, args: readonly string[]): Promise<string> {
  const r = await topo.exec('R', 'redis-cli', ['-h', REDIS_ADDRESS, '-p', String(REDIS_PORT), '--raw', ...args]);
  if (r.code !== 0) throw new Error(`redis-cli ${args.join(' ')}: ${r.stderr}`);
  return r.stdout;
}

/** Allocation records in the store: record key -> relayed "ip:port" (SCAN is fine here: a test, a handful of keys). */
export async function storedAllocations(topo: Topology): Promise<Map<string, string>> {
  const allocations = new Map<string, string>();
  const allocKeys = (await redisCli(topo, ['--scan', '--pattern', 'anyturn:alloc:*'])).split('\n').filter(Boolean);
  for (const k of allocKeys) {
    const raw = (await redisCli(topo, ['HGET', k, 'r'])).trim();
    if (raw === '') continue; // deleted between SCAN and HGET
    const rec = JSON.parse(raw) as { key: string; relayedAddress: string; relayedPort: number };
    allocations.set(rec.key, `${rec.relayedAddress}:${rec.relayedPort}`);
  }
  return allocations;
}

export async function startPeer(topo: Topology): Promise<NsProcess> {
  const p = topo.spawnIn('P', process.execPath, [ECHO_PEER_PATH, '--bind', Topology.peerAddress, '--ports', PEER_PORTS.join(',')], {
    name: 'echo-peer',
    stdin: true,
  });
  await p.waitForJsonLine((r) => r.event === 'listening', READY_DEADLINE_MS);
  return p;
}

/** `release`: the client deletes both allocations after the stream (stream-client --release). */
export function startStreamClient(topo: Topology, durationMs: number, pps = 50, options: { release?: boolean } = {}): NsProcess {
  return topo.spawnIn(
    'C',
    process.execPath,
    [
      STREAM_CLIENT_PATH,
      '--server',
      SERVER,
      '--bind',
      Topology.clientAddress,
      '--peer',
      `${Topology.peerAddress}:${PEER_PORTS[0]}`,
      '--peer2',
      `${Topology.peerAddress}:${PEER_PORTS[1]}`,
      '--user',
      USER,
      '--realm',
      REALM,
      '--duration-ms',
      String(durationMs),
      '--pps',
      String(pps),
      ...(options.release ? ['--release'] : []),
    ],
    { name: 'stream-client', stdin: true },
  );
}

export interface ProbeResult {
  readonly attempts: { atMs: number; code: number; reason?: string; error?: string; relayed?: string }[];
  readonly final: number;
  readonly raw: string;
}

/** Allocate from a fresh client socket in C; with `until`, retries until that code or the deadline. */
export async function allocateProbe(topo: Topology, options: { until?: number; deadlineMs?: number } = {}): Promise<ProbeResult> {
  const args = [ALLOCATE_PROBE_PATH, '--server', SERVER, '--bind', Topology.clientAddress, '--user', USER, '--realm', REALM];
  if (options.until !== undefined) args.push('--until', String(options.until), '--deadline-ms', String(options.deadlineMs ?? 10_000));
  const r = await topo.exec('C', process.execPath, args, (options.deadlineMs ?? 10_000) + 10_000);
  const rec = jsonLines(r.stdout).find((x) => x.event === 'probe');
  if (!rec) throw new Error(`allocate-probe printed no result (exit ${String(r.code)}): ${r.stdout} ${r.stderr}`);
  return { attempts: rec.attempts as ProbeResult['attempts'], final: rec.final as number, raw: r.stdout.trim() };
}

// An HTTP GET run by node inside a namespace (curl is not installed everywhere
// the tests run): prints {"status":N,"body":"..."}, status 0 when nothing answered.
const HTTP_GET = `
const http = require('node:http');
const req = http.get(process.argv[1], { timeout: 2000 }, (res) => {
  let body = '';
  res.setEncoding('utf8');
  res.on('data', (c) => (body += c));
  res.on('end', () => console.log(JSON.stringify({ status: res.statusCode, body })));
});
req.on('timeout', () => req.destroy(new Error('timeout')));
req.on('error', (e) => console.log(JSON.stringify({ status: 0, body: String(e.message) })));
`;

/** GET a URL from the router namespace (which reaches every node's own address). */
export async function httpGet(topo: Topology, url: string): Promise<{ status: number; body: string }> {
  const r = await topo.exec('R', process.execPath, ['-e', HTTP_GET, url]);
  const rec = jsonLines(r.stdout)[0];
  return rec ? { status: Number(rec.status) || 0, body: String(rec.body ?? '') } : { status: 0, body: r.stderr };
}

/** GET http://<node>:9641/readyz; the HTTP status, or 0 when nothing answered. */
export async function readyz(topo: Topology, node: NodeName): Promise<number> {
  return (await httpGet(topo, `http://${Topology.nodeAddress(node)}:${METRICS_PORT}/readyz`)).status;
}

// ---------------------------------------------------------------------------
// Reports

export interface PeerReport {
  readonly sources: string[];
  readonly probes: [number, number, number, number, number][];
  readonly other: number;
}

export async function peerReport(peer: NsProcess): Promise<PeerReport> {
  const seen = jsonLines(peer.stdout()).filter((r) => r.event === 'report').length;
  peer.writeLine(JSON.stringify({ cmd: 'report' }));
  let n = 0;
  const rec = await peer.waitForJsonLine((r) => r.event === 'report' && ++n > seen, 10_000);
  return rec as unknown as PeerReport;
}

export async function streamSummary(client: NsProcess, deadlineMs: number): Promise<StreamSummary> {
  const rec = await client.waitForJsonLine((r) => r.event === 'summary' || r.event === 'error', deadlineMs);
  if (rec.event === 'error') throw new Error(`stream client failed: ${JSON.stringify(rec)}`);
  return rec as unknown as StreamSummary;
}

export interface ModeFigures {
  readonly sent: number;
  /** Sent by the client, never seen by the peer. */
  readonly lostClientToPeer: number;
  /** Seen by the peer (so echoed), never back at the client. */
  readonly lostPeerToClient: number;
  readonly lostSeqClientToPeer: number[];
  readonly lostSeqPeerToClient: number[];
  /** Last arrival at or before `atMs` to the first after it, at the peer (client->peer). */
  readonly gapClientToPeerMs?: number;
  /** The same for echoes arriving back at the client (peer->client). */
  readonly gapPeerToClientMs?: number;
  /** Longest time between consecutive arrivals within `window`, at the peer. */
  readonly maxGapClientToPeerMs?: number;
  /** The same at the client. */
  readonly maxGapPeerToClientMs?: number;
  /** Source addresses the peer saw for this mode's probes (all of them, and those sent after `atMs`). */
  readonly peerSources: string[];
  readonly peerSourcesAfter: string[];
}

function round1(x: number): number {
  return Math.round(x * 10) / 10;
}

function gapAround(times: number[], atMs: number): number | undefined {
  let before = -Infinity;
  let after = Infinity;
  for (const t of times) {
    if (t <= atMs && t > before) before = t;
    if (t > atMs && t < after) after = t;
  }
  return Number.isFinite(before) && Number.isFinite(after) ? round1(after - before) : undefined;
}

function maxGapWithin(times: number[], [from, to]: readonly [number, number]): number | undefined {
  const sorted = [...times].sort((x, y) => x - y);
  let max: number | undefined;
  for (let i = 1; i < sorted.length; i++) {
    const a = sorted[i - 1]!;
    const b = sorted[i]!;
    if (b >= from && a <= to) max = Math.max(max ?? 0, b - a);
  }
  return max === undefined ? undefined : round1(max);
}

export interface FigureOptions {
  /** The instant gaps are measured around (the reroute); packets sent after it count as "after". */
  readonly atMs?: number;
  /** Where to look for the longest silence (wall-clock ms). */
  readonly window?: readonly [number, number];
}

/** Loss per direction and gaps for one streaming mode. */
export function modeFigures(summary: StreamSummary, peer: PeerReport, stream: number, options: FigureOptions = {}): ModeFigures {
  const { atMs, window } = options;
  const sent = summary.packets.filter((p) => p[1] === stream);
  const atPeer = new Map<number, { at: number; source: string }>();
  for (const [s, seq, src, , at] of peer.probes) if (s === stream && !atPeer.has(seq)) atPeer.set(seq, { at, source: peer.sources[src] ?? '?' });
  const lostSeqClientToPeer = sent.filter((p) => !atPeer.has(p[0])).map((p) => p[0]);
  const lostSeqPeerToClient = sent.filter((p) => atPeer.has(p[0]) && p[3] < 0).map((p) => p[0]);
  const sentAfter = new Set(atMs === undefined ? [] : sent.filter((p) => p[2] > atMs).map((p) => p[0]));
  const peerTimes = [...atPeer.values()].map((v) => v.at);
  const clientTimes = sent.filter((p) => p[3] >= 0).map((p) => p[3]);
  return {
    sent: sent.length,
    lostClientToPeer: lostSeqClientToPeer.length,
    lostPeerToClient: lostSeqPeerToClient.length,
    lostSeqClientToPeer,
    lostSeqPeerToClient,
    gapClientToPeerMs: atMs === undefined ? undefined : gapAround(peerTimes, atMs),
    gapPeerToClientMs: atMs === undefined ? undefined : gapAround(clientTimes, atMs),
    maxGapClientToPeerMs: window === undefined ? undefined : maxGapWithin(peerTimes, window),
    maxGapPeerToClientMs: window === undefined ? undefined : maxGapWithin(clientTimes, window),
    peerSources: [...new Set([...atPeer.values()].map((v) => v.source))],
    peerSourcesAfter: [...new Set([...atPeer.entries()].filter(([seq]) => sentAfter.has(seq)).map(([, v]) => v.source))],
  };
}

export interface PhaseLoss {
  readonly sent: number;
  readonly lostClientToPeer: number[];
  readonly lostPeerToClient: number[];
}

/** Loss per direction of one mode among the packets sent in [from, to). */
export function phaseLoss(summary: StreamSummary, peer: PeerReport, stream: number, from: number, to: number): PhaseLoss {
  const atPeer = new Set<number>();
  for (const [s, seq] of peer.probes) if (s === stream) atPeer.add(seq);
  const sent = summary.packets.filter((p) => p[1] === stream && p[2] >= from && p[2] < to);
  return {
    sent: sent.length,
    lostClientToPeer: sent.filter((p) => !atPeer.has(p[0])).map((p) => p[0]),
    lostPeerToClient: sent.filter((p) => atPeer.has(p[0]) && p[3] < 0).map((p) => p[0]),
  };
}

export interface Figures {
  readonly channel: ModeFigures;
  readonly indication: ModeFigures;
  /** Both modes together: losses per direction, and the gap around `atMs` over all arrivals. */
  readonly total: { lostClientToPeer: number; lostPeerToClient: number; gapClientToPeerMs?: number; gapPeerToClientMs?: number };
}

export function figures(summary: StreamSummary, peer: PeerReport, options: FigureOptions = {}): Figures {
  const channel = modeFigures(summary, peer, Stream.channel, options);
  const indication = modeFigures(summary, peer, Stream.indication, options);
  const peerTimes = peer.probes.filter((p) => p[0] === Stream.channel || p[0] === Stream.indication).map((p) => p[4]);
  const clientTimes = summary.packets.filter((p) => p[3] >= 0).map((p) => p[3]);
  return {
    channel,
    indication,
    total: {
      lostClientToPeer: channel.lostClientToPeer + indication.lostClientToPeer,
      lostPeerToClient: channel.lostPeerToClient + indication.lostPeerToClient,
      gapClientToPeerMs: options.atMs === undefined ? undefined : gapAround(peerTimes, options.atMs),
      gapPeerToClientMs: options.atMs === undefined ? undefined : gapAround(clientTimes, options.atMs),
    },
  };
}

/** GET http://<node>:9641/metrics, as name{labels} -> value. */
export async function metrics(topo: Topology, node: NodeName): Promise<Map<string, number>> {
  const { body } = await httpGet(topo, `http://${Topology.nodeAddress(node)}:${METRICS_PORT}/metrics`);
  const out = new Map<string, number>();
  for (const line of body.split('\n')) {
    if (!line || line.startsWith('#')) continue;
    const i = line.lastIndexOf(' ');
    out.set(line.slice(0, i), Number(line.slice(i + 1)));
  }
  return out;
}

/** Polls /readyz until it answers `code` or the deadline passes; every status seen, with its time. */
export async function pollReadyz(topo: Topology, node: NodeName, code: number, deadlineMs: number): Promise<{ atMs: number; code: number }[]> {
  const seen: { atMs: number; code: number }[] = [];
  const end = Date.now() + deadlineMs;
  for (;;) {
    const c = await readyz(topo, node);
    seen.push({ atMs: Date.now(), code: c });
    if (c === code || Date.now() > end) return seen;
    await new Promise((r) => setTimeout(r, 250));
  }
}

/** Everything every process printed, for a failure message. */
export function dumpAll(topo: Topology): string {
  return topo.spawned.map((p) => p.dump()).join('\n');
}

/** Runs `body`; when it throws, prints every process's output in the topology first (the test's own failure stays as it is). */
export async function withDump<T>(topo: Topology, body: () => Promise<T>): Promise<T> {
  try {
    return await body();
  } catch (err) {
    console.error(dumpAll(topo));
    throw err;
  }
}

/**
 * fresh-allocations.ts in C: `count` new allocations through SERVER, each with a permission
 * for the second peer port and one probe echoed, held for `holdMs` (or until a release
 * command on stdin).
 */
export function spawnFreshAllocations(topo: Topology, count: number, holdMs: number): NsProcess {
  const args = ['--server', SERVER, '--bind', Topology.clientAddress, '--user', USER, '--realm', REALM];
  args.push('--peer', `${Topology.peerAddress}:${PEER_PORTS[1]}`, '--count', String(count), '--hold-ms', String(holdMs));
  return topo.spawnIn('C', process.execPath, [FRESH_ALLOCATIONS_PATH, ...args], { name: 'fresh-allocations', stdin: true });
}

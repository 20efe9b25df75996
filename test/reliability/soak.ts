// The soak of docs/reliability.md ("Soak"), shared by its script (bench/soak.ts, `npm
// run soak`) and its short CI version (test/anycast/soak.test.ts): two real anyturn
// processes in anycast relay mode (docs/architecture.md §4) on one redis-server, in the
// network namespaces of test/helpers/netns.ts (two processes on one host cannot share a
// relay address; in namespaces each node has its own copy of it on its loopback).
//
// Routes: the service address goes to N1, the shared relay address to N2. So every
// request is answered by N1, every client packet leaves from N1's relay socket, and
// every peer answer comes in at N2 (which holds its copy of the allocation from the
// store's events) and leaves N2 for the client: each probe crosses both nodes.
//
// The load (./load-client.ts, churn mode) runs in the client namespace, the echo
// (./echo.ts) in the peer namespace. Every `sampleMs` the nodes' /metrics (RSS, V8
// heap, open fds, event-loop lag, allocations), the store's key counts (DBSIZE and a
// SCAN count per key kind) and the load's counters are taken.

import { fileURLToPath } from 'node:url';
import { METRICS_PORT, REALM, SERVER, USER, anycastRelayArgs, httpGet, redisCli, startRedis } from '../anycast/cluster.js';
import { Topology, jsonLines, type NodeName, type NsProcess } from '../helpers/netns.js';
import type { LoadStats } from './load-client.js';

const LOAD_CLIENT_PATH = fileURLToPath(new URL('./load-client.js', import.meta.url));
const ECHO_PATH = fileURLToPath(new URL('./echo.js', import.meta.url));
export const RELAY_ANYCAST = '198.18.101.1';
const PEER_PORT = 40000;
const READY_DEADLINE_MS = 20_000;
/** Key kinds counted apart (docs: src/store/redis/keys.ts); anything else is "other". */
export const KEY_KINDS = ['alloc', 'port', 'user', 'node', 'bw'] as const;

export interface SoakOptions {
  readonly durationMs: number;
  readonly sampleMs: number;
  /** Allocations alive at once, and how long each lives: the churn is concurrent / lifetime per second. */
  readonly concurrent: number;
  readonly lifetimeMs: number;
  /** Probes per second in total (each echoed: twice that many relayed packets). */
  readonly pps: number;
  /** After the load ends, how long the store may take to return to its baseline (a bound, not a figure). */
  readonly settleDeadlineMs: number;
  /** Called with each sample as it is taken (the script prints them). */
  readonly onSample?: (s: Sample) => void;
}

export interface NodeSample {
  readonly rssBytes: number;
  readonly heapUsedBytes: number;
  readonly heapTotalBytes: number;
  readonly openFds: number;
  /** Event-loop delay p99 and max since the previous scrape (prom-client resets it per collect). */
  readonly lagP99Ms: number;
  readonly lagMaxMs: number;
  readonly allocations: number;
  /** Relayed packets so far (anyturn_relayed_packets_total by direction). */
  readonly relayedToPeer: number;
  readonly relayedToClient: number;
}

export interface Sample {
  /** Seconds since the load started. */
  readonly t: number;
  readonly nodes: Record<NodeName, NodeSample>;
  readonly dbsize: number;
  readonly keys: Record<string, number>;
  readonly load?: LoadStats;
}

export interface SoakResult {
  readonly baseline: Sample;
  readonly samples: Sample[];
  /** The sample once the store was back at its baseline (or at the deadline). */
  readonly final: Sample;
  readonly summary: LoadStats;
  /** Seconds from the end of the load until DBSIZE was back at the baseline; undefined if it never was. */
  readonly settledAfterS: number | undefined;
  readonly nodeWarnings: Record<string, unknown[]>;
  /** Every node's whole log (stdout), for following one allocation. */
  readonly nodeLogs: Record<string, string>;
  /** Packets each node dropped, by reason (anyturn_dropped_packets_total), at the end. */
  readonly drops: Record<string, Record<string, number>>;
}

function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

async function scrape(topo: Topology, node: NodeName): Promise<NodeSample> {
  const { status, body } = await httpGet(topo, `http://${Topology.nodeAddress(node)}:${METRICS_PORT}/metrics`);
  if (status !== 200) throw new Error(`${node} /metrics answered ${status}: ${body.slice(0, 200)}`);
  const m = new Map<string, number>();
  for (const line of body.split('\n')) {
    if (!line || line.startsWith('#')) continue;
    const i = line.lastIndexOf(' ');
    m.set(line.slice(0, i), Number(line.slice(i + 1)));
  }
  const get = (name: string): number => {
    const v = m.get(name);
    if (v === undefined) throw new Error(`${node} /metrics has no ${name}`);
    return v;
  };
  return {
    rssBytes: get('anyturn_process_process_resident_memory_bytes'),
    heapUsedBytes: get('anyturn_process_nodejs_heap_size_used_bytes'),
    heapTotalBytes: get('anyturn_process_nodejs_heap_size_total_bytes'),
    openFds: get('anyturn_process_process_open_fds'),
    lagP99Ms: get('anyturn_process_nodejs_eventloop_lag_p99_seconds') * 1000,
    lagMaxMs: get('anyturn_process_nodejs_eventloop_lag_max_seconds') * 1000,
    // Labelled by transport and family, and absent while there is none.
    relayedToPeer: m.get('anyturn_relayed_packets_total{direction="client_to_peer"}') ?? 0,
    relayedToClient: m.get('anyturn_relayed_packets_total{direction="peer_to_client"}') ?? 0,
    allocations: [...m].reduce((sum, [k, v]) => (k.startsWith('anyturn_allocations{') ? sum + v : sum), 0),
  };
}

async function dropCounts(topo: Topology, node: NodeName): Promise<Record<string, number>> {
  const { body } = await httpGet(topo, `http://${Topology.nodeAddress(node)}:${METRICS_PORT}/metrics`);
  const out: Record<string, number> = {};
  for (const line of body.split('\n')) {
    const m = /^anyturn_dropped_packets_total\{reason="([^"]+)"\} (\S+)$/.exec(line);
    if (m && Number(m[2]) > 0) out[m[1]!] = Number(m[2]);
  }
  return out;
}

/** DBSIZE and a count per key kind (SCAN: the store holds a few hundred keys at most here). */
async function storeKeys(topo: Topology): Promise<{ dbsize: number; keys: Record<string, number> }> {
  const dbsize = Number((await redisCli(topo, ['DBSIZE'])).trim());
  const keys: Record<string, number> = { other: 0 };
  for (const k of KEY_KINDS) keys[k] = 0;
  for (const key of (await redisCli(topo, ['--scan'])).split('\n').filter(Boolean)) {
    const kind = /^anyturn:([a-z]+)[:{]/.exec(key)?.[1];
    if (kind !== undefined && kind in keys) keys[kind]!++;
    else keys.other!++;
  }
  return { dbsize, keys };
}

async function sample(topo: Topology, t: number, load?: LoadStats): Promise<Sample> {
  const nodes = {} as Record<NodeName, NodeSample>;
  for (const node of topo.nodeNames) nodes[node] = await scrape(topo, node);
  return { t: Math.round(t * 10) / 10, nodes, ...(await storeKeys(topo)), load };
}

/** The last stats (or the summary) line the load client printed. */
function lastStats(client: NsProcess): LoadStats | undefined {
  const text = client.stdout();
  const end = text.lastIndexOf('{"event":"s');
  if (end < 0) return undefined;
  return jsonLines(text.slice(end))[0] as LoadStats | undefined;
}

function warnings(p: NsProcess): unknown[] {
  return jsonLines(p.stdout())
    .filter((r) => typeof r.level === 'number' && (r.level as number) >= 40)
    .map((r) => ({ msg: r.msg, err: typeof r.err === 'string' ? r.err : (r.err as { message?: string } | undefined)?.message }));
}

/** Builds the topology, runs the churn, samples, and tears everything down (also on failure). */
export async function runSoak(o: SoakOptions): Promise<SoakResult> {
  const topo = await Topology.build({ nodes: 2, extraAnycast: [RELAY_ANYCAST] });
  try {
    return await soakIn(topo, o);
  } catch (err) {
    console.error(topo.spawned.map((p) => p.dump().slice(-4000)).join('\n'));
    throw err;
  } finally {
    await topo.teardown();
  }
}

async function soakIn(topo: Topology, o: SoakOptions): Promise<SoakResult> {
  await startRedis(topo);
  const nodes: NsProcess[] = [];
  for (const node of topo.nodeNames) {
    const args = anycastRelayArgs(node, RELAY_ANYCAST);
    // SOAK_NODE_LOG_LEVEL=debug: every adoption and deletion logged, to follow one allocation.
    if (process.env.SOAK_NODE_LOG_LEVEL) args[args.indexOf('--log-level') + 1] = process.env.SOAK_NODE_LOG_LEVEL;
    const p = topo.spawnIn(node, process.execPath, args, { name: `anyturn-${node}` });
    await p.waitForJsonLine((r) => r.msg === 'anyturn ready', READY_DEADLINE_MS);
    nodes.push(p);
  }
  await topo.rerouteAddress(RELAY_ANYCAST, 'N2');
  const echo = topo.spawnIn('P', process.execPath, [ECHO_PATH, '--bind', Topology.peerAddress, '--ports', String(PEER_PORT)], { name: 'echo' });
  await echo.waitForJsonLine((r) => r.event === 'listening', READY_DEADLINE_MS);

  const baseline = await sample(topo, 0);
  const startedMs = Date.now();
  const client = topo.spawnIn(
    'C',
    process.execPath,
    [
      LOAD_CLIENT_PATH,
      ...['--servers', SERVER, '--bind', Topology.clientAddress, '--peer', `${Topology.peerAddress}:${PEER_PORT}`],
      ...['--user', USER, '--realm', REALM, '--mode', 'churn'],
      ...['--concurrent', String(o.concurrent), '--lifetime-ms', String(o.lifetimeMs), '--pps', String(o.pps)],
      ...['--duration-ms', String(o.durationMs), '--stats-ms', '1000'],
    ],
    { name: 'load-client' },
  );
  const done = client.waitForJsonLine((r) => r.event === 'summary', o.durationMs + o.lifetimeMs + 120_000);
  let finished = false;
  void done.then(
    () => (finished = true),
    () => (finished = true),
  );
  const samples: Sample[] = [];
  for (let next = startedMs + o.sampleMs; !finished; next += o.sampleMs) {
    while (!finished && Date.now() < next) await sleep(Math.min(250, next - Date.now()));
    if (finished) break;
    const s = await sample(topo, (Date.now() - startedMs) / 1000, lastStats(client));
    samples.push(s);
    o.onSample?.(s);
  }
  const summary = (await done) as unknown as LoadStats;
  const loadEndMs = Date.now();

  // The churn has stopped and every allocation was deleted: the store must shrink back to
  // what it held before (the nodes' own keys), and the nodes to no allocation.
  let final = await sample(topo, (Date.now() - startedMs) / 1000, summary);
  let settledAfterS: number | undefined;
  while (Date.now() - loadEndMs < o.settleDeadlineMs) {
    if (final.dbsize === baseline.dbsize && topo.nodeNames.every((n) => final.nodes[n].allocations === 0)) {
      settledAfterS = Math.round((Date.now() - loadEndMs) / 100) / 10;
      break;
    }
    await sleep(250);
    final = await sample(topo, (Date.now() - startedMs) / 1000, summary);
  }
  const nodeWarnings: Record<string, unknown[]> = {};
  for (const p of nodes) nodeWarnings[p.name] = warnings(p);
  const nodeLogs: Record<string, string> = {};
  for (const p of nodes) nodeLogs[p.name] = p.stdout();
  const drops: Record<string, Record<string, number>> = {};
  for (const node of topo.nodeNames) drops[node] = await dropCounts(topo, node);
  for (const p of nodes) if (!p.isRunning()) throw new Error(`${p.name} exited during the soak:\n${p.dump()}`);
  return { baseline, samples, final, summary, settledAfterS, nodeWarnings, nodeLogs, drops };
}

// ---------------------------------------------------------------------------
// Output

export const CSV_HEADER = [
  't_s',
  ...['N1', 'N2'].flatMap((n) => [
    `${n}_rss_mb`,
    `${n}_heap_used_mb`,
    `${n}_heap_total_mb`,
    `${n}_fds`,
    `${n}_lag_p99_ms`,
    `${n}_lag_max_ms`,
    `${n}_allocations`,
  ]),
  'dbsize',
  ...KEY_KINDS.map((k) => `keys_${k}`),
  'keys_other',
  'load_live',
  'load_allocated',
  'load_deleted',
  'load_sent',
  'load_echoed',
  'load_lost',
  'load_failed',
].join(',');

const mb = (b: number): string => (b / 1048576).toFixed(2);

export function csvRow(s: Sample): string {
  const node = (n: NodeSample): string[] => [
    mb(n.rssBytes),
    mb(n.heapUsedBytes),
    mb(n.heapTotalBytes),
    String(n.openFds),
    n.lagP99Ms.toFixed(2),
    n.lagMaxMs.toFixed(2),
    String(n.allocations),
  ];
  const l = s.load;
  return [
    String(s.t),
    ...node(s.nodes.N1),
    ...node(s.nodes.N2),
    String(s.dbsize),
    ...KEY_KINDS.map((k) => String(s.keys[k] ?? 0)),
    String(s.keys.other ?? 0),
    ...(l ? [l.live, l.allocated, l.deleted, l.sent, l.echoed, l.lost, l.failedAllocations].map(String) : ['', '', '', '', '', '', '']),
  ].join(',');
}

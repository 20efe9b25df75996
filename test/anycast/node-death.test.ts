// Anycast relay mode (docs/architecture.md §4 "anycast relay", §6) when a node dies,
// in network namespaces (topology in test/helpers/netns.ts). Needs root,
// iproute2 and redis-server; skipped otherwise. Run with `npm run test:anycast`.
//
// Three nodes N1..N3 carry the service address 198.18.100.1 AND the shared
// relay address 198.18.101.1 on their loopback; every node runs
// `--relay-mode anycast --relay-ip 198.18.101.1`, so every node binds every
// active relayed port and can serve any packet of any allocation. The router
// sends both addresses to N1 at first.
//
// 1. The client streams at 50 pps (ChannelData on allocation A, Send/Data
//    indications on allocation B) through N1. Then N1's anyturn is SIGKILLed
//    and both routes (service and relay) move to N2 at once. The stream must
//    continue on the same relayed addresses (198.18.101.1:port), with no 437;
//    Refresh, CreatePermission and ChannelBind after the kill succeed, and
//    N2's /metrics show it relayed the traffic (the requests are sent once
//    N1's heartbeat has expired: a dead node's allocations must live on). The
//    gap and the loss per direction and mode are printed and bounded: only
//    what was in flight into N1 when it died may be lost (KILL_IN_FLIGHT_MS).
// 2. N1's anyturn is started again with the same flags: it takes on the
//    allocations in the store at start (its log line "anycast relay: took on
//    the allocations in the store", adopted >= the live allocations), both
//    routes go back to N1 and the stream keeps flowing through it.
// 3. No duplicate ports: fresh allocations made through the restarted N1 get
//    relayed ports different from each other and from the live ones; Redis
//    holds exactly one port key per allocation (naming it), and every node
//    binds exactly the live relayed ports on 198.18.101.1 (ss); with the kernel
//    data plane, whose shared relay sockets (--relay-sockets auto,
//    docs/dataplane.md §8) hold a relayed port as a map entry, every node
//    steers exactly that many ports and binds none of the relay range.
//
// The scenario runs twice: with the JavaScript data plane, and with the kernel data
// plane (docs/dataplane.md) on every node, each node programming its kernel from the
// allocations it takes on; there N2's eBPF program must have relayed the channel stream
// after the kill.

import { test, type TestContext } from 'node:test';
import assert from 'node:assert/strict';
import { kernelDataplaneUnavailableReason } from '../helpers/dataplane.js';
import { ANYCAST_ADDRESS, Topology, jsonLines, netnsUnavailableReason, type NodeName, type NsProcess } from '../helpers/netns.js';
import {
  anycastRelayArgs,
  withDump,
  metrics,
  modeFigures,
  peerReport,
  pollReadyz,
  redisCli,
  startPeer,
  startRedis,
  spawnFreshAllocations,
  startStreamClient,
  storedAllocations,
  streamSummary,
  phaseLoss,
  type PhaseLoss,
} from './cluster.js';
import type { FreshResult } from './fresh-allocations.js';
import { Stream, nowMs } from './wire.js';

const skip = netnsUnavailableReason();

/** The shared relay address: on every node's loopback, routed like the service address. */
const RELAY_ANYCAST = '198.18.101.1';
/** anycastRelayArgs' --min-port and --max-port. */
const RELAY_MIN_PORT = 50000;
const RELAY_MAX_PORT = 50999;
const FRESH_COUNT = 10;
const STREAM_MS = 36_000;
const READY_DEADLINE_MS = 20_000;
/**
 * Where loss is allowed, and how much. Every node holds every allocation and
 * binds every relayed port, so the only packets the design may lose are those
 * inside the dead N1 or on their way into it when it dies: sent by the client
 * after the kill and before both routes moved to N2, and those N1 had received
 * (or was about to) but not yet relayed, in either direction. A packet sent
 * KILL_IN_FLIGHT_MS or more before the kill has long been relayed (one hop
 * each way over veths, well under a millisecond; 100 ms leaves room for a
 * loaded host's scheduling) and must arrive. So per mode and direction:
 * - sent before killMs - KILL_IN_FLIGHT_MS: none lost;
 * - sent in [killMs - KILL_IN_FLIGHT_MS, routes moved]: at most the packets of
 *   that mode sent in that window (0 or 1 was lost in the runs so far, with the
 *   routes moving 5-11 ms after the kill, at 25 pps per mode);
 * - sent after the routes moved to N2, through the route back to N1 (no node
 *   dies then: packets in flight to N2 are still served by it) and until the
 *   end: none lost.
 */
const KILL_IN_FLIGHT_MS = 100;

function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

function round1(x: number): number {
  return Math.round(x * 10) / 10;
}

function endpointText(e: { address: string; port: number }): string {
  return `${e.address}:${e.port}`;
}

function report(_t: TestContext, label: string, value: unknown): void {
  console.log(`[anycast node-death] ${label}: ${JSON.stringify(value)}`);
}

interface StartedNode {
  readonly process: NsProcess;
  /** The "took on the allocations in the store" log record. */
  readonly sync: Record<string, unknown>;
}

async function startAnycastNode(topo: Topology, node: NodeName, name: string, dataplane: 'js' | 'kernel'): Promise<StartedNode> {
  const p = topo.spawnIn(node, process.execPath, anycastRelayArgs(node, RELAY_ANYCAST, dataplane), { name });
  const sync = await p.waitForJsonLine((r) => r.msg === 'anycast relay: took on the allocations in the store', READY_DEADLINE_MS);
  await p.waitForJsonLine((r) => r.msg === 'anyturn ready', READY_DEADLINE_MS);
  return { process: p, sync };
}

async function waitReady(topo: Topology, nodes: readonly NodeName[]): Promise<void> {
  for (const node of nodes) {
    const seen = await pollReadyz(topo, node, 200, 15_000);
    assert.equal(seen[seen.length - 1]?.code, 200, `${node} /readyz never 200: ${JSON.stringify(seen)}`);
  }
}

async function moveRoutes(topo: Topology, node: NodeName): Promise<void> {
  await Promise.all([topo.rerouteAddress(ANYCAST_ADDRESS, node), topo.rerouteAddress(RELAY_ANYCAST, node)]);
}

// ---------------------------------------------------------------- Redis and sockets, seen from outside

/** Polls until a Redis key no longer exists; when that was seen (nowMs), or undefined at the deadline. */
async function waitKeyGone(topo: Topology, key: string, deadlineMs: number): Promise<number | undefined> {
  const end = Date.now() + deadlineMs;
  for (;;) {
    if ((await redisCli(topo, ['EXISTS', key])).trim() === '0') return nowMs();
    if (Date.now() > end) return undefined;
    await sleep(100);
  }
}

interface StoreView {
  /** Allocation records: key -> relayed "ip:port". */
  readonly allocations: Map<string, string>;
  /** Port keys: relayed "ip:port" -> holder (an allocation key). */
  readonly ports: Map<string, string>;
}

/** The test's own look at the store (SCAN is fine here: a test, a handful of keys). */
async function storeView(topo: Topology): Promise<StoreView> {
  const allocations = await storedAllocations(topo);
  const ports = new Map<string, string>();
  const portKeys = (await redisCli(topo, ['--scan', '--pattern', 'anyturn:port:*'])).split('\n').filter(Boolean);
  for (const k of portKeys) {
    const m = /^anyturn:port:\{(.+)\|(\d+)\}$/.exec(k);
    assert.ok(m, `unexpected port key ${k}`);
    ports.set(`${m[1]}:${m[2]}`, (await redisCli(topo, ['GET', k])).trim());
  }
  return { allocations, ports };
}

/** UDP ports bound on the shared relay address inside a node's namespace. */
async function boundRelayPorts(topo: Topology, node: NodeName): Promise<number[]> {
  const r = await topo.exec(node, 'ss', ['-H', '-u', '-a', '-n']);
  if (r.code !== 0) throw new Error(`ss in ${node}: ${r.stderr}`);
  const ports: number[] = [];
  for (const line of r.stdout.split('\n')) {
    const local = line.trim().split(/\s+/)[3];
    if (local?.startsWith(`${RELAY_ANYCAST}:`)) ports.push(Number(local.slice(RELAY_ANYCAST.length + 1)));
  }
  return ports.sort((a, b) => a - b);
}

/**
 * What a node holds of the relayed ports: with the JavaScript data plane, the sockets bound on
 * the relay address (one per relayed port); with the kernel's, the relayed ports it steers to
 * its one shared socket (--relay-sockets auto: docs/dataplane.md §8), and the sockets bound in
 * the relay range, which must be none. `expected` gives the view every node must show.
 */
async function heldRelayPorts(topo: Topology, node: NodeName, dataplane: 'js' | 'kernel'): Promise<string> {
  const bound = await boundRelayPorts(topo, node);
  if (dataplane === 'js') return JSON.stringify(bound);
  const steered = (await metrics(topo, node)).get('anyturn_relay_steered_ports');
  return `steered ${String(steered)}, sockets in the relay range ${JSON.stringify(bound.filter((p) => p >= RELAY_MIN_PORT && p <= RELAY_MAX_PORT))}`;
}

function expectedHeld(expected: readonly number[], dataplane: 'js' | 'kernel'): string {
  return dataplane === 'js' ? JSON.stringify([...expected].sort((a, b) => a - b)) : `steered ${expected.length}, sockets in the relay range []`;
}

/** Polls until every node holds exactly `expected` on the relay address, or the deadline; the last view. */
async function waitBound(topo: Topology, expected: readonly number[], deadlineMs: number, dataplane: 'js' | 'kernel'): Promise<Record<string, string>> {
  const want = expectedHeld(expected, dataplane);
  const end = Date.now() + deadlineMs;
  for (;;) {
    const view: Record<string, string> = {};
    for (const node of topo.nodeNames) view[node] = await heldRelayPorts(topo, node, dataplane);
    if (Object.values(view).every((p) => p === want) || Date.now() > end) return view;
    await sleep(250);
  }
}

// ---------------------------------------------------------------- figures

/** Relayed packets (the kernel's included), and of those what the kernel data plane relayed. */
function relayedPackets(m: Map<string, number>): { clientToPeer: number; peerToClient: number; kernelToPeer: number; kernelToClient: number } {
  return {
    clientToPeer: m.get('anyturn_relayed_packets_total{direction="client_to_peer"}') ?? 0,
    peerToClient: m.get('anyturn_relayed_packets_total{direction="peer_to_client"}') ?? 0,
    kernelToPeer: m.get('anyturn_dataplane_kernel_packets_total{event="relayed_to_peer"}') ?? 0,
    kernelToClient: m.get('anyturn_dataplane_kernel_packets_total{event="relayed_to_client"}') ?? 0,
  };
}

/** Warnings and errors a node logged (pino level >= 40), for the report. */
function warnings(p: NsProcess): unknown[] {
  return jsonLines(p.stdout())
    .filter((r) => typeof r.level === 'number' && (r.level as number) >= 40)
    .map((r) => ({ msg: r.msg, err: (r.err as { message?: string } | undefined)?.message, allocation: r.allocation }));
}

for (const dataplane of ['js', 'kernel'] as const) {
  test(
    `anycast relay${dataplane === 'kernel' ? ', kernel data plane on every node' : ''}: N1 is SIGKILLed mid-stream, N2 serves on, N1 restarts, syncs and takes the traffic back without duplicate ports`,
    {
      skip: dataplane === 'kernel' ? (skip ?? kernelDataplaneUnavailableReason()) : skip,
      timeout: 240_000,
    },
    (t) => nodeDeath(t, dataplane),
  );
}

/** The scenario above; `dataplane` 'kernel' runs every node with --dataplane kernel (its ChannelData then relayed by the eBPF program). */
async function nodeDeath(t: TestContext, dataplane: 'js' | 'kernel'): Promise<void> {
  const topo = await Topology.build({ nodes: 3, extraAnycast: [RELAY_ANYCAST], softwareChecksums: dataplane === 'kernel' });
  t.after(() => topo.teardown());
  await withDump(topo, async () => {
    await startRedis(topo);
    const n1 = await startAnycastNode(topo, 'N1', 'anyturn-N1', dataplane);
    const n2 = await startAnycastNode(topo, 'N2', 'anyturn-N2', dataplane);
    const n3 = await startAnycastNode(topo, 'N3', 'anyturn-N3', dataplane);
    await waitReady(topo, ['N1', 'N2', 'N3']);
    report(t, 'start-up sync (empty store)', { N1: n1.sync.adopted, N2: n2.sync.adopted, N3: n3.sync.adopted });

    const peer = await startPeer(topo);
    const client = startStreamClient(topo, STREAM_MS);
    const allocated = await client.waitForJsonLine((r) => r.event === 'allocated' || r.event === 'error', 20_000);
    assert.equal(allocated.event, 'allocated', JSON.stringify(allocated));
    const relayedAtStart = allocated.relayed as { A: { address: string; port: number }; B: { address: string; port: number } };
    assert.equal(relayedAtStart.A.address, RELAY_ANYCAST, 'allocation A is not on the shared relay address');
    assert.equal(relayedAtStart.B.address, RELAY_ANYCAST, 'allocation B is not on the shared relay address');
    const livePorts = [relayedAtStart.A.port, relayedAtStart.B.port];
    await client.waitForJsonLine((r) => r.event === 'streaming', 10_000);

    // Every node has taken on both allocations (bound their relayed ports) before anything dies.
    const boundBefore = await waitBound(topo, livePorts, 10_000, dataplane);
    report(t, 'relayed ports bound on each node before the kill', boundBefore);
    for (const node of topo.nodeNames) assert.deepEqual(boundBefore[node], expectedHeld(livePorts, dataplane), `${node} does not bind the live relayed ports`);

    await sleep(3000);
    const m2Before = relayedPackets(await metrics(topo, 'N2'));
    assert.equal((await redisCli(topo, ['EXISTS', 'anyturn:node:{n1}'])).trim(), '1', 'no heartbeat key for N1 (key name changed?)');

    // ---- 1. N1 dies: SIGKILL, and both routes to N2 at once.
    await sleep(1000);
    const killed = n1.process.stop('SIGKILL'); // the signal is sent synchronously, here
    const killMs = nowMs();
    await moveRoutes(topo, 'N2');
    const switchedMs = nowMs();
    client.writeLine(JSON.stringify({ cmd: 'mark', name: 'kill', atMs: killMs }));
    await killed;
    const exit1 = await n1.process.exited;
    report(t, 'kill', { exit: exit1.signal ?? exit1.code, routesMovedToN2AfterMs: round1(switchedMs - killMs) });

    // N1 is dead to the cluster once its heartbeat key has expired (HEARTBEAT_TTL_MS, 5 s); in
    // forward mode that would get its allocations deleted (437). Here nothing may change.
    const heartbeatGoneMs = await waitKeyGone(topo, 'anyturn:node:{n1}', 15_000);
    report(t, 'N1 heartbeat expired', { afterKillMs: heartbeatGoneMs === undefined ? 'never' : Math.round(heartbeatGoneMs - killMs) });
    assert.ok(heartbeatGoneMs !== undefined, "N1's heartbeat key did not expire");
    await sleep(500);
    client.writeLine(JSON.stringify({ cmd: 'ops' }));
    const opsDone = await client.waitForJsonLine((r) => r.event === 'ops-done', 15_000);
    report(t, 'ops after the kill and the heartbeat expiry (through N2)', opsDone.ops);
    await sleep(1500);
    const m2After = relayedPackets(await metrics(topo, 'N2'));
    report(t, 'N2 anyturn_relayed_packets_total', {
      beforeKill: m2Before,
      afterKill: m2After,
      grew: { clientToPeer: m2After.clientToPeer - m2Before.clientToPeer, peerToClient: m2After.peerToClient - m2Before.peerToClient },
    });

    // ---- 2. N1 comes back: same flags, it takes on what the store holds.
    const storeAtRestart = await storeView(topo);
    const restartMs = nowMs();
    const n1b = await startAnycastNode(topo, 'N1', 'anyturn-N1-restarted', dataplane);
    const restartReadyMs = nowMs();
    await waitReady(topo, ['N1']);
    const adopted = Number(n1b.sync.adopted);
    report(t, 'N1 restart', {
      liveAllocationsInStore: storeAtRestart.allocations.size,
      adopted,
      startToSyncedAndReadyMs: Math.round(restartReadyMs - restartMs),
    });
    const boundAfterRestart = await waitBound(topo, livePorts, 5000, dataplane);
    report(t, 'relayed ports bound on each node after N1 restarted', boundAfterRestart);

    const backMs = nowMs();
    await moveRoutes(topo, 'N1');
    client.writeLine(JSON.stringify({ cmd: 'mark', name: 'back', atMs: backMs }));
    report(t, 'routes back to N1', { afterKillMs: Math.round(backMs - killMs), routesMovedAfterMs: round1(nowMs() - backMs) });

    // ---- 3. Fresh allocations through the restarted N1: no duplicate ports anywhere.
    await sleep(2000);
    const fresh = spawnFreshAllocations(topo, FRESH_COUNT, 60_000);
    const freshRec = await fresh.waitForJsonLine((r) => r.event === 'allocated', 30_000);
    const freshResults = freshRec.results as FreshResult[];
    const freshPorts = freshResults.filter((r) => r.relayed).map((r) => r.relayed!.port);
    const allPorts = [...livePorts, ...freshPorts];
    const storeWithFresh = await storeView(topo);
    const boundWithFresh = await waitBound(topo, allPorts, 10_000, dataplane);
    const m1Fresh = relayedPackets(await metrics(topo, 'N1'));
    fresh.writeLine(JSON.stringify({ cmd: 'release' }));
    const released = await fresh.waitForJsonLine((r) => r.event === 'released', 15_000);
    const boundAfterRelease = await waitBound(topo, livePorts, 10_000, dataplane);
    const storeAfterRelease = await storeView(topo);
    report(
      t,
      'fresh allocations through N1',
      freshResults.map((r) => ({ code: r.code, relayed: r.relayed ? endpointText(r.relayed) : undefined, permission: r.permission, echoed: r.echoed })),
    );
    report(t, 'live relayed ports', { stream: livePorts, fresh: freshPorts });
    report(t, 'store with the fresh allocations', { allocations: storeWithFresh.allocations.size, portKeys: storeWithFresh.ports.size });
    report(t, 'relayed ports bound on each node with the fresh allocations', boundWithFresh);
    report(t, 'after releasing them', {
      released: released.codes,
      bound: boundAfterRelease,
      allocations: storeAfterRelease.allocations.size,
      portKeys: storeAfterRelease.ports.size,
    });

    // ---- the stream's end
    const summary = await streamSummary(client, STREAM_MS + 30_000);
    const peerSeen = await peerReport(peer);
    const m1End = relayedPackets(await metrics(topo, 'N1'));
    const m2End = relayedPackets(await metrics(topo, 'N2'));
    const m3End = relayedPackets(await metrics(topo, 'N3'));
    const endMs = nowMs() + 1;

    const kill = {
      channel: modeFigures(summary, peerSeen, Stream.channel, { atMs: killMs, window: [killMs - 1000, killMs + 3000] }),
      indication: modeFigures(summary, peerSeen, Stream.indication, { atMs: killMs, window: [killMs - 1000, killMs + 3000] }),
    };
    const back = {
      channel: modeFigures(summary, peerSeen, Stream.channel, { atMs: backMs, window: [backMs - 1000, backMs + 3000] }),
      indication: modeFigures(summary, peerSeen, Stream.indication, { atMs: backMs, window: [backMs - 1000, backMs + 3000] }),
    };
    const startMs = 0;
    const inFlightFromMs = killMs - KILL_IN_FLIGHT_MS;
    const phase = (from: number, to: number): { channel: PhaseLoss; indication: PhaseLoss } => ({
      channel: phaseLoss(summary, peerSeen, Stream.channel, from, to),
      indication: phaseLoss(summary, peerSeen, Stream.indication, from, to),
    });
    const loss = {
      beforeKill: phase(startMs, inFlightFromMs),
      inFlightAtKill: phase(inFlightFromMs, switchedMs),
      switchToBack: phase(switchedMs, backMs),
      afterBack: phase(backMs, endMs),
    };

    report(t, 'relayed', { A: endpointText(summary.relayed.A), B: endpointText(summary.relayed.B) });
    report(t, 'gap ms around the kill (last arrival before -> first after; max silence within [-1 s, +3 s])', {
      channel: {
        clientToPeer: kill.channel.gapClientToPeerMs,
        peerToClient: kill.channel.gapPeerToClientMs,
        maxClientToPeer: kill.channel.maxGapClientToPeerMs,
        maxPeerToClient: kill.channel.maxGapPeerToClientMs,
      },
      indication: {
        clientToPeer: kill.indication.gapClientToPeerMs,
        peerToClient: kill.indication.gapPeerToClientMs,
        maxClientToPeer: kill.indication.maxGapClientToPeerMs,
        maxPeerToClient: kill.indication.maxGapPeerToClientMs,
      },
    });
    report(t, 'gap ms around the route back to N1', {
      channel: {
        clientToPeer: back.channel.gapClientToPeerMs,
        peerToClient: back.channel.gapPeerToClientMs,
        maxClientToPeer: back.channel.maxGapClientToPeerMs,
        maxPeerToClient: back.channel.maxGapPeerToClientMs,
      },
      indication: {
        clientToPeer: back.indication.gapClientToPeerMs,
        peerToClient: back.indication.gapPeerToClientMs,
        maxClientToPeer: back.indication.maxGapClientToPeerMs,
        maxPeerToClient: back.indication.maxGapPeerToClientMs,
      },
    });
    for (const [phase, modes] of Object.entries(loss)) {
      report(
        t,
        `lost (${phase}: sent, lost seqs client->peer, lost seqs peer->client)`,
        Object.fromEntries(
          Object.entries(modes).map(([mode, l]) => [mode, { sent: l.sent, clientToPeer: l.lostClientToPeer, peerToClient: l.lostPeerToClient }]),
        ),
      );
    }
    report(t, 'client saw', {
      ops: summary.ops,
      newChannelEchoes: summary.newChannelEchoes,
      errorCodes: summary.errorCodes,
      got437: summary.got437,
      foreignSources: summary.foreignSources,
      wrongKind: summary.wrongKind,
    });
    report(t, 'peer saw', {
      channel: kill.channel.peerSources,
      indication: kill.indication.peerSources,
      channelAfterKill: kill.channel.peerSourcesAfter,
      indicationAfterKill: kill.indication.peerSourcesAfter,
      channelAfterBack: back.channel.peerSourcesAfter,
      indicationAfterBack: back.indication.peerSourcesAfter,
    });
    report(t, 'anyturn_relayed_packets_total at the end', { N1restarted: m1End, N1restartedAfterFresh: m1Fresh, N2: m2End, N3: m3End });
    report(t, 'node warnings', Object.fromEntries(topo.spawned.filter((p) => p.name.startsWith('anyturn-')).map((p) => [p.name, warnings(p)])));

    // 1. The kill: same relayed addresses, no 437, requests succeed, N2 relayed the traffic.
    assert.deepEqual(kill.channel.peerSources, [endpointText(summary.relayed.A)], 'channel-mode relayed address changed');
    assert.deepEqual(kill.indication.peerSources, [endpointText(summary.relayed.B)], 'indication-mode relayed address changed');
    assert.deepEqual(kill.channel.peerSourcesAfter, [endpointText(summary.relayed.A)], 'no channel-mode packet reached the peer after the kill');
    assert.deepEqual(kill.indication.peerSourcesAfter, [endpointText(summary.relayed.B)], 'no indication-mode packet reached the peer after the kill');
    assert.equal(summary.got437, 0, `437 received: ${JSON.stringify(summary.errorCodes)}`);
    for (const alloc of ['A', 'B']) {
      for (const method of ['refresh', 'createPermission', 'channelBind']) {
        assert.equal(summary.ops[alloc]?.[method]?.code, 200, `${method} on allocation ${alloc} after the kill: ${JSON.stringify(summary.ops)}`);
      }
    }
    assert.deepEqual(summary.newChannelEchoes, { '2': 5, '3': 5 }, 'probes over the channels bound after the kill');
    assert.deepEqual(summary.foreignSources, {}, 'datagrams from an address other than the anycast server address');
    assert.equal(summary.wrongKind, 0);
    assert.ok(
      m2After.clientToPeer - m2Before.clientToPeer > 50,
      `N2 relayed too few client->peer packets after the kill: ${JSON.stringify({ m2Before, m2After })}`,
    );
    assert.ok(
      m2After.peerToClient - m2Before.peerToClient > 50,
      `N2 relayed too few peer->client packets after the kill: ${JSON.stringify({ m2Before, m2After })}`,
    );
    if (dataplane === 'kernel') {
      // The channel stream went through N2's kernel path: its program relayed both ways.
      assert.ok(
        m2After.kernelToPeer - m2Before.kernelToPeer > 50 && m2After.kernelToClient - m2Before.kernelToClient > 50,
        `N2's kernel data plane relayed too few packets after the kill: ${JSON.stringify({ m2Before, m2After })}`,
      );
    }
    // Loss: only what was in flight into N1 when it died (see KILL_IN_FLIGHT_MS).
    for (const mode of ['channel', 'indication'] as const) {
      for (const p of ['beforeKill', 'switchToBack', 'afterBack'] as const) {
        const l = loss[p][mode];
        assert.ok(l.sent >= 50, `${p} ${mode}: only ${l.sent} packets sent in that phase`);
        assert.deepEqual(l.lostClientToPeer, [], `${p} ${mode}: client->peer lost ${l.lostClientToPeer.length} of ${l.sent}`);
        assert.deepEqual(l.lostPeerToClient, [], `${p} ${mode}: peer->client lost ${l.lostPeerToClient.length} of ${l.sent}`);
      }
      // inFlightAtKill is not asserted on: any of its packets may be lost, and that window
      // (KILL_IN_FLIGHT_MS plus the route move) is the bound: a few packets per mode.
    }
    // No 438: after the kill N2 checked the nonce N1 had issued (the Refresh in "ops").
    assert.equal(summary.got438, 0, `438 received: ${JSON.stringify(summary.errorCodes)}`);
    // The only errors: the 401s to each socket's first Allocate and to the two challenges in "ops".
    assert.deepEqual(summary.errorCodes, { '401': 4 }, 'error answers other than the four 401 challenges');
    for (const alloc of ['A', 'B']) assert.deepEqual(summary.ops[alloc]?.challenge, { code: 401 }, `challenge on ${alloc}: ${JSON.stringify(summary.ops)}`);

    // 2. The restart: synced at start, and the stream flows through N1 again.
    assert.ok(
      Number.isInteger(adopted) && adopted >= storeAtRestart.allocations.size,
      `restarted N1 took on ${String(n1b.sync.adopted)} of ${storeAtRestart.allocations.size} live allocations`,
    );
    assert.ok(storeAtRestart.allocations.size >= 2, `the store lost the stream's allocations: ${JSON.stringify([...storeAtRestart.allocations])}`);
    for (const node of topo.nodeNames) assert.deepEqual(boundAfterRestart[node], expectedHeld(livePorts, dataplane), `${node} after N1's restart`);
    assert.deepEqual(back.channel.peerSourcesAfter, [endpointText(summary.relayed.A)], 'no channel-mode packet reached the peer after the route back');
    assert.deepEqual(back.indication.peerSourcesAfter, [endpointText(summary.relayed.B)], 'no indication-mode packet reached the peer after the route back');
    assert.ok(
      m1End.clientToPeer - m1Fresh.clientToPeer > 50 && m1End.peerToClient - m1Fresh.peerToClient > 50,
      `restarted N1 did not relay the stream after the route back: ${JSON.stringify({ m1Fresh, m1End })}`,
    );

    // 3. No duplicate ports.
    assert.equal(freshResults.length, FRESH_COUNT);
    for (const r of freshResults) {
      assert.equal(r.code, 200, `fresh Allocate through N1: ${JSON.stringify(freshResults)}`);
      assert.equal(r.relayed?.address, RELAY_ANYCAST);
      assert.equal(r.permission, 200);
      assert.equal(r.echoed, true, `a fresh allocation did not relay: ${JSON.stringify(freshResults)}`);
    }
    assert.equal(new Set(allPorts).size, allPorts.length, `duplicate relayed ports: ${JSON.stringify({ livePorts, freshPorts })}`);
    assert.equal(storeWithFresh.allocations.size, 2 + FRESH_COUNT, `allocations in the store: ${JSON.stringify([...storeWithFresh.allocations])}`);
    assert.deepEqual(
      [...storeWithFresh.ports.keys()].sort(),
      [...storeWithFresh.allocations.values()].sort(),
      "port keys do not match the allocations' relayed addresses",
    );
    for (const [key, relayed] of storeWithFresh.allocations)
      assert.equal(storeWithFresh.ports.get(relayed), key, `port key of ${relayed} does not name ${key}`);
    for (const node of topo.nodeNames)
      assert.deepEqual(boundWithFresh[node], expectedHeld(allPorts, dataplane), `${node} does not bind exactly the live relayed ports`);
    assert.ok(
      (released.codes as number[]).every((c) => c === 200),
      `releasing the fresh allocations: ${JSON.stringify(released)}`,
    );
    for (const node of topo.nodeNames)
      assert.deepEqual(boundAfterRelease[node], expectedHeld(livePorts, dataplane), `${node} after the fresh allocations were released`);
    assert.equal(storeAfterRelease.allocations.size, 2);
    assert.equal(storeAfterRelease.ports.size, 2);
  });
}

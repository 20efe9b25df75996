// BGP for real (docs/anycast-bgp.md): the anycast addresses reach the nodes
// through routes that bird2 in the router namespace learns from the speaker
// beside each node (docker/bgp/: bird2 + readyz-announce.mjs), never through
// `ip route replace`. Topology: test/helpers/netns.ts (client C, peer P, router
// R with redis-server on its loopback, nodes N1 and N2 carrying the anycast
// address(es) on their loopback), sessions and speakers: ./speakers.ts.
// Needs root, iproute2, redis-server and bird2; skipped otherwise (never
// under CI=true). Run with `npm run test:bgp`.
//
// Each scenario streams at 50 pps both ways (ChannelData on allocation A,
// Send/Data indications on B; test/anycast/stream-client.ts) and prints the
// gap and the loss per mode and direction.
//
// 1. Drain N1 (POST /drain; forward mode): /readyz turns 503, the speaker
//    withdraws the routes by a BGP UPDATE (the session stays up), the router
//    now sends the anycast address to N2; a new client's Allocate lands on N2;
//    the live allocations on N1 keep relaying (client -> N2 -> mesh -> N1)
//    without loss; once the client deletes them N1 exits 0 (--drain-exit).
// 2. N1's host dies (anycast relay mode): its link goes silent (its address
//    is removed, so no FIN, RST or NOTIFICATION leaves it) and anyturn, bird
//    and the announcer are SIGKILLed. The router's BFD session notices, the
//    service and relay routes move to N2, the stream goes on from the same
//    relayed addresses; the convergence time is printed. Only what was sent
//    between the death and the route change may be lost.
// 3. Redis is stopped for 20 s (forward mode): no route is withdrawn (every
//    /readyz stays 200), the live allocations relay without loss, a new
//    Allocate succeeds; once Redis is back, the live allocations are in it
//    again and a reroute (N1 drained) resumes them on N2 through the mesh.
//    This is the fail-open store of issue 14 item 1.
// 4. The sidecar fails closed: N1's announcer is killed, the entry point stops
//    bird with it, the router's session goes down and N1's route with it.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { ANYCAST_ADDRESS, Topology, type NodeName, type NsProcess } from '../helpers/netns.js';
import {
  METRICS_PORT,
  allocateProbe,
  anycastRelayArgs,
  dumpAll,
  figures,
  nodeArgs,
  peerReport,
  phaseLoss,
  readyz,
  startPeer,
  startRedis,
  startStreamClient,
  storedAllocations,
  streamSummary,
  withDump,
  type Figures,
  type Redis,
} from '../anycast/cluster.js';
import type { StreamSummary } from '../anycast/stream-client.js';
import { Stream as StreamId, nowMs } from '../anycast/wire.js';
import { Bgp, RouteWatch, announcerEvents, anycastPrefixes, bgpUnavailableReason } from './speakers.js';

const skip = bgpUnavailableReason();
const RELAY_ANYCAST = '198.18.101.1';
const ADMIN_TOKEN = 'bgp-test-admin-token-0123456789abcdef';
const DEADLINE_MS = 15_000;
/** A packet sent this long before a node died had long been relayed (one veth hop each way). */
const IN_FLIGHT_MS = 100;

function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

/** The process's exit, or undefined if it is still running after `ms` (the timer does not outlive the answer). */
async function exitedWithin(p: NsProcess, ms: number): Promise<{ code: number | null; signal: NodeJS.Signals | null } | undefined> {
  let timer: NodeJS.Timeout | undefined;
  const late = new Promise<undefined>((r) => (timer = setTimeout(() => r(undefined), ms)));
  try {
    return await Promise.race([p.exited, late]);
  } finally {
    clearTimeout(timer);
  }
}

function round1(x: number): number {
  return Math.round(x * 10) / 10;
}

function report(label: string, value: unknown): void {
  console.log(`[bgp] ${label}: ${JSON.stringify(value)}`);
}

interface Scene {
  readonly topo: Topology;
  readonly redis: Redis;
  readonly bgp: Bgp;
  readonly routes: RouteWatch;
  readonly nodes: Map<NodeName, NsProcess>;
  readonly prefixes: string[];
}

/**
 * Two nodes with their speakers, the router's sessions established and every
 * anycast route learnt by BGP and pointing at N1 (the router's tie-break: the
 * lower router id, docs/anycast-bgp.md).
 */
async function setUp(t: { after(fn: () => Promise<void>): void }, relay: string | undefined, args: (node: NodeName) => string[]): Promise<Scene> {
  const topo = await Topology.build({ nodes: 2, staticAnycastRoutes: false, extraAnycast: relay === undefined ? [] : [relay] });
  t.after(() => topo.teardown());
  try {
    const redis = await startRedis(topo);
    const bgp = await Bgp.start(topo);
    const routes = await RouteWatch.start(topo);
    const nodes = new Map<NodeName, NsProcess>();
    for (const node of topo.nodeNames) {
      const p = topo.spawnIn(node, process.execPath, args(node), { name: `anyturn-${node}` });
      await p.waitForJsonLine((r) => r.msg === 'anyturn ready', DEADLINE_MS);
      nodes.set(node, p);
    }
    const prefixes = anycastPrefixes(relay);
    for (const node of topo.nodeNames) await bgp.startSpeaker(node, prefixes);
    await bgp.waitEstablished();
    for (const node of topo.nodeNames) await bgp.speaker(node).process.waitForJsonLine((r) => r.event === 'announce', DEADLINE_MS);
    for (const address of prefixes) {
      const route = await routes.waitRouted(address, 'N1', DEADLINE_MS);
      assert.equal(route.proto, 'bird', `the router's route for ${address} is not from BGP: ${route.line}`);
    }
    return { topo, redis, bgp, routes, nodes, prefixes };
  } catch (err) {
    console.error(dumpAll(topo));
    throw err;
  }
}

// POST with the admin token, run by node inside the router namespace (which reaches every node's address).
const HTTP_POST = `
const http = require('node:http');
const req = http.request(process.argv[1], { method: 'POST', timeout: 2000, headers: { authorization: 'Bearer ' + process.argv[2] } }, (res) => {
  res.resume();
  res.on('end', () => console.log(JSON.stringify({ status: res.statusCode })));
});
req.on('timeout', () => req.destroy(new Error('timeout')));
req.on('error', (e) => console.log(JSON.stringify({ status: 0, error: e.message })));
req.end();
`;

async function postDrain(topo: Topology, node: NodeName): Promise<number> {
  const r = await topo.exec('R', process.execPath, ['-e', HTTP_POST, `http://${Topology.nodeAddress(node)}:${METRICS_PORT}/drain`, ADMIN_TOKEN]);
  return Number((JSON.parse(r.stdout.trim() || '{}') as { status?: number }).status ?? 0);
}

function printFigures(label: string, f: Figures): void {
  const mode = (m: Figures['channel']) => ({
    sent: m.sent,
    lostClientToPeer: m.lostSeqClientToPeer,
    lostPeerToClient: m.lostSeqPeerToClient,
    gapClientToPeerMs: m.gapClientToPeerMs,
    gapPeerToClientMs: m.gapPeerToClientMs,
    maxGapClientToPeerMs: m.maxGapClientToPeerMs,
    maxGapPeerToClientMs: m.maxGapPeerToClientMs,
  });
  report(`${label}: channel (ChannelData)`, mode(f.channel));
  report(`${label}: indication (Send/Data)`, mode(f.indication));
  report(`${label}: both`, f.total);
}

function endpointText(e: { address: string; port: number }): string {
  return `${e.address}:${e.port}`;
}

/** Same relayed addresses before and after, no 437, nothing but the 401 challenges. */
function assertSameAllocations(f: Figures, summary: StreamSummary): void {
  assert.deepEqual(f.channel.peerSources, [endpointText(summary.relayed.A)], 'channel-mode relayed address changed');
  assert.deepEqual(f.indication.peerSources, [endpointText(summary.relayed.B)], 'indication-mode relayed address changed');
  assert.deepEqual(f.channel.peerSourcesAfter, [endpointText(summary.relayed.A)], 'no channel-mode packet reached the peer after the route change');
  assert.deepEqual(f.indication.peerSourcesAfter, [endpointText(summary.relayed.B)], 'no indication-mode packet reached the peer after the route change');
  assert.equal(summary.got437, 0, `437 received: ${JSON.stringify(summary.errorCodes)}`);
  assert.deepEqual(summary.foreignSources, {}, 'datagrams from an address other than the anycast server address');
}

function assertNoLoss(f: Figures): void {
  for (const mode of ['channel', 'indication'] as const) {
    assert.deepEqual(f[mode].lostSeqClientToPeer, [], `${mode}: client->peer lost of ${f[mode].sent}`);
    assert.deepEqual(f[mode].lostSeqPeerToClient, [], `${mode}: peer->client lost of ${f[mode].sent}`);
  }
}

interface Stream {
  readonly client: NsProcess;
  readonly peer: NsProcess;
  readonly relayed: { readonly A: { address: string; port: number }; readonly B: { address: string; port: number } };
  /** When the first packet left (nowMs). */
  readonly startMs: number;
}

async function startStream(scene: Scene, durationMs: number, release = false): Promise<Stream> {
  const peer = await startPeer(scene.topo);
  const client = startStreamClient(scene.topo, durationMs, 50, { release });
  const allocated = await client.waitForJsonLine((r) => r.event === 'allocated' || r.event === 'error', 20_000);
  assert.equal(allocated.event, 'allocated', JSON.stringify(allocated));
  const streaming = await client.waitForJsonLine((r) => r.event === 'streaming', 10_000);
  return { client, peer, relayed: allocated.relayed as Stream['relayed'], startMs: Number(streaming.startMs) };
}

test('BGP: drain N1, its routes are withdrawn, new clients land on N2, its allocations relay through N2 until they end, then it exits', {
  skip,
  timeout: 120_000,
}, async (t) => {
  const STREAM_MS = 10_000;
  const scene = await setUp(t, undefined, (node) => [...nodeArgs(node, { cluster: true }), '--admin-token', ADMIN_TOKEN, '--drain-exit']);
  const { topo, bgp, routes } = scene;
  await withDump(topo, async () => {
    const { client, peer } = await startStream(scene, STREAM_MS, true);
    await sleep(3000);
    const from = routes.changes.length;
    const drainMs = nowMs();
    assert.equal(await postDrain(topo, 'N1'), 200, 'POST /drain');
    const moved = await routes.waitVia(ANYCAST_ADDRESS, 'N2', DEADLINE_MS, from);
    const sessionAtWithdrawal = await bgp.session('N1');
    client.writeLine(JSON.stringify({ cmd: 'mark', name: 'withdrawn', atMs: moved.atMs }));
    report('drain -> route via N2 (ms)', round1(moved.atMs - drainMs));
    report("router's session to N1 when the route moved", sessionAtWithdrawal);
    report("router's route", moved.line);

    const probe = await allocateProbe(topo);
    report('a new client after the withdrawal', probe.attempts);

    const summary = await streamSummary(client, STREAM_MS + 20_000);
    const peerSeen = await peerReport(peer);
    const exit = await exitedWithin(scene.nodes.get('N1')!, DEADLINE_MS);
    report('client deleted its allocations (Refresh 0 through N2)', summary.released);
    report('N1 exit (--drain-exit)', exit ?? 'still running');
    const f = figures(summary, peerSeen, { atMs: moved.atMs, window: [moved.atMs - 1000, moved.atMs + 3000] });
    printFigures('drain', f);
    report('announcer N1', announcerEvents(bgp.speaker('N1')));

    assert.match(sessionAtWithdrawal, /Established/, 'a drain withdraws by UPDATE: the session stays up');
    assert.equal(moved.proto, 'bird');
    const withdraw = announcerEvents(bgp.speaker('N1')).find((e) => e.event === 'withdraw');
    assert.equal(withdraw?.status, 503, `N1's announcer: ${JSON.stringify(announcerEvents(bgp.speaker('N1')))}`);
    assert.match(String(withdraw?.body), /draining/);
    assert.equal(probe.final, 200, `a new Allocate after the drain: ${probe.raw}`);
    assert.ok(probe.attempts.at(-1)?.relayed?.startsWith(`${Topology.nodeAddress('N2')}:`), `the new allocation is not on N2: ${probe.raw}`);
    assertSameAllocations(f, summary);
    assert.ok(f.channel.sent >= 200 && f.indication.sent >= 200, `too few packets sent: ${f.channel.sent} ${f.indication.sent}`);
    // Forward mode moves only the client->server leg; N2 holds a new 5-tuple's packets while
    // it looks up the owner (cluster/router.ts) and bird replaces the kernel route in place.
    assertNoLoss(f);
    assert.deepEqual(summary.released, { A: { code: 200 }, B: { code: 200 } }, 'deleting the allocations through N2');
    assert.deepEqual(exit, { code: 0, signal: null }, 'N1 did not exit 0 once its last allocation was gone');
    assert.deepEqual(
      announcerEvents(bgp.speaker('N2')).map((e) => e.event),
      ['announce'],
      "N2's announcer changed state",
    );
  });
});

/** UDP ports bound on `address` inside a node's namespace. */
async function boundPorts(topo: Topology, node: NodeName, address: string): Promise<number[]> {
  const r = await topo.exec(node, 'ss', ['-H', '-u', '-a', '-n']);
  if (r.code !== 0) throw new Error(`ss in ${node}: ${r.stderr}`);
  const ports: number[] = [];
  for (const line of r.stdout.split('\n')) {
    const local = line.trim().split(/\s+/)[3];
    if (local?.startsWith(`${address}:`)) ports.push(Number(local.slice(address.length + 1)));
  }
  return ports;
}

test("BGP: N1's host dies in anycast relay mode, BFD moves both routes to N2, the stream goes on from the same relayed addresses", {
  skip,
  timeout: 120_000,
}, async (t) => {
  const STREAM_MS = 10_000;
  const scene = await setUp(t, RELAY_ANYCAST, (node) => anycastRelayArgs(node, RELAY_ANYCAST));
  const { topo, bgp, routes } = scene;
  await withDump(topo, async () => {
    const stream = await startStream(scene, STREAM_MS);
    const live = [stream.relayed.A.port, stream.relayed.B.port];
    // N2 has taken on both allocations (binds their relayed ports) before N1 dies.
    const end = Date.now() + DEADLINE_MS;
    while ((await boundPorts(topo, 'N2', RELAY_ANYCAST)).filter((p) => live.includes(p)).length < live.length) {
      assert.ok(Date.now() < end, 'N2 never bound the live relayed ports');
      await sleep(100);
    }
    await sleep(2000);

    // The host dies: nothing leaves it any more (no FIN, no NOTIFICATION), then its processes go.
    const from = routes.changes.length;
    const deathMs = nowMs();
    const flushed = await topo.exec('N1', 'ip', ['addr', 'flush', 'dev', 'eth0']);
    assert.equal(flushed.code, 0, flushed.stderr);
    await Promise.all([scene.nodes.get('N1')!.stop('SIGKILL'), bgp.speaker('N1').process.stop('SIGKILL')]);
    const moved = await Promise.all(scene.prefixes.map((address) => routes.waitVia(address, 'N2', DEADLINE_MS, from)));
    const convergedMs = Math.max(...moved.map((m) => m.atMs));
    const why = await bgp.session('N1');
    stream.client.writeLine(JSON.stringify({ cmd: 'mark', name: 'converged', atMs: convergedMs }));
    report('convergence: host death -> router route via N2 (ms)', Object.fromEntries(moved.map((m) => [m.address, round1(m.atMs - deathMs)])));
    report("router's session to N1 after", why);

    const summary = await streamSummary(stream.client, STREAM_MS + 20_000);
    const peerSeen = await peerReport(stream.peer);
    const f = figures(summary, peerSeen, { atMs: deathMs, window: [deathMs - 1000, convergedMs + 2000] });
    printFigures('host death', f);
    const phase = (a: number, b: number) => ({
      channel: phaseLoss(summary, peerSeen, StreamId.channel, a, b),
      indication: phaseLoss(summary, peerSeen, StreamId.indication, a, b),
    });
    const loss = {
      before: phase(0, deathMs - IN_FLIGHT_MS),
      deathToConvergence: phase(deathMs - IN_FLIGHT_MS, convergedMs),
      after: phase(convergedMs, Number.POSITIVE_INFINITY),
    };
    report('lost seqs per phase (before the death, from it to convergence, after)', loss);

    for (const m of moved) assert.equal(m.proto, 'bird', m.line);
    assert.match(why, /BFD session down/, 'the router should have noticed the silent PoP by BFD');
    assertSameAllocations(f, summary);
    // Only what was sent towards the dead host before the routes moved may be lost.
    for (const p of ['before', 'after'] as const) {
      for (const mode of ['channel', 'indication'] as const) {
        const l = loss[p][mode];
        assert.ok(l.sent >= 25, `${p} ${mode}: only ${l.sent} packets sent`);
        assert.deepEqual(l.lostClientToPeer, [], `${p} ${mode}: client->peer lost of ${l.sent}`);
        assert.deepEqual(l.lostPeerToClient, [], `${p} ${mode}: peer->client lost of ${l.sent}`);
      }
    }
  });
});

test('BGP: Redis stops for 20 s, no route is withdrawn, the stream and new Allocates go on, a reroute afterwards resumes the allocations', {
  skip,
  timeout: 150_000,
}, async (t) => {
  const STREAM_MS = 32_000;
  const OUTAGE_MS = 20_000;
  const scene = await setUp(t, undefined, (node) => [...nodeArgs(node, { cluster: true }), '--admin-token', ADMIN_TOKEN]);
  const { topo, bgp, routes, redis } = scene;
  await withDump(topo, async () => {
    const stream = await startStream(scene, STREAM_MS);
    await sleep(2000);
    const from = routes.changes.length;
    const outageMs = nowMs();
    await redis.kill();
    const readiness: Record<NodeName, number[]> = { N1: [], N2: [], N3: [] };
    const probes: unknown[] = [];
    let probed = false;
    while (nowMs() - outageMs < OUTAGE_MS) {
      for (const node of topo.nodeNames) readiness[node].push(await readyz(topo, node));
      if (!probed && nowMs() - outageMs > 5000) {
        probed = true;
        // No answer at all (no route to any node) is a result too: recorded, asserted below.
        probes.push(await allocateProbe(topo).catch((err: Error) => ({ final: 0, error: err.message })));
      }
      await sleep(500);
    }
    const sessions = await Promise.all(topo.nodeNames.map((n) => bgp.session(n)));
    const changedDuringOutage = routes.changesOf(ANYCAST_ADDRESS, from);
    await redis.restart();
    const backMs = nowMs();
    report('during the outage: /readyz statuses', { N1: readiness.N1, N2: readiness.N2 });
    report('during the outage: a new Allocate', probes);
    report(
      'during the outage: route changes in the router',
      changedDuringOutage.map((c) => c.line),
    );
    report("at the outage's end: the router's sessions", sessions);

    // The store is back (empty): the live allocations are written to it again.
    const want = [endpointText(stream.relayed.A), endpointText(stream.relayed.B)].sort();
    let stored: string[] = [];
    for (const end = Date.now() + DEADLINE_MS; Date.now() < end; await sleep(250)) {
      stored = [...(await storedAllocations(topo)).values()];
      if (want.every((w) => stored.includes(w))) break;
    }
    report('store after the outage', { afterMs: Math.round(nowMs() - backMs), stored });

    // A reroute: N1 drains, BGP moves the route, N2 finds the allocations in the store and forwards.
    const fromReroute = routes.changes.length;
    assert.equal(await postDrain(topo, 'N1'), 200, 'POST /drain');
    const moved = await routes.waitVia(ANYCAST_ADDRESS, 'N2', DEADLINE_MS, fromReroute);
    stream.client.writeLine(JSON.stringify({ cmd: 'mark', name: 'reroute', atMs: moved.atMs }));
    await sleep(1000);
    stream.client.writeLine(JSON.stringify({ cmd: 'ops' }));
    const opsDone = await stream.client.waitForJsonLine((r) => r.event === 'ops-done', DEADLINE_MS);
    report('Refresh, CreatePermission, ChannelBind through N2 after the reroute', opsDone.ops);

    const summary = await streamSummary(stream.client, STREAM_MS + 20_000);
    const peerSeen = await peerReport(stream.peer);
    const outage = figures(summary, peerSeen, { atMs: outageMs, window: [outageMs, backMs] });
    const reroute = figures(summary, peerSeen, { atMs: moved.atMs, window: [moved.atMs - 1000, moved.atMs + 3000] });
    printFigures('redis outage', outage);
    printFigures('reroute after the outage', reroute);

    assert.deepEqual(changedDuringOutage, [], 'a route changed while Redis was down');
    for (const node of ['N1', 'N2'] as const) {
      assert.ok(readiness[node].length > 10 && readiness[node].every((c) => c === 200), `${node} /readyz during the outage: ${readiness[node].join(' ')}`);
      assert.ok(!announcerEvents(bgp.speaker(node)).some((e) => e.event === 'withdraw' && Number(e.time) < backMs), `${node} withdrew during the outage`);
    }
    for (const s of sessions) assert.match(s, /Established/);
    assert.equal((probes[0] as { final: number }).final, 200, `a new Allocate during the outage: ${JSON.stringify(probes)}`);
    assert.deepEqual(
      want.filter((w) => !stored.includes(w)),
      [],
      'the live allocations were not written back to the store',
    );
    assert.ok(moved.atMs < stream.startMs + STREAM_MS - 3000, 'the reroute came too late in the stream to be measured');
    assertSameAllocations(reroute, summary);
    assertNoLoss(reroute);
    for (const alloc of ['A', 'B']) {
      for (const method of ['refresh', 'createPermission', 'channelBind']) {
        assert.equal(summary.ops[alloc]?.[method]?.code, 200, `${method} on ${alloc} after the reroute: ${JSON.stringify(summary.ops)}`);
      }
    }
  });
});

/** Pids of the processes whose parent is `ppid` and whose command is `name`. */
async function childPids(topo: Topology, ppid: number, name: string): Promise<number[]> {
  const r = await topo.exec('R', 'ps', ['-o', 'pid=,comm=', '--ppid', String(ppid)]);
  return r.stdout
    .split('\n')
    .map((l) => l.trim().split(/\s+/))
    .filter(([, comm]) => comm === name)
    .map(([pid]) => Number(pid));
}

test("BGP: the sidecar fails closed: when N1's announcer dies its bird goes too and the router withdraws N1's route", { skip, timeout: 60_000 }, async (t) => {
  const scene = await setUp(t, undefined, (node) => nodeArgs(node, { cluster: true }));
  const { topo, bgp, routes } = scene;
  await withDump(topo, async () => {
    const speaker = bgp.speaker('N1');
    const [announcer] = await childPids(topo, speaker.process.pid, 'node');
    assert.ok(announcer !== undefined, 'no announcer under the entry point');
    const from = routes.changes.length;
    const killMs = nowMs();
    process.kill(announcer, 'SIGKILL');
    const moved = await routes.waitVia(ANYCAST_ADDRESS, 'N2', DEADLINE_MS, from);
    const exit = await exitedWithin(speaker.process, DEADLINE_MS);
    const session = await bgp.session('N1');
    report('announcer killed -> route via N2 (ms)', round1(moved.atMs - killMs));
    report('sidecar exit', exit ?? 'still running');
    report("router's session to N1", session);
    assert.ok(exit !== undefined && exit.code !== 0, `the entry point did not exit non-zero: ${JSON.stringify(exit)}`);
    assert.doesNotMatch(session, /Established/, 'bird did not go down with its announcer');
    assert.equal(moved.proto, 'bird');
  });
});

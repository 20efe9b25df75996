// Anycast forward mode across a BGP-style reroute, and an allocation store
// outage, in network namespaces (topology in test/helpers/netns.ts). Needs
// root, iproute2 and redis-server; skipped otherwise. Run with
// `npm run test:anycast`.
//
// 1. The client streams to the peer through an allocation on N1 (ChannelData
//    on one allocation, Send/Data indications on another); midway the router
//    sends the anycast address to N2. N2 must forward to N1 over the mesh and
//    N1 answer from the anycast address: same relayed address, no 437, no
//    438 (one request after the switch carries a nonce N2 issued and is
//    checked by N1), nothing lost, and Refresh/CreatePermission/ChannelBind
//    after the switch succeed.
// 2. Redis is killed for 10 s mid-stream (no reroute): the live allocation
//    keeps relaying without loss, the nodes fail open (docs/architecture.md
//    §5, §6): a new Allocate succeeds, /readyz (N1's and N2's) stays 200 and
//    anyturn_store_degraded is 1 during the outage; once Redis is back the
//    restarted (empty) Redis gets the live allocations written back, and a
//    reroute to N2 after the outage resumes them (N2 finds them there).

import { test, type TestContext } from 'node:test';
import assert from 'node:assert/strict';
import { Topology, netnsUnavailableReason, type NodeName } from '../helpers/netns.js';
import {
  allocateProbe,
  withDump,
  figures,
  metrics,
  type Figures,
  peerReport,
  pollReadyz,
  readyz,
  startNode,
  storedAllocations,
  startPeer,
  startRedis,
  startStreamClient,
  streamSummary,
} from './cluster.js';
import { nowMs } from './wire.js';

const skip = netnsUnavailableReason();
/**
 * Packets lost per mode and direction: none. In forward mode a reroute moves
 * only the client->server leg; packets already on their way to N1 still reach
 * it, and N2 holds the packets of an unknown 5-tuple while it looks it up
 * (cluster/router.ts), then forwards them. Peer->client never moves (N1
 * answers from the anycast address). Redis is not on the data path, so its
 * outage loses nothing either.
 */
const MAX_LOST = 0;
/**
 * What a node does while the allocation store is down: it fails open. New
 * Allocates succeed (local-only until the store returns) and /readyz stays 200,
 * so the BGP speaker keeps the route: one Redis behind every PoP must not
 * withdraw them all at once.
 */
const STORE_DOWN_ALLOCATE_CODE = 200;
const STORE_DOWN_READYZ_CODE = 200;

function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

function endpointText(e: { address: string; port: number }): string {
  return `${e.address}:${e.port}`;
}

/** Prints a figure line as it is measured (the runner shows a test file's stdout under either reporter). */
function report(_t: TestContext, label: string, value: unknown): void {
  console.log(`[anycast] ${label}: ${JSON.stringify(value)}`);
}

/** Waits until every node says ready (store connected, heartbeats written). */
async function waitReady(topo: Topology, nodes: readonly NodeName[]): Promise<void> {
  for (const node of nodes) {
    const seen = await pollReadyz(topo, node, 200, 15_000);
    assert.equal(seen[seen.length - 1]?.code, 200, `${node} /readyz never 200: ${JSON.stringify(seen)}`);
  }
}

function assertNoLoss(f: Figures): void {
  for (const mode of ['channel', 'indication'] as const) {
    const m = f[mode];
    assert.ok(m.lostClientToPeer <= MAX_LOST, `${mode}: client->peer lost ${JSON.stringify(m.lostSeqClientToPeer)} of ${m.sent}`);
    assert.ok(m.lostPeerToClient <= MAX_LOST, `${mode}: peer->client lost ${JSON.stringify(m.lostSeqPeerToClient)} of ${m.sent}`);
  }
}

/** Polls the store until it holds `expected` relayed addresses (or the deadline); the last view. */
async function waitStored(topo: Topology, expected: readonly string[], deadlineMs: number): Promise<string[]> {
  const end = Date.now() + deadlineMs;
  for (;;) {
    const stored = [...(await storedAllocations(topo)).values()].sort();
    if (expected.every((e) => stored.includes(e)) || Date.now() > end) return stored;
    await sleep(250);
  }
}

test('forward mode: an allocation on N1 survives a reroute of the anycast address to N2', { skip, timeout: 120_000 }, async (t) => {
  const STREAM_MS = 12_000;
  const topo = await Topology.build({ nodes: 2 });
  t.after(() => topo.teardown());
  await withDump(topo, async () => {
    await startRedis(topo);
    await startNode(topo, 'N1', { cluster: true });
    await startNode(topo, 'N2', { cluster: true });
    await waitReady(topo, ['N1', 'N2']);
    const peer = await startPeer(topo);
    const client = startStreamClient(topo, STREAM_MS);
    const allocated = await client.waitForJsonLine((r) => r.event === 'allocated' || r.event === 'error', 20_000);
    assert.equal(allocated.event, 'allocated', JSON.stringify(allocated));
    await client.waitForJsonLine((r) => r.event === 'streaming', 10_000);

    await sleep(STREAM_MS / 2);
    const rerouteStartMs = nowMs();
    await topo.reroute('N2');
    const switchMs = nowMs();
    client.writeLine(JSON.stringify({ cmd: 'mark', name: 'switch', atMs: switchMs }));
    report(t, 'reroute', { to: 'N2', commandMs: Math.round((switchMs - rerouteStartMs) * 10) / 10 });
    // The first packets after the switch have reached N2 by now; then the control requests.
    await sleep(1000);
    client.writeLine(JSON.stringify({ cmd: 'ops' }));

    const summary = await streamSummary(client, STREAM_MS + 30_000);
    const peerSeen = await peerReport(peer);
    const f = figures(summary, peerSeen, { atMs: switchMs, window: [switchMs - 1000, switchMs + 3000] });
    const m1 = await metrics(topo, 'N1');
    const m2 = await metrics(topo, 'N2');
    const cluster = {
      n2Forwarded: m2.get('anyturn_mesh_forwarded_packets_total'),
      n2Lookups: m2.get('anyturn_store_lookups_total'),
      n2Resumed: m2.get('anyturn_allocations_resumed_total'),
      n1MeshReceived: m1.get('anyturn_mesh_received_packets_total'),
      // Labelled by reason: the sum over the reasons.
      n1MeshRejected: [...m1].filter(([k]) => k.startsWith('anyturn_mesh_rejected_frames_total{')).reduce((n, [, v]) => n + v, 0),
    };

    report(t, 'relayed', summary.relayed);
    report(t, 'gap ms (last echo before the switch -> first after; max silence within [-1 s, +3 s])', {
      channel: {
        clientToPeer: f.channel.gapClientToPeerMs,
        peerToClient: f.channel.gapPeerToClientMs,
        maxClientToPeer: f.channel.maxGapClientToPeerMs,
        maxPeerToClient: f.channel.maxGapPeerToClientMs,
      },
      indication: {
        clientToPeer: f.indication.gapClientToPeerMs,
        peerToClient: f.indication.gapPeerToClientMs,
        maxClientToPeer: f.indication.maxGapClientToPeerMs,
        maxPeerToClient: f.indication.maxGapPeerToClientMs,
      },
      bothModes: { clientToPeer: f.total.gapClientToPeerMs, peerToClient: f.total.gapPeerToClientMs },
    });
    report(t, 'lost', {
      channel: { sent: f.channel.sent, clientToPeer: f.channel.lostSeqClientToPeer, peerToClient: f.channel.lostSeqPeerToClient },
      indication: { sent: f.indication.sent, clientToPeer: f.indication.lostSeqClientToPeer, peerToClient: f.indication.lostSeqPeerToClient },
    });
    report(t, 'after the switch', {
      ops: summary.ops,
      newChannelEchoes: summary.newChannelEchoes,
      errorCodes: summary.errorCodes,
      got437: summary.got437,
      foreignSources: summary.foreignSources,
      wrongKind: summary.wrongKind,
    });
    report(t, 'peer saw', { channel: f.channel.peerSources, indication: f.indication.peerSources });
    report(t, 'cluster metrics', cluster);

    // The reroute really moved the client's packets to N2, which forwarded them to N1.
    assert.ok((cluster.n2Forwarded ?? 0) > 0, `N2 forwarded nothing over the mesh: ${JSON.stringify(cluster)}`);
    // Same relayed address before and after: the peer saw exactly one source per allocation.
    assert.deepEqual(f.channel.peerSources, [endpointText(summary.relayed.A)], 'channel-mode relayed address changed');
    assert.deepEqual(f.indication.peerSources, [endpointText(summary.relayed.B)], 'indication-mode relayed address changed');
    assert.deepEqual(f.channel.peerSourcesAfter, [endpointText(summary.relayed.A)], 'no channel-mode packet reached the peer after the switch');
    assert.deepEqual(f.indication.peerSourcesAfter, [endpointText(summary.relayed.B)], 'no indication-mode packet reached the peer after the switch');
    assert.equal(summary.got437, 0, `437 received: ${JSON.stringify(summary.errorCodes)}`);
    assertNoLoss(f);
    for (const alloc of ['A', 'B']) {
      for (const method of ['refresh', 'createPermission', 'channelBind']) {
        assert.equal(summary.ops[alloc]?.[method]?.code, 200, `${method} on allocation ${alloc} after the switch: ${JSON.stringify(summary.ops)}`);
      }
      // N2 answered the unauthenticated Allocate itself: CreatePermission and ChannelBind
      // carried N2's nonce to the owner N1.
      assert.deepEqual(summary.ops[alloc]?.challenge, { code: 401 }, `challenge on ${alloc}: ${JSON.stringify(summary.ops)}`);
    }
    // No 438, with a nonce from either node. The only errors: the 401s to each socket's first
    // Allocate (no credentials yet) and to the two challenges.
    assert.equal(summary.got438, 0, `438 received: ${JSON.stringify(summary.errorCodes)}`);
    assert.deepEqual(summary.errorCodes, { '401': 4 }, 'error answers other than the four 401 challenges');
    // The channels bound after the switch relay both ways, and every answer came from the anycast address.
    assert.deepEqual(summary.newChannelEchoes, { '2': 5, '3': 5 }, 'probes over the channels bound after the switch');
    assert.deepEqual(summary.foreignSources, {}, 'datagrams from an address other than the anycast server address');
    assert.equal(summary.wrongKind, 0);
  });
});

test('store outage: Redis down for 10 s keeps live allocations relaying, new Allocates succeed and /readyz stays 200, then they are written back and a reroute resumes them', {
  skip,
  timeout: 180_000,
}, async (t) => {
  const STREAM_MS = 36_000;
  const OUTAGE_MS = 10_000;
  const topo = await Topology.build({ nodes: 2 });
  t.after(() => topo.teardown());
  await withDump(topo, async () => {
    const redis = await startRedis(topo);
    await startNode(topo, 'N1', { cluster: true });
    await startNode(topo, 'N2', { cluster: true });
    await waitReady(topo, ['N1', 'N2']);
    const peer = await startPeer(topo);
    const client = startStreamClient(topo, STREAM_MS);
    const allocated = await client.waitForJsonLine((r) => r.event === 'allocated' || r.event === 'error', 20_000);
    assert.equal(allocated.event, 'allocated', JSON.stringify(allocated));
    const relayed = allocated.relayed as { A: { address: string; port: number }; B: { address: string; port: number } };
    const liveRelayed = [endpointText(relayed.A), endpointText(relayed.B)].sort();
    await client.waitForJsonLine((r) => r.event === 'streaming', 10_000);
    const storedBefore = await waitStored(topo, liveRelayed, 5000);
    assert.deepEqual(storedBefore, liveRelayed, 'the live allocations are in the store before the outage');

    await sleep(4000);
    const killMs = nowMs();
    await redis.kill();
    client.writeLine(JSON.stringify({ cmd: 'mark', name: 'redis-killed', atMs: killMs }));
    await sleep(2000);
    const duringProbe = await allocateProbe(topo);
    const readyDuring: { atMs: number; code: number }[] = [];
    for (let i = 0; i < 3; i++) {
      readyDuring.push({ atMs: Date.now(), code: await readyz(topo, 'N1') });
      await sleep(1500);
    }
    const n2ReadyDuring = await readyz(topo, 'N2');
    const degradedDuring = [(await metrics(topo, 'N1')).get('anyturn_store_degraded'), (await metrics(topo, 'N2')).get('anyturn_store_degraded')];
    await sleep(Math.max(0, killMs + OUTAGE_MS - nowMs()));
    const restartMs = nowMs();
    await redis.restart();
    client.writeLine(JSON.stringify({ cmd: 'mark', name: 'redis-restarted', atMs: restartMs }));
    // The restarted Redis is a new process without persistence: empty. N1 writes
    // its live allocations back (the probe's own allocation may come and go).
    const storedAfter = await waitStored(topo, liveRelayed, 15_000);
    // The client cannot know when the node has reconnected: retry for a while.
    const [afterProbe, readyAfter] = await Promise.all([allocateProbe(topo, { until: 200, deadlineMs: 12_000 }), pollReadyz(topo, 'N1', 200, 12_000)]);
    const n2ReadyAfter = await pollReadyz(topo, 'N2', 200, 12_000);

    // A reroute after the outage: N2 finds the allocations in the restarted store and forwards to N1.
    const rerouteMs = nowMs();
    await topo.reroute('N2');
    const switchMs = nowMs();
    client.writeLine(JSON.stringify({ cmd: 'mark', name: 'switch-after-outage', atMs: switchMs }));
    report(t, 'reroute after the outage', { afterRestartMs: Math.round(rerouteMs - restartMs), commandMs: Math.round((switchMs - rerouteMs) * 10) / 10 });

    const summary = await streamSummary(client, STREAM_MS + 30_000);
    const peerSeen = await peerReport(peer);
    const f = figures(summary, peerSeen, { atMs: switchMs, window: [killMs - 1000, restartMs + 5000] });
    const m1 = await metrics(topo, 'N1');
    const m2 = await metrics(topo, 'N2');
    const n2 = { forwarded: m2.get('anyturn_mesh_forwarded_packets_total'), resumed: m2.get('anyturn_allocations_resumed_total') };

    report(t, 'outage', { killedAfterStreamingMs: 4000, outageMs: Math.round(restartMs - killMs) });
    report(t, 'allocate during the outage', duringProbe.attempts);
    report(t, 'allocate after Redis is back', {
      attempts: afterProbe.attempts,
      firstSuccessAfterRestartMs: afterProbe.final === 200 ? Math.round(afterProbe.attempts[afterProbe.attempts.length - 1]!.atMs - restartMs) : undefined,
    });
    report(
      t,
      'N1 /readyz during',
      readyDuring.map((r) => r.code),
    );
    report(t, 'N2 /readyz during', n2ReadyDuring);
    report(t, 'anyturn_store_degraded during (N1, N2)', degradedDuring);
    report(
      t,
      'N1 /readyz after',
      readyAfter.map((r) => ({ code: r.code, afterRestartMs: Math.round(r.atMs - restartMs) })),
    );
    report(t, 'lost', {
      channel: {
        sent: f.channel.sent,
        clientToPeer: f.channel.lostSeqClientToPeer,
        peerToClient: f.channel.lostSeqPeerToClient,
        maxSilenceMs: [f.channel.maxGapClientToPeerMs, f.channel.maxGapPeerToClientMs],
      },
      indication: {
        sent: f.indication.sent,
        clientToPeer: f.indication.lostSeqClientToPeer,
        peerToClient: f.indication.lostSeqPeerToClient,
        maxSilenceMs: [f.indication.maxGapClientToPeerMs, f.indication.maxGapPeerToClientMs],
      },
    });
    report(t, 'client saw', { errorCodes: summary.errorCodes, got437: summary.got437, foreignSources: summary.foreignSources });
    report(t, 'N1 metrics', {
      storeUp: m1.get('anyturn_store_up{store="redis"}'),
      storeErrors: m1.get('anyturn_store_errors_total'),
      requests: [...m1].filter(([k]) => k.startsWith('anyturn_requests_total') && !k.includes('code="200"')),
    });

    report(t, 'store: live allocations', { before: storedBefore, afterRestart: storedAfter });
    report(t, 'N2 after the reroute', n2);

    assert.equal(duringProbe.final, STORE_DOWN_ALLOCATE_CODE, `Allocate during the outage: ${duringProbe.raw}`);
    for (const r of readyDuring) assert.equal(r.code, STORE_DOWN_READYZ_CODE, `N1 /readyz during the outage: ${JSON.stringify(readyDuring)}`);
    assert.equal(n2ReadyDuring, STORE_DOWN_READYZ_CODE, 'N2 /readyz during the outage');
    assert.deepEqual(degradedDuring, [1, 1], 'anyturn_store_degraded on N1 and N2 during the outage');
    assert.equal(m1.get('anyturn_store_degraded'), 0, 'N1 no longer degraded after the outage');
    assert.equal(afterProbe.final, 200, `Allocate after Redis is back: ${afterProbe.raw}`);
    assert.equal(readyAfter[readyAfter.length - 1]?.code, 200, `N1 /readyz after Redis is back: ${JSON.stringify(readyAfter)}`);
    assert.equal(n2ReadyAfter[n2ReadyAfter.length - 1]?.code, 200, `N2 /readyz after Redis is back: ${JSON.stringify(n2ReadyAfter)}`);
    for (const r of liveRelayed) assert.ok(storedAfter.includes(r), `${r} not written back to the restarted Redis: ${JSON.stringify(storedAfter)}`);
    assert.deepEqual(f.channel.peerSources, [endpointText(summary.relayed.A)]);
    assert.deepEqual(f.indication.peerSources, [endpointText(summary.relayed.B)]);
    // The reroute after the outage resumed both allocations through N2.
    assert.deepEqual(f.channel.peerSourcesAfter, [endpointText(summary.relayed.A)], 'no channel-mode packet reached the peer after the reroute');
    assert.deepEqual(f.indication.peerSourcesAfter, [endpointText(summary.relayed.B)], 'no indication-mode packet reached the peer after the reroute');
    assert.ok((n2.forwarded ?? 0) > 0, `N2 forwarded nothing after the reroute: ${JSON.stringify(n2)}`);
    assert.equal(summary.got437, 0, `437 received: ${JSON.stringify(summary.errorCodes)}`);
    assert.equal(summary.got438, 0, `438 received: ${JSON.stringify(summary.errorCodes)}`);
    assertNoLoss(f);
  });
});

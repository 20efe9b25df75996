// Anycast forward mode across a BGP-style reroute, and an allocation store
// outage, in network namespaces (ARCHITECTURE.md §4, §6; topology in
// test/helpers/netns.ts). Needs root, iproute2 and redis-server;
// skipped otherwise. Run with `npm run test:anycast`.
//
// 1. The client streams to the peer through an allocation on N1 (ChannelData
//    on one allocation, Send/Data indications on another); midway the router
//    sends the anycast address to N2. N2 must forward to N1 over the mesh and
//    N1 answer from the anycast address: same relayed address, no 437, at
//    most 2 packets lost per direction, and Refresh/CreatePermission/
//    ChannelBind after the switch succeed.
// 2. Redis is killed for 10 s mid-stream (no reroute): the live allocation
//    keeps relaying, a new Allocate gets 508 and /readyz is not 200 during
//    the outage; both recover once Redis is back.

import { test, type TestContext } from 'node:test';
import assert from 'node:assert/strict';
import { Topology, netnsUnavailableReason, type NodeName } from '../helpers/netns.js';
import {
  allocateProbe,
  dumpAll,
  figures,
  metrics,
  peerReport,
  pollReadyz,
  readyz,
  startNode,
  startPeer,
  startRedis,
  startStreamClient,
  streamSummary,
} from './cluster.js';
import { nowMs } from './wire.js';

const skip = netnsUnavailableReason();
const MAX_LOST_PER_DIRECTION = 2;

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

async function withDump<T>(topo: Topology, body: () => Promise<T>): Promise<T> {
  try {
    return await body();
  } catch (err) {
    console.error(dumpAll(topo));
    throw err;
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
    const allocated = await client.waitForJsonLine((r) => r['event'] === 'allocated' || r['event'] === 'error', 20_000);
    assert.equal(allocated['event'], 'allocated', JSON.stringify(allocated));
    await client.waitForJsonLine((r) => r['event'] === 'streaming', 10_000);

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
      channel: { clientToPeer: f.channel.gapClientToPeerMs, peerToClient: f.channel.gapPeerToClientMs, maxClientToPeer: f.channel.maxGapClientToPeerMs, maxPeerToClient: f.channel.maxGapPeerToClientMs },
      indication: { clientToPeer: f.indication.gapClientToPeerMs, peerToClient: f.indication.gapPeerToClientMs, maxClientToPeer: f.indication.maxGapClientToPeerMs, maxPeerToClient: f.indication.maxGapPeerToClientMs },
      bothModes: { clientToPeer: f.total.gapClientToPeerMs, peerToClient: f.total.gapPeerToClientMs },
    });
    report(t, 'lost', {
      channel: { sent: f.channel.sent, clientToPeer: f.channel.lostSeqClientToPeer, peerToClient: f.channel.lostSeqPeerToClient },
      indication: { sent: f.indication.sent, clientToPeer: f.indication.lostSeqClientToPeer, peerToClient: f.indication.lostSeqPeerToClient },
    });
    report(t, 'after the switch', { ops: summary.ops, newChannelEchoes: summary.newChannelEchoes, errorCodes: summary.errorCodes, got437: summary.got437, foreignSources: summary.foreignSources, wrongKind: summary.wrongKind });
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
    assert.ok(f.total.lostClientToPeer <= MAX_LOST_PER_DIRECTION, `client->peer lost ${f.total.lostClientToPeer}: ${JSON.stringify(f)}`);
    assert.ok(f.total.lostPeerToClient <= MAX_LOST_PER_DIRECTION, `peer->client lost ${f.total.lostPeerToClient}: ${JSON.stringify(f)}`);
    for (const alloc of ['A', 'B']) {
      for (const method of ['refresh', 'createPermission', 'channelBind']) {
        assert.equal(summary.ops[alloc]?.[method]?.code, 200, `${method} on allocation ${alloc} after the switch: ${JSON.stringify(summary.ops)}`);
      }
    }
    // The channels bound after the switch relay both ways, and every answer came from the anycast address.
    assert.deepEqual(summary.newChannelEchoes, { '2': 5, '3': 5 }, 'probes over the channels bound after the switch');
    assert.deepEqual(summary.foreignSources, {}, 'datagrams from an address other than the anycast server address');
    assert.equal(summary.wrongKind, 0);
  });
});

test('store outage: Redis down for 10 s keeps live allocations relaying, refuses new ones with 508, and recovers', { skip, timeout: 150_000 }, async (t) => {
  const STREAM_MS = 30_000;
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
    const allocated = await client.waitForJsonLine((r) => r['event'] === 'allocated' || r['event'] === 'error', 20_000);
    assert.equal(allocated['event'], 'allocated', JSON.stringify(allocated));
    await client.waitForJsonLine((r) => r['event'] === 'streaming', 10_000);

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
    await sleep(Math.max(0, killMs + OUTAGE_MS - nowMs()));
    const restartMs = nowMs();
    await redis.restart();
    client.writeLine(JSON.stringify({ cmd: 'mark', name: 'redis-restarted', atMs: restartMs }));
    // The client cannot know when the node has reconnected: retry for a while.
    const [afterProbe, readyAfter] = await Promise.all([allocateProbe(topo, { until: 200, deadlineMs: 12_000 }), pollReadyz(topo, 'N1', 200, 12_000)]);

    const summary = await streamSummary(client, STREAM_MS + 30_000);
    const peerSeen = await peerReport(peer);
    const f = figures(summary, peerSeen, { window: [killMs - 1000, restartMs + 5000] });
    const m1 = await metrics(topo, 'N1');

    report(t, 'outage', { killedAfterStreamingMs: 4000, outageMs: Math.round(restartMs - killMs) });
    report(t, 'allocate during the outage', duringProbe.attempts);
    report(t, 'allocate after Redis is back', { attempts: afterProbe.attempts, firstSuccessAfterRestartMs: afterProbe.final === 200 ? Math.round(afterProbe.attempts[afterProbe.attempts.length - 1]!.atMs - restartMs) : undefined });
    report(t, 'N1 /readyz during', readyDuring.map((r) => r.code));
    report(t, 'N2 /readyz during', n2ReadyDuring);
    report(t, 'N1 /readyz after', readyAfter.map((r) => ({ code: r.code, afterRestartMs: Math.round(r.atMs - restartMs) })));
    report(t, 'lost', {
      channel: { sent: f.channel.sent, clientToPeer: f.channel.lostSeqClientToPeer, peerToClient: f.channel.lostSeqPeerToClient, maxSilenceMs: [f.channel.maxGapClientToPeerMs, f.channel.maxGapPeerToClientMs] },
      indication: { sent: f.indication.sent, clientToPeer: f.indication.lostSeqClientToPeer, peerToClient: f.indication.lostSeqPeerToClient, maxSilenceMs: [f.indication.maxGapClientToPeerMs, f.indication.maxGapPeerToClientMs] },
    });
    report(t, 'client saw', { errorCodes: summary.errorCodes, got437: summary.got437, foreignSources: summary.foreignSources });
    report(t, 'N1 metrics', { storeUp: m1.get('anyturn_store_up{store="redis"}'), storeErrors: m1.get('anyturn_store_errors_total'), requests: [...m1].filter(([k]) => k.startsWith('anyturn_requests_total') && !k.includes('code="200"')) });

    assert.equal(duringProbe.final, 508, `Allocate during the outage: ${duringProbe.raw}`);
    for (const r of readyDuring) assert.notEqual(r.code, 200, `/readyz during the outage: ${JSON.stringify(readyDuring)}`);
    assert.equal(afterProbe.final, 200, `Allocate after Redis is back: ${afterProbe.raw}`);
    assert.equal(readyAfter[readyAfter.length - 1]?.code, 200, `/readyz after Redis is back: ${JSON.stringify(readyAfter)}`);
    assert.deepEqual(f.channel.peerSources, [endpointText(summary.relayed.A)]);
    assert.deepEqual(f.indication.peerSources, [endpointText(summary.relayed.B)]);
    assert.equal(summary.got437, 0, `437 received: ${JSON.stringify(summary.errorCodes)}`);
    assert.ok(f.total.lostClientToPeer <= MAX_LOST_PER_DIRECTION, `client->peer lost ${f.total.lostClientToPeer}: ${JSON.stringify(f)}`);
    assert.ok(f.total.lostPeerToClient <= MAX_LOST_PER_DIRECTION, `peer->client lost ${f.total.lostPeerToClient}: ${JSON.stringify(f)}`);
  });
});

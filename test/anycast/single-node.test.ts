// The control for reroute.test.ts: the same stream client, echo peer and
// analysis against ONE anyturn node without cluster flags and without a
// reroute. If this fails, the harness is broken, not the cluster.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Topology, netnsUnavailableReason } from '../helpers/netns.js';
import { dumpAll, figures, peerReport, startNode, startPeer, startStreamClient, streamSummary } from './cluster.js';
import { nowMs } from './wire.js';

const skip = netnsUnavailableReason();
const STREAM_MS = 6000;

test('single node, no cluster: the stream client relays both modes and its post-mark operations succeed', { skip, timeout: 90_000 }, async (t) => {
  const topo = await Topology.build();
  t.after(() => topo.teardown());
  try {
    await startNode(topo, 'N1', { cluster: false });
    const peer = await startPeer(topo);
    const client = startStreamClient(topo, STREAM_MS);
    const allocated = await client.waitForJsonLine((r) => r.event === 'allocated' || r.event === 'error', 20_000);
    assert.equal(allocated.event, 'allocated', JSON.stringify(allocated));
    await client.waitForJsonLine((r) => r.event === 'streaming', 10_000);
    await new Promise((r) => setTimeout(r, STREAM_MS / 2));
    const markMs = nowMs();
    client.writeLine(JSON.stringify({ cmd: 'mark', name: 'mid', atMs: markMs }));
    client.writeLine(JSON.stringify({ cmd: 'ops' }));
    const summary = await streamSummary(client, STREAM_MS + 20_000);
    const report = await peerReport(peer);
    const f = figures(summary, report, { atMs: markMs });
    const show = {
      relayed: summary.relayed,
      figures: f,
      ops: summary.ops,
      newChannelEchoes: summary.newChannelEchoes,
      errorCodes: summary.errorCodes,
      foreignSources: summary.foreignSources,
      wrongKind: summary.wrongKind,
    };
    t.diagnostic(JSON.stringify(show));
    for (const mode of ['channel', 'indication'] as const) {
      assert.ok(f[mode].sent > 100, `${mode}: sent ${f[mode].sent}`);
      assert.equal(f[mode].lostClientToPeer + f[mode].lostPeerToClient, 0, `${mode}: ${JSON.stringify(f[mode])}`);
    }
    assert.deepEqual(f.channel.peerSources, [`${summary.relayed.A.address}:${summary.relayed.A.port}`]);
    assert.deepEqual(f.indication.peerSources, [`${summary.relayed.B.address}:${summary.relayed.B.port}`]);
    for (const alloc of ['A', 'B'])
      for (const m of ['refresh', 'createPermission', 'channelBind'])
        assert.equal(summary.ops[alloc]?.[m]?.code, 200, `${alloc} ${m}: ${JSON.stringify(summary.ops)}`);
    assert.deepEqual(summary.newChannelEchoes, { '2': 5, '3': 5 });
    assert.equal(summary.got437, 0);
    assert.deepEqual(summary.foreignSources, {});
    assert.equal(summary.wrongKind, 0);
  } catch (err) {
    console.error(dumpAll(topo));
    throw err;
  }
});

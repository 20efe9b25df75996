// The kernel data plane (docs/dataplane.md) under the real server, in network namespaces
// (test/helpers/netns.ts): client C, node N1, peer P, all behind the router R. N1 runs
// `--dataplane kernel --dataplane-interface eth0` (its service address lives on lo, so the
// interface is named). The stream client (test/anycast/stream-client.ts) streams ChannelData
// on allocation A and Send indications on allocation B: A's packets must be relayed by the
// kernel both ways, B's by JavaScript, every one echoed; Refresh 0 takes A's entries out.
// Without CAP_BPF/CAP_NET_ADMIN, --dataplane auto relays in JavaScript and says why, and
// --dataplane kernel refuses to start naming the reason.

import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { kernelDataplaneUnavailableReason, WITHOUT_BPF_CAPABILITIES } from '../helpers/dataplane.js';
import { Topology, jsonLines, netnsUnavailableReason } from '../helpers/netns.js';
import { LOOPBACK_V4, parseLogLines, runToCompletion, ANYTURN_CLI_PATH, startAnyturn, startTurnutilsPeer, stopAfter } from '../helpers/anyturn-process.js';
import { TestTurnClient } from '../helpers/turn-client.js';
import { metrics, peerReport, startNode, startPeer, startStreamClient, streamSummary, withDump } from '../anycast/cluster.js';
import { PROBE_LENGTH, Stream } from '../anycast/wire.js';

const skip = netnsUnavailableReason() ?? kernelDataplaneUnavailableReason();
const STREAM_MS = 4000;

const TO_PEER = 'anyturn_dataplane_kernel_packets_total{event="relayed_to_peer"}';
const TO_CLIENT = 'anyturn_dataplane_kernel_packets_total{event="relayed_to_client"}';
const RELAYED_TO_PEER = 'anyturn_relayed_packets_total{direction="client_to_peer"}';
const RELAYED_TO_CLIENT = 'anyturn_relayed_packets_total{direction="peer_to_client"}';
const RELAYED_BYTES_TO_PEER = 'anyturn_relayed_bytes_total{direction="client_to_peer"}';
const RELAYED_BYTES_TO_CLIENT = 'anyturn_relayed_bytes_total{direction="peer_to_client"}';
const KERNEL_CHANNELS = 'anyturn_dataplane_kernel_channels';
const REFUSED = 'anyturn_dataplane_kernel_refused_total';

function value(m: Map<string, number>, name: string): number {
  return m.get(name) ?? 0;
}

describe('kernel data plane: the server in namespaces', { skip, timeout: 120_000 }, () => {
  let topo: Topology;
  before(async () => {
    topo = await Topology.build({ softwareChecksums: true });
  });
  after(async () => {
    await topo?.teardown();
  });

  it('relays ChannelData in the kernel both ways, Send indications in JavaScript, and Refresh 0 takes the entries out', async () => {
    await withDump(topo, async () => {
      const node = await startNode(topo, 'N1', { cluster: false, dataplane: 'kernel' });
      const attached = jsonLines(node.stdout()).find((r) => r.msg === 'kernel data plane attached');
      assert.ok(attached, 'no "kernel data plane attached" log line');
      const peer = await startPeer(topo);
      const client = startStreamClient(topo, STREAM_MS, 50, { release: true });
      const summary = await streamSummary(client, STREAM_MS + 20_000);
      const echoes = await peerReport(peer);
      const channel = summary.packets.filter((p) => p[1] === Stream.channel);
      const indication = summary.packets.filter((p) => p[1] === Stream.indication);
      assert.ok(channel.length > 0 && indication.length > 0, 'both streams sent');
      assert.deepEqual(
        summary.packets.filter((p) => p[3] < 0).map((p) => p[0]),
        [],
        'every packet came back',
      );
      assert.equal(summary.wrongKind, 0, 'ChannelData answered as ChannelData, Send indications as Data indications');
      assert.deepEqual(summary.released, { A: { code: 200 }, B: { code: 200 } });
      assert.ok(echoes.probes.length >= summary.packets.length, 'the peer saw every packet');

      // The counters are read back once a second: wait for a read after the last packet.
      await new Promise((r) => setTimeout(r, 2500));
      const m = await metrics(topo, 'N1');
      // The kernel relayed every ChannelData and its echo, and nothing else...
      assert.equal(value(m, TO_PEER), channel.length, `kernel to_peer\n${[...m].filter(([k]) => k.includes('dataplane')).join('\n')}`);
      assert.equal(value(m, TO_CLIENT), channel.length, 'kernel to_client');
      // ...and user space relayed exactly the Send indications and their Data indications.
      assert.equal(value(m, RELAYED_TO_PEER) - value(m, TO_PEER), indication.length, 'JavaScript relayed the Send indications only');
      assert.equal(value(m, RELAYED_TO_CLIENT) - value(m, TO_CLIENT), indication.length, 'JavaScript relayed the Data indications only');
      assert.equal(value(m, KERNEL_CHANNELS), 0, 'Refresh 0 removed the channel entries');
      // The deletion log of A (the channel's allocation) has what the kernel relayed for it,
      // its entries' final counts read after Refresh 0 took them out; B (indications) none.
      const deleted = jsonLines(node.stdout()).filter((r) => r.msg === 'allocation deleted');
      assert.equal(deleted.length, 2, 'both allocations logged their deletion');
      const kernelLogged = deleted.filter((r) => r.kernelPackets !== undefined);
      assert.equal(kernelLogged.length, 1, `one deletion log with kernel figures\n${JSON.stringify(deleted)}`);
      assert.equal(kernelLogged[0]?.kernelPackets, 2 * channel.length, 'every ChannelData and its echo');
      assert.equal(kernelLogged[0]?.kernelBytes, 2 * channel.length * PROBE_LENGTH, 'and their payload bytes');
      // The kernel's bytes reach anyturn_relayed_bytes_total from the program's totals.
      assert.equal(value(m, RELAYED_BYTES_TO_PEER), (channel.length + indication.length) * PROBE_LENGTH, 'bytes to peers: kernel and JavaScript');
      assert.equal(value(m, RELAYED_BYTES_TO_CLIENT), (channel.length + indication.length) * PROBE_LENGTH, 'bytes to the client: kernel and JavaScript');
      await Promise.all([node.stop(), peer.stop()]);
    });
  });

  it('past --dataplane-channels relays the next channel in JavaScript, counted and logged once', async () => {
    await withDump(topo, async () => {
      const node = await startNode(topo, 'N1', { cluster: false, dataplane: 'kernel', args: ['--dataplane-channels', '1'] });
      const peer = await startPeer(topo);
      // Two clients, each with a channel (and an allocation of Send indications): room for one channel.
      const clients = [startStreamClient(topo, STREAM_MS, 50, { release: true }), startStreamClient(topo, STREAM_MS, 50, { release: true })];
      const summaries = await Promise.all(clients.map((c) => streamSummary(c, STREAM_MS + 20_000)));
      await peerReport(peer);
      for (const summary of summaries) {
        assert.deepEqual(
          summary.packets.filter((p) => p[3] < 0).map((p) => p[0]),
          [],
          'every packet came back, through the kernel or not',
        );
      }
      const channels = summaries.map((s) => s.packets.filter((p) => p[1] === Stream.channel).length);
      await new Promise((r) => setTimeout(r, 2500));
      const m = await metrics(topo, 'N1');
      assert.equal(value(m, REFUSED), 1, 'the second channel was refused');
      assert.ok(channels.includes(value(m, TO_PEER)), `the kernel relayed one client's channel: ${value(m, TO_PEER)} of ${channels.join(' and ')}`);
      const lines = jsonLines(node.stdout()).filter((r) => typeof r.msg === 'string' && r.msg.startsWith('kernel data plane refused a channel entry'));
      assert.equal(lines.length, 1, 'one log line');
      assert.equal(lines[0]?.refused, 1);
      await Promise.all([node.stop(), peer.stop()]);
    });
  });
});

describe('kernel data plane: without the capabilities', { skip: kernelDataplaneUnavailableReason() }, () => {
  it('--dataplane auto relays in JavaScript and logs why the kernel path did not load', async (t) => {
    const peer = stopAfter(t, await startTurnutilsPeer());
    const server = stopAfter(
      t,
      await startAnyturn({
        users: [{ name: 'alice', password: 'pw' }],
        allowLoopbackPeers: true,
        runUnder: WITHOUT_BPF_CAPABILITIES,
        extraArgs: ['--dataplane', 'auto', '--dataplane-interface', 'lo'],
      }),
    );
    const off = parseLogLines(server.process.stdout()).find((r) => r.dataplane === 'js');
    assert.ok(off, `no log line saying the JavaScript path relays\n${server.process.outputTail()}`);
    assert.match(String(off.msg), /^kernel data plane off: .*(CAP_BPF|permission|EPERM)/i, String(off.msg));
    const client = await TestTurnClient.open({ address: LOOPBACK_V4, port: server.port }, { username: 'alice', password: 'pw', realm: 'anyturn' });
    t.after(() => client.close());
    assert.ok((await client.allocate()).relayed);
    assert.equal((await client.channelBind(0x4000, { address: LOOPBACK_V4, port: peer.port })).code, 200);
    client.sendChannelData(0x4000, Buffer.from('through user space'));
    const [echo] = await client.waitForReceived(1, 5000);
    assert.equal(echo?.kind, 'channel-data');
    assert.equal(echo?.channel, 0x4000);
    assert.equal(echo?.data.toString(), 'through user space');
  });

  it('--dataplane kernel refuses to start, naming the reason', async () => {
    const result = await runToCompletion(
      WITHOUT_BPF_CAPABILITIES[0],
      [
        ...WITHOUT_BPF_CAPABILITIES.slice(1),
        process.execPath,
        ANYTURN_CLI_PATH,
        '--listening-ip',
        LOOPBACK_V4,
        '--user',
        'alice:pw',
        '--metrics-port',
        '0',
        '--dataplane',
        'kernel',
        '--dataplane-interface',
        'lo',
      ],
      20_000,
    );
    assert.equal(result.code, 1, result.stderr);
    assert.match(result.stderr, /--dataplane kernel: the kernel data plane did not load: .*(CAP_BPF|permission|EPERM)/i);
    assert.match(result.stderr, /--dataplane auto or js/);
  });
});

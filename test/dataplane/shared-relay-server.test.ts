// Shared relay sockets (--relay-sockets, docs/dataplane.md §8) under the real server, in
// network namespaces (test/helpers/netns.ts): client C, node N1, peer P behind the router
// R. N1 runs the kernel data plane on eth0, so --relay-sockets auto picks one socket per
// relay address. 1,000 allocations from C each send a Send indication to P's echo peer
// and must get the echo back as a Data indication (through the shared socket both ways,
// the relayed port in the kernel's trailer) while N1 holds a few dozen descriptors; the peer
// must have seen every probe from its allocation's relayed address. Refresh 0 takes the
// steered ports out. Without the kernel path, auto picks per-allocation sockets and
// `shared` refuses to start naming why.

import assert from 'node:assert/strict';
import { readFileSync, readdirSync } from 'node:fs';
import { after, before, describe, it } from 'node:test';
import { kernelDataplaneUnavailableReason, WITHOUT_BPF_CAPABILITIES } from '../helpers/dataplane.js';
import { Topology, jsonLines, netnsUnavailableReason } from '../helpers/netns.js';
import { ANYTURN_CLI_PATH, LOOPBACK_V4, parseLogLines, runToCompletion, startAnyturn, stopAfter } from '../helpers/anyturn-process.js';
import { METRICS_PORT, httpGet, metrics, nodeArgs, peerReport, pollReadyz, spawnFreshAllocations, startPeer, withDump } from '../anycast/cluster.js';
// Type only: importing fresh-allocations.js runs its main().
import type { FreshResult } from '../anycast/fresh-allocations.js';

const skip = netnsUnavailableReason() ?? kernelDataplaneUnavailableReason();
/** fresh-allocations.ts FRESH_STREAM: the stream id of its probes. */
const FRESH_STREAM = 5;
const ALLOCATIONS = 1000;
/** Descriptors N1 may hold with ALLOCATIONS live: with a socket per allocation it would be over 1,000. */
const MAX_FDS = 50;
const STEERED = 'anyturn_relay_steered_ports';
const STEERED_IN = 'anyturn_dataplane_kernel_packets_total{event="steered_in"}';
const STEERED_OUT = 'anyturn_dataplane_kernel_packets_total{event="steered_out"}';
const NO_TRAILER = 'anyturn_dropped_packets_total{reason="no_steer_trailer"}';

function openFds(pid: number): number {
  return readdirSync(`/proc/${pid}/fd`).length;
}

/** The pids of `pid`'s child processes (every thread's children). */
function childrenOf(pid: number): number[] {
  return readdirSync(`/proc/${pid}/task`).flatMap((tid) =>
    readFileSync(`/proc/${pid}/task/${tid}/children`, 'utf8')
      .split(' ')
      .filter((x) => x !== '')
      .map(Number),
  );
}

describe('shared relay sockets: the server in namespaces', { skip, timeout: 300_000 }, () => {
  let topo: Topology;
  before(async () => {
    topo = await Topology.build({ softwareChecksums: true });
  });
  after(async () => {
    await topo?.teardown();
  });

  it(`${ALLOCATIONS} allocations relay through one socket per relay address, in a few dozen descriptors; Refresh 0 ends the steering`, async () => {
    await withDump(topo, async () => {
      // Every fresh socket's first Allocate is answered 401: no per-source limit on those here.
      const args = [...nodeArgs('N1', { cluster: false, dataplane: 'kernel' }), '--unauth-error-rate', '0'];
      const node = topo.spawnIn('N1', process.execPath, args, { name: 'anyturn-N1' });
      await node.waitForJsonLine((r) => r.msg === 'anyturn ready', 20_000);
      const chosen = jsonLines(node.stdout()).find((r) => typeof r.relaySockets === 'string' && typeof r.reason === 'string');
      assert.equal(chosen?.relaySockets, 'shared', `--relay-sockets auto with the kernel path: ${JSON.stringify(chosen)}`);
      assert.match(String(chosen?.reason), /kernel data plane is loaded/);
      const idle = openFds(node.pid);

      const peer = await startPeer(topo);
      const fresh = spawnFreshAllocations(topo, ALLOCATIONS, 240_000);
      const allocated = await fresh.waitForJsonLine((r) => r.event === 'allocated', 200_000);
      const results = allocated.results as FreshResult[];
      const fds = openFds(node.pid);
      assert.deepEqual(
        results.filter((r) => r.code !== 200 || r.permission !== 200 || r.echoed !== true).slice(0, 5),
        [],
        'every allocation relayed a Send indication and got the echo back as a Data indication',
      );
      assert.ok(fds < MAX_FDS, `N1 holds ${fds} descriptors with ${ALLOCATIONS} allocations (${idle} before them)`);
      console.log(`[shared relay sockets] N1's descriptors: ${idle} before the allocations, ${fds} with ${ALLOCATIONS}`);

      // The peer saw each allocation's probe from that allocation's relayed address and port.
      const seen = await peerReport(peer);
      const sourceOf = new Map<number, string>();
      for (const [stream, seq, src] of seen.probes) if (stream === FRESH_STREAM) sourceOf.set(seq, seen.sources[src] ?? '?');
      const wrong = results.flatMap((r, i) =>
        sourceOf.get(i) === `${r.relayed?.address}:${r.relayed?.port}` ? [] : [{ i, relayed: r.relayed, seen: sourceOf.get(i) }],
      );
      assert.deepEqual(wrong.slice(0, 5), [], 'probes that reached the peer from another address than their relayed one');

      let m = await metrics(topo, 'N1');
      assert.equal(m.get(STEERED), ALLOCATIONS);
      assert.equal(m.get('anyturn_relay_sockets_info{mode="shared"}'), 1);
      assert.equal(m.get(NO_TRAILER) ?? 0, 0);

      fresh.writeLine(JSON.stringify({ cmd: 'release' }));
      const released = await fresh.waitForJsonLine((r) => r.event === 'released', 60_000);
      assert.ok(
        (released.codes as number[]).every((c) => c === 200),
        'Refresh 0 on every allocation',
      );
      m = await metrics(topo, 'N1');
      assert.equal(m.get(STEERED), 0, 'Refresh 0 took every steered port out');

      // A datagram to a released relayed port is no longer steered: the kernel's counters stand still.
      await new Promise((r) => setTimeout(r, 2500));
      const before = await metrics(topo, 'N1');
      const port = results[0]!.relayed!.port;
      const send = `import socket; s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(('${Topology.peerAddress}', 0)); s.sendto(b'after release', ('${results[0]!.relayed!.address}', ${port}))`;
      const r = await topo.exec('P', 'python3', ['-c', send]);
      assert.equal(r.code, 0, r.stderr);
      await new Promise((r) => setTimeout(r, 2500));
      const after = await metrics(topo, 'N1');
      assert.ok((after.get(STEERED_OUT) ?? 0) > 0, 'the shared socket sent through the egress program');
      assert.equal(after.get(STEERED_IN), before.get(STEERED_IN), 'a released port was steered');
      assert.equal(after.get(NO_TRAILER) ?? 0, 0);
      await node.stop();
    });
  });

  it("the helper's death takes the node out: /readyz 503 naming why, the data plane metric says js, a new Allocate gets 508", async () => {
    await withDump(topo, async () => {
      const node = topo.spawnIn('N1', process.execPath, nodeArgs('N1', { cluster: false, dataplane: 'kernel' }), { name: 'anyturn-N1-helper-death' });
      await node.waitForJsonLine((r) => r.msg === 'anyturn ready', 20_000);
      assert.equal((await pollReadyz(topo, 'N1', 200, 10_000)).at(-1)?.code, 200, 'ready with its helper running');
      const helpers = childrenOf(node.pid).filter((pid) => readFileSync(`/proc/${pid}/comm`, 'utf8').trim() === 'anyturn-datapla');
      assert.equal(helpers.length, 1, `one helper under the node: ${JSON.stringify(childrenOf(node.pid))}`);
      process.kill(helpers[0]!, 'SIGKILL');

      const seen = await pollReadyz(topo, 'N1', 503, 10_000);
      assert.equal(seen.at(-1)?.code, 503, `/readyz after the helper died: ${JSON.stringify(seen)}`);
      const { body } = await httpGet(topo, `http://${Topology.nodeAddress('N1')}:${METRICS_PORT}/readyz`);
      assert.match(body, /kernel data plane's helper stopped.*restart the node/);
      const m = await metrics(topo, 'N1');
      assert.equal(m.get('anyturn_dataplane_info{mode="js"}'), 1, 'the metric says who relays now');
      assert.equal(m.get('anyturn_dataplane_info{mode="kernel"}') ?? 0, 0);
      const stoppedLines = jsonLines(node.stdout()).filter((r) => typeof r.msg === 'string' && r.msg.startsWith('kernel data plane stopped'));
      assert.equal(stoppedLines.length, 1, 'logged once');

      const fresh = spawnFreshAllocations(topo, 1, 1_000);
      const allocated = await fresh.waitForJsonLine((r) => r.event === 'allocated', 30_000);
      assert.equal((allocated.results as FreshResult[])[0]?.code, 508, 'no relayed port can be steered any more');
      await node.stop();
    });
  });
});

describe('shared relay sockets: without the kernel path', { skip: kernelDataplaneUnavailableReason() }, () => {
  it('--relay-sockets auto picks one socket per allocation and says why', async (t) => {
    const server = stopAfter(
      t,
      await startAnyturn({
        users: [{ name: 'alice', password: 'pw' }],
        runUnder: WITHOUT_BPF_CAPABILITIES,
        extraArgs: ['--dataplane', 'auto', '--dataplane-interface', 'lo'],
      }),
    );
    const line = parseLogLines(server.process.stdout()).find((r) => r.relaySockets === 'per-allocation');
    assert.ok(line, `no log line saying which relay sockets\n${server.process.outputTail()}`);
    assert.match(String(line.msg), /^relay sockets: one per allocation: the kernel data plane is not loaded \(.*(CAP_BPF|permission|EPERM)/i);
  });

  it('--relay-sockets shared refuses to start, naming the reason', async () => {
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
        '--relay-sockets',
        'shared',
        '--dataplane-interface',
        'lo',
      ],
      20_000,
    );
    assert.equal(result.code, 1, result.stderr);
    assert.match(result.stderr, /--relay-sockets shared: needs the kernel data plane, which is not loaded: .*(CAP_BPF|permission|EPERM)/i);
  });
});

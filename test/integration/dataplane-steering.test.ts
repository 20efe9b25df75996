// The kernel data plane's port steering (docs/dataplane.md §8) alone, in three namespaces
// (test/helpers/dataplane-topology.ts): S's python endpoint holds the one "shared" socket
// per relay address a --relay-sockets shared server holds, KernelDataplane steers a relayed
// port to it, and the peer P sends to and receives from the relayed port.
//
// Checksums are checked by kernels that verify them: S's s-p and P's eth0 have rx checksum
// offload off (a veth otherwise marks what it delivers as verified), so a datagram a socket
// there receives had a right UDP checksum; P's capture checks it too, and with S's tx
// offload on (a CHECKSUM_PARTIAL datagram across the veth) checks the pseudo-header form.

import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { KernelDataplane } from '../../src/dataplane/kernel/kernel-dataplane.js';
import { TRAILER_MAGIC } from '../../src/dataplane/kernel/entries.js';
import { kernelDataplaneUnavailableReason } from '../helpers/dataplane.js';
import { ADDR, type Captured, DataplaneTopology, type Endpoint, type EndpointEvent, type Received, SERVER_INTERFACES } from '../helpers/dataplane-topology.js';

const SHARED_PORT = 45000;
const RELAY_PORT = 50000;
const OTHER_RELAY_PORT = 50001;
const PEER_PORT = 60000;

const SKIP = kernelDataplaneUnavailableReason();

type Family = 4 | 6;
const A = (f: Family) => (f === 4 ? { relay: ADDR.relay4, peer: ADDR.peer4 } : { relay: ADDR.relay6, peer: ADDR.peer6 });

let counter = 0;
/** A payload nobody else sends, of `length` bytes (odd and even lengths put the trailer at odd and even offsets). */
function unique(tag: string, length: number): Buffer {
  const b = Buffer.alloc(length, 0x5a);
  Buffer.from(`${tag}-${process.pid}-${++counter}`).copy(b);
  return b;
}

function trailer(port: number): Buffer {
  const t = Buffer.alloc(4);
  t.writeUInt16BE(port, 0);
  t.writeUInt16BE(TRAILER_MAGIC, 2);
  return t;
}

const isCap = (e: EndpointEvent): e is Captured => e.ev === 'cap';
const isSock = (e: EndpointEvent): e is Received => e.ev === 'sock';

describe('kernel data plane: port steering to one socket per relay address', { skip: SKIP }, () => {
  let topo: DataplaneTopology;
  let dp: KernelDataplane;
  let s: Endpoint;
  let p: Endpoint;

  before(async () => {
    topo = await DataplaneTopology.build();
    await topo.setOffload('S', 's-p', 'rx', false);
    await topo.setOffload('P', 'eth0', 'rx', false);
    s = await topo.endpoint('S', [`${ADDR.relay4}/${SHARED_PORT}`, `${ADDR.relay6}/${SHARED_PORT}`]);
    p = await topo.endpoint('P', [`${ADDR.peer4}/${PEER_PORT}`, `${ADDR.peer6}/${PEER_PORT}`]);
    dp = await KernelDataplane.open({ interfaces: SERVER_INTERFACES, namespace: topo.ns.S });
    for (const f of [4, 6] as const) {
      await dp.shareSocket(A(f).relay, SHARED_PORT);
      await dp.steer(A(f).relay, RELAY_PORT, SHARED_PORT);
    }
  });

  after(async () => {
    await dp?.close();
    await topo?.teardown();
  });

  /** The peer sends to relay:port; resolves with what S's shared socket received (the datagram and its trailer). */
  function steeredIn(f: Family, data: Buffer, port = RELAY_PORT): Promise<Received> {
    const a = A(f);
    const start = s.events.length;
    const expected = Buffer.concat([data, trailer(port)]).toString('hex');
    p.send(a.peer, PEER_PORT, a.relay, port, data);
    return s.waitFor((e): e is Received => isSock(e) && e.payload === expected, start);
  }

  /** S's shared socket sends data + trailer(port) to the peer; resolves with P's capture and P's socket's receipt. */
  async function steeredOut(f: Family, data: Buffer, port = RELAY_PORT): Promise<{ cap: Captured; sock: Received }> {
    const a = A(f);
    const start = p.events.length;
    const hex = data.toString('hex');
    s.send(a.relay, SHARED_PORT, a.peer, PEER_PORT, Buffer.concat([data, trailer(port)]));
    const cap = await p.waitFor((e): e is Captured => isCap(e) && e.payload === hex, start);
    const sock = await p.waitFor((e): e is Received => isSock(e) && e.payload === hex, start);
    return { cap, sock };
  }

  for (const f of [4, 6] as const) {
    it(`IPv${f}: a peer's datagram to a steered port reaches the shared socket, the port and magic in its trailer, checksum verified by S's kernel`, async () => {
      const before = await dp.readTotals();
      for (const length of [9, 10, 1]) {
        const data = unique(`in${f}`, length);
        const got = await steeredIn(f, data);
        assert.deepEqual(
          { local: got.local, localPort: got.localPort, from: got.from, fromPort: got.fromPort },
          { local: A(f).relay, localPort: SHARED_PORT, from: A(f).peer, fromPort: PEER_PORT },
        );
      }
      assert.equal((await dp.readTotals()).steered_in! - before.steered_in!, 3);
    });

    for (const offload of [false, true]) {
      it(`IPv${f}: the shared socket's datagram leaves from the relayed port without its trailer, checksum right (S's tx offload ${offload ? 'on' : 'off'})`, async () => {
        await topo.setOffload('S', 's-p', 'tx', offload);
        try {
          const before = await dp.readTotals();
          for (const length of [9, 10, 1]) {
            const data = unique(`out${f}`, length);
            const { cap, sock } = await steeredOut(f, data);
            assert.deepEqual(
              { src: cap.src, sport: cap.sport, dst: cap.dst, dport: cap.dport, ulen: cap.ulen, ipOk: cap.ipOk },
              { src: A(f).relay, sport: RELAY_PORT, dst: A(f).peer, dport: PEER_PORT, ulen: 8 + length, ipOk: true },
            );
            // Offload off: the full checksum; on: the pseudo-header sum the receiver's NIC would complete.
            if (offload) assert.ok(cap.partialOk, `IPv${f} ${length} bytes: pseudo-header checksum 0x${cap.csum.toString(16)}`);
            else assert.ok(cap.csumOk, `IPv${f} ${length} bytes: checksum 0x${cap.csum.toString(16)}`);
            assert.deepEqual({ from: sock.from, fromPort: sock.fromPort }, { from: A(f).relay, fromPort: RELAY_PORT });
          }
          assert.equal((await dp.readTotals()).steered_out! - before.steered_out!, 3);
        } finally {
          await topo.setOffload('S', 's-p', 'tx', true);
        }
      });
    }

    it(`IPv${f}: a datagram straight to the shared port from outside is dropped and counted`, async () => {
      const a = A(f);
      const before = await dp.readTotals();
      const start = s.events.length;
      const stray = unique(`stray${f}`, 12);
      p.send(a.peer, PEER_PORT, a.relay, SHARED_PORT, stray);
      // A steered datagram sent after it arrives; the stray one must not have.
      await steeredIn(f, unique(`marker${f}`, 8));
      assert.equal(
        s.events.slice(start).find((e) => isSock(e) && e.payload.startsWith(stray.toString('hex'))),
        undefined,
      );
      assert.equal((await dp.readTotals()).steer_stray! - before.steer_stray!, 1);
    });

    it(`IPv${f}: unsteer() ends the steering of a port; a datagram without the magic does not leave`, async () => {
      const a = A(f);
      await dp.steer(a.relay, OTHER_RELAY_PORT, SHARED_PORT);
      await steeredIn(f, unique(`other${f}`, 7), OTHER_RELAY_PORT);
      dp.unsteer(a.relay, OTHER_RELAY_PORT);
      await dp.flush();
      const start = s.events.length;
      const late = unique(`late${f}`, 7);
      p.send(a.peer, PEER_PORT, a.relay, OTHER_RELAY_PORT, late);
      await steeredIn(f, unique(`marker${f}`, 8));
      assert.equal(
        s.events.slice(start).find((e) => isSock(e) && e.payload.startsWith(late.toString('hex'))),
        undefined,
      );

      const before = await dp.readTotals();
      const pStart = p.events.length;
      const bad = Buffer.concat([unique(`bad${f}`, 9), Buffer.from([0xc3, 0x50, 0x00, 0x00])]);
      s.send(a.relay, SHARED_PORT, a.peer, PEER_PORT, bad);
      await steeredOut(f, unique(`marker-out${f}`, 8));
      assert.equal(
        p.events.slice(pStart).find((e) => (isCap(e) || isSock(e)) && e.payload.startsWith(bad.subarray(0, 9).toString('hex'))),
        undefined,
      );
      assert.equal((await dp.readTotals()).steer_malformed! - before.steer_malformed!, 1);
    });
  }

  it('close() detaches the ingress and egress programs', async () => {
    for (const dev of SERVER_INTERFACES) {
      assert.match(await topo.exec('S', 'tc', ['filter', 'show', 'dev', dev, 'egress']), /bpf/);
    }
    await dp.close();
    for (const dev of SERVER_INTERFACES) {
      assert.equal((await topo.filters(dev)).trim(), '');
      assert.equal((await topo.exec('S', 'tc', ['filter', 'show', 'dev', dev, 'egress'])).trim(), '');
    }
  });
});

// Forward mode between two engines in one process: both "listen" on the same
// anycast address (fake client paths with the same local address), share one
// store and node registry, and talk over real mesh sockets on 127.0.0.1. The
// network-namespace test in test/anycast does the same with real routes.

import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import dgram from 'node:dgram';

import { MeshSocket } from '../../src/cluster/mesh.js';
import { createLogger } from '../../src/ops/log.js';
import { MemoryAllocationStore, MemoryNodeRegistry } from '../../src/store/memory.js';
import { fiveTupleKey } from '../../src/store/types.js';
import { encodeChannelNumber, encodeRequestedTransport, encodeUint32 } from '../../src/stun/attributes.js';
import { encodeChannelData } from '../../src/stun/channel-data.js';
import { Attr, MessageClass, Method, TRANSPORT_UDP } from '../../src/stun/constants.js';
import { MessageWriter } from '../../src/stun/writer.js';
import { ManualClock } from '../../src/turn/clock.js';
import { NonceIssuer } from '../../src/turn/auth/nonce.js';
import { ANYCAST, CLIENT, type MeshNode as Node, PEER, PORT, responseCode, signedRequest, startMeshNode, until } from '../helpers/engine-node.js';

const REALM = 'cluster.test';
const SECRET = Buffer.from('a cluster secret of enough bytes');

const clock = new ManualClock(Date.now());
const logger = createLogger('silent');
const store = new MemoryAllocationStore({ now: () => clock.now() });
const registry = new MemoryNodeRegistry(() => clock.now());
const nonces = new NonceIssuer(SECRET, 600_000);

async function startNode(id: string, relayIp: string, lookupsPerSecond = 1000): Promise<Node> {
  const node = await startMeshNode({ id, realm: REALM, secret: SECRET, nonces, store, registry, clock, logger, relayIp, lookupsPerSecond });
  await registry.heartbeat({ nodeId: id, meshAddress: '127.0.0.1', meshPort: node.mesh.port }, 5_000);
  return node;
}

function request(method: number, decorate: (w: MessageWriter) => void = () => undefined): { buf: Buffer; id: string } {
  return signedRequest(method, REALM, nonces.issue(CLIENT, clock.now()), decorate);
}

describe('forward mode: a rerouted client keeps its allocation', () => {
  let a: Node;
  let b: Node;
  before(async () => {
    a = await startNode('node-a', '198.18.1.2');
    b = await startNode('node-b', '198.18.2.2');
  });
  after(async () => {
    for (const n of [a, b]) {
      n.router.close();
      await n.engine.stop();
      await n.mesh.close();
    }
  });

  it('forwards ChannelData, Send indications and requests to the owner, which answers them', async () => {
    const clientPort = 40001;
    const alloc = request(Method.Allocate, (w) => w.add(Attr.RequestedTransport, encodeRequestedTransport(TRANSPORT_UDP)));
    a.engine.handleClientPacket(a.listener, alloc.buf, CLIENT, clientPort);
    await until(() => responseCode(a, clientPort, alloc.id) !== undefined, 'Allocate response');
    assert.equal(responseCode(a, clientPort, alloc.id), 200);
    const bind = request(Method.ChannelBind, (w) => {
      w.add(Attr.ChannelNumber, encodeChannelNumber(0x4000));
      w.addXorAddress(Attr.XorPeerAddress, PEER, 6000);
    });
    a.engine.handleClientPacket(a.listener, bind.buf, CLIENT, clientPort);
    await until(() => responseCode(a, clientPort, bind.id) === 200, 'ChannelBind on the owner');
    const relay = [...a.engine.allAllocations()][0]!.relay;

    // The reroute: the same client 5-tuple now reaches node B.
    b.engine.handleClientPacket(b.listener, encodeChannelData(0x4000, Buffer.from('via b')), CLIENT, clientPort);
    await until(() => a.relays.socketAt(relay.address, relay.port)!.sent.length === 1, 'ChannelData relayed by the owner');
    assert.equal(a.relays.socketAt(relay.address, relay.port)!.sent[0]!.data.toString(), 'via b');
    assert.equal(b.counters.allocationsResumed, 1);
    assert.equal(b.counters.storeLookups, 1);

    const send = new MessageWriter(Method.Send, MessageClass.Indication, randomBytes(12));
    send.addXorAddress(Attr.XorPeerAddress, PEER, 6000);
    send.add(Attr.Data, Buffer.from('send via b'));
    b.engine.handleClientPacket(b.listener, send.toBuffer(), CLIENT, clientPort);
    await until(() => a.relays.socketAt(relay.address, relay.port)!.sent.length === 2, 'Send indication relayed by the owner');
    assert.equal(b.counters.storeLookups, 1, 'one lookup, then the cache');

    for (const [method, decorate] of [
      [Method.Refresh, (w: MessageWriter) => w.add(Attr.Lifetime, encodeUint32(600))],
      [Method.CreatePermission, (w: MessageWriter) => w.addXorAddress(Attr.XorPeerAddress, '198.18.20.3', 1)],
      [
        Method.ChannelBind,
        (w: MessageWriter) => {
          w.add(Attr.ChannelNumber, encodeChannelNumber(0x4001));
          w.addXorAddress(Attr.XorPeerAddress, '198.18.20.3', 7000);
        },
      ],
    ] as const) {
      const r = request(method, decorate);
      b.engine.handleClientPacket(b.listener, r.buf, CLIENT, clientPort);
      await until(() => responseCode(a, clientPort, r.id) !== undefined, `response to method ${method}`);
      assert.equal(responseCode(a, clientPort, r.id), 200, `method ${method} answered by the owner`);
      assert.equal(responseCode(b, clientPort, r.id), undefined, 'node B never answers for the owner');
    }
    // Peer data still flows back from the owner to the client, over the new channel too.
    a.relays.socketAt(relay.address, relay.port)!.inject(Buffer.from('to client'), '198.18.20.3', 7000);
    const last = a.path.sentTo(CLIENT, clientPort).at(-1)!;
    assert.equal(last.data.readUInt16BE(0), 0x4001);

    const record = await store.get(fiveTupleKey('udp', CLIENT, clientPort, ANYCAST, PORT));
    assert.equal(record?.ownerNodeId, 'node-a');
    assert.ok(record?.channels['16385'], 'the channel bound through node B is in the store');
  });

  it('answers 437 when the owner is dead, and removes its record so the client can re-allocate', async () => {
    const clientPort = 40002;
    const owner = await startNode('node-c', '198.18.3.2');
    const alloc = request(Method.Allocate, (w) => w.add(Attr.RequestedTransport, encodeRequestedTransport(TRANSPORT_UDP)));
    owner.engine.handleClientPacket(owner.listener, alloc.buf, CLIENT, clientPort);
    await until(() => responseCode(owner, clientPort, alloc.id) === 200, 'Allocate on node C');
    const key = fiveTupleKey('udp', CLIENT, clientPort, ANYCAST, PORT);
    assert.ok(await store.get(key));

    // Node C dies without a word: its heartbeat runs out.
    owner.router.close();
    await owner.mesh.close();
    clock.advance(6_000);

    const refresh = request(Method.Refresh);
    b.engine.handleClientPacket(b.listener, refresh.buf, CLIENT, clientPort);
    await until(() => responseCode(b, clientPort, refresh.id) !== undefined, 'an answer from node B');
    assert.equal(responseCode(b, clientPort, refresh.id), 437);
    assert.equal(await store.get(key), undefined, 'the dead owner record is gone');
    assert.equal(b.counters.deadOwnerCleanups, 1);

    const again = request(Method.Allocate, (w) => w.add(Attr.RequestedTransport, encodeRequestedTransport(TRANSPORT_UDP)));
    b.engine.handleClientPacket(b.listener, again.buf, CLIENT, clientPort);
    await until(() => responseCode(b, clientPort, again.id) !== undefined, 'the new Allocate');
    assert.equal(responseCode(b, clientPort, again.id), 200);
    assert.equal((await store.get(key))?.ownerNodeId, 'node-b');
  });

  it('looks up junk 5-tuples at a bounded rate and never forwards them', async () => {
    const junk = await startNode('node-d', '198.18.4.2', 20);
    const before = junk.counters.storeLookups;
    for (let port = 1000; port < 1500; port++) {
      junk.engine.handleClientPacket(junk.listener, encodeChannelData(0x4000, Buffer.from('junk')), '198.18.10.9', port);
    }
    await until(() => junk.engineCounters.drops.no_allocation + junk.counters.lookupsRateLimited >= 500, 'every junk packet decided', 5000);
    assert.ok(junk.counters.storeLookups - before <= 20, `at most the burst of lookups (${junk.counters.storeLookups - before})`);
    assert.ok(junk.counters.lookupsRateLimited >= 480);
    assert.equal(junk.counters.meshForwarded, 0);
    junk.router.close();
    await junk.mesh.close();
  });

  it('refuses mesh frames that are not signed with the cluster secret', async () => {
    const forger = new MeshSocket('127.0.0.1', 0, Buffer.from('not the cluster secret at all!!'), {
      onPacket: () => undefined,
      onRejected: () => undefined,
      onError: () => undefined,
    });
    await forger.start();
    const junk = dgram.createSocket('udp4');
    try {
      const rejected = { ...a.counters.meshRejected };
      const received = a.counters.meshReceived;
      const binding = new MessageWriter(Method.Binding, MessageClass.Request, randomBytes(12)).toBuffer();
      forger.forward('127.0.0.1', a.mesh.port, CLIENT, 40009, ANYCAST, PORT, binding);
      junk.send(Buffer.from('garbage'), a.mesh.port, '127.0.0.1');
      await until(
        () => a.counters.meshRejected.bad_tag === rejected.bad_tag + 1 && a.counters.meshRejected.malformed === rejected.malformed + 1,
        'both frames rejected',
      );
      assert.equal(a.counters.meshReceived, received);
      assert.equal(a.path.sentTo(CLIENT, 40009).length, 0);
    } finally {
      await forger.close();
      junk.close();
    }
  });
});

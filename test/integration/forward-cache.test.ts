// Forward mode: the non-owner node's cached answer for a client 5-tuple (router.ts) and
// permission expiry for traffic it forwards. Engines in one process over one memory
// store and node registry, real mesh sockets on 127.0.0.1, time moved by hand.

import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';

import { createLogger } from '../../src/ops/log.js';
import { MemoryAllocationStore, MemoryNodeRegistry } from '../../src/store/memory.js';
import { encodeChannelNumber, encodeRequestedTransport, encodeUint32 } from '../../src/stun/attributes.js';
import { encodeChannelData } from '../../src/stun/channel-data.js';
import { Attr, MessageClass, Method, TRANSPORT_UDP } from '../../src/stun/constants.js';
import { MessageWriter } from '../../src/stun/writer.js';
import { PERMISSION_LIFETIME_MS } from '../../src/turn/allocation/allocation.js';
import { NonceIssuer } from '../../src/turn/auth/nonce.js';
import { ManualClock } from '../../src/turn/clock.js';
import { CLIENT, type MeshNode as Node, PEER, responseCode as answer, signedRequest, startMeshNode, until } from '../helpers/engine-node.js';

const REALM = 'forward-cache.test';
const SECRET = Buffer.from('a cluster secret of enough bytes');

const clock = new ManualClock(1_800_000_000_000);
const logger = createLogger('silent');
const store = new MemoryAllocationStore({ now: () => clock.now() });
const registry = new MemoryNodeRegistry(() => clock.now());
const nonces = new NonceIssuer(SECRET, 600_000);
const nodes: Node[] = [];

async function startNode(id: string, relayIp: string): Promise<Node> {
  const node = await startMeshNode({ id, realm: REALM, secret: SECRET, nonces, store, registry, clock, logger, relayIp, lookupsPerSecond: 1000 });
  nodes.push(node);
  await heartbeat();
  return node;
}

/** Every node announces itself again (after the clock moved past the membership TTL). */
async function heartbeat(): Promise<void> {
  for (const n of nodes) await registry.heartbeat({ nodeId: n.id, meshAddress: '127.0.0.1', meshPort: n.mesh.port }, 5_000);
}

/** A request sent to `via`, answered by `by` (the owner, when `via` forwards it). */
async function ask(
  via: Node,
  by: Node,
  clientPort: number,
  method: number,
  decorate: (w: MessageWriter) => void = () => undefined,
): Promise<number | undefined> {
  const { buf, id } = signedRequest(method, REALM, nonces.issue(CLIENT, clock.now()), decorate);
  via.engine.handleClientPacket(via.listener, buf, CLIENT, clientPort);
  await until(() => answer(by, clientPort, id) !== undefined, `an answer to method ${method}`);
  return answer(by, clientPort, id);
}

const allocate = (lifetimeSeconds: number) => (w: MessageWriter) => {
  w.add(Attr.RequestedTransport, encodeRequestedTransport(TRANSPORT_UDP));
  w.add(Attr.Lifetime, encodeUint32(lifetimeSeconds));
};

function sendIndication(text: string): Buffer {
  const w = new MessageWriter(Method.Send, MessageClass.Indication, randomBytes(12));
  w.addXorAddress(Attr.XorPeerAddress, PEER, 6000);
  w.add(Attr.Data, Buffer.from(text));
  return w.toBuffer();
}

/** Datagrams a node's relay sockets sent to peers. */
function relayedBy(node: Node): number {
  return node.relays.sockets.reduce((n, s) => n + s.sent.length, 0);
}

let a: Node;
let b: Node;
let c: Node;
before(async () => {
  a = await startNode('node-a', '198.18.1.2');
  b = await startNode('node-b', '198.18.2.2');
  c = await startNode('node-c', '198.18.3.2');
});
after(async () => {
  for (const n of nodes) {
    n.router.close();
    await n.engine.stop();
    await n.mesh.close();
  }
});

describe('forward mode: the cached owner of a 5-tuple follows the store', () => {
  it('after the allocation is deleted, a later packet is not forwarded to the old owner', async () => {
    const clientPort = 41000;
    assert.equal(await ask(a, a, clientPort, Method.Allocate, allocate(600)), 200);
    assert.equal(await ask(b, a, clientPort, Method.CreatePermission, (w) => w.addXorAddress(Attr.XorPeerAddress, PEER, 1)), 200);
    const lookups = b.counters.storeLookups;
    b.engine.handleClientPacket(b.listener, sendIndication('cached'), CLIENT, clientPort);
    await until(() => relayedBy(a) === 1, 'the Send forwarded to the owner and relayed');
    assert.equal(b.counters.storeLookups, lookups, 'the owner came from the cache');

    // The client ends the allocation on its owner; node B hears the deletion.
    assert.equal(await ask(a, a, clientPort, Method.Refresh, (w) => w.add(Attr.Lifetime, encodeUint32(0))), 200);
    await until(() => b.router.cachedEntries === 0, 'node B forgetting the cached owner');
    const forwarded = b.counters.meshForwarded;
    const noAllocation = b.engineCounters.drops.no_allocation;
    b.engine.handleClientPacket(b.listener, sendIndication('after the end'), CLIENT, clientPort);
    await until(() => b.engineCounters.drops.no_allocation === noAllocation + 1, 'node B deciding the packet itself');
    assert.equal(b.counters.storeLookups, lookups + 1, 'looked up again');
    assert.equal(b.counters.meshForwarded, forwarded, 'not forwarded to the old owner');
  });

  it('when the 5-tuple gets a new owner, a later packet goes to the new owner, not the old one', async () => {
    const clientPort = 41001;
    assert.equal(await ask(a, a, clientPort, Method.Allocate, allocate(600)), 200);
    // Node B has an answer for this 5-tuple cached: owner A.
    assert.equal(await ask(b, a, clientPort, Method.CreatePermission, (w) => w.addXorAddress(Attr.XorPeerAddress, PEER, 1)), 200);
    assert.equal(await ask(a, a, clientPort, Method.Refresh, (w) => w.add(Attr.Lifetime, encodeUint32(0))), 200);
    // Node B looks again in the meantime and caches "no allocation anywhere" (for ABSENT_TTL_MS).
    const noAllocation = b.engineCounters.drops.no_allocation;
    b.engine.handleClientPacket(b.listener, sendIndication('in between'), CLIENT, clientPort);
    await until(() => b.engineCounters.drops.no_allocation === noAllocation + 1, 'node B finding no allocation');
    // The client allocates again through node C (the clock does not move: only the created event can clear B's answer).
    assert.equal(await ask(c, c, clientPort, Method.Allocate, allocate(600)), 200);
    assert.equal(await ask(c, c, clientPort, Method.CreatePermission, (w) => w.addXorAddress(Attr.XorPeerAddress, PEER, 1)), 200);
    const [fromA, fromC] = [relayedBy(a), relayedBy(c)];
    b.engine.handleClientPacket(b.listener, sendIndication('to the new owner'), CLIENT, clientPort);
    await until(() => relayedBy(c) === fromC + 1, 'the packet reaching the new owner, node C');
    assert.equal(c.relays.sockets.at(-1)!.sent.at(-1)!.data.toString(), 'to the new owner');
    assert.equal(relayedBy(a), fromA, 'nothing relayed by the old owner');
  });
});

describe('forward mode: permissions expire for traffic forwarded from a non-owner node', () => {
  it('after the permission’s 300 s on the owner, Send indications and ChannelData forwarded through the mesh are dropped', async () => {
    const clientPort = 42000;
    assert.equal(await ask(a, a, clientPort, Method.Allocate, allocate(3600)), 200);
    assert.equal(
      await ask(b, a, clientPort, Method.ChannelBind, (w) => {
        w.add(Attr.ChannelNumber, encodeChannelNumber(0x4000));
        w.addXorAddress(Attr.XorPeerAddress, PEER, 6000);
      }),
      200,
    );
    const relay = a.listener.find(CLIENT, clientPort)!.relay;
    const socket = a.relays.socketAt(relay.address, relay.port)!;

    clock.advance(PERMISSION_LIFETIME_MS - 1);
    await heartbeat();
    b.engine.handleClientPacket(b.listener, sendIndication('in time'), CLIENT, clientPort);
    await until(() => socket.sent.at(-1)?.data.toString() === 'in time', 'the Send relayed by the owner');
    b.engine.handleClientPacket(b.listener, encodeChannelData(0x4000, Buffer.from('in time too')), CLIENT, clientPort);
    await until(() => socket.sent.at(-1)?.data.toString() === 'in time too', 'the ChannelData relayed by the owner');

    clock.advance(1);
    await heartbeat();
    const sent = socket.sent.length;
    const received = a.counters.meshReceived;
    const dropped = a.engineCounters.drops.no_permission;
    b.engine.handleClientPacket(b.listener, sendIndication('too late'), CLIENT, clientPort);
    b.engine.handleClientPacket(b.listener, encodeChannelData(0x4000, Buffer.from('too late')), CLIENT, clientPort);
    await until(() => a.engineCounters.drops.no_permission === dropped + 2, 'the owner dropping both forwarded packets');
    assert.equal(a.counters.meshReceived, received + 2, 'both were forwarded through the mesh');
    assert.equal(socket.sent.length, sent, 'neither reached the peer');
    assert.equal(b.engineCounters.drops.no_permission, 0, 'the owner decides, not the forwarding node');
  });
});

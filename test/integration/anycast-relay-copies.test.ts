// Anycast relay mode on a node holding a copy of an allocation another node made:
// the copy's allocation, permission and channel expiry, the grace period while the
// store is unreachable, and a refresh the copy never heard of. Two engines over one
// memory store, time moved by hand (ManualClock) and expiry run by engine.tick(),
// as the server's timer would. Only node B, the copy, ticks: an expiry on node A
// would reach B as a deletion event and hide whether B expires on its own.

import { after, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';

import { createLogger } from '../../src/ops/log.js';
import { MemoryAllocationStore } from '../../src/store/memory.js';
import { type AllocationStore, type StoreEventListener, fiveTupleKey } from '../../src/store/types.js';
import { encodeChannelNumber, encodeRequestedTransport, encodeUint32 } from '../../src/stun/attributes.js';
import { encodeChannelData } from '../../src/stun/channel-data.js';
import { Attr, MessageClass, Method, TRANSPORT_UDP } from '../../src/stun/constants.js';
import { decodeMessage } from '../../src/stun/message.js';
import { MessageWriter } from '../../src/stun/writer.js';
import type { Allocation } from '../../src/turn/allocation/allocation.js';
import { CHANNEL_LIFETIME_MS, CHANNEL_QUARANTINE_MS, PERMISSION_LIFETIME_MS } from '../../src/turn/allocation/allocation.js';
import { NonceIssuer } from '../../src/turn/auth/nonce.js';
import { ManualClock } from '../../src/turn/clock.js';
import { EngineCounters } from '../../src/turn/counters.js';
import { ANYCAST, CLIENT, type EngineNode, PEER, PORT, askEngine, startEngineNode, until } from '../helpers/engine-node.js';

const RELAY = '198.18.100.2';
const REALM = 'anycast-copies.test';
/** How long past its expiry a copy is kept while the store is unreachable (replication.ts). */
const GRACE_MS = 60_000;
const logger = createLogger('silent');

/**
 * The store as one node sees it: `down` makes every call fail (Redis unreachable from
 * this node), `deaf` drops the events this node would hear (a gap in its feed).
 */
class NodeView {
  down = false;
  deaf = false;
  readonly store: AllocationStore;
  constructor(shared: MemoryAllocationStore) {
    this.store = new Proxy(shared, {
      get: (target, prop, receiver) => {
        const value = Reflect.get(target, prop, receiver) as unknown;
        if (prop === 'subscribe') {
          return (listener: StoreEventListener) =>
            target.subscribe((event) => {
              if (!this.deaf) listener(event);
            });
        }
        if (prop === 'isAvailable') return () => !this.down && target.isAvailable();
        if (typeof value !== 'function') return value;
        return async (...args: unknown[]) => {
          if (this.down) throw new Error('store unreachable (test switch)');
          return (value as (...a: unknown[]) => unknown).apply(target, args);
        };
      },
    });
  }
}

interface Node extends EngineNode {
  readonly view: NodeView;
  readonly counters: EngineCounters;
}

class Cluster {
  readonly clock = new ManualClock(1_800_000_000_000);
  readonly shared = new MemoryAllocationStore({ now: () => this.clock.now() });
  readonly nonces = new NonceIssuer(Buffer.from('shared nonce secret, 32 bytes..'), 600_000);
  readonly nodes: Node[] = [];

  start(id: string): Node {
    const view = new NodeView(this.shared);
    const counters = new EngineCounters();
    const node = {
      ...startEngineNode({
        nodeId: id,
        realm: REALM,
        nonces: this.nonces,
        store: view.store,
        clock: this.clock,
        logger,
        counters,
        relayAddressIPv4: RELAY,
        serverAddresses: [ANYCAST, RELAY],
        servicePorts: [PORT],
        engine: { relayMode: 'anycast' },
      }),
      view,
      counters,
    };
    this.nodes.push(node);
    return node;
  }

  async ask(node: Node, clientPort: number, method: number, decorate: (w: MessageWriter) => void = () => undefined): Promise<number | undefined> {
    return askEngine(node, this.nonces.issue(CLIENT, this.clock.now()), clientPort, method, REALM, decorate);
  }

  /** A: the allocation's maker; B: a node holding a copy (taken on from A's created event). */
  async pair(clientPort: number, lifetimeSeconds: number): Promise<{ a: Node; b: Node; made: Allocation; copy: Allocation }> {
    const a = this.start('a');
    const b = this.start('b');
    const code = await this.ask(a, clientPort, Method.Allocate, (w) => {
      w.add(Attr.RequestedTransport, encodeRequestedTransport(TRANSPORT_UDP));
      w.add(Attr.Lifetime, encodeUint32(lifetimeSeconds));
    });
    assert.equal(code, 200);
    await until(() => b.listener.find(CLIENT, clientPort) !== undefined, 'node B taking the allocation on');
    return { a, b, made: a.listener.find(CLIENT, clientPort)!, copy: b.listener.find(CLIENT, clientPort)! };
  }

  async stop(): Promise<void> {
    for (const n of this.nodes) {
      n.view.down = false;
      await n.engine.stop();
    }
  }
}

const permit = (w: MessageWriter): void => void w.addXorAddress(Attr.XorPeerAddress, PEER, 1);
const bind =
  (channel: number, peerPort: number) =>
  (w: MessageWriter): void => {
    w.add(Attr.ChannelNumber, encodeChannelNumber(channel));
    w.addXorAddress(Attr.XorPeerAddress, PEER, peerPort);
  };

describe('anycast relay mode: a shared allocation expires on the node holding a copy', () => {
  const cluster = new Cluster();
  after(() => cluster.stop());

  it('the copy is deleted when its lifetime ends, and its shared relayed port is released there', async () => {
    const clientPort = 41000;
    const { b, copy } = await cluster.pair(clientPort, 600);
    const expiresAtMs = copy.expiresAtMs;
    const socket = b.relays.socketAt(RELAY, copy.relay.port)!;
    cluster.clock.advance(expiresAtMs - 1 - cluster.clock.now());
    await b.engine.tick();
    assert.equal(b.listener.find(CLIENT, clientPort), copy, 'kept until the last millisecond of its lifetime');
    cluster.clock.advance(1);
    await b.engine.tick();
    assert.equal(b.listener.find(CLIENT, clientPort), undefined, 'the copy is gone at its expiry');
    assert.equal(socket.closed, true, 'the shared relayed port is no longer bound on node B');
    assert.equal(await cluster.shared.get(fiveTupleKey('udp', CLIENT, clientPort, ANYCAST, PORT)), undefined, 'the record is gone too');
  });

  it('a copy that missed a refresh made elsewhere asks the store at its expiry and is kept, with the new expiry', async () => {
    const clientPort = 41001;
    const { a, b, copy } = await cluster.pair(clientPort, 600);
    const firstExpiry = copy.expiresAtMs;
    b.view.deaf = true; // node B never hears of the refresh
    cluster.clock.advance(300_000);
    assert.equal(await cluster.ask(a, clientPort, Method.Refresh, (w) => w.add(Attr.Lifetime, encodeUint32(600))), 200);
    const refreshedExpiry = a.listener.find(CLIENT, clientPort)!.expiresAtMs;
    assert.ok(refreshedExpiry > firstExpiry);
    assert.equal(copy.expiresAtMs, firstExpiry, 'the copy did not hear of the refresh');
    b.view.deaf = false;

    cluster.clock.advance(firstExpiry - cluster.clock.now());
    await b.engine.tick();
    assert.equal(b.listener.find(CLIENT, clientPort), copy, 'the refreshed allocation is kept on node B');
    assert.equal(copy.expiresAtMs, refreshedExpiry, 'with the expiry the store holds');
    assert.equal(b.relays.socketAt(RELAY, copy.relay.port)?.closed, false, 'its shared relayed port stays bound on node B');
  });
});

function sendIndication(text: string, port = 6000): Buffer {
  const w = new MessageWriter(Method.Send, MessageClass.Indication, randomBytes(12));
  w.addXorAddress(Attr.XorPeerAddress, PEER, port);
  w.add(Attr.Data, Buffer.from(text));
  return w.toBuffer();
}

describe('anycast relay mode: permissions and channels expire on the copy too', () => {
  const cluster = new Cluster();
  after(() => cluster.stop());

  it('a peer packet after the permission’s 300 s is dropped on the copy; after a tick the permission is gone there', async () => {
    const clientPort = 42000;
    const { a, b, copy } = await cluster.pair(clientPort, 3600);
    assert.equal(await cluster.ask(a, clientPort, Method.CreatePermission, permit), 200);
    await until(() => copy.permissionsByAddress.has(PEER), 'the permission reaching node B');
    const relay = b.relays.socketAt(RELAY, copy.relay.port)!;
    const toClient = (): number => b.path.sentTo(CLIENT, clientPort).length;

    cluster.clock.advance(PERMISSION_LIFETIME_MS - 1);
    let before = toClient();
    assert.equal(relay.inject(Buffer.from('in time'), PEER, 6000), true);
    assert.equal(toClient(), before + 1, 'relayed to the client while the permission lasts');
    b.engine.handleClientPacket(b.listener, sendIndication('in time'), CLIENT, clientPort);
    assert.equal(relay.sent.at(-1)?.data.toString(), 'in time');

    cluster.clock.advance(1);
    before = toClient();
    const sent = relay.sent.length;
    const dropped = b.counters.drops.no_permission;
    assert.equal(relay.inject(Buffer.from('too late'), PEER, 6000), true);
    assert.equal(toClient(), before, 'the peer packet is dropped on the copy');
    b.engine.handleClientPacket(b.listener, sendIndication('too late'), CLIENT, clientPort);
    assert.equal(relay.sent.length, sent, 'the Send indication is dropped on the copy');
    assert.equal(b.counters.drops.no_permission, dropped + 2);
    await b.engine.tick();
    assert.equal(copy.permissionsByAddress.has(PEER), false, 'the expired permission is pruned from the copy');
    assert.equal(b.listener.find(CLIENT, clientPort), copy, 'the allocation itself lives on');
  });

  it('a channel after its 600 s is unusable on the copy, and its number is freed there after the quarantine', async () => {
    const clientPort = 42001;
    const { a, b, copy } = await cluster.pair(clientPort, 3600);
    assert.equal(await cluster.ask(a, clientPort, Method.ChannelBind, bind(0x4000, 6000)), 200);
    await until(() => copy.channel(0x4000) !== undefined, 'the channel reaching node B');
    const relay = b.relays.socketAt(RELAY, copy.relay.port)!;

    // The client keeps the permission up (a permission lasts 300 s, the channel 600 s), so
    // what happens at 600 s is the channel's doing alone.
    cluster.clock.advance(400_000);
    assert.equal(await cluster.ask(a, clientPort, Method.CreatePermission, permit), 200);
    const permitted = a.listener.find(CLIENT, clientPort)!.permissionsByAddress.get(PEER)!.expiresAtMs;
    await until(() => copy.permissionsByAddress.get(PEER)?.expiresAtMs === permitted, 'the refreshed permission reaching node B');

    cluster.clock.advance(CHANNEL_LIFETIME_MS - 400_000 - 1);
    b.engine.handleClientPacket(b.listener, encodeChannelData(0x4000, Buffer.from('in time')), CLIENT, clientPort);
    assert.equal(relay.sent.at(-1)?.data.toString(), 'in time', 'relayed while the channel lasts');
    relay.inject(Buffer.from('to client'), PEER, 6000);
    assert.equal(b.path.sentTo(CLIENT, clientPort).at(-1)!.data.readUInt16BE(0), 0x4000, 'the peer’s packet goes as ChannelData');

    cluster.clock.advance(1);
    const sent = relay.sent.length;
    const dropped = b.counters.drops.no_channel;
    b.engine.handleClientPacket(b.listener, encodeChannelData(0x4000, Buffer.from('too late')), CLIENT, clientPort);
    assert.equal(relay.sent.length, sent, 'ChannelData on an expired channel is dropped on the copy');
    assert.equal(b.counters.drops.no_channel, dropped + 1);
    relay.inject(Buffer.from('to client'), PEER, 6000);
    const last = b.path.sentTo(CLIENT, clientPort).at(-1)!;
    assert.notEqual(last.data.readUInt16BE(0), 0x4000, 'the peer’s packet no longer goes over the expired channel');
    const d = decodeMessage(last.data);
    assert.ok(d.ok && d.message.method === Method.Data, 'but as a Data indication (the permission lasts)');

    // In quarantine (RFC 8656 §12): the number stays reserved to its peer on the copy.
    cluster.clock.advance(CHANNEL_QUARANTINE_MS - 1);
    await b.engine.tick();
    assert.ok(copy.channel(0x4000), 'still reserved during the quarantine');
    cluster.clock.advance(1);
    await b.engine.tick();
    assert.equal(copy.channel(0x4000), undefined, 'freed on the copy once the quarantine ends');
    assert.equal(copy.permissionsByAddress.size, 0, 'and its permission with it');
    assert.equal(b.listener.find(CLIENT, clientPort), copy);
  });
});

describe('anycast relay mode: the copy’s grace period while the store is unreachable', () => {
  const cluster = new Cluster();
  after(() => cluster.stop());

  it('keeps relaying up to 60 s past the expiry (it may have been refreshed elsewhere), then deletes the copy', async () => {
    const clientPort = 43000;
    const { b, copy } = await cluster.pair(clientPort, 600);
    const socket = b.relays.socketAt(RELAY, copy.relay.port)!;
    b.view.down = true;

    cluster.clock.advance(copy.expiresAtMs - cluster.clock.now());
    await b.engine.tick();
    assert.equal(b.listener.find(CLIENT, clientPort), copy, 'kept at its expiry: the store cannot say whether it was refreshed');
    cluster.clock.advance(GRACE_MS - 1);
    await b.engine.tick();
    assert.equal(b.listener.find(CLIENT, clientPort), copy, 'kept until the grace period ends');
    assert.equal(socket.closed, false);

    cluster.clock.advance(1);
    await b.engine.tick();
    assert.equal(b.listener.find(CLIENT, clientPort), undefined, 'deleted once the grace period is over');
    assert.equal(socket.closed, true, 'the shared relayed port is released on node B');
  });
});

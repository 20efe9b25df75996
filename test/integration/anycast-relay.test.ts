// Anycast relay mode (ARCHITECTURE §4): the relayed address is shared by every
// node, and every node holds every allocation, kept current from the store's
// events. Several engines in one process, each with its own fake relay sockets on
// the same shared relay address, over one store: first the memory store, then
// real Redis through two store instances (two "nodes"), many times, to show that
// concurrent changes to one allocation from two nodes lose nothing, and that two
// nodes claiming one relayed port get exactly one winner.

import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';

import { createLogger } from '../../src/ops/log.js';
import { MemoryAllocationStore } from '../../src/store/memory.js';
import { createRedisClients } from '../../src/store/redis/clients.js';
import { type AllocationRecord, type AllocationStore, fiveTupleKey } from '../../src/store/types.js';
import { decodeAddress } from '../../src/stun/address.js';
import {
  decodeAddressErrorCode,
  encodeAddressFamily,
  encodeChannelNumber,
  encodeEvenPort,
  encodeRequestedTransport,
  encodeUint32,
} from '../../src/stun/attributes.js';
import { encodeChannelData } from '../../src/stun/channel-data.js';
import { AddressFamily, Attr, MessageClass, Method, TRANSPORT_UDP } from '../../src/stun/constants.js';
import { decodeMessage, getAttribute, getAttributes } from '../../src/stun/message.js';
import { MessageWriter } from '../../src/stun/writer.js';
import { systemClock } from '../../src/turn/clock.js';
import { NonceIssuer } from '../../src/turn/auth/nonce.js';
import { ANYCAST, CLIENT, type EngineNode, PEER, PORT, USER, askEngine, responseCode, signedRequest, startEngineNode, until } from '../helpers/engine-node.js';
import { type RedisServerHandle, startRedisServer } from '../helpers/redis-server.js';

const RELAY = '198.18.100.2';
const RELAY6 = '2001:db8:100::2';
const REALM = 'anycast-relay.test';
const nonces = new NonceIssuer(Buffer.from('shared nonce secret, 32 bytes..'), 600_000);
const logger = createLogger('silent');

type Node = EngineNode;

function startNode(id: string, store: AllocationStore, extra: { relayAddressIPv6?: string; minPort?: number; maxPort?: number } = {}): Node {
  return startEngineNode({
    nodeId: id,
    realm: REALM,
    nonces,
    store,
    clock: systemClock,
    logger,
    relayAddressIPv4: RELAY,
    serverAddresses: [ANYCAST, RELAY, RELAY6],
    allowedPeerRanges: ['198.18.0.0/15', '2001:db8:100::/48'],
    servicePorts: [PORT],
    engine: { relayAddressIPv6: extra.relayAddressIPv6, minPort: extra.minPort ?? 50000, maxPort: extra.maxPort ?? 59999, relayMode: 'anycast' },
  });
}

function request(method: number, decorate: (w: MessageWriter) => void = () => undefined): { buf: Buffer; id: string } {
  return signedRequest(method, REALM, nonces.issue(CLIENT, Date.now()), decorate);
}

function ask(node: Node, clientPort: number, method: number, decorate?: (w: MessageWriter) => void): Promise<number | undefined> {
  return askEngine(node, nonces.issue(CLIENT, Date.now()), clientPort, method, REALM, decorate);
}

/** Nodes of one describe block on one memory store, stopped after the block. */
function nodesOnOneStore(): { readonly store: MemoryAllocationStore; readonly nodes: Node[]; start(id: string): Node } {
  const store = new MemoryAllocationStore();
  const nodes: Node[] = [];
  after(async () => {
    for (const n of nodes) await n.engine.stop();
  });
  return {
    store,
    nodes,
    start(id: string): Node {
      const node = startNode(id, store);
      nodes.push(node);
      return node;
    },
  };
}

const allocate = (w: MessageWriter): void => void w.add(Attr.RequestedTransport, encodeRequestedTransport(TRANSPORT_UDP));
const bind =
  (channel: number, peerPort: number) =>
  (w: MessageWriter): void => {
    w.add(Attr.ChannelNumber, encodeChannelNumber(channel));
    w.addXorAddress(Attr.XorPeerAddress, PEER, peerPort);
  };

describe('anycast relay mode: every node serves every allocation', () => {
  const { store, nodes, start } = nodesOnOneStore();

  it('a node takes on allocations made elsewhere and relays both ways on the shared relayed address', async () => {
    const a = start('a');
    const b = start('b');
    const clientPort = 41000;
    assert.equal(await ask(a, clientPort, Method.Allocate, allocate), 200);
    const relay = [...a.engine.allAllocations()][0]!.relay;
    await until(() => b.relays.socketAt(RELAY, relay.port) !== undefined, 'node B binding the shared relayed address');
    assert.equal(await ask(a, clientPort, Method.ChannelBind, bind(0x4000, 6000)), 200);
    await until(() => [...b.engine.allAllocations()][0]?.channel(0x4000) !== undefined, 'the channel reaching node B');

    // The client's packets now reach node B: B relays from the shared relayed address.
    b.engine.handleClientPacket(b.listener, encodeChannelData(0x4000, Buffer.from('via b')), CLIENT, clientPort);
    const sent = b.relays.socketAt(RELAY, relay.port)!.sent;
    assert.equal(sent.length, 1);
    assert.equal(sent[0]!.data.toString(), 'via b');
    assert.equal(sent[0]!.address, PEER);
    // The peer's packets reach node B too: B answers the client from the anycast address.
    assert.equal(b.relays.socketAt(RELAY, relay.port)!.inject(Buffer.from('to client'), PEER, 6000), true);
    const last = b.path.sentTo(CLIENT, clientPort).at(-1)!;
    assert.equal(last.data.readUInt16BE(0), 0x4000);
    assert.equal(last.data.subarray(4).toString(), 'to client');

    // Node B answers requests on its own; node A sees the change.
    assert.equal(await ask(b, clientPort, Method.ChannelBind, bind(0x4001, 6001)), 200);
    await until(() => [...a.engine.allAllocations()][0]?.channel(0x4001) !== undefined, 'the channel bound on B reaching A');

    // Node A dies without a word: node B loses nothing.
    await a.engine.stop();
    nodes.splice(nodes.indexOf(a), 1);
    assert.ok(await store.get(fiveTupleKey('udp', CLIENT, clientPort, ANYCAST, PORT)), 'a stopping node leaves the shared allocations alone');
    b.engine.handleClientPacket(b.listener, encodeChannelData(0x4001, Buffer.from('still here')), CLIENT, clientPort);
    assert.equal(b.relays.socketAt(RELAY, relay.port)!.sent.at(-1)!.data.toString(), 'still here');
  });

  it('a node that starts later takes on every allocation in the store, with no duplicate ports', async () => {
    const b = nodes[0]!;
    for (let i = 0; i < 20; i++) assert.equal(await ask(b, 42000 + i, Method.Allocate, allocate), 200);
    const c = start('c');
    const adopted = await c.engine.syncFromStore();
    assert.equal(c.engine.allocations, b.engine.allocations);
    assert.ok(adopted >= 20);
    const ports = [...c.engine.allAllocations()].map((x) => x.relay.port);
    assert.equal(new Set(ports).size, ports.length, 'one relayed port per allocation');
    // A refresh to 0 on one node removes the allocation everywhere.
    assert.equal(await ask(c, 42000, Method.Refresh, (w) => w.add(Attr.Lifetime, encodeUint32(0))), 200);
    await until(() => b.engine.allocations === c.engine.allocations && c.engine.allocations === 20, 'the deletion reaching node B');
  });
});

describe('races between two nodes on real Redis', () => {
  let redis: RedisServerHandle;
  before(async () => {
    redis = await startRedisServer();
  });
  after(() => redis.stop());

  it('Refresh on one node and ChannelBind on another at once, 100 times: no lost update', async () => {
    const one = createRedisClients(redis.url);
    const two = createRedisClients(redis.url);
    await one.store.waitUntilReady(5000);
    await two.store.waitUntilReady(5000);
    const a = startNode('a', one.store);
    const b = startNode('b', two.store);
    try {
      for (let i = 0; i < 100; i++) {
        const clientPort = 30000 + i;
        assert.equal(await ask(a, clientPort, Method.Allocate, allocate), 200);
        await until(() => b.listener.find(CLIENT, clientPort) !== undefined, 'node B taking the allocation on');
        const [refresh, bound] = await Promise.all([
          ask(a, clientPort, Method.Refresh, (w) => w.add(Attr.Lifetime, encodeUint32(3000))),
          ask(b, clientPort, Method.ChannelBind, bind(0x4000 + i, 7000 + i)),
        ]);
        assert.equal(refresh, 200);
        assert.equal(bound, 200);
        const key = fiveTupleKey('udp', CLIENT, clientPort, ANYCAST, PORT);
        await until(async () => {
          const r = await one.store.get(key);
          return r !== undefined && r.channels[String(0x4000 + i)] !== undefined && r.expiresAtMs > Date.now() + 2_000_000;
        }, `both changes in the stored record (iteration ${i})`);
        const record = (await one.store.get(key))!;
        assert.equal(record.channels[String(0x4000 + i)]?.peerPort, 7000 + i, 'the channel bound on B survived');
        assert.ok(record.expiresAtMs > Date.now() + 2_000_000, 'the refresh on A survived');
        assert.ok(record.permissions[PEER]! > Date.now(), 'the permission the channel installed survived');
      }
    } finally {
      await a.engine.stop();
      await b.engine.stop();
      await one.store.close();
      await two.store.close();
    }
  });

  it('two nodes claiming one relayed port at once, 200 times: exactly one wins', async () => {
    const one = createRedisClients(redis.url);
    const two = createRedisClients(redis.url);
    await one.store.waitUntilReady(5000);
    await two.store.waitUntilReady(5000);
    try {
      for (let i = 0; i < 200; i++) {
        const port = 20000 + i;
        const record = (node: string) => ({
          key: fiveTupleKey('udp', CLIENT, 10000 + i * 2 + (node === 'a' ? 0 : 1), ANYCAST, PORT),
          transport: 'udp' as const,
          clientAddress: CLIENT,
          clientPort: 10000 + i * 2 + (node === 'a' ? 0 : 1),
          serverAddress: ANYCAST,
          serverPort: PORT,
          relayedAddress: RELAY,
          relayedPort: port,
          ownerNodeId: node,
          username: USER,
          realm: REALM,
          createdAtMs: Date.now(),
          expiresAtMs: Date.now() + 600_000,
          permissions: {},
          channels: {},
        });
        const [x, y] = await Promise.all([one.store.create(record('a'), { userQuota: 0 }), two.store.create(record('b'), { userQuota: 0 })]);
        const winners = [x, y].filter((o) => o.ok).length;
        assert.equal(winners, 1, `iteration ${i}: ${JSON.stringify([x, y])}`);
        const loser = x.ok ? y : x;
        assert.deepEqual(loser, { ok: false, reason: 'port-taken' });
      }
    } finally {
      await one.store.close();
      await two.store.close();
    }
  });
});

/** The success response node `node` sent to CLIENT:clientPort for transaction `id`. */
function responseTo(node: Node, clientPort: number, id: string) {
  for (const sent of node.path.sentTo(CLIENT, clientPort)) {
    const d = decodeMessage(sent.data);
    if (d.ok && d.message.transactionId.toString('hex') === id) return d.message;
  }
  return undefined;
}

/**
 * RFC 8656 §7.2 across nodes: node A issues a RESERVATION-TOKEN (EVEN-PORT R), the client's
 * next Allocate reaches node B, which redeems it on the shared relayed address; node A
 * lets its placeholder go and takes the new allocation on like any other.
 */
async function reservationAcrossNodes(storeA: AllocationStore, storeB: AllocationStore, clientPort: number): Promise<void> {
  const a = startNode('resv-a', storeA);
  const b = startNode('resv-b', storeB);
  try {
    const even = request(Method.Allocate, (w) => {
      allocate(w);
      w.add(Attr.EvenPort, encodeEvenPort(true));
    });
    a.engine.handleClientPacket(a.listener, even.buf, CLIENT, clientPort);
    await until(() => responseTo(a, clientPort, even.id) !== undefined, "node A's answer to EVEN-PORT R");
    const first = responseTo(a, clientPort, even.id)!;
    const token = getAttribute(first, Attr.ReservationToken);
    assert.ok(token, 'a RESERVATION-TOKEN');
    const firstPort = decodeAddress(getAttribute(first, Attr.XorRelayedAddress)!, first.transactionId)!.port;
    assert.equal(firstPort % 2, 0);
    assert.ok(a.relays.socketAt(RELAY, firstPort + 1), "node A's placeholder holds the next port");

    const redeem = request(Method.Allocate, (w) => {
      allocate(w);
      w.add(Attr.ReservationToken, token);
    });
    b.engine.handleClientPacket(b.listener, redeem.buf, CLIENT, clientPort + 1);
    await until(() => responseTo(b, clientPort + 1, redeem.id) !== undefined, "node B's answer to RESERVATION-TOKEN");
    const second = responseTo(b, clientPort + 1, redeem.id)!;
    assert.equal(responseCode(b, clientPort + 1, redeem.id), 200, 'node B redeems the token node A issued');
    assert.equal(decodeAddress(getAttribute(second, Attr.XorRelayedAddress)!, second.transactionId)!.port, firstPort + 1);

    // Node A takes the allocation on: its placeholder had to make room on that port.
    await until(() => a.listener.find(CLIENT, clientPort + 1) !== undefined, 'node A taking on the allocation made on B');
    assert.equal(a.listener.find(CLIENT, clientPort + 1)!.relay.port, firstPort + 1);

    // The token worked once, cluster-wide.
    const again = request(Method.Allocate, (w) => {
      allocate(w);
      w.add(Attr.ReservationToken, token);
    });
    a.engine.handleClientPacket(a.listener, again.buf, CLIENT, clientPort + 2);
    await until(() => responseCode(a, clientPort + 2, again.id) !== undefined, 'an answer to the spent token');
    assert.equal(responseCode(a, clientPort + 2, again.id), 508);
  } finally {
    await a.engine.stop();
    await b.engine.stop();
  }
}

describe('anycast relay mode: a RESERVATION-TOKEN is redeemed on any node', () => {
  let redis: RedisServerHandle;
  before(async () => {
    redis = await startRedisServer();
  });
  after(() => redis.stop());

  it('over one memory store', async () => {
    const store = new MemoryAllocationStore();
    await reservationAcrossNodes(store, store, 43000);
  });

  it('over real Redis, one store client per node', async () => {
    const one = createRedisClients(redis.url);
    const two = createRedisClients(redis.url);
    await one.store.waitUntilReady(5000);
    await two.store.waitUntilReady(5000);
    try {
      await reservationAcrossNodes(one.store, two.store, 43100);
    } finally {
      await one.store.close();
      await two.store.close();
    }
  });
});

describe('anycast relay mode: records from the store meet the peer policy', () => {
  const { store, start } = nodesOnOneStore();

  it('a permission or channel written to the store for a refused peer is installed on no node', async () => {
    const a = start('a');
    const b = start('b');
    const clientPort = 43000;
    assert.equal(await ask(a, clientPort, Method.Allocate, allocate), 200);
    const key = fiveTupleKey('udp', CLIENT, clientPort, ANYCAST, PORT);
    await until(() => b.listener.find(CLIENT, clientPort) !== undefined, 'node B taking the allocation on');
    // Anyone who can write the store (or publish on its event channel) writes this.
    const far = Date.now() + 600_000;
    const stored = (await store.get(key))!;
    const tampered: AllocationRecord = {
      ...stored,
      permissions: { ...stored.permissions, '169.254.169.254': far, '10.0.0.1': far, [PEER]: far },
      channels: {
        '16400': { peerAddress: '169.254.169.254', peerPort: 80, expiresAtMs: far },
        '16401': { peerAddress: ANYCAST, peerPort: PORT, expiresAtMs: far }, // the server's own listening port
        '16402': { peerAddress: PEER, peerPort: 0, expiresAtMs: far }, // no such port
        '99999': { peerAddress: PEER, peerPort: 6200, expiresAtMs: far }, // no such channel
        '16403': { peerAddress: PEER, peerPort: 6100, expiresAtMs: far },
      },
    };
    assert.ok((await store.update(tampered)).ok);
    const held = (n: Node) => n.listener.find(CLIENT, clientPort)!;
    await until(() => held(a).channel(16403) !== undefined && held(b).channel(16403) !== undefined, 'the allowed channel reaching both nodes');
    // A node that starts now takes the record on from a listing (adopt).
    const c = start('c');
    await c.engine.syncFromStore();
    for (const n of [a, b, c]) {
      const allocation = held(n);
      assert.ok(allocation.permissionsByAddress.has(PEER), 'the allowed permission is there');
      assert.ok(allocation.channel(16403), 'the allowed channel is there');
      assert.deepEqual([...allocation.permissionsByAddress.keys()], [PEER], 'no refused permission installed');
      assert.deepEqual(
        [...allocation.bindings].map((x) => x.number),
        [16403],
        'no refused channel installed',
      );
    }
    // A Send indication to the refused address goes nowhere.
    const sendTo = (ip: string): Buffer => {
      const w = new MessageWriter(Method.Send, MessageClass.Indication, randomBytes(12));
      w.addXorAddress(Attr.XorPeerAddress, ip, 80);
      w.add(Attr.Data, Buffer.from('metadata?'));
      return w.toBuffer();
    };
    const relay = held(b).relay;
    const before = b.relays.socketAt(RELAY, relay.port)!.sent.length;
    b.engine.handleClientPacket(b.listener, sendTo('169.254.169.254'), CLIENT, clientPort);
    assert.equal(b.relays.socketAt(RELAY, relay.port)!.sent.length, before);
  });
});

describe('anycast relay mode: the IPv6 relayed address of a dual allocation is claimed in the store', () => {
  // Node B never hears the store's events (a missed event, or a write racing its own):
  // only the store's claim stands between it and an IPv6 relayed port another node holds.
  const store = new MemoryAllocationStore();
  const deaf: AllocationStore = new Proxy(store, {
    get(target, prop, receiver) {
      if (prop === 'subscribe') return () => () => undefined;
      const value = Reflect.get(target, prop, receiver) as unknown;
      return typeof value === 'function' ? (value as (...args: unknown[]) => unknown).bind(target) : value;
    },
  });
  let b: Node | undefined;
  after(async () => {
    await b?.engine.stop();
  });

  it('a node does not hand out an IPv6 relayed port that another node holds; the Allocate goes on with IPv4', async () => {
    const MIN = 50000;
    const held = {
      key: fiveTupleKey('udp', CLIENT, 44000, ANYCAST, PORT),
      transport: 'udp' as const,
      clientAddress: CLIENT,
      clientPort: 44000,
      serverAddress: ANYCAST,
      serverPort: PORT,
      relayedAddress: RELAY,
      relayedPort: MIN,
      additionalRelayedAddress: RELAY6,
      additionalRelayedPort: MIN + 1,
      ownerNodeId: 'a',
      username: USER,
      realm: REALM,
      createdAtMs: Date.now(),
      expiresAtMs: Date.now() + 600_000,
      permissions: {},
      channels: {},
    };
    assert.ok((await store.create(held, { userQuota: 0 })).ok);
    b = startNode('b', deaf, { relayAddressIPv6: RELAY6, minPort: MIN, maxPort: MIN + 1 });
    // Locally, B could bind only the IPv6 port node A holds.
    b.relays.takePort(RELAY6, MIN);
    const r = request(Method.Allocate, (w) => {
      allocate(w);
      w.add(Attr.AdditionalAddressFamily, encodeAddressFamily(AddressFamily.IPv6));
    });
    b.engine.handleClientPacket(b.listener, r.buf, CLIENT, 44001);
    await until(() => responseCode(b!, 44001, r.id) !== undefined, 'the Allocate answer');
    assert.equal(responseCode(b, 44001, r.id), 200);
    const answer = b.path
      .sentTo(CLIENT, 44001)
      .map((x) => decodeMessage(x.data))
      .find((d) => d.ok && d.message.transactionId.toString('hex') === r.id)!;
    assert.ok(answer.ok);
    const relayed = getAttributes(answer.message, Attr.XorRelayedAddress).map((v) => decodeAddress(v, answer.message.transactionId)!);
    assert.deepEqual(
      relayed.map((x) => `${x.address}|${x.port}`),
      [`${RELAY}|${MIN + 1}`],
      'IPv4 only: the IPv6 port is node A’s',
    );
    const refused = decodeAddressErrorCode(getAttribute(answer.message, Attr.AddressErrorCode) ?? Buffer.alloc(0));
    assert.equal(refused?.family, AddressFamily.IPv6);
    assert.equal(refused?.code, 508);
  });
});

// RFC 8016 mobility across a forward-mode cluster on a real redis-server: the client
// allocated on node A through the anycast address, then changed network, and the
// anycast route took its Refresh with the ticket to node B. B authenticates it, opens
// the ticket (sealed under a key from the cluster secret, so B can), finds the
// allocation's owner in the store and forwards the request over the real mesh; A moves
// the allocation to the new 5-tuple (the Redis record under the new key, the old one
// gone) and answers. What the client sends from the new 5-tuple to B then reaches A,
// and the peer's data comes back to the new 5-tuple through the same relayed address.
// Two engines in one process, each with its own Redis connections and mesh socket, as
// in cluster-forward.test.ts: on one host two processes cannot both listen on the
// anycast address (test/anycast builds that with network namespaces). Then anycast
// relay mode: the node the Refresh reaches moves its copy, the other copies follow the
// store's record (replication.ts).

import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';

import { createLogger } from '../../src/ops/log.js';
import { MemoryAllocationStore } from '../../src/store/memory.js';
import { type RedisClients, createRedisClients } from '../../src/store/redis/clients.js';
import { MOVED, type StoreEvent, type StoreEventListener, fiveTupleKey } from '../../src/store/types.js';
import { encodeChannelNumber, encodeRequestedTransport } from '../../src/stun/attributes.js';
import { encodeChannelData, readChannelNumber } from '../../src/stun/channel-data.js';
import { Attr, Method, TRANSPORT_UDP } from '../../src/stun/constants.js';
import { decodeMessage, getAttribute } from '../../src/stun/message.js';
import type { MessageWriter } from '../../src/stun/writer.js';
import { MobilityTickets } from '../../src/turn/auth/mobility-ticket.js';
import { NonceIssuer } from '../../src/turn/auth/nonce.js';
import { ManualClock } from '../../src/turn/clock.js';
import { ANYCAST, CLIENT, type MeshNode, PEER, PORT, responseCode, signedRequest, startEngineNode, startMeshNode, until } from '../helpers/engine-node.js';
import { type RedisServerHandle, startRedisServer } from '../helpers/redis-server.js';

const REALM = 'mobility-cluster.test';

/**
 * A memory store that delivers a move's two events the other way round: the new
 * record first, then the old key's deletion. A Redis Cluster may (the two keys' masters
 * publish separately, store/types.ts subscribe()); the copies must follow either way.
 */
class CreationFirstStore extends MemoryAllocationStore {
  /** Deletions delivered after the creation that followed them. */
  swapped = 0;
  override subscribe(listener: StoreEventListener): () => void {
    let held: StoreEvent | undefined;
    return super.subscribe((event) => {
      if (event.type === 'deleted' && event.reason === MOVED) {
        held = event;
        return;
      }
      listener(event);
      if (held) {
        this.swapped++;
        listener(held);
      }
      held = undefined;
    });
  }
}
const SECRET = Buffer.from('mobility cluster secret, 32 bytes');

describe('RFC 8016 mobility to another node of a forward-mode cluster (real redis-server, real mesh)', () => {
  const clock = new ManualClock(Date.now());
  const logger = createLogger('silent');
  const nonces = new NonceIssuer(SECRET, 600_000);
  const prefix = `mob${randomBytes(4).toString('hex')}:`;
  let redis: RedisServerHandle;
  const stores: RedisClients[] = [];
  const nodes: MeshNode[] = [];

  before(async () => {
    redis = await startRedisServer();
  });
  after(async () => {
    for (const n of nodes) {
      n.router.close();
      await n.engine.stop();
      await n.mesh.close();
    }
    for (const s of stores) await s.close();
    await redis.stop();
  });

  async function node(id: string, relayIp: string): Promise<MeshNode> {
    const clients = createRedisClients(redis.url, { keyPrefix: prefix });
    await clients.store.waitUntilReady(5_000);
    stores.push(clients);
    const n = await startMeshNode({
      id,
      realm: REALM,
      secret: SECRET,
      nonces,
      store: clients.store,
      registry: clients.registry,
      clock,
      logger,
      relayIp,
      lookupsPerSecond: 1000,
      // Each node derives the ticket key from the cluster secret, as server/engine.ts does.
      engine: { mobility: new MobilityTickets(SECRET) },
    });
    nodes.push(n);
    await clients.registry.heartbeat({ nodeId: id, meshAddress: '127.0.0.1', meshPort: n.mesh.port }, 60_000);
    return n;
  }

  function request(method: number, decorate: (w: MessageWriter) => void): { buf: Buffer; id: string } {
    return signedRequest(method, REALM, nonces.issue(CLIENT, clock.now()), decorate);
  }

  /** The answer `n` sent to CLIENT:port for transaction `id`. */
  function answer(n: MeshNode, port: number, id: string): ReturnType<typeof decodeMessage> | undefined {
    for (const sent of n.path.sentTo(CLIENT, port)) {
      const d = decodeMessage(sent.data);
      if (d.ok && d.message.transactionId.toString('hex') === id) return d;
    }
    return undefined;
  }

  it("node B hands the ticket's Refresh to the owner A, which moves the allocation; the stream goes on both ways", async () => {
    const a = await node('mob-a', '198.18.1.2');
    const b = await node('mob-b', '198.18.2.2');
    const oldPort = 41001;
    const newPort = 41002;

    const alloc = request(Method.Allocate, (w) => {
      w.add(Attr.RequestedTransport, encodeRequestedTransport(TRANSPORT_UDP));
      w.add(Attr.MobilityTicket, Buffer.alloc(0));
    });
    a.engine.handleClientPacket(a.listener, alloc.buf, CLIENT, oldPort);
    await until(() => responseCode(a, oldPort, alloc.id) === 200, 'Allocate on A');
    const allocated = answer(a, oldPort, alloc.id);
    assert.ok(allocated?.ok);
    const ticket = Buffer.from(getAttribute(allocated.message, Attr.MobilityTicket)!);
    const bind = request(Method.ChannelBind, (w) => {
      w.add(Attr.ChannelNumber, encodeChannelNumber(0x4000));
      w.addXorAddress(Attr.XorPeerAddress, PEER, 6000);
    });
    a.engine.handleClientPacket(a.listener, bind.buf, CLIENT, oldPort);
    await until(() => responseCode(a, oldPort, bind.id) === 200, 'ChannelBind on A');
    const relay = [...a.engine.allAllocations()][0]!.relay;
    const oldKey = fiveTupleKey('udp', CLIENT, oldPort, ANYCAST, PORT);
    const newKey = fiveTupleKey('udp', CLIENT, newPort, ANYCAST, PORT);
    assert.ok(await stores[0]!.store.get(oldKey));

    // The new network: the Refresh with the ticket comes from a new port, and lands on B.
    const refresh = request(Method.Refresh, (w) => w.add(Attr.MobilityTicket, ticket));
    b.engine.handleClientPacket(b.listener, refresh.buf, CLIENT, newPort);
    await until(() => responseCode(a, newPort, refresh.id) !== undefined, 'the owner answers the Refresh');
    assert.equal(responseCode(a, newPort, refresh.id), 200);
    assert.equal(responseCode(b, newPort, refresh.id), undefined, 'B does not answer: A does, from the anycast address');
    const refreshed = answer(a, newPort, refresh.id);
    assert.ok(refreshed?.ok && getAttribute(refreshed.message, Attr.MobilityTicket), 'a new ticket');
    assert.equal(b.engine.allocations, 0);
    const moved = await stores[1]!.store.get(newKey);
    assert.deepEqual(
      [moved?.ownerNodeId, moved?.relayedAddress, moved?.relayedPort, moved?.clientPort, Object.keys(moved?.channels ?? {})],
      ['mob-a', relay.address, relay.port, newPort, [String(0x4000)]],
    );
    assert.equal(await stores[1]!.store.get(oldKey), undefined, 'the old record is gone');

    // ChannelData from the new 5-tuple to B reaches the peer from A's same relayed address.
    const socket = a.relays.socketAt(relay.address, relay.port)!;
    b.engine.handleClientPacket(b.listener, encodeChannelData(0x4000, Buffer.from('via b after the move')), CLIENT, newPort);
    await until(() => socket.sent.length === 1, 'ChannelData relayed by the owner');
    assert.deepEqual(socket.sent[0], { data: Buffer.from('via b after the move'), address: PEER, port: 6000 });
    // The peer's answer goes to the new 5-tuple, on the channel.
    socket.inject(Buffer.from('down'), PEER, 6000);
    const down = a.path.sentTo(CLIENT, newPort).filter((s) => s.kind === 'framed');
    assert.equal(down.length, 1);
    assert.deepEqual([readChannelNumber(down[0]!.data), down[0]!.data.subarray(4, 8).toString()], [0x4000, 'down']);
    assert.equal(a.engineCounters.mobilityMoves, 1);

    // The spent ticket from a third port, on B: its 5-tuple holds nothing now.
    const replay = request(Method.Refresh, (w) => w.add(Attr.MobilityTicket, ticket));
    b.engine.handleClientPacket(b.listener, replay.buf, CLIENT, 41003);
    await until(() => responseCode(b, 41003, replay.id) !== undefined || responseCode(a, 41003, replay.id) !== undefined, 'an answer to the replay');
    assert.equal(responseCode(b, 41003, replay.id) ?? responseCode(a, 41003, replay.id), 437);
    assert.equal(a.engineCounters.mobilityMoves, 1);
  });
});

describe('RFC 8016 mobility in anycast relay mode: every copy follows the move', () => {
  for (const order of ['deletion first', 'creation first (as a Redis Cluster may deliver them)'] as const) {
    it(`node B moves its copy on the client's Refresh; node A's copy takes the new 5-tuple from the store and relays for it (move events: ${order})`, async () => {
      const clock = new ManualClock(Date.now());
      const store = order === 'deletion first' ? new MemoryAllocationStore({ now: () => clock.now() }) : new CreationFirstStore({ now: () => clock.now() });
      const nonces = new NonceIssuer(SECRET, 600_000);
      const start = (id: string) =>
        startEngineNode({
          nodeId: id,
          realm: REALM,
          nonces,
          store,
          clock,
          logger: createLogger('silent'),
          relayAddressIPv4: '198.18.100.2',
          serverAddresses: [ANYCAST, '198.18.100.2'],
          engine: { relayMode: 'anycast', mobility: new MobilityTickets(SECRET) },
        });
      const a = start('any-a');
      const b = start('any-b');
      const ask = async (n: typeof a, port: number, method: number, decorate: (w: MessageWriter) => void) => {
        const r = signedRequest(method, REALM, nonces.issue(CLIENT, clock.now()), decorate);
        n.engine.handleClientPacket(n.listener, r.buf, CLIENT, port);
        await until(() => responseCode(n, port, r.id) !== undefined, `an answer to method ${method}`);
        return { code: responseCode(n, port, r.id), id: r.id };
      };
      try {
        const alloc = await ask(a, 42001, Method.Allocate, (w) => {
          w.add(Attr.RequestedTransport, encodeRequestedTransport(TRANSPORT_UDP));
          w.add(Attr.MobilityTicket, Buffer.alloc(0));
        });
        assert.equal(alloc.code, 200);
        const sent = a.path
          .sentTo(CLIENT, 42001)
          .map((s) => decodeMessage(s.data))
          .find((d) => d.ok && d.message.transactionId.toString('hex') === alloc.id);
        assert.ok(sent?.ok);
        const ticket = Buffer.from(getAttribute(sent.message, Attr.MobilityTicket)!);
        const bound = await ask(a, 42001, Method.ChannelBind, (w) => {
          w.add(Attr.ChannelNumber, encodeChannelNumber(0x4000));
          w.addXorAddress(Attr.XorPeerAddress, PEER, 6000);
        });
        assert.equal(bound.code, 200);
        await until(() => [...b.engine.allAllocations()][0]?.channelCount === 1, "B's copy with the channel");

        assert.equal((await ask(b, 42002, Method.Refresh, (w) => w.add(Attr.MobilityTicket, ticket))).code, 200, 'B moves its copy');
        await until(() => [...a.engine.allAllocations()][0]?.clientPort === 42002, "A's copy follows");
        for (const n of [a, b]) {
          const [only, ...rest] = [...n.engine.allAllocations()];
          assert.equal(rest.length, 0);
          assert.deepEqual([only?.clientPort, only?.relay.port, only?.channelCount], [42002, [...b.engine.allAllocations()][0]!.relay.port, 1]);
        }
        assert.ok(await store.get(fiveTupleKey('udp', CLIENT, 42002, ANYCAST, PORT)));
        assert.equal(await store.get(fiveTupleKey('udp', CLIENT, 42001, ANYCAST, PORT)), undefined);
        // A relays ChannelData from the new 5-tuple, and answers it there.
        const relay = [...a.engine.allAllocations()][0]!.relay;
        a.engine.handleClientPacket(a.listener, encodeChannelData(0x4000, Buffer.from('up')), CLIENT, 42002);
        assert.equal(a.relays.socketAt(relay.address, relay.port)?.sent.at(-1)?.data.toString(), 'up');
        a.relays.socketAt(relay.address, relay.port)!.inject(Buffer.from('down'), PEER, 6000);
        assert.equal(a.path.sentTo(CLIENT, 42002).filter((s) => s.kind === 'framed').length, 1);
        if (store instanceof CreationFirstStore) assert.ok(store.swapped >= 1, 'the move was heard creation first');
        // The spent ticket on A, from a third port: refused there too.
        assert.notEqual((await ask(a, 42003, Method.Refresh, (w) => w.add(Attr.MobilityTicket, ticket))).code, 200);
      } finally {
        await a.engine.stop();
        await b.engine.stop();
      }
    });
  }
});

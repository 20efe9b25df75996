// Forward mode on real redis-servers (docs/scaling.md "The event feed", "Regions"):
// - what each node hears of the store's events: only the 5-tuples it has cached. A
//   client's whole lifecycle on its owner reaches no other node; a client rerouted to
//   node B makes B (only B) hear that allocation's events until the entry goes;
// - a client rerouted to a node of another region (its own store, on its own
//   redis-server) gets 437 to the first transmission of its Refresh, and its Allocate
//   there succeeds with that node's relayed address.
// Engines in one process, each with its own Redis connections and a real mesh socket, as
// in mobility-cluster.test.ts: on one host two processes cannot both listen on the
// anycast address that makes a reroute (test/anycast builds that with namespaces).

import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';

import { Redis } from 'ioredis';

import { createLogger } from '../../src/ops/log.js';
import { type RedisClients, createRedisClients } from '../../src/store/redis/clients.js';
import { regionKeyPrefix } from '../../src/store/redis/keys.js';
import { decodeAddress } from '../../src/stun/address.js';
import { encodeRequestedTransport, encodeUint32 } from '../../src/stun/attributes.js';
import { Attr, Method, TRANSPORT_UDP } from '../../src/stun/constants.js';
import { decodeMessage, getAttribute } from '../../src/stun/message.js';
import type { MessageWriter } from '../../src/stun/writer.js';
import { NonceIssuer } from '../../src/turn/auth/nonce.js';
import { ManualClock } from '../../src/turn/clock.js';
import { ANYCAST, CLIENT, type MeshNode, PEER, PORT, responseCode, signedRequest, startMeshNode, until } from '../helpers/engine-node.js';
import { proveSubscriptions, recordFactory } from '../helpers/records.js';
import { type RedisServerHandle, startRedisServer } from '../helpers/redis-server.js';

const REALM = 'forward-feed.test';
const SECRET = Buffer.from('forward feed cluster secret, 32 b');

const allocate = (w: MessageWriter): void => {
  w.add(Attr.RequestedTransport, encodeRequestedTransport(TRANSPORT_UDP));
  w.add(Attr.Lifetime, encodeUint32(600));
};
const permission = (w: MessageWriter): void => {
  w.addXorAddress(Attr.XorPeerAddress, PEER, 1);
};
const { newRecord } = recordFactory({ clientAddress: '198.51.100.30', relayedAddress: '203.0.113.30', firstClientPort: 22000, firstRelayPort: 32000 });
const lifetime = (seconds: number) => (w: MessageWriter) => w.add(Attr.Lifetime, encodeUint32(seconds));

describe('forward mode: the event feed and regions (real redis-servers, real mesh)', () => {
  const clock = new ManualClock(Date.now());
  const logger = createLogger('silent');
  const nonces = new NonceIssuer(SECRET, 600_000);
  let redisOne: RedisServerHandle;
  let redisTwo: RedisServerHandle;
  const stores: RedisClients[] = [];
  const nodes: MeshNode[] = [];
  const stats = new Map<MeshNode, RedisClients>();

  before(async () => {
    redisOne = await startRedisServer();
    redisTwo = await startRedisServer();
  });
  after(async () => {
    for (const n of nodes) {
      n.router.close();
      await n.engine.stop();
      await n.mesh.close();
    }
    for (const s of stores) await s.close();
    await redisOne?.stop();
    await redisTwo?.stop();
  });

  async function openStore(redis: RedisServerHandle, region: string): Promise<RedisClients> {
    const clients = createRedisClients(redis.url, { keyPrefix: regionKeyPrefix(region) });
    await clients.store.waitUntilReady(5_000);
    stores.push(clients);
    return clients;
  }

  async function node(id: string, relayIp: string, redis: RedisServerHandle, region: string): Promise<MeshNode> {
    const clients = await openStore(redis, region);
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
    });
    nodes.push(n);
    stats.set(n, clients);
    await clients.registry.heartbeat({ nodeId: id, meshAddress: '127.0.0.1', meshPort: n.mesh.port, region }, 60_000);
    return n;
  }

  /** A request sent once to `via`, answered by `by` (the owner, when `via` forwards it): its code. */
  async function ask(via: MeshNode, by: MeshNode, clientPort: number, method: number, decorate: (w: MessageWriter) => void): Promise<number | undefined> {
    const { buf, id } = signedRequest(method, REALM, nonces.issue(CLIENT, clock.now()), decorate);
    via.engine.handleClientPacket(via.listener, buf, CLIENT, clientPort);
    await until(() => responseCode(by, clientPort, id) !== undefined, `an answer to method ${method} from ${by.id}`);
    return responseCode(by, clientPort, id);
  }

  const received = (n: MeshNode): number => stats.get(n)!.store.eventStats().eventsReceived;

  it('a lifecycle on its owner reaches no other node; a rerouted client’s allocation is heard by the node it reached, until it ends', async () => {
    const a = await node('feed-a', '198.18.1.2', redisOne, 'one');
    const b = await node('feed-b', '198.18.2.2', redisOne, 'one');
    const c = await node('feed-c', '198.18.3.2', redisOne, 'one');
    // Counts every event of the region: it tells when an event has been delivered everywhere.
    const observer = await openStore(redisOne, 'one');
    const all: string[] = [];
    observer.store.subscribe((e) => all.push(e.type));

    await proveSubscriptions(observer.store, newRecord(), [all]);

    // A whole lifecycle on its owner: Allocate, CreatePermission, Refresh, Refresh 0.
    assert.equal(await ask(a, a, 44001, Method.Allocate, allocate), 200);
    assert.equal(await ask(a, a, 44001, Method.CreatePermission, permission), 200);
    assert.equal(await ask(a, a, 44001, Method.Refresh, lifetime(600)), 200);
    assert.equal(await ask(a, a, 44001, Method.Refresh, lifetime(0)), 200);
    await until(() => all.length >= 4, 'the lifecycle’s four events on the observer');
    assert.deepEqual([received(a), received(b), received(c)], [0, 0, 0], 'no node heard the lifecycle of an allocation it never looked up');

    // The client allocates on A; the anycast route then takes it to B.
    assert.equal(await ask(a, a, 44002, Method.Allocate, allocate), 200);
    assert.equal(await ask(b, a, 44002, Method.CreatePermission, permission), 200);
    assert.equal(b.router.cachedEntries, 1, 'B cached the owner');
    assert.equal(await ask(b, a, 44002, Method.Refresh, lifetime(600)), 200);
    assert.equal(await ask(b, a, 44002, Method.Refresh, lifetime(0)), 200);
    await until(() => all.length >= 8, 'the rerouted client’s four events on the observer');
    await until(() => b.router.cachedEntries === 0, 'B hearing the deletion and forgetting the owner');
    assert.equal(received(b), 3, 'B heard the three events after its lookup: CreatePermission, Refresh, Refresh 0');
    assert.deepEqual([received(a), received(c)], [0, 0], 'nobody else did');
    const admin = new Redis(redisOne.url);
    try {
      const [, watchers] = (await admin.pubsub('NUMSUB', `${regionKeyPrefix('one')}ev:{udp|${CLIENT}|44002|${ANYCAST}|${PORT}}`)) as [string, number];
      assert.equal(Number(watchers), 0, 'B no longer subscribes to the ended allocation');
    } finally {
      admin.disconnect();
    }
  });

  it('a client rerouted to another region gets 437 to its first Refresh there, and allocates again with that node’s relayed address', async () => {
    const a = nodes.find((n) => n.id === 'feed-a') ?? (await node('feed-a', '198.18.1.2', redisOne, 'one'));
    const d = await node('feed-d', '198.18.4.2', redisTwo, 'two');
    const clientPort = 44100;
    assert.equal(await ask(a, a, clientPort, Method.Allocate, allocate), 200);

    // The route moves the client to D, in region "two": one transmission of its Refresh.
    const refresh = signedRequest(Method.Refresh, REALM, nonces.issue(CLIENT, clock.now()), lifetime(600));
    d.engine.handleClientPacket(d.listener, refresh.buf, CLIENT, clientPort);
    await until(() => responseCode(d, clientPort, refresh.id) !== undefined, 'D answering the one Refresh');
    assert.equal(responseCode(d, clientPort, refresh.id), 437, 'allocation mismatch at once: nothing of region one is waited for');
    assert.equal(d.counters.meshForwarded, 0, 'nothing forwarded across regions');
    assert.equal(stats.get(a)!.store.eventStats().eventsReceived, 0);

    const again = signedRequest(Method.Allocate, REALM, nonces.issue(CLIENT, clock.now()), allocate);
    d.engine.handleClientPacket(d.listener, again.buf, CLIENT, clientPort);
    await until(() => responseCode(d, clientPort, again.id) !== undefined, 'D answering the new Allocate');
    assert.equal(responseCode(d, clientPort, again.id), 200);
    const answer = d.path
      .sentTo(CLIENT, clientPort)
      .map((s) => decodeMessage(s.data))
      .find((m) => m.ok && m.message.transactionId.toString('hex') === again.id);
    assert.ok(answer?.ok);
    const relayed = decodeAddress(getAttribute(answer.message, Attr.XorRelayedAddress)!, answer.message.transactionId);
    assert.equal(relayed?.address, '198.18.4.2', 'a new relayed address, on the node of the new region');
    // Region one still holds the first allocation (its owner ends it when it expires).
    assert.ok(a.listener.find(CLIENT, clientPort), 'the first allocation lives on in region one');
  });
});

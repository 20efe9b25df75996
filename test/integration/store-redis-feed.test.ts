// The Redis store's event feed on a real redis-server (docs/scaling.md "The event feed"):
// every allocation's events go to its own channel, so a forward-mode node (a key
// watcher) is delivered only the events of the 5-tuples it watches, counted in
// eventsReceived (anyturn_store_events_received_total), while a node that subscribes to
// every event (anycast relay mode) hears them all through one pattern. And --region:
// two regions on one Redis (by mistake) never see each other's records, nodes or events.

import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';

import { Redis } from 'ioredis';

import { createRedisClients, type RedisClients } from '../../src/store/redis/clients.js';
import { regionKeyPrefix } from '../../src/store/redis/keys.js';
import { silentLogger as silent } from '../../src/store/redis/options.js';
import { openSharedStore } from '../../src/store/shared.js';
import type { AllocationRecord, NewAllocationRecord, StoreEvent } from '../../src/store/types.js';
import { proveSubscriptions, recordFactory } from '../helpers/records.js';
import { startRedisServer, type RedisServerHandle } from '../helpers/redis-server.js';

let server: RedisServerHandle | undefined;
const opened: RedisClients[] = [];
let admin: Redis | undefined;

before(async () => {
  server = await startRedisServer();
  admin = new Redis(server.url, { lazyConnect: true, maxRetriesPerRequest: 1 });
  admin.on('error', () => undefined);
  await admin.connect();
});

after(async () => {
  for (const c of opened) await c.close();
  admin?.disconnect();
  await server?.stop();
});

async function open(keyPrefix: string): Promise<RedisClients> {
  assert.ok(server);
  const clients = createRedisClients(server.url, { keyPrefix });
  opened.push(clients);
  await clients.store.waitUntilReady(5_000);
  return clients;
}

async function waitFor(done: () => boolean | Promise<boolean>, what: string, timeoutMs = 5_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await done())) {
    if (Date.now() > deadline) assert.fail(`timed out waiting for ${what}`);
    await new Promise<void>((resolve) => setTimeout(resolve, 10));
  }
}

const { newRecord } = recordFactory({ clientAddress: '198.51.100.9', relayedAddress: '203.0.113.9', firstClientPort: 21000, firstRelayPort: 31000 });

async function mustCreate(clients: RedisClients, record: NewAllocationRecord): Promise<AllocationRecord> {
  const outcome = await clients.store.create(record, { userQuota: 0 });
  assert.ok(outcome.ok, `create ${record.key}: ${outcome.ok ? '' : outcome.reason}`);
  return outcome.record;
}

function describeEvent(e: StoreEvent): string {
  return e.type === 'deleted' ? `deleted ${e.key}` : `${e.type} ${e.record.key} v${e.record.version}`;
}

/** Subscribers of one channel, as Redis counts them. */
async function subscribers(channel: string): Promise<number> {
  const reply = (await admin!.pubsub('NUMSUB', channel)) as [string, number];
  return Number(reply[1]);
}

describe('the Redis event feed: one channel per allocation', () => {
  it('a key watcher is delivered the events of its watched 5-tuple only; a subscriber of every event hears all', async () => {
    const prefix = `feed${randomBytes(4).toString('hex')}:`;
    const writer = await open(prefix);
    const forward = await open(prefix);
    const anycast = await open(prefix);
    const heard: string[] = [];
    const all: string[] = [];
    const watcher = forward.store.watcher((e) => heard.push(describeEvent(e)));
    anycast.store.subscribe((e) => all.push(describeEvent(e)));
    await proveSubscriptions(writer.store, newRecord(), [all]);
    const allBefore = anycast.store.eventStats().eventsReceived;
    assert.equal(forward.store.eventStats().eventsReceived, 0, 'nothing watched, nothing heard');

    const watched = newRecord();
    const others = [newRecord(), newRecord(), newRecord()];
    const channel = `${prefix}ev:{${watched.key}}`;
    const watch = watcher.watch(watched.key);
    await watch.ready;
    assert.equal(await subscribers(channel), 1, 'one SUBSCRIBE on the watched key’s channel');

    // Five events of other allocations, three of the watched one.
    for (const other of others) await mustCreate(writer, other);
    const created = await mustCreate(writer, watched);
    const updated = await writer.store.update({ ...created, expiresAtMs: Date.now() + 1_200_000 });
    assert.ok(updated.ok);
    await writer.store.delete(others[0]!.key, 'test');
    await writer.store.delete(others[1]!.key, 'test');
    await writer.store.delete(watched.key, 'refresh-zero');

    await waitFor(() => all.length >= 8, 'every event on the subscriber of every event');
    await waitFor(() => heard.length >= 3, 'the watched events');
    assert.deepEqual(heard, [`created ${watched.key} v1`, `updated ${watched.key} v2`, `deleted ${watched.key}`]);
    assert.equal(forward.store.eventStats().eventsReceived, 3, 'Redis delivered the watcher its key’s events, no others');
    assert.equal(anycast.store.eventStats().eventsReceived - allBefore, 8, 'the pattern delivers every event once');
    assert.equal(writer.store.eventStats().eventsReceived, 0, 'a writer that listens to nothing hears nothing');

    watch.close();
    await waitFor(async () => (await subscribers(channel)) === 0, 'the UNSUBSCRIBE once the last watch closed');
    await mustCreate(writer, { ...watched, relayedPort: watched.relayedPort + 1000 });
    await waitFor(() => all.length >= 9, 'the next event on the subscriber of every event');
    assert.equal(forward.store.eventStats().eventsReceived, 3, 'nothing after the watch closed');
    watcher.close();
  });

  it('still hears events an older node publishes on the one channel of old, when subscribed to every event', async () => {
    const prefix = `feed${randomBytes(4).toString('hex')}:`;
    const node = await open(prefix);
    const all: StoreEvent[] = [];
    node.store.subscribe((e) => all.push(e));
    await proveSubscriptions(node.store, newRecord(), [all]);
    const record: AllocationRecord = { ...newRecord(), version: 1 };
    await admin!.publish(`${prefix}events`, JSON.stringify({ type: 'created', record, ownerNodeId: record.ownerNodeId, origin: 'old-node' }));
    await waitFor(() => all.length >= 1, 'the event of the older node');
    assert.deepEqual(all.map(describeEvent), [`created ${record.key} v1`]);
  });
});

describe('--region: two regions on one Redis by mistake', () => {
  it('never see each other’s records, nodes or events; each key is under its region’s prefix', async () => {
    assert.ok(server);
    const tag = randomBytes(3).toString('hex');
    const [regionA, regionB] = [`a-${tag}`, `b-${tag}`];
    const a = openSharedStore(server.url, { logger: silent, region: regionA });
    const b = openSharedStore(server.url, { logger: silent, region: regionB });
    try {
      assert.ok(await a.waitUntilReady(5_000));
      assert.ok(await b.waitUntilReady(5_000));
      const seenA: string[] = [];
      const seenB: string[] = [];
      a.store.subscribe((e) => seenA.push(describeEvent(e)));
      b.store.subscribe((e) => seenB.push(describeEvent(e)));
      await proveSubscriptions(a.store, newRecord(), [seenA]);
      await proveSubscriptions(b.store, newRecord(), [seenB]);

      const record = newRecord({ ownerNodeId: 'node-a' });
      const created = await a.store.create(record, { userQuota: 0 });
      assert.ok(created.ok);
      await a.registry.heartbeat({ nodeId: 'node-a', meshAddress: '127.0.0.1', meshPort: 7001, region: regionA }, 60_000);
      // The same 5-tuple is free in region B: a client rerouted there allocates anew.
      assert.equal(await b.store.get(record.key), undefined);
      assert.equal((await b.store.listAllocations()).length, 0);
      assert.equal(await b.registry.getNode('node-a'), undefined);
      assert.deepEqual(await b.registry.listNodes(), []);
      const again = await b.store.create({ ...record, ownerNodeId: 'node-b' }, { userQuota: 0 });
      assert.ok(again.ok, 'the same 5-tuple and relayed port are free in the other region');

      await waitFor(() => seenA.length >= 1 && seenB.length >= 1, 'each region’s own created event');
      // A marker in each region: once it is heard, the other region's earlier event would have been too.
      const markA = newRecord();
      const markB = newRecord();
      await a.store.create(markA, { userQuota: 0 });
      await b.store.create(markB, { userQuota: 0 });
      await waitFor(() => seenA.length >= 2 && seenB.length >= 2, 'the markers');
      assert.deepEqual(seenA, [`created ${record.key} v1`, `created ${markA.key} v1`]);
      assert.deepEqual(seenB, [`created ${record.key} v1`, `created ${markB.key} v1`]);

      const nodeJson = await admin!.get(`${regionKeyPrefix(regionA)}node:{node-a}`);
      assert.equal((JSON.parse(nodeJson ?? '{}') as { region?: string }).region, regionA, 'the node registry record names the region');
      assert.deepEqual(await a.registry.getNode('node-a'), { nodeId: 'node-a', meshAddress: '127.0.0.1', meshPort: 7001, region: regionA });
      assert.equal(await admin!.exists(`anyturn:region:${regionA}:alloc:{${record.key}}`), 1);
      assert.equal(await admin!.exists(`anyturn:region:${regionB}:alloc:{${record.key}}`), 1);
      assert.equal(await admin!.exists(`anyturn:alloc:{${record.key}}`), 0, 'nothing under the prefix without a region');
    } finally {
      await a.store.close();
      await b.store.close();
    }
  });
});

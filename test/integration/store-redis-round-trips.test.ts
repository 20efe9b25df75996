// The Redis store's round trips in sequence per operation (docs/scaling.md, part 4): each
// is a network RTT to Redis that a client's request waits for. Counted on the store's
// own ioredis client against a real redis-server: a command sent after a reply arrived
// starts a new round trip; commands sent before any of them answered share one.
// Allocate (create) takes 2, an update (Refresh, CreatePermission, ChannelBind) 1, and
// the start-up sync's listing one per SCAN step plus one for that step's records. The
// refusals of a create still take back exactly what the attempt added.

import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';

import { type Command, Redis } from 'ioredis';

import { createRedisClients, type RedisClients } from '../../src/store/redis/clients.js';
import type { NewAllocationRecord } from '../../src/store/types.js';
import { recordFactory } from '../helpers/records.js';
import { startRedisServer, type RedisServerHandle } from '../helpers/redis-server.js';

let server: RedisServerHandle | undefined;

before(async () => {
  server = await startRedisServer();
});

after(async () => {
  await server?.stop();
});

interface Trips {
  /** Round trips in sequence since the last reset, with the commands each carried. */
  readonly trips: string[][];
  reset(): void;
}

/** Watches every command the client sends: one that follows a reply opens a new round trip. */
function countTrips(client: Redis): Trips {
  const trips: string[][] = [];
  let repliesSinceSend = 0;
  const send = client.sendCommand.bind(client);
  client.sendCommand = ((command: Command, stream?: unknown) => {
    if (trips.length === 0 || repliesSinceSend > 0) trips.push([]);
    repliesSinceSend = 0;
    trips.at(-1)!.push(command.name);
    const replied = (): void => void repliesSinceSend++;
    command.promise.then(replied, replied);
    return send(command, stream as Parameters<typeof send>[1]);
  }) as typeof client.sendCommand;
  return {
    trips,
    reset: () => {
      trips.length = 0;
    },
  };
}

async function openStore(): Promise<{ clients: RedisClients; trips: Trips; prefix: string }> {
  assert.ok(server, 'redis-server is running');
  const prefix = `rt${randomBytes(5).toString('hex')}:`;
  const clients = createRedisClients(server.url, { keyPrefix: prefix });
  await clients.store.waitUntilReady(5_000);
  const trips = countTrips(clients.connection.client as Redis);
  return { clients, trips, prefix };
}

async function adminClient(): Promise<Redis> {
  assert.ok(server, 'redis-server is running');
  const admin = new Redis(server.url, { lazyConnect: true, maxRetriesPerRequest: 1 });
  admin.on('error', () => undefined);
  await admin.connect();
  return admin;
}

const { newRecord, nextRelayPort } = recordFactory({
  clientAddress: '198.51.100.9',
  relayedAddress: '203.0.113.9',
  firstClientPort: 20000,
  firstRelayPort: 30000,
});

/** Every script the store runs loaded once (a fresh Redis answers the first EVALSHA of each with NOSCRIPT). */
async function warmUp(clients: RedisClients): Promise<void> {
  const created = await clients.store.create(newRecord({ username: 'warm-up' }), { userQuota: 0 });
  assert.ok(created.ok);
  assert.ok((await clients.store.update({ ...created.record, expiresAtMs: created.record.expiresAtMs + 1 })).ok);
  assert.ok(await clients.store.delete(created.record.key, 'warm-up'));
}

function describeTrips(trips: Trips): string {
  return trips.trips.map((t, i) => `${i + 1}: ${t.join(' ')}`).join('; ');
}

describe('RedisAllocationStore: round trips in sequence', () => {
  it('Allocate (create): 2 round trips, a dual allocation too; EXISTS, the port claim(s) and the quota share the first', async (t) => {
    const { clients, trips } = await openStore();
    t.after(() => clients.close());
    await warmUp(clients);
    trips.reset();
    assert.ok((await clients.store.create(newRecord({ username: 'rt' }), { userQuota: 5 })).ok);
    assert.equal(trips.trips.length, 2, describeTrips(trips));
    assert.deepEqual(trips.trips, [['exists', 'evalsha', 'evalsha'], ['evalsha']], describeTrips(trips));

    trips.reset();
    const dual = newRecord({ username: 'rt', additionalRelayedAddress: '2001:db8::9', additionalRelayedPort: nextRelayPort() });
    assert.ok((await clients.store.create(dual, { userQuota: 5 })).ok);
    assert.deepEqual(trips.trips, [['exists', 'evalsha', 'evalsha', 'evalsha'], ['evalsha']], describeTrips(trips));
  });

  it('an update (Refresh, CreatePermission, ChannelBind): 1 round trip, the port TTL and the quota score sent with it', async (t) => {
    const { clients, trips } = await openStore();
    t.after(() => clients.close());
    await warmUp(clients);
    const created = await clients.store.create(newRecord({ username: 'rt-update' }), { userQuota: 0 });
    assert.ok(created.ok);
    trips.reset();
    const now = Date.now();
    const updated = await clients.store.update({ ...created.record, permissions: { '192.0.2.77': now + 300_000 } });
    assert.ok(updated.ok);
    assert.deepEqual(trips.trips, [['evalsha', 'evalsha', 'evalsha']], describeTrips(trips));
    assert.deepEqual(await clients.store.get(created.record.key), { ...updated.record });
  });

  it('moves the port key TTL and the user score with an update, and leaves them alone for a record that is gone', async (t) => {
    const { clients, prefix } = await openStore();
    const admin = await adminClient();
    t.after(async () => {
      await clients.close();
      admin.disconnect();
    });
    const created = await clients.store.create(newRecord({ username: 'rt-ttl', expiresAtMs: Date.now() + 60_000 }), { userQuota: 0 });
    assert.ok(created.ok);
    const portKey = `${prefix}port:{${created.record.relayedAddress}|${created.record.relayedPort}}`;
    const before = await admin.pttl(portKey);
    assert.ok((await clients.store.update({ ...created.record, expiresAtMs: Date.now() + 3_600_000 })).ok);
    assert.ok((await admin.pttl(portKey)) > before + 3_000_000, 'the port key lives as long as the refreshed record');
    assert.ok(await clients.store.delete(created.record.key, 'test'));
    const stale = await clients.store.update({ ...created.record, version: 2 });
    assert.deepEqual(stale, { ok: false, reason: 'missing' });
    assert.equal(await admin.exists(portKey), 0, 'the released port stays released');
    assert.equal(await clients.store.countUserAllocations('rt-ttl'), 0, 'the removed member stays removed');
  });

  it('the start-up listing: one round trip of HGETs per SCAN step, never one per record', async (t) => {
    const { clients, trips } = await openStore();
    t.after(() => clients.close());
    const count = 2_500;
    const records: NewAllocationRecord[] = [];
    for (let i = 0; i < count; i++) records.push(newRecord({ username: `rt-list-${i % 7}` }));
    for (let i = 0; i < count; i += 250) {
      const outcomes = await Promise.all(records.slice(i, i + 250).map((r) => clients.store.create(r, { userQuota: 0 })));
      assert.ok(outcomes.every((o) => o.ok));
    }
    trips.reset();
    const listed = await clients.store.listAllocations();
    assert.equal(listed.length, count);
    assert.deepEqual(new Set(listed.map((r) => r.key)), new Set(records.map((r) => r.key)));
    const commands = trips.trips.flat();
    const scans = commands.filter((c) => c === 'scan').length;
    assert.equal(commands.filter((c) => c === 'hget').length, count, 'each record read once');
    assert.ok(trips.trips.length <= 2 * scans, `${trips.trips.length} round trips for ${scans} SCAN steps`);
    for (const trip of trips.trips) assert.ok(trip.every((c) => c === 'scan') || trip.every((c) => c === 'hget'), describeTrips(trips));
  });
});

describe('RedisAllocationStore: a refused create takes back what it added, and only that', () => {
  let admin: Redis;
  before(async () => {
    admin = await adminClient();
  });
  after(() => admin.disconnect());

  const portKeyOf = (prefix: string, r: NewAllocationRecord): string => `${prefix}port:{${r.relayedAddress}|${r.relayedPort}}`;

  it("'port-taken': the user's count and the other allocation's port are as they were", async (t) => {
    const { clients, prefix } = await openStore();
    t.after(() => clients.close());
    const first = newRecord({ username: 'holder' });
    assert.ok((await clients.store.create(first, { userQuota: 0 })).ok);
    const clash = newRecord({ username: 'clasher', relayedPort: first.relayedPort });
    assert.deepEqual(await clients.store.create(clash, { userQuota: 1 }), { ok: false, reason: 'port-taken' });
    assert.equal(await clients.store.countUserAllocations('clasher'), 0);
    assert.equal(await admin.get(portKeyOf(prefix, first)), first.key);
    // The clasher's quota of 1 is whole: its next Allocate on a free port goes through.
    assert.ok((await clients.store.create(newRecord({ username: 'clasher' }), { userQuota: 1 })).ok);
  });

  it("'port-taken' on the additional address: the first port is released, the count unchanged", async (t) => {
    const { clients, prefix } = await openStore();
    t.after(() => clients.close());
    const holder = newRecord({ username: 'holder6', additionalRelayedAddress: '2001:db8::9', additionalRelayedPort: nextRelayPort() });
    assert.ok((await clients.store.create(holder, { userQuota: 0 })).ok);
    const clash = newRecord({ username: 'clasher6', additionalRelayedAddress: '2001:db8::9', additionalRelayedPort: holder.additionalRelayedPort });
    assert.deepEqual(await clients.store.create(clash, { userQuota: 0 }), { ok: false, reason: 'port-taken', additional: true });
    assert.equal(await admin.exists(portKeyOf(prefix, clash)), 0, 'its IPv4 port is free again');
    assert.equal(await clients.store.countUserAllocations('clasher6'), 0);
  });

  it("'user-quota': the port it claimed is free again, the user's allocations untouched", async (t) => {
    const { clients, prefix } = await openStore();
    t.after(() => clients.close());
    const first = newRecord({ username: 'full' });
    assert.ok((await clients.store.create(first, { userQuota: 1 })).ok);
    const second = newRecord({ username: 'full' });
    assert.deepEqual(await clients.store.create(second, { userQuota: 1 }), { ok: false, reason: 'user-quota' });
    assert.equal(await admin.exists(portKeyOf(prefix, second)), 0);
    assert.equal(await clients.store.countUserAllocations('full'), 1);
    assert.equal(await admin.get(portKeyOf(prefix, first)), first.key);
  });

  it("'exists' (a retransmitted Allocate): before any other refusal, and the record's port and count stay", async (t) => {
    const { clients, prefix } = await openStore();
    t.after(() => clients.close());
    const first = newRecord({ username: 'again' });
    assert.ok((await clients.store.create(first, { userQuota: 1 })).ok);
    // The same 5-tuple again on a new port, the user at quota: 'exists', not 'user-quota'.
    const again = { ...first, relayedPort: nextRelayPort() };
    assert.deepEqual(await clients.store.create(again, { userQuota: 1 }), { ok: false, reason: 'exists' });
    // And on the port it already holds: that port stays its own.
    assert.deepEqual(await clients.store.create(first, { userQuota: 1 }), { ok: false, reason: 'exists' });
    assert.equal(await admin.exists(portKeyOf(prefix, again)), 0);
    assert.equal(await admin.get(portKeyOf(prefix, first)), first.key);
    assert.equal(await clients.store.countUserAllocations('again'), 1);
    assert.deepEqual(await clients.store.get(first.key), { ...first, version: 1 });
  });
});

// RedisAllocationStore and RedisNodeRegistry against a real redis-server: the
// shared store contract, plus what only Redis has (key TTLs, key names, the
// commands it issues, several nodes on one Redis, outages).
//
// One redis-server for the file; every store gets its own key prefix (and so its
// own event channel), so tests never see each other's keys.

import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';

import { Redis } from 'ioredis';

import { createRedisClients, type RedisClients } from '../../src/store/redis/clients.js';
import { RedisConnection } from '../../src/store/redis/connection.js';
import type { RedisStoreOptions } from '../../src/store/redis/options.js';
import type { AllocationRecord, NewAllocationRecord, StoreEvent } from '../../src/store/types.js';
import { startRedisServer, type RedisServerHandle } from '../helpers/redis-server.js';
import { runStoreContract } from '../unit/store/contract.js';
import { proveSubscriptions, recordFactory } from '../helpers/records.js';

let server: RedisServerHandle | undefined;

before(async () => {
  server = await startRedisServer();
});

after(async () => {
  await server?.stop();
});

function redisUrl(): string {
  assert.ok(server, 'redis-server is running');
  return server.url;
}

function freshPrefix(): string {
  return `t${randomBytes(5).toString('hex')}:`;
}

async function openClients(options: RedisStoreOptions = {}): Promise<RedisClients & { prefix: string }> {
  const prefix = options.keyPrefix ?? freshPrefix();
  const clients = createRedisClients(redisUrl(), { ...options, keyPrefix: prefix });
  await clients.store.waitUntilReady(5_000);
  return { ...clients, close: () => clients.close(), prefix };
}

/** A plain client for the test's own inspection (the test may SCAN; the store may not). */
async function adminClient(): Promise<Redis> {
  const admin = new Redis(redisUrl(), { lazyConnect: true, maxRetriesPerRequest: 1 });
  admin.on('error', () => undefined);
  await admin.connect();
  return admin;
}

async function scanAll(admin: Redis, pattern: string): Promise<string[]> {
  const keys: string[] = [];
  let cursor = '0';
  do {
    const [next, batch] = await admin.scan(cursor, 'MATCH', pattern, 'COUNT', 1000);
    cursor = next;
    keys.push(...batch);
  } while (cursor !== '0');
  return keys;
}

async function waitFor(done: () => boolean | Promise<boolean>, what: string, timeoutMs = 5_000, stepMs = 10): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await done())) {
    if (Date.now() > deadline) assert.fail(`timed out waiting for ${what}`);
    await new Promise<void>((resolve) => setTimeout(resolve, stepMs));
  }
}

const { newRecord, nextRelayPort } = recordFactory({
  clientAddress: '198.51.100.7',
  relayedAddress: '203.0.113.5',
  firstClientPort: 20000,
  firstRelayPort: 30000,
});

async function mustCreate(clients: RedisClients, record: NewAllocationRecord, userQuota = 0): Promise<AllocationRecord> {
  const outcome = await clients.store.create(record, { userQuota });
  assert.ok(outcome.ok, `create ${record.key}: ${outcome.ok ? '' : outcome.reason}`);
  return outcome.record;
}

function describeEvent(e: StoreEvent): string {
  return e.type === 'deleted' ? `deleted ${e.key} ${e.ownerNodeId} ${e.reason}` : `${e.type} ${e.record.key} v${e.record.version} ${e.record.ownerNodeId}`;
}

function eventKey(e: StoreEvent): string {
  return e.type === 'deleted' ? e.key : e.record.key;
}

runStoreContract('redis', async () => {
  const clients = await openClients();
  return { store: clients.store, cleanup: () => clients.close() };
});

describe('RedisAllocationStore specifics', () => {
  it('sets backstop TTLs on the allocation, port and user keys, and moves them with update', async (t) => {
    const clients = await openClients({ expiryGraceMs: 60_000 });
    const admin = await adminClient();
    t.after(async () => {
      await clients.close();
      admin.disconnect();
    });
    const p = clients.prefix;
    const created = await mustCreate(clients, newRecord({ expiresAtMs: Date.now() + 600_000 }));
    const allocKey = `${p}alloc:{${created.key}}`;
    const portKey = `${p}port:{${created.relayedAddress}|${created.relayedPort}}`;

    const allocTtl = await admin.pttl(allocKey);
    const portTtl = await admin.pttl(portKey);
    assert.ok(allocTtl > 600_000 && allocTtl <= 660_000, `alloc PTTL ${allocTtl}: expiry + grace`);
    assert.ok(portTtl > 600_000 && portTtl <= 660_000, `port PTTL ${portTtl}`);
    assert.equal(await admin.get(portKey), created.key, 'the port key names its allocation');
    assert.equal(await admin.hget(allocKey, 'v'), '1');
    const userKeys = await scanAll(admin, `${p}user:*`);
    assert.equal(userKeys.length, 1);
    assert.ok((await admin.pttl(userKeys[0]!)) > 600_000, 'the user zset expires too');

    const updated = await clients.store.update({ ...created, expiresAtMs: Date.now() + 1_200_000 });
    assert.ok(updated.ok);
    const allocTtl2 = await admin.pttl(allocKey);
    const portTtl2 = await admin.pttl(portKey);
    assert.ok(allocTtl2 > 1_200_000 && allocTtl2 <= 1_260_000, `alloc PTTL after update ${allocTtl2}`);
    assert.ok(portTtl2 > 1_200_000 && portTtl2 <= 1_260_000, `port PTTL after update ${portTtl2}`);
    assert.equal(await admin.hget(allocKey, 'v'), '2');
    const score = Number(await admin.zscore(userKeys[0]!, created.key));
    assert.ok(score >= updated.record.expiresAtMs + 60_000 - 5, 'the user member moved to the new deadline');

    // A shorter lifetime moves the backstop down too; an expiry in the past still keeps the grace.
    const shorter = await clients.store.update({ ...updated.record, expiresAtMs: Date.now() - 10_000 });
    assert.ok(shorter.ok);
    const allocTtl3 = await admin.pttl(allocKey);
    assert.ok(allocTtl3 > 0 && allocTtl3 <= 60_000, `alloc PTTL after a past expiry ${allocTtl3}`);
    assert.ok((await admin.pttl(portKey)) <= 60_000);

    assert.equal(await clients.store.delete(created.key, 'test'), true);
    assert.equal(await admin.exists(allocKey, portKey), 0, 'delete removes the allocation and frees its port key');
  });

  it('takes usernames, tokens and node ids with braces, globs, spaces, quotes and newlines, and never puts them in a key name', async (t) => {
    const clients = await openClients();
    const admin = await adminClient();
    t.after(async () => {
      await clients.close();
      admin.disconnect();
    });
    const hostile = ['a}b', '{x}', '*', 'with space', `q"uo'te`, 'line\nbreak', '}{*"\n \\ ?[]', 'ünïcødé'];
    const records: AllocationRecord[] = [];
    for (const username of hostile) {
      const record = await mustCreate(clients, newRecord({ username, realm: username, ownerNodeId: `node ${username}` }), 1);
      records.push(record);
      assert.equal(await clients.store.countUserAllocations(username), 1);
      assert.deepEqual(await clients.store.create(newRecord({ username }), { userQuota: 1 }), { ok: false, reason: 'user-quota' });
      const got = await clients.store.get(record.key);
      assert.equal(got?.username, username);
      assert.equal(got?.ownerNodeId, `node ${username}`);
    }
    const tokens = ['tok}{', 'tok *', 'tok"\n'];
    for (const token of tokens) {
      assert.equal(await clients.store.reservePort(token, { relayedAddress: '203.0.113.9', relayedPort: nextRelayPort() }, 60_000), true);
    }
    for (const nodeId of ['n}{', 'n *', 'n"\n']) {
      await clients.registry.heartbeat({ nodeId, meshAddress: '127.0.0.1', meshPort: 1 }, 60_000);
      assert.equal((await clients.registry.getNode(nodeId))?.nodeId, nodeId);
    }

    const keys = await scanAll(admin, `${clients.prefix}*`);
    assert.ok(keys.length >= hostile.length * 3, `keys were written (${keys.length})`);
    for (const key of keys) {
      assert.match(key, /^[A-Za-z0-9:._|~-]+\{[A-Za-z0-9:._|~%-]+\}$/, `one hash tag, safe characters only: ${JSON.stringify(key)}`);
      for (const s of [...hostile, ...tokens]) assert.ok(!key.includes(s), `${JSON.stringify(s)} appears in ${JSON.stringify(key)}`);
    }

    for (const token of tokens) assert.ok(await clients.store.takeReservation(token));
    for (const r of records) assert.equal(await clients.store.delete(r.key, 'test'), true);
    for (const username of hostile) assert.equal(await clients.store.countUserAllocations(username), 0);
  });

  it('issues no KEYS or SCAN: INFO commandstats after a full workload', async (t) => {
    const admin = await adminClient();
    t.after(() => admin.disconnect());
    await admin.config('RESETSTAT');
    const clients = await openClients();
    t.after(() => clients.close());
    const seen: StoreEvent[] = [];
    clients.store.subscribe((e) => seen.push(e));
    const a = await mustCreate(clients, newRecord({ username: 'stats' }), 5);
    const b = await mustCreate(clients, newRecord({ username: 'stats' }), 5);
    await clients.store.create(a, { userQuota: 5 });
    await clients.store.get(a.key);
    const u = await clients.store.update({ ...a, expiresAtMs: a.expiresAtMs + 1 });
    assert.ok(u.ok);
    await clients.store.update(a); // conflict
    await clients.store.countUserAllocations('stats');
    await clients.store.reservePort('abcdef01', { relayedAddress: '203.0.113.9', relayedPort: nextRelayPort() }, 10_000);
    await clients.store.takeReservation('abcdef01');
    await clients.store.delete(a.key, 'test');
    await clients.store.delete(b.key, 'test', 1);
    await clients.registry.heartbeat({ nodeId: 'stats-node', meshAddress: '127.0.0.1', meshPort: 9 }, 10_000);
    await clients.registry.getNode('stats-node');
    await clients.registry.removeNode('stats-node');
    await waitFor(() => seen.length >= 5, 'the workload events');

    const stats = await admin.info('commandstats');
    assert.match(stats, /cmdstat_evalsha:/, "the stats do count the store's commands");
    for (const cmd of ['keys', 'scan', 'hscan', 'sscan', 'zscan']) {
      assert.doesNotMatch(stats, new RegExp(`^cmdstat_${cmd}:`, 'm'), `the store issued ${cmd.toUpperCase()}`);
    }
  });

  it("lets two nodes on one Redis see each other's records and events", async (t) => {
    const prefix = freshPrefix();
    const nodeA = await openClients({ keyPrefix: prefix });
    const nodeB = await openClients({ keyPrefix: prefix });
    t.after(async () => {
      await nodeA.close();
      await nodeB.close();
    });
    const seenA: string[] = [];
    const seenB: string[] = [];
    nodeA.store.subscribe((e) => seenA.push(describeEvent(e)));
    nodeB.store.subscribe((e) => seenB.push(describeEvent(e)));
    await proveSubscriptions(nodeA.store, newRecord(), [seenA, seenB]);

    const created = await mustCreate(nodeA, newRecord({ ownerNodeId: 'node-a', username: 'shared' }), 1);
    assert.deepEqual(await nodeB.store.get(created.key), created, 'B reads what A wrote');
    assert.equal(await nodeB.store.countUserAllocations('shared'), 1);
    assert.deepEqual(
      await nodeB.store.create(newRecord({ username: 'shared' }), { userQuota: 1 }),
      { ok: false, reason: 'user-quota' },
      'the quota is cluster-wide',
    );
    assert.deepEqual(await nodeB.store.create(newRecord({ relayedPort: created.relayedPort }), { userQuota: 0 }), { ok: false, reason: 'port-taken' });

    // B adopts the allocation: a compare-and-set on A's version.
    const adopted = await nodeB.store.update({ ...created, ownerNodeId: 'node-b' });
    assert.ok(adopted.ok);
    const stale = await nodeA.store.update({ ...created, expiresAtMs: 1 });
    assert.equal(stale.ok ? '' : stale.reason, 'conflict', "A's copy is now stale");
    assert.equal(await nodeA.store.delete(created.key, 'expired'), true);

    const expected = [`created ${created.key} v1 node-a`, `updated ${created.key} v2 node-b`, `deleted ${created.key} node-b expired`];
    await waitFor(() => seenA.length >= 3 && seenB.length >= 3, 'three events on both nodes');
    assert.deepEqual(seenA, expected);
    assert.deepEqual(seenB, expected);
  });

  it('ignores malformed messages on the event channel', async (t) => {
    const clients = await openClients();
    const admin = await adminClient();
    t.after(async () => {
      await clients.close();
      admin.disconnect();
    });
    const seen: StoreEvent[] = [];
    clients.store.subscribe((e) => seen.push(e));
    const channel = `${clients.prefix}events`;
    // Make sure the subscription is live before the garbage is sent.
    const warm = await mustCreate(clients, newRecord());
    await waitFor(() => seen.length === 1, 'the warm-up event');
    for (const junk of [
      '',
      'not json',
      '[]',
      'null',
      '{"type":"created"}',
      '{"type":"created","record":{"key":1}}',
      '{"type":"deleted","key":"k"}',
      '{"type":"nope"}',
    ]) {
      await admin.publish(channel, junk);
    }
    await clients.store.delete(warm.key, 'test');
    await waitFor(() => seen.length === 2, 'the delete event after the junk');
    assert.deepEqual(seen.map(describeEvent), [`created ${warm.key} v1 node-a`, `deleted ${warm.key} node-a test`]);
  });

  it('node registry: a heartbeat expires with its TTL; removeNode withdraws at once', async (t) => {
    const clients = await openClients();
    t.after(() => clients.close());
    const node = { nodeId: 'node-ttl', meshAddress: '127.0.0.1', meshPort: 4242 };
    assert.equal(await clients.registry.getNode(node.nodeId), undefined, 'unknown node = dead');
    await clients.registry.heartbeat(node, 300);
    assert.deepEqual(await clients.registry.getNode(node.nodeId), node);
    await waitFor(async () => (await clients.registry.getNode(node.nodeId)) === undefined, 'the heartbeat to expire', 10_000, 50);
    await clients.registry.heartbeat(node, 60_000);
    assert.deepEqual(await clients.registry.getNode(node.nodeId), node);
    await clients.registry.removeNode(node.nodeId);
    assert.equal(await clients.registry.getNode(node.nodeId), undefined);
  });

  it('rejects calls after the command timeout when Redis is frozen, and works again when it thaws', { timeout: 30_000 }, async (t) => {
    const clients = await openClients({ commandTimeoutMs: 300 });
    t.after(async () => {
      server?.resume();
      await clients.close();
    });
    const record = await mustCreate(clients, newRecord());
    server!.pause();
    // The command timeout, and nothing else, ends the call (its error says so); were it not
    // armed, the call would wait for the thaw, which comes only after it: the test's
    // timeout reports that hang. No bound on the elapsed time is needed.
    await assert.rejects(clients.store.get(record.key), /timed out/i);
    server!.resume();
    await waitFor(async () => (await clients.store.get(record.key).catch(() => undefined)) !== undefined, 'a read after the thaw');
    assert.deepEqual(await clients.store.get(record.key), record);
  });

  it('refuses every call once closed, and close() is idempotent', async () => {
    const clients = await openClients();
    await clients.close();
    await clients.close();
    assert.equal(clients.store.isAvailable(), false);
    await assert.rejects(clients.store.get('x'), /closed/);
    await assert.rejects(clients.store.create(newRecord(), { userQuota: 0 }), /closed/);
    await assert.rejects(clients.store.countUserAllocations('x'), /closed/);
    await assert.rejects(clients.registry.getNode('x'), /closed/);
  });

  it('takes redis:// and rediss:// (TLS) URLs and names the flag for anything else', async () => {
    const tls = new RedisConnection('rediss://127.0.0.1:1');
    assert.ok(tls.client.options.tls, 'rediss:// turns TLS on');
    await tls.close();
    const plain = new RedisConnection('redis://127.0.0.1:1');
    assert.ok(!plain.client.options.tls);
    await plain.close();
    assert.throws(() => new RedisConnection('http://127.0.0.1:6379'), /--redis-url/);
  });

  it('survives an outage: calls reject fast while Redis is down, availability follows, writes and events resume after a restart', {
    timeout: 60_000,
  }, async (t) => {
    const transitions: boolean[] = [];
    const clients = await openClients({ onAvailability: (up) => transitions.push(up) });
    const other = await openClients();
    t.after(async () => {
      await clients.close();
      await other.close();
      // Leave the shared server running for whatever runs next, whatever happened here.
      if (server && !server.isRunning()) await server.restart();
    });
    assert.equal(clients.store.isAvailable(), true);
    const seen: StoreEvent[] = [];
    clients.store.subscribe((e) => seen.push(e));
    const first = await mustCreate(clients, newRecord({ username: 'outage' }));
    await waitFor(() => seen.length === 1, 'the first event');

    await server!.stop();
    await waitFor(() => !clients.store.isAvailable(), 'isAvailable() to go false');
    assert.equal(transitions.at(-1), false);

    // Every call rejects instead of waiting for Redis: refused because the connection is
    // down, not after a command timeout (a call queued until Redis came back would hang,
    // and the test's timeout reports that).
    const calls: [string, () => Promise<unknown>][] = [
      ['get', () => clients.store.get(first.key)],
      ['create', () => clients.store.create(newRecord({ username: 'outage' }), { userQuota: 0 })],
      ['update', () => clients.store.update(first)],
      ['delete', () => clients.store.delete(first.key, 'test')],
      ['count', () => clients.store.countUserAllocations('outage')],
      ['reservePort', () => clients.store.reservePort('abcd', { relayedAddress: '203.0.113.9', relayedPort: 1 }, 1000)],
      ['takeReservation', () => clients.store.takeReservation('abcd')],
      ['heartbeat', () => clients.registry.heartbeat({ nodeId: 'n', meshAddress: '127.0.0.1', meshPort: 1 }, 1000)],
      ['getNode', () => clients.registry.getNode('n')],
    ];
    for (const [name, call] of calls) {
      await assert.rejects(
        call(),
        (err: Error) => {
          assert.doesNotMatch(err.message, /timed out/i, `${name} waited for a command timeout instead of failing at once`);
          return true;
        },
        `${name} rejects while Redis is down`,
      );
    }
    // close() while Redis is down doesn't throw.
    await other.close();

    await server!.restart();
    await waitFor(() => clients.store.isAvailable(), 'isAvailable() to come back', 20_000);
    assert.deepEqual(transitions.slice(-2), [false, true]);

    // The restarted server is empty (no persistence): write again.
    const second = await mustCreate(clients, newRecord({ username: 'outage' }));
    assert.deepEqual(await clients.store.get(second.key), second);

    // The subscriber reconnects on its own schedule: keep writing until an event arrives.
    const deadline = Date.now() + 20_000;
    let current = second;
    while (!seen.some((e) => eventKey(e) === second.key)) {
      assert.ok(Date.now() < deadline, 'an event published after the restart reached the listener');
      const u = await clients.store.update({ ...current, expiresAtMs: current.expiresAtMs + 1 });
      assert.ok(u.ok);
      current = u.record;
      await new Promise<void>((resolve) => setTimeout(resolve, 200));
    }
  });
});

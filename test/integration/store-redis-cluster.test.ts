// The Redis store on high-availability topologies: the shared store contract on
// Redis Cluster (three masters) and through Sentinel (a master, a replica, three
// sentinels), plus what only those have (keys spread over masters without a
// CROSSSLOT, events across the cluster bus, the master found through the
// sentinels), and the flags that select them.
//
// One topology of each for the file; every store gets its own key prefix.

import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';

import { buildConfig, ConfigError, type RawOptions } from '../../src/config/index.js';
import { createRedisClients, type RedisClients } from '../../src/store/redis/clients.js';
import type { RedisStoreOptions } from '../../src/store/redis/options.js';
import type { RedisTarget } from '../../src/store/redis/target.js';
import type { StoreEvent } from '../../src/store/types.js';
import { startRedisCluster, startSentinelTopology, withAdmin, type ClusterTopology, type SentinelTopology } from '../helpers/redis-topologies.js';
import { runStoreContract } from '../unit/store/contract.js';
import { proveSubscriptions, recordFactory } from '../helpers/records.js';

let cluster: ClusterTopology | undefined;
let sentinel: SentinelTopology | undefined;
/** Nothing is killed here: a Redis process stalled this long on a busy machine is still not failed over. */
const STALL_TOLERANT_MS = 5000;

before(async () => {
  const [c, s] = await Promise.allSettled([
    startRedisCluster({ masters: 3, replicasPerMaster: 0, nodeTimeoutMs: STALL_TOLERANT_MS }),
    startSentinelTopology('mymaster', STALL_TOLERANT_MS),
  ]);
  if (c.status === 'fulfilled') cluster = c.value;
  if (s.status === 'fulfilled') sentinel = s.value;
  if (c.status === 'rejected') throw c.reason;
  if (s.status === 'rejected') throw s.reason;
});

after(async () => {
  await Promise.all([cluster?.stop(), sentinel?.stop()]);
});

function clusterTarget(): RedisTarget {
  assert.ok(cluster, 'the cluster is running');
  return { kind: 'cluster', nodes: cluster.startupNodes };
}

function sentinelTarget(): RedisTarget {
  assert.ok(sentinel, 'the sentinel group is running');
  return { kind: 'sentinel', sentinels: sentinel.sentinelAddresses, name: sentinel.name };
}

function freshPrefix(): string {
  return `t${randomBytes(5).toString('hex')}:`;
}

async function open(target: RedisTarget, options: RedisStoreOptions = {}): Promise<RedisClients & { prefix: string }> {
  const prefix = options.keyPrefix ?? freshPrefix();
  const clients = createRedisClients(target, { ...options, keyPrefix: prefix });
  await clients.store.waitUntilReady(10_000);
  return { ...clients, close: () => clients.close(), prefix };
}

async function waitFor(done: () => boolean | Promise<boolean>, what: string, timeoutMs = 5_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await done())) {
    if (Date.now() > deadline) assert.fail(`timed out waiting for ${what}`);
    await new Promise<void>((resolve) => setTimeout(resolve, 10));
  }
}

const { newRecord, nextRelayPort } = recordFactory({
  clientAddress: '198.51.100.8',
  relayedAddress: '203.0.113.6',
  firstClientPort: 21000,
  firstRelayPort: 31000,
});

function describeEvent(e: StoreEvent): string {
  return e.type === 'deleted' ? `deleted ${e.key} ${e.ownerNodeId} ${e.reason}` : `${e.type} ${e.record.key} v${e.record.version} ${e.record.ownerNodeId}`;
}

runStoreContract(
  'redis cluster',
  async () => {
    const clients = await open(clusterTarget());
    return { store: clients.store, cleanup: () => clients.close() };
  },
  { orderedAcrossKeys: false },
);

runStoreContract('redis sentinel', async () => {
  const clients = await open(sentinelTarget());
  return { store: clients.store, cleanup: () => clients.close() };
});

describe('Redis Cluster specifics', () => {
  it('spreads one workload over every master, each key in one slot', async (t) => {
    const clients = await open(clusterTarget());
    t.after(() => clients.close());
    const created = [];
    for (let i = 0; i < 24; i++) {
      const outcome = await clients.store.create(newRecord({ username: `spread-${i % 4}` }), { userQuota: 10 });
      assert.ok(outcome.ok, outcome.ok ? '' : outcome.reason);
      created.push(outcome.record);
    }
    assert.equal(await clients.store.reservePort('abcdef99', { relayedAddress: '203.0.113.6', relayedPort: nextRelayPort() }, 10_000), true);
    await clients.registry.heartbeat({ nodeId: 'spread-node', meshAddress: '127.0.0.1', meshPort: 9 }, 10_000);

    // Count this prefix's keys per master: more than one master holds some.
    let mastersWithKeys = 0;
    let total = 0;
    for (const node of cluster!.nodes) {
      const keys = await withAdmin(node.port, async (admin) => {
        const found: string[] = [];
        let cursor = '0';
        do {
          const [next, batch] = await admin.scan(cursor, 'MATCH', `${clients.prefix}*`, 'COUNT', 1000);
          cursor = next;
          found.push(...batch);
        } while (cursor !== '0');
        return found;
      });
      for (const key of keys) assert.match(key, /^[^{}]*\{[^{}]+\}$/, `exactly one hash tag: ${key}`);
      if (keys.length > 0) mastersWithKeys++;
      total += keys.length;
    }
    assert.ok(mastersWithKeys >= 2, `keys on ${mastersWithKeys} masters`);
    assert.ok(total >= 24 * 2, `${total} keys written`);

    for (const r of created) assert.equal(await clients.store.delete(r.key, 'test'), true);
    assert.equal(await clients.store.countUserAllocations('spread-0'), 0);
  });

  it('delivers events across the cluster bus: two nodes see the same ordered stream', async (t) => {
    const prefix = freshPrefix();
    const nodeA = await open(clusterTarget(), { keyPrefix: prefix });
    const nodeB = await open(clusterTarget(), { keyPrefix: prefix });
    t.after(async () => {
      await nodeA.close();
      await nodeB.close();
    });
    const seenA: string[] = [];
    const seenB: string[] = [];
    nodeA.store.subscribe((e) => seenA.push(describeEvent(e)));
    nodeB.store.subscribe((e) => seenB.push(describeEvent(e)));
    await proveSubscriptions(nodeA.store, newRecord(), [seenA, seenB]);
    const created = await nodeA.store.create(newRecord({ ownerNodeId: 'node-a' }), { userQuota: 0 });
    assert.ok(created.ok);
    const adopted = await nodeB.store.update({ ...created.record, ownerNodeId: 'node-b' });
    assert.ok(adopted.ok);
    assert.equal(await nodeA.store.delete(created.record.key, 'expired'), true);
    const expected = [`created ${created.record.key} v1 node-a`, `updated ${created.record.key} v2 node-b`, `deleted ${created.record.key} node-b expired`];
    await waitFor(() => seenA.length >= 3 && seenB.length >= 3, 'three events on both nodes');
    assert.deepEqual(seenA, expected);
    assert.deepEqual(seenB, expected);
  });

  it("moves whose keys live on two masters: every node hears both of a move's events and each key's events in order", async (t) => {
    // A move's old and new keys hash to different slots: their events are published by
    // two masters and cross the cluster bus separately, so the two may be heard in
    // either order (types.ts subscribe()); each key's own events keep theirs.
    const prefix = freshPrefix();
    const stores = await Promise.all([0, 1, 2].map(() => open(clusterTarget(), { keyPrefix: prefix })));
    t.after(async () => {
      await Promise.all(stores.map((s) => s.close()));
    });
    const seen: string[][] = stores.map(() => []);
    for (const [i, s] of stores.entries()) {
      s.store.subscribe((e) =>
        seen[i]!.push(e.type === 'created' && e.record.movedFrom !== undefined ? `created ${e.record.key} from ${e.record.movedFrom}` : describeEvent(e)),
      );
    }
    await proveSubscriptions(stores[0]!.store, newRecord(), seen);
    const perKey: string[][] = [];
    for (let i = 0; i < 30; i++) {
      const writer = stores[i % 3]!.store;
      const old = await writer.create(newRecord({ ownerNodeId: 'node-a' }), { userQuota: 0 });
      assert.ok(old.ok);
      const next = newRecord({ relayedPort: old.record.relayedPort, ownerNodeId: 'node-a' });
      const moved = await writer.move(old.record.key, old.record.version, next);
      assert.ok(moved.ok);
      const updated = await stores[(i + 1) % 3]!.store.update({ ...moved.record, ownerNodeId: 'node-b' });
      assert.ok(updated.ok);
      assert.equal(await writer.delete(next.key, 'test'), true);
      perKey.push([`created ${old.record.key} v1 node-a`, `deleted ${old.record.key} node-a moved`]);
      perKey.push([`created ${next.key} from ${old.record.key}`, `updated ${next.key} v2 node-b`, `deleted ${next.key} node-b test`]);
    }
    const total = perKey.reduce((n, lines) => n + lines.length, 0);
    await waitFor(() => seen.every((list) => list.length >= total), 'every event on every node');
    for (const list of seen) {
      assert.equal(list.length, total, 'no event twice');
      for (const lines of perKey)
        assert.deepEqual(
          list.filter((line) => lines.includes(line)),
          lines,
        );
    }
  });

  it('proves its own subscription with heartbeats that come back, and none reach listeners', async (t) => {
    const clients = await open(clusterTarget(), { eventHeartbeatMs: 100 });
    t.after(() => clients.close());
    const seen: StoreEvent[] = [];
    clients.store.subscribe((e) => seen.push(e));
    await waitFor(() => clients.store.eventStats().heartbeatsReceived >= 3, 'three own heartbeats back');
    const stats = clients.store.eventStats();
    assert.equal(stats.resubscriptions, 0);
    assert.ok(stats.heartbeatsPublished >= 3);
    assert.equal(seen.length, 0, 'heartbeats are not store events');
    assert.equal(clients.store.isAvailable(), true);
  });

  // Registered last: runs after the contract suite and the workloads above.
  it("no node ever answered CROSSSLOT to this file's stores", async () => {
    // (errorstat_ERR is ioredis' CLIENT SETINFO on connect, which Redis before 7.2 refuses.)
    for (const node of cluster!.nodes) {
      const errors = await withAdmin(node.port, (admin) => admin.info('errorstats'));
      assert.doesNotMatch(errors, /errorstat_CROSSSLOT/, `node ${node.port}: ${errors}`);
      const calls = await withAdmin(node.port, (admin) => admin.info('commandstats'));
      assert.match(calls, /cmdstat_evalsha:calls=[1-9]/, `node ${node.port} ran the store's scripts`);
    }
  });
});

describe('Redis Sentinel specifics', () => {
  it('writes to the master the sentinels name, and the replica has them', async (t) => {
    const clients = await open(sentinelTarget());
    t.after(() => clients.close());
    const created = await clients.store.create(newRecord({ username: 'via-sentinel' }), { userQuota: 0 });
    assert.ok(created.ok);
    const master = await sentinel!.masterAddress();
    assert.equal(master?.port, sentinel!.master.port, 'the sentinels name the master');
    const allocKey = `${clients.prefix}alloc:{${created.record.key}}`;
    assert.equal(await withAdmin(sentinel!.master.port, (admin) => admin.hget(allocKey, 'v')), '1');
    await waitFor(async () => (await withAdmin(sentinel!.replica.port, (admin) => admin.hget(allocKey, 'v'))) === '1', 'the replica to have the record');
  });
});

describe('flags that select a Redis HA store', () => {
  const base: RawOptions = {
    'listening-ip': ['127.0.0.1'],
    'relay-ip': ['127.0.0.1'],
    user: ['alice:secret'],
    'mesh-address': '127.0.0.1:7000',
    'cluster-secret': 'a cluster secret of enough bytes',
  };

  function configError(raw: RawOptions): ConfigError {
    try {
      buildConfig(raw);
    } catch (err) {
      assert.ok(err instanceof ConfigError, String(err));
      return err;
    }
    assert.fail('buildConfig accepted it');
  }

  it('--redis-sentinel (repeatable or comma-separated) with --redis-sentinel-name and --redis-password', () => {
    const config = buildConfig({
      ...base,
      'redis-sentinel': ['10.0.0.1:26379', 'sentinel-b.example:26380,[2001:db8::3]:26381'],
      'redis-sentinel-name': 'mymaster',
      'redis-password': 'pw',
    });
    assert.deepEqual(config.cluster?.redis, {
      kind: 'sentinel',
      sentinels: [
        { host: '10.0.0.1', port: 26379 },
        { host: 'sentinel-b.example', port: 26380 },
        { host: '2001:db8::3', port: 26381 },
      ],
      name: 'mymaster',
      password: 'pw',
    });
  });

  it('--redis-cluster (repeatable) puts the node in cluster mode like --redis-url', () => {
    const config = buildConfig({ ...base, 'redis-cluster': ['127.0.0.1:7001', '127.0.0.1:7002'] });
    assert.deepEqual(config.cluster?.redis, {
      kind: 'cluster',
      nodes: [
        { host: '127.0.0.1', port: 7001 },
        { host: '127.0.0.1', port: 7002 },
      ],
    });
    assert.equal(buildConfig({ ...base, 'redis-url': 'redis://127.0.0.1:6379' }).cluster?.redis.kind, 'url');
  });

  it('names the flags when more than one store is selected', () => {
    const e = configError({ ...base, 'redis-url': 'redis://127.0.0.1:6379', 'redis-cluster': ['127.0.0.1:7001'] });
    assert.match(e.message, /--redis-url and --redis-cluster/);
    assert.match(e.message, /exactly one of --redis-url, --redis-sentinel .* or --redis-cluster/);
    const all = configError({
      ...base,
      'redis-url': 'redis://127.0.0.1:6379',
      'redis-sentinel': ['127.0.0.1:1'],
      'redis-sentinel-name': 'm',
      'redis-cluster': ['127.0.0.1:7001'],
    });
    assert.match(all.message, /--redis-url and --redis-sentinel and --redis-cluster are all given/);
  });

  it('names the flag for a missing or stray sentinel name, a bad host:port, and a stray or doubled password', () => {
    assert.match(configError({ ...base, 'redis-sentinel': ['127.0.0.1:26379'] }).message, /missing --redis-sentinel-name/);
    assert.equal(configError({ ...base, 'redis-sentinel': ['127.0.0.1:26379'], 'redis-sentinel-name': 'has space' }).flag, 'redis-sentinel-name');
    assert.equal(configError({ ...base, 'redis-url': 'redis://127.0.0.1:6379', 'redis-sentinel-name': 'mymaster' }).flag, 'redis-sentinel-name');
    for (const bad of ['127.0.0.1', '127.0.0.1:0', '127.0.0.1:70000', 'host:port', '[not-v6]:1', 'a b:1']) {
      const e = configError({ ...base, 'redis-cluster': [bad] });
      assert.equal(e.flag, 'redis-cluster', bad);
      assert.match(e.message, /host:port/);
    }
    const { 'mesh-address': _m, 'cluster-secret': _s, ...single } = base;
    void _m;
    void _s;
    assert.equal(configError({ ...single, 'redis-password': 'pw' }).flag, 'redis-password');
    assert.equal(configError({ ...single, 'redis-sentinel-name': 'mymaster' }).flag, 'redis-sentinel-name');
    assert.equal(configError({ ...base, 'redis-url': 'redis://:inurl@127.0.0.1:6379', 'redis-password': 'pw' }).flag, 'redis-password');
    const noSecret = configError({ ...single, 'redis-cluster': ['127.0.0.1:7001'], 'mesh-address': '127.0.0.1:7000' });
    assert.match(noSecret.message, /with --redis-cluster/);
    assert.match(configError({ ...single, 'mesh-address': '127.0.0.1:7000' }).message, /--redis-url, --redis-sentinel or --redis-cluster/);
    // A password never shows in a message.
    assert.doesNotMatch(configError({ ...base, 'redis-url': 'redis://:inurl@127.0.0.1:6379', 'redis-password': 'hunter2' }).message, /hunter2|inurl/);
  });
});

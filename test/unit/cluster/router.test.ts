// The cluster router's lookup budget and cache (cluster/router.ts), on a ManualClock,
// the in-memory store and registry, and a mesh that records what it would forward.

import { describe, it } from 'node:test';
import assert from 'node:assert/strict';

import { ClusterCounters } from '../../../src/cluster/counters.js';
import type { MeshSocket } from '../../../src/cluster/mesh.js';
import { ClusterRouter, LOOKUP_SHARE_DIVISOR } from '../../../src/cluster/router.js';
import { createLogger } from '../../../src/ops/log.js';
import { MemoryAllocationStore, MemoryNodeRegistry } from '../../../src/store/memory.js';
import type { KeyWatcher, StoreEventListener, StoreWatch } from '../../../src/store/types.js';
import { ManualClock } from '../../../src/turn/clock.js';
import { EngineListener } from '../../../src/turn/allocation/table.js';
import { FakeClientPath } from '../../helpers/fake-io.js';
import { recordFactory } from '../../helpers/records.js';

const ATTACKER = '203.0.113.66';
const REROUTED = '198.51.100.20';
const PACKET = Buffer.from([0x40, 0x00, 0x00, 0x00]);

async function flush(): Promise<void> {
  for (let i = 0; i < 5; i++) await new Promise<void>((resolve) => setImmediate(resolve));
}

/** The memory store, counting the open watches per key and whether anyone subscribed to every event. */
class WatchCountingStore extends MemoryAllocationStore {
  readonly open = new Map<string, number>();
  subscribers = 0;
  override subscribe(listener: StoreEventListener): () => void {
    this.subscribers++;
    return super.subscribe(listener);
  }
  override watcher(listener: StoreEventListener): KeyWatcher {
    const inner = super.watcher(listener);
    const mine = new Set<StoreWatch>();
    return {
      watch: (key) => {
        const watch = inner.watch(key);
        this.open.set(key, (this.open.get(key) ?? 0) + 1);
        let closed = false;
        const counted: StoreWatch = {
          ready: watch.ready,
          close: () => {
            if (!closed) this.open.set(key, this.open.get(key)! - 1);
            closed = true;
            mine.delete(counted);
            watch.close();
          },
        };
        mine.add(counted);
        return counted;
      },
      close: () => {
        for (const watch of [...mine]) watch.close();
        inner.close();
      },
    };
  }
  /** Keys with an open watch. */
  watchedKeys(): string[] {
    return [...this.open].filter(([, n]) => n > 0).map(([key]) => key);
  }
}

async function harness(o: { lookupsPerSecond: number; maxCached?: number }) {
  const clock = new ManualClock();
  const store = new WatchCountingStore({ now: () => clock.now() });
  const registry = new MemoryNodeRegistry(() => clock.now());
  await registry.heartbeat({ nodeId: 'node-b', meshAddress: '192.0.2.2', meshPort: 7000 }, 3_600_000);
  const forwarded: string[] = [];
  const mesh = { forward: (_to: string, _toPort: number, address: string, port: number) => forwarded.push(`${address}:${port}`) } as unknown as MeshSocket;
  const counters = new ClusterCounters();
  const router = new ClusterRouter({ nodeId: 'node-a', store, registry, mesh, clock, logger: createLogger('silent'), counters, ...o });
  const listener = new EngineListener(new FakeClientPath('udp', '192.0.2.1', 3478));
  /** An allocation of REROUTED's 5-tuple on node-b, as a reroute finds it. */
  const remoteClient = async (port: number): Promise<void> => {
    const record = recordFactory({ clientAddress: REROUTED, relayedAddress: '192.0.2.200', firstClientPort: port, firstRelayPort: 50000 + port }).newRecord({
      ownerNodeId: 'node-b',
    });
    const created = await store.create({ ...record, createdAtMs: clock.now(), expiresAtMs: clock.now() + 3_600_000 }, { userQuota: 0 });
    assert.ok(created.ok);
  };
  return { clock, store, counters, router, listener, forwarded, remoteClient };
}

describe('ClusterRouter: lookup budget per source', () => {
  it('gives one source at most its share of the lookups: junk from one host does not starve a rerouted client', async () => {
    const h = await harness({ lookupsPerSecond: 100 });
    const share = 100 / LOOKUP_SHARE_DIVISOR;
    for (let port = 1000; port < 1200; port++) h.router.offer(h.listener, PACKET, ATTACKER, port);
    await flush();
    assert.equal(h.counters.storeLookups, share, "the attacker's share, not the whole budget");
    assert.equal(h.counters.lookupsRateLimited, 200 - share);

    await h.remoteClient(40000);
    assert.equal(h.router.offer(h.listener, PACKET, REROUTED, 40000), true, 'the rerouted client is looked up');
    await flush();
    assert.deepEqual(h.forwarded, [`${REROUTED}:40000`], 'and its packet forwarded to the owner');

    // An IPv6 source is one /64, however many addresses it uses.
    for (let i = 1; i <= 50; i++) h.router.offer(h.listener, PACKET, `2001:db8:0:7::${i.toString(16)}`, 2000);
    await flush();
    assert.equal(h.counters.storeLookups, 2 * share + 1);
    // A second later the attacker has its share again, no more.
    h.clock.advance(1000);
    const before = h.counters.storeLookups;
    for (let port = 2000; port < 2200; port++) h.router.offer(h.listener, PACKET, ATTACKER, port);
    await flush();
    assert.equal(h.counters.storeLookups - before, share);
  });

  it('still holds the global rate over many sources', async () => {
    const h = await harness({ lookupsPerSecond: 20 });
    for (let i = 0; i < 100; i++) h.router.offer(h.listener, PACKET, `203.0.113.${i}`, 1000);
    await flush();
    assert.equal(h.counters.storeLookups, 20);
  });
});

describe('ClusterRouter: bounded cache without a cliff', () => {
  it('forgets the least recently used 5-tuple one at a time; a client in use stays cached', async () => {
    const h = await harness({ lookupsPerSecond: 10_000, maxCached: 10 });
    await h.remoteClient(40000);
    h.router.offer(h.listener, PACKET, REROUTED, 40000);
    await flush();
    assert.equal(h.counters.storeLookups, 1);
    // Junk from several sources fills the cache with answers of "no allocation".
    for (let i = 0; i < 8; i++) h.router.offer(h.listener, PACKET, `203.0.113.${i}`, 1000);
    await flush();
    assert.equal(h.router.cachedEntries, 9);
    // The client goes on sending; its owner is checked again, which marks it as in use.
    h.clock.advance(6000);
    h.router.offer(h.listener, PACKET, REROUTED, 40000);
    await flush();
    // More junk than the cache has room for: the oldest junk goes, not everything.
    for (let i = 0; i < 5; i++) h.router.offer(h.listener, PACKET, `203.0.113.${100 + i}`, 1000);
    await flush();
    assert.equal(h.router.cachedEntries, 10, 'full, not wiped');
    const lookups = h.counters.storeLookups;
    h.router.offer(h.listener, PACKET, REROUTED, 40000);
    await flush();
    assert.equal(h.counters.storeLookups, lookups, 'the client in use was not forgotten: no new lookup');
    assert.equal(h.forwarded.length, 3);
    // Once ten newer 5-tuples came while it sat unused, it goes too (the next packet looks it up again).
    for (let i = 0; i < 10; i++) h.router.offer(h.listener, PACKET, `203.0.113.${200 + i}`, 1000);
    await flush();
    h.router.offer(h.listener, PACKET, REROUTED, 40000);
    await flush();
    assert.equal(h.counters.storeLookups, lookups + 11);
    assert.equal(h.forwarded.length, 4);
  });
});

describe('ClusterRouter: the negative cache', () => {
  it('looks an unknown 5-tuple up once per 5 s, drops its packets in between, and finds an allocation made after that', async () => {
    const h = await harness({ lookupsPerSecond: 10_000 });
    assert.equal(h.router.offer(h.listener, PACKET, REROUTED, 41000), true);
    await flush();
    assert.equal(h.counters.storeLookups, 1);
    // "No allocation anywhere" is remembered: more packets within 5 s cost no lookup.
    for (let i = 0; i < 20; i++) h.router.offer(h.listener, PACKET, REROUTED, 41000);
    await flush();
    assert.equal(h.counters.storeLookups, 1);
    assert.deepEqual(h.forwarded, []);
    h.clock.advance(4_999);
    h.router.offer(h.listener, PACKET, REROUTED, 41000);
    await flush();
    assert.equal(h.counters.storeLookups, 1, 'still cached at 4,999 ms');
    // An allocation that appears elsewhere is found once the entry has aged out.
    await h.remoteClient(41000);
    h.clock.advance(1);
    h.router.offer(h.listener, PACKET, REROUTED, 41000);
    await flush();
    assert.equal(h.counters.storeLookups, 2, 'looked up again at 5 s');
    assert.deepEqual(h.forwarded, [`${REROUTED}:41000`]);
  });
});

describe('ClusterRouter: hears only the 5-tuples it has cached (docs/scaling.md "The event feed")', () => {
  const keyOf = (h: Awaited<ReturnType<typeof harness>>, port: number): string =>
    `udp|${REROUTED}|${port}|${h.listener.path.localAddress}|${h.listener.path.localPort}`;

  it('watches a rerouted client’s 5-tuple while it is cached, and stops when the deletion invalidates it; never every event', async () => {
    const h = await harness({ lookupsPerSecond: 10_000 });
    assert.equal(h.store.subscribers, 0, 'forward mode subscribes to no store-wide feed');
    await h.remoteClient(43000);
    assert.deepEqual(h.store.watchedKeys(), [], 'an allocation elsewhere alone is not heard');
    h.router.offer(h.listener, PACKET, REROUTED, 43000);
    await flush();
    assert.deepEqual(h.forwarded, [`${REROUTED}:43000`]);
    assert.deepEqual(h.store.watchedKeys(), [keyOf(h, 43000)], 'the cached 5-tuple is watched');
    // Its owner ends it: the event reaches the router through the watch, and the watch goes with the entry.
    assert.equal(await h.store.delete(keyOf(h, 43000), 'refresh-zero'), true);
    await flush();
    assert.equal(h.router.cachedEntries, 0);
    assert.deepEqual(h.store.watchedKeys(), []);
    h.router.close();
  });

  it('keeps the watch of a "no allocation" answer until it expires: an allocation made elsewhere meanwhile clears it', async () => {
    const h = await harness({ lookupsPerSecond: 10_000 });
    h.router.offer(h.listener, PACKET, REROUTED, 43100);
    await flush();
    assert.deepEqual(h.store.watchedKeys(), [keyOf(h, 43100)], 'watched while the answer holds');
    await h.remoteClient(43100);
    await flush();
    assert.equal(h.router.cachedEntries, 0, 'the created event cleared the answer at once');
    assert.deepEqual(h.store.watchedKeys(), [], 'and its watch');
    // Another unknown 5-tuple: its answer's watch is closed by the sweep once the answer expired.
    h.router.offer(h.listener, PACKET, REROUTED, 43101);
    await flush();
    assert.deepEqual(h.store.watchedKeys(), [keyOf(h, 43101)]);
    h.clock.advance(5_000);
    const deadline = Date.now() + 5_000;
    while (h.store.watchedKeys().length > 0 && Date.now() < deadline) await new Promise<void>((resolve) => setTimeout(resolve, 20));
    assert.deepEqual(h.store.watchedKeys(), [], 'the expired answer no longer hears its key');
    assert.equal(h.router.cachedEntries, 1, 'the entry itself stays (a miss), as before');
    h.router.close();
  });

  it('closes the watch of an entry the bounded cache forgets, and every watch at close', async () => {
    const h = await harness({ lookupsPerSecond: 10_000, maxCached: 2 });
    for (const port of [43200, 43201, 43202]) await h.remoteClient(port);
    for (const port of [43200, 43201, 43202]) h.router.offer(h.listener, PACKET, REROUTED, port);
    await flush();
    assert.equal(h.router.cachedEntries, 2);
    assert.deepEqual(h.store.watchedKeys().sort(), [keyOf(h, 43201), keyOf(h, 43202)], 'the forgotten one is not heard');
    h.router.close();
    assert.deepEqual(h.store.watchedKeys(), []);
  });

  it('anycast relay mode (adopt) hears every event instead, and watches nothing', async () => {
    const clock = new ManualClock();
    const store = new WatchCountingStore({ now: () => clock.now() });
    const registry = new MemoryNodeRegistry(() => clock.now());
    const mesh = { forward: () => undefined } as unknown as MeshSocket;
    const router = new ClusterRouter({
      nodeId: 'node-a',
      store,
      registry,
      mesh,
      clock,
      logger: createLogger('silent'),
      counters: new ClusterCounters(),
      lookupsPerSecond: 100,
      adopt: async () => true,
    });
    assert.equal(store.subscribers, 1);
    assert.deepEqual(store.watchedKeys(), []);
    router.close();
  });
});

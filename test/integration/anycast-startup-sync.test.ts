// Anycast relay mode (docs/architecture.md §4), the start-up sync of a node: it takes on
// every allocation in the store before it says it is ready (docs/scaling.md, part 3).
// The records are taken on with their binds overlapping (up to SYNC_CONCURRENCY at
// once), each from the record just listed, never read again; and a deletion the store
// announces after the listing, before a record's turn, leaves no copy behind. Engines
// with fake relay sockets whose binds the test holds, over a memory store. Then a real
// server (in process, on 127.0.0.1): /readyz says 503 until the sync is over.

import { afterEach, describe, it } from 'node:test';
import assert from 'node:assert/strict';

import { buildConfig } from '../../src/config/index.js';
import { createLogger } from '../../src/ops/log.js';
import { type RunningServer, startServer } from '../../src/server.js';
import { MemoryAllocationStore } from '../../src/store/memory.js';
import { type AllocationStore, type NewAllocationRecord, fiveTupleKey } from '../../src/store/types.js';
import { SYNC_CONCURRENCY } from '../../src/turn/allocation/replication.js';
import { NonceIssuer } from '../../src/turn/auth/nonce.js';
import { systemClock } from '../../src/turn/clock.js';
import { findFreeUdpPort } from '../helpers/anyturn-process.js';
import { ANYCAST, type EngineNode, PORT, USER, startEngineNode, until } from '../helpers/engine-node.js';
import { get, parseMetrics, sum, until as untilValue } from '../helpers/ops-endpoint.js';
import { findFreePort } from '../helpers/redis-server.js';

const RELAY = '198.18.100.2';
const REALM = 'anycast-startup-sync.test';
const FIRST_PORT = 50000;
const nonces = new NonceIssuer(Buffer.from('shared nonce secret, 32 bytes..'), 600_000);
const logger = createLogger('silent');

function record(i: number): NewAllocationRecord {
  const now = Date.now();
  const clientPort = 20000 + i;
  return {
    key: fiveTupleKey('udp', '198.18.10.2', clientPort, ANYCAST, PORT),
    transport: 'udp',
    clientAddress: '198.18.10.2',
    clientPort,
    serverAddress: ANYCAST,
    serverPort: PORT,
    relayedAddress: RELAY,
    relayedPort: FIRST_PORT + i,
    ownerNodeId: 'a',
    username: USER,
    realm: REALM,
    createdAtMs: now,
    expiresAtMs: now + 600_000,
    permissions: { '198.18.20.2': now + 300_000 },
    channels: {},
  };
}

/** A store of `count` allocations made by node "a" (now gone). */
async function storeWith(count: number): Promise<MemoryAllocationStore> {
  const store = new MemoryAllocationStore();
  for (let i = 0; i < count; i++) assert.ok((await store.create(record(i), { userQuota: 0 })).ok);
  return store;
}

/** The store as the syncing node sees it, counting its single-record reads. */
function countingReads(store: AllocationStore): { store: AllocationStore; reads: () => number } {
  let reads = 0;
  const view = new Proxy(store, {
    get(target, prop) {
      if (prop === 'get') {
        return (key: string) => {
          reads++;
          return target.get(key);
        };
      }
      const v = Reflect.get(target, prop, target) as unknown;
      return typeof v === 'function' ? (v as (...a: unknown[]) => unknown).bind(target) : v;
    },
  });
  return { store: view, reads: () => reads };
}

/** Holds every bind of the node's relay sockets until released; counts those in flight. */
function holdBinds(node: EngineNode): { inFlight: () => number; most: () => number; release: () => void } {
  let inFlight = 0;
  let most = 0;
  let release!: () => void;
  const released = new Promise<void>((r) => (release = r));
  const bind = node.relays.bind.bind(node.relays);
  node.relays.bind = async (address, port, onPacket) => {
    inFlight++;
    most = Math.max(most, inFlight);
    await released;
    inFlight--;
    return bind(address, port, onPacket);
  };
  return { inFlight: () => inFlight, most: () => most, release };
}

function startNode(id: string, store: AllocationStore): EngineNode {
  return startEngineNode({
    nodeId: id,
    realm: REALM,
    nonces,
    store,
    clock: systemClock,
    logger,
    relayAddressIPv4: RELAY,
    serverAddresses: [ANYCAST, RELAY],
    servicePorts: [PORT],
    engine: { relayMode: 'anycast', minPort: FIRST_PORT, maxPort: FIRST_PORT + 999 },
  });
}

describe('anycast relay mode: the start-up sync', () => {
  const nodes: EngineNode[] = [];
  afterEach(async () => {
    for (const n of nodes.splice(0)) await n.engine.stop();
  });

  it(`binds up to ${SYNC_CONCURRENCY} relayed ports at once and reads no record a second time`, async () => {
    const count = SYNC_CONCURRENCY + 44;
    const counted = countingReads(await storeWith(count));
    const b = startNode('b', counted.store);
    nodes.push(b);
    const binds = holdBinds(b);
    const sync = b.engine.syncFromStoreCounted();
    // One bind after the other would never have more than one in flight.
    await until(() => binds.inFlight() === SYNC_CONCURRENCY, `${SYNC_CONCURRENCY} binds in flight at once`);
    binds.release();
    assert.deepEqual(await sync, { records: count, adopted: count });
    assert.equal(binds.most(), SYNC_CONCURRENCY, 'never more binds at once than the bound');
    assert.equal(b.engine.allocations, count);
    assert.equal(counted.reads(), 0, 'every record taken on from the listing, none read again');
    const copy = b.listener.find('198.18.10.2', 20000 + count - 1);
    assert.ok(copy?.permissionsByAddress.has('198.18.20.2'), 'the last record taken on with its permission');
    assert.ok(b.relays.holds(RELAY, FIRST_PORT + count - 1), 'on its shared relayed port');
  });

  it('a deletion announced after the listing, before the record’s turn, leaves no copy and no socket', async () => {
    const count = SYNC_CONCURRENCY + 44;
    const store = await storeWith(count);
    const b = startNode('b', store);
    nodes.push(b);
    const binds = holdBinds(b);
    const sync = b.engine.syncFromStoreCounted();
    // The listing is done: the first records' binds are held.
    await until(() => binds.inFlight() > 0, 'the first binds of the sync');
    const last = record(count - 1);
    let heard = false;
    // Subscribed after node B, so it hears the deletion after B did.
    const unsubscribe = store.subscribe((e) => {
      if (e.type === 'deleted' && e.key === last.key) heard = true;
    });
    assert.equal(await store.delete(last.key, 'test'), true);
    await until(() => heard, 'the deletion reaching node B');
    unsubscribe();
    binds.release();
    const result = await sync;
    assert.equal(result.records, count);
    assert.equal(b.listener.find(last.clientAddress, last.clientPort), undefined, 'no copy of the allocation deleted meanwhile');
    assert.equal(b.relays.holds(RELAY, last.relayedPort), false, 'no socket left bound on its relayed port');
    assert.equal(b.engine.allocations, count - 1, 'every other allocation taken on');
  });
});

describe('anycast relay mode: readiness during the start-up sync', () => {
  let server: Promise<RunningServer> | undefined;
  let answer: (() => void) | undefined;
  afterEach(async () => {
    answer?.(); // a failed test must not leave the start waiting on its listing
    await (await server?.catch(() => undefined))?.stop();
    server = undefined;
  });

  it('/readyz says 503 with its reason while the node takes on the allocations in the store, 200 once it holds them', async () => {
    const store = await storeWith(3);
    // The listing answers only when the test says: the sync is in progress until then.
    let listed = false;
    const answered = new Promise<void>((r) => (answer = r));
    const held = new Proxy(store, {
      get(target, prop) {
        if (prop === 'listAllocations') {
          return async () => {
            listed = true;
            await answered;
            return target.listAllocations();
          };
        }
        const v = Reflect.get(target, prop, target) as unknown;
        return typeof v === 'function' ? (v as (...a: unknown[]) => unknown).bind(target) : v;
      },
    });
    const metricsPort = await findFreePort();
    const config = buildConfig({
      'node-id': 'sync-node',
      'listening-ip': ['127.0.0.1'],
      'listening-port': 0,
      'min-port': 44300,
      'max-port': 44399,
      realm: REALM,
      user: ['alice:secret'],
      'mesh-address': `127.0.0.1:${await findFreeUdpPort()}`,
      'cluster-secret': 'a cluster secret of enough bytes',
      'relay-mode': 'anycast',
      // Never reached: the store is handed in.
      'redis-url': 'redis://127.0.0.1:1',
      'metrics-ip': '127.0.0.1',
      'metrics-port': metricsPort,
    });
    server = startServer(config, { store: held, logger: createLogger('silent') });
    const ops = `http://127.0.0.1:${metricsPort}`;
    await until(() => listed, 'the start-up sync listing the store');
    const during = await untilValue(() => get(`${ops}/readyz`).catch(() => undefined), 'the ops endpoint answering during the sync');
    assert.equal(during.status, 503, 'not ready before the node holds the allocations in the store');
    assert.deepEqual(JSON.parse(during.body), { ready: false, reason: 'taking on the allocations in the store (start-up sync)' });
    assert.equal((await get(`${ops}/healthz`)).status, 200, 'alive meanwhile');
    answer?.();
    const running = await server;
    assert.equal((await get(`${ops}/readyz`)).status, 200, 'ready once the sync is over');
    const metrics = parseMetrics((await get(`${ops}/metrics`)).body);
    assert.ok(sum(metrics, 'anyturn_startup_sync_seconds') > 0, "the sync's duration is exported");
    assert.equal(running.engine.allocations, 0, 'records for another listener are not taken on');
  });
});

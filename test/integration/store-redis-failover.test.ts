// Redis failover under a live store and a live server: a Sentinel master is
// killed (the sentinels promote its replica), a Redis Cluster master is killed
// (its replica takes over its slots), and an event subscription goes silent
// while its connection stays open (the watchdog's case).
//
// What is asserted: no record is lost, writes work again after the failover,
// isAvailable() comes back, events published after the failover reach the
// subscribers, and (full server) live allocations keep relaying while a new
// Allocate succeeds again. Nothing asserts how fast: waits are bounded retry
// loops; the figures are printed as test diagnostics.
//
// Durability assumption: Redis replication is asynchronous, so a failover can
// lose the last writes the old master acknowledged but hadn't yet sent to its
// replica. The tests make sure the replica has everything before the kill (a
// write and WAIT 1 on the master: the replication stream is ordered, so once the
// replica acknowledges that write it has every earlier one). Without that, a lost
// write is correct Redis behaviour (the server re-writes live allocations after
// the store comes back; see server.ts).

import { after, describe, it, type TestContext } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';

import { buildConfig, type RawOptions } from '../../src/config/index.js';
import { createLogger } from '../../src/ops/log.js';
import { type RunningServer, startServer } from '../../src/server.js';
import { createRedisClients, type RedisClients } from '../../src/store/redis/clients.js';
import type { RedisStoreOptions } from '../../src/store/redis/options.js';
import type { RedisTarget } from '../../src/store/redis/target.js';
import type { AllocationRecord, StoreEvent } from '../../src/store/types.js';
import { fiveTupleKey } from '../../src/store/types.js';
import { startFreezableProxy } from '../helpers/freezable-proxy.js';
import { startRedisServer } from '../helpers/redis-server.js';
import {
  startRedisCluster,
  startSentinelTopology,
  withAdmin,
  type ClusterTopology,
  type HostPort,
  type RedisNodeProcess,
} from '../helpers/redis-topologies.js';
import { type Endpoint, TestPeer, TestTurnClient } from '../helpers/turn-client.js';
import { recordFactory } from '../helpers/records.js';
import { findFreeUdpPort } from '../helpers/anyturn-process.js';

/** Every bounded wait for the cluster to heal. */
const RECOVERY_DEADLINE_MS = 30_000;
const TEST_TIMEOUT_MS = 90_000;

const cleanups: (() => Promise<unknown>)[] = [];
after(async () => {
  // Whatever a failed test left behind.
  for (const cleanup of cleanups.splice(0).reverse()) await cleanup().catch(() => undefined);
});

/** Runs `cleanup` when the test ends (or, if the test process dies first, from the file's after hook). */
function onCleanup(t: TestContext, cleanup: () => Promise<unknown>): void {
  cleanups.push(cleanup);
  t.after(async () => {
    const i = cleanups.indexOf(cleanup);
    if (i >= 0) cleanups.splice(i, 1);
    await cleanup();
  });
}

function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

/** Retries `attempt` until it returns a value (not undefined) or the deadline passes; errors count as "not yet". */
async function retryUntil<T>(what: string, attempt: () => Promise<T | undefined>, timeoutMs = RECOVERY_DEADLINE_MS, stepMs = 100): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  let last = '';
  for (;;) {
    try {
      const value = await attempt();
      if (value !== undefined) return value;
    } catch (err) {
      last = err instanceof Error ? err.message : String(err);
    }
    if (Date.now() > deadline) assert.fail(`${what}: not within ${timeoutMs} ms${last ? ` (last error: ${last})` : ''}`);
    await sleep(stepMs);
  }
}

function freshPrefix(): string {
  return `f${randomBytes(5).toString('hex')}:`;
}

async function openStore(t: TestContext, target: RedisTarget, options: RedisStoreOptions = {}): Promise<RedisClients> {
  const clients = createRedisClients(target, options);
  onCleanup(t, () => clients.close());
  await clients.store.waitUntilReady(10_000);
  return clients;
}

const { newRecord } = recordFactory({
  clientAddress: '198.51.100.9',
  relayedAddress: '203.0.113.7',
  firstClientPort: 22000,
  firstRelayPort: 32000,
  username: 'failover',
});

function eventKey(e: StoreEvent): string {
  return e.type === 'deleted' ? e.key : e.record.key;
}

/** A write, then WAIT 1: the replica has acknowledged everything the master had before it. */
async function syncReplica(masterPort: number, key = 'anyturn-test:sync'): Promise<void> {
  const acked = await withAdmin(masterPort, async (admin) => {
    await admin.set(key, String(Date.now()));
    return await admin.wait(1, 5_000);
  });
  assert.ok(acked >= 1, `a replica acknowledged the writes before the kill (WAIT said ${acked})`);
}

/** One store "node" writing, another only listening, both subscribed. */
interface Pair {
  readonly keyPrefix: string;
  readonly writer: RedisClients;
  readonly listener: RedisClients;
  readonly writerSeen: StoreEvent[];
  readonly listenerSeen: StoreEvent[];
  readonly availability: boolean[];
}

async function openPair(t: TestContext, target: RedisTarget): Promise<Pair> {
  const keyPrefix = freshPrefix();
  const availability: boolean[] = [];
  const writer = await openStore(t, target, { keyPrefix, onAvailability: (up) => availability.push(up) });
  const listener = await openStore(t, target, { keyPrefix });
  const writerSeen: StoreEvent[] = [];
  const listenerSeen: StoreEvent[] = [];
  writer.store.subscribe((e) => writerSeen.push(e));
  listener.store.subscribe((e) => listenerSeen.push(e));
  return { keyPrefix, writer, listener, writerSeen, listenerSeen, availability };
}

async function writeRecords(pair: Pair, count: number): Promise<AllocationRecord[]> {
  const records: AllocationRecord[] = [];
  for (let i = 0; i < count; i++) {
    const outcome = await pair.writer.store.create(newRecord({ username: `failover-${i % 3}` }), { userQuota: 0 });
    assert.ok(outcome.ok, outcome.ok ? '' : outcome.reason);
    records.push(outcome.record);
  }
  // Both subscriptions are live before anything is killed.
  const last = records.at(-1)!.key;
  await retryUntil('the pre-failover events on both nodes', async () =>
    pair.writerSeen.some((e) => eventKey(e) === last) && pair.listenerSeen.some((e) => eventKey(e) === last) ? true : undefined,
  );
  return records;
}

/**
 * After the kill: every record is still there (as last written), isAvailable()
 * is true again, and an update published now reaches both subscribers. Returns
 * how long events took to flow again, from `killedAtMs`.
 */
async function checkAfterFailover(t: TestContext, pair: Pair, records: AllocationRecord[], killedAtMs: number, probe: AllocationRecord): Promise<void> {
  await retryUntil('isAvailable() to come back', async () => (pair.writer.store.isAvailable() && pair.listener.store.isAvailable() ? true : undefined));
  for (const r of records) {
    const got = await retryUntil(`read ${r.key}`, () => pair.writer.store.get(r.key).then((v) => v ?? null));
    assert.deepEqual(got, r, `record ${r.key} survived the failover`);
  }
  // Events published after the failover reach both subscribers (keep publishing: one
  // event in a gap would be lost, and that is not what is being measured).
  let current = probe;
  const seenBy = (seen: StoreEvent[], version: number): boolean =>
    seen.some((e) => e.type === 'updated' && e.record.key === probe.key && e.record.version >= version);
  const firstVersion = current.version + 1;
  await retryUntil(
    'an event published after the failover to reach both subscribers',
    async () => {
      const u = await pair.writer.store.update({ ...current, expiresAtMs: current.expiresAtMs + 1 });
      assert.ok(u.ok, u.ok ? '' : u.reason);
      current = u.record;
      await sleep(100);
      return seenBy(pair.writerSeen, firstVersion) && seenBy(pair.listenerSeen, firstVersion) ? true : undefined;
    },
    RECOVERY_DEADLINE_MS,
    200,
  );
  const writer = pair.writer.store.eventStats();
  const listener = pair.listener.store.eventStats();
  t.diagnostic(
    `events flow again ${Date.now() - killedAtMs} ms after the kill; resubscriptions writer=${writer.resubscriptions} listener=${listener.resubscriptions}`,
  );
  t.diagnostic(`availability transitions of the writer: ${JSON.stringify(pair.availability)}`);
}

// ---------------------------------------------------------------------------
// Store-level failovers

describe('Redis failover: the store', () => {
  it('Sentinel: the master is killed, its replica promoted; nothing lost, writes and events resume', { timeout: TEST_TIMEOUT_MS }, async (t) => {
    const topology = await startSentinelTopology();
    onCleanup(t, () => topology.stop());
    const target: RedisTarget = { kind: 'sentinel', sentinels: topology.sentinelAddresses, name: topology.name };
    const pair = await openPair(t, target);
    const records = await writeRecords(pair, 20);
    await syncReplica(topology.master.port);

    const old = (await topology.masterAddress())!;
    const killedAtMs = Date.now();
    await topology.master.kill();

    // Writes work again (a new record: port, quota and allocation keys all on the new master).
    await retryUntil('a write after the failover', async () => ((await pair.writer.store.create(newRecord(), { userQuota: 0 })).ok ? true : undefined));
    const writesAfterMs = Date.now() - killedAtMs;
    const promoted = await topology.waitForFailover(old);
    assert.equal(promoted.port, topology.replica.port, 'the replica is the new master');
    t.diagnostic(`sentinel: writes work again ${writesAfterMs} ms after the master was killed`);
    await checkAfterFailover(t, pair, records.slice(1), killedAtMs, records[0]!);
  });

  it('Cluster: a master holding records is killed, its replica takes its slots; nothing lost, writes and events resume', {
    timeout: TEST_TIMEOUT_MS,
  }, async (t) => {
    const topology = await startRedisCluster({ masters: 3, replicasPerMaster: 1 });
    onCleanup(t, () => topology.stop());
    const target: RedisTarget = { kind: 'cluster', nodes: topology.startupNodes };
    const pair = await openPair(t, target);
    const records = await writeRecords(pair, 30);

    // The victim: a master that holds some of the records, preferably the node an
    // event subscription sits on (that subscription then has to move).
    const owners = new Map<RedisNodeProcess, AllocationRecord[]>();
    for (const r of records) {
      const owner = await topology.masterForKey(`${pair.keyPrefix}alloc:{${r.key}}`);
      owners.set(owner, [...(owners.get(owner) ?? []), r]);
    }
    const subscribedOn = await nodesWithSubscribers(topology);
    const victim = [...owners.keys()].find((n) => subscribedOn.has(n.port)) ?? [...owners.keys()][0]!;
    const victimRecords = owners.get(victim)!;
    assert.ok(victimRecords.length > 0);
    t.diagnostic(`killing master :${victim.port} (${victimRecords.length} of ${records.length} records; a subscriber on it: ${subscribedOn.has(victim.port)})`);
    await syncReplica(victim.port, `anyturn-test:sync:{${victimRecords[0]!.key}}`);

    const killedAtMs = Date.now();
    await victim.kill();

    // Writes to the victim's slots work again once its replica has taken over.
    const probe = victimRecords[0]!;
    let probeNow = probe;
    await retryUntil("a write to the dead master's slots", async () => {
      const u = await pair.writer.store.update({ ...probeNow, expiresAtMs: probeNow.expiresAtMs + 1 });
      if (!u.ok) return undefined;
      probeNow = u.record;
      return true;
    });
    t.diagnostic(`cluster: writes to the failed slots work again ${Date.now() - killedAtMs} ms after the master was killed`);
    await retryUntil('a new record after the failover', async () => ((await pair.writer.store.create(newRecord(), { userQuota: 0 })).ok ? true : undefined));
    await topology.waitForClusterOk(RECOVERY_DEADLINE_MS);
    const roles = await topology.roles();
    assert.equal(roles.filter((r) => r.role === 'master').length, 3, 'a replica took over: three masters again');
    await checkAfterFailover(
      t,
      pair,
      records.filter((r) => r !== probe),
      killedAtMs,
      probeNow,
    );
  });

  it('a subscription that goes silent on an open connection is replaced (heartbeat watchdog)', { timeout: TEST_TIMEOUT_MS }, async (t) => {
    const redis = await startRedisServer();
    onCleanup(t, () => redis.stop());
    const proxy = await startFreezableProxy(redis.port);
    onCleanup(t, () => proxy.close());
    const keyPrefix = freshPrefix();
    const target: RedisTarget = { kind: 'url', url: `redis://127.0.0.1:${proxy.port}` };
    const resubscribed: number[] = [];
    const store = (
      await openStore(t, target, { keyPrefix, eventHeartbeatMs: 100, eventStaleMs: 1_000, onEventsResubscribed: () => resubscribed.push(Date.now()) })
    ).store;
    const seen: StoreEvent[] = [];
    store.subscribe((e) => seen.push(e));
    const first = await store.create(newRecord(), { userQuota: 0 });
    assert.ok(first.ok);
    await retryUntil('the first event', async () => (seen.length === 1 ? true : undefined), 5_000);
    await retryUntil('an own heartbeat back', async () => (store.eventStats().heartbeatsReceived > 0 ? true : undefined), 5_000);

    // The subscriber's socket stays open but nothing passes any more: ioredis can't tell.
    const frozenAtMs = Date.now();
    assert.equal(
      proxy.freeze((c) => /subscribe/i.test(c.sent)),
      1,
      'exactly the subscriber connection is frozen',
    );
    await retryUntil('the watchdog to recreate the subscriber', async () => (store.eventStats().resubscriptions >= 1 ? true : undefined), 10_000);
    assert.equal(resubscribed.length, store.eventStats().resubscriptions, 'onEventsResubscribed is called each time');
    assert.equal(store.isAvailable(), true, 'commands kept working');

    let current = first.record;
    await retryUntil(
      'an event after the resubscription',
      async () => {
        const u = await store.update({ ...current, expiresAtMs: current.expiresAtMs + 1 });
        assert.ok(u.ok);
        current = u.record;
        await sleep(50);
        return seen.some((e) => e.type === 'updated' && e.record.version > first.record.version) ? true : undefined;
      },
      10_000,
    );
    t.diagnostic(`watchdog: subscriber frozen, replaced and events flowing again after ${Date.now() - frozenAtMs} ms (stale after 1000 ms)`);
    assert.ok(proxy.connections() >= 3, 'a new subscriber connection was made');
  });
});

/** Ports of cluster nodes that hold a pub/sub client right now. */
async function nodesWithSubscribers(topology: ClusterTopology): Promise<Set<number>> {
  const ports = new Set<number>();
  for (const n of topology.nodes) {
    const list = await withAdmin(n.port, (admin) => admin.call('CLIENT', 'LIST', 'TYPE', 'pubsub'));
    if (String(list).trim() !== '') ports.add(n.port);
  }
  return ports;
}

// ---------------------------------------------------------------------------
// The whole server across a failover

const credentials = { username: 'alice', password: 'wonderland', realm: 'anyturn.test' };

async function startClusterServer(
  t: TestContext,
  store: Pick<RawOptions, 'redis-sentinel' | 'redis-sentinel-name' | 'redis-cluster'>,
): Promise<{ server: RunningServer; endpoint: Endpoint }> {
  const config = buildConfig({
    'node-id': `ha-${randomBytes(3).toString('hex')}`,
    'listening-ip': ['127.0.0.1'],
    'listening-port': 0,
    'min-port': 43000,
    'max-port': 43999,
    realm: credentials.realm,
    user: [`${credentials.username}:${credentials.password}`],
    'allow-loopback-peers': true,
    'mesh-address': `127.0.0.1:${await findFreeUdpPort()}`,
    'cluster-secret': 'a cluster secret of enough bytes',
    ...store,
  });
  const server = await startServer(config, { logger: createLogger('silent') });
  onCleanup(t, () => server.stop());
  const udp = server.listening.find((l) => l.transport === 'udp');
  assert.ok(udp, 'a UDP listener');
  return { server, endpoint: { address: '127.0.0.1', port: udp.port } };
}

/**
 * A ChannelData stream client -> relay -> peer -> relay -> client every 20 ms,
 * numbered, until stop(); counts what came through each way.
 */
function streamThrough(
  client: TestTurnClient,
  peer: TestPeer,
  relayed: Endpoint,
  channel: number,
): { stop(): Promise<{ sent: number; atPeer: number; backAtClient: number }> } {
  let seq = 0;
  const atPeer = new Set<number>();
  const back = new Set<number>();
  peer.socket.on('message', (data, rinfo) => {
    if (data.length < 4) return;
    atPeer.add(data.readUInt32BE(0));
    peer.socket.send(data, relayed.port, relayed.address);
    void rinfo;
  });
  client.socket.on('message', (buf: Buffer) => {
    // ChannelData: 2 bytes channel, 2 bytes length, then the payload.
    if (buf.length >= 8 && buf.readUInt16BE(0) === channel) back.add(buf.readUInt32BE(4));
  });
  const timer = setInterval(() => {
    const payload = Buffer.alloc(16);
    payload.writeUInt32BE(seq++, 0);
    client.sendChannelData(channel, payload);
  }, 20);
  return {
    async stop() {
      clearInterval(timer);
      // The last packets in flight: wait until every one is back, or give up after a while
      // (that only bounds the wait; the caller then reports what was lost).
      for (let waited = 0; (atPeer.size < seq || back.size < seq) && waited < 10_000; waited += 20) await sleep(20);
      return { sent: seq, atPeer: atPeer.size, backAtClient: back.size };
    },
  };
}

async function allocateAgain(endpoint: Endpoint): Promise<number> {
  const startedAt = Date.now();
  await retryUntil(
    'a new Allocate after the failover',
    async () => {
      const fresh = await TestTurnClient.open(endpoint, credentials);
      try {
        const { response } = await fresh.allocate();
        return response.code === 200 ? true : undefined;
      } finally {
        fresh.close();
      }
    },
    RECOVERY_DEADLINE_MS,
    250,
  );
  return Date.now() - startedAt;
}

async function liveAllocation(t: TestContext, endpoint: Endpoint): Promise<{ client: TestTurnClient; peer: TestPeer; relayed: Endpoint }> {
  const client = await TestTurnClient.open(endpoint, credentials);
  const peer = await TestPeer.open();
  onCleanup(t, async () => {
    client.close();
    peer.close();
  });
  const { response, relayed } = await client.allocate();
  assert.equal(response.code, 200);
  assert.ok(relayed);
  assert.equal((await client.channelBind(0x4000, peer.endpoint)).code, 200);
  return { client, peer, relayed };
}

/**
 * Streams through the live allocation while `kill` runs, waits until the
 * topology has failed over (`healed`), then: the server's own store reads the
 * live allocation's record again (a Refresh can't show that: the engine answers
 * it from local state and writes through), a new Allocate succeeds, and the
 * stream lost nothing.
 */
async function acrossFailover(
  t: TestContext,
  server: RunningServer,
  endpoint: Endpoint,
  live: { client: TestTurnClient; peer: TestPeer; relayed: Endpoint },
  kill: () => Promise<void>,
  healed: () => Promise<void>,
): Promise<void> {
  const key = fiveTupleKey('udp', '127.0.0.1', live.client.localPort, '127.0.0.1', endpoint.port);
  const stream = streamThrough(live.client, live.peer, live.relayed, 0x4000);
  await sleep(500);
  const killedAtMs = Date.now();
  await kill();
  await healed();
  const healedMs = Date.now() - killedAtMs;
  const record = await retryUntil("the server's store to read the live allocation after the failover", () => server.store.get(key).then((r) => r ?? null));
  assert.ok(record, "the live allocation's record survived the failover");
  const storeMs = Date.now() - killedAtMs;
  await retryUntil('isAvailable() after the failover', async () => (server.store.isAvailable() ? true : undefined));
  await allocateAgain(endpoint);
  const allocateMs = Date.now() - killedAtMs;
  assert.equal((await live.client.refresh(600)).code, 200, "the live allocation is still the server's");
  await sleep(500);
  const { sent, atPeer, backAtClient } = await stream.stop();
  t.diagnostic(
    `failover done ${healedMs} ms after the kill; the server's store read the live record at ${storeMs} ms; a new Allocate succeeded by ${allocateMs} ms; stream: sent ${sent}, at peer ${atPeer}, back at client ${backAtClient}`,
  );
  assert.ok(sent > 50, `the stream ran through the failover (${sent} packets)`);
  // Redis is not on the data path (the engine relays from its own state), and this is
  // loopback in one process: nothing may be lost.
  assert.equal(sent - atPeer, 0, `client -> peer lost ${sent - atPeer} of ${sent}`);
  assert.equal(sent - backAtClient, 0, `peer -> client lost ${sent - backAtClient} of ${sent}`);
}

describe('Redis failover: the whole server keeps relaying', () => {
  it('Sentinel: live allocations keep flowing while the master is killed; Allocate works again', { timeout: TEST_TIMEOUT_MS }, async (t) => {
    const topology = await startSentinelTopology();
    onCleanup(t, () => topology.stop());
    const { server, endpoint } = await startClusterServer(t, {
      'redis-sentinel': topology.sentinelAddresses.map((s: HostPort) => `${s.host}:${s.port}`),
      'redis-sentinel-name': topology.name,
    });
    assert.equal(server.store.isAvailable(), true);
    const live = await liveAllocation(t, endpoint);
    await syncReplica(topology.master.port);
    const old = (await topology.masterAddress())!;
    await acrossFailover(
      t,
      server,
      endpoint,
      live,
      () => topology.master.kill(),
      async () => {
        await topology.waitForFailover(old);
      },
    );
  });

  it('Cluster: live allocations keep flowing while the master holding one is killed; Allocate works again', { timeout: TEST_TIMEOUT_MS }, async (t) => {
    const topology = await startRedisCluster({ masters: 3, replicasPerMaster: 1 });
    onCleanup(t, () => topology.stop());
    const { server, endpoint } = await startClusterServer(t, { 'redis-cluster': topology.startupNodes.map((n) => `${n.host}:${n.port}`) });
    assert.equal(server.store.isAvailable(), true);
    const live = await liveAllocation(t, endpoint);
    const key = fiveTupleKey('udp', '127.0.0.1', live.client.localPort, '127.0.0.1', endpoint.port);
    const victim = await topology.masterForKey(`anyturn:alloc:{${key}}`);
    assert.equal(await withAdmin(victim.port, (admin) => admin.exists(`anyturn:alloc:{${key}}`)), 1, 'the victim holds the live allocation');
    await syncReplica(victim.port, `anyturn-test:sync:{${key}}`);
    await acrossFailover(
      t,
      server,
      endpoint,
      live,
      () => victim.kill(),
      // Healed: another node serves the live allocation's slot as its master.
      async () => {
        await retryUntil("a replica to take the dead master's slots", async () =>
          (await topology.masterForKey(`anyturn:alloc:{${key}}`)) !== victim ? true : undefined,
        );
      },
    );
  });
});

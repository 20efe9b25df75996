// Anycast relay mode and a gap in the store's event feed: the subscriber connection goes
// silent while commands still work (a frozen socket, as after a failover to a node that no
// longer hears the PUBLISHes). The Redis store's heartbeat watchdog recreates the
// subscriber; what was published meanwhile is lost, so the node must take on from the
// store what it missed. A real server on real Redis, through a proxy that can freeze one
// connection.

import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';

import { buildConfig } from '../../src/config/index.js';
import { createLogger } from '../../src/ops/log.js';
import { type RunningServer, startServer } from '../../src/server.js';
import { type RedisClients, createRedisClients } from '../../src/store/redis/clients.js';
import { type AllocationRecord, fiveTupleKey } from '../../src/store/types.js';
import { type FreezableProxy, startFreezableProxy } from '../helpers/freezable-proxy.js';
import { type RedisServerHandle, startRedisServer } from '../helpers/redis-server.js';
import { findFreeUdpPort } from '../helpers/anyturn-process.js';

const MIN_PORT = 44100;

async function until(predicate: () => boolean, what: string, timeoutMs: number): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!predicate()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

describe('anycast relay mode: a gap in the store’s event feed', () => {
  let redis: RedisServerHandle | undefined;
  let proxy: FreezableProxy | undefined;
  let server: RunningServer | undefined;
  let other: RedisClients | undefined;
  before(async () => {
    redis = await startRedisServer();
    proxy = await startFreezableProxy(redis.port);
  });
  after(async () => {
    await server?.stop();
    await other?.close();
    await proxy?.close();
    await redis?.stop();
  });

  it('an allocation made elsewhere while the node heard nothing is taken on after the resubscription', { timeout: 60_000 }, async () => {
    const config = buildConfig({
      'node-id': 'gap-node',
      'listening-ip': ['127.0.0.1'],
      'listening-port': 0,
      'min-port': MIN_PORT,
      'max-port': MIN_PORT + 99,
      realm: 'gap.test',
      user: ['alice:secret'],
      'mesh-address': `127.0.0.1:${await findFreeUdpPort()}`,
      'cluster-secret': 'a cluster secret of enough bytes',
      'relay-mode': 'anycast',
      'redis-url': `redis://127.0.0.1:${proxy!.port}`,
      'allow-loopback-peers': true,
    });
    server = await startServer(config, { logger: createLogger('silent') });
    const udp = server.listening.find((l) => l.transport === 'udp')!;
    other = createRedisClients(redis!.url);
    await other.store.waitUntilReady(5000);

    // The node's subscriber goes silent; its commands connection keeps working.
    await until(
      () => server!.store.eventStats?.()?.heartbeatsReceived !== undefined && server!.store.eventStats!().heartbeatsReceived > 0,
      'a first heartbeat',
      10_000,
    );
    assert.equal(
      proxy!.freeze((c) => /subscribe/i.test(c.sent)),
      1,
      'exactly the subscriber connection is frozen',
    );

    // Another node makes an allocation on the shared address: the event is lost to this node.
    const now = Date.now();
    const record: Omit<AllocationRecord, 'version'> = {
      key: fiveTupleKey('udp', '127.0.0.1', 40000, '127.0.0.1', udp.port),
      transport: 'udp',
      clientAddress: '127.0.0.1',
      clientPort: 40000,
      serverAddress: '127.0.0.1',
      serverPort: udp.port,
      relayedAddress: '127.0.0.1',
      relayedPort: MIN_PORT + 50,
      ownerNodeId: 'elsewhere',
      username: 'alice',
      realm: 'gap.test',
      createdAtMs: now,
      expiresAtMs: now + 600_000,
      permissions: { '127.0.0.2': now + 300_000 },
      channels: {},
    };
    assert.ok((await other.store.create(record, { userQuota: 0 })).ok);

    await until(() => (server!.store.eventStats?.()?.resubscriptions ?? 0) >= 1, 'the watchdog recreating the subscriber', 20_000);
    await until(() => server!.engine.allocations === 1, 'the node taking on the allocation it never heard of', 10_000);
    const held = [...server.engine.allAllocations()][0]!;
    assert.equal(held.key, record.key);
    assert.equal(held.relay.port, MIN_PORT + 50, 'on the shared relayed port');
    assert.ok(held.permissionsByAddress.has('127.0.0.2'), 'with its permission');
  });
});

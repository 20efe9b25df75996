// A whole node (startServer, real sockets) on a real redis-server that the test stops
// and starts again: the node fails open (docs/architecture.md §5, §6). While Redis is
// down a new Allocate succeeds and relays both ways, /readyz stays 200, the metrics and
// one log line say the node is degraded; once Redis is back (a new, empty process) the
// allocation made during the outage is written to it, and a log line says the node left
// degraded mode.

import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';

import { buildConfig } from '../../src/config/index.js';
import { createLogger } from '../../src/ops/log.js';
import { type RunningServer, startServer } from '../../src/server.js';
import { fiveTupleKey } from '../../src/store/types.js';
import { findFreeUdpPort } from '../helpers/anyturn-process.js';
import { get, parseMetrics, sum, until } from '../helpers/ops-endpoint.js';
import { type RedisServerHandle, findFreePort, startRedisServer } from '../helpers/redis-server.js';
import { type Endpoint, TestPeer, TestTurnClient } from '../helpers/turn-client.js';

const credentials = { username: 'outage', password: 'outage-password', realm: 'store-outage.test' };

async function metrics(url: string): Promise<ReturnType<typeof parseMetrics>> {
  return parseMetrics((await get(`${url}/metrics`)).body);
}

describe('store outage: a node on a real Redis fails open', () => {
  let redis: RedisServerHandle;
  let server: RunningServer;
  let ops: string;
  let endpoint: Endpoint;
  const lines: Record<string, unknown>[] = [];
  const closers: (() => unknown)[] = [];

  before(async () => {
    redis = await startRedisServer();
    const config = buildConfig({
      'node-id': `outage-${randomBytes(3).toString('hex')}`,
      'listening-ip': ['127.0.0.1'],
      'listening-port': 0,
      'min-port': 44000,
      'max-port': 44999,
      realm: credentials.realm,
      user: [`${credentials.username}:${credentials.password}`],
      'allow-loopback-peers': true,
      'redis-url': redis.url,
      'mesh-address': `127.0.0.1:${await findFreeUdpPort()}`,
      'cluster-secret': 'a cluster secret of enough bytes',
      'metrics-port': await findFreePort(),
      // The scrape right after a change must show it.
      'metrics-cache-ms': 0,
    });
    const logger = createLogger('info', { write: (line: string) => void lines.push(JSON.parse(line) as Record<string, unknown>) });
    server = await startServer(config, { logger });
    ops = `http://127.0.0.1:${server.metricsPort}`;
    const udp = server.listening.find((l) => l.transport === 'udp');
    assert.ok(udp);
    endpoint = { address: '127.0.0.1', port: udp.port };
  });

  after(async () => {
    for (const close of closers) await close();
    await server?.stop();
    await redis?.stop();
  });

  it('Allocate during the outage: 200, relays both ways, /readyz 200, degraded metrics and log; written to Redis once it is back', async () => {
    assert.equal((await get(`${ops}/readyz`)).status, 200);
    assert.equal(sum(await metrics(ops), 'anyturn_store_degraded'), 0, 'not degraded while Redis answers');

    await redis.stop();
    await until(() => (server.store.isAvailable() ? undefined : true), 'the node to see Redis gone');
    // The once-a-second health check logs entering degraded mode.
    await until(() => lines.find((l) => l.event === 'store_degraded' && l.degraded === true), 'the degraded log line');

    const client = await TestTurnClient.open(endpoint, credentials);
    const peer = await TestPeer.open();
    closers.push(
      () => client.close(),
      () => peer.close(),
    );
    const { response, relayed } = await client.allocate();
    assert.equal(response.code, 200, 'an Allocate during the outage succeeds (it used to get 508)');
    assert.ok(relayed);
    assert.equal((await client.channelBind(0x4000, peer.endpoint)).code, 200);
    client.sendChannelData(0x4000, Buffer.from('to the peer'));
    const atPeer = await peer.waitFor(1);
    assert.deepEqual(
      atPeer.map((p) => [p.data.toString(), `${p.from.address}:${p.from.port}`]),
      [['to the peer', `${relayed.address}:${relayed.port}`]],
    );
    peer.send(Buffer.from('to the client'), relayed);
    const back = await client.waitForReceived(1);
    assert.equal(back[0]?.data.toString(), 'to the client');

    const ready = await get(`${ops}/readyz`);
    assert.deepEqual([ready.status, JSON.parse(ready.body)], [200, { ready: true }], '/readyz stays 200: a store outage is not this node’s fault');
    const during = await metrics(ops);
    assert.equal(sum(during, 'anyturn_store_degraded'), 1);
    assert.equal(sum(during, 'anyturn_store_up', { store: 'redis' }), 0);
    assert.equal(sum(during, 'anyturn_allocations_local_only_total'), 1);
    assert.equal(sum(during, 'anyturn_allocations_local_only'), 1);
    assert.equal(sum(during, 'anyturn_allocate_refusals_total'), 0, 'nothing refused');

    await redis.restart();
    const key = fiveTupleKey('udp', '127.0.0.1', client.localPort, '127.0.0.1', endpoint.port);
    const record = await until(() => server.store.get(key).catch(() => undefined), 'the allocation made during the outage in Redis', 20_000);
    assert.deepEqual(
      [record.relayedAddress, record.relayedPort, record.username, Object.keys(record.permissions), record.channels['16384']?.peerPort],
      [relayed.address, relayed.port, credentials.username, ['127.0.0.1'], peer.endpoint.port],
      'the record written back is the allocation with its permission and channel',
    );
    await until(() => lines.find((l) => l.event === 'store_degraded' && l.degraded === false), 'the log line leaving degraded mode');
    const afterwards = await metrics(ops);
    assert.equal(sum(afterwards, 'anyturn_store_degraded'), 0);
    assert.equal(sum(afterwards, 'anyturn_allocations_local_only'), 0, 'no allocation is local-only any more');
    assert.equal(sum(afterwards, 'anyturn_allocations_written_back_total'), 1);
    // It relays on, and its next change goes to the store as an update.
    assert.equal((await client.refresh(300)).code, 200);
    client.sendChannelData(0x4000, Buffer.from('after'));
    assert.equal((await peer.waitFor(2))[1]?.data.toString(), 'after');
    const degradedLines = lines.filter((l) => l.event === 'store_degraded').map((l) => l.degraded);
    assert.deepEqual(degradedLines, [true, false], 'one line entering degraded mode, one leaving it');
  });
});

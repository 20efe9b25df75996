// /metrics with a Redis store, on a real redis-server: the event feed's own heartbeat
// shows (published, heard back, no resubscription), and with --workers the primary's
// sum keeps per-node gauges per node (store up is 1, not one per worker).

import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';

import { LOOPBACK_V4, findFreeTcpPort, reserveRelayPortRange, startAnyturn, stopAfter, type CleanupRegistrar } from '../helpers/anyturn-process.js';
import { get, parseMetrics, sum, until, type Sample } from '../helpers/ops-endpoint.js';
import { startRedisServer, type RedisServerHandle } from '../helpers/redis-server.js';

const DEADLINE_MS = 15_000;

async function scrape(port: number): Promise<Sample[]> {
  const r = await get(`http://${LOOPBACK_V4}:${port}/metrics`);
  assert.equal(r.status, 200);
  return parseMetrics(r.body);
}

describe('/metrics with the Redis store', () => {
  let redis: RedisServerHandle;
  before(async () => {
    redis = await startRedisServer();
  });
  after(async () => {
    await redis?.stop();
  });

  async function start(t: CleanupRegistrar, extra: readonly string[]): Promise<number> {
    const metricsPort = await findFreeTcpPort();
    // Mesh ports: with --workers, worker i takes the given port + i.
    const mesh = await reserveRelayPortRange(2);
    stopAfter(
      t,
      await startAnyturn({
        users: [{ name: 'u', password: 'p' }],
        extraArgs: [
          '--redis-url',
          redis.url,
          '--mesh-address',
          `${LOOPBACK_V4}:${mesh.min}`,
          '--cluster-secret',
          'metrics-redis-test-secret-0123456789',
          '--metrics-ip',
          LOOPBACK_V4,
          '--metrics-port',
          String(metricsPort),
          ...extra,
        ],
      }),
    );
    return metricsPort;
  }

  it("exports the event feed's heartbeat", async (t) => {
    const port = await start(t, []);
    const samples = await until(
      async () => {
        const s = await scrape(port);
        return sum(s, 'anyturn_store_event_heartbeats_total', { kind: 'received' }) >= 2 ? s : undefined;
      },
      'two heartbeats heard back',
      DEADLINE_MS,
    );
    assert.ok(
      sum(samples, 'anyturn_store_event_heartbeats_total', { kind: 'published' }) >= sum(samples, 'anyturn_store_event_heartbeats_total', { kind: 'received' }),
    );
    assert.equal(sum(samples, 'anyturn_store_event_resubscriptions_total'), 0);
    const age = samples.find((s) => s.name === 'anyturn_store_event_echo_age_seconds');
    assert.ok(age !== undefined && age.value >= 0, `echo age: ${JSON.stringify(age)}`);
    assert.equal(sum(samples, 'anyturn_store_up', { store: 'redis' }), 1);
  });

  it('with --workers 2, sums counters over the workers but not the per-node gauges', async (t) => {
    const port = await start(t, ['--workers', '2']);
    const samples = await until(
      async () => {
        const s = await scrape(port);
        return sum(s, 'anyturn_store_event_heartbeats_total', { kind: 'received' }) >= 4 ? s : undefined;
      },
      'heartbeats heard back by both workers',
      DEADLINE_MS,
    );
    assert.equal(sum(samples, 'anyturn_workers'), 2);
    assert.equal(sum(samples, 'anyturn_store_up', { store: 'redis' }), 1, 'store up is the minimum over the workers, not their sum');
    assert.equal(sum(samples, 'anyturn_draining'), 0);
  });
});

// --region with real CLI processes on 127.0.0.1 (docs/scaling.md "Regions"): two regions
// that share one redis-server by mistake. A client allocates on region A's node; that
// node dies (SIGKILL, its record stays in the store) and region B's node takes its
// listening address, so the client's next datagrams carry the same 5-tuple to another
// region, as an anycast reroute would. B answers the first transmission of its Refresh
// with 437 (B never sees region A's record: in one region, B would find it and forward
// to the dead owner instead), and a new Allocate there succeeds. The region shows in the
// start line, in /metrics and in the node registry; a bad name exits 2 naming it.

import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';

import { Redis } from 'ioredis';

import { Method } from '../../src/stun/constants.js';
import {
  ANYTURN_CLI_PATH,
  LOOPBACK_V4,
  findFreePort,
  findFreeTcpPort,
  parseLogLines,
  reserveRelayPortRange,
  runToCompletion,
  startAnyturn,
  stopAfter,
  type CleanupRegistrar,
} from '../helpers/anyturn-process.js';
import { get, parseMetrics, sum } from '../helpers/ops-endpoint.js';
import { startRedisServer } from '../helpers/redis-server.js';
import { TestTurnClient } from '../helpers/turn-client.js';
import { codeOf } from '../helpers/turn-client/messages.js';

const USER = 'region-user';
const PASSWORD = 'region-pass';
const REALM = 'region.test';
const SECRET = 'region-test-cluster-secret-0123456789';

async function startNode(t: CleanupRegistrar, redisUrl: string, region: string, port: number) {
  const mesh = await reserveRelayPortRange(1);
  const metricsPort = await findFreeTcpPort();
  const server = await startAnyturn({
    listeningPort: port,
    realm: REALM,
    users: [{ name: USER, password: PASSWORD }],
    tcp: false,
    extraArgs: [
      '--no-tls',
      '--redis-url',
      redisUrl,
      '--mesh-address',
      `${LOOPBACK_V4}:${mesh.min}`,
      '--cluster-secret',
      SECRET,
      '--node-id',
      `node-${region}`,
      '--region',
      region,
      '--metrics-ip',
      LOOPBACK_V4,
      '--metrics-port',
      String(metricsPort),
    ],
  });
  stopAfter(t, server);
  return { server, metricsPort };
}

describe('--region (real processes, one redis-server shared by two regions)', () => {
  it('a client rerouted to another region gets 437 to its first Refresh and allocates there anew', async (t) => {
    const redis = await startRedisServer();
    t.after(() => redis.stop());
    const admin = new Redis(redis.url);
    t.after(() => admin.disconnect());
    const tag = randomBytes(2).toString('hex');
    const [regionA, regionB] = [`east-${tag}`, `west-${tag}`];
    const port = await findFreePort();

    const a = await startNode(t, redis.url, regionA, port);
    const ready = parseLogLines(a.server.process.stdout()).find((l) => l.msg === 'anyturn ready');
    assert.equal(ready?.region, regionA, 'the start line names the region');
    const metrics = parseMetrics((await get(`http://${LOOPBACK_V4}:${a.metricsPort}/metrics`)).body);
    assert.equal(sum(metrics, 'anyturn_region_info', { region: regionA }), 1);
    const nodeRecord = JSON.parse((await admin.get(`anyturn:region:${regionA}:node:{node-${regionA}}`)) ?? '{}') as { region?: string };
    assert.equal(nodeRecord.region, regionA, 'the node registry record names the region');

    const client = await TestTurnClient.open({ address: LOOPBACK_V4, port }, { username: USER, password: PASSWORD, realm: REALM });
    t.after(() => client.close());
    const first = await client.allocate();
    assert.equal(first.response.code, 200);
    const key = `udp|${LOOPBACK_V4}|${client.localPort}|${LOOPBACK_V4}|${port}`;
    assert.equal(await admin.exists(`anyturn:region:${regionA}:alloc:{${key}}`), 1, "the allocation is in region A's keys");

    // Region A's node dies; region B's node takes over the address: the same 5-tuple reaches region B.
    await a.server.process.stop('SIGKILL');
    const b = await startNode(t, redis.url, regionB, port);
    const refresh = client.build(Method.Refresh);
    client.sendRaw(refresh.buf); // once: no retransmission
    const answers = await client.waitForResponses(refresh.transactionId, 1, 15_000);
    assert.equal(answers.length, 1, 'the one transmission was answered');
    assert.equal(codeOf(answers[0]!), 437, 'allocation mismatch: region B knows nothing of it');

    const second = await client.allocate();
    assert.equal(second.response.code, 200, 'a new Allocate in region B succeeds');
    assert.equal(await admin.exists(`anyturn:region:${regionB}:alloc:{${key}}`), 1, "in region B's keys");
    assert.equal(await admin.exists(`anyturn:region:${regionA}:alloc:{${key}}`), 1, "region A's record is untouched (its TTL ends it)");
    const bMetrics = parseMetrics((await get(`http://${LOOPBACK_V4}:${b.metricsPort}/metrics`)).body);
    assert.equal(sum(bMetrics, 'anyturn_region_info', { region: regionB }), 1);
    assert.ok(
      bMetrics.some((m) => m.name === 'anyturn_store_events_received_total'),
      'the node counts the events it hears',
    );
  });

  it('refuses a region name outside [a-z0-9-]{1,32}, naming the flag and the value (exit 2)', async (t) => {
    const r = await runToCompletion(
      process.execPath,
      [
        ANYTURN_CLI_PATH,
        '--user',
        'u:p',
        '--redis-url',
        'redis://127.0.0.1:1',
        '--mesh-address',
        '127.0.0.1:7000',
        '--cluster-secret',
        SECRET,
        '--region',
        'Bad_Name',
      ],
      15_000,
      t,
    );
    assert.equal(r.code, 2);
    assert.match(r.stderr, /--region "Bad_Name": 1 to 32 lowercase letters, digits and hyphens/);
  });
});

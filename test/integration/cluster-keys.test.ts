// Two nodes of a cluster on one Redis, in this process, over real UDP on loopback:
// the nonce of a 401 from one node is accepted by the other, yet is no HMAC under
// the cluster secret itself; refused mesh frames show in /metrics by reason.

import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { createHmac } from 'node:crypto';
import dgram from 'node:dgram';

import { MeshSocket } from '../../src/cluster/mesh.js';
import { buildConfig } from '../../src/config/index.js';
import { NONCE_KEY_LABEL, deriveKey } from '../../src/keys.js';
import { createLogger } from '../../src/ops/log.js';
import { type RunningServer, startServer } from '../../src/server.js';
import { encodeRequestedTransport } from '../../src/stun/attributes.js';
import { Attr, MessageClass, Method, TRANSPORT_UDP } from '../../src/stun/constants.js';
import { MessageWriter } from '../../src/stun/writer.js';
import { parseMetrics, sum, until } from '../helpers/ops-endpoint.js';
import { type RedisServerHandle, startRedisServer } from '../helpers/redis-server.js';
import { type Endpoint, TestTurnClient } from '../helpers/turn-client.js';
import { findFreeUdpPort } from '../helpers/anyturn-process.js';

const CLUSTER_SECRET = 'cluster-keys-test-secret-0123456789';
const REALM = 'cluster-keys.test';
const credentials = { username: 'u', password: 'p', realm: REALM };

describe('cluster keys on two real nodes', () => {
  let redis: RedisServerHandle;
  const servers: RunningServer[] = [];
  const clients: TestTurnClient[] = [];

  before(async () => {
    redis = await startRedisServer();
  });
  after(async () => {
    for (const c of clients) c.close();
    for (const s of servers) await s.stop();
    await redis?.stop();
  });

  async function node(id: string, minPort: number): Promise<{ server: RunningServer; endpoint: Endpoint }> {
    const server = await startServer(
      buildConfig({
        'node-id': id,
        'listening-ip': ['127.0.0.1'],
        'listening-port': 0,
        'min-port': minPort,
        'max-port': minPort + 99,
        realm: REALM,
        user: [`${credentials.username}:${credentials.password}`],
        'redis-url': redis.url,
        'mesh-address': `127.0.0.1:${await findFreeUdpPort()}`,
        'cluster-secret': CLUSTER_SECRET,
      }),
      { logger: createLogger('silent') },
    );
    servers.push(server);
    return { server, endpoint: { address: '127.0.0.1', port: server.listening.find((l) => l.transport === 'udp')!.port } };
  }

  it('a 401 nonce from one node is valid on the other, and is not an HMAC under the cluster secret', async () => {
    const a = await node('keys-a', 44100);
    const b = await node('keys-b', 44200);
    const toA = await TestTurnClient.open(a.endpoint, credentials);
    clients.push(toA);
    await toA.ensureNonce();
    const nonce = toA.nonce!;

    // The nonce: the RFC 8489 cookie (13 characters), then base64url(timestamp || MAC of timestamp, cookie and client IP).
    const cookie = nonce.slice(0, 13);
    const raw = Buffer.from(nonce.slice(13), 'base64url');
    const macUnder = (key: Buffer | string): Buffer =>
      createHmac('sha256', key)
        .update(raw.subarray(0, 4))
        .update(cookie, 'latin1')
        .update('127.0.0.1', 'utf8')
        .digest()
        .subarray(0, raw.length - 4);
    assert.deepEqual(raw.subarray(4), macUnder(deriveKey(Buffer.from(CLUSTER_SECRET), NONCE_KEY_LABEL)), 'the MAC is under the derived nonce key');
    assert.notDeepEqual(raw.subarray(4), macUnder(CLUSTER_SECRET), 'the 401 is no offline oracle for --cluster-secret');

    // The other node takes the nonce at once: no 401 or 438 first.
    const toB = await TestTurnClient.open(b.endpoint, credentials);
    clients.push(toB);
    toB.nonce = nonce;
    const { buf, transactionId } = toB.build(Method.Allocate, (w) => w.add(Attr.RequestedTransport, encodeRequestedTransport(TRANSPORT_UDP)));
    const m = await toB.transact(buf, transactionId);
    assert.equal(m?.cls, MessageClass.SuccessResponse, "node B accepts node A's nonce");
  });

  it('counts refused mesh frames by reason in /metrics', async () => {
    const a = await node('keys-c', 44300);
    const junk = dgram.createSocket('udp4');
    const peer = new MeshSocket('127.0.0.1', 0, Buffer.from(CLUSTER_SECRET), {
      onPacket: () => undefined,
      onRejected: () => undefined,
      onError: () => undefined,
    });
    await peer.start();
    try {
      junk.send(Buffer.from('not a mesh frame'), a.server.meshPort, '127.0.0.1');
      // Authentic, but for a server address this node does not listen on.
      const binding = new MessageWriter(Method.Binding, MessageClass.Request, Buffer.alloc(12, 1)).toBuffer();
      peer.forward('127.0.0.1', a.server.meshPort, '198.51.100.7', 40000, '203.0.113.99', 3478, binding);
      const samples = await until(async () => {
        const s = parseMetrics(await a.server.metrics.metrics());
        return sum(s, 'anyturn_mesh_rejected_frames_total') >= 2 ? s : undefined;
      }, 'both frames counted');
      assert.equal(sum(samples, 'anyturn_mesh_rejected_frames_total', { reason: 'malformed' }), 1);
      assert.equal(sum(samples, 'anyturn_mesh_rejected_frames_total', { reason: 'no_listener' }), 1);
      assert.equal(sum(samples, 'anyturn_mesh_rejected_frames_total', { reason: 'replayed' }), 0, 'every reason is exported, at 0 until it happens');
      assert.equal(sum(samples, 'anyturn_mesh_received_packets_total'), 0);
    } finally {
      junk.close();
      await peer.close();
    }
  });
});

// Bandwidth limits over real sockets (turn/bandwidth.ts): --max-bps on one node, and
// --user-max-bps across two nodes sharing a redis-server. The assertions are counts the
// token bucket's arithmetic fixes, not timings: the bucket starts full (one second of the
// limit), so a burst larger than that is cut whatever the machine's speed; every datagram
// sent is either relayed or counted as dropped; and the server cannot have relayed more
// than the bucket plus the limit times the time the test saw pass around it.

import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';

import { LOOPBACK_V4, findFreeTcpPort, reserveRelayPortRange, startAnyturn, stopAfter, type CleanupRegistrar } from '../helpers/anyturn-process.js';
import { get, parseMetrics, sum, until } from '../helpers/ops-endpoint.js';
import { startRedisServer, type RedisServerHandle } from '../helpers/redis-server.js';
import { type Endpoint, TestPeer, TestTurnClient } from '../helpers/turn-client.js';

const REALM = 'anyturn.test';
const USER = { name: 'alice', password: 'wonderland' };
const CREDENTIALS = { username: USER.name, password: USER.password, realm: REALM };
const PACKET = Buffer.alloc(1000, 0x62);
const DEADLINE_MS = 30_000;

interface Node {
  readonly endpoint: Endpoint;
  readonly metricsPort: number;
}

async function startNode(t: CleanupRegistrar, extra: readonly string[]): Promise<Node> {
  const metricsPort = await findFreeTcpPort();
  const server = stopAfter(
    t,
    await startAnyturn({
      realm: REALM,
      users: [USER],
      allowLoopbackPeers: true,
      extraArgs: ['--metrics-ip', LOOPBACK_V4, '--metrics-port', String(metricsPort), '--metrics-cache-ms', '0', ...extra],
    }),
  );
  return { endpoint: { address: server.host, port: server.port }, metricsPort };
}

async function counters(node: Node): Promise<{ up: number; upBytes: number; down: number; dropped: number }> {
  const r = await get(`http://${LOOPBACK_V4}:${node.metricsPort}/metrics`);
  assert.equal(r.status, 200);
  const s = parseMetrics(r.body);
  return {
    up: sum(s, 'anyturn_relayed_packets_total', { direction: 'client_to_peer' }),
    upBytes: sum(s, 'anyturn_relayed_bytes_total', { direction: 'client_to_peer' }),
    down: sum(s, 'anyturn_relayed_packets_total', { direction: 'peer_to_client' }),
    dropped: sum(s, 'anyturn_dropped_packets_total', { reason: 'bandwidth' }),
  };
}

/** A client with a channel (0x4000) to its own peer. */
async function channel(t: CleanupRegistrar, node: Node): Promise<{ client: TestTurnClient; peer: TestPeer; relayed: Endpoint }> {
  const client = await TestTurnClient.open(node.endpoint, CREDENTIALS);
  const peer = await TestPeer.open();
  t.after(() => {
    client.close();
    peer.close();
  });
  const { response, relayed } = await client.allocate();
  assert.equal(response.code, 200);
  assert.ok(relayed);
  assert.equal((await client.channelBind(0x4000, peer.endpoint)).code, 200);
  return { client, peer, relayed };
}

function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

describe('bandwidth limits over real UDP', () => {
  it('--max-bps: the excess of a client sending about twice the limit is dropped and counted, the rest relayed, the allocation kept', async (t) => {
    const LIMIT = 20_000;
    const node = await startNode(t, ['--max-bps', String(LIMIT)]);
    const { client, peer, relayed } = await channel(t, node);

    const started = Date.now();
    // A burst of 30 KB into a full bucket of 20 KB: at least 20 pass, and some must drop.
    let sent = 0;
    for (let i = 0; i < 30; i++, sent++) client.sendChannelData(0x4000, PACKET);
    // Then 40 KB/s (twice the limit) for two seconds.
    for (let round = 0; round < 20; round++) {
      await sleep(100);
      for (let i = 0; i < 4; i++, sent++) client.sendChannelData(0x4000, PACKET);
    }
    // Every datagram is accounted for: relayed to the peer, or dropped for bandwidth.
    const done = await until(
      async () => {
        const c = await counters(node);
        return c.up + c.dropped >= sent && peer.received.length >= c.up ? c : undefined;
      },
      'every datagram relayed or dropped',
      DEADLINE_MS,
    );
    const elapsedMs = Date.now() - started;
    assert.equal(done.up + done.dropped, sent, 'relayed + dropped == sent');
    assert.equal(peer.received.length, done.up, 'the peer got what the server relayed');
    assert.ok(done.dropped > 0, 'over the limit something was dropped');
    assert.ok(done.up >= LIMIT / PACKET.length, 'the full bucket passed');
    // The bucket (one second of the limit) plus what it refilled, over no more time than the test saw pass.
    assert.ok(done.upBytes <= LIMIT + (LIMIT * elapsedMs) / 1000 + 1, `${done.upBytes} bytes relayed in ${elapsedMs} ms`);

    // Peer to client has its own bucket, still full: the same cut applies to a burst the other way.
    const before = await counters(node);
    for (let i = 0; i < 30; i++) peer.send(PACKET, relayed);
    const down = await until(
      async () => {
        const c = await counters(node);
        return c.down - before.down + (c.dropped - before.dropped) >= 30 && client.received.length >= c.down - before.down ? c : undefined;
      },
      'the peer burst accounted for',
      DEADLINE_MS,
    );
    assert.equal(down.down - before.down + (down.dropped - before.dropped), 30);
    assert.equal(client.received.length, down.down - before.down);
    assert.ok(down.down - before.down >= LIMIT / PACKET.length);
    assert.ok(down.dropped > before.dropped);

    // Degraded, never torn down (coturn #1168): the allocation answers and relays again.
    assert.equal((await client.refresh()).code, 200);
  });

  describe('--user-max-bps across two nodes on one redis-server', () => {
    let redis: RedisServerHandle;
    before(async () => {
      redis = await startRedisServer();
    });
    after(async () => {
      await redis?.stop();
    });

    it("each node alone is under the user's limit, together over it: both nodes drop once they have exchanged usage", async (t) => {
      const LIMIT = 40_000;
      const nodes: Node[] = [];
      for (const id of ['bw-a', 'bw-b']) {
        const mesh = await reserveRelayPortRange(1);
        nodes.push(
          await startNode(t, [
            '--user-max-bps',
            String(LIMIT),
            '--redis-url',
            redis.url,
            '--node-id',
            id,
            '--mesh-address',
            `${LOOPBACK_V4}:${mesh.min}`,
            '--cluster-secret',
            'bandwidth-cluster-test-secret-0123456789',
          ]),
        );
      }
      const flows = [await channel(t, nodes[0]!), await channel(t, nodes[1]!)];
      // 35 KB/s on each node: under the limit (and the one-second bucket) for either node
      // alone, so a node that knew nothing of the other would never drop; 70 KB/s together.
      const sent = [0, 0];
      const dropping = async (): Promise<boolean> => (await counters(nodes[0]!)).dropped > 0 && (await counters(nodes[1]!)).dropped > 0;
      let both = false;
      const deadline = Date.now() + DEADLINE_MS;
      while (!both && Date.now() < deadline) {
        for (let f = 0; f < 2; f++) for (let i = 0; i < 7; i++, sent[f]!++) flows[f]!.client.sendChannelData(0x4000, PACKET);
        await sleep(200);
        both = await dropping();
      }
      assert.ok(both, 'both nodes dropped for bandwidth while each alone was under the limit');
      // Nothing lost otherwise, nothing torn down.
      for (let f = 0; f < 2; f++) {
        const node = nodes[f]!;
        const { peer, client } = flows[f]!;
        const c = await until(
          async () => {
            const c = await counters(node);
            return c.up + c.dropped >= sent[f]! && peer.received.length >= c.up ? c : undefined;
          },
          `node ${f}: every datagram relayed or dropped`,
          DEADLINE_MS,
        );
        assert.equal(c.up + c.dropped, sent[f], `node ${f}: relayed + dropped == sent`);
        assert.equal(peer.received.length, c.up);
        assert.equal((await client.refresh()).code, 200);
      }
    });
  });
});

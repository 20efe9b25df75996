// RESERVATION-TOKEN (RFC 8656 §7.2, §14.9) across two real anyturn processes on one
// redis-server, over real UDP on 127.0.0.1:
// - anycast relay mode: the relayed address is the cluster's, so a token node A issued is
//   redeemed on node B. Both processes share one host here, where A's placeholder socket
//   would hold the port B has to bind; A is SIGKILLed first (the token lives in the store,
//   and a client whose first node died is the case that matters most). The in-process test
//   of both nodes alive is in anycast-relay.test.ts.
// - forward (unicast) mode: a token names a port on A's own relay address, which B cannot
//   bind: B answers 508 and leaves the token alone, so it still works on A.

import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { decodeAddress } from '../../src/stun/address.js';
import { encodeEvenPort } from '../../src/stun/attributes.js';
import { Attr } from '../../src/stun/constants.js';
import { getAttribute } from '../../src/stun/message.js';
import { type PortRange, type RunningTurnServer, findFreeUdpPort, reserveRelayPortRange, startAnyturn } from '../helpers/anyturn-process.js';
import { type RedisServerHandle, startRedisServer } from '../helpers/redis-server.js';
import { type Endpoint, TestPeer, TestTurnClient } from '../helpers/turn-client.js';

const REALM = 'reservation.test';
const credentials = { username: 'alice', password: 'wonderland', realm: REALM };
const CLUSTER_SECRET = 'reservation-token-cluster-secret-0123456789';

describe('RESERVATION-TOKEN across two anyturn processes on one Redis', () => {
  let redis: RedisServerHandle;
  const servers: RunningTurnServer[] = [];
  const closers: { close(): void }[] = [];

  before(async () => {
    redis = await startRedisServer();
  });
  after(async () => {
    for (const c of closers) c.close();
    for (const s of servers) await s.stop();
    await redis.stop();
  });

  async function node(id: string, extra: readonly string[], relayPorts?: PortRange): Promise<RunningTurnServer> {
    const server = await startAnyturn({
      realm: REALM,
      users: [{ name: credentials.username, password: credentials.password }],
      allowLoopbackPeers: true,
      relayPorts,
      extraArgs: [
        '--node-id',
        id,
        '--redis-url',
        redis.url,
        '--mesh-address',
        `127.0.0.1:${await findFreeUdpPort()}`,
        '--cluster-secret',
        CLUSTER_SECRET,
        ...extra,
      ],
    });
    servers.push(server);
    return server;
  }

  async function client(server: RunningTurnServer): Promise<TestTurnClient> {
    const c = await TestTurnClient.open({ address: server.host, port: server.port }, credentials);
    closers.push(c);
    return c;
  }

  /** EVEN-PORT with the R bit on `server`: the relayed port and the RESERVATION-TOKEN. */
  async function reserve(server: RunningTurnServer): Promise<{ port: number; token: Buffer }> {
    const { response, relayed } = await (await client(server)).allocate((w) => w.add(Attr.EvenPort, encodeEvenPort(true)));
    assert.equal(response.code, 200);
    const token = getAttribute(response.message, Attr.ReservationToken);
    assert.ok(relayed && token, 'a relayed address and a RESERVATION-TOKEN');
    assert.equal(relayed.port % 2, 0, 'EVEN-PORT');
    return { port: relayed.port, token: Buffer.from(token) };
  }

  async function redeem(server: RunningTurnServer, token: Buffer): Promise<{ code: number; relayed?: Endpoint; client: TestTurnClient }> {
    const c = await client(server);
    const { response } = await c.allocate((w) => w.add(Attr.ReservationToken, token));
    const value = getAttribute(response.message, Attr.XorRelayedAddress);
    const relayed = value ? decodeAddress(value, response.message.transactionId) : undefined;
    return { code: response.code, relayed: relayed ? { address: relayed.address, port: relayed.port } : undefined, client: c };
  }

  it('anycast relay mode: a token node A issued is redeemed on node B, and relays', async () => {
    // One relay range for the cluster: in anycast relay mode it is shared.
    const range = await reserveRelayPortRange();
    const a = await node('resv-anycast-a', ['--relay-mode', 'anycast'], range);
    const b = await node('resv-anycast-b', ['--relay-mode', 'anycast'], range);
    const { port, token } = await reserve(a);
    await a.process.stop('SIGKILL');

    const redeemed = await redeem(b, token);
    assert.equal(redeemed.code, 200, "node B redeems node A's token");
    assert.deepEqual(redeemed.relayed, { address: '127.0.0.1', port: port + 1 }, 'the reserved port, next to the first one');
    const peer = await TestPeer.open();
    closers.push(peer);
    assert.equal((await redeemed.client.createPermission(peer.endpoint)).code, 200);
    redeemed.client.sendIndication(peer.endpoint, Buffer.from('from the reserved port'));
    const [got] = await peer.waitFor(1);
    assert.equal(got?.data.toString(), 'from the reserved port');
    assert.deepEqual(got?.from, redeemed.relayed);

    assert.equal((await redeem(b, token)).code, 508, 'a token works once');
  });

  it('forward mode: node B answers 508 to a token for node A, which still redeems it', async () => {
    const a = await node('resv-forward-a', []);
    const b = await node('resv-forward-b', []);
    const { port, token } = await reserve(a);
    assert.equal((await redeem(b, token)).code, 508, 'the port is on node A, which alone can bind it (RFC 8656 §7.2)');
    const onA = await redeem(a, token);
    assert.equal(onA.code, 200, 'node B left the token in the store');
    assert.deepEqual(onA.relayed, { address: '127.0.0.1', port: port + 1 });
  });
});

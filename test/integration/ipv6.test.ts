// IPv6 over real sockets on ::1: an IPv6 allocation (REQUESTED-ADDRESS-FAMILY)
// relaying to an IPv6 peer, and a dual allocation (ADDITIONAL-ADDRESS-FAMILY,
// RFC 8656 §7.2) with one relayed address per family relaying to both.

import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';

import { buildConfig } from '../../src/config/index.js';
import { createLogger } from '../../src/ops/log.js';
import { type RunningServer, startServer } from '../../src/server.js';
import { decodeAddress } from '../../src/stun/address.js';
import { encodeAddressFamily } from '../../src/stun/attributes.js';
import { AddressFamily, Attr } from '../../src/stun/constants.js';
import { getAttributes } from '../../src/stun/message.js';
import { type Endpoint, TestPeer, TestTurnClient } from '../helpers/turn-client.js';

const credentials = { username: 'v6', password: 'six', realm: 'ipv6.test' };

describe('IPv6 relaying on ::1', () => {
  let server: RunningServer;
  let v4: Endpoint;
  let v6: Endpoint;
  before(async () => {
    server = await startServer(
      buildConfig({
        'listening-ip': ['127.0.0.1', '::1'],
        'listening-port': 0,
        'relay-ip': ['127.0.0.1', '::1'],
        'min-port': 48000,
        'max-port': 48499,
        realm: credentials.realm,
        user: [`${credentials.username}:${credentials.password}`],
        'allow-loopback-peers': true,
      }),
      { logger: createLogger('silent') },
    );
    v4 = { address: '127.0.0.1', port: server.listening.find((l) => l.address === '127.0.0.1')!.port };
    v6 = { address: '::1', port: server.listening.find((l) => l.address === '::1')!.port };
  });
  after(() => server.stop());

  it('allocates an IPv6 relayed address for a client on ::1 and relays to an IPv6 peer both ways', async () => {
    const client = await TestTurnClient.open(v6, credentials, { address: '::1' });
    const peer = await TestPeer.open('::1');
    try {
      const { response, relayed } = await client.allocate((w) => w.add(Attr.RequestedAddressFamily, encodeAddressFamily(AddressFamily.IPv6)));
      assert.equal(response.code, 200);
      assert.equal(relayed?.address, '::1');
      assert.equal((await client.channelBind(0x4002, peer.endpoint)).code, 200);
      client.sendChannelData(0x4002, Buffer.from('six to six'));
      const [got] = await peer.waitFor(1);
      assert.equal(got?.data.toString(), 'six to six');
      assert.deepEqual(got?.from, relayed);
      peer.send(Buffer.from('and back'), relayed!);
      const [back] = await client.waitForReceived(1);
      assert.equal(back?.kind, 'channel-data');
      assert.equal(back?.data.toString(), 'and back');
      // An IPv4 peer on an IPv6-only allocation is a family mismatch.
      assert.equal((await client.createPermission({ address: '127.0.0.1', port: 9 })).code, 443);
    } finally {
      client.close();
      peer.close();
    }
  });

  it('gives a dual allocation both relayed addresses and relays to a peer of each family', async () => {
    const client = await TestTurnClient.open(v4, credentials);
    const peer4 = await TestPeer.open('127.0.0.1');
    const peer6 = await TestPeer.open('::1');
    try {
      const { response } = await client.allocate((w) => w.add(Attr.AdditionalAddressFamily, encodeAddressFamily(AddressFamily.IPv6)));
      assert.equal(response.code, 200);
      const m = response.message;
      const relayed = getAttributes(m, Attr.XorRelayedAddress).map((v) => decodeAddress(v, m.transactionId)!);
      assert.deepEqual(
        relayed.map((r) => r.address),
        ['127.0.0.1', '::1'],
        'an IPv4 and an IPv6 relayed address, in that order',
      );
      assert.equal(getAttributes(m, Attr.AddressErrorCode).length, 0);

      assert.equal((await client.createPermission(peer4.endpoint, peer6.endpoint)).code, 200);
      client.sendIndication(peer4.endpoint, Buffer.from('to four'));
      client.sendIndication(peer6.endpoint, Buffer.from('to six'));
      const [got4] = await peer4.waitFor(1);
      const [got6] = await peer6.waitFor(1);
      assert.equal(got4?.data.toString(), 'to four');
      assert.deepEqual(got4?.from, { address: relayed[0]!.address, port: relayed[0]!.port });
      assert.equal(got6?.data.toString(), 'to six');
      assert.deepEqual(got6?.from, { address: relayed[1]!.address, port: relayed[1]!.port });

      peer6.send(Buffer.from('from six'), { address: relayed[1]!.address, port: relayed[1]!.port });
      const [back] = await client.waitForReceived(1);
      assert.equal(back?.kind, 'data-indication');
      assert.equal(back?.data.toString(), 'from six');
      assert.deepEqual(back?.peer, peer6.endpoint);
      const gauge = [...server.engine.allAllocations()].filter((a) => a.additionalRelay !== undefined).length;
      assert.equal(gauge, 1);
    } finally {
      client.close();
      peer4.close();
      peer6.close();
    }
  });
});

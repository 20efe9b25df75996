// RFC 8016 mobility over real UDP against the real CLI (--mobility): a client streams
// ChannelData both ways through its allocation, then changes its source port (its NAT
// rebinds, or it changes network) and sends a Refresh with its MOBILITY-TICKET from the
// new one: the allocation moves there and the stream goes on through the same relayed
// address, both ways. The original ticket is spent by that move.

import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { Attr, Method } from '../../src/stun/constants.js';
import { getAttribute } from '../../src/stun/message.js';
import { type RunningTurnServer, startAnyturn } from '../helpers/anyturn-process.js';
import { type Endpoint, TestPeer, TestTurnClient } from '../helpers/turn-client.js';

const REALM = 'mobility.test';
const credentials = { username: 'alice', password: 'wonderland', realm: REALM };

describe('RFC 8016 mobility over real UDP (--mobility)', () => {
  let server: RunningTurnServer;
  const closers: { close(): void }[] = [];

  before(async () => {
    server = await startAnyturn({
      realm: REALM,
      users: [{ name: credentials.username, password: credentials.password }],
      allowLoopbackPeers: true,
      extraArgs: ['--mobility'],
    });
  });
  after(async () => {
    for (const c of closers) c.close();
    await server.stop();
  });

  async function open(): Promise<TestTurnClient> {
    const c = await TestTurnClient.open({ address: server.host, port: server.port }, credentials);
    closers.push(c);
    return c;
  }

  /** Sends one ChannelData each way; resolves what the peer and the client got. */
  async function roundTrip(client: TestTurnClient, peer: TestPeer, relayed: Endpoint, label: string): Promise<void> {
    const peerHad = peer.received.length;
    const clientHad = client.received.length;
    client.sendChannelData(0x4000, Buffer.from(`up ${label}`));
    const up = (await peer.waitFor(peerHad + 1))[peerHad];
    assert.equal(up?.data.toString(), `up ${label}`);
    assert.deepEqual(up?.from, relayed, 'from the same relayed address');
    peer.send(Buffer.from(`down ${label}`), relayed);
    const down = (await client.waitForReceived(clientHad + 1))[clientHad];
    assert.deepEqual([down?.kind, down?.channel, down?.data.toString()], ['channel-data', 0x4000, `down ${label}`]);
  }

  it('keeps relaying through the same relayed address after the client changes its source port', async () => {
    const first = await open();
    const { response, relayed } = await first.allocate((w) => w.add(Attr.MobilityTicket, Buffer.alloc(0)));
    assert.equal(response.code, 200);
    assert.ok(relayed);
    const ticket = getAttribute(response.message, Attr.MobilityTicket);
    assert.ok(ticket && ticket.length > 0, 'the Allocate answer carries a ticket');
    const peer = await TestPeer.open();
    closers.push(peer);
    assert.equal((await first.channelBind(0x4000, peer.endpoint)).code, 200);
    await roundTrip(first, peer, relayed, 'before');

    // The client's source port changes: a new socket, the same credentials and nonce.
    const moved = await open();
    moved.nonce = first.nonce;
    moved.realm = first.realm;
    assert.notEqual(moved.localPort, first.localPort);
    first.close();
    const refresh = await moved.request(Method.Refresh, (w) => w.add(Attr.MobilityTicket, Buffer.from(ticket)));
    assert.equal(refresh.code, 200);
    assert.ok(getAttribute(refresh.message, Attr.MobilityTicket), 'a new ticket');
    await roundTrip(moved, peer, relayed, 'after');
    assert.equal((await moved.refresh()).code, 200, "the allocation is the new 5-tuple's now");

    // The first ticket moved it once: from yet another port it moves nothing.
    const thief = await open();
    thief.nonce = moved.nonce;
    thief.realm = moved.realm;
    const replay = await thief.request(Method.Refresh, (w) => w.add(Attr.MobilityTicket, Buffer.from(ticket)));
    assert.notEqual(replay.code, 200);
    await roundTrip(moved, peer, relayed, 'after the replay');
  });
});

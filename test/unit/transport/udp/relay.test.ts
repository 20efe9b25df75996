// UdpRelayFactory.bind on an IP literal answers within the call (no promise): node:dgram binds
// synchronously when the lookup does, and an Allocate on the memory store then runs to its
// answer without a turn of the event loop (docs/scaling.md, part 1). Real sockets, loopback.

import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import dgram from 'node:dgram';
import { UdpRelayFactory } from '../../../../src/transport/udp/relay.js';
import { bindUdpSocketNow, createUdpSocket } from '../../../../src/transport/udp/socket.js';
import { type RelayBound, isBindFailure } from '../../../../src/turn/ports.js';

const LOOPBACK = '127.0.0.1';

function closeQuietly(socket: dgram.Socket): void {
  try {
    socket.close();
  } catch {
    // closed already
  }
}

/** The answer, insisting that it came within the call. */
function atOnce(bound: RelayBound | Promise<RelayBound>): RelayBound {
  assert.ok(!(bound instanceof Promise), 'answered within the call, not by a promise');
  return bound;
}

describe('UdpRelayFactory.bind on an IP literal', () => {
  it('answers a bound socket at once, which delivers what a peer sends and holds its port until closed', async () => {
    const factory = new UdpRelayFactory(() => undefined, 0);
    const probe = createUdpSocket(LOOPBACK);
    assert.equal(bindUdpSocketNow(probe, LOOPBACK, 0), undefined, 'bound within the call');
    const freePort = probe.address().port;
    closeQuietly(probe);
    const got: string[] = [];
    const relay = atOnce(factory.bind(LOOPBACK, freePort, (payload, address, port) => got.push(`${address}:${port} ${payload.toString()}`)));
    assert.ok(!isBindFailure(relay));
    const peer = dgram.createSocket('udp4');
    await new Promise<void>((resolve) => peer.bind(0, LOOPBACK, resolve));
    peer.send(Buffer.from('hello'), freePort, LOOPBACK);
    for (let i = 0; i < 200 && got.length === 0; i++) await new Promise((r) => setTimeout(r, 5));
    assert.deepEqual(got, [`${LOOPBACK}:${peer.address().port} hello`]);
    assert.equal(factory.holds(LOOPBACK, freePort), true);
    const closedBefore = factory.closedCount(LOOPBACK);
    relay.close();
    assert.equal(factory.holds(LOOPBACK, freePort), false, 'closing gives the port back');
    assert.equal(factory.closedCount(LOOPBACK), closedBefore + 1);
    closeQuietly(peer);
    factory.close();
  });

  it('answers a port another socket holds as in-use at once, and leaves no listener behind', () => {
    const factory = new UdpRelayFactory(() => undefined, 0);
    const holder = createUdpSocket(LOOPBACK);
    assert.equal(bindUdpSocketNow(holder, LOOPBACK, 0), undefined);
    const taken = holder.address().port;
    assert.deepEqual(atOnce(factory.bind(LOOPBACK, taken, () => undefined)), { failed: 'in-use' });
    assert.equal(factory.holds(LOOPBACK, taken), false);
    // bindUdpSocketNow's own listeners are gone: a later error of the holder is the holder's.
    const again = createUdpSocket(LOOPBACK);
    const error = bindUdpSocketNow(again, LOOPBACK, taken);
    assert.ok(error instanceof Error && (error as NodeJS.ErrnoException).code === 'EADDRINUSE');
    assert.equal(again.listenerCount('error'), 0);
    assert.equal(again.listenerCount('listening'), 0);
    assert.equal(holder.listenerCount('error'), 0);
    closeQuietly(again);
    closeQuietly(holder);
    factory.close();
  });

  it('answers an address that is not a literal of the socket family as unavailable, at once', () => {
    const factory = new UdpRelayFactory(() => undefined, 0);
    const r = atOnce(factory.bind('not-an-ip', 0, () => undefined));
    assert.ok(isBindFailure(r) && r.failed === 'unavailable', `unavailable, not ${JSON.stringify(r)}`);
    factory.close();
  });
});

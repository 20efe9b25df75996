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

/** Waits (without a fixed sleep) until `done()` holds; fails after 2 s. */
async function waitFor(done: () => boolean): Promise<void> {
  for (let i = 0; i < 400 && !done(); i++) await new Promise((r) => setTimeout(r, 5));
  assert.ok(done(), 'timed out');
}

async function boundPeer(type: 'udp4' | 'udp6', address: string): Promise<{ socket: dgram.Socket; got: string[] }> {
  const socket = dgram.createSocket(type);
  await new Promise<void>((resolve) => socket.bind(0, address, resolve));
  const got: string[] = [];
  socket.on('message', (msg) => got.push(msg.toString()));
  return { socket, got };
}

for (const [type, loopback, otherFamily] of [
  ['udp4', '127.0.0.1', '::1'],
  ['udp6', '::1', '127.0.0.1'],
] as const) {
  describe(`UdpRelayFactory: bare UDP handles (${type})`, () => {
    it('learns them from its first socket; the later sockets deliver, send whole datagrams and parts, and hold their ports until closed', async () => {
      const factory = new UdpRelayFactory(() => undefined, 0);
      assert.equal(factory.socketKind, 'unknown');
      const first = atOnce(factory.bind(loopback, 0, () => undefined));
      assert.ok(!isBindFailure(first));
      assert.equal(factory.socketKind, 'handle', 'learnt from the first (dgram) socket');

      const probe = createUdpSocket(loopback);
      assert.equal(bindUdpSocketNow(probe, loopback, 0), undefined);
      const freePort = probe.address().port;
      closeQuietly(probe);
      const delivered: string[] = [];
      const relay = atOnce(factory.bind(loopback, freePort, (payload, address, port) => delivered.push(`${address}:${port} ${payload.toString()}`)));
      assert.ok(!isBindFailure(relay));
      assert.equal(factory.holds(loopback, freePort), true);

      const peer = await boundPeer(type, loopback);
      const peerPort = peer.socket.address().port;
      peer.socket.send(Buffer.from('hello'), freePort, loopback);
      await waitFor(() => delivered.length === 1);
      assert.deepEqual(delivered, [`${loopback}:${peerPort} hello`]);

      const datagram = Buffer.from(`HDR.${'abcdefghijklmnopqrstuvwxyz'.repeat(4)}..pad`);
      const parts = [
        [0, datagram.length],
        [4, 100],
        [36, 60],
        [4, 60],
        [36, 61],
      ] as const;
      for (const [offset, length] of parts) relay.send(datagram, offset, length, peerPort, loopback);
      // Never sent, never a throw: ports no datagram can go to, ranges outside the payload, the other family.
      relay.send(datagram, 0, 4, 0, loopback);
      relay.send(datagram, 0, 4, 65536, loopback);
      relay.send(datagram, 0, 4, 1.5, loopback);
      relay.send(datagram, 100, 100, peerPort, loopback);
      relay.send(datagram, -1, 4, peerPort, loopback);
      relay.send(datagram, 0, 4, peerPort, otherFamily);
      await waitFor(() => peer.got.length === parts.length);
      const expected = parts.map(([offset, length]) => datagram.subarray(offset, offset + length).toString());
      assert.deepEqual([...peer.got].sort(), [...expected].sort());

      // Another socket's port: in-use, at once.
      assert.deepEqual(atOnce(factory.bind(loopback, peerPort, () => undefined)), { failed: 'in-use' });

      const closedBefore = factory.closedCount(loopback);
      relay.close();
      relay.close();
      assert.equal(factory.holds(loopback, freePort), false);
      assert.equal(factory.closedCount(loopback), closedBefore + 1, 'counted once');
      relay.send(datagram, 4, 10, peerPort, loopback); // closed: nothing, no throw
      peer.socket.send(Buffer.from('late'), freePort, loopback);
      // The port is free again at once: closing let the kernel socket go.
      const again = atOnce(factory.bind(loopback, freePort, () => undefined));
      if (isBindFailure(again)) assert.fail(`the port was not free again: ${JSON.stringify(again)}`);
      again.close();
      first.close();
      await new Promise((r) => setTimeout(r, 20));
      assert.deepEqual(delivered, [`${loopback}:${peerPort} hello`], 'nothing delivered after close');
      assert.equal(peer.got.length, parts.length, 'nothing sent after close');
      closeQuietly(peer.socket);
      factory.close();
    });

    it('are not used when told so: every relay socket is then a dgram socket', async () => {
      const factory = new UdpRelayFactory(() => undefined, 0, false);
      const sockets = [atOnce(factory.bind(loopback, 0, () => undefined))];
      const delivered: string[] = [];
      const probe = createUdpSocket(loopback);
      assert.equal(bindUdpSocketNow(probe, loopback, 0), undefined);
      const freePort = probe.address().port;
      closeQuietly(probe);
      sockets.push(atOnce(factory.bind(loopback, freePort, (payload) => delivered.push(payload.toString()))));
      assert.equal(factory.socketKind, 'dgram');
      const peer = await boundPeer(type, loopback);
      peer.socket.send(Buffer.from('to dgram'), freePort, loopback);
      await waitFor(() => delivered.length === 1);
      assert.deepEqual(delivered, ['to dgram']);
      for (const s of sockets) if (!isBindFailure(s)) s.close();
      closeQuietly(peer.socket);
      factory.close();
    });
  });
}

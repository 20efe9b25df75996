// SharedRelayFactory (src/transport/udp/shared-relay.ts) on loopback with a fake of the
// kernel's steering: the datagrams the kernel would deliver (data + trailer) are sent to the
// shared socket by hand, and what the shared socket sends is read by a plain socket, trailer
// and all (no egress program on lo). docs/dataplane.md §8.

import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import dgram from 'node:dgram';
import { once } from 'node:events';
import { type PortSteering, SharedRelayFactory, TRAILER_MAGIC } from '../../../../src/transport/udp/shared-relay.js';
import { DROP_REASONS, type DropReason } from '../../../../src/turn/counters.js';
import { isBindFailure, type RelaySocket } from '../../../../src/turn/ports.js';

const ADDRESS = '127.0.0.1';
/** Another address than the relay address: sends to the relay address itself stay inside the factory. */
const PEER_ADDRESS = '127.0.0.2';
const MIN_PORT = 50000;
const MAX_PORT = 50999;

class FakeSteering implements PortSteering {
  readonly shared = new Map<string, number>();
  readonly steered = new Map<string, number>();
  readonly log: string[] = [];
  steering = true;
  async shareSocket(address: string, sharedPort: number): Promise<void> {
    this.shared.set(address, sharedPort);
  }
  async steer(address: string, port: number, sharedPort: number): Promise<void> {
    this.log.push(`steer ${port}`);
    this.steered.set(`${address}|${port}`, sharedPort);
  }
  unsteer(address: string, port: number): void {
    this.log.push(`unsteer ${port}`);
    this.steered.delete(`${address}|${port}`);
  }
}

function withTrailer(data: Buffer, port: number, magic = TRAILER_MAGIC): Buffer {
  const t = Buffer.alloc(4);
  t.writeUInt16BE(port, 0);
  t.writeUInt16BE(magic, 2);
  return Buffer.concat([data, t]);
}

interface Got {
  data: string;
  address: string;
  port: number;
}

describe('SharedRelayFactory', () => {
  const steering = new FakeSteering();
  const drops = Object.fromEntries(DROP_REASONS.map((r) => [r, 0])) as Record<DropReason, number>;
  let factory: SharedRelayFactory;
  let peer: dgram.Socket;
  let sharedPort: number;

  before(async () => {
    factory = await SharedRelayFactory.open({ addresses: [ADDRESS], minPort: MIN_PORT, maxPort: MAX_PORT, steering, drops, onError: () => undefined });
    sharedPort = factory.sharedPort(ADDRESS)!;
    peer = dgram.createSocket('udp4');
    peer.bind(0, PEER_ADDRESS);
    await once(peer, 'listening');
  });

  after(async () => {
    peer?.close();
    await factory?.close();
  });

  /** Binds a relayed port whose handler records what it gets (the datagram's first `length` bytes only). */
  async function bindRecording(port: number): Promise<{ socket: RelaySocket; got: Got[] }> {
    const got: Got[] = [];
    const socket = await factory.bind(ADDRESS, port, (payload, address, from, length) => {
      got.push({ data: payload.subarray(0, length ?? payload.length).toString(), address, port: from });
    });
    assert.ok(!isBindFailure(socket));
    return { socket, got };
  }

  async function until(check: () => boolean): Promise<void> {
    while (!check()) await new Promise((r) => setTimeout(r, 5));
  }

  it('opens one socket per relay address outside the relay range and lists it with the kernel', () => {
    assert.ok(sharedPort < MIN_PORT || sharedPort > MAX_PORT, `shared port ${sharedPort}`);
    assert.equal(steering.shared.get(ADDRESS), sharedPort);
  });

  it('finds a port above or below the relay range when the range covers every ephemeral port', async () => {
    // 10000-65535 holds the whole ephemeral range (32768-60999 by default): no kernel-chosen
    // port can be outside it, so the shared socket takes one below 10000 (nothing above).
    const wide = new FakeSteering();
    const f = await SharedRelayFactory.open({ addresses: [ADDRESS], minPort: 10000, maxPort: 65535, steering: wide, drops, onError: () => undefined });
    try {
      const port = f.sharedPort(ADDRESS)!;
      assert.ok(port >= 1024 && port < 10000, `shared port ${port}`);
      assert.equal(wide.shared.get(ADDRESS), port);
    } finally {
      await f.close();
    }
  });

  it('bind() steers the port before it resolves; holds() and closedCount() follow bind and close', async () => {
    const { socket } = await bindRecording(50010);
    assert.equal(steering.steered.get(`${ADDRESS}|50010`), sharedPort);
    assert.equal(factory.holds(ADDRESS, 50010), true);
    assert.equal(factory.steeredPorts, 1);
    assert.deepEqual(await factory.bind(ADDRESS, 50010, () => undefined), { failed: 'in-use' });
    assert.deepEqual(await factory.bind(ADDRESS, sharedPort, () => undefined), { failed: 'in-use' });
    const closed = factory.closedCount(ADDRESS);
    socket.close();
    socket.close();
    assert.equal(factory.holds(ADDRESS, 50010), false);
    assert.equal(factory.closedCount(ADDRESS), closed + 1);
    assert.equal(steering.steered.has(`${ADDRESS}|50010`), false);
    assert.equal(factory.steeredPorts, 0);
  });

  it("a datagram with the kernel's trailer reaches the handler of the port it names, without the trailer", async () => {
    const a = await bindRecording(50020);
    const b = await bindRecording(50021);
    peer.send(withTrailer(Buffer.from('to b'), 50021), sharedPort, ADDRESS);
    peer.send(withTrailer(Buffer.from('to a'), 50020), sharedPort, ADDRESS);
    await until(() => a.got.length === 1 && b.got.length === 1);
    const from = peer.address().port;
    assert.deepEqual(a.got, [{ data: 'to a', address: PEER_ADDRESS, port: from }]);
    assert.deepEqual(b.got, [{ data: 'to b', address: PEER_ADDRESS, port: from }]);
    a.socket.close();
    b.socket.close();
  });

  it('a datagram without the magic, too short, or for a port nobody holds is dropped and counted', async () => {
    const a = await bindRecording(50030);
    const before = drops.no_steer_trailer;
    peer.send(withTrailer(Buffer.from('bad magic'), 50030, 0x1234), sharedPort, ADDRESS);
    peer.send(Buffer.from([0xa5]), sharedPort, ADDRESS);
    peer.send(withTrailer(Buffer.from('nobody'), 50031), sharedPort, ADDRESS);
    peer.send(withTrailer(Buffer.from('marker'), 50030), sharedPort, ADDRESS);
    await until(() => a.got.length === 1);
    assert.deepEqual(
      a.got.map((g) => g.data),
      ['marker'],
    );
    assert.equal(drops.no_steer_trailer - before, 3);
    a.socket.close();
  });

  it('send() copies the part of the payload and appends the trailer naming its relayed port', async () => {
    const a = await bindRecording(50040);
    const received = once(peer, 'message') as Promise<[Buffer, dgram.RemoteInfo]>;
    a.socket.send(Buffer.from('xxhello peeryy'), 2, 10, peer.address().port, PEER_ADDRESS);
    const [msg, rinfo] = await received;
    assert.deepEqual(msg, withTrailer(Buffer.from('hello peer'), 50040));
    assert.equal(rinfo.port, sharedPort, 'on lo no egress program rewrites it');
    a.socket.close();
  });

  it('send() to another relayed port of the same address is handed over without a packet', async () => {
    const a = await bindRecording(50050);
    const b = await bindRecording(50051);
    a.socket.send(Buffer.from('..from a..'), 2, 6, 50051, ADDRESS);
    assert.deepEqual(b.got, [{ data: 'from a', address: ADDRESS, port: 50050 }]);
    a.socket.send(Buffer.from('nobody'), 0, 6, 50052, ADDRESS);
    assert.deepEqual(a.got, []);
    a.socket.close();
    b.socket.close();
  });

  it('without the kernel path, bind() is refused as unavailable and available() says no', async () => {
    steering.steering = false;
    try {
      assert.deepEqual(await factory.bind(ADDRESS, 50060, () => undefined), { failed: 'unavailable', code: 'ESTEER' });
      assert.equal(await factory.available(ADDRESS), false);
    } finally {
      steering.steering = true;
    }
    assert.equal(await factory.available(ADDRESS), true);
    assert.deepEqual(await factory.bind('127.0.0.3', 50060, () => undefined), { failed: 'unavailable', code: 'EADDRNOTAVAIL' });
  });
});

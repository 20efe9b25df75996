// The mesh between nodes over real UDP sockets on loopback: frames are encrypted,
// bound to the socket that sent them, and handled once. An attacker on the path is
// played by capturing a node's frames on a tap socket, then sending them again from
// the node's own address and port (bound after the node's socket closed, so the
// datagrams are indistinguishable from the node's) or from elsewhere.

import { after, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import dgram from 'node:dgram';

import { type MeshPacket, MeshSocket } from '../../src/cluster/mesh.js';

const SECRET = Buffer.from('a cluster secret of enough bytes');
const CLIENT = '198.51.100.7';
const SERVER = '203.0.113.1';

async function until(predicate: () => boolean, what: string, timeoutMs = 3000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!predicate()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 5));
  }
}

interface Receiver {
  readonly mesh: MeshSocket;
  readonly got: MeshPacket[];
  readonly rejected: Map<string, number>;
  /** Frames decided so far: delivered or refused. */
  decided(): number;
}

const cleanups: (() => Promise<void> | void)[] = [];
after(async () => {
  for (const c of cleanups.reverse()) await c();
});

async function receiver(address = '127.0.0.1', now?: () => number): Promise<Receiver> {
  const got: MeshPacket[] = [];
  const rejected = new Map<string, number>();
  const mesh = new MeshSocket(
    address,
    0,
    SECRET,
    {
      onPacket: (p) => got.push(p),
      onRejected: (reason) => rejected.set(reason, (rejected.get(reason) ?? 0) + 1),
      onError: () => undefined,
    },
    { now },
  );
  await mesh.start();
  cleanups.push(() => mesh.close());
  return { mesh, got, rejected, decided: () => got.length + [...rejected.values()].reduce((a, b) => a + b, 0) };
}

async function sender(address = '127.0.0.1', port = 0, secret = SECRET, now?: () => number): Promise<MeshSocket> {
  const mesh = new MeshSocket(address, port, secret, { onPacket: () => undefined, onRejected: () => undefined, onError: () => undefined }, { now });
  await mesh.start();
  cleanups.push(() => mesh.close());
  return mesh;
}

async function udpSocket(address = '127.0.0.1', port = 0): Promise<dgram.Socket> {
  const socket = dgram.createSocket(address.includes(':') ? 'udp6' : 'udp4');
  await new Promise<void>((resolve, reject) => {
    socket.once('error', reject);
    socket.bind(port, address, () => {
      socket.off('error', reject);
      resolve();
    });
  });
  cleanups.push(
    () =>
      new Promise<void>((resolve) => {
        try {
          socket.close(() => resolve());
        } catch {
          resolve();
        }
      }),
  );
  return socket;
}

/** A tap on the path: everything sent to it, in order. */
async function tap(address = '127.0.0.1'): Promise<{ socket: dgram.Socket; frames: Buffer[] }> {
  const socket = await udpSocket(address);
  const frames: Buffer[] = [];
  socket.on('message', (msg) => frames.push(msg));
  return { socket, frames };
}

/** `count` frames from a node's mesh socket, captured on a tap; then the node's socket is closed and its port free. */
async function capture(payloads: readonly string[], address = '127.0.0.1'): Promise<{ frames: Buffer[]; port: number }> {
  const t = await tap(address);
  const node = await sender(address);
  const port = node.port;
  for (const p of payloads) node.forward(address, t.socket.address().port, CLIENT, 40000, SERVER, 3478, Buffer.from(p));
  await until(() => t.frames.length === payloads.length, 'frames on the tap');
  await node.close();
  return { frames: t.frames, port };
}

function send(socket: dgram.Socket, frame: Buffer, to: MeshSocket, address = '127.0.0.1'): void {
  socket.send(frame, to.port, address);
}

describe('mesh frames', () => {
  it('relay between two sockets with the same secret, IPv4 and IPv6 client and server addresses alike', async () => {
    const r = await receiver();
    const s = await sender();
    s.forward('127.0.0.1', r.mesh.port, CLIENT, 40001, SERVER, 3478, Buffer.from('over v4'));
    s.forward('127.0.0.1', r.mesh.port, '2001:db8::7', 40002, '2001:db8::1', 3479, Buffer.from('over v6'));
    s.forward('127.0.0.1', r.mesh.port, CLIENT, 40003, SERVER, 3478, Buffer.alloc(0));
    await until(() => r.decided() === 3, 'three frames');
    assert.deepEqual(
      r.got.map((p) => [p.clientAddress, p.clientPort, p.serverAddress, p.serverPort, p.payload.toString()]),
      [
        [CLIENT, 40001, SERVER, 3478, 'over v4'],
        ['2001:db8::7', 40002, '2001:db8::1', 3479, 'over v6'],
        [CLIENT, 40003, SERVER, 3478, ''],
      ],
    );
    assert.equal(r.rejected.size, 0);
  });

  it('relay between mesh sockets on ::1', async (t) => {
    let r: Receiver;
    try {
      r = await receiver('::1');
    } catch {
      t.skip('no IPv6 loopback');
      return;
    }
    const s = await sender('::1');
    s.forward('::1', r.mesh.port, CLIENT, 40004, SERVER, 3478, Buffer.from('mesh on v6'));
    await until(() => r.decided() === 1, 'the frame');
    assert.equal(r.got[0]?.payload.toString(), 'mesh on v6');
    // Replayed from the sender's own address and port: refused, as over IPv4.
    const captured = await capture(['captured on v6'], '::1');
    const replayer = await udpSocket('::1', captured.port);
    for (let i = 0; i < 3; i++) send(replayer, captured.frames[0]!, r.mesh, '::1');
    await until(() => r.decided() === 4, 'the replays decided');
    assert.deepEqual(
      r.got.map((p) => p.payload.toString()),
      ['mesh on v6', 'captured on v6'],
    );
    assert.equal(r.rejected.get('replayed'), 2);
  });

  it('carry the client packet encrypted: its bytes are not in the frame', async () => {
    const secret = 'client packet bytes that must not cross the Internet in clear';
    const { frames } = await capture([secret]);
    assert.equal(frames[0]!.includes(Buffer.from(secret)), false);
    assert.equal(frames[0]!.includes(Buffer.from('client packet')), false);
  });

  it("a captured frame sent 5 times from the sender's own address and port is delivered once", async () => {
    const r = await receiver();
    const { frames, port } = await capture(['channel data']);
    const replayer = await udpSocket('127.0.0.1', port);
    for (let i = 0; i < 5; i++) send(replayer, frames[0]!, r.mesh);
    await until(() => r.decided() === 5, 'five frames decided');
    assert.equal(r.got.length, 1);
    assert.equal(r.got[0]!.payload.toString(), 'channel data');
    assert.deepEqual([...r.rejected], [['replayed', 4]]);
  });

  it('frames reordered within the window are each delivered once', async () => {
    const r = await receiver();
    const { frames, port } = await capture(['one', 'two', 'three']);
    const replayer = await udpSocket('127.0.0.1', port);
    for (const i of [2, 0, 1, 1, 0, 2]) send(replayer, frames[i]!, r.mesh);
    await until(() => r.decided() === 6, 'six frames decided');
    assert.deepEqual(
      r.got.map((p) => p.payload.toString()),
      ['three', 'one', 'two'],
    );
    assert.deepEqual([...r.rejected], [['replayed', 3]]);
  });

  it("a frame sent from any other address or port than its sender's is refused", async () => {
    const r = await receiver();
    const { frames, port } = await capture(['from elsewhere']);
    const elsewhere = await udpSocket();
    send(elsewhere, frames[0]!, r.mesh);
    await until(() => r.decided() === 1, 'the frame decided');
    assert.equal(r.got.length, 0);
    assert.deepEqual([...r.rejected], [['wrong_sender', 1]]);
    // The frame itself was sound: from its sender's address and port it is delivered.
    const own = await udpSocket('127.0.0.1', port);
    send(own, frames[0]!, r.mesh);
    await until(() => r.decided() === 2, 'the frame from its sender');
    assert.equal(r.got[0]?.payload.toString(), 'from elsewhere');
  });

  it("a frame whose timestamp is far from the receiver's clock is refused as stale, in the past or the future", async () => {
    const r = await receiver();
    const late = await sender('127.0.0.1', 0, SECRET, () => Date.now() - 10 * 60_000);
    const early = await sender('127.0.0.1', 0, SECRET, () => Date.now() + 10 * 60_000);
    late.forward('127.0.0.1', r.mesh.port, CLIENT, 40005, SERVER, 3478, Buffer.from('ten minutes old'));
    early.forward('127.0.0.1', r.mesh.port, CLIENT, 40006, SERVER, 3478, Buffer.from('ten minutes ahead'));
    await until(() => r.decided() === 2, 'both frames decided');
    assert.equal(r.got.length, 0);
    assert.deepEqual([...r.rejected], [['stale', 2]]);
  });

  it('a captured frame replayed after the clock skew has passed is refused as stale', async () => {
    let offsetMs = 0;
    const r = await receiver('127.0.0.1', () => Date.now() + offsetMs);
    const { frames, port } = await capture(['old']);
    offsetMs = 10 * 60_000; // the receiver restarted ten minutes later: no window remembers the frame
    const replayer = await udpSocket('127.0.0.1', port);
    send(replayer, frames[0]!, r.mesh);
    await until(() => r.decided() === 1, 'the frame decided');
    assert.equal(r.got.length, 0);
    assert.deepEqual([...r.rejected], [['stale', 1]]);
  });

  it('a tampered frame is refused: ciphertext, header or tag', async () => {
    const r = await receiver();
    const { frames, port } = await capture(['tamper with me']);
    const frame = frames[0]!;
    const replayer = await udpSocket('127.0.0.1', port);
    const flipped = (at: number): Buffer => {
      const copy = Buffer.from(frame);
      copy[at]! ^= 0x01;
      return copy;
    };
    send(replayer, flipped(frame.length - 16 - 3), r.mesh); // a byte of the encrypted client packet
    send(replayer, flipped(frame.length - 1), r.mesh); // the tag
    send(replayer, flipped(11), r.mesh); // the client port
    send(replayer, flipped(frame.length - 16 - 14 - 1), r.mesh); // the last byte of the server address
    await until(() => r.decided() === 4, 'four frames decided');
    assert.equal(r.got.length, 0);
    assert.deepEqual([...r.rejected], [['bad_tag', 4]]);
    // A refused frame does not burn its sequence number: the genuine one still goes through, once.
    send(replayer, frame, r.mesh);
    send(replayer, frame, r.mesh);
    await until(() => r.decided() === 6, 'the genuine frame decided');
    assert.deepEqual(
      r.got.map((p) => p.payload.toString()),
      ['tamper with me'],
    );
  });

  it('a frame under another cluster secret is refused', async () => {
    const r = await receiver();
    const other = await sender('127.0.0.1', 0, Buffer.from('another cluster secret, 32 bytes'));
    other.forward('127.0.0.1', r.mesh.port, CLIENT, 40007, SERVER, 3478, Buffer.from('forged'));
    await until(() => r.decided() === 1, 'the frame decided');
    assert.equal(r.got.length, 0);
    assert.deepEqual([...r.rejected], [['bad_tag', 1]]);
  });

  it('a sender restarted on the same address and port is accepted at once', async () => {
    const r = await receiver();
    const first = await sender();
    const port = first.port;
    first.forward('127.0.0.1', r.mesh.port, CLIENT, 40008, SERVER, 3478, Buffer.from('before'));
    await until(() => r.decided() === 1, 'the first frame');
    await first.close();
    const again = await sender('127.0.0.1', port);
    again.forward('127.0.0.1', r.mesh.port, CLIENT, 40008, SERVER, 3478, Buffer.from('after'));
    await until(() => r.decided() === 2, 'the frame after the restart');
    assert.deepEqual(
      r.got.map((p) => p.payload.toString()),
      ['before', 'after'],
    );
  });

  it('a client packet that framed would not fit in one datagram is dropped and counted, not failed on the socket', async () => {
    const r = await receiver();
    let tooLarge = 0;
    const errors: Error[] = [];
    const s = new MeshSocket('127.0.0.1', 0, SECRET, {
      onPacket: () => undefined,
      onRejected: () => undefined,
      onTooLarge: () => tooLarge++,
      onError: (err) => errors.push(err),
    });
    await s.start();
    cleanups.push(() => s.close());
    // IPv4 client, server and sender: 52 bytes of header and 16 of tag around the packet, 65,507 bytes at most.
    const largest = 65507 - 52 - 16;
    s.forward('127.0.0.1', r.mesh.port, CLIENT, 40009, SERVER, 3478, Buffer.alloc(largest + 1, 7));
    s.forward('127.0.0.1', r.mesh.port, CLIENT, 40009, SERVER, 3478, Buffer.alloc(largest, 7));
    await until(() => r.decided() === 1, 'the largest frame');
    assert.equal(r.got[0]?.payload.length, largest);
    assert.equal(tooLarge, 1);
    assert.deepEqual(errors, []);
  });
});

// UdpSender and receiveFromHandle (src/transport/dgram-fast.ts) over real sockets on
// loopback: the fast path is taken where Node's internals are as expected, sends what it
// is given byte for byte, fails quietly where Socket.send would have failed quietly, and
// falls back to Socket.send where the internals cannot be confirmed. Queued sends (libuv
// could not send at once) are forced with Node's --test-udp-no-try-send in a child process.

import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import dgram from 'node:dgram';

import { SEND_DONE, SEND_FAILED, UdpSender, receiveFromHandle } from '../../../../src/transport/udp/dgram-fast.js';
import { literalLookup } from '../../../../src/transport/udp/lookup.js';
import { FramedSender } from '../../../../src/transport/udp/framed-sender.js';
import { UdpRelayFactory } from '../../../../src/transport/udp/relay.js';
import { isBindFailure } from '../../../../src/turn/ports.js';

interface Received {
  readonly data: Buffer;
  readonly address: string;
  readonly port: number;
}

/** Waits (without a fixed sleep) until `done()` holds; fails after `timeoutMs`. */
async function waitFor(done: () => boolean, timeoutMs = 2000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!done()) {
    if (Date.now() > deadline) throw new Error('timed out');
    await new Promise<void>((resolve) => setTimeout(resolve, 2));
  }
}

async function bound(type: 'udp4' | 'udp6', address: string, lookup?: typeof literalLookup): Promise<dgram.Socket> {
  const socket = dgram.createSocket(lookup ? { type, lookup } : { type });
  await new Promise<void>((resolve, reject) => {
    socket.once('error', reject);
    socket.bind(0, address, () => {
      socket.off('error', reject);
      resolve();
    });
  });
  return socket;
}

/** A bound socket that records what it receives, through 'message' or through the handle. */
async function receiver(type: 'udp4' | 'udp6', address: string, viaHandle: boolean): Promise<{ socket: dgram.Socket; got: Received[] }> {
  const socket = await bound(type, address);
  const got: Received[] = [];
  const onPacket = (data: Buffer, from: string, port: number): void => void got.push({ data: Buffer.from(data), address: from, port });
  if (viaHandle) assert.equal(receiveFromHandle(socket, onPacket), true, 'the receive hook is in place');
  else socket.on('message', (msg, rinfo) => onPacket(msg, rinfo.address, rinfo.port));
  return { socket, got };
}

function close(...sockets: dgram.Socket[]): void {
  for (const s of sockets) {
    try {
      s.close();
    } catch {
      // closed already
    }
  }
}

/** What `rx` received from `tx`, as text (other tests' datagrams may still arrive late). */
function textsFrom(got: readonly Received[], tx: dgram.Socket): string[] {
  const port = tx.address().port;
  return got.filter((r) => r.port === port).map((r) => r.data.toString());
}

for (const [type, loopback, otherFamily] of [
  ['udp4', '127.0.0.1', '::1'],
  ['udp6', '::1', '127.0.0.1'],
] as const) {
  describe(`UdpSender (${type})`, () => {
    let rx: { socket: dgram.Socket; got: Received[] };
    before(async () => {
      rx = await receiver(type, loopback, true);
    });
    after(() => close(rx.socket));

    it('sends through the handle, byte for byte, whole buffers and slices', async () => {
      const tx = await bound(type, loopback, literalLookup);
      const sender = new UdpSender(tx);
      const port = rx.socket.address().port;
      const buf = Buffer.from('..hello, world..');
      assert.equal(sender.send(buf, 2, 5, port, loopback), SEND_DONE);
      assert.equal(sender.fast, true, 'internals as expected: fast path');
      assert.equal(sender.send(buf, 9, 5, port, loopback), SEND_DONE);
      assert.equal(sender.send(Buffer.from('whole'), 0, 5, port, loopback), SEND_DONE);
      assert.equal(sender.send(Buffer.alloc(0), 0, 0, port, loopback), SEND_DONE, 'an empty datagram');
      await waitFor(() => textsFrom(rx.got, tx).length >= 4);
      assert.deepEqual(textsFrom(rx.got, tx), ['hello', 'world', 'whole', '']);
      for (const r of rx.got.filter((g) => g.port === tx.address().port)) assert.equal(r.address, loopback, 'rinfo from the handle');
      assert.equal(sender.failures, 0);
      assert.equal(sender.queueCount(), 0);
      close(tx);
    });

    it('counts a failed send (an address of the other family) and carries on', async () => {
      const tx = await bound(type, loopback, literalLookup);
      const errors: Error[] = [];
      tx.on('error', (err) => errors.push(err));
      const sender = new UdpSender(tx);
      const port = rx.socket.address().port;
      assert.equal(sender.send(Buffer.from('warm'), 0, 4, port, loopback), SEND_DONE);
      assert.equal(sender.send(Buffer.from('lost'), 0, 4, port, otherFamily), SEND_FAILED);
      assert.equal(sender.failures, 1);
      assert.equal(sender.send(Buffer.from('next'), 0, 4, port, loopback), SEND_DONE);
      await waitFor(() => textsFrom(rx.got, tx).length >= 2);
      assert.deepEqual(textsFrom(rx.got, tx), ['warm', 'next']);
      assert.deepEqual(errors, [], 'like Socket.send without a callback: no error event');
      close(tx);
    });

    it('fails quietly once the socket is closed', async () => {
      const tx = await bound(type, loopback, literalLookup);
      const sender = new UdpSender(tx);
      assert.equal(sender.send(Buffer.from('x'), 0, 1, rx.socket.address().port, loopback), SEND_DONE);
      await waitFor(() => textsFrom(rx.got, tx).length === 1);
      tx.close();
      assert.equal(sender.send(Buffer.from('x'), 0, 1, rx.socket.address().port, loopback), SEND_FAILED);
      assert.equal(sender.queueCount(), 0);
    });

    // Socket.send throws ERR_SOCKET_BAD_PORT for these: thrown into a packet handler, that
    // ended the process (the security review's peer-port-0 crash). Now a counted failure, on
    // both paths.
    for (const allowFast of [true, false]) {
      it(`refuses port 0, 65536 and 1.5 as a counted failure, never a throw (${allowFast ? 'fast path' : 'Socket.send'})`, async () => {
        const tx = await bound(type, loopback, literalLookup);
        const sender = new UdpSender(tx, allowFast);
        assert.equal(sender.send(Buffer.from('x'), 0, 1, rx.socket.address().port, loopback), SEND_DONE);
        assert.equal(sender.fast, allowFast);
        for (const port of [0, 65536, 1.5, -1]) {
          assert.equal(sender.send(Buffer.from('x'), 0, 1, port, loopback), SEND_FAILED, `port ${port}`);
          assert.equal(sender.sendUnchanging(Buffer.from('x'), 0, 1, port, loopback), SEND_FAILED, `port ${port}`);
        }
        assert.equal(sender.failures, 8);
        assert.equal(sender.send(Buffer.from('y'), 0, 1, rx.socket.address().port, loopback), SEND_DONE, 'and carries on');
        close(tx);
      });
    }

    it('uses Socket.send when told to, with the same results', async () => {
      const tx = await bound(type, loopback, literalLookup);
      const sender = new UdpSender(tx, false);
      const port = rx.socket.address().port;
      assert.equal(sender.send(Buffer.from('..slow..'), 2, 4, port, loopback), SEND_DONE);
      assert.equal(sender.sendUnchanging(Buffer.from('path'), 0, 4, port, loopback), SEND_DONE);
      assert.equal(sender.fast, false);
      await waitFor(() => textsFrom(rx.got, tx).length >= 2);
      assert.deepEqual(textsFrom(rx.got, tx), ['slow', 'path']);
      close(tx);
    });

    it('falls back to Socket.send when it cannot watch a send (an asynchronous lookup)', async () => {
      // dns.lookup answers even an IP literal on a later tick, so the probe sees nothing.
      const tx = await bound(type, loopback);
      const errors: Error[] = [];
      tx.on('error', (err) => errors.push(err));
      const sender = new UdpSender(tx);
      const port = rx.socket.address().port;
      sender.sendUnchanging(Buffer.from('deferred'), 0, 8, port, loopback);
      assert.equal(sender.fast, false);
      await waitFor(() => textsFrom(rx.got, tx).length >= 1);
      // The probe's own datagram, sent late, went to an address of the wrong family: nowhere.
      await new Promise<void>((resolve) => setTimeout(resolve, 20));
      assert.deepEqual(textsFrom(rx.got, tx), ['deferred']);
      assert.deepEqual(errors, []);
      close(tx);
    });

    it('waits for the bind before it looks for the fast path', async () => {
      const tx = dgram.createSocket({ type, lookup: literalLookup });
      const sender = new UdpSender(tx);
      assert.equal(sender.queueCount(), 0);
      await new Promise<void>((resolve) => tx.bind(0, loopback, () => resolve()));
      assert.equal(sender.send(Buffer.from('bound'), 0, 5, rx.socket.address().port, loopback), SEND_DONE);
      assert.equal(sender.fast, true);
      await waitFor(() => textsFrom(rx.got, tx).length >= 1);
      assert.deepEqual(textsFrom(rx.got, tx), ['bound']);
      close(tx);
    });
  });
}

describe('receiveFromHandle', () => {
  it('refuses a socket that is not bound, and changes nothing', () => {
    const socket = dgram.createSocket('udp4');
    assert.equal(
      receiveFromHandle(socket, () => undefined),
      false,
    );
    close(socket);
  });

  it('delivers what a plain dgram sender sends', async () => {
    const rx = await receiver('udp4', '127.0.0.1', true);
    const tx = await bound('udp4', '127.0.0.1');
    tx.send(Buffer.from('plain'), rx.socket.address().port, '127.0.0.1');
    await waitFor(() => rx.got.length === 1);
    assert.equal(rx.got[0]?.data.toString(), 'plain');
    assert.equal(rx.got[0]?.port, tx.address().port);
    close(rx.socket, tx);
  });
});

describe('FramedSender', () => {
  for (const allowFast of [true, false]) {
    it(`frames head + payload (+ padding) into one datagram${allowFast ? '' : ' through Socket.send'}`, async () => {
      const rx = await receiver('udp4', '127.0.0.1', false);
      const tx = await bound('udp4', '127.0.0.1', literalLookup);
      let drops = 0;
      const framed = new FramedSender(tx, () => drops++, allowFast);
      const port = rx.socket.address().port;
      const head = Buffer.alloc(40, 0xaa);
      head.write('HEAD', 0);
      const payload = Buffer.from('0123456789'.repeat(10));
      // Lengths that share a view-cache slot (10 and 74, 5 and 69) and ones with padding.
      const cases = [
        { headLength: 4, offset: 0, length: payload.length, pad: false },
        { headLength: 4, offset: 4, length: 6, pad: false }, // 10 bytes
        { headLength: 36, offset: 0, length: 38, pad: false }, // 74 bytes
        { headLength: 4, offset: 1, length: 1, pad: true }, // 5 + 3 padding = 8
        { headLength: 36, offset: 2, length: 33, pad: true }, // 69 + 3 padding = 72
        { headLength: 4, offset: 3, length: 6, pad: false }, // 10 bytes again, other content
      ];
      for (const c of cases) framed.send(head, c.headLength, payload, c.offset, c.length, c.pad, port, '127.0.0.1');
      await waitFor(() => rx.got.length === cases.length);
      cases.forEach((c, i) => {
        const pad = c.pad ? (4 - (c.length & 3)) & 3 : 0;
        const expected = Buffer.concat([head.subarray(0, c.headLength), payload.subarray(c.offset, c.offset + c.length), Buffer.alloc(pad)]);
        assert.deepEqual(rx.got[i]?.data, expected, `datagram ${i}`);
      });
      assert.equal(drops, 0);
      close(rx.socket, tx);
    });
  }

  it('gives every queued datagram its own bytes (libuv made to queue every send)', async () => {
    // --test-udp-no-try-send makes UDPWrap skip uv_udp_try_send: every send is queued, so
    // a scratch buffer reused after a queued send would corrupt the datagrams before it.
    const framedModule = new URL('../../../../src/transport/udp/framed-sender.js', import.meta.url).href;
    const relayModule = new URL('../../../../src/transport/udp/relay.js', import.meta.url).href;
    const fastModule = new URL('../../../../src/transport/udp/dgram-fast.js', import.meta.url).href;
    const lookupModule = new URL('../../../../src/transport/udp/lookup.js', import.meta.url).href;
    const script = `
      import dgram from 'node:dgram';
      import { FramedSender } from ${JSON.stringify(framedModule)};
      import { UdpRelayFactory } from ${JSON.stringify(relayModule)};
      import { UdpSender, SEND_QUEUED } from ${JSON.stringify(fastModule)};
      import { literalLookup } from ${JSON.stringify(lookupModule)};
      const bind = (s) => new Promise((r) => s.bind(0, '127.0.0.1', () => r()));
      const rx = dgram.createSocket('udp4');
      const tx = dgram.createSocket({ type: 'udp4', lookup: literalLookup });
      const tx2 = dgram.createSocket({ type: 'udp4', lookup: literalLookup });
      await bind(rx); await bind(tx); await bind(tx2);
      const got = [];
      rx.on('message', (m) => got.push(m.toString()));
      const port = rx.address().port;
      const framed = new FramedSender(tx, () => got.push('dropped'));
      const head = Buffer.from('F');
      const payload = Buffer.alloc(3);
      for (let i = 0; i < 50; i++) {
        payload.write(String(i).padStart(3, '0'));
        framed.send(head, 1, payload, 0, 3, false, port, '127.0.0.1');
      }
      const relays = new UdpRelayFactory(() => {});
      // The first relay socket is a dgram socket, the factory's later ones bare UDP handles (udp-handle.ts).
      const relay = await relays.bind('127.0.0.1', 0, () => {});
      const relay2 = await relays.bind('127.0.0.1', 0, () => {});
      const kind = relays.socketKind;
      for (let i = 0; i < 30; i++) {
        // A fresh datagram each time, as received ones are; the part sent goes through the shared scratch.
        relay.send(Buffer.from('CHAN' + String(i).padStart(3, '0') + '...'), 4, 3, port, '127.0.0.1');
        relay2.send(Buffer.from('CHAN' + 'H' + String(i).padStart(3, '0') + '...'), 4, 4, port, '127.0.0.1');
      }
      const sender = new UdpSender(tx2);
      const results = [];
      for (let i = 0; i < 20; i++) results.push(sender.send(Buffer.from('R' + String(i).padStart(3, '0')), 0, 4, port, '127.0.0.1'));
      const queued = results.every((r) => r === SEND_QUEUED);
      const deadline = Date.now() + 3000;
      while (got.length < 130 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 5));
      console.log(JSON.stringify({ got, queued, fast: sender.fast, queueAfter: sender.queueCount(), kind }));
      rx.close(); tx.close(); tx2.close(); relay.close(); relay2.close();
    `;
    const child = spawn(process.execPath, ['--test-udp-no-try-send', '--input-type=module', '-e', script], { stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    let err = '';
    child.stdout.on('data', (d: Buffer) => (out += d.toString()));
    child.stderr.on('data', (d: Buffer) => (err += d.toString()));
    const code = await new Promise<number | null>((resolve) => child.on('exit', resolve));
    assert.equal(code, 0, err);
    const result = JSON.parse(out) as { got: string[]; queued: boolean; fast: boolean; queueAfter: number; kind: string };
    assert.equal(result.fast, true, 'fast path, even with every send queued');
    assert.equal(result.kind, 'handle', 'the relay factory made its second socket a bare handle');
    assert.equal(result.queued, true, 'every send reported as queued');
    assert.equal(result.queueAfter, 0, 'the queue drained');
    const expected = [
      ...Array.from({ length: 50 }, (_, i) => `F${String(i).padStart(3, '0')}`),
      ...Array.from({ length: 30 }, (_, i) => String(i).padStart(3, '0')),
      ...Array.from({ length: 30 }, (_, i) => `H${String(i).padStart(3, '0')}`),
      ...Array.from({ length: 20 }, (_, i) => `R${String(i).padStart(3, '0')}`),
    ];
    assert.deepEqual([...result.got].sort(), expected.sort());
  });
});

describe('UdpRelayFactory sockets', () => {
  it('send whole datagrams and parts of them (through the shared scratch), byte for byte', async () => {
    const rx = await receiver('udp4', '127.0.0.1', true);
    const factory = new UdpRelayFactory(() => undefined);
    const a = await factory.bind('127.0.0.1', 0, () => undefined);
    const b = await factory.bind('127.0.0.1', 0, () => undefined);
    assert.ok(!isBindFailure(a) && !isBindFailure(b));
    const port = rx.socket.address().port;
    const datagram = Buffer.from(`HDR.${'abcdefghijklmnopqrstuvwxyz'.repeat(4)}..pad`);
    // Whole, then parts at offsets 4 and 36 with lengths that share a view-cache slot, from two sockets.
    const sends = [
      { socket: a, offset: 0, length: datagram.length },
      { socket: a, offset: 4, length: 100 },
      { socket: b, offset: 36, length: 60 },
      { socket: a, offset: 4, length: 60 },
      { socket: b, offset: 36, length: 61 },
      { socket: b, offset: 4, length: 0 },
    ];
    for (const x of sends) x.socket.send(datagram, x.offset, x.length, port, '127.0.0.1');
    await waitFor(() => rx.got.length === sends.length);
    const expected = sends.map((x) => datagram.subarray(x.offset, x.offset + x.length).toString());
    assert.deepEqual(rx.got.map((r) => r.data.toString()).sort(), expected.sort());
    a.close();
    b.close();
    a.send(datagram, 4, 10, port, '127.0.0.1'); // closed: nothing, no throw
    factory.close();
    close(rx.socket);
  });
});

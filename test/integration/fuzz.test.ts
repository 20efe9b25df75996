// Feeds the running server ~20,000 random and mutated packets over real UDP
// from several sockets, while a live allocation relays ChannelData to a peer,
// and checks that it never stops answering, never throws an internal error,
// and still relays every packet afterwards.
//
// Safety: every socket here is on 127.0.0.1. Mutated requests cannot create
// a permission for any other address (MESSAGE-INTEGRITY covers the peer
// address), and the templates only name loopback peers.

import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import dgram from 'node:dgram';
import { Writable } from 'node:stream';
import { buildConfig } from '../../src/config/index.js';
import { createLogger } from '../../src/ops/log.js';
import { type RunningServer, startServer } from '../../src/server.js';
import { encodeChannelNumber, encodeRequestedTransport, encodeUint32 } from '../../src/stun/attributes.js';
import { encodeChannelData } from '../../src/stun/channel-data.js';
import { Attr, MessageClass, Method, TRANSPORT_UDP } from '../../src/stun/constants.js';
import { MessageWriter } from '../../src/stun/writer.js';
import { type Endpoint, TRANSACTION_TIMEOUT_MS, TestPeer, TestTurnClient } from '../helpers/turn-client.js';
import { udpReceiveDrops } from '../helpers/udp-drops.js';
import { SeededRandom } from '../helpers/random.js';
import { canSendRaw, sendRawUdpV4 } from '../helpers/raw-udp.js';
import { decodeAddress } from '../../src/stun/address.js';
import { getAttribute, type StunMessage } from '../../src/stun/message.js';

function decodeRelayed(m: StunMessage): Endpoint | undefined {
  const value = getAttribute(m, Attr.XorRelayedAddress);
  const relayed = value ? decodeAddress(value, m.transactionId) : undefined;
  return relayed ? { address: relayed.address, port: relayed.port } : undefined;
}

// ANYTURN_FUZZ_SEED replays or explores another sequence; the default is fixed.
const SEED = process.env.ANYTURN_FUZZ_SEED !== undefined ? Number(process.env.ANYTURN_FUZZ_SEED) >>> 0 : 0x5eed2024;
const TOTAL_PACKETS = 20_000;
const BATCH = 250;
const LIVE_PER_BATCH = 4;
const POST_FUZZ_PACKETS = 400;
const REALM = 'anyturn.fuzz.test';
const cred = (name: string): { username: string; password: string; realm: string } => ({ username: name, password: `pw-${name}`, realm: REALM });

const prng = (seed: number): SeededRandom => new SeededRandom(seed);
type Rng = ReturnType<typeof prng>;

/** Offsets of the attribute headers in a STUN message (as far as they parse). */
function attributeOffsets(buf: Buffer): number[] {
  const out: number[] = [];
  let pos = 20;
  while (pos + 4 <= buf.length) {
    out.push(pos);
    pos += 4 + ((buf.readUInt16BE(pos + 2) + 3) & ~3);
  }
  return out;
}

function mutate(rng: Rng, template: Buffer): Buffer {
  const buf = Buffer.from(template);
  switch (rng.int(12)) {
    case 0: {
      // bit flips
      const flips = 1 + rng.int(8);
      for (let i = 0; i < flips; i++) buf[rng.int(buf.length)]! ^= 1 << rng.int(8);
      return buf;
    }
    case 1: // truncation
      return buf.subarray(0, rng.int(buf.length));
    case 2: {
      // header length edit
      if (buf.length >= 4) buf.writeUInt16BE(rng.pick([0, 4, buf.length - 20 + 4, buf.length - 20 - 4, 0xfffc, 0xffff, rng.int(0x10000)]) & 0xffff, 2);
      return buf;
    }
    case 3: {
      // random attribute type in place of an existing one
      const offsets = attributeOffsets(buf);
      if (offsets.length > 0)
        buf.writeUInt16BE(rng.pick([rng.int(0x10000), rng.int(0x8000), 0x7f00, 0x0000, 0x8028, 0x0008, 0x001c, 0xffff]), rng.pick(offsets));
      return buf;
    }
    case 4: {
      // huge or odd attribute length
      const offsets = attributeOffsets(buf);
      if (offsets.length > 0) buf.writeUInt16BE(rng.pick([0xffff, 0xfffc, 0x8000, 1, 0, 3, rng.int(0x10000)]), rng.pick(offsets) + 2);
      return buf;
    }
    case 5: {
      // a random attribute inserted right after the header, length fixed up
      if (buf.length < 20) return buf;
      const valueLength = rng.int(40);
      const attr = Buffer.alloc(4 + ((valueLength + 3) & ~3));
      attr.writeUInt16BE(rng.int(0x10000), 0);
      attr.writeUInt16BE(valueLength, 2);
      rng.bytes(valueLength).copy(attr, 4);
      const out = Buffer.concat([buf.subarray(0, 20), attr, buf.subarray(20)]);
      out.writeUInt16BE((out.length - 20) & 0xffff, 2);
      return out;
    }
    case 6: {
      // garbage appended, length fixed up (attributes after MESSAGE-INTEGRITY / FINGERPRINT)
      const out = Buffer.concat([buf, rng.bytes(4 * (1 + rng.int(8)))]);
      if (out.length >= 4) out.writeUInt16BE((out.length - 20) & 0xffff, 2);
      return out;
    }
    case 7: {
      // byte overwrites in a random window
      const at = rng.int(buf.length);
      rng.bytes(Math.min(buf.length - at, 1 + rng.int(16))).copy(buf, at);
      return buf;
    }
    case 8: {
      // ChannelData with a wrong length or number
      const data = rng.bytes(rng.int(200));
      const cd = encodeChannelData(rng.pick([0x4000, 0x4001, 0x4fff, 0x7ffe, 0x7fff, 0x4000 + rng.int(0x4000)]), data);
      cd.writeUInt16BE(rng.pick([0, data.length + 1, data.length + 4, Math.max(0, data.length - 1), 0xffff, rng.int(0x10000)]), 2);
      return rng.int(4) === 0 ? cd.subarray(0, rng.int(cd.length + 1)) : cd;
    }
    case 9: {
      // the template's type field swapped for another class or method
      if (buf.length >= 2) buf.writeUInt16BE(rng.int(0x4000), 0);
      return buf;
    }
    case 10: {
      // a well-framed STUN header with magic cookie and a random body
      const bodyLength = 4 * rng.int(64);
      const out = Buffer.concat([Buffer.alloc(20), rng.bytes(bodyLength)]);
      out.writeUInt16BE(rng.int(0x4000), 0);
      out.writeUInt16BE(bodyLength, 2);
      out.writeUInt32BE(0x2112a442, 4);
      rng.bytes(12).copy(out, 8);
      return out;
    }
    default: {
      // pure noise, sometimes steered into the STUN or ChannelData first-byte range
      const out = rng.bytes(rng.int(1500));
      if (out.length > 0 && rng.int(2) === 0) out[0] = out[0]! & 0x7f;
      return out;
    }
  }
}

describe(`fuzzing the server over UDP (seed 0x${SEED.toString(16)})`, () => {
  let server: RunningServer;
  let endpoint: Endpoint;
  const errorLogs: string[] = [];
  const unhandled: unknown[] = [];
  const onUnhandled = (reason: unknown): void => {
    unhandled.push(reason);
  };
  const closers: (() => void)[] = [];

  before(async () => {
    process.on('unhandledRejection', onUnhandled);
    // Capture error-level log lines: an internal error is a bug even if answered with 500.
    const sink = new Writable({
      write(chunk: Buffer, _enc, done) {
        errorLogs.push(chunk.toString('utf8'));
        done();
      },
    });
    server = await startServer(
      buildConfig({
        'listening-ip': ['127.0.0.1'],
        'listening-port': 0,
        'min-port': 46000,
        'max-port': 46999,
        realm: REALM,
        user: ['live', 'f1', 'f2', 'f3', 'f4', 'watch'].map((u) => `${u}:pw-${u}`),
        'allow-loopback-peers': true,
      }),
      { logger: createLogger('error', sink) },
    );
    endpoint = { address: '127.0.0.1', port: server.listening[0]!.port };
  });
  after(async () => {
    process.off('unhandledRejection', onUnhandled);
    for (const close of closers) close();
    await server.stop();
  });

  // The timeout only stops a hung run; nothing asserts on time.
  it('keeps answering, keeps relaying, and never fails internally', { timeout: 300_000 }, async (t) => {
    const rng = prng(SEED);

    // The live allocation: client -> channel 0x4000 -> peer.
    const live = await TestTurnClient.open(endpoint, cred('live'));
    const livePeer = await TestPeer.open();
    const sinkPeer = await TestPeer.open();
    const watch = await TestTurnClient.open(endpoint, cred('watch'));
    closers.push(
      () => live.close(),
      () => livePeer.close(),
      () => sinkPeer.close(),
      () => watch.close(),
    );
    const liveAllocation = await live.allocate();
    assert.equal(liveAllocation.response.code, 200);
    const liveRelayed = liveAllocation.relayed!;
    assert.equal((await live.channelBind(0x4000, livePeer.endpoint)).code, 200);

    // Fuzzing clients, each with its own allocation, permission and channel toward a sink
    // peer, and valid templates to mutate.
    const templates: Buffer[] = [];
    const fuzzers: TestTurnClient[] = [];
    const fuzzRelays: (Endpoint | undefined)[] = [];
    for (const name of ['f1', 'f2', 'f3', 'f4']) {
      const c = await TestTurnClient.open(endpoint, cred(name));
      closers.push(() => c.close());
      fuzzers.push(c);
      await c.ensureNonce();
      const allocate = c.build(
        Method.Allocate,
        (w) => {
          w.add(Attr.RequestedTransport, encodeRequestedTransport(TRANSPORT_UDP));
          w.add(Attr.Lifetime, encodeUint32(900));
        },
        { fingerprint: name === 'f2' },
      );
      const allocated = await c.transact(allocate.buf, allocate.transactionId);
      assert.equal(allocated?.cls, MessageClass.SuccessResponse);
      templates.push(allocate.buf);
      const fp = { fingerprint: name === 'f2' || name === 'f3' };
      templates.push(c.build(Method.Allocate, (w) => w.add(Attr.RequestedTransport, encodeRequestedTransport(TRANSPORT_UDP)), fp).buf);
      templates.push(c.build(Method.Refresh, (w) => w.add(Attr.Lifetime, encodeUint32(700)), fp).buf);
      templates.push(c.build(Method.Refresh, (w) => w.add(Attr.Lifetime, encodeUint32(0)), fp).buf);
      templates.push(c.build(Method.CreatePermission, (w) => w.addXorAddress(Attr.XorPeerAddress, '127.0.0.1', sinkPeer.endpoint.port), fp).buf);
      templates.push(
        c.build(
          Method.ChannelBind,
          (w) => {
            w.add(Attr.ChannelNumber, encodeChannelNumber(0x4001));
            w.addXorAddress(Attr.XorPeerAddress, '127.0.0.1', sinkPeer.endpoint.port);
          },
          fp,
        ).buf,
      );
      templates.push(c.build(Method.Binding, () => undefined, { auth: false, fingerprint: true }).buf);
      templates.push(c.build(Method.Allocate, (w) => w.add(Attr.RequestedTransport, encodeRequestedTransport(TRANSPORT_UDP)), { auth: false }).buf);
      // Shapes that once ended the process or stalled it (the security review): peer port 0,
      // thousands of attributes, and the largest datagrams UDP carries.
      templates.push(
        c.build(
          Method.ChannelBind,
          (w) => {
            w.add(Attr.ChannelNumber, encodeChannelNumber(0x4002));
            w.addXorAddress(Attr.XorPeerAddress, '127.0.0.1', 0);
          },
          fp,
        ).buf,
      );
      templates.push(
        c.build(
          Method.CreatePermission,
          (w) => {
            for (let i = 0; i < 3000; i++) w.addXorAddress(Attr.XorPeerAddress, `127.${(i >> 8) & 255}.${i & 255}.1`, 0);
          },
          fp,
        ).buf,
      );
      templates.push(
        c.build(
          Method.CreatePermission,
          (w) => {
            for (let i = 0; i < 150; i++) w.addXorAddress(Attr.XorPeerAddress, `127.1.${i & 255}.2`, 0);
          },
          fp,
        ).buf,
      );
      assert.equal((await c.createPermission(sinkPeer.endpoint)).code, 200);
      assert.equal((await c.channelBind(0x4001, sinkPeer.endpoint)).code, 200);
      fuzzRelays.push(allocated ? decodeRelayed(allocated) : undefined);
    }
    const send = new MessageWriter(Method.Send, MessageClass.Indication, Buffer.alloc(12, 7));
    send.addXorAddress(Attr.XorPeerAddress, '127.0.0.1', sinkPeer.endpoint.port);
    send.add(Attr.Data, Buffer.from('fuzz payload'));
    templates.push(send.toBuffer());
    templates.push(encodeChannelData(0x4001, Buffer.from('fuzz channel data')));
    templates.push(encodeChannelData(0x4001, Buffer.from('fuzz channel data, padded'), true));
    const toPortZero = new MessageWriter(Method.Send, MessageClass.Indication, Buffer.alloc(12, 8));
    toPortZero.addXorAddress(Attr.XorPeerAddress, '127.0.0.1', 0);
    toPortZero.add(Attr.Data, Buffer.from('to port zero'));
    templates.push(toPortZero.toBuffer());
    // The largest UDP payload over IPv4 is 65,507 bytes: a Send indication and ChannelData that fill it.
    const huge = new MessageWriter(Method.Send, MessageClass.Indication, Buffer.alloc(12, 9));
    huge.addXorAddress(Attr.XorPeerAddress, '127.0.0.1', sinkPeer.endpoint.port);
    huge.add(Attr.Data, Buffer.alloc(65_507 - 20 - 12 - 4, 0x5a));
    templates.push(huge.toBuffer());
    templates.push(encodeChannelData(0x4001, Buffer.alloc(65_507 - 4, 0xa5)));

    // Plain sockets with no allocation at all.
    const raw: dgram.Socket[] = [];
    for (let i = 0; i < 2; i++) {
      const s = dgram.createSocket('udp4');
      await new Promise<void>((resolve) => s.bind(0, '127.0.0.1', () => resolve()));
      closers.push(() => s.close());
      raw.push(s);
    }
    const senders: ((buf: Buffer) => void)[] = [
      ...fuzzers.map((c) => (buf: Buffer) => c.sendRaw(buf)),
      ...raw.map((s) => (buf: Buffer) => s.send(buf, endpoint.port, endpoint.address)),
      // The peer side: datagrams of every size up to UDP's largest, to the fuzzers' relayed addresses.
      (buf: Buffer) => {
        const relay = rng.pick(fuzzRelays);
        if (relay) sinkPeer.send(rng.int(8) === 0 ? Buffer.alloc(65_507, 1) : buf, relay);
      },
    ];

    let liveSent = 0;
    let bindingFailures = 0;
    // Client-side packets the engine must count as not_stun whatever the state
    // (engine.handleClientPacket: empty, first two bits 10 or 11, or a STUN-looking
    // packet shorter than the 20-byte header): counted here as they are sent.
    let notStunSent = 0;
    const clientSenders = senders.length - 1; // the last sender is the peer side
    for (let sent = 0; sent < TOTAL_PACKETS; ) {
      const end = Math.min(TOTAL_PACKETS, sent + BATCH);
      for (; sent < end; sent++) {
        const packet = rng.int(10) === 0 ? mutate(rng, Buffer.alloc(0)) : mutate(rng, rng.pick(templates));
        // Occasionally send a template unmutated (replays of valid requests and indications).
        const senderIndex = rng.int(senders.length);
        const out = rng.int(25) === 0 ? rng.pick(templates) : packet;
        if (senderIndex < clientSenders) {
          const top = out.length > 0 ? out[0]! & 0xc0 : 0xff;
          if (top === 0x80 || top === 0xc0 || top === 0xff || (top === 0 && out.length < 20)) notStunSent++;
        }
        senders[senderIndex]!(out);
        if (sent % Math.floor(BATCH / LIVE_PER_BATCH) === 0) live.sendChannelData(0x4000, Buffer.from(`during ${liveSent++}`));
      }
      // The server keeps answering Binding during the run (it has read everything this
      // batch sent to its listening socket before it answers).
      if (!(await watch.binding())) bindingFailures++;
    }
    // From UDP source port 0, which no socket can bind: mutated templates through a raw socket.
    const rawZero = (await canSendRaw()) ? 60 : 0;
    if (rawZero > 0) {
      await sendRawUdpV4(
        endpoint.port,
        0,
        Array.from({ length: rawZero }, () => mutate(rng, rng.pick(templates.filter((x) => x.length < 2000)))),
      );
      t.diagnostic(`${rawZero} mutated packets sent from source port 0`);
    }
    assert.equal(bindingFailures, 0, 'every Binding request during the run was answered');
    // The live allocation is not touched by the fuzz (other 5-tuples, other allocations),
    // so every packet it sent during the fuzz reaches the peer. The only slack: datagrams
    // the kernel dropped on the way because a receive buffer was full (the server's
    // listening and relay sockets, the peer's), which the server never saw.
    await watch.binding();
    const kernelDrops = (): number => udpReceiveDrops(endpoint.port) + udpReceiveDrops(liveRelayed.port) + udpReceiveDrops(livePeer.endpoint.port);
    const duringArrivedNow = (): number => livePeer.received.filter((r) => r.data.toString().startsWith('during ')).length;
    await livePeer.waitFor(livePeer.received.length + Math.max(0, liveSent - duringArrivedNow() - kernelDrops()), TRANSACTION_TIMEOUT_MS);
    const duringArrived = duringArrivedNow();
    const listeningDrops = udpReceiveDrops(endpoint.port);
    t.diagnostic(
      `live packets during the fuzz: ${duringArrived} of ${liveSent} arrived; kernel receive drops: ${kernelDrops()} (listening socket ${listeningDrops})`,
    );
    assert.ok(
      duringArrived >= liveSent - kernelDrops(),
      `live packets during the fuzz: ${duringArrived} of ${liveSent} arrived, kernel drops ${kernelDrops()}`,
    );

    // After: Binding still answered, and the live allocation relays every packet, both ways.
    assert.deepEqual(await watch.binding(), { address: '127.0.0.1', port: watch.localPort });
    const peerStart = livePeer.received.length;
    const clientStart = live.received.length;
    for (let i = 0; i < POST_FUZZ_PACKETS; i++) {
      live.sendChannelData(0x4000, Buffer.from(`after ${i}`));
      livePeer.send(Buffer.from(`back ${i}`), liveRelayed);
      if (i % 50 === 49) {
        await livePeer.waitFor(peerStart + i + 1);
        await live.waitForReceived(clientStart + i + 1);
      }
    }
    const atPeer = (await livePeer.waitFor(peerStart + POST_FUZZ_PACKETS)).slice(peerStart).map((r) => r.data.toString());
    const atClient = (await live.waitForReceived(clientStart + POST_FUZZ_PACKETS)).slice(clientStart);
    const expectedAfter = Array.from({ length: POST_FUZZ_PACKETS }, (_, i) => `after ${i}`);
    assert.deepEqual(atPeer.filter((s) => s.startsWith('after ')).sort(), expectedAfter.sort());
    const back = atClient
      .filter((r) => r.channel === 0x4000)
      .map((r) => r.data.toString())
      .filter((s) => s.startsWith('back '));
    assert.deepEqual(back.sort(), Array.from({ length: POST_FUZZ_PACKETS }, (_, i) => `back ${i}`).sort());

    // A new client can still allocate.
    const fresh = await TestTurnClient.open(endpoint, cred('watch'));
    closers.push(() => fresh.close());
    assert.equal((await fresh.allocate()).response.code, 200);

    // The process is alive and counted its drops; no internal errors, no unhandled rejections.
    const drops = Object.entries(server.counters.drops).filter(([, n]) => n > 0);
    t.diagnostic(`drops: ${drops.map(([k, n]) => `${k}=${n}`).join(' ')}`);
    t.diagnostic(`requests: ${[...server.counters.requests].map(([k, n]) => `${k}=${n}`).join(' ')}`);
    // Every drop of a kind this test can predict was counted: all packets from source port
    // 0, and every client-side packet that is not STUN (less any the kernel dropped before
    // the server read them, and none more).
    assert.equal(server.counters.drops.source_port_zero, rawZero, 'packets from source port 0 counted');
    const notStun = server.counters.drops.not_stun;
    assert.ok(
      notStun <= notStunSent && notStun >= notStunSent - listeningDrops,
      `not_stun counted ${notStun} of ${notStunSent} sent (kernel drops ${listeningDrops})`,
    );
    const internal = [...server.counters.requests].filter(([k]) => k.endsWith(' 500'));
    assert.deepEqual(internal, [], 'no request ended in 500 Server Error');
    assert.deepEqual(errorLogs, [], 'nothing logged at error level');
    assert.deepEqual(unhandled, [], 'no unhandled rejections');
  });
});

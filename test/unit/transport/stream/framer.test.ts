// StreamFramer (RFC 8656 §12.5 framing on TCP/TLS): the same stream cut into
// segments every which way yields the same messages; what cannot be framed is
// an error, at the first bad frame.

import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { encodeChannelData } from '../../../../src/stun/channel-data.js';
import { Attr, MessageClass, Method } from '../../../../src/stun/constants.js';
import { MessageWriter } from '../../../../src/stun/writer.js';
import { DEFAULT_MAX_FRAME_BYTES, StreamFramer } from '../../../../src/transport/stream/framer.js';
import { SeededRandom } from '../../../helpers/random.js';

// ANYTURN_FRAMER_SEED replays or explores another sequence; the default is fixed.
const SEED = process.env.ANYTURN_FRAMER_SEED !== undefined ? Number(process.env.ANYTURN_FRAMER_SEED) >>> 0 : 0xf4a3e5;

const prng = (seed: number): SeededRandom => new SeededRandom(seed);
type Rng = ReturnType<typeof prng>;

function stunMessage(rng: Rng, dataLength: number): Buffer {
  const w = new MessageWriter(Method.Send, MessageClass.Indication, rng.bytes(12));
  w.addXorAddress(Attr.XorPeerAddress, '192.0.2.7', 1000 + rng.int(60000));
  w.add(Attr.Data, rng.bytes(dataLength));
  return w.toBuffer();
}

/** A message as sent on a stream, and as the framer must hand it on (ChannelData without padding). */
interface Sent {
  readonly wire: Buffer;
  readonly message: Buffer;
}

function randomMessage(rng: Rng): Sent {
  const kind = rng.int(3);
  // Lengths cover 0 and every residue mod 4, mostly small, sometimes large.
  const length = rng.int(10) === 0 ? rng.int(8000) : rng.int(200);
  if (kind === 0) {
    const m = stunMessage(rng, length);
    return { wire: m, message: m };
  }
  const data = rng.bytes(length);
  const channel = 0x4000 + rng.int(0x1000);
  return { wire: encodeChannelData(channel, data, true), message: encodeChannelData(channel, data, false) };
}

/** Cuts `stream` into segments: single bytes, tiny pieces, or big ones, mixed. */
function segments(rng: Rng, stream: Buffer): Buffer[] {
  const out: Buffer[] = [];
  for (let offset = 0; offset < stream.length; ) {
    const style = rng.int(4);
    const size = style === 0 ? 1 : style === 1 ? 1 + rng.int(7) : style === 2 ? 1 + rng.int(300) : 1 + rng.int(20000);
    const end = Math.min(stream.length, offset + size);
    // A copy, as a socket would hand over fresh memory.
    out.push(Buffer.from(stream.subarray(offset, end)));
    offset = end;
  }
  return out;
}

function feed(framer: StreamFramer, chunks: readonly Buffer[]): { messages: Buffer[]; error: string | undefined } {
  const messages: Buffer[] = [];
  let error: string | undefined;
  for (const chunk of chunks) {
    // Copy what is handed on: it may be a view of the chunk.
    error = framer.push(chunk, (m) => messages.push(Buffer.from(m)));
    if (error) break;
  }
  return { messages, error };
}

describe(`StreamFramer (seed 0x${SEED.toString(16)})`, () => {
  it('yields the same messages however the stream is cut (500 random streams)', () => {
    const rng = prng(SEED);
    for (let round = 0; round < 500; round++) {
      const sent = Array.from({ length: 1 + rng.int(30) }, () => randomMessage(rng));
      const stream = Buffer.concat(sent.map((s) => s.wire));
      const framer = new StreamFramer();
      const { messages, error } = feed(framer, segments(rng, stream));
      assert.equal(error, undefined, `round ${round}`);
      assert.equal(messages.length, sent.length, `round ${round}: message count`);
      for (let i = 0; i < sent.length; i++) assert.ok(messages[i]!.equals(sent[i]!.message), `round ${round}, message ${i}`);
      assert.equal(framer.bufferedBytes, 0, `round ${round}: nothing left over`);
    }
  });

  it('hands on several messages from one segment, and a message split byte by byte', () => {
    const rng = prng(SEED + 1);
    const a = stunMessage(rng, 5);
    const b = encodeChannelData(0x4001, Buffer.from('xyz'), true);
    const c = stunMessage(rng, 0);
    const framer = new StreamFramer();
    const got: Buffer[] = [];
    assert.equal(
      framer.push(Buffer.concat([a, b, c]), (m) => got.push(Buffer.from(m))),
      undefined,
    );
    assert.equal(got.length, 3);
    assert.ok(got[0]!.equals(a));
    assert.deepEqual([...got[1]!], [0x40, 0x01, 0x00, 0x03, 0x78, 0x79, 0x7a], 'ChannelData without its stream padding');
    assert.ok(got[2]!.equals(c));

    got.length = 0;
    for (let i = 0; i < a.length; i++) {
      assert.equal(
        framer.push(a.subarray(i, i + 1), (m) => got.push(Buffer.from(m))),
        undefined,
      );
      assert.equal(got.length, i === a.length - 1 ? 1 : 0, `after byte ${i}`);
      assert.equal(framer.bufferedBytes, i === a.length - 1 ? 0 : i + 1);
    }
    assert.ok(got[0]!.equals(a));
  });

  it('waits for the padding of ChannelData before handing it on', () => {
    const framer = new StreamFramer();
    const got: Buffer[] = [];
    const padded = encodeChannelData(0x4fff, Buffer.from('abcde'), true);
    assert.equal(padded.length, 12);
    framer.push(padded.subarray(0, 9), (m) => got.push(Buffer.from(m)));
    assert.equal(got.length, 0, 'data complete, padding not yet');
    framer.push(padded.subarray(9), (m) => got.push(Buffer.from(m)));
    assert.equal(got.length, 1);
    assert.equal(got[0]!.length, 9);
    // Length 0: the header alone.
    framer.push(Buffer.from([0x40, 0x00, 0x00, 0x00]), (m) => got.push(Buffer.from(m)));
    assert.equal(got.length, 2);
    assert.equal(got[1]!.length, 4);
  });

  it('refuses what is neither STUN nor ChannelData, after handing on the good frames before it', () => {
    const rng = prng(SEED + 2);
    const good = stunMessage(rng, 8);
    for (const first of [0x80, 0xc0, 0xff, 0x16 /* a TLS handshake starts 0x16 0x03: length % 4 != 0 */]) {
      const bad = first === 0x16 ? Buffer.from([0x16, 0x03, 0x01, 0x02, 0x00]) : Buffer.from([first, 0, 0, 4, 1, 2, 3, 4]);
      const framer = new StreamFramer();
      const { messages, error } = feed(framer, [Buffer.concat([good, bad, good])]);
      assert.equal(error, 'not_turn', `first byte 0x${first.toString(16)}`);
      assert.equal(messages.length, 1);
      // Failed for good: later data is not looked at.
      assert.equal(
        framer.push(good, () => assert.fail('no message after an error')),
        'not_turn',
      );
    }
    // A STUN length that is not a multiple of 4.
    const odd = Buffer.from(good);
    odd.writeUInt16BE(odd.readUInt16BE(2) + 2, 2);
    assert.equal(feed(new StreamFramer(), [odd]).error, 'not_turn');
  });

  it('refuses a frame longer than the cap from its header, and never holds more than the cap', () => {
    // 20 + 65532 > 64 KiB
    const head = Buffer.from([0x00, 0x01, 0xff, 0xfc, 0x21, 0x12, 0xa4, 0x42]);
    assert.equal(feed(new StreamFramer(), [head]).error, 'too_long');
    // ChannelData of 65535 bytes: 4 + 65536 on a stream.
    assert.equal(feed(new StreamFramer(), [Buffer.from([0x40, 0x00, 0xff, 0xff])]).error, 'too_long');
    // Split header: the error comes once the 4th byte is in.
    const split = new StreamFramer();
    assert.equal(
      split.push(Buffer.from([0x40, 0x00, 0xff]), () => undefined),
      undefined,
    );
    assert.equal(
      split.push(Buffer.from([0xff]), () => undefined),
      'too_long',
    );
    // A small cap: a 100-byte STUN message passes a 100-byte cap, a 104-byte one does not.
    const rng = prng(SEED + 3);
    const small = new StreamFramer(100);
    const ok = stunMessage(rng, 100 - 20 - 12 - 4); // header + XOR-PEER-ADDRESS + DATA header
    assert.equal(ok.length, 100);
    assert.equal(feed(small, [ok]).error, undefined);
    assert.equal(feed(small, [stunMessage(rng, 68)]).error, 'too_long');
    // Held bytes stay under the cap whatever arrives.
    const framer = new StreamFramer();
    const big = stunMessage(rng, DEFAULT_MAX_FRAME_BYTES - 20 - 12 - 4);
    assert.equal(big.length, DEFAULT_MAX_FRAME_BYTES);
    let most = 0;
    for (let i = 0; i < big.length; i += 1000) {
      framer.push(big.subarray(i, i + 1000), () => undefined);
      most = Math.max(most, framer.bufferedBytes);
    }
    assert.ok(most <= DEFAULT_MAX_FRAME_BYTES);
    assert.equal(framer.bufferedBytes, 0);
  });

  it('never throws on random bytes (2,000 random streams)', () => {
    const rng = prng(SEED + 4);
    for (let round = 0; round < 2000; round++) {
      const stream = rng.int(2) === 0 ? randomBytes(1 + rng.int(300)) : rng.bytes(1 + rng.int(300));
      const framer = new StreamFramer(1024);
      const { error } = feed(framer, segments(rng, stream));
      assert.ok(error === undefined || error === 'not_turn' || error === 'too_long');
      assert.ok(framer.bufferedBytes <= 1024);
    }
  });
});

describe('StreamFramer memory: what arrives, not what a header announces', () => {
  // A connection that sent the 4-byte head of a 64 KiB frame, and nothing after it,
  // must not cost 64 KiB: 10,000 such connections would hold 655 MB.
  const announced = (kind: 'stun' | 'channel'): Buffer =>
    kind === 'stun' ? Buffer.from([0x00, 0x01, 0xff, 0xe8]) /* 20 + 65512 = 65532 */ : Buffer.from([0x40, 0x00, 0xff, 0xf8]) /* 4 + 65528 */;

  for (const kind of ['stun', 'channel'] as const) {
    it(`holds a few bytes for the head of a large ${kind === 'stun' ? 'STUN' : 'ChannelData'} frame, then grows with the bytes that come`, () => {
      const framer = new StreamFramer();
      const head = announced(kind);
      assert.equal(
        framer.push(head, () => assert.fail('not whole yet')),
        undefined,
      );
      assert.equal(framer.bufferedBytes, 4);
      assert.ok(framer.heldBytes <= 256, `holds ${framer.heldBytes} bytes after a 4-byte head`);
      // The head split over two chunks: the same.
      const split = new StreamFramer();
      split.push(head.subarray(0, 2), () => undefined);
      split.push(head.subarray(2), () => undefined);
      assert.ok(split.heldBytes <= 256, `holds ${split.heldBytes} bytes after a split head`);

      // 1,000 more bytes: at most about twice what arrived.
      const total = 4 + head.readUInt16BE(2) + (kind === 'channel' ? 0 : 16);
      framer.push(Buffer.alloc(1000, 0xab), () => assert.fail('not whole yet'));
      assert.equal(framer.bufferedBytes, 1004);
      assert.ok(framer.heldBytes >= 1004 && framer.heldBytes <= 2 * 1004 + 256, `holds ${framer.heldBytes} bytes for 1,004 received`);
      // The rest, in pieces: the frame comes out whole, and nothing is held after it.
      const got: Buffer[] = [];
      let sent = 1004;
      while (sent < total) {
        const n = Math.min(7000, total - sent);
        framer.push(Buffer.alloc(n, 0xab), (m) => got.push(Buffer.from(m)));
        sent += n;
        assert.ok(framer.heldBytes <= DEFAULT_MAX_FRAME_BYTES);
      }
      assert.equal(got.length, 1);
      assert.equal(got[0]!.length, total);
      assert.ok(got[0]!.subarray(0, 4).equals(head));
      assert.ok(got[0]!.subarray(4).every((b) => b === 0xab));
      assert.equal(framer.heldBytes, 0);
      assert.equal(framer.bufferedBytes, 0);
    });
  }

  it('a frame split at every possible point comes out the same (growth keeps the bytes in order)', () => {
    const rng = prng(SEED + 5);
    const m = stunMessage(rng, 3000);
    for (let cut = 1; cut < m.length; cut += 97) {
      for (const second of [1, 300, 5000]) {
        const framer = new StreamFramer();
        const got: Buffer[] = [];
        framer.push(m.subarray(0, cut), (x) => got.push(Buffer.from(x)));
        for (let o = cut; o < m.length; o += second) framer.push(m.subarray(o, o + second), (x) => got.push(Buffer.from(x)));
        assert.equal(got.length, 1, `cut at ${cut}, then ${second}`);
        assert.ok(got[0]!.equals(m), `cut at ${cut}, then ${second}`);
      }
    }
  });
});

describe('StreamFramer.stop (RFC 6062 §5.4: raw bytes after a ConnectionBind)', () => {
  it('hands on nothing after the frame whose handler stopped it, and keeps the rest of that chunk unframed', () => {
    // (Later chunks never reach the framer: the connection hands them on raw.)
    const rng = prng(SEED ^ 0x6062);
    const bind = stunMessage(rng, 8);
    // Raw bytes that would frame as a STUN message and then as garbage: none of it may be taken as a frame.
    const raw = Buffer.concat([stunMessage(rng, 4), Buffer.from([0xff, 1, 2, 3])]);
    for (const cut of [1, 4, bind.length - 1, bind.length, bind.length + 3]) {
      const framer = new StreamFramer();
      const stream = Buffer.concat([bind, raw]);
      const frames: Buffer[] = [];
      const onFrame = (m: Buffer): void => {
        frames.push(Buffer.from(m));
        framer.stop();
      };
      assert.equal(framer.push(stream.subarray(0, cut), onFrame), undefined);
      // The chunk in which the ConnectionBind ends: its bytes after it are the rest.
      const rest = cut >= bind.length ? stream.subarray(bind.length, cut) : raw;
      if (cut < bind.length) assert.equal(framer.push(stream.subarray(cut), onFrame), undefined);
      assert.deepEqual(frames, [bind], `cut at ${cut}`);
      assert.ok(framer.takeRest().equals(rest), `cut at ${cut}: the raw bytes`);
      assert.equal(framer.takeRest().length, 0, 'once');
      assert.equal(framer.push(Buffer.from([0xff]), onFrame), undefined, 'a stopped framer refuses nothing');
    }
  });
});

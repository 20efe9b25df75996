// The codec's request-path shortcuts (docs/scaling.md, part 1): computeIntegrity writes the
// header length into the message for its one HMAC update and must leave the message as it
// found it, with the MAC RFC 8489 §14.5 defines; MessageWriter takes an unzeroed buffer and
// must still send no byte it did not write.

import assert from 'node:assert/strict';
import { createHmac, randomBytes } from 'node:crypto';
import { describe, it } from 'node:test';

import { Attr, MessageClass, Method } from '../../../src/stun/constants.js';
import { computeIntegrity, verifyIntegritySha1 } from '../../../src/stun/integrity.js';
import { decodeAddress } from '../../../src/stun/address.js';
import { decodeMessage, getAttribute } from '../../../src/stun/message.js';
import { MessageWriter } from '../../../src/stun/writer.js';

const KEY = Buffer.from('0123456789abcdef');

describe('computeIntegrity in place', () => {
  it('gives the §14.5 MAC (length as if the message ended after the attribute) and leaves the message unchanged', () => {
    const w = new MessageWriter(Method.Allocate, MessageClass.Request, randomBytes(12));
    w.addText(Attr.Username, 'alice').addText(Attr.Realm, 'example.org').addIntegrity(KEY).addFingerprint();
    const message = w.toBuffer();
    const before = Buffer.from(message);
    const decoded = decodeMessage(message);
    assert.ok(decoded.ok);
    const at = decoded.message.integrityOffset;
    // The MAC by the definition: a copy of the header with the length up to MESSAGE-INTEGRITY.
    const header = Buffer.from(message.subarray(0, 20));
    header.writeUInt16BE(at + 24 - 20, 2);
    const expected = createHmac('sha1', KEY).update(header).update(message.subarray(20, at)).digest();
    assert.deepEqual(computeIntegrity(message, at, KEY, 'sha1', 20), expected);
    assert.deepEqual(message, before);
    assert.ok(verifyIntegritySha1(message, at, KEY));
    assert.deepEqual(message, before);
    assert.deepEqual(message.subarray(at + 4, at + 24), expected);
  });
});

describe('MessageWriter on an unzeroed buffer', () => {
  it('writes the length of a message without attributes, and zero padding, whatever the pool held', () => {
    for (let round = 0; round < 50; round++) {
      // Leave non-zero bytes in Node's pool, where the next writer's buffer comes from.
      Buffer.allocUnsafe(1024).fill(0xa5);
      const empty = new MessageWriter(Method.CreatePermission, MessageClass.SuccessResponse, randomBytes(12)).toBuffer();
      assert.equal(empty.length, 20);
      assert.equal(empty.readUInt16BE(2), 0);
      Buffer.allocUnsafe(1024).fill(0xa5);
      const padded = new MessageWriter(Method.Allocate, MessageClass.ErrorResponse, randomBytes(12)).addText(Attr.Realm, 'abcde').toBuffer();
      assert.equal(padded.readUInt16BE(2), 12);
      assert.deepEqual(padded.subarray(29, 32), Buffer.alloc(3));
      const decoded = decodeMessage(padded);
      assert.ok(decoded.ok);
    }
  });
});

describe('MessageWriter.finish', () => {
  it("gives the bytes toBuffer copies, in the writer's own memory (no second buffer per answer)", () => {
    const w = new MessageWriter(Method.Allocate, MessageClass.SuccessResponse, randomBytes(12));
    w.addText(Attr.Software, 'anyturn').addIntegrity(KEY).addFingerprint();
    const copy = w.toBuffer();
    const first = w.finish();
    const second = w.finish();
    assert.deepEqual(first, copy);
    assert.equal(first.buffer, second.buffer);
    assert.equal(first.byteOffset, second.byteOffset, 'the same bytes each time: a view, not a copy');
    copy.writeUInt8(copy.readUInt8(0) ^ 0xff, 0);
    assert.notEqual(copy[0], first[0], 'toBuffer still copies');
    assert.ok(decodeMessage(first).ok);
  });
});

describe('MessageWriter.addXorAddress in place', () => {
  it("XORs with the message's own transaction id read from its buffer, also when that attribute makes the buffer grow", () => {
    const tid = randomBytes(12);
    for (const pad of [0, 200, 212, 216, 228, 232]) {
      const w = new MessageWriter(Method.Allocate, MessageClass.SuccessResponse, tid);
      if (pad > 0) w.add(Attr.Data, Buffer.alloc(pad, 7));
      w.addXorAddress(Attr.XorRelayedAddress, '2001:db8::1:2', 50000).addXorAddress(Attr.XorMappedAddress, '192.0.2.7', 40000);
      const decoded = decodeMessage(w.finish());
      assert.ok(decoded.ok);
      const m = decoded.message;
      assert.deepEqual(m.transactionId, tid);
      const relayed = decodeAddress(getAttribute(m, Attr.XorRelayedAddress)!, m.transactionId);
      const mapped = decodeAddress(getAttribute(m, Attr.XorMappedAddress)!, m.transactionId);
      assert.deepEqual([relayed?.address, relayed?.port, mapped?.address, mapped?.port], ['2001:db8::1:2', 50000, '192.0.2.7', 40000], `after ${pad} bytes`);
    }
  });
});

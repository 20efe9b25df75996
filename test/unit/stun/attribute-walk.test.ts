// decodeMessage keeps no list of attribute objects: the attributes that count are found by a
// walk over the message when asked (docs/scaling.md, part 1). This holds the walk to the list
// the decoder used to build (RFC 8489 §14.5, §14.6: after MESSAGE-INTEGRITY only
// MESSAGE-INTEGRITY-SHA256 and FINGERPRINT count, after MESSAGE-INTEGRITY-SHA256 only
// FINGERPRINT), on random messages with the integrity attributes anywhere.

import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';

import { Attr, MessageClass, Method } from '../../../src/stun/constants.js';
import {
  type StunAttribute,
  type StunMessage,
  countedAfter,
  decodeMessage,
  findAttribute,
  findAttributeOffset,
  firstCounted,
  getAttribute,
  getAttributes,
  hasAttribute,
} from '../../../src/stun/message.js';
import { MessageWriter } from '../../../src/stun/writer.js';

/** The list the decoder built before: the rule of RFC 8489 §14.5/§14.6 as a list. */
function referenceAttributes(buf: Buffer): StunAttribute[] {
  const out: StunAttribute[] = [];
  let integrity = false;
  let integritySha256 = false;
  for (let pos = 20; pos < buf.length; ) {
    const type = buf.readUInt16BE(pos);
    const length = buf.readUInt16BE(pos + 2);
    if (type === Attr.Fingerprint) out.push({ type, offset: pos + 4, length });
    else if (integritySha256) {
      // ignored
    } else if (type === Attr.MessageIntegritySha256) {
      integritySha256 = true;
      out.push({ type, offset: pos + 4, length });
    } else if (integrity) {
      // ignored
    } else {
      if (type === Attr.MessageIntegrity) integrity = true;
      out.push({ type, offset: pos + 4, length });
    }
    pos += 4 + ((length + 3) & ~3);
  }
  return out;
}

const TYPES = [Attr.Username, Attr.Realm, Attr.Nonce, Attr.Lifetime, Attr.XorPeerAddress, Attr.MessageIntegrity, Attr.MessageIntegritySha256, 0x8022, 0x7777];

/** A random request: 0-9 attributes of the types above (integrity ones included, repeated, in any order), FINGERPRINT or not. */
function randomMessage(seed: number): Buffer {
  const w = new MessageWriter(Method.Allocate, MessageClass.Request, randomBytes(12));
  const n = seed % 10;
  for (let i = 0; i < n; i++) {
    const type = TYPES[randomBytes(1)[0]! % TYPES.length]!;
    const length = type === Attr.MessageIntegrity ? 20 : type === Attr.MessageIntegritySha256 ? 32 : randomBytes(1)[0]! % 13;
    w.add(type, randomBytes(length));
  }
  if (seed % 3 === 0) w.addFingerprint();
  return w.toBuffer();
}

function walk(m: StunMessage): number[] {
  const out: number[] = [];
  for (let pos = firstCounted(m); pos >= 0; pos = countedAfter(m, pos)) out.push(pos);
  return out;
}

describe('attributes found by a walk over the message', () => {
  it('count exactly as the list the decoder built: the walk, attributes, find, get, getAll and has', () => {
    for (let seed = 0; seed < 3000; seed++) {
      const buf = randomMessage(seed);
      const decoded = decodeMessage(buf);
      assert.ok(decoded.ok, `seed ${seed} decodes`);
      const m = decoded.message;
      const expected = referenceAttributes(buf);
      assert.deepEqual([...m.attributes], expected, `seed ${seed}: attributes`);
      assert.deepEqual(
        walk(m),
        expected.map((a) => a.offset - 4),
        `seed ${seed}: the walk`,
      );
      for (const type of [...TYPES, Attr.Fingerprint, Attr.Software]) {
        const all = expected.filter((a) => a.type === type);
        const first = all[0];
        assert.deepEqual(findAttribute(m, type), first, `seed ${seed}: findAttribute ${type}`);
        assert.equal(findAttributeOffset(m, type), first ? first.offset - 4 : -1);
        assert.equal(hasAttribute(m, type), first !== undefined);
        assert.deepEqual(getAttribute(m, type), first ? buf.subarray(first.offset, first.offset + first.length) : undefined);
        assert.deepEqual(
          getAttributes(m, type),
          all.map((a) => buf.subarray(a.offset, a.offset + a.length)),
        );
      }
    }
  });

  it('a decoded message is its own result, and a failed decode answers one shared object per reason', () => {
    const buf = randomMessage(4);
    const decoded = decodeMessage(buf);
    assert.ok(decoded.ok);
    assert.equal(decoded.message, decoded, 'no result object beside the message');
    assert.equal(decoded.message.attributes, decoded.message.attributes, 'the list, once built, is kept');
    assert.equal(decodeMessage(Buffer.alloc(3)), decodeMessage(Buffer.alloc(5)), 'too-short: the same object');
    assert.deepEqual(decodeMessage(Buffer.alloc(3)), { ok: false, reason: 'too-short' });
  });
});

// RFC 8489 Appendix B.1: request with long-term credentials, USERHASH,
// PASSWORD-ALGORITHM SHA-256 and MESSAGE-INTEGRITY-SHA256.
//
// The vector as published (February 2020) is not self-consistent:
//  - its header length is 0x9c = 156, the size of the whole 156-byte message; RFC 8489 §5
//    says the length excludes the 20-byte header, so for those attributes it is 0x88;
//  - its MESSAGE-INTEGRITY-SHA256 (e4 68 6c 8f ...) is HMAC-SHA256 keyed with
//    SHA-256("username:realm:password") over the first 120 bytes exactly as printed, that
//    is with the wrong length 0x9c in the header, where §14.6 wants the length up to and
//    including MESSAGE-INTEGRITY-SHA256 (0x88). So no conforming receiver verifies it
//    (checked below);
//  - it uses the SHA-256 key but carries no PASSWORD-ALGORITHM, and without one the
//    request is processed as MD5 (§9.2.4).
// The USERHASH (SHA-256("username:realm")), NONCE and REALM are consistent.
//
// Correction used: RFC Editor erratum 6268 (https://www.rfc-editor.org/errata/eid6268):
// PASSWORD-ALGORITHM (SHA-256, no parameters) inserted after REALM, length 0x90, and
// MESSAGE-INTEGRITY-SHA256 recomputed as b5 c7 bf 00 .... We build that message from its
// parts with MessageWriter, userhash() and longTermKey(..., SHA256) and require it to equal
// the erratum's bytes, which were computed independently of this codebase.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createHmac } from 'node:crypto';
import { decodePasswordAlgorithm, decodeText, encodePasswordAlgorithm } from '../../../src/stun/attributes.js';
import { Attr, MessageClass, Method, PasswordAlgorithm } from '../../../src/stun/constants.js';
import { longTermKey, userhash, verifyIntegritySha256 } from '../../../src/stun/integrity.js';
import { decodeMessage, getAttribute, type StunMessage } from '../../../src/stun/message.js';
import { MessageWriter } from '../../../src/stun/writer.js';
import {
  RFC5769_LONG_TERM_PASSWORD,
  RFC5769_LONG_TERM_REALM,
  RFC5769_LONG_TERM_TRANSACTION_ID,
  RFC5769_LONG_TERM_USERNAME,
  RFC8489_B1_ERRATUM_6268,
  RFC8489_B1_NONCE,
  RFC8489_B1_PUBLISHED,
} from '../../helpers/stun-vectors.js';

const USERNAME = RFC5769_LONG_TERM_USERNAME;
const REALM = RFC5769_LONG_TERM_REALM;
const keySha256 = longTermKey(USERNAME, REALM, RFC5769_LONG_TERM_PASSWORD, PasswordAlgorithm.SHA256);
const keyMd5 = longTermKey(USERNAME, REALM, RFC5769_LONG_TERM_PASSWORD, PasswordAlgorithm.MD5);

/** USERHASH, NONCE and REALM: bytes 20..120 in both the published and the corrected vector. */
const SHARED_ATTRIBUTES = [20, 120] as const;

function build(): Buffer {
  return new MessageWriter(Method.Binding, MessageClass.Request, RFC5769_LONG_TERM_TRANSACTION_ID)
    .add(Attr.Userhash, userhash(USERNAME, REALM))
    .addText(Attr.Nonce, RFC8489_B1_NONCE)
    .addText(Attr.Realm, REALM)
    .add(Attr.PasswordAlgorithm, encodePasswordAlgorithm(PasswordAlgorithm.SHA256))
    .addIntegritySha256(keySha256)
    .toBuffer();
}

function decodeOk(buf: Buffer): StunMessage {
  const result = decodeMessage(buf);
  if (!result.ok) assert.fail(`decodeMessage failed: ${result.reason}`);
  return result.message;
}

test('RFC 8489 B.1: the published USERHASH is SHA-256("username:realm")', () => {
  const computed = userhash(USERNAME, REALM);
  assert.equal(computed.length, 32);
  assert.deepEqual(RFC8489_B1_PUBLISHED.subarray(24, 56), computed);
  assert.equal(RFC8489_B1_PUBLISHED.readUInt16BE(20), Attr.Userhash);
  assert.equal(RFC8489_B1_PUBLISHED.readUInt16BE(22), 32);
  assert.notDeepEqual(userhash(USERNAME, 'example.com'), computed);
});

test('RFC 8489 B.1: what is wrong with the published vector', () => {
  const published = RFC8489_B1_PUBLISHED;
  // Its length field counts the header too.
  assert.equal(published.length, 156);
  assert.equal(published.readUInt16BE(2), 0x9c);
  assert.deepEqual(decodeMessage(published), { ok: false, reason: 'bad-length' });

  // Its HMAC is over the bytes as printed, wrong length included, with the SHA-256 key.
  const integrityAt = published.length - 36;
  assert.equal(published.readUInt16BE(integrityAt), Attr.MessageIntegritySha256);
  const asPrinted = createHmac('sha256', keySha256).update(published.subarray(0, integrityAt)).digest();
  assert.deepEqual(published.subarray(integrityAt + 4), asPrinted);

  // With the length fixed to what §5 and §14.6 require, it decodes but does not verify,
  // with either key: the published HMAC cannot be checked by a conforming receiver.
  const fixed = Buffer.from(published);
  fixed.writeUInt16BE(fixed.length - 20, 2);
  const message = decodeOk(fixed);
  assert.equal(message.integritySha256Offset, integrityAt);
  assert.equal(verifyIntegritySha256(fixed, integrityAt, keySha256), false);
  assert.equal(verifyIntegritySha256(fixed, integrityAt, keyMd5), false);
});

test('RFC 8489 B.1 (erratum 6268): MessageWriter reproduces the corrected vector byte for byte', () => {
  const built = build();
  assert.deepEqual(built, RFC8489_B1_ERRATUM_6268);
  // The parts the published vector got right are unchanged by the correction.
  assert.deepEqual(built.subarray(0, 2), RFC8489_B1_PUBLISHED.subarray(0, 2));
  assert.deepEqual(built.subarray(4, 20), RFC8489_B1_PUBLISHED.subarray(4, 20));
  assert.deepEqual(built.subarray(...SHARED_ATTRIBUTES), RFC8489_B1_PUBLISHED.subarray(...SHARED_ATTRIBUTES));
  assert.equal(built.readUInt16BE(2), 0x90);
});

test('RFC 8489 B.1 (erratum 6268): decodes and MESSAGE-INTEGRITY-SHA256 verifies', async (t) => {
  const vector = RFC8489_B1_ERRATUM_6268;
  const message = decodeOk(vector);

  await t.test('header and attributes', () => {
    assert.equal(message.method, Method.Binding);
    assert.equal(message.cls, MessageClass.Request);
    assert.deepEqual(message.transactionId, RFC5769_LONG_TERM_TRANSACTION_ID);
    assert.deepEqual(
      message.attributes.map((a) => a.type),
      [Attr.Userhash, Attr.Nonce, Attr.Realm, Attr.PasswordAlgorithm, Attr.MessageIntegritySha256],
    );
    assert.deepEqual(getAttribute(message, Attr.Userhash), userhash(USERNAME, REALM));
    assert.equal(decodeText(getAttribute(message, Attr.Nonce)!, 762), RFC8489_B1_NONCE);
    assert.equal(getAttribute(message, Attr.Nonce)!.length, 0x29);
    assert.equal(decodeText(getAttribute(message, Attr.Realm)!, 762), REALM);
    const algorithm = decodePasswordAlgorithm(getAttribute(message, Attr.PasswordAlgorithm)!);
    assert.equal(algorithm?.algorithm, PasswordAlgorithm.SHA256);
    assert.equal(algorithm?.parameters.length, 0);
    assert.equal(message.integrityOffset, -1);
    assert.equal(message.fingerprintOffset, -1);
  });

  await t.test('MESSAGE-INTEGRITY-SHA256 with the SHA-256 key, not the MD5 one', () => {
    assert.equal(keySha256.length, 32);
    assert.equal(message.integritySha256Offset, vector.length - 36);
    assert.equal(verifyIntegritySha256(vector, message.integritySha256Offset, keySha256), true);
    assert.equal(verifyIntegritySha256(vector, message.integritySha256Offset, keyMd5), false);
    assert.equal(verifyIntegritySha256(vector, message.integritySha256Offset, longTermKey(USERNAME, REALM, 'TheMatrIx', PasswordAlgorithm.SHA256)), false);
  });

  await t.test('every flipped byte the HMAC covers breaks it', () => {
    const at = message.integritySha256Offset;
    for (let i = 0; i < vector.length; i++) {
      if (i === 2 || i === 3 || (i >= at && i < at + 4)) continue; // length is recomputed; MI header is not hashed
      const copy = Buffer.from(vector);
      copy[i]! ^= 0x80;
      assert.equal(verifyIntegritySha256(copy, at, keySha256), false, `flip at byte ${i}`);
    }
  });

  await t.test('a FINGERPRINT appended after it still leaves it verifiable', () => {
    const sealed = new MessageWriter(Method.Binding, MessageClass.Request, RFC5769_LONG_TERM_TRANSACTION_ID)
      .add(Attr.Userhash, userhash(USERNAME, REALM))
      .addText(Attr.Nonce, RFC8489_B1_NONCE)
      .addText(Attr.Realm, REALM)
      .add(Attr.PasswordAlgorithm, encodePasswordAlgorithm(PasswordAlgorithm.SHA256))
      .addIntegritySha256(keySha256)
      .addFingerprint()
      .toBuffer();
    assert.deepEqual(sealed.subarray(4, vector.length), vector.subarray(4));
    const decoded = decodeOk(sealed);
    assert.equal(decoded.fingerprintOffset, vector.length);
    assert.equal(verifyIntegritySha256(sealed, decoded.integritySha256Offset, keySha256), true);
  });
});

// RFC 5769 test vectors, byte for byte: decode, check MESSAGE-INTEGRITY and FINGERPRINT,
// read the attributes, then rebuild each message with MessageWriter and compare.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { decodeAddress } from '../../../src/stun/address.js';
import { decodeText, decodeUint32 } from '../../../src/stun/attributes.js';
import { AddressFamily, Attr, MessageClass, Method } from '../../../src/stun/constants.js';
import { fingerprintOf, longTermKey, verifyIntegritySha1 } from '../../../src/stun/integrity.js';
import { decodeMessage, getAttribute, type StunMessage } from '../../../src/stun/message.js';
import { MessageWriter } from '../../../src/stun/writer.js';
import {
  ATTR_ICE_CONTROLLED,
  ATTR_PRIORITY,
  RFC5769_LONG_TERM_NONCE,
  RFC5769_LONG_TERM_PASSWORD,
  RFC5769_LONG_TERM_PASSWORD_RAW,
  RFC5769_LONG_TERM_REALM,
  RFC5769_LONG_TERM_TRANSACTION_ID,
  RFC5769_LONG_TERM_USERNAME,
  RFC5769_SAMPLE_IPV4_RESPONSE,
  RFC5769_SAMPLE_IPV6_RESPONSE,
  RFC5769_SAMPLE_LONG_TERM_REQUEST,
  RFC5769_SAMPLE_REQUEST,
  RFC5769_SHORT_TERM_PASSWORD,
  RFC5769_SHORT_TERM_USERNAME,
  RFC5769_TRANSACTION_ID,
  hex,
} from '../../helpers/stun-vectors.js';

const SPACE = 0x20;
const shortTermKey = Buffer.from(RFC5769_SHORT_TERM_PASSWORD, 'utf8');
const longTermKeyMd5 = longTermKey(RFC5769_LONG_TERM_USERNAME, RFC5769_LONG_TERM_REALM, RFC5769_LONG_TERM_PASSWORD);

function decodeOk(buf: Buffer): StunMessage {
  const result = decodeMessage(buf);
  if (!result.ok) assert.fail(`decodeMessage failed: ${result.reason}`);
  return result.message;
}

function attr(message: StunMessage, type: number): Buffer {
  const value = getAttribute(message, type);
  assert.ok(value, `attribute 0x${type.toString(16)} present`);
  return value;
}

function text(message: StunMessage, type: number): string | undefined {
  return decodeText(attr(message, type), 763);
}

/**
 * Flips one bit in every byte that MESSAGE-INTEGRITY covers or carries, and checks the
 * HMAC no longer verifies. Skipped: the header length (bytes 2-3, replaced by the HMAC
 * input rule of RFC 8489 §14.5) and the MESSAGE-INTEGRITY attribute header (not hashed).
 */
function assertEveryFlipBreaksIntegrity(vector: Buffer, integrityOffset: number, key: Uint8Array): void {
  let flips = 0;
  for (let i = 0; i < integrityOffset + 24; i++) {
    if (i === 2 || i === 3 || (i >= integrityOffset && i < integrityOffset + 4)) continue;
    const copy = Buffer.from(vector);
    copy[i]! ^= 0x01;
    assert.equal(verifyIntegritySha1(copy, integrityOffset, key), false, `flip at byte ${i} must break MESSAGE-INTEGRITY`);
    flips++;
  }
  assert.ok(flips > 40);
}

test('RFC 5769 §2.1 sample request (short-term credentials)', async (t) => {
  const vector = RFC5769_SAMPLE_REQUEST;
  const message = decodeOk(vector);

  await t.test('header', () => {
    assert.equal(vector.length, 20 + 0x58);
    assert.equal(message.method, Method.Binding);
    assert.equal(message.cls, MessageClass.Request);
    assert.equal(message.hasMagicCookie, true);
    assert.deepEqual(message.transactionId, RFC5769_TRANSACTION_ID);
  });

  await t.test('attributes', () => {
    assert.deepEqual(
      message.attributes.map((a) => a.type),
      [Attr.Software, ATTR_PRIORITY, ATTR_ICE_CONTROLLED, Attr.Username, Attr.MessageIntegrity, Attr.Fingerprint],
    );
    assert.equal(text(message, Attr.Software), 'STUN test client');
    assert.equal(text(message, Attr.Username), RFC5769_SHORT_TERM_USERNAME);
    assert.equal(decodeUint32(attr(message, ATTR_PRIORITY)), 0x6e0001ff);
    assert.deepEqual(attr(message, ATTR_ICE_CONTROLLED), hex('93 2f f9 b1 51 26 3b 36'));
  });

  await t.test('MESSAGE-INTEGRITY verifies with the password as key; a wrong key or flipped byte does not', () => {
    assert.equal(message.integrityOffset, 20 + 0x58 - 32);
    assert.equal(verifyIntegritySha1(vector, message.integrityOffset, shortTermKey), true);
    assert.equal(verifyIntegritySha1(vector, message.integrityOffset, Buffer.from('VOkJxbRl1RmTxUk/WvJxBu')), false);
    assertEveryFlipBreaksIntegrity(vector, message.integrityOffset, shortTermKey);
  });

  await t.test('FINGERPRINT verifies; a flipped byte makes the decoder reject the message', () => {
    assert.equal(message.fingerprintOffset, vector.length - 8);
    assert.equal(fingerprintOf(vector, message.fingerprintOffset), 0xe57a3bcf);
    const flipped = Buffer.from(vector);
    flipped[30]! ^= 0x40; // inside SOFTWARE
    assert.deepEqual(decodeMessage(flipped), { ok: false, reason: 'bad-fingerprint' });
  });

  await t.test('MessageWriter rebuilds it byte for byte', () => {
    const rebuilt = new MessageWriter(Method.Binding, MessageClass.Request, RFC5769_TRANSACTION_ID)
      .add(Attr.Software, Buffer.from('STUN test client'), SPACE)
      .add(ATTR_PRIORITY, hex('6e 00 01 ff'))
      .add(ATTR_ICE_CONTROLLED, hex('93 2f f9 b1 51 26 3b 36'))
      .add(Attr.Username, Buffer.from(RFC5769_SHORT_TERM_USERNAME), SPACE)
      .addIntegrity(shortTermKey)
      .addFingerprint()
      .toBuffer();
    assert.deepEqual(rebuilt, vector);
  });
});

for (const v of [
  {
    section: '§2.2',
    name: 'IPv4',
    vector: RFC5769_SAMPLE_IPV4_RESPONSE,
    family: AddressFamily.IPv4,
    address: '192.0.2.1',
    fingerprint: 0xc07d4c96,
    xorValue: '00 01 a1 47 e1 12 a6 43',
  },
  {
    section: '§2.3',
    name: 'IPv6',
    vector: RFC5769_SAMPLE_IPV6_RESPONSE,
    family: AddressFamily.IPv6,
    address: '2001:db8:1234:5678:11:2233:4455:6677',
    fingerprint: 0xc8fb0b4c,
    xorValue: '00 02 a1 47 01 13 a9 fa a5 d3 f1 79 bc 25 f4 b5 be d2 b9 d9',
  },
] as const) {
  test(`RFC 5769 ${v.section} sample ${v.name} response`, async (t) => {
    const message = decodeOk(v.vector);

    await t.test('header', () => {
      assert.equal(message.method, Method.Binding);
      assert.equal(message.cls, MessageClass.SuccessResponse);
      assert.equal(v.vector.readUInt16BE(0), 0x0101);
      assert.deepEqual(message.transactionId, RFC5769_TRANSACTION_ID);
    });

    await t.test('attributes: SOFTWARE and XOR-MAPPED-ADDRESS', () => {
      assert.deepEqual(
        message.attributes.map((a) => a.type),
        [Attr.Software, Attr.XorMappedAddress, Attr.MessageIntegrity, Attr.Fingerprint],
      );
      // The SOFTWARE value is 11 bytes; the 0x20 after it is padding, not part of the text.
      assert.equal(text(message, Attr.Software), 'test vector');
      const value = attr(message, Attr.XorMappedAddress);
      assert.deepEqual(value, hex(v.xorValue));
      assert.deepEqual(decodeAddress(value, message.transactionId), { family: v.family, address: v.address, port: 32853 });
      // Without the XOR it is a different (wrong) address: the test can tell the two apart.
      assert.notEqual(decodeAddress(value)?.address, v.address);
    });

    await t.test('MESSAGE-INTEGRITY (short-term key) and FINGERPRINT', () => {
      assert.equal(verifyIntegritySha1(v.vector, message.integrityOffset, shortTermKey), true);
      assert.equal(verifyIntegritySha1(v.vector, message.integrityOffset, longTermKeyMd5), false);
      assertEveryFlipBreaksIntegrity(v.vector, message.integrityOffset, shortTermKey);
      assert.equal(fingerprintOf(v.vector, message.fingerprintOffset), v.fingerprint);
      const flipped = Buffer.from(v.vector);
      flipped[flipped.length - 1]! ^= 0x01;
      assert.deepEqual(decodeMessage(flipped), { ok: false, reason: 'bad-fingerprint' });
    });

    await t.test('MessageWriter rebuilds it byte for byte', () => {
      const rebuilt = new MessageWriter(Method.Binding, MessageClass.SuccessResponse, RFC5769_TRANSACTION_ID)
        .add(Attr.Software, Buffer.from('test vector'), SPACE)
        .addXorAddress(Attr.XorMappedAddress, v.address, 32853)
        .addIntegrity(shortTermKey)
        .addFingerprint()
        .toBuffer();
      assert.deepEqual(rebuilt, v.vector);
    });
  });
}

test('RFC 5769 §2.4 sample request with long-term credentials', async (t) => {
  const vector = RFC5769_SAMPLE_LONG_TERM_REQUEST;
  const message = decodeOk(vector);

  await t.test('header', () => {
    assert.equal(message.method, Method.Binding);
    assert.equal(message.cls, MessageClass.Request);
    assert.deepEqual(message.transactionId, RFC5769_LONG_TERM_TRANSACTION_ID);
  });

  await t.test('attributes: USERNAME, NONCE, REALM; no FINGERPRINT', () => {
    assert.deepEqual(
      message.attributes.map((a) => a.type),
      [Attr.Username, Attr.Nonce, Attr.Realm, Attr.MessageIntegrity],
    );
    assert.equal(text(message, Attr.Username), RFC5769_LONG_TERM_USERNAME);
    assert.equal(attr(message, Attr.Username).length, 18);
    assert.equal(text(message, Attr.Nonce), RFC5769_LONG_TERM_NONCE);
    assert.equal(text(message, Attr.Realm), RFC5769_LONG_TERM_REALM);
    assert.equal(message.fingerprintOffset, -1);
  });

  await t.test('MESSAGE-INTEGRITY verifies with MD5(username:realm:password)', () => {
    assert.equal(longTermKeyMd5.length, 16);
    assert.equal(verifyIntegritySha1(vector, message.integrityOffset, longTermKeyMd5), true);
    // The key is built from the prepared password; the raw one gives another key.
    assert.equal(
      verifyIntegritySha1(vector, message.integrityOffset, longTermKey(RFC5769_LONG_TERM_USERNAME, RFC5769_LONG_TERM_REALM, RFC5769_LONG_TERM_PASSWORD_RAW)),
      false,
    );
    // What SASLprep does to this password: NFKC (U+00AA -> a, U+2168 -> IX) and U+00AD mapped to nothing.
    assert.equal(RFC5769_LONG_TERM_PASSWORD_RAW.normalize('NFKC').replace(/\u00AD/g, ''), RFC5769_LONG_TERM_PASSWORD);
    assert.equal(verifyIntegritySha1(vector, message.integrityOffset, longTermKey(RFC5769_LONG_TERM_USERNAME, RFC5769_LONG_TERM_REALM, 'thematrix')), false);
    assert.equal(verifyIntegritySha1(vector, message.integrityOffset, shortTermKey), false);
    assertEveryFlipBreaksIntegrity(vector, message.integrityOffset, longTermKeyMd5);
    // No FINGERPRINT here, so a flipped byte still decodes: only the HMAC catches it.
    const flipped = Buffer.from(vector);
    flipped[60]! ^= 0x01; // inside NONCE
    const again = decodeOk(flipped);
    assert.equal(verifyIntegritySha1(flipped, again.integrityOffset, longTermKeyMd5), false);
  });

  await t.test('MessageWriter rebuilds it byte for byte', () => {
    const rebuilt = new MessageWriter(Method.Binding, MessageClass.Request, RFC5769_LONG_TERM_TRANSACTION_ID)
      .addText(Attr.Username, RFC5769_LONG_TERM_USERNAME)
      .addText(Attr.Nonce, RFC5769_LONG_TERM_NONCE)
      .addText(Attr.Realm, RFC5769_LONG_TERM_REALM)
      .addIntegrity(longTermKeyMd5)
      .toBuffer();
    assert.deepEqual(rebuilt, vector);
  });
});

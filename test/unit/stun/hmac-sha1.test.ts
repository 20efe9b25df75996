// HMAC-SHA1 in JavaScript (src/stun/hmac-sha1.ts), which MESSAGE-INTEGRITY uses in place of
// node:crypto: RFC 2202's test cases, the same MAC as node:crypto for every message and key
// length around the block boundaries, and keys whose bytes change under the same object.

import assert from 'node:assert/strict';
import { createHmac, randomBytes } from 'node:crypto';
import { describe, it } from 'node:test';

import { hmacSha1Into } from '../../../src/stun/hmac-sha1.js';
import { verifyIntegritySha1, writeIntegritySha1 } from '../../../src/stun/integrity.js';
import { Attr, MessageClass, Method } from '../../../src/stun/constants.js';
import { decodeMessage } from '../../../src/stun/message.js';
import { MessageWriter } from '../../../src/stun/writer.js';

function mac(key: Uint8Array, data: Uint8Array): Buffer {
  const out = Buffer.alloc(20);
  hmacSha1Into(key, data, 0, data.length, out, 0);
  return out;
}

describe('hmacSha1Into', () => {
  it("gives RFC 2202's HMAC-SHA1 test cases", () => {
    const cases: [Buffer, Buffer, string][] = [
      [Buffer.alloc(20, 0x0b), Buffer.from('Hi There'), 'b617318655057264e28bc0b6fb378c8ef146be00'],
      [Buffer.from('Jefe'), Buffer.from('what do ya want for nothing?'), 'effcdf6ae5eb2fa2d27416d5f184df9c259a7c79'],
      [Buffer.alloc(20, 0xaa), Buffer.alloc(50, 0xdd), '125d7342b9ac11cd91a39af48aa17b4f63f175d3'],
      [Buffer.from(Array.from({ length: 25 }, (_, i) => i + 1)), Buffer.alloc(50, 0xcd), '4c9007f4026250c6bc8414f9bf50c86c2d7235da'],
      [Buffer.alloc(80, 0xaa), Buffer.from('Test Using Larger Than Block-Size Key - Hash Key First'), 'aa4ae5e15272d00e95705637ce8a3b55ed402112'],
      [
        Buffer.alloc(80, 0xaa),
        Buffer.from('Test Using Larger Than Block-Size Key and Larger Than One Block-Size Data'),
        'e8e99d0f45237d786d6bbaa7965c7808bbff1a91',
      ],
    ];
    for (const [key, data, expected] of cases) assert.equal(mac(key, data).toString('hex'), expected, data.toString());
  });

  it("is node:crypto's HMAC-SHA1 for every data length to 300 bytes and key lengths 0 to 130", () => {
    for (const keyLength of [0, 1, 16, 20, 32, 63, 64, 65, 130]) {
      const key = randomBytes(keyLength);
      for (let length = 0; length <= 300; length++) {
        const data = randomBytes(length);
        assert.deepEqual(mac(key, data), createHmac('sha1', key).update(data).digest(), `key ${keyLength} bytes, data ${length} bytes`);
      }
    }
  });

  it('reads only data[start..end) and writes only out[outAt..outAt+20), also into the same buffer', () => {
    const key = randomBytes(16);
    const buf = randomBytes(200);
    const before = Buffer.from(buf);
    hmacSha1Into(key, buf, 7, 150, buf, 160);
    assert.deepEqual(buf.subarray(160, 180), createHmac('sha1', key).update(before.subarray(7, 150)).digest());
    assert.deepEqual(buf.subarray(0, 160), before.subarray(0, 160));
    assert.deepEqual(buf.subarray(180), before.subarray(180));
  });

  it('follows a key whose bytes change in the same buffer, and keys that alternate', () => {
    const key = Buffer.from('0123456789abcdef');
    const other = Buffer.from('fedcba9876543210');
    const data = randomBytes(100);
    for (let round = 0; round < 3; round++) {
      for (const k of [key, other, key]) assert.deepEqual(mac(k, data), createHmac('sha1', k).update(data).digest());
      key[round] = key[round]! ^ 0xff;
      assert.deepEqual(mac(key, data), createHmac('sha1', key).update(data).digest(), `after changing byte ${round}`);
      assert.deepEqual(mac(key.subarray(0, 15), data), createHmac('sha1', key.subarray(0, 15)).update(data).digest(), 'a shorter view');
    }
  });
});

describe('MESSAGE-INTEGRITY by hmac-sha1.ts', () => {
  it('writes and checks the §14.5 MAC node:crypto gives, and leaves the message as it was', () => {
    const key = randomBytes(16);
    for (let pad = 0; pad < 70; pad++) {
      const w = new MessageWriter(Method.Allocate, MessageClass.Request, randomBytes(12));
      w.add(Attr.Software, Buffer.alloc(pad, 0x61)).addIntegrity(key).addFingerprint();
      const message = w.toBuffer();
      const decoded = decodeMessage(message);
      assert.ok(decoded.ok);
      const at = decoded.message.integrityOffset;
      const header = Buffer.from(message.subarray(0, 20));
      header.writeUInt16BE(at + 24 - 20, 2);
      const expected = createHmac('sha1', key).update(header).update(message.subarray(20, at)).digest();
      assert.deepEqual(message.subarray(at + 4, at + 24), expected, `${pad} bytes of SOFTWARE`);
      const before = Buffer.from(message);
      const out = Buffer.alloc(20);
      writeIntegritySha1(message, at, key, out, 0);
      assert.deepEqual(out, expected);
      assert.ok(verifyIntegritySha1(message, at, key));
      assert.deepEqual(message, before);
      for (const i of [0, 9, 19]) {
        const tampered: Buffer = Buffer.from(message);
        tampered[at + 4 + i] = tampered[at + 4 + i]! ^ 1;
        assert.equal(verifyIntegritySha1(tampered, at, key), false, `MAC byte ${i} changed`);
      }
      const otherKey = Buffer.from(key);
      otherKey[0] = otherKey[0]! ^ 0xff;
      assert.equal(verifyIntegritySha1(message, at, otherKey), false, 'another key');
    }
  });
});

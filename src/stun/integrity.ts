// MESSAGE-INTEGRITY (HMAC-SHA1), MESSAGE-INTEGRITY-SHA256 and FINGERPRINT
// (RFC 8489 §14.5-§14.7), and long-term key derivation (§9.2.2).

import { createHash, createHmac, timingSafeEqual } from 'node:crypto';
import { FINGERPRINT_XOR, HEADER_LENGTH, PasswordAlgorithm } from './constants.js';
import { crc32 } from './crc32.js';
import { hmacSha1Into } from './hmac-sha1.js';

/**
 * The long-term credential key: MD5 or SHA-256 of "username:realm:password".
 * The strings are used as given (already processed by OpaqueString/SASLprep where
 * the caller applies it), as coturn does.
 */
export function longTermKey(username: string, realm: string, password: string, algorithm: PasswordAlgorithm = PasswordAlgorithm.MD5): Buffer {
  const hash = createHash(algorithm === PasswordAlgorithm.SHA256 ? 'sha256' : 'md5');
  hash.update(`${username}:${realm}:${password}`, 'utf8');
  return hash.digest();
}

/** RFC 8489 §14.4: USERHASH = SHA-256("username:realm"). */
export function userhash(username: string, realm: string): Buffer {
  return createHash('sha256').update(`${username}:${realm}`, 'utf8').digest();
}

/**
 * HMAC over the message up to the attribute at `attributeOffset`, with the header
 * length set as if the message ended right after that attribute (whose value is
 * `valueLength` bytes). The length is written into `buf` for the one synchronous update
 * and put back before returning: no copy of the header per MAC (docs/scaling.md, part 1).
 */
export function computeIntegrity(buf: Uint8Array, attributeOffset: number, key: Uint8Array, algorithm: 'sha1' | 'sha256', valueLength: number): Buffer {
  const hmac = createHmac(algorithm, key);
  const high = buf[2]!;
  const low = buf[3]!;
  const length = attributeOffset + 4 + valueLength - HEADER_LENGTH;
  buf[2] = length >>> 8;
  buf[3] = length & 255;
  try {
    hmac.update(buf.subarray(0, attributeOffset));
  } finally {
    buf[2] = high;
    buf[3] = low;
  }
  return hmac.digest();
}

/**
 * MESSAGE-INTEGRITY's value (HMAC-SHA1, §14.5) for the attribute whose header is at
 * `attributeOffset`, written into `out` at `outAt`: computeIntegrity's answer, by
 * hmac-sha1.ts, with no Buffer made. The header length is set in `buf` as computeIntegrity sets it.
 */
export function writeIntegritySha1(buf: Uint8Array, attributeOffset: number, key: Uint8Array, out: Uint8Array, outAt: number): void {
  const high = buf[2]!;
  const low = buf[3]!;
  const length = attributeOffset + 4 + 20 - HEADER_LENGTH;
  buf[2] = length >>> 8;
  buf[3] = length & 255;
  try {
    hmacSha1Into(key, buf, 0, attributeOffset, out, outAt);
  } finally {
    buf[2] = high;
    buf[3] = low;
  }
}

/** The expected MESSAGE-INTEGRITY of the message being checked (verifyIntegritySha1): one buffer, reused. */
const expectedSha1 = new Uint8Array(20);

/** Checks MESSAGE-INTEGRITY (20 bytes) at the attribute header offset, in constant time. */
export function verifyIntegritySha1(buf: Uint8Array, attributeOffset: number, key: Uint8Array): boolean {
  if (attributeOffset < HEADER_LENGTH || attributeOffset + 24 > buf.length) return false;
  if (((buf[attributeOffset + 2]! << 8) | buf[attributeOffset + 3]!) !== 20) return false;
  writeIntegritySha1(buf, attributeOffset, key, expectedSha1, 0);
  // Every byte compared whatever the others (as timingSafeEqual), without a view of the value.
  let difference = 0;
  for (let i = 0; i < 20; i++) difference |= expectedSha1[i]! ^ buf[attributeOffset + 4 + i]!;
  return difference === 0;
}

/** Checks MESSAGE-INTEGRITY-SHA256; RFC 8489 §14.6 allows truncation to 16..32 bytes in steps of 4. */
export function verifyIntegritySha256(buf: Uint8Array, attributeOffset: number, key: Uint8Array): boolean {
  if (attributeOffset < HEADER_LENGTH || attributeOffset + 4 > buf.length) return false;
  const length = (buf[attributeOffset + 2]! << 8) | buf[attributeOffset + 3]!;
  if (length < 16 || length > 32 || (length & 3) !== 0 || attributeOffset + 4 + length > buf.length) return false;
  const expected = computeIntegrity(buf, attributeOffset, key, 'sha256', length).subarray(0, length);
  return timingSafeEqual(expected, buf.subarray(attributeOffset + 4, attributeOffset + 4 + length));
}

/** The FINGERPRINT value for a FINGERPRINT attribute whose header starts at `attributeOffset`. */
export function fingerprintOf(buf: Uint8Array, attributeOffset: number): number {
  const bodyLength = attributeOffset + 8 - HEADER_LENGTH;
  let crc = crc32(buf, 0, 2);
  const lengthBytes = new Uint8Array([bodyLength >>> 8, bodyLength & 255]);
  crc = crc32(lengthBytes, 0, 2, crc);
  crc = crc32(buf, 4, attributeOffset, crc);
  return (crc ^ FINGERPRINT_XOR) >>> 0;
}

// Typed decoders for attribute values (RFC 8489 §14, RFC 8656 §18). Each returns
// undefined for a malformed value so the engine can answer 400.

import { isUtf8 } from 'node:buffer';
import { PasswordAlgorithm } from './constants.js';

/**
 * UTF-8 text of at most maxBytes, or undefined (bad UTF-8 or too long). A leading U+FEFF is
 * kept: the text must be exactly what was sent (it feeds key derivation). Three of these per
 * authenticated request (USERNAME, REALM, NONCE): validated natively (isUtf8) and decoded with
 * Buffer's toString, which for valid UTF-8 gives what a fatal TextDecoder gives, at less cost
 * (docs/scaling.md, part 1).
 */
export function decodeText(value: Uint8Array, maxBytes: number): string | undefined {
  if (value.length > maxBytes || !isUtf8(value)) return undefined;
  return (Buffer.isBuffer(value) ? value : Buffer.from(value.buffer, value.byteOffset, value.byteLength)).toString('utf8');
}

/**
 * decodeText of the bytes `start` to `end` of `raw` (an attribute's value in place): the same
 * answer, without the view of the value that getAttribute makes. ASCII (every USERNAME,
 * REALM and NONCE a TURN client usually sends) is valid UTF-8 and reads the same in latin1,
 * so a scan of the bytes stands in for the native UTF-8 check; anything else takes decodeText.
 */
export function decodeTextAt(raw: Buffer, start: number, end: number, maxBytes: number): string | undefined {
  if (end - start > maxBytes) return undefined;
  for (let i = start; i < end; i++) if (raw[i]! >= 0x80) return decodeText(raw.subarray(start, end), maxBytes);
  return raw.toString('latin1', start, end);
}

/** RFC 8489 §14.3: USERNAME < 513 bytes; §14.9/14.10: REALM, NONCE < 763 bytes; SOFTWARE likewise. */
export const MAX_USERNAME_BYTES = 512;
export const MAX_REALM_BYTES = 762;
export const MAX_NONCE_BYTES = 762;
export const MAX_SOFTWARE_BYTES = 762;

export function decodeUint32(value: Uint8Array): number | undefined {
  if (value.length !== 4) return undefined;
  return ((value[0]! << 24) | (value[1]! << 16) | (value[2]! << 8) | value[3]!) >>> 0;
}

export interface ErrorCodeValue {
  readonly code: number;
  readonly reason: string;
}

/** RFC 8489 §14.8: class in the low 3 bits of byte 2, number in byte 3. */
export function decodeErrorCode(value: Uint8Array): ErrorCodeValue | undefined {
  if (value.length < 4) return undefined;
  const cls = value[2]! & 7;
  const number = value[3]!;
  if (cls < 3 || cls > 6 || number > 99) return undefined;
  return { code: cls * 100 + number, reason: decodeText(value.subarray(4), 763) ?? '' };
}

export function encodeErrorCode(code: number, reason: string): Buffer {
  const text = Buffer.from(reason, 'utf8');
  const out = Buffer.alloc(4 + text.length);
  out[2] = Math.floor(code / 100) & 7;
  out[3] = code % 100;
  text.copy(out, 4);
  return out;
}

export function decodeUnknownAttributes(value: Uint8Array): number[] | undefined {
  if (value.length % 2 !== 0) return undefined;
  const out: number[] = [];
  for (let i = 0; i < value.length; i += 2) out.push((value[i]! << 8) | value[i + 1]!);
  return out;
}

export function encodeUnknownAttributes(types: readonly number[]): Buffer {
  const out = Buffer.alloc(types.length * 2);
  for (let i = 0; i < types.length; i++) out.writeUInt16BE(types[i]!, i * 2);
  return out;
}

/** RFC 8656 §18.1: CHANNEL-NUMBER is a 16-bit number followed by 16 reserved bits. */
export function decodeChannelNumber(value: Uint8Array): number | undefined {
  if (value.length !== 4) return undefined;
  return (value[0]! << 8) | value[1]!;
}

export function encodeChannelNumber(channel: number): Buffer {
  const out = Buffer.alloc(4);
  out.writeUInt16BE(channel, 0);
  return out;
}

/** RFC 8656 §18.7: protocol number in the first byte, then RFFU. */
export function decodeRequestedTransport(value: Uint8Array): number | undefined {
  if (value.length !== 4) return undefined;
  return value[0];
}

export function encodeRequestedTransport(protocol: number): Buffer {
  const out = Buffer.alloc(4);
  out[0] = protocol;
  return out;
}

/** RFC 8656 §18.5 / §18.12: REQUESTED- and ADDITIONAL-ADDRESS-FAMILY, family in the first byte. */
export function decodeAddressFamily(value: Uint8Array): number | undefined {
  if (value.length !== 4) return undefined;
  return value[0];
}

export function encodeAddressFamily(family: number): Buffer {
  const out = Buffer.alloc(4);
  out[0] = family;
  return out;
}

/** RFC 8656 §18.6: EVEN-PORT, one byte whose top bit is R (reserve the next port). */
export function decodeEvenPort(value: Uint8Array): { readonly reserveNext: boolean } | undefined {
  if (value.length < 1) return undefined;
  return { reserveNext: (value[0]! & 0x80) !== 0 };
}

export function encodeEvenPort(reserveNext: boolean): Buffer {
  const out = Buffer.alloc(1);
  out[0] = reserveNext ? 0x80 : 0;
  return out;
}

/** RFC 8656 §18.9: an 8-byte opaque token. */
export function decodeReservationToken(value: Uint8Array): Buffer | undefined {
  return value.length === 8 ? Buffer.from(value) : undefined;
}

/** RFC 8656 §18.13: ADDRESS-ERROR-CODE = family, reserved, then an ERROR-CODE body. */
export function encodeAddressErrorCode(family: number, code: number, reason: string): Buffer {
  const body = encodeErrorCode(code, reason);
  body[0] = family;
  return body;
}

export function decodeAddressErrorCode(value: Uint8Array): { readonly family: number; readonly code: number; readonly reason: string } | undefined {
  const err = decodeErrorCode(value);
  if (!err) return undefined;
  return { family: value[0]!, ...err };
}

/** RFC 8656 §18.14: ICMP = reserved(16), type(8), code(8), error data(32). */
export function decodeIcmp(value: Uint8Array): { readonly type: number; readonly code: number; readonly data: number } | undefined {
  if (value.length !== 8) return undefined;
  return { type: value[2]!, code: value[3]!, data: decodeUint32(value.subarray(4))! };
}

export function encodeIcmp(type: number, code: number, data: number): Buffer {
  const out = Buffer.alloc(8);
  out[2] = type;
  out[3] = code;
  out.writeUInt32BE(data >>> 0, 4);
  return out;
}

export interface PasswordAlgorithmEntry {
  readonly algorithm: number;
  readonly parameters: Buffer;
}

/** RFC 8489 §14.11/§14.12: (algorithm u16, length u16, parameters padded to 4) entries. */
export function decodePasswordAlgorithms(value: Uint8Array): PasswordAlgorithmEntry[] | undefined {
  const out: PasswordAlgorithmEntry[] = [];
  let pos = 0;
  while (pos < value.length) {
    if (pos + 4 > value.length) return undefined;
    const algorithm = (value[pos]! << 8) | value[pos + 1]!;
    const length = (value[pos + 2]! << 8) | value[pos + 3]!;
    if (pos + 4 + length > value.length) return undefined;
    out.push({ algorithm, parameters: Buffer.from(value.subarray(pos + 4, pos + 4 + length)) });
    pos += 4 + ((length + 3) & ~3);
  }
  return out;
}

export function decodePasswordAlgorithm(value: Uint8Array): PasswordAlgorithmEntry | undefined {
  const list = decodePasswordAlgorithms(value);
  return list && list.length === 1 ? list[0] : undefined;
}

export function encodePasswordAlgorithms(algorithms: readonly number[]): Buffer {
  const out = Buffer.alloc(algorithms.length * 4);
  for (let i = 0; i < algorithms.length; i++) out.writeUInt16BE(algorithms[i]!, i * 4);
  return out;
}

export function encodePasswordAlgorithm(algorithm: number): Buffer {
  return encodePasswordAlgorithms([algorithm]);
}

export function isKnownPasswordAlgorithm(a: number): a is PasswordAlgorithm {
  return a === PasswordAlgorithm.MD5 || a === PasswordAlgorithm.SHA256;
}

export function encodeUint32(value: number): Buffer {
  const out = Buffer.alloc(4);
  out.writeUInt32BE(value >>> 0, 0);
  return out;
}

// STUN message header and attribute walk (RFC 8489 §5, §14). Decoding never
// throws: malformed input yields a reason string the caller can count.

import { Attr, HEADER_LENGTH, MAGIC_COOKIE, type MessageClass } from './constants.js';
import { fingerprintOf } from './integrity.js';

export interface StunAttribute {
  readonly type: number;
  /** Offset of the value within StunMessage.raw. */
  readonly offset: number;
  readonly length: number;
}

export interface StunMessage {
  /** Exactly the bytes of this message. */
  readonly raw: Buffer;
  readonly method: number;
  readonly cls: MessageClass;
  /** The 12-byte transaction id (a view into raw). */
  readonly transactionId: Buffer;
  /** False for a classic RFC 3489 message; RFC 8489 §11 says how to answer it. */
  readonly hasMagicCookie: boolean;
  /** Attributes that count: after MESSAGE-INTEGRITY only MESSAGE-INTEGRITY-SHA256 and FINGERPRINT do (RFC 8489 §14.5). */
  readonly attributes: readonly StunAttribute[];
  /** Offsets of the attribute headers, or -1. */
  readonly integrityOffset: number;
  readonly integritySha256Offset: number;
  readonly fingerprintOffset: number;
  /**
   * When the engine received it (performance.now()), for the handling-time histogram; 0 until
   * the engine sets it. A field of the message rather than a WeakMap entry beside it: one
   * less map write and read per request (docs/scaling.md, part 1).
   */
  receivedAt: number;
}

export type DecodeResult = { readonly ok: true; readonly message: StunMessage } | { readonly ok: false; readonly reason: DecodeFailure };

export type DecodeFailure = 'too-short' | 'not-stun' | 'bad-length' | 'attribute-overflow' | 'fingerprint-not-last' | 'bad-fingerprint';

export function encodeMessageType(method: number, cls: number): number {
  return (method & 0x000f) | ((method & 0x0070) << 1) | ((method & 0x0f80) << 2) | ((cls & 0x1) << 4) | ((cls & 0x2) << 7);
}

export function decodeMethod(type: number): number {
  return (type & 0x000f) | ((type & 0x00e0) >> 1) | ((type & 0x3e00) >> 2);
}

export function decodeClass(type: number): MessageClass {
  return (((type & 0x0100) >> 7) | ((type & 0x0010) >> 4)) as MessageClass;
}

/** True when the first byte says STUN (top two bits 00), as RFC 8656 §12 demultiplexes. */
export function looksLikeStun(buf: Uint8Array): boolean {
  return buf.length >= HEADER_LENGTH && (buf[0]! & 0xc0) === 0;
}

/** Decodes one whole STUN message; `buf` must hold exactly that message. */
export function decodeMessage(buf: Buffer): DecodeResult {
  if (buf.length < HEADER_LENGTH) return { ok: false, reason: 'too-short' };
  if ((buf[0]! & 0xc0) !== 0) return { ok: false, reason: 'not-stun' };
  const bodyLength = buf.readUInt16BE(2);
  if ((bodyLength & 3) !== 0 || HEADER_LENGTH + bodyLength !== buf.length) return { ok: false, reason: 'bad-length' };
  const type = buf.readUInt16BE(0);
  const attributes: StunAttribute[] = [];
  let integrityOffset = -1;
  let integritySha256Offset = -1;
  let fingerprintOffset = -1;
  const end = buf.length;
  let pos = HEADER_LENGTH;
  while (pos < end) {
    if (fingerprintOffset >= 0) return { ok: false, reason: 'fingerprint-not-last' };
    if (pos + 4 > end) return { ok: false, reason: 'attribute-overflow' };
    const attrType = buf.readUInt16BE(pos);
    const length = buf.readUInt16BE(pos + 2);
    if (pos + 4 + length > end) return { ok: false, reason: 'attribute-overflow' };
    if (attrType === Attr.Fingerprint) {
      fingerprintOffset = pos;
      attributes.push({ type: attrType, offset: pos + 4, length });
    } else if (integritySha256Offset >= 0) {
      // RFC 8489 §14.6: everything after MESSAGE-INTEGRITY-SHA256 but FINGERPRINT is ignored.
    } else if (attrType === Attr.MessageIntegritySha256) {
      integritySha256Offset = pos;
      attributes.push({ type: attrType, offset: pos + 4, length });
    } else if (integrityOffset >= 0) {
      // RFC 8489 §14.5: ignore attributes after MESSAGE-INTEGRITY.
    } else {
      if (attrType === Attr.MessageIntegrity) integrityOffset = pos;
      attributes.push({ type: attrType, offset: pos + 4, length });
    }
    pos += 4 + ((length + 3) & ~3);
  }
  if (fingerprintOffset >= 0) {
    const fp = attributes[attributes.length - 1]!;
    if (fp.length !== 4 || buf.readUInt32BE(fp.offset) !== fingerprintOf(buf, fingerprintOffset)) {
      return { ok: false, reason: 'bad-fingerprint' };
    }
  }
  return {
    ok: true,
    message: {
      raw: buf,
      method: decodeMethod(type),
      cls: decodeClass(type),
      transactionId: buf.subarray(8, 20),
      hasMagicCookie: buf.readUInt32BE(4) === MAGIC_COOKIE,
      attributes,
      integrityOffset,
      integritySha256Offset,
      fingerprintOffset,
      receivedAt: 0,
    },
  };
}

export function findAttribute(message: StunMessage, type: number): StunAttribute | undefined {
  const list = message.attributes;
  for (let i = 0; i < list.length; i++) if (list[i]!.type === type) return list[i];
  return undefined;
}

export function attributeValue(message: StunMessage, attribute: StunAttribute): Buffer {
  return message.raw.subarray(attribute.offset, attribute.offset + attribute.length);
}

/** The value of the first attribute of `type`, or undefined. */
export function getAttribute(message: StunMessage, type: number): Buffer | undefined {
  const a = findAttribute(message, type);
  return a ? attributeValue(message, a) : undefined;
}

/** Every attribute of `type`, in order (CreatePermission carries several XOR-PEER-ADDRESS). */
export function getAttributes(message: StunMessage, type: number): Buffer[] {
  const out: Buffer[] = [];
  for (const a of message.attributes) if (a.type === type) out.push(attributeValue(message, a));
  return out;
}

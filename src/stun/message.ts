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
  /**
   * Attributes that count: after MESSAGE-INTEGRITY only MESSAGE-INTEGRITY-SHA256 and FINGERPRINT do (RFC 8489 §14.5).
   * Built when first asked for; the request path finds attributes by a walk instead (findAttributeOffset, firstCounted).
   */
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

/**
 * The answers of a failed decode: one object per reason, shared (decodeMessage never builds
 * one per bad packet).
 */
const FAILED: { readonly [R in DecodeFailure]: DecodeResult } = {
  'too-short': { ok: false, reason: 'too-short' },
  'not-stun': { ok: false, reason: 'not-stun' },
  'bad-length': { ok: false, reason: 'bad-length' },
  'attribute-overflow': { ok: false, reason: 'attribute-overflow' },
  'fingerprint-not-last': { ok: false, reason: 'fingerprint-not-last' },
  'bad-fingerprint': { ok: false, reason: 'bad-fingerprint' },
};

/**
 * A decoded message, which is its own successful DecodeResult (ok, message): one object per
 * request where a result, a message and a list of attribute objects were 2 + n. The
 * attributes that count are found by a walk over `raw` when asked (findAttributeOffset);
 * the `attributes` list is built only if something asks for it (docs/scaling.md, part 1).
 */
class DecodedMessage implements StunMessage {
  readonly ok = true;
  readonly transactionId: Buffer;
  receivedAt = 0;
  private list: StunAttribute[] | undefined;

  constructor(
    readonly raw: Buffer,
    readonly method: number,
    readonly cls: MessageClass,
    readonly hasMagicCookie: boolean,
    readonly integrityOffset: number,
    readonly integritySha256Offset: number,
    readonly fingerprintOffset: number,
  ) {
    this.transactionId = raw.subarray(8, 20);
  }

  get message(): StunMessage {
    return this;
  }

  get attributes(): readonly StunAttribute[] {
    if (this.list === undefined) {
      const list: StunAttribute[] = [];
      for (let pos = firstCounted(this); pos >= 0; pos = countedAfter(this, pos)) {
        list.push({ type: this.raw.readUInt16BE(pos), offset: pos + 4, length: this.raw.readUInt16BE(pos + 2) });
      }
      this.list = list;
    }
    return this.list;
  }
}

/**
 * Where the attributes stop counting but for MESSAGE-INTEGRITY-SHA256 and FINGERPRINT (RFC
 * 8489 §14.5, §14.6): the first integrity attribute decodeMessage took, else the end.
 */
function countedEnd(m: StunMessage): number {
  return m.integrityOffset >= 0 ? m.integrityOffset : m.integritySha256Offset >= 0 ? m.integritySha256Offset : m.raw.length;
}

/**
 * The header offset of the first attribute that counts at or after `pos` (an attribute
 * header's offset), or -1: those before the first integrity attribute, that one, the
 * MESSAGE-INTEGRITY-SHA256 decodeMessage took, and FINGERPRINT, in their order.
 */
function nextCounted(m: StunMessage, pos: number): number {
  const raw = m.raw;
  const end = raw.length;
  const counted = countedEnd(m);
  while (pos < end) {
    if (pos <= counted || pos === m.integritySha256Offset || pos === m.fingerprintOffset) return pos;
    pos += 4 + ((raw.readUInt16BE(pos + 2) + 3) & ~3);
  }
  return -1;
}

/** The header offset of the first attribute that counts, or -1 (a walk: for (let pos = firstCounted(m); pos >= 0; pos = countedAfter(m, pos))). */
export function firstCounted(m: StunMessage): number {
  return nextCounted(m, HEADER_LENGTH);
}

/** The header offset of the next attribute that counts after the one at `pos`, or -1. */
export function countedAfter(m: StunMessage, pos: number): number {
  return nextCounted(m, pos + 4 + ((m.raw.readUInt16BE(pos + 2) + 3) & ~3));
}

/** The header offset of the first attribute of `type` that counts, or -1. No object made: a walk over the message. */
export function findAttributeOffset(message: StunMessage, type: number): number {
  const raw = message.raw;
  for (let pos = firstCounted(message); pos >= 0; pos = countedAfter(message, pos)) {
    if (raw.readUInt16BE(pos) === type) return pos;
  }
  return -1;
}

/** Whether an attribute of `type` counts in the message. */
export function hasAttribute(message: StunMessage, type: number): boolean {
  return findAttributeOffset(message, type) >= 0;
}

/** Decodes one whole STUN message; `buf` must hold exactly that message. */
export function decodeMessage(buf: Buffer): DecodeResult {
  if (buf.length < HEADER_LENGTH) return FAILED['too-short'];
  if ((buf[0]! & 0xc0) !== 0) return FAILED['not-stun'];
  const bodyLength = buf.readUInt16BE(2);
  if ((bodyLength & 3) !== 0 || HEADER_LENGTH + bodyLength !== buf.length) return FAILED['bad-length'];
  const type = buf.readUInt16BE(0);
  let integrityOffset = -1;
  let integritySha256Offset = -1;
  let fingerprintOffset = -1;
  const end = buf.length;
  let pos = HEADER_LENGTH;
  // The walk checks the structure and notes where the integrity attributes and FINGERPRINT
  // are; which attributes count after them follows (nextCounted): everything after
  // MESSAGE-INTEGRITY-SHA256 but FINGERPRINT is ignored (RFC 8489 §14.6), and after
  // MESSAGE-INTEGRITY all but those two (§14.5).
  while (pos < end) {
    if (fingerprintOffset >= 0) return FAILED['fingerprint-not-last'];
    if (pos + 4 > end) return FAILED['attribute-overflow'];
    const attrType = buf.readUInt16BE(pos);
    const length = buf.readUInt16BE(pos + 2);
    if (pos + 4 + length > end) return FAILED['attribute-overflow'];
    if (attrType === Attr.Fingerprint) fingerprintOffset = pos;
    else if (integritySha256Offset < 0 && attrType === Attr.MessageIntegritySha256) integritySha256Offset = pos;
    else if (integritySha256Offset < 0 && integrityOffset < 0 && attrType === Attr.MessageIntegrity) integrityOffset = pos;
    pos += 4 + ((length + 3) & ~3);
  }
  if (fingerprintOffset >= 0) {
    if (buf.readUInt16BE(fingerprintOffset + 2) !== 4 || buf.readUInt32BE(fingerprintOffset + 4) !== fingerprintOf(buf, fingerprintOffset)) {
      return FAILED['bad-fingerprint'];
    }
  }
  return new DecodedMessage(
    buf,
    decodeMethod(type),
    decodeClass(type),
    buf.readUInt32BE(4) === MAGIC_COOKIE,
    integrityOffset,
    integritySha256Offset,
    fingerprintOffset,
  );
}

export function findAttribute(message: StunMessage, type: number): StunAttribute | undefined {
  const pos = findAttributeOffset(message, type);
  return pos < 0 ? undefined : { type, offset: pos + 4, length: message.raw.readUInt16BE(pos + 2) };
}

export function attributeValue(message: StunMessage, attribute: StunAttribute): Buffer {
  return message.raw.subarray(attribute.offset, attribute.offset + attribute.length);
}

/** The value of the first attribute of `type`, or undefined. */
export function getAttribute(message: StunMessage, type: number): Buffer | undefined {
  const pos = findAttributeOffset(message, type);
  return pos < 0 ? undefined : message.raw.subarray(pos + 4, pos + 4 + message.raw.readUInt16BE(pos + 2));
}

/** Every attribute of `type`, in order (CreatePermission carries several XOR-PEER-ADDRESS). */
export function getAttributes(message: StunMessage, type: number): Buffer[] {
  const out: Buffer[] = [];
  const raw = message.raw;
  for (let pos = firstCounted(message); pos >= 0; pos = countedAfter(message, pos)) {
    if (raw.readUInt16BE(pos) === type) out.push(raw.subarray(pos + 4, pos + 4 + raw.readUInt16BE(pos + 2)));
  }
  return out;
}

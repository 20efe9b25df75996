// Builds STUN messages attribute by attribute into one buffer, then seals them
// with MESSAGE-INTEGRITY(-SHA256) and FINGERPRINT. Used for responses, which are
// not on the relay hot path.

import { addressValueLength, writeAddress } from './address.js';
import { Attr, HEADER_LENGTH, MAGIC_COOKIE, type MessageClass } from './constants.js';
import { computeIntegrity, fingerprintOf, writeIntegritySha1 } from './integrity.js';
import { encodeErrorCode } from './attributes.js';
import { encodeMessageType } from './message.js';

export class MessageWriter {
  private buf: Buffer;
  private length = HEADER_LENGTH;

  /**
   * `cookie` is the 32 bits after the length: the magic cookie, or for a classic
   * RFC 3489 transaction the first four bytes of its 128-bit transaction id.
   * `capacity`: 256 holds every answer of an ordinary allocation's life (a 401 is ~100 bytes,
   * an Allocate success ~100-250); a larger message grows the buffer (reserve). Each writer
   * takes a slice of Node's 8 KiB buffer pool: 1 KiB each refilled the pool every 8 answers.
   */
  constructor(method: number, cls: MessageClass, transactionId: Uint8Array, cookie: number = MAGIC_COOKIE, capacity = 256) {
    // Not zeroed: every byte up to `length` is written (header, attributes, their padding),
    // and only those leave (toBuffer); a response no longer pays a 1 KiB fill.
    this.buf = Buffer.allocUnsafe(capacity);
    this.buf.writeUInt16BE(encodeMessageType(method, cls), 0);
    this.buf.writeUInt16BE(0, 2);
    this.buf.writeUInt32BE(cookie >>> 0, 4);
    // No view when the id is its 12 bytes already (every answer's: the request's own id).
    this.buf.set(transactionId.length <= 12 ? transactionId : transactionId.subarray(0, 12), 8);
  }

  private reserve(n: number): void {
    if (this.length + n <= this.buf.length) return;
    const next = Buffer.allocUnsafe(Math.max(this.buf.length * 2, this.length + n));
    this.buf.copy(next, 0, 0, this.length);
    this.buf = next;
  }

  private header(type: number, valueLength: number): number {
    this.reserve(4 + ((valueLength + 3) & ~3));
    this.buf.writeUInt16BE(type, this.length);
    this.buf.writeUInt16BE(valueLength, this.length + 2);
    const at = this.length + 4;
    this.length = at + ((valueLength + 3) & ~3);
    this.buf.writeUInt16BE(this.length - HEADER_LENGTH, 2);
    return at;
  }

  /** Adds an attribute; `padByte` fills the padding (RFC 5769's vectors pad with spaces). */
  add(type: number, value: Uint8Array, padByte = 0): this {
    const at = this.header(type, value.length);
    this.buf.set(value, at);
    this.buf.fill(padByte, at + value.length, this.length);
    return this;
  }

  addText(type: number, text: string): this {
    return this.add(type, Buffer.from(text, 'utf8'));
  }

  addAddress(type: number, address: string, port: number, transactionId?: Uint8Array, transactionIdAt = 0): this {
    const family = address.includes(':') ? 2 : 1;
    const at = this.header(type, addressValueLength(family));
    if (writeAddress(this.buf, at, address, port, transactionId, transactionIdAt) < 0) throw new TypeError(`not an IP address: ${address}`);
    return this;
  }

  /** XOR-*-ADDRESS, XORed with this message's own transaction id (read in place: header() may replace the buffer, so after it). */
  addXorAddress(type: number, address: string, port: number): this {
    const family = address.includes(':') ? 2 : 1;
    const at = this.header(type, addressValueLength(family));
    if (writeAddress(this.buf, at, address, port, this.buf, 8) < 0) throw new TypeError(`not an IP address: ${address}`);
    return this;
  }

  addErrorCode(code: number, reason: string): this {
    return this.add(Attr.ErrorCode, encodeErrorCode(code, reason));
  }

  addIntegrity(key: Uint8Array): this {
    const at = this.length;
    const valueAt = this.header(Attr.MessageIntegrity, 20);
    writeIntegritySha1(this.buf, at, key, this.buf, valueAt);
    return this;
  }

  addIntegritySha256(key: Uint8Array): this {
    const at = this.length;
    const valueAt = this.header(Attr.MessageIntegritySha256, 32);
    computeIntegrity(this.buf, at, key, 'sha256', 32).copy(this.buf, valueAt);
    return this;
  }

  addFingerprint(): this {
    const at = this.length;
    const valueAt = this.header(Attr.Fingerprint, 4);
    this.buf.writeUInt32BE(fingerprintOf(this.buf, at), valueAt);
    return this;
  }

  /** A copy of the finished message. */
  toBuffer(): Buffer {
    return Buffer.from(this.buf.subarray(0, this.length));
  }

  /**
   * The finished message in the writer's own buffer, not a copy: for an answer sent once
   * and dropped (turn/reply.ts), where the copy was a second buffer per answer. Nothing may
   * be added after it (the header's length would change under the caller).
   */
  finish(): Buffer {
    return this.buf.subarray(0, this.length);
  }
}

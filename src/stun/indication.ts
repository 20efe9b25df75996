// The relay hot path's view of Send and Data indications (RFC 8656 §10): read
// in place into a reused view, and write headers into reused buffers, so that a
// relayed packet allocates nothing here.

import { randomFillSync } from 'node:crypto';
import { Attr, AddressFamily, HEADER_LENGTH, MAGIC_COOKIE, Method, MessageClass, isComprehensionRequired } from './constants.js';
import { encodeMessageType } from './message.js';
import { fingerprintOf } from './integrity.js';

const SEND_INDICATION_TYPE = encodeMessageType(Method.Send, MessageClass.Indication);
const DATA_INDICATION_TYPE = encodeMessageType(Method.Data, MessageClass.Indication);

/** What readSendIndication found; one instance is reused for every packet. */
export class SendIndicationView {
  peerFamily = 0;
  /** The peer IPv4 address as an unsigned 32-bit number (family IPv4). */
  peerIPv4 = 0;
  /** The peer IPv6 address (family IPv6). */
  readonly peerIPv6 = new Uint8Array(16);
  peerPort = 0;
  dataOffset = 0;
  dataLength = 0;
  dontFragment = false;
}

export function isSendIndication(buf: Uint8Array): boolean {
  return buf.length >= HEADER_LENGTH && ((buf[0]! << 8) | buf[1]!) === SEND_INDICATION_TYPE;
}

/**
 * Parses a Send indication into `view`. Returns false (drop it) when it is
 * malformed, lacks XOR-PEER-ADDRESS or DATA, has an unknown comprehension-required
 * attribute (RFC 8489 §6.3.2), or fails its FINGERPRINT.
 */
export function readSendIndication(buf: Buffer, view: SendIndicationView): boolean {
  const length = buf.length;
  if (length < HEADER_LENGTH || (buf[0]! & 0xc0) !== 0) return false;
  const bodyLength = (buf[2]! << 8) | buf[3]!;
  if ((bodyLength & 3) !== 0 || bodyLength + HEADER_LENGTH !== length) return false;
  if (buf.readUInt32BE(4) !== MAGIC_COOKIE) return false;
  let havePeer = false;
  let haveData = false;
  view.dontFragment = false;
  let pos = HEADER_LENGTH;
  while (pos < length) {
    if (pos + 4 > length) return false;
    const type = (buf[pos]! << 8) | buf[pos + 1]!;
    const attrLength = (buf[pos + 2]! << 8) | buf[pos + 3]!;
    const value = pos + 4;
    if (value + attrLength > length) return false;
    if (type === Attr.XorPeerAddress) {
      if (!havePeer) {
        const family = buf[value + 1]!;
        view.peerPort = ((buf[value + 2]! << 8) | buf[value + 3]!) ^ (MAGIC_COOKIE >>> 16);
        if (family === AddressFamily.IPv4 && attrLength === 8) {
          view.peerIPv4 = (buf.readUInt32BE(value + 4) ^ MAGIC_COOKIE) >>> 0;
        } else if (family === AddressFamily.IPv6 && attrLength === 20) {
          for (let i = 0; i < 4; i++) view.peerIPv6[i] = buf[value + 4 + i]! ^ ((MAGIC_COOKIE >>> (24 - i * 8)) & 255);
          for (let i = 4; i < 16; i++) view.peerIPv6[i] = buf[value + 4 + i]! ^ buf[4 + i]!;
        } else {
          return false;
        }
        view.peerFamily = family;
        havePeer = true;
      }
    } else if (type === Attr.Data) {
      if (!haveData) {
        view.dataOffset = value;
        view.dataLength = attrLength;
        haveData = true;
      }
    } else if (type === Attr.DontFragment) {
      view.dontFragment = true;
    } else if (type === Attr.Fingerprint) {
      if (attrLength !== 4 || value + 4 !== length || buf.readUInt32BE(value) !== fingerprintOf(buf, pos)) return false;
    } else if (isComprehensionRequired(type) && !isKnownAttribute(type)) {
      return false;
    }
    pos = value + ((attrLength + 3) & ~3);
  }
  return havePeer && haveData;
}

const KNOWN = new Set<number>(Object.values(Attr));
export function isKnownAttribute(type: number): boolean {
  return KNOWN.has(type);
}

/** Transaction ids for indications come from a random pool refilled in bulk (RFC 8489 §5: random ids). */
export class TransactionIdPool {
  private readonly pool = Buffer.alloc(12 * 512);
  private next = this.pool.length;

  /** Copies a fresh random 12-byte transaction id to out[offset]. */
  write(out: Uint8Array, offset: number): void {
    if (this.next >= this.pool.length) {
      randomFillSync(this.pool);
      this.next = 0;
    }
    out.set(this.pool.subarray(this.next, this.next + 12), offset);
    this.next += 12;
  }
}

/** Longest Data indication head: header + XOR-PEER-ADDRESS (IPv6) + DATA attribute header. */
export const DATA_INDICATION_MAX_HEAD = HEADER_LENGTH + 4 + 20 + 4;
/**
 * Most data a Data indication can carry: its message length (16 bits, RFC 8489 §5) counts the
 * XOR-PEER-ADDRESS attribute (12 or 24 bytes), the DATA attribute header (4) and the data
 * padded to 4 bytes. 0xffff - 16 = 65,519 padded (65,516 of data) for an IPv4 peer,
 * 0xffff - 28 = 65,507 padded (65,504) for IPv6.
 */
export const DATA_INDICATION_MAX_DATA_IPV4 = (0xffff - 16) & ~3;
export const DATA_INDICATION_MAX_DATA_IPV6 = (0xffff - 28) & ~3;

/**
 * Writes a Data indication up to and including the DATA attribute header into
 * `out` for an IPv4 peer (given as a number); the caller sends the payload after it,
 * padded to 4 bytes. Returns the head length.
 */
export function writeDataIndicationHeadIPv4(out: Buffer, ids: TransactionIdPool, peerIPv4: number, peerPort: number, dataLength: number): number {
  const padded = (dataLength + 3) & ~3;
  out.writeUInt16BE(DATA_INDICATION_TYPE, 0);
  out.writeUInt16BE(12 + 4 + padded, 2);
  out.writeUInt32BE(MAGIC_COOKIE, 4);
  ids.write(out, 8);
  out.writeUInt16BE(Attr.XorPeerAddress, 20);
  out.writeUInt16BE(8, 22);
  out[24] = 0;
  out[25] = AddressFamily.IPv4;
  out.writeUInt16BE(peerPort ^ (MAGIC_COOKIE >>> 16), 26);
  out.writeUInt32BE((peerIPv4 ^ MAGIC_COOKIE) >>> 0, 28);
  out.writeUInt16BE(Attr.Data, 32);
  out.writeUInt16BE(dataLength, 34);
  return 36;
}

/** The IPv6 form of writeDataIndicationHeadIPv4. */
export function writeDataIndicationHeadIPv6(out: Buffer, ids: TransactionIdPool, peerIPv6: Uint8Array, peerPort: number, dataLength: number): number {
  const padded = (dataLength + 3) & ~3;
  out.writeUInt16BE(DATA_INDICATION_TYPE, 0);
  out.writeUInt16BE(24 + 4 + padded, 2);
  out.writeUInt32BE(MAGIC_COOKIE, 4);
  ids.write(out, 8);
  out.writeUInt16BE(Attr.XorPeerAddress, 20);
  out.writeUInt16BE(20, 22);
  out[24] = 0;
  out[25] = AddressFamily.IPv6;
  out.writeUInt16BE(peerPort ^ (MAGIC_COOKIE >>> 16), 26);
  for (let i = 0; i < 4; i++) out[28 + i] = peerIPv6[i]! ^ ((MAGIC_COOKIE >>> (24 - i * 8)) & 255);
  for (let i = 4; i < 16; i++) out[28 + i] = peerIPv6[i]! ^ out[4 + i]!;
  out.writeUInt16BE(Attr.Data, 44);
  out.writeUInt16BE(dataLength, 46);
  return 48;
}

// The (XOR-)address attribute value layout of RFC 8489 §14.1/§14.2. Pure
// functions on buffers; address text is parsed and printed by src/net/ip.ts.

import { formatIPv4, formatIPv6, parseIPv4, parseIPv6 } from '../net/ip.js';
import { AddressFamily, MAGIC_COOKIE } from './constants.js';

export interface TransportAddress {
  readonly family: AddressFamily;
  readonly address: string;
  readonly port: number;
}

export function familyOf(address: string): AddressFamily | undefined {
  if (parseIPv4(address) >= 0) return AddressFamily.IPv4;
  if (parseIPv6(address)) return AddressFamily.IPv6;
  return undefined;
}

/**
 * Decodes a MAPPED-ADDRESS style value (family, port, address). With `transactionId`
 * given it is an XOR-*-ADDRESS (RFC 8489 §14.2). Returns undefined when malformed.
 */
export function decodeAddress(value: Uint8Array, transactionId?: Uint8Array): TransportAddress | undefined {
  if (value.length < 8) return undefined;
  const family = value[1];
  let port = (value[2]! << 8) | value[3]!;
  if (transactionId) port ^= MAGIC_COOKIE >>> 16;
  if (family === AddressFamily.IPv4) {
    if (value.length !== 8) return undefined;
    let ip = ((value[4]! << 24) | (value[5]! << 16) | (value[6]! << 8) | value[7]!) >>> 0;
    if (transactionId) ip = (ip ^ MAGIC_COOKIE) >>> 0;
    return { family: AddressFamily.IPv4, address: formatIPv4(ip), port };
  }
  if (family === AddressFamily.IPv6) {
    if (value.length !== 20) return undefined;
    const bytes = new Uint8Array(16);
    for (let i = 0; i < 16; i++) {
      let b = value[4 + i]!;
      if (transactionId) b ^= i < 4 ? (MAGIC_COOKIE >>> (24 - i * 8)) & 255 : transactionId[i - 4]!;
      bytes[i] = b;
    }
    return { family: AddressFamily.IPv6, address: formatIPv6(bytes), port };
  }
  return undefined;
}

/** Length of an encoded address value for a family (8 or 20). */
export function addressValueLength(family: AddressFamily): number {
  return family === AddressFamily.IPv4 ? 8 : 20;
}

/**
 * Writes an address value at out[offset]; XORed when transactionId is given (its 12 bytes
 * from `transactionIdAt`: a writer passes its own message, no view of it per attribute).
 * Returns the number of bytes written, or -1 if the address text does not parse.
 */
export function writeAddress(out: Uint8Array, offset: number, address: string, port: number, transactionId?: Uint8Array, transactionIdAt = 0): number {
  const v4 = parseIPv4(address);
  const xport = transactionId ? port ^ (MAGIC_COOKIE >>> 16) : port;
  out[offset] = 0;
  out[offset + 2] = (xport >>> 8) & 255;
  out[offset + 3] = xport & 255;
  if (v4 >= 0) {
    out[offset + 1] = AddressFamily.IPv4;
    const x = transactionId ? (v4 ^ MAGIC_COOKIE) >>> 0 : v4;
    out[offset + 4] = x >>> 24;
    out[offset + 5] = (x >>> 16) & 255;
    out[offset + 6] = (x >>> 8) & 255;
    out[offset + 7] = x & 255;
    return 8;
  }
  const v6 = parseIPv6(address);
  if (!v6) return -1;
  out[offset + 1] = AddressFamily.IPv6;
  for (let i = 0; i < 16; i++) {
    let b = v6[i]!;
    if (transactionId) b ^= i < 4 ? (MAGIC_COOKIE >>> (24 - i * 8)) & 255 : transactionId[transactionIdAt + i - 4]!;
    out[offset + 4 + i] = b;
  }
  return 20;
}

// IP address text <-> bytes, and the (XOR-)address attribute value layout of
// RFC 8489 §14.1/§14.2. Pure functions on buffers.

import { AddressFamily, MAGIC_COOKIE } from './constants.js';

export interface TransportAddress {
  readonly family: AddressFamily;
  readonly address: string;
  readonly port: number;
}

/** Parses dotted-quad IPv4 into a 32-bit unsigned number, or -1. */
export function parseIPv4(text: string): number {
  let value = 0;
  let part = 0;
  let digits = 0;
  let parts = 0;
  for (let i = 0; i <= text.length; i++) {
    const c = i < text.length ? text.charCodeAt(i) : 46; // treat end as '.'
    if (c === 46) {
      if (digits === 0 || part > 255) return -1;
      value = value * 256 + part;
      parts++;
      part = 0;
      digits = 0;
    } else if (c >= 48 && c <= 57) {
      if (digits > 0 && part === 0) return -1; // no leading zeros (octal ambiguity)
      part = part * 10 + (c - 48);
      if (++digits > 3) return -1;
    } else {
      return -1;
    }
  }
  return parts === 4 ? value : -1;
}

export function formatIPv4(value: number): string {
  return `${value >>> 24}.${(value >>> 16) & 255}.${(value >>> 8) & 255}.${value & 255}`;
}

/** Parses IPv6 text (with :: and an optional trailing dotted IPv4) into 16 bytes, or undefined. */
export function parseIPv6(text: string): Uint8Array | undefined {
  const zone = text.indexOf('%');
  if (zone >= 0) text = text.slice(0, zone);
  if (text.length < 2 || text.length > 45) return undefined;
  const out = new Uint8Array(16);
  const halves = text.split('::');
  if (halves.length > 2) return undefined;
  // A dotted IPv4 part may only end the whole address, never precede '::' (as inet_pton).
  const parseGroups = (s: string, allowV4: boolean): number[] | undefined => {
    if (s === '') return [];
    const groups: number[] = [];
    const items = s.split(':');
    for (let i = 0; i < items.length; i++) {
      const item = items[i]!;
      if (allowV4 && i === items.length - 1 && item.includes('.')) {
        const v4 = parseIPv4(item);
        if (v4 < 0) return undefined;
        groups.push(v4 >>> 16, v4 & 0xffff);
      } else {
        if (!/^[0-9a-fA-F]{1,4}$/.test(item)) return undefined;
        groups.push(parseInt(item, 16));
      }
    }
    return groups;
  };
  const head = parseGroups(halves[0]!, halves.length === 1);
  const tail = halves.length === 2 ? parseGroups(halves[1]!, true) : [];
  if (!head || !tail) return undefined;
  const total = head.length + tail.length;
  if (halves.length === 2 ? total > 7 : total !== 8) return undefined;
  head.forEach((g, i) => { out[i * 2] = g >>> 8; out[i * 2 + 1] = g & 255; });
  const offset = 8 - tail.length;
  tail.forEach((g, i) => { out[(offset + i) * 2] = g >>> 8; out[(offset + i) * 2 + 1] = g & 255; });
  return out;
}

/** RFC 5952 text form (lowercase, longest zero run compressed), as inet_ntop prints it. */
export function formatIPv6(bytes: Uint8Array, offset = 0): string {
  const groups: number[] = [];
  for (let i = 0; i < 8; i++) groups.push((bytes[offset + i * 2]! << 8) | bytes[offset + i * 2 + 1]!);
  // IPv4-mapped and IPv4-compatible (::a.b.c.d, groups 0-5 zero, group 6 not) addresses
  // keep the dotted tail, as inet_ntop (and so Node's rinfo.address) prints them.
  if (groups[0] === 0 && groups[1] === 0 && groups[2] === 0 && groups[3] === 0 && groups[4] === 0 && (groups[5] === 0xffff || (groups[5] === 0 && groups[6] !== 0))) {
    return `${groups[5] === 0xffff ? '::ffff:' : '::'}${bytes[offset + 12]}.${bytes[offset + 13]}.${bytes[offset + 14]}.${bytes[offset + 15]}`;
  }
  let bestStart = -1;
  let bestLen = 0;
  for (let i = 0; i < 8; ) {
    if (groups[i] !== 0) { i++; continue; }
    let j = i;
    while (j < 8 && groups[j] === 0) j++;
    if (j - i > bestLen && j - i >= 2) { bestStart = i; bestLen = j - i; }
    i = j;
  }
  const hex = groups.map((g) => g.toString(16));
  if (bestStart < 0) return hex.join(':');
  return `${hex.slice(0, bestStart).join(':')}::${hex.slice(bestStart + bestLen).join(':')}`;
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
 * Writes an address value at out[offset]; XORed when transactionId is given.
 * Returns the number of bytes written, or -1 if the address text does not parse.
 */
export function writeAddress(out: Uint8Array, offset: number, address: string, port: number, transactionId?: Uint8Array): number {
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
    if (transactionId) b ^= i < 4 ? (MAGIC_COOKIE >>> (24 - i * 8)) & 255 : transactionId[i - 4]!;
    out[offset + 4 + i] = b;
  }
  return 20;
}

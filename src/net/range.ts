// IP addresses as numbers for range arithmetic, and the parser of IP ranges:
// a single address, a CIDR block or a 'first-last' range of one family (the
// --allowed-peer-ip / --denied-peer-ip values and the server addresses of the
// peer policy). An IPv4 value is an unsigned 32-bit number, an IPv6 value a
// 128-bit bigint; both come from the parsers of src/net/ip.ts.

import { formatIPv4, formatIPv6, MAX_IP_TEXT_LENGTH, parseIPv4, parseIPv6Into } from './ip.js';

/** An address as a number, for comparisons against ranges. */
export type IpValue = { readonly family: 4; readonly value: number } | { readonly family: 6; readonly value: bigint };

/** An inclusive range of addresses of one family, as numbers. */
export type IpRange =
  | { readonly family: 4; readonly first: number; readonly last: number }
  | { readonly family: 6; readonly first: bigint; readonly last: bigint };

const MAX_RANGE_LENGTH = 2 * MAX_IP_TEXT_LENGTH + 8;

const RANGE_SYNTAX = "expected 'a.b.c.d', 'a.b.c.d/nn' (nn 0-32), an IPv6 address 'x::y' or 'x::y/nn' (nn 0-128), " + "or a 'first-last' range of one family";

export class PeerRangeError extends Error {
  readonly code = 'ERR_PEER_RANGE';
  /** The offending text, exactly as given. */
  readonly range: string;
  /** What is wrong with it. */
  readonly problem: string;
  /** The option it came from (e.g. '--denied-peer-ip'), when known. */
  readonly option: string | undefined;

  constructor(range: string, problem: string, option?: string) {
    const shown = range.length > 80 ? `${range.slice(0, 80)}…` : range;
    super(`${option === undefined ? '' : `${option}: `}invalid peer IP range '${shown}': ${problem}; ${RANGE_SYNTAX}`);
    this.name = 'PeerRangeError';
    this.range = range;
    this.problem = problem;
    this.option = option;
  }
}

/** 16 bytes in network order as a 128-bit number. */
export function ipv6ToBigInt(bytes: Uint8Array): bigint {
  let v = 0n;
  for (let i = 0; i < 16; i += 4) {
    v = (v << 32n) | BigInt(((bytes[i]! << 24) | (bytes[i + 1]! << 16) | (bytes[i + 2]! << 8) | bytes[i + 3]!) >>> 0);
  }
  return v;
}

function bigIntToIPv6(v: bigint): Uint8Array {
  const out = new Uint8Array(16);
  for (let i = 15; i >= 0; i--, v >>= 8n) out[i] = Number(v & 0xffn);
  return out;
}

/** Scratch for parseIpValue: the bytes are turned into a bigint at once. */
const scratch = new Uint8Array(16);

/**
 * Parses an IPv4 or IPv6 address (strictly as src/net/ip.ts does; no zone ID)
 * into its number, or undefined.
 */
export function parseIpValue(text: string): IpValue | undefined {
  if (text.length === 0 || text.length > MAX_IP_TEXT_LENGTH) return undefined;
  if (text.indexOf(':') === -1) {
    const v4 = parseIPv4(text);
    return v4 < 0 ? undefined : { family: 4, value: v4 };
  }
  return parseIPv6Into(text, scratch) ? { family: 6, value: ipv6ToBigInt(scratch) } : undefined;
}

function parsePrefixLength(text: string, max: number): number {
  if (text.length === 0 || text.length > 3) return -1;
  let n = 0;
  for (let i = 0; i < text.length; i++) {
    const c = text.charCodeAt(i);
    if (c < 48 || c > 57) return -1;
    if (i === 1 && n === 0) return -1; // leading zero
    n = n * 10 + (c - 48);
  }
  return n <= max ? n : -1;
}

function parseSingleForRange(original: string, text: string): IpValue {
  if (text.length === 0) throw new PeerRangeError(original, 'an address is missing');
  if (text.includes('%')) throw new PeerRangeError(original, `'${text}' has a zone ID, which is not allowed`);
  const ip = parseIpValue(text);
  if (ip === undefined) throw new PeerRangeError(original, `'${text.length > 60 ? `${text.slice(0, 60)}…` : text}' is not an IPv4 or IPv6 address`);
  return ip;
}

/**
 * Parses one --allowed-peer-ip / --denied-peer-ip value: a single address,
 * a CIDR block ('10.0.0.0/8', '2001:db8::/32') or a coturn-style
 * 'first-last' range of one family. Surrounding whitespace is ignored.
 * A CIDR block with bits set after the prefix is refused rather than
 * silently widened (did '10.0.0.1/8' mean /8 or /32?).
 * IPv6 text stays IPv6 ('::ffff:10.0.0.0/104' is family 6 here).
 * Throws PeerRangeError.
 */
export function parseIpRange(text: string): IpRange {
  const original = text;
  if (typeof text !== 'string') throw new PeerRangeError(String(text), 'not a string');
  if (text.length > MAX_RANGE_LENGTH) throw new PeerRangeError(original, 'too long');
  const trimmed = text.trim();
  if (trimmed.length === 0) throw new PeerRangeError(original, 'empty');

  const dash = trimmed.indexOf('-');
  if (dash !== -1) {
    if (trimmed.indexOf('-', dash + 1) !== -1) throw new PeerRangeError(original, "more than one '-'");
    if (trimmed.includes('/')) throw new PeerRangeError(original, "a 'first-last' range cannot also have a '/nn' prefix");
    const a = parseSingleForRange(original, trimmed.slice(0, dash).trim());
    const b = parseSingleForRange(original, trimmed.slice(dash + 1).trim());
    if (a.family === 4 && b.family === 4) {
      if (a.value > b.value) throw new PeerRangeError(original, 'the first address is greater than the last');
      return { family: 4, first: a.value, last: b.value };
    }
    if (a.family === 6 && b.family === 6) {
      if (a.value > b.value) throw new PeerRangeError(original, 'the first address is greater than the last');
      return { family: 6, first: a.value, last: b.value };
    }
    throw new PeerRangeError(original, 'it mixes IPv4 and IPv6');
  }

  const slash = trimmed.indexOf('/');
  if (slash === -1) {
    const ip = parseSingleForRange(original, trimmed);
    return ip.family === 4 ? { family: 4, first: ip.value, last: ip.value } : { family: 6, first: ip.value, last: ip.value };
  }
  if (trimmed.indexOf('/', slash + 1) !== -1) throw new PeerRangeError(original, "more than one '/'");
  const ip = parseSingleForRange(original, trimmed.slice(0, slash));
  const lengthText = trimmed.slice(slash + 1);
  if (ip.family === 4) {
    const len = parsePrefixLength(lengthText, 32);
    if (len < 0) throw new PeerRangeError(original, `'/${lengthText}' is not a prefix length from 0 to 32`);
    const hostMask = len === 0 ? 0xffffffff : len === 32 ? 0 : 0xffffffff >>> len;
    const first = (ip.value & ~hostMask) >>> 0;
    if (first !== ip.value) {
      throw new PeerRangeError(original, `bits are set after the /${len} prefix (did you mean ${formatIPv4(first)}/${len}?)`);
    }
    return { family: 4, first, last: (first | hostMask) >>> 0 };
  }
  const len = parsePrefixLength(lengthText, 128);
  if (len < 0) throw new PeerRangeError(original, `'/${lengthText}' is not a prefix length from 0 to 128`);
  const hostMask = (1n << BigInt(128 - len)) - 1n;
  const first = ip.value & ~hostMask;
  if (first !== ip.value) {
    // All-hex groups here, never a dotted tail.
    throw new PeerRangeError(original, `bits are set after the /${len} prefix (did you mean ${formatIPv6(bigIntToIPv6(first), 0, false)}/${len}?)`);
  }
  return { family: 6, first, last: first | hostMask };
}

// IP address text <-> numbers and bytes: the one parser and formatter of the
// project (the STUN address codec, the peer policy, the cluster mesh and the
// config all use it). An IPv4 address is an unsigned 32-bit number (-1 when the
// text is not one), an IPv6 address is 16 bytes in network order.
//
// Strict on purpose: exactly four decimal octets without leading zeros (octal
// ambiguity, the classic '0177.0.0.1' bypass), no shortened or integer IPv4
// forms ('127.1', '2130706433'), no brackets, no whitespace; IPv6 as RFC 4291
// §2.2 writes it, a dotted IPv4 only as its last 32 bits (form 3), as
// inet_pton accepts it. Imports nothing from the project.

const CH_0 = 48;
const CH_9 = 57;
const CH_DOT = 46;
const CH_COLON = 58;

/** Longest IPv6 text: 'ffff:ffff:ffff:ffff:ffff:ffff:255.255.255.255'. */
export const MAX_IP_TEXT_LENGTH = 45;

/** Parses s[start, end) as dotted-quad IPv4; -1 if it is not one. Allocates nothing. */
function parseIPv4Span(s: string, start: number, end: number): number {
  let value = 0;
  let octets = 0;
  let octet = 0;
  let digits = 0;
  for (let i = start; i < end; i++) {
    const c = s.charCodeAt(i);
    if (c >= CH_0 && c <= CH_9) {
      if (digits === 1 && octet === 0) return -1; // leading zero
      octet = octet * 10 + (c - CH_0);
      digits++;
      if (octet > 255) return -1;
    } else if (c === CH_DOT) {
      if (digits === 0 || octets === 3) return -1;
      value = value * 256 + octet;
      octets++;
      octet = 0;
      digits = 0;
    } else {
      return -1;
    }
  }
  if (digits === 0 || octets !== 3) return -1;
  return value * 256 + octet;
}

/** Parses dotted-quad IPv4 into a 32-bit unsigned number, or -1. Allocates nothing (per-packet use). */
export function parseIPv4(text: string): number {
  return parseIPv4Span(text, 0, text.length);
}

export function formatIPv4(value: number): string {
  return `${value >>> 24}.${(value >>> 16) & 255}.${(value >>> 8) & 255}.${value & 255}`;
}

function hexValue(c: number): number {
  if (c >= CH_0 && c <= CH_9) return c - CH_0;
  const lower = c | 0x20;
  if (lower >= 97 && lower <= 102) return lower - 87;
  return -1;
}

/** Index of the first '::' within s[start, end), or -1. */
function doubleColonAt(s: string, start: number, end: number): number {
  for (let i = start; i + 1 < end; i++) if (s.charCodeAt(i) === CH_COLON && s.charCodeAt(i + 1) === CH_COLON) return i;
  return -1;
}

/**
 * Parses s[start, end) as one IPv6 piece list (no '::'), writing 16-bit groups
 * to out from group index `n` on. A dotted IPv4 is accepted only as the last
 * piece when allowV4Tail is set (RFC 4291 §2.2, form 3). Returns the group
 * index after the last one written, or -1 (also for more than 8 groups).
 */
function parseV6Pieces(s: string, start: number, end: number, allowV4Tail: boolean, out: Uint8Array, n: number): number {
  let i = start;
  while (true) {
    let group = 0;
    let digits = 0;
    let j = i;
    for (; j < end; j++) {
      const c = s.charCodeAt(j);
      if (c === CH_COLON) break;
      if (c === CH_DOT) {
        if (!allowV4Tail) return -1;
        // The whole remaining piece must be an IPv4 address.
        for (let k = j; k < end; k++) if (s.charCodeAt(k) === CH_COLON) return -1;
        const v4 = parseIPv4Span(s, i, end);
        if (v4 < 0 || n > 6) return -1;
        out[n * 2] = v4 >>> 24;
        out[n * 2 + 1] = (v4 >>> 16) & 255;
        out[n * 2 + 2] = (v4 >>> 8) & 255;
        out[n * 2 + 3] = v4 & 255;
        return n + 2;
      }
      const h = hexValue(c);
      if (h < 0 || digits === 4) return -1;
      group = (group << 4) | h;
      digits++;
    }
    if (digits === 0 || n === 8) return -1;
    out[n * 2] = group >>> 8;
    out[n * 2 + 1] = group & 255;
    n++;
    if (j === end) return n;
    i = j + 1; // skip ':'
    if (i === end) return -1; // trailing single ':'
  }
}

/**
 * Parses IPv6 text (with '::' and an optional trailing dotted IPv4, no zone ID)
 * into out[0..16). Returns false, out in an unspecified state, when the text is
 * not one. Allocates nothing.
 */
export function parseIPv6Into(text: string, out: Uint8Array): boolean {
  const end = text.length;
  if (end < 2 || end > MAX_IP_TEXT_LENGTH) return false;
  const gap = doubleColonAt(text, 0, end);
  if (gap === -1) return parseV6Pieces(text, 0, end, true, out, 0) === 8;
  if (doubleColonAt(text, gap + 1, end) !== -1) return false; // at most one '::'
  let head = 0;
  if (gap > 0) {
    head = parseV6Pieces(text, 0, gap, false, out, 0);
    if (head < 0) return false;
  }
  let total = head;
  if (gap + 2 < end) {
    total = parseV6Pieces(text, gap + 2, end, true, out, head);
    if (total < 0) return false;
  }
  if (total > 7) return false; // '::' stands for at least one zero group
  // Move the groups after '::' to the end and zero the gap.
  const tailStart = 16 - (total - head) * 2;
  out.copyWithin(tailStart, head * 2, total * 2);
  out.fill(0, head * 2, tailStart);
  return true;
}

/** Parses IPv6 text into 16 bytes, or undefined. A zone ID ('fe80::1%eth0', as Node's rinfo may carry) is ignored. */
export function parseIPv6(text: string): Uint8Array | undefined {
  const zone = text.indexOf('%');
  if (zone >= 0) text = text.slice(0, zone);
  const out = new Uint8Array(16);
  return parseIPv6Into(text, out) ? out : undefined;
}

/**
 * RFC 5952 text form (lowercase, longest zero run of two or more groups
 * compressed, leftmost of equal runs), as inet_ntop prints it. With
 * dottedIPv4 (the default), IPv4-mapped and IPv4-compatible addresses
 * (::a.b.c.d, groups 0-5 zero, group 6 not) keep the dotted tail, as inet_ntop
 * (and so Node's rinfo.address) prints them; without it every group is hex.
 */
export function formatIPv6(bytes: Uint8Array, offset = 0, dottedIPv4 = true): string {
  const groups: number[] = [];
  for (let i = 0; i < 8; i++) groups.push((bytes[offset + i * 2]! << 8) | bytes[offset + i * 2 + 1]!);
  if (
    dottedIPv4 &&
    groups[0] === 0 &&
    groups[1] === 0 &&
    groups[2] === 0 &&
    groups[3] === 0 &&
    groups[4] === 0 &&
    (groups[5] === 0xffff || (groups[5] === 0 && groups[6] !== 0))
  ) {
    return `${groups[5] === 0xffff ? '::ffff:' : '::'}${bytes[offset + 12]}.${bytes[offset + 13]}.${bytes[offset + 14]}.${bytes[offset + 15]}`;
  }
  let bestStart = -1;
  let bestLen = 0;
  for (let i = 0; i < 8; ) {
    if (groups[i] !== 0) {
      i++;
      continue;
    }
    let j = i;
    while (j < 8 && groups[j] === 0) j++;
    if (j - i > bestLen && j - i >= 2) {
      bestStart = i;
      bestLen = j - i;
    }
    i = j;
  }
  const hex = groups.map((g) => g.toString(16));
  if (bestStart < 0) return hex.join(':');
  return `${hex.slice(0, bestStart).join(':')}::${hex.slice(bestStart + bestLen).join(':')}`;
}

// IPv4 addresses embedded in IPv6 addresses: the written forms under which an
// IPv6 address stands for an IPv4 one. The peer policy gives such an address
// the verdict of the IPv4 address it embeds. Values are 128-bit bigints as
// src/net/range.ts makes them.

export type IPv4Embedding =
  | 'none'
  | 'mapped' // ::ffff:0:0/96, RFC 4291 §2.5.5.2
  | 'translated' // ::ffff:0:0:0/96, SIIT (RFC 2765 §2.1)
  | 'nat64' // 64:ff9b::/96, RFC 6052 §2.1
  | 'compatible' // ::/96 except :: and ::1, RFC 4291 §2.5.5.1 (deprecated)
  | '6to4'; // 2002::/16, RFC 3056 §2: IPv4 in bits 16..47

const PREFIX96_MAPPED = 0xffffn;
const PREFIX96_TRANSLATED = 0xffff0000n;
const PREFIX96_NAT64 = 0x0064ff9b0000000000000000n;
const PREFIX16_6TO4 = 0x2002n;
const LOW32 = 0xffffffffn;

/** ::ffff:0.0.0.0 and ::ffff:255.255.255.255, the IPv4-mapped block (RFC 4291 §2.5.5.2). */
export const IPV4_MAPPED_FIRST = PREFIX96_MAPPED << 32n;
export const IPV4_MAPPED_LAST = IPV4_MAPPED_FIRST | LOW32;

/** Which embedding form, if any, an IPv6 address is written in. */
export function ipv4EmbeddingOf(v: bigint): IPv4Embedding {
  const hi96 = v >> 32n;
  if (hi96 === PREFIX96_MAPPED) return 'mapped';
  if (hi96 === PREFIX96_TRANSLATED) return 'translated';
  if (hi96 === PREFIX96_NAT64) return 'nat64';
  if (hi96 === 0n) return v > 1n ? 'compatible' : 'none';
  if (v >> 112n === PREFIX16_6TO4) return '6to4';
  return 'none';
}

/** The IPv4 address (unsigned 32-bit) an IPv6 address embeds in form e (not 'none'). */
export function embeddedIPv4(v: bigint, e: IPv4Embedding): number {
  return e === '6to4' ? Number((v >> 80n) & LOW32) : Number(v & LOW32);
}

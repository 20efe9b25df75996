// The nonce cookie (RFC 8489 §9.2): a NONCE that starts with "obMatJos2" and four
// base64 characters of 24 STUN Security Feature bits (§18.1) tells an RFC 8489 client
// which features the server uses. The NONCE is covered by the client's message
// integrity, so an attacker on the path cannot strip PASSWORD-ALGORITHMS to force MD5
// without the client seeing that the cookie announced it (§9.2.1, bid-down).
//
// Bit numbering: §18.1 as corrected by its erratum 6290, bit 0 is the rightmost bit of
// the three bytes, so "Password algorithms" is 0x000001 ("AAAB") and "Username
// anonymity" 0x000002. The RFC's own vector (Appendix B.1) agrees: its nonce starts
// "obMatJos2AAAC" and it carries USERHASH. RFC 5389 clients take the whole NONCE as an
// opaque string and never look at the cookie.

export const NONCE_COOKIE_PREFIX = 'obMatJos2';
/** The prefix and the four base64 characters of the feature bits. */
export const NONCE_COOKIE_LENGTH = 13;

/** RFC 8489 §18.1: STUN Security Features. */
export const SecurityFeature = {
  /** The server sends PASSWORD-ALGORITHMS (§9.2.4); the client must echo it (bid-down checks). */
  PasswordAlgorithms: 0x000001,
  /** The server resolves USERHASH (§14.4); the client then MUST send it in place of USERNAME (§9.2.5). */
  UsernameAnonymity: 0x000002,
} as const;

/** The 13-character cookie announcing `features` (24 bits). */
export function nonceCookie(features: number): string {
  const bits = Buffer.from([(features >>> 16) & 255, (features >>> 8) & 255, features & 255]);
  return NONCE_COOKIE_PREFIX + bits.toString('base64');
}

/** The feature bits of the cookie `nonce` starts with, or undefined when it has none (an RFC 5389 nonce). */
export function nonceCookieFeatures(nonce: string): number | undefined {
  if (nonce.length < NONCE_COOKIE_LENGTH || !nonce.startsWith(NONCE_COOKIE_PREFIX)) return undefined;
  const encoded = nonce.slice(NONCE_COOKIE_PREFIX.length, NONCE_COOKIE_LENGTH);
  if (!/^[A-Za-z0-9+/]{4}$/.test(encoded)) return undefined;
  const bits = Buffer.from(encoded, 'base64');
  return (bits[0]! << 16) | (bits[1]! << 8) | bits[2]!;
}

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

/** The value of one character of the standard base64 alphabet (RFC 4648 §4), or -1. */
function base64Value(c: number): number {
  if (c >= 65 && c <= 90) return c - 65; // A-Z
  if (c >= 97 && c <= 122) return c - 71; // a-z: 26..51
  if (c >= 48 && c <= 57) return c + 4; // 0-9: 52..61
  if (c === 43) return 62; // +
  if (c === 47) return 63; // /
  return -1;
}

/**
 * The feature bits of the cookie `nonce` starts with, or undefined when it has none (an RFC
 * 5389 nonce). Read on every authenticated request: the four characters are decoded by
 * hand (6 bits each, 24 in all), without a regular expression, a slice or a Buffer.
 */
export function nonceCookieFeatures(nonce: string): number | undefined {
  if (nonce.length < NONCE_COOKIE_LENGTH || !nonce.startsWith(NONCE_COOKIE_PREFIX)) return undefined;
  let bits = 0;
  for (let i = NONCE_COOKIE_PREFIX.length; i < NONCE_COOKIE_LENGTH; i++) {
    const v = base64Value(nonce.charCodeAt(i));
    if (v < 0) return undefined;
    bits = (bits << 6) | v;
  }
  return bits;
}

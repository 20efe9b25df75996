// Stateless nonces (RFC 8489 §9.2): cookie || base64url(timestamp || HMAC(key, timestamp
// || cookie || client IP)). The cookie ("obMatJos2" and the security feature bits,
// ../../stun/nonce-cookie.ts) comes first because RFC 8489 clients look for it there; the
// MAC covers it, so a nonce whose feature bits were changed is not valid. Any node holding
// the same secret validates any other node's nonce, so an anycast reroute never causes a
// 438. The key is derived from the secret with its own label (keys.ts): every 401 shows an
// HMAC under it, so it must not be the secret itself, nor the key of anything else (the
// cluster's mesh frames).
//
// The MAC is truncated to 64 bits: a forged nonce gains nothing without the password (the
// request's MESSAGE-INTEGRITY still needs the key), guessing one takes 2^64 requests at the
// per-source answer rate, and every byte of a 401 is a byte a spoofed request gets sent to
// its victim (docs/security.md).

import { createHmac, timingSafeEqual } from 'node:crypto';
import { NONCE_KEY_LABEL, deriveKey } from '../../keys.js';
import { NONCE_COOKIE_LENGTH, SecurityFeature, nonceCookie } from '../../stun/nonce-cookie.js';

const TIMESTAMP_BYTES = 4;
const MAC_BYTES = 8;
/** base64url of TIMESTAMP_BYTES + MAC_BYTES (12 bytes: 16 characters, no padding). */
const BODY_CHARS = 16;
/** Clock skew between nodes we tolerate for a nonce stamped "in the future". */
const MAX_SKEW_MS = 30_000;
/** Nonces found valid that check() remembers (then it forgets them all): a bound on its memory. */
const KNOWN_VALID_MAX = 10_000;

export type NonceVerdict = 'valid' | 'stale' | 'invalid';

/** base64url digit values by character code (-1: not a digit). */
const BASE64URL_DIGITS = (() => {
  const digits = new Int8Array(128).fill(-1);
  const alphabet = 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_';
  for (let i = 0; i < alphabet.length; i++) digits[alphabet.charCodeAt(i)] = i;
  return digits;
})();

/**
 * The issue time (ms) of a nonce check() found valid or issue() made, read from its first six base64url
 * characters (36 bits: the 32-bit timestamp and 4 of the MAC) without decoding it to a Buffer.
 */
function issuedAtMs(nonce: string): number {
  let bits = 0;
  for (let i = 0; i < 6; i++) bits = bits * 64 + BASE64URL_DIGITS[nonce.charCodeAt(NONCE_COOKIE_LENGTH + i) & 0x7f]!;
  return Math.floor(bits / 16) * 1000;
}

export class NonceIssuer {
  private readonly key: Buffer;
  /**
   * nonce -> the client IP it was found valid for (when it goes stale is in the nonce). A
   * client signs every request of an allocation with the nonce of its 401 (Allocate,
   * CreatePermission, ChannelBind, Refresh): one HMAC for all of them instead of one each
   * (docs/scaling.md, part 1). Only a valid MAC gets in, so an attacker cannot fill it with
   * anything but nonces of its own address that were valid anyway. Keyed by the nonce alone
   * (no string of nonce and address per request, no object per entry): its MAC binds one
   * address, so a nonce is valid for at most one, and any other address is checked by the
   * MAC as if it were not known.
   */
  private readonly knownValid = new Map<string, string>();
  /**
   * nonce -> the client IP it was issued to, by this issuer: the first request signed with
   * a 401's nonce (the authenticated Allocate) is then checked without the MAC too, which
   * this node computed when it issued the nonce (docs/scaling.md, part 1). Apart from
   * knownValid because issue() answers unauthenticated (possibly spoofed) requests: a flood
   * of them empties this map, never the nonces that clients already proved to hold.
   */
  private readonly issued = new Map<string, string>();
  /**
   * The last nonce issued, its client IP and second: issue() is a function of the three,
   * so a burst of 401s to one IP (clients behind one NAT) within a second gets the same
   * string without another MAC.
   */
  private lastNonce = '';
  private lastAddress = '';
  private lastSecond = -1;
  /** lastNonce as a NONCE attribute's value, made when first asked for (issueValue). */
  private lastValue: Buffer | undefined;
  /** The cookie every nonce of this issuer starts with. */
  readonly cookie: string;

  /**
   * `secret` is --nonce-secret, else --cluster-secret, else random; the HMAC key is derived from it.
   * `features`: the RFC 8489 §18.1 bits the cookie announces (CredentialStore.securityFeatures).
   */
  constructor(
    secret: Buffer,
    private readonly lifetimeMs: number,
    readonly features: number = SecurityFeature.PasswordAlgorithms,
  ) {
    this.key = deriveKey(secret, NONCE_KEY_LABEL);
    this.cookie = nonceCookie(features);
  }

  private mac(timestamp: Buffer, cookie: string, clientAddress: string): Buffer {
    return createHmac('sha256', this.key).update(timestamp).update(cookie, 'latin1').update(clientAddress, 'utf8').digest().subarray(0, MAC_BYTES);
  }

  issue(clientAddress: string, nowMs: number): string {
    const second = Math.floor(nowMs / 1000) >>> 0;
    if (second === this.lastSecond && clientAddress === this.lastAddress) return this.lastNonce;
    // One buffer for timestamp and MAC (one per 401: no concat of two).
    const raw = Buffer.allocUnsafe(TIMESTAMP_BYTES + MAC_BYTES);
    raw.writeUInt32BE(second, 0);
    this.mac(raw.subarray(0, TIMESTAMP_BYTES), this.cookie, clientAddress).copy(raw, TIMESTAMP_BYTES);
    const nonce = this.cookie + raw.toString('base64url');
    if (this.issued.size >= KNOWN_VALID_MAX) this.issued.clear();
    this.issued.set(nonce, clientAddress);
    this.lastNonce = nonce;
    this.lastAddress = clientAddress;
    this.lastSecond = second;
    this.lastValue = undefined;
    return nonce;
  }

  /** issue() as the NONCE attribute's value (its bytes), the same Buffer for the same nonce: the writer copies it, never changes it. */
  issueValue(clientAddress: string, nowMs: number): Buffer {
    const nonce = this.issue(clientAddress, nowMs);
    // issue() leaves lastNonce === nonce, and lastValue cleared whenever lastNonce changed.
    this.lastValue ??= Buffer.from(nonce, 'latin1');
    return this.lastValue;
  }

  /** Bound to the client IP (not its port), so a NAT rebinding keeps the nonce. */
  check(nonce: string, clientAddress: string, nowMs: number): NonceVerdict {
    if (nonce.length !== NONCE_COOKIE_LENGTH + BODY_CHARS) return 'invalid';
    if (this.knownValid.get(nonce) === clientAddress) {
      if (nowMs < issuedAtMs(nonce) + this.lifetimeMs) return 'valid';
      this.knownValid.delete(nonce);
      return 'stale';
    }
    // Issued here to this IP: its MAC is right. The rest of the verdict is the MAC path's below.
    if (this.issued.get(nonce) === clientAddress) {
      const issuedMs = issuedAtMs(nonce);
      if (issuedMs > nowMs + MAX_SKEW_MS) return 'invalid';
      if (nowMs - issuedMs >= this.lifetimeMs) {
        this.issued.delete(nonce);
        return 'stale';
      }
      return 'valid';
    }
    const cookie = nonce.slice(0, NONCE_COOKIE_LENGTH);
    const raw = Buffer.from(nonce.slice(NONCE_COOKIE_LENGTH), 'base64url');
    if (raw.length !== TIMESTAMP_BYTES + MAC_BYTES) return 'invalid';
    const timestamp = raw.subarray(0, TIMESTAMP_BYTES);
    if (!timingSafeEqual(this.mac(timestamp, cookie, clientAddress), raw.subarray(TIMESTAMP_BYTES))) return 'invalid';
    const issuedMs = timestamp.readUInt32BE(0) * 1000;
    if (issuedMs > nowMs + MAX_SKEW_MS) return 'invalid';
    if (nowMs - issuedMs >= this.lifetimeMs) return 'stale';
    if (this.knownValid.size >= KNOWN_VALID_MAX) this.knownValid.clear();
    this.knownValid.set(nonce, clientAddress);
    return 'valid';
  }
}

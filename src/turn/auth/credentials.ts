// Long-term credentials (RFC 8489 §9.2): static users, and coturn's time-limited
// shared-secret scheme ("TURN REST API"): username = "expiry-unix-seconds[:id]",
// password = base64(HMAC-SHA1(secret, username)).

import { randomBytes } from 'node:crypto';
import { encodePasswordAlgorithms } from '../../stun/attributes.js';
import { PasswordAlgorithm } from '../../stun/constants.js';
import { hmacSha1Into } from '../../stun/hmac-sha1.js';
import { longTermKey, userhash } from '../../stun/integrity.js';
import { SecurityFeature } from '../../stun/nonce-cookie.js';

export interface CredentialOptions {
  readonly realm: string;
  /** name -> password; a password written "0x" + 32 hex digits is the MD5 key itself, as in coturn. */
  readonly users: ReadonlyMap<string, string>;
  /** Shared secrets for time-limited credentials; several allow rotation. Empty: scheme off. */
  readonly authSecrets: readonly string[];
}

export type KeyLookup = { readonly ok: true; readonly keys: readonly Buffer[] } | { readonly ok: false; readonly reason: 'unknown-user' | 'expired' };

/**
 * Time-limited credentials' keys kept per username and algorithm, at most this many each
 * (then the map starts over): a WebRTC app hands each visitor one username for hours, and
 * each of its requests would otherwise cost an HMAC-SHA1 and an MD5 (~3.4 µs) and a key
 * object whose HMAC pads are made again (src/stun/hmac-sha1.ts). Bounded, so that usernames
 * made up by the request cost memory only up to here.
 */
export const MADE_KEYS_MAX = 4096;

export class CredentialStore {
  readonly realm: string;
  private readonly md5Keys = new Map<string, Buffer>();
  /** keysFor's answer for a static user's MD5 key, made once: the lookup of every request of an RFC 5389 client. */
  private readonly md5Lookups = new Map<string, KeyLookup>();
  private readonly passwords = new Map<string, string>();
  /** keysFor's answer for a static user's SHA-256 key (RFC 8489 §9.2.2), made at the first request that asks for it. */
  private readonly sha256Lookups = new Map<string, KeyLookup>();
  /** Time-limited credentials' answers, MD5 and SHA-256 (MADE_KEYS_MAX). */
  private readonly madeMd5 = new Map<string, KeyLookup>();
  private readonly madeSha256 = new Map<string, KeyLookup>();
  private readonly byUserhash = new Map<string, string>();
  /** The auth secrets as bytes, one object each for the process (restApiPassword). */
  private readonly secretKeys: readonly Buffer[];
  /** Verified against when the user is unknown, so that both cases cost the same. */
  readonly decoyKey = randomBytes(16);
  /**
   * RFC 8489 §9.2.4: the password algorithms offered in every 401 and 438, in order of
   * preference; a client takes the first it supports (§9.2.5). SHA-256 first, unless a
   * static user is given only as its MD5 key ("0x..."): that user has no SHA-256 key, and
   * an RFC 8489 client following the list would then never get in.
   */
  readonly offeredAlgorithms: readonly PasswordAlgorithm[];
  /** offeredAlgorithms as the PASSWORD-ALGORITHMS value (§14.11); a request must echo these bytes. */
  readonly passwordAlgorithms: Buffer;
  /**
   * The RFC 8489 §18.1 bits of the nonce cookie. "Username anonymity" only when every
   * credential can be found from its USERHASH: static users, no --use-auth-secret. With
   * the bit set a client MUST send USERHASH (§9.2.5), and a time-limited username cannot
   * be recovered from its hash (its name is not known in advance).
   */
  readonly securityFeatures: number;

  constructor(private readonly options: CredentialOptions) {
    this.realm = options.realm;
    this.secretKeys = options.authSecrets.map((secret) => Buffer.from(secret, 'utf8'));
    for (const [name, password] of options.users) {
      const hexKey = /^0x([0-9a-fA-F]{32})$/.exec(password);
      this.md5Keys.set(name, hexKey ? Buffer.from(hexKey[1]!, 'hex') : longTermKey(name, options.realm, password));
      this.md5Lookups.set(name, { ok: true, keys: [this.md5Keys.get(name)!] });
      if (!hexKey) this.passwords.set(name, password);
      this.byUserhash.set(userhash(name, options.realm).toString('hex'), name);
    }
    const md5Only = this.md5Keys.size > this.passwords.size;
    this.offeredAlgorithms = md5Only ? [PasswordAlgorithm.MD5, PasswordAlgorithm.SHA256] : [PasswordAlgorithm.SHA256, PasswordAlgorithm.MD5];
    this.passwordAlgorithms = encodePasswordAlgorithms(this.offeredAlgorithms);
    const anonymity = this.md5Keys.size > 0 && options.authSecrets.length === 0;
    this.securityFeatures = SecurityFeature.PasswordAlgorithms | (anonymity ? SecurityFeature.UsernameAnonymity : 0);
  }

  get hasAnyCredentials(): boolean {
    return this.md5Keys.size > 0 || this.options.authSecrets.length > 0;
  }

  /** Resolves a USERHASH (RFC 8489 §14.4) to a static user's name. */
  usernameForUserhash(hash: Uint8Array): string | undefined {
    return this.byUserhash.get(Buffer.from(hash).toString('hex'));
  }

  /**
   * The candidate keys for a username (several while auth secrets rotate). The answer (and
   * its key objects) may be the same object for every request of that user: never change it.
   */
  keysFor(username: string, nowMs: number, algorithm: PasswordAlgorithm = PasswordAlgorithm.MD5): KeyLookup {
    const key = this.md5Keys.get(username);
    if (key) {
      if (algorithm === PasswordAlgorithm.MD5) return this.md5Lookups.get(username)!;
      const password = this.passwords.get(username);
      if (password === undefined) return { ok: false, reason: 'unknown-user' };
      let lookup = this.sha256Lookups.get(username);
      if (lookup === undefined) this.sha256Lookups.set(username, (lookup = { ok: true, keys: [longTermKey(username, this.realm, password, algorithm)] }));
      return lookup;
    }
    if (this.options.authSecrets.length === 0) return { ok: false, reason: 'unknown-user' };
    // The expiry is checked at every request, before any kept key is looked at.
    const expiry = restApiExpirySeconds(username);
    if (expiry === undefined) return { ok: false, reason: 'unknown-user' };
    if (expiry * 1000 <= nowMs) return { ok: false, reason: 'expired' };
    const made = algorithm === PasswordAlgorithm.MD5 ? this.madeMd5 : this.madeSha256;
    let lookup = made.get(username);
    if (lookup !== undefined) return lookup;
    lookup = { ok: true, keys: this.secretKeys.map((secret) => longTermKey(username, this.realm, restApiPassword(secret, username), algorithm)) };
    if (made.size >= MADE_KEYS_MAX) made.clear();
    made.set(username, lookup);
    return lookup;
  }
}

/**
 * The expiry of a time-limited username ("1700000000" or "1700000000:alice"), or undefined.
 * At most 10 digits (9999999999, the year 2286): a longer one is no expiry at all, a
 * credential that never lapses, and is refused like any other non-credential name.
 */
export function restApiExpirySeconds(username: string): number | undefined {
  const colon = username.indexOf(':');
  const head = colon >= 0 ? username.slice(0, colon) : username;
  if (!/^[0-9]{1,10}$/.test(head)) return undefined;
  return Number(head);
}

/**
 * coturn's --use-auth-secret password: base64(HMAC-SHA1(secret, username)). The secret as
 * bytes (the same object each time) lets hmac-sha1.ts keep its padded blocks.
 */
export function restApiPassword(secret: string | Uint8Array, username: string): string {
  const key = typeof secret === 'string' ? Buffer.from(secret, 'utf8') : secret;
  const data = Buffer.from(username, 'utf8');
  const mac = Buffer.allocUnsafe(20);
  hmacSha1Into(key, data, 0, data.length, mac, 0);
  return mac.toString('base64');
}

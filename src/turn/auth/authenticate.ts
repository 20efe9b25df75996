// The long-term credential mechanism (RFC 8489 §9.2) as the server applies it to
// every TURN request (RFC 8656 §5): a request without integrity gets 401 with a
// realm and a fresh nonce; a stale nonce 438; a good one the key that seals the
// answer. Answers to requests not yet authenticated are rate limited per source
// (rate-limit.ts): over UDP their source may be spoofed.
//
// RFC 8489 password algorithms: every 401 and 438 carries PASSWORD-ALGORITHMS (SHA-256 and
// MD5) and a nonce whose cookie says so (nonce.ts); a request that names an algorithm must
// echo the offer unchanged (the bid-down checks of §9.2.4); one that names none is an RFC
// 5389 client's and uses MD5, as every browser does.

import {
  MAX_NONCE_BYTES,
  MAX_REALM_BYTES,
  MAX_USERNAME_BYTES,
  decodePasswordAlgorithm,
  decodeTextAt,
  isKnownPasswordAlgorithm,
} from '../../stun/attributes.js';
import { Attr, ErrorCode, PasswordAlgorithm, methodName } from '../../stun/constants.js';
import { verifyIntegritySha1, verifyIntegritySha256 } from '../../stun/integrity.js';
import { type StunMessage, findAttributeOffset, getAttribute } from '../../stun/message.js';
import { SecurityFeature, nonceCookieFeatures } from '../../stun/nonce-cookie.js';
import type { Clock } from '../clock.js';
import type { DropReason, EngineCounters } from '../counters.js';
import type { ListenerHandle } from '../ports.js';
import type { Replies } from '../reply.js';
import type { CredentialStore } from './credentials.js';
import type { NonceIssuer } from './nonce.js';
import { SourceRateLimiter, type SourceRateLimitOptions, bindingLimitFor } from './rate-limit.js';

/** Who sent an authenticated request, and the key its answer is sealed with. */
export interface Authenticated {
  readonly username: string;
  readonly key: Buffer;
}

export interface AuthenticatorOptions {
  readonly credentials: CredentialStore;
  readonly nonces: NonceIssuer;
  readonly clock: Clock;
  readonly counters: EngineCounters;
  /** Error answers per source before authentication; absent or 0 per second: no limit. */
  readonly unauthenticatedErrorLimit?: SourceRateLimitOptions;
}

export class Authenticator {
  private readonly errorLimiter: SourceRateLimiter | undefined;
  /** Binding answers per source (see bindingLimitFor): ICE needs them, so a higher rate than errors. */
  private readonly bindingLimiter: SourceRateLimiter | undefined;
  /** The REALM value of every 401 and 438, encoded once (the realm never changes). */
  private readonly realmValue: Buffer;
  /**
   * A request's REALM is ours when its bytes are realmValue's: then it decodes (decodeText) to
   * the realm, with no string made per request. False when that would not hold (a realm over
   * the REALM limit, or one that does not survive UTF-8), and the value is decoded as before.
   */
  private readonly realmByBytes: boolean;

  constructor(
    private readonly o: AuthenticatorOptions,
    private readonly replies: Replies,
    private readonly drop: (reason: DropReason) => void,
  ) {
    const limit = o.unauthenticatedErrorLimit;
    this.errorLimiter = limit && limit.perSecond > 0 ? new SourceRateLimiter(limit) : undefined;
    this.bindingLimiter = limit && limit.perSecond > 0 ? new SourceRateLimiter(bindingLimitFor(limit)) : undefined;
    this.realmValue = Buffer.from(o.credentials.realm, 'utf8');
    this.realmByBytes = this.realmValue.length <= MAX_REALM_BYTES && this.realmValue.toString('utf8') === o.credentials.realm;
  }

  /** The request's REALM (value at `start`..`end` of `raw`): ours, another one, or undefined when malformed (400). */
  private realmIsOurs(raw: Buffer, start: number, end: number): boolean | undefined {
    if (this.realmByBytes && raw.compare(this.realmValue, 0, this.realmValue.length, start, end) === 0) return true;
    const realm = decodeTextAt(raw, start, end, MAX_REALM_BYTES);
    return realm === undefined ? undefined : realm === this.o.credentials.realm;
  }

  /** True when an error answer to an unauthenticated request from `address` is over its rate (dropped and counted). */
  errorLimited(address: string): boolean {
    return this.limited(this.errorLimiter, address);
  }

  /** True when a Binding answer to `address` is over its rate (dropped and counted). */
  bindingLimited(address: string): boolean {
    return this.limited(this.bindingLimiter, address);
  }

  /**
   * Not an amplifier: over UDP the source of an unauthenticated request may be spoofed,
   * so each source IP (an IPv6 /64) gets a bounded rate of answers.
   */
  private limited(limiter: SourceRateLimiter | undefined, address: string): boolean {
    if (limiter === undefined || limiter.take(address, this.o.clock.now())) return false;
    this.drop('rate_limited');
    return true;
  }

  /** An unauthenticated error answer (no reason phrase, no integrity), unless over the rate. */
  private reject(listener: ListenerHandle, message: StunMessage, address: string, port: number, code: number, now: number): undefined {
    if (this.errorLimited(address)) return undefined;
    if (code === ErrorCode.Unauthorized) this.o.counters.authFailures++;
    const w = this.replies.error(message, code, '');
    if (code !== ErrorCode.BadRequest) {
      w.add(Attr.Realm, this.realmValue);
      w.add(Attr.Nonce, this.o.nonces.issueValue(address, now));
      // §9.2.4: a 401 or 438 MUST carry PASSWORD-ALGORITHMS once the cookie says "Password algorithms".
      w.add(Attr.PasswordAlgorithms, this.o.credentials.passwordAlgorithms);
    }
    this.replies.send(listener, message, w, undefined, address, port, methodName(message.method), code);
    return undefined;
  }

  /**
   * The password algorithm of a request, or undefined for 400 (RFC 8489 §9.2.4). With a
   * nonce cookie that announces "Password algorithms": neither PASSWORD-ALGORITHM nor
   * PASSWORD-ALGORITHMS is MD5 (an RFC 5389 client); otherwise both must be there,
   * PASSWORD-ALGORITHMS byte for byte what the 401 offered (an attacker on the path who
   * struck SHA-256 from the offer is found out here), and PASSWORD-ALGORITHM one of its
   * entries. A nonce without the cookie is none of ours (the nonce check answers 438 next):
   * its PASSWORD-ALGORITHM is taken as it stands.
   */
  private passwordAlgorithm(message: StunMessage, nonce: string): PasswordAlgorithm | undefined {
    const algorithmValue = getAttribute(message, Attr.PasswordAlgorithm);
    const offeredValue = getAttribute(message, Attr.PasswordAlgorithms);
    const features = nonceCookieFeatures(nonce);
    if (features !== undefined && (features & SecurityFeature.PasswordAlgorithms) !== 0) {
      if (!algorithmValue && !offeredValue) return PasswordAlgorithm.MD5;
      if (!algorithmValue || !offeredValue?.equals(this.o.credentials.passwordAlgorithms)) return undefined;
      const entry = decodePasswordAlgorithm(algorithmValue);
      if (entry?.parameters.length !== 0) return undefined;
      return this.o.credentials.offeredAlgorithms.find((a) => a === entry.algorithm);
    }
    if (!algorithmValue) return PasswordAlgorithm.MD5;
    const entry = decodePasswordAlgorithm(algorithmValue);
    return entry && isKnownPasswordAlgorithm(entry.algorithm) ? entry.algorithm : undefined;
  }

  /**
   * RFC 8489 §9.2.4. Returns the user, or undefined after answering 400/401/438.
   * An unknown user and a wrong password get the very same 401.
   */
  authenticate(listener: ListenerHandle, message: StunMessage, address: string, port: number): Authenticated | undefined {
    const now = this.o.clock.now();
    const hasSha256 = message.integritySha256Offset >= 0;
    if (message.integrityOffset < 0 && !hasSha256) return this.reject(listener, message, address, port, ErrorCode.Unauthorized, now);

    const credentials = this.o.credentials;
    // The text attributes are read in place (attribute header offsets, decodeTextAt): no view
    // of each value, no string for a REALM that is ours (docs/scaling.md, part 1).
    const raw = message.raw;
    const usernameAt = findAttributeOffset(message, Attr.Username);
    const userhashAt = findAttributeOffset(message, Attr.Userhash);
    const realmAt = findAttributeOffset(message, Attr.Realm);
    const nonceAt = findAttributeOffset(message, Attr.Nonce);
    if ((usernameAt < 0 && userhashAt < 0) || realmAt < 0 || nonceAt < 0) return this.reject(listener, message, address, port, ErrorCode.BadRequest, now);
    const ourRealm = this.realmIsOurs(raw, realmAt + 4, valueEnd(raw, realmAt));
    const nonce = decodeTextAt(raw, nonceAt + 4, valueEnd(raw, nonceAt), MAX_NONCE_BYTES);
    let username = usernameAt >= 0 ? decodeTextAt(raw, usernameAt + 4, valueEnd(raw, usernameAt), MAX_USERNAME_BYTES) : undefined;
    if (!username && userhashAt >= 0) {
      username = valueEnd(raw, userhashAt) - userhashAt - 4 === 32 ? credentials.usernameForUserhash(raw.subarray(userhashAt + 4, userhashAt + 36)) : undefined;
    }
    if (ourRealm === undefined || nonce === undefined || (usernameAt >= 0 && username === undefined))
      return this.reject(listener, message, address, port, ErrorCode.BadRequest, now);

    const algorithm = this.passwordAlgorithm(message, nonce);
    if (algorithm === undefined) return this.reject(listener, message, address, port, ErrorCode.BadRequest, now);
    if (this.o.nonces.check(nonce, address, now) !== 'valid') return this.reject(listener, message, address, port, ErrorCode.StaleNonce, now);

    const lookup = username !== undefined && ourRealm ? credentials.keysFor(username, now, algorithm) : undefined;
    const keys = lookup?.ok ? lookup.keys : [credentials.decoyKey];
    for (const key of keys) {
      const ok = hasSha256 ? verifyIntegritySha256(raw, message.integritySha256Offset, key) : verifyIntegritySha1(raw, message.integrityOffset, key);
      if (ok && lookup?.ok && username !== undefined) return { username, key };
    }
    return this.reject(listener, message, address, port, ErrorCode.Unauthorized, now);
  }
}

/** Where the value of the attribute whose header is at `at` ends (its padding not counted). */
function valueEnd(raw: Buffer, at: number): number {
  return at + 4 + raw.readUInt16BE(at + 2);
}

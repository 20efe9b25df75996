// A token bucket per source IP, in a bounded table: how many unauthenticated
// error responses (400, 401, 420, 438 before authentication succeeds), and in a
// table of their own how many Binding responses, one source may get. A 401 carries REALM and NONCE and is several times the size of the
// request that provoked it; over UDP the source can be spoofed, so without a
// limit the server would amplify floods towards a victim. An IPv6 source is
// counted by its /64: one subscriber's usual prefix, whose addresses it is free
// to rotate through, so a per-address bucket would not limit it at all.

import { parseIPv6 } from '../../net/ip.js';

/** Default: 20 responses per second per source IP, bursts of 40 (a client needs one or two per allocation). */
export const DEFAULT_UNAUTH_RESPONSES_PER_SECOND = 20;
export const DEFAULT_UNAUTH_RESPONSE_BURST = 40;
/**
 * Sources tracked at once; beyond it the least recently seen is forgotten. While the
 * table is full a new source starts with one token, not a full burst: otherwise a
 * spoofer cycling through more sources than this would get every victim's burst again
 * after each cycle.
 */
export const DEFAULT_RATE_LIMIT_SOURCES = 10_000;

/**
 * Binding answers per source, as a multiple of the error-answer limit. Binding is how
 * ICE learns a server-reflexive address (RFC 8445 §5.1.1.2), and every client behind one
 * NAT address sends its own, some as keepalives, so it needs more room than the one or
 * two 401s an allocation takes. Its answer is also smaller than a 401 (1.6x a 20-byte
 * request over IPv4, 2.2x over IPv6, against 3.6x): five times the rate of 401s costs a
 * victim of spoofing about three times the bytes.
 */
export const BINDING_LIMIT_FACTOR = 5;

/** The Binding limit that goes with an error-answer limit (BINDING_LIMIT_FACTOR times it). */
export function bindingLimitFor(errors: SourceRateLimitOptions): SourceRateLimitOptions {
  return { perSecond: errors.perSecond * BINDING_LIMIT_FACTOR, burst: errors.burst * BINDING_LIMIT_FACTOR, maxSources: errors.maxSources };
}

export interface SourceRateLimitOptions {
  /** Tokens added per second; 0 turns the limit off. */
  readonly perSecond: number;
  /** Bucket size: responses a quiet source may get back to back. */
  readonly burst: number;
  /** Most sources tracked (an LRU). */
  readonly maxSources?: number;
}

/**
 * The bucket an address is counted in: an IPv4 address on its own, an IPv6 address by
 * its /64 ("2001:db8:0:1::/64"), an IPv4-mapped IPv6 address as the IPv4 address it maps.
 */
export function sourceBucketKey(address: string): string {
  if (!address.includes(':')) return address;
  const b = parseIPv6(address);
  if (b === undefined) return address;
  if (b.subarray(0, 10).every((x) => x === 0) && b[10] === 0xff && b[11] === 0xff) return `${b[12]}.${b[13]}.${b[14]}.${b[15]}`;
  let key = '';
  for (let i = 0; i < 8; i += 2) key += `${((b[i]! << 8) | b[i + 1]!).toString(16)}:`;
  return `${key}:/64`;
}

interface Bucket {
  tokens: number;
  updatedAtMs: number;
}

export class SourceRateLimiter {
  /** Map order is recency order: a touched source is moved to the end, the first is the oldest. */
  private readonly buckets = new Map<string, Bucket>();
  private readonly maxSources: number;

  constructor(private readonly o: SourceRateLimitOptions) {
    if (!(o.perSecond >= 0) || !(o.burst >= 1)) throw new RangeError(`bad rate limit ${o.perSecond}/s burst ${o.burst}`);
    this.maxSources = o.maxSources ?? DEFAULT_RATE_LIMIT_SOURCES;
  }

  /** Sources tracked now (tests). */
  get size(): number {
    return this.buckets.size;
  }

  /** Takes one token for the bucket of `address` (see sourceBucketKey) at `nowMs`; false when it is empty (drop the response). */
  take(address: string, nowMs: number): boolean {
    if (this.o.perSecond === 0) return true;
    const source = sourceBucketKey(address);
    let bucket = this.buckets.get(source);
    if (bucket) {
      this.buckets.delete(source);
      const elapsedMs = Math.max(0, nowMs - bucket.updatedAtMs);
      bucket.tokens = Math.min(this.o.burst, bucket.tokens + (elapsedMs * this.o.perSecond) / 1000);
      bucket.updatedAtMs = nowMs;
    } else {
      let tokens = this.o.burst;
      if (this.buckets.size >= this.maxSources) {
        // Under pressure: this source may have been forgotten a moment ago. One answer (a
        // client's first request needs it), then the steady rate; never a fresh burst.
        tokens = 1;
        const oldest = this.buckets.keys().next();
        if (!oldest.done) this.buckets.delete(oldest.value);
      }
      bucket = { tokens, updatedAtMs: nowMs };
    }
    this.buckets.set(source, bucket);
    if (bucket.tokens < 1) return false;
    bucket.tokens -= 1;
    return true;
  }
}

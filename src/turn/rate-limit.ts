// A token bucket per source IP, in a bounded table: how many unauthenticated
// error responses (400, 401, 438 before authentication succeeds) one source may
// get. A 401 carries REALM and NONCE and is several times the size of the
// request that provoked it; over UDP the source can be spoofed, so without a
// limit the server would amplify floods towards a victim.

/** Default: 20 responses per second per source IP, bursts of 40 (a client needs one or two per allocation). */
export const DEFAULT_UNAUTH_RESPONSES_PER_SECOND = 20;
export const DEFAULT_UNAUTH_RESPONSE_BURST = 40;
/** Sources tracked at once; beyond it the least recently seen is forgotten (and starts again with a full bucket). */
export const DEFAULT_RATE_LIMIT_SOURCES = 10_000;

export interface SourceRateLimitOptions {
  /** Tokens added per second; 0 turns the limit off. */
  readonly perSecond: number;
  /** Bucket size: responses a quiet source may get back to back. */
  readonly burst: number;
  /** Most sources tracked (an LRU). */
  readonly maxSources?: number;
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

  /** Takes one token for `source` at `nowMs`; false when its bucket is empty (drop the response). */
  take(source: string, nowMs: number): boolean {
    if (this.o.perSecond === 0) return true;
    let bucket = this.buckets.get(source);
    if (bucket) {
      this.buckets.delete(source);
      const elapsedMs = Math.max(0, nowMs - bucket.updatedAtMs);
      bucket.tokens = Math.min(this.o.burst, bucket.tokens + (elapsedMs * this.o.perSecond) / 1000);
      bucket.updatedAtMs = nowMs;
    } else {
      if (this.buckets.size >= this.maxSources) {
        const oldest = this.buckets.keys().next();
        if (!oldest.done) this.buckets.delete(oldest.value);
      }
      bucket = { tokens: this.o.burst, updatedAtMs: nowMs };
    }
    this.buckets.set(source, bucket);
    if (bucket.tokens < 1) return false;
    bucket.tokens -= 1;
    return true;
  }
}

// Stateless nonces (RFC 8489 §9.2): base64url(timestamp || HMAC(key, timestamp
// || client IP)). Any node holding the same secret validates any other node's
// nonce, so an anycast reroute never causes a 438. The key is derived from the
// secret with its own label (keys.ts): every 401 shows an HMAC under it, so it must
// not be the secret itself, nor the key of anything else (the cluster's mesh frames).

import { createHmac, timingSafeEqual } from 'node:crypto';
import { NONCE_KEY_LABEL, deriveKey } from '../../keys.js';

const TIMESTAMP_BYTES = 4;
const MAC_BYTES = 16;
/** Clock skew between nodes we tolerate for a nonce stamped "in the future". */
const MAX_SKEW_MS = 30_000;

export type NonceVerdict = 'valid' | 'stale' | 'invalid';

export class NonceIssuer {
  private readonly key: Buffer;

  /** `secret` is --nonce-secret, else --cluster-secret, else random; the HMAC key is derived from it. */
  constructor(
    secret: Buffer,
    private readonly lifetimeMs: number,
  ) {
    this.key = deriveKey(secret, NONCE_KEY_LABEL);
  }

  private mac(timestamp: Buffer, clientAddress: string): Buffer {
    return createHmac('sha256', this.key).update(timestamp).update(clientAddress, 'utf8').digest().subarray(0, MAC_BYTES);
  }

  issue(clientAddress: string, nowMs: number): string {
    const timestamp = Buffer.alloc(TIMESTAMP_BYTES);
    timestamp.writeUInt32BE(Math.floor(nowMs / 1000) >>> 0, 0);
    return Buffer.concat([timestamp, this.mac(timestamp, clientAddress)]).toString('base64url');
  }

  /** Bound to the client IP (not its port), so a NAT rebinding keeps the nonce. */
  check(nonce: string, clientAddress: string, nowMs: number): NonceVerdict {
    if (nonce.length !== 27) return 'invalid';
    const raw = Buffer.from(nonce, 'base64url');
    if (raw.length !== TIMESTAMP_BYTES + MAC_BYTES) return 'invalid';
    const timestamp = raw.subarray(0, TIMESTAMP_BYTES);
    if (!timingSafeEqual(this.mac(timestamp, clientAddress), raw.subarray(TIMESTAMP_BYTES))) return 'invalid';
    const issuedMs = timestamp.readUInt32BE(0) * 1000;
    if (issuedMs > nowMs + MAX_SKEW_MS) return 'invalid';
    return nowMs - issuedMs >= this.lifetimeMs ? 'stale' : 'valid';
  }
}

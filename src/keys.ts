// Keys derived from the operator's secrets, one per purpose (HKDF, RFC 5869, with
// SHA-256). No secret given on the command line is ever used as a key itself: a
// 401 answer shows anyone an HMAC under the nonce key, and that key must tell
// nothing about the key that authenticates and encrypts mesh frames. The labels
// go into HKDF's "info" (RFC 5869 §3.2), so every node holding the same secret
// derives the same key for the same purpose, and different keys for different ones.

import { hkdfSync } from 'node:crypto';

/** --cluster-secret -> the AES-256-GCM key of mesh frames (cluster/mesh.ts). */
export const MESH_KEY_LABEL = 'anyturn mesh v2';
/** --nonce-secret (or, without it, --cluster-secret, or a random secret) -> the HMAC key of stateless nonces (turn/nonce.ts). */
export const NONCE_KEY_LABEL = 'anyturn nonce v1';

/** --cluster-secret (or, without a cluster, the nonce secret) -> the AES-256-GCM key of RFC 8016 mobility tickets (turn/auth/mobility-ticket.ts). */
export const MOBILITY_KEY_LABEL = 'anyturn mobility ticket v1';

export const DERIVED_KEY_BYTES = 32;

/** HKDF-SHA256(secret, no salt, label): 32 bytes. Once at start, never per packet. */
export function deriveKey(secret: Uint8Array, label: string): Buffer {
  // RFC 5869 §3.1: without a salt HKDF uses a string of zeros; the label alone separates purposes.
  return Buffer.from(hkdfSync('sha256', secret, Buffer.alloc(0), label, DERIVED_KEY_BYTES));
}

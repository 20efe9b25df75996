// HMAC-SHA1 (RFC 2104 over SHA-1, FIPS 180-4) for MESSAGE-INTEGRITY (RFC 8489 §14.5),
// computed here rather than by node:crypto. Every authenticated request and every answer
// to one takes an HMAC (six per allocation's usual life), and node:crypto's createHmac
// costs more in setting up its objects and the key than in hashing a message of 100-200
// bytes; here the key's two padded blocks are hashed once per key and kept
// (docs/scaling.md, part 1), and nothing is allocated per MAC. SHA-256 stays with
// node:crypto (MESSAGE-INTEGRITY-SHA256, nonces). Only additions, rotations and bit
// operations on the data: no branch or table index depends on the key or the message.

import { createHash } from 'node:crypto';

const BLOCK_BYTES = 64;
/** FIPS 180-4 §5.3.1: H(0). */
const INITIAL_STATE = [0x67452301, 0xefcdab89, 0x98badcfe, 0x10325476, 0xc3d2e1f0];

/** The message schedule, the running state and the last padded block: reused by every MAC. */
const schedule = new Int32Array(80);
const state = new Int32Array(5);
const tail = new Uint8Array(BLOCK_BYTES);
const innerDigest = new Uint8Array(20);

/** SHA-1's compression function (FIPS 180-4 §6.1.2) on the 64 bytes of `block` at `at`. */
function compress(h: Int32Array, block: Uint8Array, at: number): void {
  const w = schedule;
  for (let t = 0; t < 16; t++) {
    const i = at + t * 4;
    w[t] = (block[i]! << 24) | (block[i + 1]! << 16) | (block[i + 2]! << 8) | block[i + 3]!;
  }
  for (let t = 16; t < 80; t++) {
    const x = w[t - 3]! ^ w[t - 8]! ^ w[t - 14]! ^ w[t - 16]!;
    w[t] = (x << 1) | (x >>> 31);
  }
  let a = h[0]!;
  let b = h[1]!;
  let c = h[2]!;
  let d = h[3]!;
  let e = h[4]!;
  // The four rounds of 20 steps, each with its function and constant (§4.1.1, §4.2.1).
  for (let t = 0; t < 20; t++) {
    const temp = (((a << 5) | (a >>> 27)) + ((b & c) | (~b & d)) + e + 0x5a827999 + w[t]!) | 0;
    e = d;
    d = c;
    c = (b << 30) | (b >>> 2);
    b = a;
    a = temp;
  }
  for (let t = 20; t < 40; t++) {
    const temp = (((a << 5) | (a >>> 27)) + (b ^ c ^ d) + e + 0x6ed9eba1 + w[t]!) | 0;
    e = d;
    d = c;
    c = (b << 30) | (b >>> 2);
    b = a;
    a = temp;
  }
  for (let t = 40; t < 60; t++) {
    const temp = (((a << 5) | (a >>> 27)) + ((b & c) | (b & d) | (c & d)) + e + 0x8f1bbcdc + w[t]!) | 0;
    e = d;
    d = c;
    c = (b << 30) | (b >>> 2);
    b = a;
    a = temp;
  }
  for (let t = 60; t < 80; t++) {
    const temp = (((a << 5) | (a >>> 27)) + (b ^ c ^ d) + e + 0xca62c1d6 + w[t]!) | 0;
    e = d;
    d = c;
    c = (b << 30) | (b >>> 2);
    b = a;
    a = temp;
  }
  h[0] = (h[0]! + a) | 0;
  h[1] = (h[1]! + b) | 0;
  h[2] = (h[2]! + c) | 0;
  h[3] = (h[3]! + d) | 0;
  h[4] = (h[4]! + e) | 0;
}

/**
 * Hashes `data[start..end)` into `h`, which holds the state after `prefixBytes` (whole
 * blocks) already hashed, and pads the end (FIPS 180-4 §5.1.1). `data` is only read.
 */
function finishHash(h: Int32Array, data: Uint8Array, start: number, end: number, prefixBytes: number): void {
  let at = start;
  for (; end - at >= BLOCK_BYTES; at += BLOCK_BYTES) compress(h, data, at);
  const rest = end - at;
  tail.fill(0);
  for (let i = 0; i < rest; i++) tail[i] = data[at + i]!;
  tail[rest] = 0x80;
  if (rest >= BLOCK_BYTES - 8) {
    compress(h, tail, 0);
    tail.fill(0);
  }
  // The length in bits, big-endian in the last 8 bytes: messages here are far below 2^29 bytes.
  const bits = (prefixBytes + end - start) * 8;
  tail[60] = bits >>> 24;
  tail[61] = bits >>> 16;
  tail[62] = bits >>> 8;
  tail[63] = bits;
  compress(h, tail, 0);
}

function writeState(h: Int32Array, out: Uint8Array, at: number): void {
  for (let i = 0; i < 5; i++) {
    const v = h[i]!;
    out[at + i * 4] = v >>> 24;
    out[at + i * 4 + 1] = v >>> 16;
    out[at + i * 4 + 2] = v >>> 8;
    out[at + i * 4 + 3] = v;
  }
}

/** A key's inner and outer padded blocks, hashed (RFC 2104: K XOR ipad, K XOR opad), with the key bytes they were made from. */
class KeyPads {
  readonly inner = new Int32Array(5);
  readonly outer = new Int32Array(5);
  readonly key: Uint8Array;

  constructor(key: Uint8Array) {
    this.key = Uint8Array.from(key);
    // RFC 2104 §2: a key longer than the block is hashed first (no long-term key is: MD5 16 bytes, SHA-256 32).
    const k = key.length > BLOCK_BYTES ? createHash('sha1').update(key).digest() : key;
    this.inner.set(INITIAL_STATE);
    this.outer.set(INITIAL_STATE);
    tail.fill(0x36);
    for (let i = 0; i < k.length; i++) tail[i]! ^= k[i]!;
    compress(this.inner, tail, 0);
    tail.fill(0x5c);
    for (let i = 0; i < k.length; i++) tail[i]! ^= k[i]!;
    compress(this.outer, tail, 0);
  }

  /** Still the pads of `key`: a key buffer changed in place since gets new ones. Every byte compared, whatever the others. */
  holds(key: Uint8Array): boolean {
    const own = this.key;
    if (own.length !== key.length) return false;
    let difference = 0;
    for (let i = 0; i < own.length; i++) difference |= own[i]! ^ key[i]!;
    return difference === 0;
  }
}

/**
 * The pads of each key object used (the keys of static users and the decoy live as long as
 * the process; a time-limited credential's key is made per request and its pads go with it).
 */
const padsByKey = new WeakMap<Uint8Array, KeyPads>();

function padsOf(key: Uint8Array): KeyPads {
  let pads = padsByKey.get(key);
  if (pads === undefined || !pads.holds(key)) {
    pads = new KeyPads(key);
    padsByKey.set(key, pads);
  }
  return pads;
}

/** HMAC-SHA1(key, data[start..end)) written as 20 bytes into `out` at `outAt` (`out` may be `data`, outside the range). */
export function hmacSha1Into(key: Uint8Array, data: Uint8Array, start: number, end: number, out: Uint8Array, outAt: number): void {
  const pads = padsOf(key);
  state.set(pads.inner);
  finishHash(state, data, start, end, BLOCK_BYTES);
  writeState(state, innerDigest, 0);
  state.set(pads.outer);
  finishHash(state, innerDigest, 0, 20, BLOCK_BYTES);
  writeState(state, out, outAt);
}

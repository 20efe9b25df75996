// decodeText (src/stun/attributes.ts) validates with isUtf8 and decodes with Buffer's
// toString: it must answer exactly as a fatal TextDecoder that keeps a BOM (what it replaced)
// on valid, invalid and edge-case UTF-8, from a Buffer or a plain Uint8Array view.

import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { describe, it } from 'node:test';

import { decodeText } from '../../../src/stun/attributes.js';

const reference = new TextDecoder('utf-8', { fatal: true, ignoreBOM: true });

function expected(value: Uint8Array, maxBytes: number): string | undefined {
  if (value.length > maxBytes) return undefined;
  try {
    return reference.decode(value);
  } catch {
    return undefined;
  }
}

const EDGES: number[][] = [
  [],
  [0x61],
  [0xef, 0xbb, 0xbf, 0x61], // BOM, kept
  [0xef, 0xbb, 0xbf],
  [0xc0, 0x80], // overlong NUL
  [0xe0, 0x80, 0x80], // overlong
  [0xed, 0xa0, 0x80], // a surrogate
  [0xf4, 0x90, 0x80, 0x80], // above U+10FFFF
  [0xf0, 0x9f, 0x98, 0x80], // U+1F600
  [0xf0, 0x9f, 0x98], // truncated
  [0xff],
  [0x00, 0x61],
  [0xc3, 0xa9, 0x80],
];

describe('decodeText', () => {
  it('answers as a fatal, BOM-keeping TextDecoder on edge cases, random bytes and random text', () => {
    const inputs: Buffer[] = EDGES.map((b) => Buffer.from(b));
    for (let i = 0; i < 3000; i++) inputs.push(randomBytes(i % 12));
    const sample = 'aé\u30DE\u{1F600}\uFEFF:0';
    for (let i = 0; i < 500; i++) {
      let s = '';
      for (let j = 0; j < i % 9; j++) s += [...sample][(i * 7 + j * 3) % [...sample].length];
      inputs.push(Buffer.from(s, 'utf8'));
    }
    for (const input of inputs) {
      const view = new Uint8Array(input.buffer, input.byteOffset, input.length);
      assert.equal(decodeText(input, 64), expected(input, 64), input.toString('hex'));
      assert.equal(decodeText(view, 64), expected(view, 64), input.toString('hex'));
    }
  });

  it('refuses a value longer than maxBytes, valid or not', () => {
    assert.equal(decodeText(Buffer.from('abcd'), 3), undefined);
    assert.equal(decodeText(Buffer.from('abc'), 3), 'abc');
    assert.equal(decodeText(Buffer.from([0xff, 0xff]), 1), undefined);
  });
});

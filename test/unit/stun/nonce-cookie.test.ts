// The RFC 8489 §9.2 nonce cookie: "obMatJos2" and 24 security feature bits in base64,
// bit 0 the rightmost (§18.1, erratum 6290), as the RFC's own vector has it.

import { test } from 'node:test';
import assert from 'node:assert/strict';

import { NONCE_COOKIE_LENGTH, SecurityFeature, nonceCookie, nonceCookieFeatures } from '../../../src/stun/nonce-cookie.js';

test('nonce cookie: prefix and four base64 characters of the feature bits', () => {
  assert.equal(nonceCookie(0), 'obMatJos2AAAA');
  assert.equal(nonceCookie(SecurityFeature.PasswordAlgorithms), 'obMatJos2AAAB');
  assert.equal(nonceCookie(SecurityFeature.PasswordAlgorithms | SecurityFeature.UsernameAnonymity), 'obMatJos2AAAD');
  assert.equal(nonceCookie(0xffffff), 'obMatJos2////');
  assert.equal(nonceCookie(SecurityFeature.PasswordAlgorithms).length, NONCE_COOKIE_LENGTH);
});

test('nonce cookie: the features of a nonce, or undefined for an RFC 5389 nonce', () => {
  // RFC 8489 Appendix B.1: the vector carries USERHASH, and its cookie is "Username anonymity" alone.
  assert.equal(nonceCookieFeatures('obMatJos2AAACf//499k954d6OL34oL9FSTvy64sA'), SecurityFeature.UsernameAnonymity);
  for (const features of [0, 1, 2, 3, 0x800000, 0xffffff]) assert.equal(nonceCookieFeatures(`${nonceCookie(features)}rest`), features);
  assert.equal(nonceCookieFeatures('obMatJos2AAAB'), SecurityFeature.PasswordAlgorithms, 'the cookie alone');
  for (const nonce of ['', 'f//499k954d6OL34oL9FSTvy64sA', 'obMatJos2', 'obMatJos2AAA', 'obMatJos2AA=A', 'obMatJos2AA-B', 'obmatjos2AAAB', 'xobMatJos2AAAB']) {
    assert.equal(nonceCookieFeatures(nonce), undefined, JSON.stringify(nonce));
  }
});

test('nonce cookie: every character of the base64 alphabet in every place reads as base64 says, and no other character does', () => {
  // The decoder reads the four characters by hand (no regular expression, no Buffer): it must
  // agree with Node's base64 on each of the 64 values at each of the four places.
  const alphabet = 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/';
  for (let place = 0; place < 4; place++) {
    for (const c of alphabet) {
      const encoded = `${'AAAA'.slice(0, place)}${c}${'AAAA'.slice(place + 1)}`;
      const bytes = Buffer.from(encoded, 'base64');
      assert.equal(nonceCookieFeatures(`obMatJos2${encoded}x`), (bytes[0]! << 16) | (bytes[1]! << 8) | bytes[2]!, encoded);
    }
    for (const c of ['-', '_', '=', '.', ' ', '@', '[', '`', '{', ':', '\u00e9', '\u0000']) {
      const encoded = `${'AAAA'.slice(0, place)}${c}${'AAAA'.slice(place + 1)}`;
      assert.equal(nonceCookieFeatures(`obMatJos2${encoded}`), undefined, JSON.stringify(encoded));
    }
  }
});

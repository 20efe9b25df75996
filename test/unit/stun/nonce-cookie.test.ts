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

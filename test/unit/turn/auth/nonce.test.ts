// Stateless nonces: valid on every node with the same secret, bound to the client IP,
// stale after their lifetime, and impossible to forge or move to another IP.

import { describe, it } from 'node:test';
import assert from 'node:assert/strict';

import { NONCE_COOKIE_LENGTH, SecurityFeature, nonceCookie, nonceCookieFeatures } from '../../../../src/stun/nonce-cookie.js';
import { NonceIssuer } from '../../../../src/turn/auth/nonce.js';

const SECRET = Buffer.from('cluster nonce secret');
const LIFETIME_MS = 600_000;
const NOW = 1_700_000_000_000;
const CLIENT = '198.51.100.7';

describe('NonceIssuer', () => {
  it('issues the RFC 8489 nonce cookie and 16 base64url characters, valid for the same client IP', () => {
    const issuer = new NonceIssuer(SECRET, LIFETIME_MS);
    const nonce = issuer.issue(CLIENT, NOW);
    // RFC 8489 §9.2: "obMatJos2" and the feature bits; "Password algorithms" is bit 0 (0x000001).
    assert.match(nonce, /^obMatJos2AAAB[A-Za-z0-9_-]{16}$/);
    assert.equal(nonceCookieFeatures(nonce), SecurityFeature.PasswordAlgorithms);
    assert.equal(issuer.check(nonce, CLIENT, NOW), 'valid');
    assert.equal(issuer.check(nonce, CLIENT, NOW + LIFETIME_MS - 1), 'valid');
  });

  it('answers a nonce it found valid before the same way: stale at the same instant, invalid for another IP or tampered', () => {
    const issuer = new NonceIssuer(SECRET, LIFETIME_MS);
    const nonce = issuer.issue(CLIENT, NOW);
    for (let i = 0; i < 3; i++) assert.equal(issuer.check(nonce, CLIENT, NOW + i * 1000), 'valid');
    assert.equal(issuer.check(nonce, '198.51.100.8', NOW), 'invalid');
    assert.equal(issuer.check(`${nonce.slice(0, -1)}${nonce.endsWith('A') ? 'B' : 'A'}`, CLIENT, NOW), 'invalid');
    assert.equal(issuer.check(nonce, CLIENT, NOW + LIFETIME_MS - 1), 'valid');
    assert.equal(issuer.check(nonce, CLIENT, NOW + LIFETIME_MS), 'stale');
    assert.equal(issuer.check(nonce, CLIENT, NOW + LIFETIME_MS + 1), 'stale');
  });

  it("remembers a valid nonce for its own IP only: another IP gets the MAC's answer (invalid, never valid or stale) and changes nothing for the first", () => {
    const issuer = new NonceIssuer(SECRET, LIFETIME_MS);
    const nonce = issuer.issue(CLIENT, NOW);
    assert.equal(issuer.check(nonce, CLIENT, NOW), 'valid');
    for (const other of ['198.51.100.8', '2001:db8::7', `${CLIENT} `, '']) {
      assert.equal(issuer.check(nonce, other, NOW), 'invalid', `from ${JSON.stringify(other)}`);
      assert.equal(issuer.check(nonce, other, NOW + LIFETIME_MS), 'invalid', `from ${JSON.stringify(other)}, at its end`);
    }
    assert.equal(issuer.check(nonce, CLIENT, NOW + 1000), 'valid');
    assert.equal(issuer.check(nonce, CLIENT, NOW + LIFETIME_MS), 'stale');
    assert.equal(issuer.check(nonce, '198.51.100.8', NOW + LIFETIME_MS), 'invalid');
  });

  it('a remembered nonce goes stale at the very millisecond an unknown one would, whatever its timestamp', () => {
    for (const seconds of [0, 1, 63, 64, 0x7fffffff, 0x80000000, 0xfffffff0, 1_700_000_123]) {
      const issuer = new NonceIssuer(SECRET, LIFETIME_MS);
      const at = seconds * 1000;
      const nonce = issuer.issue(CLIENT, at + 999);
      assert.equal(issuer.check(nonce, CLIENT, at + 999), 'valid', `issued at ${seconds} s`);
      assert.equal(issuer.check(nonce, CLIENT, at + LIFETIME_MS - 1), 'valid', `remembered, issued at ${seconds} s`);
      assert.equal(issuer.check(nonce, CLIENT, at + LIFETIME_MS), 'stale', `remembered, issued at ${seconds} s`);
      assert.equal(new NonceIssuer(SECRET, LIFETIME_MS).check(nonce, CLIENT, at + LIFETIME_MS), 'stale', `unknown, issued at ${seconds} s`);
    }
  });

  it('goes stale once its lifetime has passed', () => {
    const issuer = new NonceIssuer(SECRET, LIFETIME_MS);
    const nonce = issuer.issue(CLIENT, NOW);
    assert.equal(issuer.check(nonce, CLIENT, NOW + LIFETIME_MS), 'stale');
    assert.equal(issuer.check(nonce, CLIENT, NOW + 10 * LIFETIME_MS), 'stale');
  });

  it('is valid on another issuer with the same secret (another cluster node), invalid with another secret', () => {
    const nonce = new NonceIssuer(SECRET, LIFETIME_MS).issue(CLIENT, NOW);
    assert.equal(new NonceIssuer(Buffer.from(SECRET), LIFETIME_MS).check(nonce, CLIENT, NOW + 1000), 'valid');
    assert.equal(new NonceIssuer(Buffer.from('another secret'), LIFETIME_MS).check(nonce, CLIENT, NOW + 1000), 'invalid');
  });

  it('is bound to the client IP (not the port)', () => {
    const issuer = new NonceIssuer(SECRET, LIFETIME_MS);
    const nonce = issuer.issue(CLIENT, NOW);
    assert.equal(issuer.check(nonce, '198.51.100.8', NOW), 'invalid');
    assert.equal(issuer.check(nonce, '2001:db8::7', NOW), 'invalid');
  });

  it('rejects tampered nonces: any changed character, a moved timestamp, wrong length, garbage', () => {
    const issuer = new NonceIssuer(SECRET, LIFETIME_MS);
    const nonce = issuer.issue(CLIENT, NOW);
    const cookie = nonce.slice(0, NONCE_COOKIE_LENGTH);
    const body = nonce.slice(NONCE_COOKIE_LENGTH);
    // The body is 12 bytes in 16 characters: no padding bits, every character counts.
    for (let i = 0; i < nonce.length; i++) {
      const c = nonce[i] === 'A' ? 'B' : 'A';
      const tampered = nonce.slice(0, i) + c + nonce.slice(i + 1);
      assert.equal(issuer.check(tampered, CLIENT, NOW), 'invalid', `character ${i}`);
    }
    // A later timestamp with the original MAC (an attempt to make an old nonce fresh again).
    const raw = Buffer.from(body, 'base64url');
    raw.writeUInt32BE(raw.readUInt32BE(0) + 3600, 0);
    assert.equal(issuer.check(cookie + raw.toString('base64url'), CLIENT, NOW + 3_600_000 + LIFETIME_MS), 'invalid');
    // The body with another cookie: the MAC covers the feature bits (bid-down, RFC 8489 §9.2.1).
    assert.equal(issuer.check(nonceCookie(0) + body, CLIENT, NOW), 'invalid', 'feature bits cleared');
    assert.equal(issuer.check(nonceCookie(SecurityFeature.PasswordAlgorithms | SecurityFeature.UsernameAnonymity) + body, CLIENT, NOW), 'invalid');
    // An RFC 5389-era nonce of this server (27 characters, no cookie) is no longer valid: 438, then a fresh one.
    assert.equal(issuer.check(body + 'A'.repeat(11), CLIENT, NOW), 'invalid');
    for (const garbage of ['', 'x', nonce.slice(1), `${nonce}A`, '!'.repeat(29), ' '.repeat(29), 'A'.repeat(29), cookie + '!'.repeat(16)]) {
      assert.equal(issuer.check(garbage, CLIENT, NOW), 'invalid', JSON.stringify(garbage));
    }
  });

  it('rejects a nonce stamped too far in the future, tolerating small clock skew between nodes', () => {
    const issuer = new NonceIssuer(SECRET, LIFETIME_MS);
    const fromAheadNode = issuer.issue(CLIENT, NOW + 20_000);
    assert.equal(issuer.check(fromAheadNode, CLIENT, NOW), 'valid', '20 s of skew is fine');
    const farFuture = issuer.issue(CLIENT, NOW + 3_600_000);
    assert.equal(issuer.check(farFuture, CLIENT, NOW), 'invalid');
  });

  it('announces the features it was built with, and its nonces are valid only under them', () => {
    const anonymous = new NonceIssuer(SECRET, LIFETIME_MS, SecurityFeature.PasswordAlgorithms | SecurityFeature.UsernameAnonymity);
    const nonce = anonymous.issue(CLIENT, NOW);
    assert.match(nonce, /^obMatJos2AAAD/);
    assert.equal(anonymous.check(nonce, CLIENT, NOW), 'valid');
    assert.equal(new NonceIssuer(SECRET, LIFETIME_MS).check(nonce, CLIENT, NOW), 'valid', 'the features are in the nonce, not the checker');
  });

  it('checks the nonces it issued as another node (the MAC alone) does: valid, stale, invalid for another IP or ahead of the clock', () => {
    const issuer = new NonceIssuer(SECRET, LIFETIME_MS);
    const issued = [issuer.issue(CLIENT, NOW), issuer.issue('2001:db8::7', NOW + 500), issuer.issue(CLIENT, NOW + 3_600_000)];
    const offsets = [-3_600_000, -31_000, -1, 0, 999, 1000, LIFETIME_MS - 1001, LIFETIME_MS - 1, LIFETIME_MS, LIFETIME_MS + 1, 10 * LIFETIME_MS];
    // The issuer remembers what it issued (no MAC to check); an issuer with the same secret has only the MAC.
    for (const nonce of issued) {
      for (const address of [CLIENT, '2001:db8::7', '198.51.100.8']) {
        for (const offset of offsets) {
          const elsewhere = new NonceIssuer(SECRET, LIFETIME_MS).check(nonce, address, NOW + offset);
          assert.equal(issuer.check(nonce, address, NOW + offset), elsewhere, `${nonce} from ${address} at +${offset} ms`);
        }
      }
    }
  });

  it('a flood of 401s to other IPs forgets what it issued, never a verdict', () => {
    const issuer = new NonceIssuer(SECRET, LIFETIME_MS);
    const nonce = issuer.issue(CLIENT, NOW);
    // More than the issuer remembers (10,000), each to another IP (IPv6: never the same one twice).
    for (let i = 0; i < 10_050; i++) issuer.issue(`2001:db8::${i.toString(16)}`, NOW);
    assert.equal(issuer.check(nonce, CLIENT, NOW + 1000), 'valid');
    assert.equal(issuer.check(nonce, '198.51.100.8', NOW + 1000), 'invalid');
    assert.equal(issuer.check(nonce, CLIENT, NOW + LIFETIME_MS), 'stale');
  });

  it('answers a burst of 401s to one IP with the nonce the MAC gives, also when IPs and seconds alternate', () => {
    const issuer = new NonceIssuer(SECRET, LIFETIME_MS);
    const fresh = (address: string, at: number): string => new NonceIssuer(SECRET, LIFETIME_MS).issue(address, at);
    const steps: [string, number][] = [
      [CLIENT, NOW],
      [CLIENT, NOW + 999],
      ['198.51.100.8', NOW + 999],
      [CLIENT, NOW + 999],
      [CLIENT, NOW + 1000],
      [CLIENT, NOW + 1000],
      [CLIENT, NOW - 1],
      ['198.51.100.8', NOW - 1],
    ];
    for (const [address, at] of steps) assert.equal(issuer.issue(address, at), fresh(address, at), `${address} at ${at}`);
  });

  it('issues the same nonce within one second for one IP, and different ones across seconds or IPs', () => {
    const issuer = new NonceIssuer(SECRET, LIFETIME_MS);
    assert.equal(issuer.issue(CLIENT, NOW), issuer.issue(CLIENT, NOW + 999));
    assert.notEqual(issuer.issue(CLIENT, NOW), issuer.issue(CLIENT, NOW + 1000));
    assert.notEqual(issuer.issue(CLIENT, NOW), issuer.issue('198.51.100.8', NOW));
  });
});

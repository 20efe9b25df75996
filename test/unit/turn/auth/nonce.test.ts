// Stateless nonces: valid on every node with the same secret, bound to the client IP,
// stale after their lifetime, and impossible to forge or move to another IP.

import { describe, it } from 'node:test';
import assert from 'node:assert/strict';

import { NonceIssuer } from '../../../../src/turn/auth/nonce.js';

const SECRET = Buffer.from('cluster nonce secret');
const LIFETIME_MS = 600_000;
const NOW = 1_700_000_000_000;
const CLIENT = '198.51.100.7';

describe('NonceIssuer', () => {
  it('issues a 27-character base64url nonce that checks as valid for the same client IP', () => {
    const issuer = new NonceIssuer(SECRET, LIFETIME_MS);
    const nonce = issuer.issue(CLIENT, NOW);
    assert.match(nonce, /^[A-Za-z0-9_-]{27}$/);
    assert.equal(issuer.check(nonce, CLIENT, NOW), 'valid');
    assert.equal(issuer.check(nonce, CLIENT, NOW + LIFETIME_MS - 1), 'valid');
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
    for (let i = 0; i < nonce.length; i++) {
      const c = nonce[i] === 'A' ? 'B' : 'A';
      const tampered = nonce.slice(0, i) + c + nonce.slice(i + 1);
      // The last character carries 2 padding bits base64url may decode identically; skip it if so.
      if (Buffer.from(tampered, 'base64url').equals(Buffer.from(nonce, 'base64url'))) continue;
      assert.equal(issuer.check(tampered, CLIENT, NOW), 'invalid', `character ${i}`);
    }
    // A later timestamp with the original MAC (an attempt to make an old nonce fresh again).
    const raw = Buffer.from(nonce, 'base64url');
    raw.writeUInt32BE(raw.readUInt32BE(0) + 3600, 0);
    assert.equal(issuer.check(raw.toString('base64url'), CLIENT, NOW + 3_600_000 + LIFETIME_MS), 'invalid');
    for (const garbage of ['', 'x', nonce.slice(1), `${nonce}A`, '!'.repeat(27), ' '.repeat(27), 'A'.repeat(27)]) {
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

  it('issues the same nonce within one second for one IP, and different ones across seconds or IPs', () => {
    const issuer = new NonceIssuer(SECRET, LIFETIME_MS);
    assert.equal(issuer.issue(CLIENT, NOW), issuer.issue(CLIENT, NOW + 999));
    assert.notEqual(issuer.issue(CLIENT, NOW), issuer.issue(CLIENT, NOW + 1000));
    assert.notEqual(issuer.issue(CLIENT, NOW), issuer.issue('198.51.100.8', NOW));
  });
});

// One key per purpose, derived from the operator's secrets (src/keys.ts): the key
// of the nonces every 401 exposes is neither the secret nor the mesh key, and every
// node (and every worker) holding the same secret derives the same keys.

import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { createHmac, hkdfSync } from 'node:crypto';

import { buildConfig } from '../../src/config/index.js';
import { MESH_KEY_LABEL, NONCE_KEY_LABEL, deriveKey } from '../../src/keys.js';
import { NonceIssuer } from '../../src/turn/auth/nonce.js';
import { workerConfig } from '../../src/workers/worker.js';
import { BASE } from '../helpers/config.js';

const CLUSTER_SECRET = 'a cluster secret of enough bytes';
const CLIENT = '198.51.100.7';
const NOW = 1_700_000_000_000;

/** The nonce after its RFC 8489 cookie (13 characters): timestamp (4 bytes) || MAC. */
function bodyOf(nonce: string): Buffer {
  return Buffer.from(nonce.slice(13), 'base64url');
}

/** The MAC of a nonce as computed under `key`: HMAC-SHA256 of timestamp || cookie || client IP, truncated. */
function macUnder(key: Buffer, nonce: string, clientAddress: string): Buffer {
  const raw = bodyOf(nonce);
  return createHmac('sha256', key)
    .update(raw.subarray(0, 4))
    .update(nonce.slice(0, 13), 'latin1')
    .update(clientAddress, 'utf8')
    .digest()
    .subarray(0, raw.length - 4);
}

function macOf(nonce: string): Buffer {
  return bodyOf(nonce).subarray(4);
}

describe('derived keys', () => {
  it('the nonce key and the mesh key differ from each other and from the secret', () => {
    const secret = Buffer.from(CLUSTER_SECRET);
    const mesh = deriveKey(secret, MESH_KEY_LABEL);
    const nonce = deriveKey(secret, NONCE_KEY_LABEL);
    assert.equal(mesh.length, 32);
    assert.equal(nonce.length, 32);
    assert.notDeepEqual(mesh, nonce);
    assert.equal(mesh.includes(secret.subarray(0, 8)), false);
    assert.equal(nonce.includes(secret.subarray(0, 8)), false);
    assert.notDeepEqual(mesh.subarray(0, secret.length), secret);
    assert.notDeepEqual(nonce.subarray(0, secret.length), secret);
    // HKDF-SHA256 with the label as info (RFC 5869): what another implementation of the protocol would compute.
    assert.deepEqual(mesh, Buffer.from(hkdfSync('sha256', secret, Buffer.alloc(0), 'anyturn mesh v2', 32)));
    assert.deepEqual(nonce, Buffer.from(hkdfSync('sha256', secret, Buffer.alloc(0), 'anyturn nonce v1', 32)));
    // Deterministic per secret, different across secrets.
    assert.deepEqual(deriveKey(Buffer.from(CLUSTER_SECRET), MESH_KEY_LABEL), mesh);
    assert.notDeepEqual(deriveKey(Buffer.from('another cluster secret of bytes'), MESH_KEY_LABEL), mesh);
  });

  it('a nonce cannot be verified with an HMAC under the raw secret, nor under the mesh key', () => {
    const secret = Buffer.from(CLUSTER_SECRET);
    const nonce = new NonceIssuer(secret, 600_000).issue(CLIENT, NOW);
    assert.notDeepEqual(macOf(nonce), macUnder(secret, nonce, CLIENT), 'the 401 is no oracle for the cluster secret itself');
    assert.notDeepEqual(macOf(nonce), macUnder(deriveKey(secret, MESH_KEY_LABEL), nonce, CLIENT), 'nor for the mesh key');
    assert.deepEqual(macOf(nonce), macUnder(deriveKey(secret, NONCE_KEY_LABEL), nonce, CLIENT), 'it is an HMAC under the nonce key');
  });

  it("every node and every worker of a cluster accepts the others' nonces", () => {
    const node = (id: string, mesh: string) =>
      buildConfig({ ...BASE, 'node-id': id, 'redis-url': 'redis://127.0.0.1:6379', 'mesh-address': mesh, 'cluster-secret': CLUSTER_SECRET, workers: 2 });
    const a = node('a', '127.0.0.1:7000');
    const b = node('b', '127.0.0.2:7000');
    const issuers = [a, b].flatMap((config) => [
      new NonceIssuer(config.nonceSecret, 600_000),
      // The primary hands its workers the secret (random per start unless given); they derive the same key.
      ...[0, 1].map(
        (index) =>
          new NonceIssuer(
            workerConfig(config, { type: 'init', index, count: 2, listeningPort: 3478, nonceSecret: config.nonceSecret.toString('hex') }).nonceSecret,
            600_000,
          ),
      ),
    ]);
    for (const issuer of issuers) {
      const nonce = issuer.issue(CLIENT, NOW);
      for (const other of issuers) assert.equal(other.check(nonce, CLIENT, NOW + 1000), 'valid');
      assert.notDeepEqual(macOf(nonce), macUnder(Buffer.from(CLUSTER_SECRET), nonce, CLIENT));
    }
  });

  it('--nonce-secret, when given, keys the nonces (through its own derivation), not --cluster-secret', () => {
    const config = buildConfig({
      ...BASE,
      'redis-url': 'redis://127.0.0.1:6379',
      'mesh-address': '127.0.0.1:7000',
      'cluster-secret': CLUSTER_SECRET,
      'nonce-secret': 'a separate nonce secret, 32 bytes',
    });
    const nonce = new NonceIssuer(config.nonceSecret, 600_000).issue(CLIENT, NOW);
    assert.equal(new NonceIssuer(Buffer.from('a separate nonce secret, 32 bytes'), 600_000).check(nonce, CLIENT, NOW), 'valid');
    assert.equal(new NonceIssuer(Buffer.from(CLUSTER_SECRET), 600_000).check(nonce, CLIENT, NOW), 'invalid');
    assert.notDeepEqual(macOf(nonce), macUnder(Buffer.from('a separate nonce secret, 32 bytes'), nonce, CLIENT));
  });
});

// Long-term credentials: static users and coturn's time-limited shared-secret
// scheme (--use-auth-secret). Expected values computed with openssl/md5sum/sha256sum.

import { describe, it } from 'node:test';
import assert from 'node:assert/strict';

import { PasswordAlgorithm } from '../../../../src/stun/constants.js';
import { CredentialStore, MADE_KEYS_MAX, restApiExpirySeconds, restApiPassword } from '../../../../src/turn/auth/credentials.js';

const REALM = 'example.org';
const NOW_MS = 1_700_000_000_000;

function keysOf(lookup: ReturnType<CredentialStore['keysFor']>): string[] {
  assert.ok(lookup.ok, `expected keys, got ${lookup.ok ? '' : lookup.reason}`);
  return lookup.keys.map((k) => k.toString('hex'));
}

describe('restApiPassword', () => {
  it('is base64(HMAC-SHA1(secret, username)), as coturn computes it', () => {
    // echo -n "1700000000:alice" | openssl dgst -sha1 -hmac "north-secret" -binary | base64
    assert.equal(restApiPassword('north-secret', '1700000000:alice'), 'g+jb180fcj+xlpA/2mP60OdIgU0=');
    assert.equal(restApiPassword('north-secret', '1700000000'), 'KSVUc7JbPzLiz2XwcNjXxFmbP04=');
    assert.notEqual(restApiPassword('south-secret', '1700000000:alice'), restApiPassword('north-secret', '1700000000:alice'));
  });
});

describe('restApiExpirySeconds', () => {
  it('reads the timestamp before the first colon', () => {
    assert.equal(restApiExpirySeconds('1700000000:alice'), 1700000000);
    assert.equal(restApiExpirySeconds('1700000000'), 1700000000);
    assert.equal(restApiExpirySeconds('1700000000:'), 1700000000);
    assert.equal(restApiExpirySeconds('1700000000:alice:extra'), 1700000000);
    assert.equal(restApiExpirySeconds('0'), 0);
    assert.equal(restApiExpirySeconds('9999999999'), 9999999999);
  });

  it('refuses an expiry of more than 10 digits: a Unix time past the year 2286 is a credential that never expires', () => {
    for (const tooLong of ['99999999999', '999999999999', '10000000000:alice', '01700000000']) {
      assert.equal(restApiExpirySeconds(tooLong), undefined, tooLong);
    }
    const store = new CredentialStore({ realm: REALM, users: new Map(), authSecrets: ['north-secret'] });
    assert.deepEqual(store.keysFor('999999999999:alice', NOW_MS), { ok: false, reason: 'unknown-user' });
    assert.equal(store.keysFor('9999999999:alice', NOW_MS).ok, true);
  });

  it('rejects usernames that are not time-limited credentials', () => {
    for (const garbage of [
      '',
      'alice',
      ':1700000000',
      'alice:1700000000',
      '17000000x0:alice',
      '-1700000000',
      '+1700000000',
      ' 1700000000',
      '1700000000 :a',
      '1e9',
      '0x10',
      '1700000000.5',
      '1234567890123',
      '１７００',
    ]) {
      assert.equal(restApiExpirySeconds(garbage), undefined, JSON.stringify(garbage));
    }
  });
});

describe('CredentialStore', () => {
  it('derives MD5(username:realm:password) for a static user, and SHA-256 on request', () => {
    const store = new CredentialStore({ realm: REALM, users: new Map([['alice', 'alice-pw']]), authSecrets: [] });
    // echo -n "alice:example.org:alice-pw" | md5sum / sha256sum
    assert.deepEqual(keysOf(store.keysFor('alice', NOW_MS)), ['8ea972d8db3f90d047e3cb6b6e1ad9da']);
    assert.deepEqual(keysOf(store.keysFor('alice', NOW_MS, PasswordAlgorithm.SHA256)), ['4fdbcf490f83371231bdf7cb5ac198bcbb77d41386943626caaa0aa51e9da969']);
    assert.deepEqual(store.keysFor('bob', NOW_MS), { ok: false, reason: 'unknown-user' });
    assert.equal(store.hasAnyCredentials, true);
  });

  it('takes "0x" + 32 hex digits as the MD5 key itself (coturn), with no SHA-256 key', () => {
    const store = new CredentialStore({ realm: REALM, users: new Map([['alice', '0x8EA972D8DB3F90D047E3CB6B6E1AD9DA']]), authSecrets: [] });
    assert.deepEqual(keysOf(store.keysFor('alice', NOW_MS)), ['8ea972d8db3f90d047e3cb6b6e1ad9da']);
    assert.deepEqual(store.keysFor('alice', NOW_MS, PasswordAlgorithm.SHA256), { ok: false, reason: 'unknown-user' });
  });

  it('resolves a USERHASH to a static user', () => {
    const store = new CredentialStore({ realm: REALM, users: new Map([['alice', 'alice-pw']]), authSecrets: [] });
    // echo -n "alice:example.org" | sha256sum
    const hash = Buffer.from('435b7933096a304d3c734cfb833ec9075bd47ab1c0160321aed31c06a8c7009e', 'hex');
    assert.equal(store.usernameForUserhash(hash), 'alice');
    assert.equal(store.usernameForUserhash(Buffer.alloc(32)), undefined);
  });

  it('gives one key per auth secret for a time-limited user until it expires', () => {
    const store = new CredentialStore({ realm: REALM, users: new Map(), authSecrets: ['new-secret', 'old-secret'] });
    const username = `${NOW_MS / 1000 + 60}:alice`;
    const keys = keysOf(store.keysFor(username, NOW_MS));
    assert.equal(keys.length, 2);
    assert.notEqual(keys[0], keys[1]);
    assert.deepEqual(store.keysFor(`${NOW_MS / 1000}:alice`, NOW_MS), { ok: false, reason: 'expired' }, 'expiry == now is expired');
    assert.deepEqual(store.keysFor(`${NOW_MS / 1000 - 1}`, NOW_MS), { ok: false, reason: 'expired' });
    assert.deepEqual(store.keysFor('alice', NOW_MS), { ok: false, reason: 'unknown-user' });
    assert.deepEqual(store.keysFor('', NOW_MS), { ok: false, reason: 'unknown-user' });
  });

  it("keeps a time-limited user's keys (one answer for every request, each algorithm its own), and still refuses them once the username expires", () => {
    const store = new CredentialStore({ realm: REALM, users: new Map(), authSecrets: ['new-secret', 'old-secret'] });
    const username = `${NOW_MS / 1000 + 60}:alice`;
    const first = store.keysFor(username, NOW_MS);
    assert.equal(store.keysFor(username, NOW_MS + 1000), first, 'the same answer, and so the same key objects (their HMAC pads are kept per key object)');
    // What a store with nothing kept computes: the same bytes.
    const fresh = new CredentialStore({ realm: REALM, users: new Map(), authSecrets: ['new-secret', 'old-secret'] });
    assert.deepEqual(keysOf(first), keysOf(fresh.keysFor(username, NOW_MS)));
    const sha = store.keysFor(username, NOW_MS, PasswordAlgorithm.SHA256);
    assert.notDeepEqual(keysOf(sha), keysOf(first), 'SHA-256 keys are not the MD5 ones');
    assert.equal(keysOf(sha)[0]!.length, 64, '32-byte SHA-256 keys');
    assert.equal(store.keysFor(username, NOW_MS, PasswordAlgorithm.SHA256), sha);
    assert.deepEqual(store.keysFor(username, (NOW_MS / 1000 + 60) * 1000), { ok: false, reason: 'expired' }, 'kept keys do not outlive the username');
  });

  it(`keeps at most ${MADE_KEYS_MAX} time-limited users' keys: more usernames (made-up ones too) start the map over`, () => {
    const store = new CredentialStore({ realm: REALM, users: new Map(), authSecrets: ['secret'] });
    const expiry = NOW_MS / 1000 + 60;
    const first = store.keysFor(`${expiry}:first`, NOW_MS);
    for (let i = 1; i < MADE_KEYS_MAX; i++) store.keysFor(`${expiry}:user${i}`, NOW_MS);
    assert.equal(store.keysFor(`${expiry}:first`, NOW_MS), first, `still kept with ${MADE_KEYS_MAX} usernames`);
    store.keysFor(`${expiry}:one-too-many`, NOW_MS);
    const again = store.keysFor(`${expiry}:first`, NOW_MS);
    assert.notEqual(again, first, 'made again after the map started over');
    assert.deepEqual(keysOf(again), keysOf(first));
  });

  it("keeps a static user's SHA-256 key once made", () => {
    const store = new CredentialStore({ realm: REALM, users: new Map([['bob', 'hunter2']]), authSecrets: [] });
    const sha = store.keysFor('bob', NOW_MS, PasswordAlgorithm.SHA256);
    assert.equal(store.keysFor('bob', NOW_MS, PasswordAlgorithm.SHA256), sha);
    assert.notEqual(store.keysFor('bob', NOW_MS), sha);
  });

  it('treats a timestamp-shaped username as unknown when the secret scheme is off', () => {
    const store = new CredentialStore({ realm: REALM, users: new Map(), authSecrets: [] });
    assert.deepEqual(store.keysFor(`${NOW_MS / 1000 + 60}:alice`, NOW_MS), { ok: false, reason: 'unknown-user' });
    assert.equal(store.hasAnyCredentials, false);
  });

  it('prefers a static user over the secret scheme for the same name', () => {
    const name = `${NOW_MS / 1000 + 60}:alice`;
    const store = new CredentialStore({ realm: REALM, users: new Map([[name, 'static-pw']]), authSecrets: ['s'] });
    assert.equal(keysOf(store.keysFor(name, NOW_MS)).length, 1);
  });
});

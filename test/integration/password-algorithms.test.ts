// RFC 8489 §9.2 password algorithms over real UDP on 127.0.0.1: the test client as an
// RFC 8489 client (PASSWORD-ALGORITHMS echoed, SHA-256 chosen, MESSAGE-INTEGRITY-SHA256,
// USERHASH when the cookie asks for it) relays through the server with static and with
// time-limited credentials, and the same server still serves an RFC 5389 client (MD5,
// MESSAGE-INTEGRITY) unchanged.

import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { buildConfig, type RawOptions } from '../../src/config/index.js';
import { createLogger } from '../../src/ops/log.js';
import { type RunningServer, startServer } from '../../src/server.js';
import { Attr, Method, PasswordAlgorithm } from '../../src/stun/constants.js';
import { longTermKey, verifyIntegritySha1, verifyIntegritySha256 } from '../../src/stun/integrity.js';
import { getAttribute } from '../../src/stun/message.js';
import { SecurityFeature, nonceCookieFeatures } from '../../src/stun/nonce-cookie.js';
import { restApiPassword } from '../../src/turn/auth/credentials.js';
import { type Credentials, type Endpoint, TestPeer, TestTurnClient, codeOf } from '../helpers/turn-client.js';

const REALM = 'anyturn.sha256.test';
const SECRET = 'rest-api-secret-for-the-sha256-test';

async function start(extra: RawOptions, minPort: number): Promise<{ server: RunningServer; endpoint: Endpoint }> {
  const server = await startServer(
    buildConfig({
      'listening-ip': ['127.0.0.1'],
      'listening-port': 0,
      'min-port': minPort,
      'max-port': minPort + 99,
      realm: REALM,
      'allow-loopback-peers': true,
      ...extra,
    }),
    { logger: createLogger('silent') },
  );
  return { server, endpoint: { address: '127.0.0.1', port: server.listening.find((l) => l.transport === 'udp')!.port } };
}

/** Allocates, permits `peer`, and relays one datagram each way; every answer signed as the client's algorithm says. */
async function relayOnce(client: TestTurnClient, peer: TestPeer): Promise<void> {
  const { response, relayed } = await client.allocate();
  assert.equal(response.code, 200);
  assert.ok(relayed);
  for (const r of [response, await client.createPermission(peer.endpoint)]) {
    assert.equal(r.code, 200);
    if (client.rfc8489) {
      assert.equal(r.message.integrityOffset, -1, 'no SHA-1 MESSAGE-INTEGRITY for an RFC 8489 client');
      assert.ok(verifyIntegritySha256(r.message.raw, r.message.integritySha256Offset, client.key()), 'MESSAGE-INTEGRITY-SHA256 under the SHA-256 key');
    } else {
      assert.equal(r.message.integritySha256Offset, -1, 'an RFC 5389 client gets no attribute it does not know');
      assert.ok(verifyIntegritySha1(r.message.raw, r.message.integrityOffset, client.key()), 'MESSAGE-INTEGRITY under the MD5 key');
    }
  }
  client.sendIndication(peer.endpoint, Buffer.from('to the peer'));
  const [got] = await peer.waitFor(1);
  assert.equal(got?.data.toString(), 'to the peer');
  peer.send(Buffer.from('to the client'), relayed);
  const [back] = await client.waitForReceived(1);
  assert.equal(back?.data.toString(), 'to the client');
}

describe('RFC 8489 password algorithms over real UDP', () => {
  let statics: { server: RunningServer; endpoint: Endpoint };
  let rest: { server: RunningServer; endpoint: Endpoint };
  const open: { close(): void }[] = [];
  const alice: Credentials = { username: 'alice', password: 'wonderland', realm: REALM };

  before(async () => {
    statics = await start({ user: [`${alice.username}:${alice.password}`] }, 45100);
    rest = await start({ 'use-auth-secret': true, 'static-auth-secret': [SECRET] }, 45200);
  });
  after(async () => {
    for (const o of open) o.close();
    await statics.server.stop();
    await rest.server.stop();
  });

  async function client(endpoint: Endpoint, credentials: Credentials, rfc8489: boolean): Promise<{ client: TestTurnClient; peer: TestPeer }> {
    const c = await TestTurnClient.open(endpoint, credentials);
    c.rfc8489 = rfc8489;
    const peer = await TestPeer.open();
    open.push(c, peer);
    return { client: c, peer };
  }

  it('the 401 offers SHA-256 then MD5 under a nonce cookie; an RFC 8489 client takes SHA-256 and USERHASH and relays', async () => {
    const { client: c, peer } = await client(statics.endpoint, alice, true);
    await c.ensureNonce();
    assert.deepEqual(c.offeredAlgorithms, Buffer.from([0, 2, 0, 0, 0, 1, 0, 0]));
    assert.equal(nonceCookieFeatures(c.nonce!), SecurityFeature.PasswordAlgorithms | SecurityFeature.UsernameAnonymity);
    assert.equal(c.algorithm, PasswordAlgorithm.SHA256);
    assert.equal(c.useUserhash, true);
    assert.deepEqual(c.key(), longTermKey(alice.username, REALM, alice.password, PasswordAlgorithm.SHA256));
    await relayOnce(c, peer);
  });

  it('an RFC 5389 client (MD5, no PASSWORD-ALGORITHM) relays through the same server unchanged', async () => {
    const { client: c, peer } = await client(statics.endpoint, alice, false);
    await relayOnce(c, peer);
    assert.equal(c.algorithm, PasswordAlgorithm.MD5);
  });

  it('time-limited (REST) credentials with SHA-256; no "Username anonymity" (a hash hides the expiry)', async () => {
    const username = `${Math.floor(Date.now() / 1000) + 3600}:carol`;
    const carol: Credentials = { username, password: restApiPassword(SECRET, username), realm: REALM };
    const { client: c, peer } = await client(rest.endpoint, carol, true);
    await c.ensureNonce();
    assert.equal(nonceCookieFeatures(c.nonce!), SecurityFeature.PasswordAlgorithms);
    assert.equal(c.useUserhash, false);
    await relayOnce(c, peer);
    const md5 = await client(rest.endpoint, carol, false);
    await relayOnce(md5.client, md5.peer);
  });

  it('a PASSWORD-ALGORITHMS with SHA-256 struck on the path gets 400, never an MD5 success', async () => {
    const { client: c } = await client(statics.endpoint, alice, true);
    await c.ensureNonce();
    c.offeredAlgorithms = Buffer.from([0, 1, 0, 0]);
    c.algorithm = PasswordAlgorithm.MD5;
    const { buf, transactionId } = c.build(Method.Refresh);
    const m = await c.transact(buf, transactionId);
    assert.ok(m);
    assert.equal(codeOf(m), 400);
    assert.equal(getAttribute(m, Attr.Nonce), undefined);
  });
});

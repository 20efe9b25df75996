// --alternate-server (RFC 8489 §10, RFC 8656 §7.2): every Allocate, once
// authenticated, gets 300 Try Alternate with ALTERNATE-SERVER, round robin
// over the list; other requests are answered as ever. A client that follows
// the redirect allocates on the alternate with the same credentials.

import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { buildConfig, type RawOptions } from '../../src/config/index.js';
import { createLogger } from '../../src/ops/log.js';
import { type RunningServer, startServer } from '../../src/server.js';
import { decodeAddress } from '../../src/stun/address.js';
import { Attr, MessageClass, Method } from '../../src/stun/constants.js';
import { verifyIntegritySha1 } from '../../src/stun/integrity.js';
import { getAttribute } from '../../src/stun/message.js';
import { type Endpoint, TestTurnClient, codeOf } from '../helpers/turn-client.js';

const REALM = 'alternate.test';
const NONCE_SECRET = 'alternate-test-nonce-secret-0123456789';
const USER = 'alt';
const PASSWORD = 'alt-password';

async function start(ports: [number, number], extra: RawOptions = {}): Promise<{ server: RunningServer; endpoint: Endpoint }> {
  const server = await startServer(
    buildConfig({
      'listening-ip': ['127.0.0.1'],
      'listening-port': 0,
      realm: REALM,
      'nonce-secret': NONCE_SECRET,
      user: [`${USER}:${PASSWORD}`],
      'min-port': ports[0],
      'max-port': ports[1],
      ...extra,
    }),
    { logger: createLogger('silent') },
  );
  return { server, endpoint: { address: '127.0.0.1', port: server.listening[0]!.port } };
}

describe('--alternate-server', () => {
  const servers: RunningServer[] = [];
  const clients: TestTurnClient[] = [];
  let front: Endpoint;
  let frontServer: RunningServer;
  let alternates: Endpoint[];
  const open = async (to: Endpoint): Promise<TestTurnClient> => {
    const c = await TestTurnClient.open(to, { username: USER, password: PASSWORD, realm: REALM });
    clients.push(c);
    return c;
  };

  before(async () => {
    const b = await start([41500, 41549]);
    const c = await start([41550, 41599]);
    servers.push(b.server, c.server);
    alternates = [b.endpoint, c.endpoint];
    const a = await start([41600, 41649], { 'alternate-server': alternates.map((e) => `${e.address}:${e.port}`) });
    servers.push(a.server);
    front = a.endpoint;
    frontServer = a.server;
  });
  after(async () => {
    for (const c of clients) c.close();
    await Promise.all(servers.map((s) => s.stop()));
  });

  it('answers successive Allocates with 300 and the alternates in turn, authenticated with MESSAGE-INTEGRITY', async () => {
    const seen: Endpoint[] = [];
    for (let i = 0; i < 4; i++) {
      const c = await open(front);
      const r = await c.allocate();
      const m = r.response.message;
      assert.equal(m.cls, MessageClass.ErrorResponse);
      assert.equal(codeOf(m), 300, 'Try Alternate');
      const value = getAttribute(m, Attr.AlternateServer);
      assert.ok(value, 'ALTERNATE-SERVER present');
      // ALTERNATE-SERVER is encoded like MAPPED-ADDRESS: not XORed.
      const alt = decodeAddress(value);
      assert.ok(alt);
      seen.push({ address: alt.address, port: alt.port });
      assert.ok(m.integrityOffset >= 0, 'the 300 carries MESSAGE-INTEGRITY');
      assert.ok(verifyIntegritySha1(m.raw, m.integrityOffset, c.key()), "MESSAGE-INTEGRITY verifies with the client's key");
    }
    assert.deepEqual(seen, [alternates[0], alternates[1], alternates[0], alternates[1]]);
    assert.equal(frontServer.engine.allocations, 0, 'nothing was allocated on the redirecting node');
    assert.equal(frontServer.counters.requests.get('allocate 300'), 4);
  });

  it('redirects only after authentication: an unauthenticated Allocate still gets 401', async () => {
    const c = await open(front);
    const { buf, transactionId } = c.build(Method.Allocate, () => undefined, { auth: false });
    const m = await c.transact(buf, transactionId);
    assert.ok(m);
    assert.equal(codeOf(m), 401);
    assert.equal(getAttribute(m, Attr.AlternateServer), undefined);
  });

  it('leaves other requests alone: Binding 200, Refresh and CreatePermission 437 without an allocation', async () => {
    const c = await open(front);
    assert.deepEqual(await c.binding(), { address: '127.0.0.1', port: c.localPort });
    const refresh = await c.refresh(600);
    assert.equal(refresh.code, 437);
    assert.equal(getAttribute(refresh.message, Attr.AlternateServer), undefined);
    const permission = await c.createPermission({ address: '127.0.0.1', port: 9 });
    assert.equal(permission.code, 437);
  });

  it('a client that follows the redirect allocates on the alternate with the same credentials', async () => {
    const c = await open(front);
    const r = await c.allocate();
    assert.equal(r.response.code, 300);
    const alt = decodeAddress(getAttribute(r.response.message, Attr.AlternateServer)!)!;
    const followed = await open({ address: alt.address, port: alt.port });
    const allocated = await followed.allocate();
    assert.equal(allocated.response.code, 200);
    assert.ok(allocated.relayed);
    assert.equal((await followed.refresh(0)).code, 200);
  });
});

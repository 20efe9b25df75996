// Every error code the server answers, over real UDP on 127.0.0.1, with the
// attributes RFC 8489 §9.2.4 / RFC 8656 require in each error response; and
// the inputs the server must drop without a word.

import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { buildConfig, type RawOptions } from '../../src/config/index.js';
import { createLogger } from '../../src/ops/log.js';
import { type RunningServer, startServer } from '../../src/server.js';
import { decodeUnknownAttributes, encodeAddressFamily, encodeChannelNumber, encodeRequestedTransport } from '../../src/stun/attributes.js';
import { AddressFamily, Attr, MessageClass, Method, TRANSPORT_UDP } from '../../src/stun/constants.js';
import { longTermKey, verifyIntegritySha1 } from '../../src/stun/integrity.js';
import { type StunMessage, getAttribute } from '../../src/stun/message.js';
import { MessageWriter } from '../../src/stun/writer.js';
import { NonceIssuer } from '../../src/turn/auth/nonce.js';
import { type Credentials, type Endpoint, TestTurnClient, attributeTypes, codeOf, reasonOf } from '../helpers/turn-client.js';

const REALM = 'anyturn.errors.test';
const NONCE_SECRET = 'errors-test-nonce-secret-0123456789';
const NONCE_LIFETIME_SECONDS = 600;
const USERS = [
  'u400',
  'u400b',
  'u401',
  'u403',
  'u420',
  'u437a',
  'u437b',
  'u437c',
  'u438',
  'u440',
  'u441a',
  'u441b',
  'u442',
  'u443',
  'u486',
  'uretx',
  'udrop',
] as const;
type User = (typeof USERS)[number];

function cred(name: string, password = `pw-${name}`): Credentials {
  return { username: name, password, realm: REALM };
}

/** A public address used only as XOR-PEER-ADDRESS data: nothing is ever sent to it. */
const PUBLIC_PEER: Endpoint = { address: '8.8.8.8', port: 3478 };

/**
 * An error response with this code, a reason phrase, and MESSAGE-INTEGRITY
 * valid under `key` (authenticated request) or none at all (key undefined).
 */
function assertError(m: StunMessage | undefined, code: number, key: Buffer | undefined): asserts m is StunMessage {
  assert.ok(m, `expected a ${code} response, got none`);
  assert.equal(m.cls, MessageClass.ErrorResponse, `expected an error response, got class ${m.cls}`);
  assert.equal(codeOf(m), code, `expected ${code}, got ${codeOf(m)} ${reasonOf(m)}`);
  // An unauthenticated request's source may be spoofed: its answer carries no reason phrase (fewer bytes, RFC 8489 §14.8).
  if (key) assert.ok(reasonOf(m).length > 0, 'ERROR-CODE has a reason phrase');
  else assert.equal(reasonOf(m), '', 'no reason phrase in an answer to an unauthenticated request');
  assert.equal(m.integritySha256Offset, -1, 'no MESSAGE-INTEGRITY-SHA256 (the request used SHA-1)');
  if (key) {
    assert.ok(m.integrityOffset >= 0, `${code} to an authenticated request carries MESSAGE-INTEGRITY`);
    assert.ok(verifyIntegritySha1(m.raw, m.integrityOffset, key), "MESSAGE-INTEGRITY verifies with the requester's key");
  } else {
    assert.equal(m.integrityOffset, -1, `${code} carries no MESSAGE-INTEGRITY`);
  }
}

async function startWith(extra: RawOptions): Promise<{ server: RunningServer; endpoint: Endpoint }> {
  const server = await startServer(
    buildConfig({
      'listening-ip': ['127.0.0.1'],
      'listening-port': 0,
      realm: REALM,
      'nonce-secret': NONCE_SECRET,
      'nonce-lifetime': NONCE_LIFETIME_SECONDS,
      ...extra,
    }),
    { logger: createLogger('silent') },
  );
  return { server, endpoint: { address: '127.0.0.1', port: server.listening[0]!.port } };
}

describe('error responses over real UDP', () => {
  let server: RunningServer;
  let endpoint: Endpoint;
  const clients: TestTurnClient[] = [];
  const open = async (user: User | string, password?: string): Promise<TestTurnClient> => {
    const c = await TestTurnClient.open(endpoint, cred(user, password));
    clients.push(c);
    return c;
  };

  before(async () => {
    ({ server, endpoint } = await startWith({
      'min-port': 43000,
      'max-port': 43499,
      user: USERS.map((u) => `${u}:pw-${u}`),
      'user-quota': 1,
    }));
  });
  after(async () => {
    for (const c of clients) c.close();
    await server.stop();
  });

  it('400 for an Allocate without REQUESTED-TRANSPORT', async () => {
    const c = await open('u400');
    const r = await c.request(Method.Allocate);
    assertError(r.message, 400, c.key());
    assert.equal(server.engine.allocations, 0);
  });

  it('400 for ChannelBind with channel 0x3FFF, with 0x8000, and without XOR-PEER-ADDRESS; 400 for CreatePermission without XOR-PEER-ADDRESS', async () => {
    const c = await open('u400b');
    assert.equal((await c.allocate()).response.code, 200);
    for (const channel of [0x3fff, 0x8000]) {
      const r = await c.channelBind(channel, PUBLIC_PEER);
      assertError(r.message, 400, c.key());
    }
    const noPeer = await c.request(Method.ChannelBind, (w) => w.add(Attr.ChannelNumber, encodeChannelNumber(0x4000)));
    assertError(noPeer.message, 400, c.key());
    const noNumber = await c.request(Method.ChannelBind, (w) => w.addXorAddress(Attr.XorPeerAddress, PUBLIC_PEER.address, PUBLIC_PEER.port));
    assertError(noNumber.message, 400, c.key());
    const noPeerPermission = await c.request(Method.CreatePermission);
    assertError(noPeerPermission.message, 400, c.key());
    assert.equal((await c.refresh(0)).code, 200);
  });

  it('400 for malformed or contradictory attributes and for an unknown method', async () => {
    const c = await open('u400');
    const udp = (w: MessageWriter): void => void w.add(Attr.RequestedTransport, encodeRequestedTransport(TRANSPORT_UDP));
    const cases: [string, number, (w: MessageWriter) => void][] = [
      ['REQUESTED-TRANSPORT of 2 bytes', Method.Allocate, (w) => w.add(Attr.RequestedTransport, Buffer.from([17, 0]))],
      [
        'REQUESTED- and ADDITIONAL-ADDRESS-FAMILY',
        Method.Allocate,
        (w) => {
          udp(w);
          w.add(Attr.RequestedAddressFamily, encodeAddressFamily(AddressFamily.IPv4));
          w.add(Attr.AdditionalAddressFamily, encodeAddressFamily(AddressFamily.IPv6));
        },
      ],
      [
        'ADDITIONAL-ADDRESS-FAMILY IPv4',
        Method.Allocate,
        (w) => {
          udp(w);
          w.add(Attr.AdditionalAddressFamily, encodeAddressFamily(AddressFamily.IPv4));
        },
      ],
      [
        'RESERVATION-TOKEN with EVEN-PORT',
        Method.Allocate,
        (w) => {
          udp(w);
          w.add(Attr.ReservationToken, Buffer.alloc(8, 1));
          w.add(Attr.EvenPort, Buffer.from([0x80]));
        },
      ],
      [
        'LIFETIME of 2 bytes',
        Method.Allocate,
        (w) => {
          udp(w);
          w.add(Attr.Lifetime, Buffer.from([0, 1]));
        },
      ],
      // 0x00A-0x00C are RFC 6062's Connect, ConnectionBind and ConnectionAttempt: 0x020 is unassigned.
      ['unknown method 0x020', 0x020, () => undefined],
    ];
    for (const [name, method, decorate] of cases) {
      const r = await c.request(method, decorate);
      assert.equal(r.code, 400, name);
      assertError(r.message, 400, c.key());
    }
    assert.equal(server.engine.allocations, 0);
  });

  it('400 without REALM, NONCE or USERNAME beside MESSAGE-INTEGRITY, and no credentials echoed', async () => {
    const c = await open('u400');
    await c.ensureNonce();
    const nonce = c.nonce!;
    const variants: [string, (w: MessageWriter) => void][] = [
      [
        'no NONCE',
        (w) => {
          w.addText(Attr.Username, 'u400');
          w.addText(Attr.Realm, REALM);
        },
      ],
      [
        'no REALM',
        (w) => {
          w.addText(Attr.Username, 'u400');
          w.addText(Attr.Nonce, nonce);
        },
      ],
      [
        'no USERNAME',
        (w) => {
          w.addText(Attr.Realm, REALM);
          w.addText(Attr.Nonce, nonce);
        },
      ],
    ];
    for (const [name, credentialsPart] of variants) {
      const transactionId = randomBytes(12);
      const w = new MessageWriter(Method.Allocate, MessageClass.Request, transactionId);
      w.add(Attr.RequestedTransport, encodeRequestedTransport(TRANSPORT_UDP));
      credentialsPart(w);
      w.addIntegrity(c.key());
      const m = await c.transact(w.toBuffer(), transactionId);
      assertError(m, 400, undefined);
      // RFC 8489 §9.2.4: SHOULD NOT include USERNAME, USERHASH, NONCE or REALM.
      for (const type of [Attr.Username, Attr.Userhash, Attr.Nonce, Attr.Realm]) {
        assert.equal(getAttribute(m, type), undefined, `${name}: attribute 0x${type.toString(16)} not in the 400`);
      }
    }
    assert.equal(server.engine.allocations, 0);
  });

  it('401 without MESSAGE-INTEGRITY: REALM and NONCE, nothing else of the credentials', async () => {
    const c = await open('u401');
    const { buf, transactionId } = c.build(Method.Allocate, (w) => w.add(Attr.RequestedTransport, encodeRequestedTransport(TRANSPORT_UDP)), { auth: false });
    const m = await c.transact(buf, transactionId);
    assertError(m, 401, undefined);
    assert.equal(getAttribute(m, Attr.Realm)?.toString('utf8'), REALM);
    const nonce = getAttribute(m, Attr.Nonce);
    assert.ok(nonce && nonce.length > 0, 'NONCE present');
    for (const type of [Attr.Username, Attr.Userhash, Attr.MessageIntegrity, Attr.MessageIntegritySha256]) {
      assert.equal(getAttribute(m, type), undefined, `attribute 0x${type.toString(16)} not in the 401`);
    }
    // Every TURN method is challenged the same way; a FINGERPRINT in the request gets one back.
    for (const method of [Method.Refresh, Method.CreatePermission, Method.ChannelBind]) {
      const req = c.build(method, () => undefined, { auth: false, fingerprint: true });
      const challenge = await c.transact(req.buf, req.transactionId);
      assertError(challenge, 401, undefined);
      assert.deepEqual(attributeTypes(challenge), [Attr.ErrorCode, Attr.Realm, Attr.Nonce, Attr.PasswordAlgorithms, Attr.Fingerprint]);
    }
  });

  it('401 alike for a wrong password and an unknown user (same code, reason, attribute types)', async () => {
    const failuresBefore = server.counters.authFailures;
    const wrongPassword = await open('u401', 'not-the-password');
    const unknownUser = await open('nobody-here', 'whatever');
    const a = await wrongPassword.allocate();
    const b = await unknownUser.allocate();
    assertError(a.response.message, 401, undefined);
    assertError(b.response.message, 401, undefined);
    assert.equal(reasonOf(a.response.message), reasonOf(b.response.message));
    assert.deepEqual(attributeTypes(a.response.message), attributeTypes(b.response.message));
    // RFC 8489 §9.2.4: a 401 for a bad USERNAME or key MUST carry PASSWORD-ALGORITHMS.
    assert.deepEqual(attributeTypes(a.response.message), [Attr.ErrorCode, Attr.Realm, Attr.Nonce, Attr.PasswordAlgorithms]);
    assert.ok(server.counters.authFailures > failuresBefore);
    assert.equal(server.engine.allocations, 0);
  });

  it('403 for CreatePermission and ChannelBind to a peer the policy denies', async () => {
    const c = await open('u403');
    assert.equal((await c.allocate()).response.code, 200);
    const refusalsBefore = server.counters.peerPolicyRefusals;
    assertError((await c.createPermission({ address: '10.0.0.1', port: 9 })).message, 403, c.key());
    assertError((await c.channelBind(0x4000, { address: '10.0.0.1', port: 9 })).message, 403, c.key());
    // All or nothing (RFC 8656 §9.2): one denied peer fails the whole request.
    assertError((await c.createPermission(PUBLIC_PEER, { address: '169.254.169.254', port: 80 })).message, 403, c.key());
    assert.equal(server.counters.peerPolicyRefusals, refusalsBefore + 3);
    assert.equal((await c.refresh(0)).code, 200);
  });

  it('420 for an unknown comprehension-required attribute after authentication, listed in UNKNOWN-ATTRIBUTES', async () => {
    const c = await open('u420');
    const r = await c.allocate((w) => w.add(0x7f00, Buffer.from([1, 2, 3, 4])));
    assertError(r.response.message, 420, c.key());
    const unknown = decodeUnknownAttributes(getAttribute(r.response.message, Attr.UnknownAttributes) ?? Buffer.alloc(1));
    assert.deepEqual(unknown, [0x7f00]);
    assert.equal(server.engine.allocations, 0, 'no allocation made');
    // An unknown comprehension-optional attribute is ignored (RFC 8489 §14).
    const ok = await c.allocate((w) => w.add(0xbf00, Buffer.from([1, 2, 3, 4])));
    assert.equal(ok.response.code, 200);
    assert.equal((await c.refresh(0)).code, 200);
  });

  it('437 for a second Allocate on the same 5-tuple with a new transaction id', async () => {
    const c = await open('u437a');
    assert.equal((await c.allocate()).response.code, 200);
    const again = await c.allocate();
    assertError(again.response.message, 437, c.key());
    assert.equal((await c.refresh(0)).code, 200);
  });

  it('437 for a Refresh after LIFETIME 0 deleted the allocation', async () => {
    const c = await open('u437b');
    assert.equal((await c.allocate()).response.code, 200);
    const deleted = await c.refresh(0);
    assert.equal(deleted.code, 200);
    assert.equal(getAttribute(deleted.message, Attr.Lifetime)?.readUInt32BE(0), 0);
    assertError((await c.refresh()).message, 437, c.key());
    assertError((await c.refresh(0)).message, 437, c.key());
  });

  it('437 for CreatePermission and ChannelBind without an allocation', async () => {
    const c = await open('u437c');
    assertError((await c.createPermission(PUBLIC_PEER)).message, 437, c.key());
    assertError((await c.channelBind(0x4000, PUBLIC_PEER)).message, 437, c.key());
  });

  it('438 for a stale nonce, with a fresh NONCE and the REALM; the fresh nonce works', async () => {
    const c = await open('u438');
    const lifetimeMs = NONCE_LIFETIME_SECONDS * 1000;
    const stale = new NonceIssuer(Buffer.from(NONCE_SECRET), lifetimeMs).issue('127.0.0.1', Date.now() - 2 * lifetimeMs);
    c.nonce = stale;
    const { buf, transactionId } = c.build(Method.Allocate, (w) => w.add(Attr.RequestedTransport, encodeRequestedTransport(TRANSPORT_UDP)));
    const m = await c.transact(buf, transactionId);
    assertError(m, 438, undefined);
    assert.equal(getAttribute(m, Attr.Realm)?.toString('utf8'), REALM);
    const fresh = getAttribute(m, Attr.Nonce)?.toString('utf8');
    assert.ok(fresh && fresh !== stale, 'a new NONCE');
    assert.equal(server.engine.allocations, 0);
    c.nonce = fresh;
    assert.equal((await c.allocate()).response.code, 200);
    assert.equal((await c.refresh(0)).code, 200);
  });

  it('440 for REQUESTED-ADDRESS-FAMILY IPv6 on a server without an IPv6 relay address', async () => {
    const c = await open('u440');
    const r = await c.allocate((w) => w.add(Attr.RequestedAddressFamily, encodeAddressFamily(AddressFamily.IPv6)));
    assertError(r.response.message, 440, c.key());
    const unknownFamily = await c.allocate((w) => w.add(Attr.RequestedAddressFamily, encodeAddressFamily(0x03)));
    assertError(unknownFamily.response.message, 440, c.key());
    assert.equal(server.engine.allocations, 0);
  });

  it("441 when another user sends requests on the first user's allocation 5-tuple", async () => {
    const owner = await open('u441a');
    assert.equal((await owner.allocate()).response.code, 200);
    const intruder = TestTurnClient.share(owner, cred('u441b'));
    const intruderKey = longTermKey('u441b', REALM, 'pw-u441b');
    assertError((await intruder.refresh()).message, 441, intruderKey);
    assertError((await intruder.refresh(0)).message, 441, intruderKey);
    assertError((await intruder.createPermission(PUBLIC_PEER)).message, 441, intruderKey);
    assertError((await intruder.channelBind(0x4000, PUBLIC_PEER)).message, 441, intruderKey);
    // The allocation is untouched and still the owner's.
    assert.equal((await owner.refresh()).code, 200);
    assert.equal((await owner.refresh(0)).code, 200);
  });

  it('442 for REQUESTED-TRANSPORT 132 (SCTP); 400 for TCP (6) over UDP (RFC 6062 §5.1: a TCP allocation needs a TCP or TLS connection)', async () => {
    const c = await open('u442');
    const r = await c.request(Method.Allocate, (w) => w.add(Attr.RequestedTransport, encodeRequestedTransport(132)));
    assertError(r.message, 442, c.key());
    const tcp = await c.request(Method.Allocate, (w) => w.add(Attr.RequestedTransport, encodeRequestedTransport(6)));
    assertError(tcp.message, 400, c.key());
    assert.equal(server.engine.allocations, 0);
  });

  it('443 for an IPv6 XOR-PEER-ADDRESS on an IPv4 allocation', async () => {
    const c = await open('u443');
    assert.equal((await c.allocate()).response.code, 200);
    const v6Peer = { address: '2001:4860:4860::8888', port: 3478 };
    assertError((await c.createPermission(v6Peer)).message, 443, c.key());
    assertError((await c.channelBind(0x4000, v6Peer)).message, 443, c.key());
    // A Refresh asking for the other family is a mismatch too (RFC 8656 §7.3).
    const refresh = await c.request(Method.Refresh, (w) => w.add(Attr.RequestedAddressFamily, encodeAddressFamily(AddressFamily.IPv6)));
    assertError(refresh.message, 443, c.key());
    // A malformed XOR-PEER-ADDRESS (family 3) is a 400, not a 443.
    const badFamily = await c.request(Method.CreatePermission, (w) => w.add(Attr.XorPeerAddress, Buffer.from([0, 3, 0, 1, 1, 2, 3, 4])));
    assertError(badFamily.message, 400, c.key());
    assert.equal((await c.refresh(0)).code, 200);
  });

  it('486 for a second allocation of the same user from another socket (--user-quota 1)', async () => {
    const first = await open('u486');
    const second = await open('u486');
    assert.equal((await first.allocate()).response.code, 200);
    const refusedBefore = server.counters.quotaRefusals;
    const r = await second.allocate();
    assertError(r.response.message, 486, second.key());
    assert.equal(server.counters.quotaRefusals, refusedBefore + 1);
    assert.equal((await first.refresh(0)).code, 200);
  });

  it('a retransmitted Allocate (same bytes) gets the same success response, and one allocation', async () => {
    const c = await open('uretx');
    await c.ensureNonce();
    const created = server.counters.allocationsCreated;
    const { buf, transactionId } = c.build(Method.Allocate, (w) => w.add(Attr.RequestedTransport, encodeRequestedTransport(TRANSPORT_UDP)));
    c.sendRaw(buf);
    const [first] = await c.waitForResponses(transactionId, 1);
    assert.ok(first && codeOf(first) === 200);
    c.sendRaw(buf);
    const responses = await c.waitForResponses(transactionId, 2);
    assert.equal(responses.length, 2);
    assert.deepEqual(responses[1]!.raw, first.raw);
    assert.equal(server.counters.allocationsCreated, created + 1);
    assert.equal((await c.refresh(0)).code, 200);
  });

  it('drops, without an answer, a success response, a bad FINGERPRINT and a cookieless non-Binding request', async () => {
    const c = await open('udrop');
    await c.ensureNonce();
    const drops = server.counters.drops;

    // Each probe is followed by a Binding request on the same socket: once that is
    // answered, the server has handled the probe, and any answer to it has arrived.
    const probe = async (buf: Buffer, transactionId: Buffer): Promise<void> => {
      c.sendRaw(buf);
      assert.ok(await c.binding(), 'the server still answers Binding');
      assert.equal(c.responses.get(transactionId.toString('hex')), undefined, 'no answer to the dropped input');
    };

    const before1 = drops.unexpected_class;
    const successId = randomBytes(12);
    const success = new MessageWriter(Method.Binding, MessageClass.SuccessResponse, successId).addXorAddress(Attr.XorMappedAddress, '127.0.0.1', 1).toBuffer();
    await probe(success, successId);
    const errorId = randomBytes(12);
    await probe(new MessageWriter(Method.Allocate, MessageClass.ErrorResponse, errorId).addErrorCode(400, 'Bad Request').toBuffer(), errorId);
    assert.equal(drops.unexpected_class, before1 + 2);

    const before2 = drops.bad_fingerprint;
    const { buf: fp, transactionId: fpId } = c.build(Method.Binding, () => undefined, { auth: false, fingerprint: true });
    fp[fp.length - 1]! ^= 0x01;
    await probe(fp, fpId);
    const { buf: fpAllocate, transactionId: fpAllocateId } = c.build(
      Method.Allocate,
      (w) => w.add(Attr.RequestedTransport, encodeRequestedTransport(TRANSPORT_UDP)),
      { fingerprint: true },
    );
    fpAllocate[fpAllocate.length - 2]! ^= 0x80;
    await probe(fpAllocate, fpAllocateId);
    assert.equal(drops.bad_fingerprint, before2 + 2);

    const before3 = drops.malformed;
    const cookielessId = randomBytes(12);
    const cookieless = new MessageWriter(Method.Allocate, MessageClass.Request, cookielessId, 0x01020304)
      .add(Attr.RequestedTransport, encodeRequestedTransport(TRANSPORT_UDP))
      .toBuffer();
    await probe(cookieless, cookielessId);
    assert.equal(drops.malformed, before3 + 1);
    assert.equal(server.engine.allocations, 0);

    // A cookieless Binding is an RFC 3489 client and is answered (RFC 8489 §11), with MAPPED-ADDRESS.
    const classicId = randomBytes(12);
    const classic = new MessageWriter(Method.Binding, MessageClass.Request, classicId, 0x01020304).toBuffer();
    c.sendRaw(classic);
    const [answer] = await c.waitForResponses(classicId, 1);
    assert.ok(answer, 'an RFC 3489 Binding request is answered');
    assert.equal(codeOf(answer), 200);
    assert.equal(answer.raw.readUInt32BE(4), 0x01020304, 'the 128-bit transaction id comes back whole');
    assert.ok(getAttribute(answer, Attr.MappedAddress));
  });
});

describe('508 over real UDP (--total-quota 1)', () => {
  let server: RunningServer;
  let endpoint: Endpoint;
  const clients: TestTurnClient[] = [];
  before(async () => {
    ({ server, endpoint } = await startWith({ 'min-port': 43500, 'max-port': 43999, user: ['one:pw-one', 'two:pw-two'], 'total-quota': 1 }));
  });
  after(async () => {
    for (const c of clients) c.close();
    await server.stop();
  });

  it("508 for an Allocate beyond the node's total quota; freed capacity is usable again", async () => {
    const one = await TestTurnClient.open(endpoint, cred('one'));
    const two = await TestTurnClient.open(endpoint, cred('two'));
    clients.push(one, two);
    assert.equal((await one.allocate()).response.code, 200);
    const r = await two.allocate();
    assertError(r.response.message, 508, two.key());
    assert.equal(server.engine.allocations, 1);
    assert.equal((await one.refresh(0)).code, 200);
    assert.equal((await two.allocate()).response.code, 200);
    assert.equal((await two.refresh(0)).code, 200);
  });
});

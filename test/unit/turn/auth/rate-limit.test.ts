// The per-source limit on unauthenticated error answers (turn/rate-limit.ts),
// alone and inside the engine: ManualClock time, fakes of our transport seams.

import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';

import { createLogger } from '../../../../src/ops/log.js';
import { MemoryAllocationStore } from '../../../../src/store/memory.js';
import { decodeErrorCode, encodeRequestedTransport } from '../../../../src/stun/attributes.js';
import { Attr, MessageClass, Method, TRANSPORT_UDP } from '../../../../src/stun/constants.js';
import { longTermKey } from '../../../../src/stun/integrity.js';
import { decodeMessage, getAttribute } from '../../../../src/stun/message.js';
import { MessageWriter } from '../../../../src/stun/writer.js';
import { CredentialStore } from '../../../../src/turn/auth/credentials.js';
import { ManualClock } from '../../../../src/turn/clock.js';
import { EngineCounters } from '../../../../src/turn/counters.js';
import { TurnEngine } from '../../../../src/turn/engine.js';
import { NonceIssuer } from '../../../../src/turn/auth/nonce.js';
import { createPeerPolicy } from '../../../../src/turn/peer-policy.js';
import { BINDING_LIMIT_FACTOR, SourceRateLimiter, type SourceRateLimitOptions, sourceBucketKey } from '../../../../src/turn/auth/rate-limit.js';
import { FakeClientPath, FakeRelayFactory } from '../../../helpers/fake-io.js';

const REALM = 'example.org';
const CLIENT_A = '198.51.100.10';
const CLIENT_B = '198.51.100.11';

describe('SourceRateLimiter', () => {
  it('gives a quiet source its burst, then the rate', () => {
    const clock = new ManualClock();
    const limiter = new SourceRateLimiter({ perSecond: 20, burst: 40 });
    let allowed = 0;
    for (let i = 0; i < 100; i++) if (limiter.take(CLIENT_A, clock.now())) allowed++;
    assert.equal(allowed, 40, 'the burst, at one instant');
    clock.advance(49);
    assert.equal(limiter.take(CLIENT_A, clock.now()), false, '49 ms refill less than one token');
    clock.advance(1);
    assert.equal(limiter.take(CLIENT_A, clock.now()), true, 'one token per 50 ms at 20/s');
    assert.equal(limiter.take(CLIENT_A, clock.now()), false);
    // A steady 20/s for 10 s all pass; the 21st in a second does not.
    let steady = 0;
    for (let ms = 0; ms < 10_000; ms += 50) {
      clock.advance(50);
      if (limiter.take(CLIENT_A, clock.now())) steady++;
    }
    assert.equal(steady, 200);
    // Idle for an hour: back to the burst, not more.
    clock.advance(3_600_000);
    allowed = 0;
    for (let i = 0; i < 100; i++) if (limiter.take(CLIENT_A, clock.now())) allowed++;
    assert.equal(allowed, 40);
  });

  it('keeps sources apart', () => {
    const clock = new ManualClock();
    const limiter = new SourceRateLimiter({ perSecond: 1, burst: 2 });
    assert.equal(limiter.take(CLIENT_A, clock.now()), true);
    assert.equal(limiter.take(CLIENT_A, clock.now()), true);
    assert.equal(limiter.take(CLIENT_A, clock.now()), false);
    assert.equal(limiter.take(CLIENT_B, clock.now()), true, 'another source has its own bucket');
    assert.equal(limiter.take('2001:db8::1', clock.now()), true);
  });

  it('counts an IPv6 source by its /64, an IPv4 source by its address', () => {
    const clock = new ManualClock();
    const limiter = new SourceRateLimiter({ perSecond: 1, burst: 2 });
    // One subscriber rotating through its /64 shares one bucket.
    assert.equal(limiter.take('2001:db8:0:1::1', clock.now()), true);
    assert.equal(limiter.take('2001:db8:0:1:ffff:ffff:ffff:fffe', clock.now()), true);
    assert.equal(limiter.take('2001:db8:0:1:1234::5', clock.now()), false, 'the /64 has used its burst');
    assert.equal(limiter.take('2001:db8:0:2::1', clock.now()), true, 'the next /64 is another source');
    // IPv4 addresses next to each other are separate sources.
    assert.equal(limiter.take('192.0.2.1', clock.now()), true);
    assert.equal(limiter.take('192.0.2.1', clock.now()), true);
    assert.equal(limiter.take('192.0.2.1', clock.now()), false);
    assert.equal(limiter.take('192.0.2.2', clock.now()), true);
    assert.equal(limiter.size, 4);
  });

  it('keys: /64 for IPv6 in any spelling, the IPv4 address for IPv4 and IPv4-mapped IPv6', () => {
    assert.equal(sourceBucketKey('2001:db8::1'), '2001:db8:0:0::/64');
    assert.equal(sourceBucketKey('2001:0DB8:0000:0000:ffff::9'), '2001:db8:0:0::/64');
    assert.equal(sourceBucketKey('fe80::1%eth0'), 'fe80:0:0:0::/64');
    assert.equal(sourceBucketKey('::1'), '0:0:0:0::/64');
    assert.equal(sourceBucketKey('::ffff:192.0.2.7'), '192.0.2.7');
    assert.equal(sourceBucketKey('192.0.2.7'), '192.0.2.7');
    assert.equal(sourceBucketKey('not:an:address'), 'not:an:address', 'left as given, never throws');
  });

  it('tracks at most maxSources, forgetting the least recently seen', () => {
    const clock = new ManualClock();
    const limiter = new SourceRateLimiter({ perSecond: 1, burst: 1, maxSources: 3 });
    for (const s of ['a', 'b', 'c']) assert.equal(limiter.take(s, clock.now()), true);
    assert.equal(limiter.take('a', clock.now()), false, "a's bucket is empty");
    // 'a' was touched last; 'b' is now the oldest and goes when 'd' comes.
    assert.equal(limiter.take('d', clock.now()), true);
    assert.equal(limiter.size, 3);
    assert.equal(limiter.take('a', clock.now()), false, 'a is still tracked (and still empty)');
    assert.equal(limiter.take('b', clock.now()), true, 'b was forgotten: a full bucket again');
    // 10,000 distinct sources by default: the table stays bounded.
    const big = new SourceRateLimiter({ perSecond: 20, burst: 40 });
    for (let i = 0; i < 25_000; i++) big.take(`10.${i >> 16}.${(i >> 8) & 255}.${i & 255}`, clock.now());
    assert.equal(big.size, 10_000);
  });

  it('gives a source seen while the table is full one token, not a fresh burst', () => {
    const clock = new ManualClock();
    const limiter = new SourceRateLimiter({ perSecond: 1, burst: 40, maxSources: 3 });
    let victim = 0;
    for (let i = 0; i < 100; i++) if (limiter.take('victim', clock.now())) victim++;
    assert.equal(victim, 40, 'the burst, once');
    // A spoofer pushes the victim out of the table with three other sources...
    for (const s of ['x', 'y', 'z']) limiter.take(s, clock.now());
    // ...and the victim, seen again at once, is new again: one answer, then the rate.
    victim = 0;
    for (let i = 0; i < 100; i++) if (limiter.take('victim', clock.now())) victim++;
    assert.equal(victim, 1, 'one token for a source first seen under pressure');
    clock.advance(1000);
    assert.equal(limiter.take('victim', clock.now()), true, 'then the steady rate');
    assert.equal(limiter.take('victim', clock.now()), false);
    // Without pressure a new source still gets the whole burst.
    const calm = new SourceRateLimiter({ perSecond: 1, burst: 40, maxSources: 3 });
    let fresh = 0;
    for (let i = 0; i < 100; i++) if (calm.take('a', clock.now())) fresh++;
    assert.equal(fresh, 40);
  });

  it('is off at 0 per second', () => {
    const limiter = new SourceRateLimiter({ perSecond: 0, burst: 1 });
    for (let i = 0; i < 1000; i++) assert.equal(limiter.take(CLIENT_A, 0), true);
    assert.equal(limiter.size, 0);
  });
});

/** An engine on fakes, with the limit given. */
function harness(limit?: SourceRateLimitOptions) {
  const clock = new ManualClock();
  const counters = new EngineCounters();
  const path = new FakeClientPath('udp', '192.0.2.1', 3478);
  const engine = new TurnEngine({
    nodeId: 'node-a',
    credentials: new CredentialStore({ realm: REALM, users: new Map([['alice', 'alice-pw']]), authSecrets: [] }),
    nonces: new NonceIssuer(Buffer.from('a nonce secret of 16+ bytes'), 600_000),
    peerPolicy: createPeerPolicy({ allowLoopbackPeers: false, allowedPeerRanges: [], deniedPeerRanges: [], serverAddresses: ['192.0.2.1'] }),
    store: new MemoryAllocationStore({ now: () => clock.now() }),
    relays: new FakeRelayFactory(),
    clock,
    logger: createLogger('silent'),
    counters,
    relayAddressIPv4: '192.0.2.100',
    minPort: 49152,
    maxPort: 65535,
    maxLifetimeSeconds: 3600,
    userQuota: 0,
    totalQuota: 0,
    software: '',
    unauthenticatedErrorLimit: limit,
  });
  const listener = engine.addListener(path);
  return { clock, counters, path, engine, listener };
}

function allocateRequest(auth?: { nonce: string }): Buffer {
  const w = new MessageWriter(Method.Allocate, MessageClass.Request, randomBytes(12));
  w.add(Attr.RequestedTransport, encodeRequestedTransport(TRANSPORT_UDP));
  if (auth) {
    w.addText(Attr.Username, 'alice');
    w.addText(Attr.Realm, REALM);
    w.addText(Attr.Nonce, auth.nonce);
    w.addIntegrity(longTermKey('alice', REALM, 'alice-pw'));
  }
  return w.toBuffer();
}

async function flush(): Promise<void> {
  for (let i = 0; i < 3; i++) await new Promise<void>((resolve) => setImmediate(resolve));
}

function codes(path: FakeClientPath): number[] {
  return path.take().map((s) => {
    const decoded = decodeMessage(s.data);
    assert.ok(decoded.ok);
    const m = decoded.message;
    return m.cls === MessageClass.SuccessResponse ? 200 : (decodeErrorCode(getAttribute(m, Attr.ErrorCode) ?? Buffer.alloc(0))?.code ?? 0);
  });
}

describe('the engine limits unauthenticated error answers per source IP', () => {
  it('answers 401 up to the burst, then drops and counts rate_limited; other sources and authenticated requests go on', async () => {
    const h = harness({ perSecond: 20, burst: 40 });
    for (let i = 0; i < 60; i++) h.engine.handleClientPacket(h.listener, allocateRequest(), CLIENT_A, 40000 + i);
    await flush();
    const sent = h.path.sent.slice();
    const answered = codes(h.path);
    assert.equal(answered.length, 40);
    assert.ok(answered.every((c) => c === 401));
    assert.equal(h.counters.drops.rate_limited, 20);
    assert.equal(h.counters.authFailures, 40, 'only answered 401s count as auth failures');

    // Another source IP: its own bucket.
    h.engine.handleClientPacket(h.listener, allocateRequest(), CLIENT_B, 40000);
    await flush();
    assert.deepEqual(codes(h.path), [401]);

    // Authenticated requests from the limited source are not error answers: they pass.
    const challenge = decodeMessage(sent[0]!.data);
    assert.ok(challenge.ok);
    const nonce = getAttribute(challenge.message, Attr.Nonce)!.toString('utf8');
    h.engine.handleClientPacket(h.listener, allocateRequest({ nonce }), CLIENT_A, 40000);
    await flush();
    assert.deepEqual(codes(h.path), [200]);

    // Binding answers have their own, larger budget: the error bucket being empty does not stop them.
    const binding = new MessageWriter(Method.Binding, MessageClass.Request, randomBytes(12)).toBuffer();
    for (let i = 0; i < 5; i++) h.engine.handleClientPacket(h.listener, binding, CLIENT_A, 41000);
    await flush();
    assert.deepEqual(codes(h.path), [200, 200, 200, 200, 200]);

    // One second later: 20 more.
    h.clock.advance(1000);
    for (let i = 0; i < 30; i++) h.engine.handleClientPacket(h.listener, allocateRequest(), CLIENT_A, 42000 + i);
    await flush();
    assert.equal(codes(h.path).length, 20);
    assert.equal(h.counters.drops.rate_limited, 30);
  });

  it('counts 400 (credentials without REALM) and 438 (stale nonce) against the same bucket', async () => {
    const h = harness({ perSecond: 1, burst: 3 });
    const noRealm = (): Buffer => {
      const w = new MessageWriter(Method.Allocate, MessageClass.Request, randomBytes(12));
      w.addText(Attr.Username, 'alice');
      w.addText(Attr.Nonce, 'n');
      w.addIntegrity(Buffer.alloc(16));
      return w.toBuffer();
    };
    h.engine.handleClientPacket(h.listener, noRealm(), CLIENT_A, 40000);
    h.engine.handleClientPacket(h.listener, allocateRequest({ nonce: 'not-a-nonce-this-server-issued' }), CLIENT_A, 40001);
    h.engine.handleClientPacket(h.listener, allocateRequest(), CLIENT_A, 40002);
    h.engine.handleClientPacket(h.listener, noRealm(), CLIENT_A, 40003);
    h.engine.handleClientPacket(h.listener, allocateRequest({ nonce: 'stale' }), CLIENT_A, 40004);
    await flush();
    assert.deepEqual(codes(h.path), [400, 438, 401]);
    assert.equal(h.counters.drops.rate_limited, 2);
  });

  it('limits Binding answers per source at BINDING_LIMIT_FACTOR times the error limit, and counts 420 to a Binding as an error', async () => {
    const h = harness({ perSecond: 1, burst: 2 });
    const binding = (): Buffer => new MessageWriter(Method.Binding, MessageClass.Request, randomBytes(12)).toBuffer();
    for (let i = 0; i < 50; i++) h.engine.handleClientPacket(h.listener, binding(), CLIENT_A, 40000 + i);
    await flush();
    assert.equal(codes(h.path).length, 2 * BINDING_LIMIT_FACTOR, 'the Binding burst');
    assert.equal(h.counters.drops.rate_limited, 50 - 2 * BINDING_LIMIT_FACTOR);
    h.clock.advance(1000);
    for (let i = 0; i < 50; i++) h.engine.handleClientPacket(h.listener, binding(), CLIENT_A, 41000 + i);
    await flush();
    assert.equal(codes(h.path).length, BINDING_LIMIT_FACTOR, 'a second later: the Binding rate');

    // A Binding with an unknown comprehension-required attribute gets 420 from the error bucket, without a reason phrase.
    const unknown = (): Buffer => new MessageWriter(Method.Binding, MessageClass.Request, randomBytes(12)).add(0x7ffe, Buffer.alloc(0)).toBuffer();
    for (let i = 0; i < 10; i++) h.engine.handleClientPacket(h.listener, unknown(), CLIENT_B, 40000 + i);
    await flush();
    const sent = h.path.sent.slice();
    assert.deepEqual(codes(h.path), [420, 420]);
    const first = decodeMessage(sent[0]!.data);
    assert.ok(first.ok);
    assert.equal(decodeErrorCode(getAttribute(first.message, Attr.ErrorCode)!)?.reason, '');
    h.engine.handleClientPacket(h.listener, allocateRequest(), CLIENT_B, 42000);
    await flush();
    assert.deepEqual(codes(h.path), [], 'the 420s used the error bucket: no 401 left for this source');
  });

  it('does not limit without the option', async () => {
    const h = harness(undefined);
    for (let i = 0; i < 200; i++) h.engine.handleClientPacket(h.listener, allocateRequest(), CLIENT_A, 40000 + i);
    await flush();
    assert.equal(codes(h.path).length, 200);
    assert.equal(h.counters.drops.rate_limited, 0);
  });
});

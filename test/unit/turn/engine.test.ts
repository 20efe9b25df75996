// TurnEngine driven directly: ManualClock, MemoryAllocationStore and in-process
// fakes of our own transport interfaces. No sockets, no sleeping: time moves by
// clock.advance() and expiry happens on engine.tick().

import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';

import { createLogger } from '../../../src/ops/log.js';
import { MemoryAllocationStore } from '../../../src/store/memory.js';
import { type AllocationRecord, type UpdateOutcome, fiveTupleKey } from '../../../src/store/types.js';
import { decodeAddress } from '../../../src/stun/address.js';
import {
  decodeAddressErrorCode,
  decodeErrorCode,
  decodeUint32,
  encodeAddressFamily,
  encodeChannelNumber,
  encodeEvenPort,
  encodePasswordAlgorithm,
  encodeRequestedTransport,
  encodeUint32,
} from '../../../src/stun/attributes.js';
import { encodeChannelData, looksLikeChannelData, readChannelDataLength, readChannelNumber } from '../../../src/stun/channel-data.js';
import { AddressFamily, Attr, MessageClass, Method, PasswordAlgorithm, TRANSPORT_UDP } from '../../../src/stun/constants.js';
import { longTermKey, userhash, verifyIntegritySha1, verifyIntegritySha256 } from '../../../src/stun/integrity.js';
import { type StunMessage, decodeMessage, getAttribute } from '../../../src/stun/message.js';
import { SecurityFeature, nonceCookieFeatures } from '../../../src/stun/nonce-cookie.js';
import { MessageWriter } from '../../../src/stun/writer.js';
import { CredentialStore, restApiPassword } from '../../../src/turn/auth/credentials.js';
import { ManualClock } from '../../../src/turn/clock.js';
import { EngineCounters } from '../../../src/turn/counters.js';
import { KEPT_RESPONSE_SLAB_BYTES } from '../../../src/turn/allocation/kept-responses.js';
import { NOTHING_PERSISTING } from '../../../src/turn/allocation/allocation.js';
import type { EngineListener } from '../../../src/turn/allocation/table.js';
import { TurnEngine } from '../../../src/turn/engine.js';
import type { AllocationLimits } from '../../../src/turn/limits.js';
import type { BandwidthOptions } from '../../../src/turn/bandwidth.js';
import { NonceIssuer } from '../../../src/turn/auth/nonce.js';
import { MobilityTickets } from '../../../src/turn/auth/mobility-ticket.js';
import { type PeerPolicy, createPeerPolicy } from '../../../src/turn/peer-policy.js';
import type { ClientTransportKind } from '../../../src/store/types.js';
import type { ChannelOffload, EngineLogger, OffloadChannel } from '../../../src/turn/ports.js';
import { FakeClientPath, FakeRelayFactory, type FakeRelaySocket } from '../../helpers/fake-io.js';

const REALM = 'example.org';
const SERVER_IP = '192.0.2.1';
const SERVER_PORT = 3478;
const RELAY_IP = '192.0.2.100';
const RELAY_IPV6 = '2001:db8::100';
const NONCE_SECRET = Buffer.from('cluster-wide nonce secret');
const NONCE_LIFETIME_MS = 600_000;
const PEER_A = '8.8.8.8';
const PEER_B = '9.9.9.9';
const PEER_C = '1.1.1.1';
const FORBIDDEN_PEER = '10.0.0.1';

interface HarnessOptions {
  readonly users?: ReadonlyArray<readonly [string, string]>;
  readonly authSecrets?: readonly string[];
  readonly userQuota?: number;
  readonly totalQuota?: number;
  readonly relayAddressIPv4?: string;
  readonly relayAddressIPv6?: string;
  readonly minPort?: number;
  readonly maxPort?: number;
  /** The policy knows the relayed ports, as the server's (src/server/peers.ts): its own addresses are peers there. */
  readonly serverPeers?: boolean;
  readonly maxLifetimeSeconds?: number;
  readonly nonceSecret?: Buffer;
  readonly transport?: ClientTransportKind;
  readonly limits?: Partial<AllocationLimits>;
  readonly offload?: ChannelOffload;
  /** --max-bps, --user-max-bps, --bps-capacity. */
  readonly bandwidth?: BandwidthOptions;
  /** A store shared with another Harness (two nodes of one cluster), and this node's id. */
  readonly store?: MemoryAllocationStore;
  readonly nodeId?: string;
  /** --allowed-peer-ip ranges (the server's own addresses are denied without them). */
  readonly allowedPeerRanges?: readonly string[];
  /** --mobility (RFC 8016): tickets sealed under a key from the nonce secret. */
  readonly mobility?: boolean;
  /** Default: a silent pino logger. */
  readonly logger?: EngineLogger;
}

interface Reply {
  readonly message: StunMessage;
  readonly raw: Buffer;
  /** 200 for a success response, else the ERROR-CODE. */
  readonly code: number;
  readonly reason: string;
}

interface Endpoint {
  readonly address: string;
  readonly port: number;
}

type Decorate = (w: MessageWriter) => void;

interface BuildOptions {
  readonly auth?: boolean;
  readonly fingerprint?: boolean;
  readonly transactionId?: Buffer;
  /** Send USERHASH instead of USERNAME. */
  readonly userhash?: boolean;
  /** Attributes added after MESSAGE-INTEGRITY. */
  readonly afterIntegrity?: Decorate;
}

/** Lets every pending promise chain (engine, memory store, fake binds) run to completion. */
async function flush(rounds = 3): Promise<void> {
  for (let i = 0; i < rounds; i++) await new Promise<void>((resolve) => setImmediate(resolve));
}

function codeOf(m: StunMessage): { code: number; reason: string } {
  if (m.cls === MessageClass.SuccessResponse) return { code: 200, reason: '' };
  const e = decodeErrorCode(getAttribute(m, Attr.ErrorCode) ?? Buffer.alloc(0));
  return { code: e?.code ?? 0, reason: e?.reason ?? '' };
}

class Harness {
  readonly clock = new ManualClock();
  readonly store: MemoryAllocationStore;
  readonly counters = new EngineCounters();
  readonly relays = new FakeRelayFactory();
  readonly path: FakeClientPath;
  readonly credentials: CredentialStore;
  readonly nonces: NonceIssuer;
  readonly peerPolicy: PeerPolicy;
  readonly engine: TurnEngine;
  readonly listener: EngineListener;

  constructor(o: HarnessOptions = {}) {
    this.store = o.store ?? new MemoryAllocationStore({ now: () => this.clock.now() });
    this.path = new FakeClientPath(o.transport ?? 'udp', SERVER_IP, SERVER_PORT);
    this.credentials = new CredentialStore({
      realm: REALM,
      users: new Map(
        o.users ?? [
          ['alice', 'alice-pw'],
          ['bob', 'bob-pw'],
          ['carol', 'carol-pw'],
        ],
      ),
      authSecrets: o.authSecrets ?? [],
    });
    // As the server builds it (src/server/engine.ts): the cookie says what the credentials support.
    this.nonces = new NonceIssuer(o.nonceSecret ?? NONCE_SECRET, NONCE_LIFETIME_MS, this.credentials.securityFeatures);
    this.peerPolicy = createPeerPolicy({
      allowLoopbackPeers: false,
      allowedPeerRanges: o.allowedPeerRanges ?? [],
      deniedPeerRanges: [],
      serverAddresses: [SERVER_IP, RELAY_IP],
      servicePorts: [SERVER_PORT],
      ...(o.serverPeers === true ? { relayPorts: { min: o.minPort ?? 49152, max: o.maxPort ?? 65535 } } : {}),
    });
    this.engine = new TurnEngine({
      nodeId: o.nodeId ?? 'node-a',
      credentials: this.credentials,
      nonces: this.nonces,
      peerPolicy: this.peerPolicy,
      store: this.store,
      relays: this.relays,
      clock: this.clock,
      logger: o.logger ?? createLogger('silent'),
      counters: this.counters,
      relayAddressIPv4: 'relayAddressIPv4' in o ? o.relayAddressIPv4 : RELAY_IP,
      relayAddressIPv6: o.relayAddressIPv6,
      minPort: o.minPort ?? 49152,
      maxPort: o.maxPort ?? 65535,
      maxLifetimeSeconds: o.maxLifetimeSeconds ?? 3600,
      userQuota: o.userQuota ?? 0,
      totalQuota: o.totalQuota ?? 0,
      software: 'anyturn-test',
      limits: o.limits,
      offload: o.offload,
      bandwidth: o.bandwidth,
      mobility: o.mobility ? new MobilityTickets(o.nonceSecret ?? NONCE_SECRET) : undefined,
    });
    this.listener = this.engine.addListener(this.path);
  }

  private nextPort = 40000;

  client(username = 'alice', password = `${username}-pw`, address = '198.51.100.10', port?: number): Client {
    return new Client(this, address, port ?? this.nextPort++, username, password);
  }

  /** Moves time on and runs the engine's upkeep, as the server's 1 s timer does. */
  async advance(ms: number): Promise<void> {
    this.clock.advance(ms);
    await this.engine.tick();
    await flush();
  }

  key(c: Endpoint): string {
    return fiveTupleKey(this.path.transport, c.address, c.port, SERVER_IP, SERVER_PORT);
  }

  relay(e: Endpoint): FakeRelaySocket {
    const s = this.relays.socketAt(e.address, e.port);
    assert.ok(s, `an open relay socket at ${e.address}:${e.port}`);
    return s;
  }
}

type Received =
  | { readonly kind: 'data'; readonly peer: Endpoint; readonly data: Buffer }
  | { readonly kind: 'channel'; readonly channel: number; readonly data: Buffer; readonly frameLength: number };

class Client implements Endpoint {
  nonce: string | undefined;
  realm = REALM;
  private cursor = 0;

  constructor(
    readonly h: Harness,
    readonly address: string,
    readonly port: number,
    public username: string,
    public password: string,
  ) {}

  key(): Buffer {
    return longTermKey(this.username, this.realm, this.password);
  }

  build(method: number, decorate: Decorate = () => undefined, o: BuildOptions = {}): { buf: Buffer; transactionId: Buffer } {
    const transactionId = o.transactionId ?? randomBytes(12);
    const w = new MessageWriter(method, MessageClass.Request, transactionId);
    decorate(w);
    if (o.auth !== false && this.nonce !== undefined) {
      if (o.userhash) w.add(Attr.Userhash, userhash(this.username, this.realm));
      else w.addText(Attr.Username, this.username);
      w.addText(Attr.Realm, this.realm);
      w.addText(Attr.Nonce, this.nonce);
      w.addIntegrity(this.key());
      o.afterIntegrity?.(w);
    }
    if (o.fingerprint) w.addFingerprint();
    return { buf: w.toBuffer(), transactionId };
  }

  /** An unauthenticated Allocate: takes the NONCE of its 401 for the requests after it. */
  async learnNonce(): Promise<void> {
    const probe = this.build(Method.Allocate, (w) => w.add(Attr.RequestedTransport, encodeRequestedTransport(TRANSPORT_UDP)), { auth: false });
    this.nonce = getAttribute((await this.send(probe.buf, probe.transactionId)).message, Attr.Nonce)!.toString('utf8');
  }

  /** Delivers raw bytes as coming from this client, and lets the engine finish. */
  async deliver(buf: Buffer): Promise<void> {
    this.h.engine.handleClientPacket(this.h.listener, buf, this.address, this.port);
    await flush();
  }

  /** Sends one request; returns its response (the first one with that transaction id sent after now). */
  async send(buf: Buffer, transactionId: Buffer): Promise<Reply> {
    const from = this.h.path.sent.length;
    this.h.engine.handleClientPacket(this.h.listener, buf, this.address, this.port);
    for (let round = 0; round < 50; round++) {
      for (const s of this.h.path.sent.slice(from)) {
        if (s.kind !== 'message' || s.address !== this.address || s.port !== this.port) continue;
        const decoded = decodeMessage(s.data);
        assert.ok(decoded.ok, 'the engine sends well-formed STUN');
        if (!decoded.message.transactionId.equals(transactionId)) continue;
        return { message: decoded.message, raw: s.data, ...codeOf(decoded.message) };
      }
      await flush(1);
    }
    throw new Error(`no response to transaction ${transactionId.toString('hex')}`);
  }

  /** An authenticated request that learns REALM/NONCE from 401/438 and retries, as a client does. */
  async request(method: number, decorate: Decorate = () => undefined, o: BuildOptions = {}): Promise<Reply> {
    for (let attempt = 0; attempt < 3; attempt++) {
      const hadNonce = this.nonce !== undefined;
      const { buf, transactionId } = this.build(method, decorate, o);
      const r = await this.send(buf, transactionId);
      if (r.code === 401 || r.code === 438) {
        const nonce = getAttribute(r.message, Attr.Nonce);
        const realm = getAttribute(r.message, Attr.Realm);
        if (nonce) this.nonce = nonce.toString('utf8');
        if (realm) this.realm = realm.toString('utf8');
        if (r.code === 438 || !hadNonce) continue;
      }
      return r;
    }
    throw new Error('authentication did not converge');
  }

  async allocate(decorate: Decorate = () => undefined, o: BuildOptions = {}): Promise<Reply & { relayed?: Endpoint; lifetimeSeconds?: number }> {
    const r = await this.request(
      Method.Allocate,
      (w) => {
        w.add(Attr.RequestedTransport, encodeRequestedTransport(TRANSPORT_UDP));
        decorate(w);
      },
      o,
    );
    if (r.code !== 200) return r;
    const relayed = decodeAddress(getAttribute(r.message, Attr.XorRelayedAddress)!, r.message.transactionId)!;
    return { ...r, relayed: { address: relayed.address, port: relayed.port }, lifetimeSeconds: decodeUint32(getAttribute(r.message, Attr.Lifetime)!) };
  }

  /** Allocates and insists on success. */
  async mustAllocate(decorate: Decorate = () => undefined): Promise<Endpoint> {
    const r = await this.allocate(decorate);
    assert.equal(r.code, 200, `Allocate failed: ${r.code} ${r.reason}`);
    return r.relayed!;
  }

  refresh(lifetimeSeconds?: number): Promise<Reply> {
    return this.request(Method.Refresh, (w) => {
      if (lifetimeSeconds !== undefined) w.add(Attr.Lifetime, encodeUint32(lifetimeSeconds));
    });
  }

  createPermission(...peers: string[]): Promise<Reply> {
    return this.request(Method.CreatePermission, (w) => {
      for (const p of peers) w.addXorAddress(Attr.XorPeerAddress, p, 0);
    });
  }

  channelBind(channel: number, peer: Endpoint): Promise<Reply> {
    return this.request(Method.ChannelBind, (w) => {
      w.add(Attr.ChannelNumber, encodeChannelNumber(channel));
      w.addXorAddress(Attr.XorPeerAddress, peer.address, peer.port);
    });
  }

  sendIndication(peer: Endpoint, data: Buffer): void {
    const w = new MessageWriter(Method.Send, MessageClass.Indication, randomBytes(12));
    w.addXorAddress(Attr.XorPeerAddress, peer.address, peer.port);
    w.add(Attr.Data, data);
    this.h.engine.handleClientPacket(this.h.listener, w.toBuffer(), this.address, this.port);
  }

  channelData(channel: number, data: Buffer): void {
    this.h.engine.handleClientPacket(this.h.listener, encodeChannelData(channel, data), this.address, this.port);
  }

  /** Data indications and ChannelData relayed to this client since the last call. */
  received(): Received[] {
    const out: Received[] = [];
    const all = this.h.path.sent;
    for (; this.cursor < all.length; this.cursor++) {
      const s = all[this.cursor]!;
      if (s.address !== this.address || s.port !== this.port || s.kind !== 'framed') continue;
      if (looksLikeChannelData(s.data)) {
        const length = readChannelDataLength(s.data);
        out.push({ kind: 'channel', channel: readChannelNumber(s.data), data: Buffer.from(s.data.subarray(4, 4 + length)), frameLength: s.data.length });
        continue;
      }
      const decoded = decodeMessage(s.data);
      assert.ok(decoded.ok, 'a Data indication is well-formed STUN');
      const m = decoded.message;
      assert.equal(m.cls, MessageClass.Indication);
      assert.equal(m.method, Method.Data);
      const peer = decodeAddress(getAttribute(m, Attr.XorPeerAddress)!, m.transactionId)!;
      out.push({ kind: 'data', peer: { address: peer.address, port: peer.port }, data: Buffer.from(getAttribute(m, Attr.Data)!) });
    }
    return out;
  }
}

function lifetimeAttr(seconds: number): Decorate {
  return (w) => w.add(Attr.Lifetime, encodeUint32(seconds));
}

function attributeTypes(m: StunMessage): number[] {
  return m.attributes.map((a) => a.type);
}

// ------------------------------------------------------------------ authentication

describe('TurnEngine: authentication', () => {
  it('challenges an unauthenticated Allocate with 401, REALM and NONCE, then accepts the credentials', async () => {
    const h = new Harness();
    const c = h.client();
    const first = c.build(Method.Allocate, (w) => w.add(Attr.RequestedTransport, encodeRequestedTransport(TRANSPORT_UDP)), { auth: false });
    const challenge = await c.send(first.buf, first.transactionId);
    assert.equal(challenge.code, 401);
    assert.equal(getAttribute(challenge.message, Attr.Realm)?.toString('utf8'), REALM);
    const nonce = getAttribute(challenge.message, Attr.Nonce)?.toString('utf8');
    assert.ok(nonce);
    assert.equal(challenge.message.integrityOffset, -1, 'a challenge carries no MESSAGE-INTEGRITY');
    assert.equal(h.engine.allocations, 0);

    c.nonce = nonce;
    const second = c.build(Method.Allocate, (w) => w.add(Attr.RequestedTransport, encodeRequestedTransport(TRANSPORT_UDP)));
    const ok = await c.send(second.buf, second.transactionId);
    assert.equal(ok.code, 200);
    assert.ok(ok.message.integrityOffset >= 0);
    assert.ok(verifyIntegritySha1(ok.raw, ok.message.integrityOffset, c.key()), 'the success response is signed with the user key');
    const relayed = decodeAddress(getAttribute(ok.message, Attr.XorRelayedAddress)!, ok.message.transactionId)!;
    assert.equal(relayed.address, RELAY_IP);
    const mapped = decodeAddress(getAttribute(ok.message, Attr.XorMappedAddress)!, ok.message.transactionId)!;
    assert.deepEqual({ address: mapped.address, port: mapped.port }, { address: c.address, port: c.port });
    assert.equal(h.engine.allocations, 1);
    assert.equal(h.counters.requests.get('allocate 401'), 1);
    assert.equal(h.counters.requests.get('allocate 200'), 1);
  });

  it('REALM: ours only byte for byte (else the 401 of a wrong password), 400 when malformed; a non-ASCII USERNAME is read as UTF-8', async () => {
    const h = new Harness({ users: [['caf\u00e9-\u30DE', 'pw']] });
    const c = h.client('caf\u00e9-\u30DE', 'pw');
    await c.learnNonce();
    const allocate = (realm: Buffer): Promise<Reply> => {
      const transactionId = randomBytes(12);
      const w = new MessageWriter(Method.Allocate, MessageClass.Request, transactionId);
      w.add(Attr.RequestedTransport, encodeRequestedTransport(TRANSPORT_UDP));
      w.addText(Attr.Username, c.username);
      w.add(Attr.Realm, realm);
      w.addText(Attr.Nonce, c.nonce!);
      // The key over the realm as sent: only the realm itself decides.
      w.addIntegrity(longTermKey(c.username, realm.toString('utf8'), c.password));
      return c.send(w.toBuffer(), transactionId);
    };
    for (const other of ['example.or', 'example.org ', 'Example.org', 'example.org\u0000', '\uFEFFexample.org']) {
      assert.equal((await allocate(Buffer.from(other, 'utf8'))).code, 401, JSON.stringify(other));
    }
    assert.equal((await allocate(Buffer.from([0x65, 0xff, 0x67]))).code, 400, 'bad UTF-8');
    assert.equal((await allocate(Buffer.alloc(763, 0x61))).code, 400, 'over 762 bytes');
    assert.equal(h.engine.allocations, 0);
    assert.equal((await allocate(Buffer.from(REALM, 'utf8'))).code, 200);
    assert.equal(h.engine.allocations, 1);
  });

  it('answers an unknown user and a wrong password with the same 401 (only transaction id and nonce may differ)', async () => {
    const h = new Harness();
    const unknown = h.client('mallory', 'whatever', '198.51.100.10', 41000);
    const wrong = h.client('alice', 'not-alices-password', '198.51.100.10', 41001);
    const a = await unknown.allocate();
    const b = await wrong.allocate();
    assert.equal(a.code, 401);
    assert.equal(b.code, 401);
    assert.equal(a.reason, b.reason);
    assert.deepEqual(attributeTypes(a.message), attributeTypes(b.message));
    assert.equal(getAttribute(a.message, Attr.Realm)?.toString('utf8'), getAttribute(b.message, Attr.Realm)?.toString('utf8'));
    assert.equal(a.raw.length, b.raw.length);
    // Mask the transaction id and the NONCE value; every other byte must match.
    const mask = (r: Reply): Buffer => {
      const copy = Buffer.from(r.raw);
      copy.fill(0, 8, 20);
      const nonce = r.message.attributes.find((x) => x.type === Attr.Nonce)!;
      copy.fill(0, nonce.offset, nonce.offset + nonce.length);
      return copy;
    };
    assert.deepEqual(mask(a), mask(b));
    assert.equal(h.engine.allocations, 0);
    assert.ok(h.counters.authFailures >= 2);
  });

  it('accepts a nonce issued by another node with the same secret, and 438s one from a different secret', async () => {
    const h = new Harness();
    const sameSecret = new NonceIssuer(Buffer.from(NONCE_SECRET), NONCE_LIFETIME_MS);
    const c = h.client();
    c.nonce = sameSecret.issue(c.address, h.clock.now());
    const req = c.build(Method.Allocate, (w) => w.add(Attr.RequestedTransport, encodeRequestedTransport(TRANSPORT_UDP)));
    const r = await c.send(req.buf, req.transactionId);
    assert.equal(r.code, 200, 'no round trip needed: the nonce is valid on this node');

    const otherSecret = new NonceIssuer(Buffer.from('some other cluster'), NONCE_LIFETIME_MS);
    const d = h.client('bob');
    d.nonce = otherSecret.issue(d.address, h.clock.now());
    const req2 = d.build(Method.Allocate, (w) => w.add(Attr.RequestedTransport, encodeRequestedTransport(TRANSPORT_UDP)));
    const r2 = await d.send(req2.buf, req2.transactionId);
    assert.equal(r2.code, 438);
    const fresh = getAttribute(r2.message, Attr.Nonce)?.toString('utf8');
    assert.ok(fresh);
    assert.equal(h.nonces.check(fresh, d.address, h.clock.now()), 'valid');
  });

  it('answers an expired nonce with 438 and a new NONCE, with which the request succeeds', async () => {
    const h = new Harness();
    const c = h.client();
    await c.mustAllocate(lifetimeAttr(3600));
    const oldNonce = c.nonce!;
    await h.advance(NONCE_LIFETIME_MS);
    const req = c.build(Method.Refresh, lifetimeAttr(3600));
    const stale = await c.send(req.buf, req.transactionId);
    assert.equal(stale.code, 438);
    const newNonce = getAttribute(stale.message, Attr.Nonce)?.toString('utf8');
    assert.ok(newNonce);
    assert.notEqual(newNonce, oldNonce);
    assert.equal(getAttribute(stale.message, Attr.Realm)?.toString('utf8'), REALM);
    c.nonce = newNonce;
    const again = c.build(Method.Refresh, lifetimeAttr(3600));
    assert.equal((await c.send(again.buf, again.transactionId)).code, 200);
  });

  it('accepts time-limited credentials (--use-auth-secret), refuses expired ones, and accepts both secrets while rotating', async () => {
    const h = new Harness({ users: [], authSecrets: ['new-secret', 'old-secret'] });
    const nowSeconds = Math.floor(h.clock.now() / 1000);

    const valid = `${nowSeconds + 3600}:alice`;
    const c1 = h.client(valid, restApiPassword('new-secret', valid));
    assert.equal((await c1.allocate()).code, 200);

    const c2 = h.client(valid, restApiPassword('old-secret', valid));
    assert.equal((await c2.allocate()).code, 200, 'a credential minted with the previous secret still works');

    const bare = `${nowSeconds + 60}`;
    const c3 = h.client(bare, restApiPassword('new-secret', bare));
    assert.equal((await c3.allocate()).code, 200, 'a username that is only a timestamp');

    const expired = `${nowSeconds - 1}:alice`;
    const c4 = h.client(expired, restApiPassword('new-secret', expired));
    assert.equal((await c4.allocate()).code, 401);

    const c5 = h.client(valid, restApiPassword('unknown-secret', valid));
    assert.equal((await c5.allocate()).code, 401);

    const c6 = h.client('alice', restApiPassword('new-secret', 'alice'));
    assert.equal((await c6.allocate()).code, 401, 'a username without a timestamp is not a REST credential');
    assert.equal(h.engine.allocations, 3);
  });

  it('accepts USERHASH instead of USERNAME for a static user', async () => {
    const h = new Harness();
    const c = h.client();
    const r = await c.allocate(() => undefined, { userhash: true });
    assert.equal(r.code, 200);
    const record = await h.store.get(h.key(c));
    assert.equal(record?.username, 'alice');
    // Later requests may use USERNAME: it is the same user.
    assert.equal((await c.refresh()).code, 200);
    const viaHash = await c.request(Method.Refresh, () => undefined, { userhash: true });
    assert.equal(viaHash.code, 200);
  });

  it("answers 441 when another user sends requests on an allocation's 5-tuple", async () => {
    const h = new Harness();
    const alice = h.client('alice', 'alice-pw', '198.51.100.10', 42000);
    await alice.mustAllocate();
    const bob = h.client('bob', 'bob-pw', '198.51.100.10', 42000);
    assert.equal((await bob.refresh()).code, 441);
    assert.equal((await bob.createPermission(PEER_A)).code, 441);
    assert.equal((await bob.channelBind(0x4000, { address: PEER_A, port: 5000 })).code, 441);
    assert.equal((await bob.refresh(0)).code, 441);
    assert.equal(h.engine.allocations, 1, 'the allocation survives');
    const record = await h.store.get(h.key(alice));
    assert.deepEqual(record?.permissions, {});
  });

  it('ignores attributes after MESSAGE-INTEGRITY', async () => {
    const h = new Harness();
    const c = h.client();
    const r = await c.allocate(() => undefined, {
      afterIntegrity: (w) => {
        w.add(Attr.Lifetime, encodeUint32(3600));
        w.add(0x7ffe, Buffer.from('unknown, comprehension-required'));
      },
    });
    assert.equal(r.code, 200, 'no 420 for an unknown attribute after MESSAGE-INTEGRITY');
    assert.equal(r.lifetimeSeconds, 600, 'LIFETIME after MESSAGE-INTEGRITY is not used');
  });

  it('answers 420 for an unknown comprehension-required attribute before MESSAGE-INTEGRITY', async () => {
    const h = new Harness();
    const c = h.client();
    const r = await c.allocate((w) => w.add(0x7ffe, Buffer.from('xx')));
    assert.equal(r.code, 420);
    assert.equal(h.engine.allocations, 0);
  });

  it('signs the response with MESSAGE-INTEGRITY-SHA256 when the request used it (RFC 8489 §9.2.4), and SHA-1 otherwise', async () => {
    const h = new Harness();
    const c = h.client();
    await c.mustAllocate();
    // Without PASSWORD-ALGORITHM (the MD5 key) and with PASSWORD-ALGORITHM SHA-256 (the SHA-256 key),
    // which RFC 8489 §9.2.4 takes only beside the PASSWORD-ALGORITHMS the 401 offered.
    for (const algorithm of [undefined, PasswordAlgorithm.SHA256]) {
      const key = longTermKey(c.username, REALM, c.password, algorithm);
      const transactionId = randomBytes(12);
      const w = new MessageWriter(Method.Refresh, MessageClass.Request, transactionId);
      w.addText(Attr.Username, c.username).addText(Attr.Realm, REALM).addText(Attr.Nonce, c.nonce!);
      if (algorithm !== undefined) {
        w.add(Attr.PasswordAlgorithms, h.credentials.passwordAlgorithms);
        w.add(Attr.PasswordAlgorithm, encodePasswordAlgorithm(algorithm));
      }
      w.addIntegritySha256(key);
      const reply = await c.send(w.toBuffer(), transactionId);
      assert.equal(reply.code, 200, `Refresh with MESSAGE-INTEGRITY-SHA256 (${algorithm ?? 'MD5'} key)`);
      assert.equal(reply.message.integrityOffset, -1, 'no SHA-1 MESSAGE-INTEGRITY in the response');
      assert.ok(reply.message.integritySha256Offset >= 0, 'MESSAGE-INTEGRITY-SHA256 in the response');
      assert.ok(verifyIntegritySha256(reply.raw, reply.message.integritySha256Offset, key), 'signed with the key the request used');
    }
    const plain = await c.refresh();
    assert.equal(plain.code, 200);
    assert.equal(plain.message.integritySha256Offset, -1, 'a SHA-1 request gets SHA-1');
    assert.ok(verifyIntegritySha1(plain.raw, plain.message.integrityOffset, c.key()));
  });

  it('adds FINGERPRINT to the response when the request had one, and not otherwise', async () => {
    const h = new Harness();
    const c = h.client();
    const challenge = c.build(Method.Allocate, (w) => w.add(Attr.RequestedTransport, encodeRequestedTransport(TRANSPORT_UDP)), {
      auth: false,
      fingerprint: true,
    });
    const r401 = await c.send(challenge.buf, challenge.transactionId);
    assert.equal(r401.code, 401);
    assert.ok(r401.message.fingerprintOffset >= 0, '401 with FINGERPRINT');
    const r = await c.allocate(() => undefined, { fingerprint: true });
    assert.equal(r.code, 200);
    assert.ok(r.message.fingerprintOffset >= 0, 'success with FINGERPRINT');
    assert.equal(attributeTypes(r.message).at(-1), Attr.Fingerprint, 'FINGERPRINT is last');
    const plain = await c.refresh();
    assert.equal(plain.code, 200);
    assert.equal(plain.message.fingerprintOffset, -1);
  });
});

// ------------------------------------------------------------------ RFC 8489 password algorithms

/** The attributes an RFC 8489 client adds after a 401 (§9.2.5); `undefined` leaves one out. */
interface Negotiation {
  readonly algorithms?: Buffer;
  readonly algorithm?: Buffer;
  /** The key's algorithm (default: the one PASSWORD-ALGORITHM names, else MD5). */
  readonly keyAlgorithm?: PasswordAlgorithm;
  readonly integrity: 'sha1' | 'sha256';
  readonly userhash?: boolean;
}

/** A Refresh signed as `n` says, with the client's current nonce. */
async function negotiated(c: Client, n: Negotiation): Promise<Reply & { key: Buffer }> {
  const keyAlgorithm = n.keyAlgorithm ?? (n.algorithm ? (n.algorithm.readUInt16BE(0) as PasswordAlgorithm) : PasswordAlgorithm.MD5);
  const key = longTermKey(c.username, REALM, c.password, keyAlgorithm);
  const transactionId = randomBytes(12);
  const w = new MessageWriter(Method.Refresh, MessageClass.Request, transactionId);
  if (n.userhash) w.add(Attr.Userhash, userhash(c.username, REALM));
  else w.addText(Attr.Username, c.username);
  w.addText(Attr.Realm, REALM).addText(Attr.Nonce, c.nonce!);
  if (n.algorithms) w.add(Attr.PasswordAlgorithms, n.algorithms);
  if (n.algorithm) w.add(Attr.PasswordAlgorithm, n.algorithm);
  if (n.integrity === 'sha1') w.addIntegrity(key);
  else w.addIntegritySha256(key);
  return { ...(await c.send(w.toBuffer(), transactionId)), key };
}

const SHA256_THEN_MD5 = Buffer.from([0, 2, 0, 0, 0, 1, 0, 0]);
const SHA256 = encodePasswordAlgorithm(PasswordAlgorithm.SHA256);

describe('TurnEngine: RFC 8489 password algorithms (§9.2)', () => {
  it('offers SHA-256 then MD5 in every 401 and 438, under a nonce cookie that says so', async () => {
    const h = new Harness();
    const c = h.client();
    const first = c.build(Method.Allocate, (w) => w.add(Attr.RequestedTransport, encodeRequestedTransport(TRANSPORT_UDP)), { auth: false });
    const challenge = await c.send(first.buf, first.transactionId);
    assert.equal(challenge.code, 401);
    assert.deepEqual(getAttribute(challenge.message, Attr.PasswordAlgorithms), SHA256_THEN_MD5);
    const nonce = getAttribute(challenge.message, Attr.Nonce)!.toString('utf8');
    // Static users only: "Password algorithms" and "Username anonymity" (0x000003).
    assert.equal(nonceCookieFeatures(nonce), SecurityFeature.PasswordAlgorithms | SecurityFeature.UsernameAnonymity);
    assert.match(nonce, /^obMatJos2AAAD/);
    await c.mustAllocate();
    await h.advance(NONCE_LIFETIME_MS);
    const stale = await negotiated(c, { integrity: 'sha1' });
    assert.equal(stale.code, 438);
    assert.deepEqual(getAttribute(stale.message, Attr.PasswordAlgorithms), SHA256_THEN_MD5, '438 carries PASSWORD-ALGORITHMS too');
    assert.ok(nonceCookieFeatures(getAttribute(stale.message, Attr.Nonce)!.toString('utf8'))! & SecurityFeature.PasswordAlgorithms);
  });

  it('sets "Username anonymity" only when every credential has a USERHASH, and offers MD5 first when a user has only an MD5 key', async () => {
    const rest = new Harness({ authSecrets: ['s3cret'] });
    assert.equal(rest.credentials.securityFeatures, SecurityFeature.PasswordAlgorithms, 'time-limited usernames cannot be found from a hash');
    assert.match(rest.nonces.issue('198.51.100.1', 0), /^obMatJos2AAAB/);
    const md5Key = new Harness({ users: [['alice', `0x${longTermKey('alice', REALM, 'alice-pw').toString('hex')}`]] });
    assert.deepEqual(md5Key.credentials.passwordAlgorithms, Buffer.from([0, 1, 0, 0, 0, 2, 0, 0]));
  });

  it('with PASSWORD-ALGORITHM SHA-256 the key is SHA-256(username:realm:password) and MESSAGE-INTEGRITY-SHA256 answers', async () => {
    const h = new Harness();
    const c = h.client();
    await c.mustAllocate();
    for (const integrity of ['sha256', 'sha1'] as const) {
      const r = await negotiated(c, { algorithms: SHA256_THEN_MD5, algorithm: SHA256, integrity });
      assert.equal(r.code, 200, `MESSAGE-INTEGRITY${integrity === 'sha256' ? '-SHA256' : ''} under the SHA-256 key`);
      assert.deepEqual(r.key, createHash('sha256').update(`alice:${REALM}:alice-pw`).digest());
      // §9.2.4: the response carries MESSAGE-INTEGRITY-SHA256 unless the request was taken as MD5 by default.
      assert.equal(r.message.integrityOffset, -1);
      assert.ok(verifyIntegritySha256(r.raw, r.message.integritySha256Offset, r.key), 'signed with the SHA-256 key');
    }
    // The MD5 key does not pass for SHA-256.
    const wrongKey = await negotiated(c, { algorithms: SHA256_THEN_MD5, algorithm: SHA256, keyAlgorithm: PasswordAlgorithm.MD5, integrity: 'sha256' });
    assert.equal(wrongKey.code, 401);
    // MD5 chosen from the offer is MD5, and still answered with MESSAGE-INTEGRITY-SHA256.
    const md5 = await negotiated(c, { algorithms: SHA256_THEN_MD5, algorithm: encodePasswordAlgorithm(PasswordAlgorithm.MD5), integrity: 'sha1' });
    assert.equal(md5.code, 200);
    assert.ok(verifyIntegritySha256(md5.raw, md5.message.integritySha256Offset, longTermKey('alice', REALM, 'alice-pw')));
  });

  it('takes a request with neither attribute as MD5 and answers with MESSAGE-INTEGRITY, as RFC 5389 clients expect', async () => {
    const h = new Harness();
    const c = h.client();
    await c.mustAllocate();
    const r = await negotiated(c, { integrity: 'sha1' });
    assert.equal(r.code, 200);
    assert.equal(r.message.integritySha256Offset, -1);
    assert.ok(verifyIntegritySha1(r.raw, r.message.integrityOffset, longTermKey('alice', REALM, 'alice-pw')));
  });

  for (const [what, n] of [
    ['PASSWORD-ALGORITHM without PASSWORD-ALGORITHMS', { algorithm: SHA256 }],
    ['PASSWORD-ALGORITHMS without PASSWORD-ALGORITHM', { algorithms: SHA256_THEN_MD5, keyAlgorithm: PasswordAlgorithm.MD5 }],
    [
      'PASSWORD-ALGORITHMS with SHA-256 struck (a bid-down on the path)',
      { algorithms: Buffer.from([0, 1, 0, 0]), algorithm: encodePasswordAlgorithm(PasswordAlgorithm.MD5) },
    ],
    ['PASSWORD-ALGORITHMS reordered', { algorithms: Buffer.from([0, 1, 0, 0, 0, 2, 0, 0]), algorithm: SHA256 }],
    ['PASSWORD-ALGORITHMS with one more algorithm', { algorithms: Buffer.from([0, 2, 0, 0, 0, 1, 0, 0, 0, 3, 0, 0]), algorithm: SHA256 }],
    [
      'PASSWORD-ALGORITHM not among those offered',
      { algorithms: SHA256_THEN_MD5, algorithm: Buffer.from([0, 3, 0, 0]), keyAlgorithm: PasswordAlgorithm.SHA256 },
    ],
    [
      'PASSWORD-ALGORITHM SHA-256 with parameters',
      { algorithms: SHA256_THEN_MD5, algorithm: Buffer.from([0, 2, 0, 4, 1, 2, 3, 4]), keyAlgorithm: PasswordAlgorithm.SHA256 },
    ],
  ] as const) {
    it(`answers 400 to ${what} (RFC 8489 §9.2.4), whatever the key`, async () => {
      const h = new Harness();
      const c = h.client();
      await c.mustAllocate();
      for (const integrity of ['sha1', 'sha256'] as const) {
        const r = await negotiated(c, { ...n, integrity });
        assert.equal(r.code, 400, integrity);
        assert.equal(r.message.integrityOffset, -1, 'a 400 carries no integrity');
        assert.equal(r.message.integritySha256Offset, -1);
        assert.equal(getAttribute(r.message, Attr.Nonce), undefined);
      }
    });
  }

  it('time-limited (REST) credentials work with SHA-256: SHA-256(username:realm:base64(HMAC-SHA1(secret, username)))', async () => {
    const h = new Harness({ authSecrets: ['s3cret'] });
    const username = `${Math.floor(h.clock.now() / 1000) + 3600}:alice`;
    const c = h.client(username, restApiPassword('s3cret', username));
    await c.mustAllocate();
    const r = await negotiated(c, { algorithms: SHA256_THEN_MD5, algorithm: SHA256, integrity: 'sha256' });
    assert.equal(r.code, 200);
    assert.deepEqual(
      r.key,
      createHash('sha256')
        .update(`${username}:${REALM}:${restApiPassword('s3cret', username)}`)
        .digest(),
    );
    assert.ok(verifyIntegritySha256(r.raw, r.message.integritySha256Offset, r.key));
    const expired = `${Math.floor(h.clock.now() / 1000) - 1}:alice`;
    const old = h.client(expired, restApiPassword('s3cret', expired));
    old.nonce = c.nonce;
    assert.equal((await negotiated(old, { algorithms: SHA256_THEN_MD5, algorithm: SHA256, integrity: 'sha256' })).code, 401);
  });

  it('takes USERHASH with SHA-256, as a client must once the cookie says "Username anonymity"', async () => {
    const h = new Harness();
    const c = h.client();
    await c.mustAllocate();
    const r = await negotiated(c, { algorithms: SHA256_THEN_MD5, algorithm: SHA256, integrity: 'sha256', userhash: true });
    assert.equal(r.code, 200);
    assert.ok(verifyIntegritySha256(r.raw, r.message.integritySha256Offset, r.key));
  });
});

// ------------------------------------------------------------------ allocations and lifetimes

describe('TurnEngine: Allocate and Refresh', () => {
  it('builds no allocation_created line below the info level, and logs it at info (a logger that says which)', async () => {
    for (const infoEnabled of [false, true]) {
      const lines: string[] = [];
      const logger: EngineLogger = {
        isLevelEnabled: (level) => level !== 'info' || infoEnabled,
        info: (_obj, msg) => lines.push(msg),
        warn: () => undefined,
        error: () => undefined,
        debug: () => undefined,
      };
      const h = new Harness({ logger });
      assert.equal((await h.client().allocate()).code, 200);
      assert.deepEqual(lines, infoEnabled ? ['allocation created'] : []);
    }
  });

  it('times every answered request from its receipt, by method (the request-duration histogram)', async () => {
    const h = new Harness();
    const seen: string[] = [];
    h.counters.observeRequestSeconds = (method, seconds) => {
      assert.ok(seconds >= 0 && Number.isFinite(seconds));
      seen.push(method);
    };
    const c = h.client();
    assert.equal((await c.allocate()).code, 200);
    assert.equal((await c.createPermission(PEER_A)).code, 200);
    assert.deepEqual(seen, ['allocate', 'allocate', 'create_permission']);
    assert.equal(h.counters.requests.get('allocate 401'), 1);
    assert.equal(h.counters.requests.get('allocate 200'), 1);
    assert.equal(h.counters.requests.get('create_permission 200'), 1);
  });

  it('grants the default 600 s, clamps LIFETIME to the maximum, and never gives less than 600 s', async () => {
    const h = new Harness();
    const cases: ReadonlyArray<readonly [number | undefined, number]> = [
      [undefined, 600],
      [7200, 3600],
      [3600, 3600],
      [1200, 1200],
      [100, 600],
      [0xffffffff, 3600],
    ];
    for (const [requested, granted] of cases) {
      const c = h.client();
      const r = await c.allocate(requested === undefined ? () => undefined : lifetimeAttr(requested));
      assert.equal(r.code, 200);
      assert.equal(r.lifetimeSeconds, granted, `LIFETIME ${requested}`);
      const record = await h.store.get(h.key(c));
      assert.equal(record?.expiresAtMs, h.clock.now() + granted * 1000);
    }
  });

  it('answers an Allocate within handleClientPacket when the relay bind and the store answer at once, and the same with a bind that answers by a promise', async () => {
    for (const answerAtOnce of [true, false]) {
      const h = new Harness();
      h.relays.answerAtOnce = answerAtOnce;
      const c = h.client();
      await c.learnNonce();
      const req = c.build(Method.Allocate, (w) => w.add(Attr.RequestedTransport, encodeRequestedTransport(TRANSPORT_UDP)));
      const from = h.path.sent.length;
      h.engine.handleClientPacket(h.listener, req.buf, c.address, c.port);
      // Nothing awaited yet: with a bind and a store that answer at once, so does the engine.
      const answeredAtOnce = h.path.sent.slice(from).some((s) => s.kind === 'message' && s.data.subarray(8, 20).equals(req.transactionId));
      assert.equal(answeredAtOnce, answerAtOnce, answerAtOnce ? 'answered within the call' : "answered after the bind's promise");
      assert.equal(h.engine.allocations, answerAtOnce ? 1 : 0);
      await flush();
      const answer = await c.send(req.buf, req.transactionId);
      assert.equal(answer.code, 200, 'the retransmission gets the kept answer');
      assert.equal(h.engine.allocations, 1);
      assert.equal(h.relays.sockets.length, 1);
      assert.equal((await h.store.get(h.key(c)))?.relayedPort, h.relays.sockets[0]!.port);
      assert.equal(h.counters.allocationsCreated, 1);
    }
  });

  it('answers a retransmitted Allocate with the identical response, and a new Allocate on the 5-tuple with 437', async () => {
    const h = new Harness();
    const c = h.client();
    await c.learnNonce();

    const req = c.build(Method.Allocate, (w) => w.add(Attr.RequestedTransport, encodeRequestedTransport(TRANSPORT_UDP)));
    const first = await c.send(req.buf, req.transactionId);
    assert.equal(first.code, 200);
    await h.advance(2000);
    const again = await c.send(req.buf, req.transactionId);
    assert.deepEqual(again.raw, first.raw, 'byte for byte the same response');
    assert.equal(h.relays.sockets.length, 1, 'no second relay socket');
    assert.equal(h.engine.allocations, 1);

    const other = await c.allocate();
    assert.equal(other.code, 437);
    assert.equal(h.engine.allocations, 1);
  });

  it('keeps the Allocate response for retransmissions 40 s, in a slab of its own, then lets it go', async () => {
    const h = new Harness();
    const c = h.client();
    await c.learnNonce();
    const req = c.build(Method.Allocate, (w) => w.add(Attr.RequestedTransport, encodeRequestedTransport(TRANSPORT_UDP)));
    const first = await c.send(req.buf, req.transactionId);
    assert.equal(first.code, 200);
    const [allocation] = [...h.engine.allAllocations()];
    const kept = allocation?.allocateResponseTo(req.transactionId);
    assert.ok(kept);
    assert.deepEqual(kept, first.raw, 'the response as sent');
    assert.equal(allocation?.allocateResponseTo(randomBytes(12)), undefined, 'only for its own transaction');
    // Not a view of Node's shared pool: a slab of the allocations' own (allocation/kept-responses.ts).
    assert.equal(kept.buffer.byteLength, KEPT_RESPONSE_SLAB_BYTES);
    await h.advance(39_000);
    assert.deepEqual((await c.send(req.buf, req.transactionId)).raw, first.raw, 'still answered within the client transaction timeout');
    await h.advance(1_000);
    assert.equal(allocation?.keepsAllocateResponse, false, 'let go after 40 s');
    assert.equal((await c.send(req.buf, req.transactionId)).code, 437, 'a retransmission past any client timeout is a new request on a used 5-tuple');
    assert.equal(h.engine.allocations, 1);
  });

  it('lets an allocation hold the shared settled promise again once its store writes are done', async () => {
    const h = new Harness();
    const c = h.client();
    await c.mustAllocate();
    const [allocation] = [...h.engine.allAllocations()];
    assert.ok(allocation);
    assert.equal(allocation.persisting, NOTHING_PERSISTING, 'nothing written since the Allocate');
    assert.equal((await c.createPermission(PEER_A)).code, 200);
    await flush();
    assert.equal(allocation.persisting, NOTHING_PERSISTING, 'the write is done: no promise of its own kept');
    assert.equal((await h.store.get(h.key(c)))?.permissions[PEER_A] !== undefined, true, 'and the write was made');
  });

  it('walks the allocations in slices, letting the event loop through between them, and still expires every one', async () => {
    // 2,500 allocations: more than two slices of the tick's walk (engine.ts TICK_SLICE).
    const h = new Harness({ minPort: 10000 });
    const count = 2500;
    for (let i = 0; i < count; i++) await h.client('alice', 'alice-pw', '198.51.100.10', 20000 + i).mustAllocate();
    assert.equal(h.engine.allocations, count);
    h.clock.advance(600_000);
    let deletedWhenLoopRan = -1;
    const ticking = h.engine.tick();
    // Queued after the walk's first slice (a visit deletes an expired allocation at once):
    // it sees part of the walk done only if the walk yields to the event loop.
    setImmediate(() => {
      deletedWhenLoopRan = h.counters.allocationsDeleted;
    });
    await ticking;
    await flush();
    assert.ok(deletedWhenLoopRan > 0 && deletedWhenLoopRan < count, `the event loop ran between slices of the walk (deleted then: ${deletedWhenLoopRan})`);
    assert.equal(h.engine.allocations, 0, 'every allocation expired, those after the first slice too');
    assert.equal(h.counters.allocationsDeleted, count);
  });

  it('expires an allocation after its lifetime: relay socket closed, store record deleted, later requests 437', async () => {
    const h = new Harness();
    const c = h.client();
    const relayed = await c.mustAllocate();
    const socket = h.relay(relayed);
    const key = h.key(c);
    const deleted: string[] = [];
    h.store.subscribe((e) => {
      if (e.type === 'deleted') deleted.push(`${e.key} ${e.reason}`);
    });

    await h.advance(600_000 - 1);
    assert.equal(socket.closed, false);
    assert.ok(await h.store.get(key));
    assert.equal((await c.createPermission(PEER_A)).code, 200);

    await h.advance(1);
    assert.equal(socket.closed, true);
    assert.equal(await h.store.get(key), undefined);
    assert.equal(h.engine.allocations, 0);
    assert.equal(h.counters.allocationsDeleted, 1);
    assert.deepEqual(deleted, [`${key} expired`]);
    assert.equal(await h.store.countUserAllocations('alice'), 0);
    assert.equal((await c.refresh()).code, 437);
    assert.equal((await c.createPermission(PEER_A)).code, 437);
    assert.equal((await c.channelBind(0x4000, { address: PEER_A, port: 5000 })).code, 437);
    // A peer packet to the closed relayed address goes nowhere.
    assert.equal(socket.inject(Buffer.from('late'), PEER_A, 5000), false);
  });

  it('extends an allocation on Refresh', async () => {
    const h = new Harness();
    const c = h.client();
    const relayed = await c.mustAllocate();
    await h.advance(500_000);
    const r = await c.refresh();
    assert.equal(r.code, 200);
    assert.equal(decodeUint32(getAttribute(r.message, Attr.Lifetime)!), 600);
    assert.equal((await h.store.get(h.key(c)))?.expiresAtMs, h.clock.now() + 600_000);
    await h.advance(500_000); // 1000 s after the Allocate, 500 s after the Refresh
    assert.equal(h.engine.allocations, 1);
    assert.equal(h.relay(relayed).closed, false);

    const longer = await c.refresh(7200);
    assert.equal(decodeUint32(getAttribute(longer.message, Attr.Lifetime)!), 3600);
    await h.advance(3_599_000);
    assert.equal(h.engine.allocations, 1);
    await h.advance(1000);
    assert.equal(h.engine.allocations, 0);
  });

  it('deletes an allocation on Refresh LIFETIME 0; a repeat gets 437', async () => {
    const h = new Harness();
    const c = h.client();
    const relayed = await c.mustAllocate();
    const socket = h.relay(relayed);
    const r = await c.refresh(0);
    assert.equal(r.code, 200);
    assert.equal(decodeUint32(getAttribute(r.message, Attr.Lifetime)!), 0);
    assert.equal(socket.closed, true);
    assert.equal(await h.store.get(h.key(c)), undefined);
    assert.equal(h.engine.allocations, 0);
    assert.equal((await c.refresh(0)).code, 437);
    // The 5-tuple is free again.
    assert.equal((await c.allocate()).code, 200);
  });

  it('answers 400 without REQUESTED-TRANSPORT and 442 for TCP', async () => {
    const h = new Harness();
    const c = h.client();
    assert.equal((await c.request(Method.Allocate)).code, 400);
    const tcp = await c.request(Method.Allocate, (w) => w.add(Attr.RequestedTransport, encodeRequestedTransport(6)));
    assert.equal(tcp.code, 442);
    assert.equal(h.engine.allocations, 0);
    assert.equal(h.relays.sockets.length, 0);
  });

  it('tries another port when the relay port is taken', async () => {
    const h = new Harness({ minPort: 50000, maxPort: 50001 });
    h.relays.takePort(RELAY_IP, 50000);
    const relayed = await h.client().mustAllocate();
    assert.equal(relayed.port, 50001);
    // Both ports now busy: no capacity.
    const r = await h.client().allocate();
    assert.equal(r.code, 508);
    assert.equal(h.engine.allocations, 1);
    assert.equal(h.relays.openCount, 1);
  });

  it('tries another port when the store says the port is held elsewhere in the cluster', async () => {
    const h = new Harness({ minPort: 50000, maxPort: 50001 });
    assert.equal(await h.store.reservePort('other-node', { relayedAddress: RELAY_IP, relayedPort: 50000 }, 3_600_000), true);
    const relayed = await h.client().mustAllocate();
    assert.equal(relayed.port, 50001);
    assert.equal(h.relays.openCount, 1, 'the socket bound on the refused port was closed');
  });
});

// ------------------------------------------------------------------ quotas

describe('TurnEngine: quotas', () => {
  it('answers 486 when the user is at --user-quota, and frees the slot when an allocation goes', async () => {
    const h = new Harness({ userQuota: 2 });
    const a1 = h.client('alice');
    const a2 = h.client('alice');
    const a3 = h.client('alice');
    await a1.mustAllocate();
    await a2.mustAllocate();
    assert.equal((await a3.allocate()).code, 486);
    assert.equal(h.counters.quotaRefusals, 1);
    assert.equal(h.relays.openCount, 2, 'the refused Allocate left no socket open');
    assert.equal((await h.client('bob').allocate()).code, 200, 'another user is not affected');
    assert.equal((await a1.refresh(0)).code, 200);
    assert.equal((await a3.allocate()).code, 200);
  });

  it('answers 508 when the server is at --total-quota', async () => {
    const h = new Harness({ totalQuota: 2 });
    await h.client('alice').mustAllocate();
    const bob = h.client('bob');
    await bob.mustAllocate();
    assert.equal((await h.client('carol').allocate()).code, 508);
    assert.equal(h.counters.quotaRefusals, 1);
    await bob.refresh(0);
    assert.equal((await h.client('carol').allocate()).code, 200);
  });
});

// ------------------------------------------------------------------ permissions

describe('TurnEngine: the server’s own address as a peer (two allocations of one server)', () => {
  it('relays to it at a relayed port, by Send indication and by channel, and never at another port', async () => {
    const h = new Harness({ serverPeers: true });
    const c = h.client();
    const socket = h.relay(await c.mustAllocate());
    assert.equal((await c.createPermission(RELAY_IP)).code, 200, 'a permission is per IP');
    c.sendIndication({ address: RELAY_IP, port: 50000 }, Buffer.from('to the other allocation'));
    assert.deepEqual(socket.sent, [{ data: Buffer.from('to the other allocation'), address: RELAY_IP, port: 50000 }]);
    const dropped = h.counters.drops.peer_server_port;
    c.sendIndication({ address: RELAY_IP, port: 22 }, Buffer.from('to ssh'));
    assert.equal(socket.sent.length, 1, 'nothing sent to a port outside the relayed ones');
    assert.equal(h.counters.drops.peer_server_port, dropped + 1);
    assert.equal((await c.channelBind(0x4000, { address: RELAY_IP, port: 22 })).code, 403);
    assert.equal((await c.channelBind(0x4001, { address: RELAY_IP, port: 50001 })).code, 200);
    c.channelData(0x4001, Buffer.from('by channel'));
    assert.deepEqual(socket.sent[1], { data: Buffer.from('by channel'), address: RELAY_IP, port: 50001 });
  });
});

describe('TurnEngine: permissions', () => {
  it('relays both ways with a permission; it expires after 300 s and CreatePermission restores it', async () => {
    const h = new Harness();
    const c = h.client();
    const relayed = await c.mustAllocate();
    const socket = h.relay(relayed);
    assert.equal((await c.createPermission(PEER_A)).code, 200);

    socket.inject(Buffer.from('hello'), PEER_A, 7000);
    assert.deepEqual(c.received(), [{ kind: 'data', peer: { address: PEER_A, port: 7000 }, data: Buffer.from('hello') }]);
    c.sendIndication({ address: PEER_A, port: 7001 }, Buffer.from('to peer'));
    assert.deepEqual(socket.sent, [{ data: Buffer.from('to peer'), address: PEER_A, port: 7001 }]);

    await h.advance(299_999);
    socket.inject(Buffer.from('still'), PEER_A, 7000);
    assert.equal(c.received().length, 1);

    await h.advance(1);
    const drops = h.counters.drops.no_permission;
    socket.inject(Buffer.from('late'), PEER_A, 7000);
    assert.deepEqual(c.received(), []);
    assert.equal(h.counters.drops.no_permission, drops + 1);
    c.sendIndication({ address: PEER_A, port: 7001 }, Buffer.from('late'));
    assert.equal(socket.sent.length, 1);
    assert.equal(h.counters.drops.no_permission, drops + 2);
    assert.deepEqual((await h.store.get(h.key(c)))?.permissions, {}, 'tick removed it from the store');

    assert.equal((await c.createPermission(PEER_A)).code, 200);
    socket.inject(Buffer.from('back'), PEER_A, 7000);
    assert.equal(c.received().length, 1);
  });

  it('refreshes a permission with CreatePermission before it expires', async () => {
    const h = new Harness();
    const c = h.client();
    const socket = h.relay(await c.mustAllocate());
    await c.createPermission(PEER_A);
    await h.advance(200_000);
    await c.createPermission(PEER_A);
    await h.advance(200_000); // 400 s after the first, 200 s after the refresh
    socket.inject(Buffer.from('x'), PEER_A, 7000);
    assert.equal(c.received().length, 1);
    assert.equal(h.counters.drops.no_permission, 0);
    await h.advance(100_000);
    socket.inject(Buffer.from('y'), PEER_A, 7000);
    assert.equal(c.received().length, 0);
    assert.equal(h.counters.drops.no_permission, 1);
  });

  it('drops a peer packet from an IP without permission', async () => {
    const h = new Harness();
    const c = h.client();
    const socket = h.relay(await c.mustAllocate());
    await c.createPermission(PEER_A);
    socket.inject(Buffer.from('x'), PEER_B, 7000);
    assert.deepEqual(c.received(), []);
    assert.equal(h.counters.drops.no_permission, 1);
  });

  it('installs several XOR-PEER-ADDRESS of one CreatePermission', async () => {
    const h = new Harness();
    const c = h.client();
    const socket = h.relay(await c.mustAllocate());
    assert.equal((await c.createPermission(PEER_A, PEER_B, PEER_C)).code, 200);
    const record = await h.store.get(h.key(c));
    const expires = h.clock.now() + 300_000;
    assert.deepEqual(record?.permissions, { [PEER_A]: expires, [PEER_B]: expires, [PEER_C]: expires });
    for (const peer of [PEER_A, PEER_B, PEER_C]) socket.inject(Buffer.from(peer), peer, 6000);
    assert.deepEqual(
      c.received().map((r) => (r.kind === 'data' ? r.peer.address : '')),
      [PEER_A, PEER_B, PEER_C],
    );
  });

  it('installs nothing when one peer is forbidden (403, all or nothing)', async () => {
    const h = new Harness();
    const c = h.client();
    const socket = h.relay(await c.mustAllocate());
    const versionBefore = (await h.store.get(h.key(c)))!.version;
    assert.equal((await c.createPermission(PEER_A, FORBIDDEN_PEER, PEER_B)).code, 403);
    assert.equal(h.counters.peerPolicyRefusals, 1);
    const record = await h.store.get(h.key(c));
    assert.deepEqual(record?.permissions, {});
    assert.equal(record?.version, versionBefore);
    socket.inject(Buffer.from('x'), PEER_A, 7000);
    assert.deepEqual(c.received(), []);
    assert.equal(h.counters.drops.no_permission, 1);
    // The relay's own address and loopback are forbidden too.
    assert.equal((await c.createPermission(RELAY_IP)).code, 403);
    assert.equal((await c.createPermission('127.0.0.1')).code, 403);
  });

  it('answers 443 for a peer of the other address family and 400 without XOR-PEER-ADDRESS', async () => {
    const h = new Harness();
    const c = h.client();
    await c.mustAllocate();
    assert.equal((await c.createPermission('2001:4860:4860::8888')).code, 443);
    assert.equal((await c.request(Method.CreatePermission)).code, 400);
  });
});

// ------------------------------------------------------------------ channels

describe('TurnEngine: channels', () => {
  it('relays ChannelData both ways once bound', async () => {
    const h = new Harness();
    const c = h.client();
    const socket = h.relay(await c.mustAllocate());
    assert.equal((await c.channelBind(0x4000, { address: PEER_A, port: 5000 })).code, 200);
    c.channelData(0x4000, Buffer.from('up'));
    assert.deepEqual(socket.sent, [{ data: Buffer.from('up'), address: PEER_A, port: 5000 }]);
    socket.inject(Buffer.from('down'), PEER_A, 5000);
    const got = c.received();
    assert.equal(got.length, 1);
    assert.equal(got[0]?.kind, 'channel');
    assert.deepEqual(got[0]?.kind === 'channel' ? [got[0].channel, got[0].data] : [], [0x4000, Buffer.from('down')]);
    // Another port of the same peer IP is not on the channel: Data indication.
    socket.inject(Buffer.from('other port'), PEER_A, 5001);
    assert.deepEqual(c.received(), [{ kind: 'data', peer: { address: PEER_A, port: 5001 }, data: Buffer.from('other port') }]);
    assert.equal(h.counters.packetsClientToPeer, 1);
    assert.equal(h.counters.packetsPeerToClient, 2);
  });

  it('pads ChannelData to 4 bytes towards a TCP client', async () => {
    const h = new Harness({ transport: 'tcp' });
    const c = h.client();
    const socket = h.relay(await c.mustAllocate());
    await c.channelBind(0x4000, { address: PEER_A, port: 5000 });
    socket.inject(Buffer.from('abcde'), PEER_A, 5000);
    const got = c.received();
    assert.equal(got[0]?.kind, 'channel');
    assert.equal(got[0]?.kind === 'channel' ? got[0].frameLength : 0, 12);
  });

  it('refuses to bind a number to another peer, or a peer to another number (400)', async () => {
    const h = new Harness();
    const c = h.client();
    await c.mustAllocate();
    assert.equal((await c.channelBind(0x4000, { address: PEER_A, port: 5000 })).code, 200);
    assert.equal((await c.channelBind(0x4000, { address: PEER_B, port: 5000 })).code, 400);
    assert.equal((await c.channelBind(0x4000, { address: PEER_A, port: 5001 })).code, 400);
    assert.equal((await c.channelBind(0x4001, { address: PEER_A, port: 5000 })).code, 400);
    assert.equal((await c.channelBind(0x4000, { address: PEER_A, port: 5000 })).code, 200, 'rebinding the same pair refreshes it');
    assert.equal((await c.channelBind(0x4001, { address: PEER_A, port: 5001 })).code, 200, 'another port of the same IP is another peer');
    assert.equal((await c.channelBind(0x3fff, { address: PEER_B, port: 5000 })).code, 400, 'number below the range');
    assert.equal((await c.channelBind(0x4002, { address: FORBIDDEN_PEER, port: 5000 })).code, 403);
  });

  // coturn 4.6.1's turnutils_uclient (start_connection, -c): channel X to the peer's port+1 twice,
  // then a fresh random number Y to the peer's port twice, then the same Y again from its refresh
  // timer. Y is drawn from 0x4000-0x7FFF without excluding X.
  it("serves turnutils_uclient's ChannelBind sequence, and refuses only its own collision (Y = X)", async () => {
    const h = new Harness();
    const peer = { address: PEER_A, port: 46100 };
    const rtcp = { address: PEER_A, port: 46101 };

    const c = h.client();
    const socket = h.relay(await c.mustAllocate());
    const codes = [];
    for (const [number, to] of [
      [0x5234, rtcp],
      [0x5234, rtcp],
      [0x4a52, peer],
      [0x4a52, peer],
      [0x4a52, peer],
    ] as const) {
      codes.push((await c.channelBind(number, to)).code);
    }
    assert.deepEqual(codes, [200, 200, 200, 200, 200]);
    socket.inject(Buffer.from('rtp'), peer.address, peer.port);
    socket.inject(Buffer.from('rtcp'), rtcp.address, rtcp.port);
    assert.deepEqual(
      c.received().map((r) => (r.kind === 'channel' ? r.channel : -1)),
      [0x4a52, 0x5234],
    );

    // The 1-in-16,384 draw where Y = X, as captured from uclient against anyturn (and answered
    // 400 by coturn 4.6.1 too): RFC 8656 §12.2 requires 400 while X is bound to the other port,
    // and the existing binding stays as it was.
    const d = h.client();
    const dSocket = h.relay(await d.mustAllocate());
    assert.equal((await d.channelBind(0x5234, rtcp)).code, 200);
    assert.equal((await d.channelBind(0x5234, rtcp)).code, 200);
    const collision = await d.channelBind(0x5234, peer);
    assert.deepEqual([collision.code, collision.reason], [400, 'Channel bound to another peer']);
    d.channelData(0x5234, Buffer.from('still to port+1'));
    assert.deepEqual(
      dSocket.sent.map((s) => s.port),
      [rtcp.port],
    );
  });

  it('expires a channel after 600 s and keeps number and peer reserved for 5 more minutes', async () => {
    const h = new Harness();
    const c = h.client();
    const socket = h.relay(await c.mustAllocate(lifetimeAttr(3600)));
    const peerA = { address: PEER_A, port: 5000 };
    const peerB = { address: PEER_B, port: 5000 };
    assert.equal((await c.channelBind(0x4000, peerA)).code, 200);
    // Keep the permission alive (it lasts 300 s) so only the channel expires.
    await h.advance(290_000);
    await c.createPermission(PEER_A);
    await h.advance(290_000);
    await c.createPermission(PEER_A);
    c.channelData(0x4000, Buffer.from('t=580'));
    assert.equal(socket.sent.length, 1);

    await h.advance(20_000); // t = 600 s
    c.channelData(0x4000, Buffer.from('t=600'));
    assert.equal(socket.sent.length, 1, 'ChannelData on an expired channel is dropped');
    assert.equal(h.counters.drops.no_channel, 1);
    socket.inject(Buffer.from('from A'), PEER_A, 5000);
    assert.deepEqual(c.received(), [{ kind: 'data', peer: peerA, data: Buffer.from('from A') }], 'the peer falls back to Data indications');

    // Quarantine: the number can't go to another peer, nor the peer to another number.
    assert.equal((await c.channelBind(0x4000, peerB)).code, 400);
    assert.equal((await c.channelBind(0x4001, peerA)).code, 400);
    await h.advance(299_000);
    assert.equal((await c.channelBind(0x4000, peerB)).code, 400);

    await h.advance(1000); // t = 900 s: quarantine over
    assert.deepEqual((await h.store.get(h.key(c)))?.channels, {}, 'the store forgot the channel');
    assert.equal((await c.channelBind(0x4000, peerB)).code, 200);
    assert.equal((await c.channelBind(0x4001, peerA)).code, 200);
    socket.inject(Buffer.from('A'), PEER_A, 5000);
    socket.inject(Buffer.from('B'), PEER_B, 5000);
    assert.deepEqual(
      c.received().map((r) => (r.kind === 'channel' ? r.channel : -1)),
      [0x4001, 0x4000],
    );
  });

  it('lets a number and a peer be rebound as soon as the quarantine ends, even before the next tick', async () => {
    const h = new Harness();
    const c = h.client();
    const socket = h.relay(await c.mustAllocate(lifetimeAttr(3600)));
    const peerA = { address: PEER_A, port: 5000 };
    const peerB = { address: PEER_B, port: 5000 };
    assert.equal((await c.channelBind(0x4000, peerA)).code, 200);
    await h.advance(600_000);
    // Move the clock without running tick(): the engine must judge by the clock, not by upkeep.
    h.clock.advance(300_000);
    assert.equal((await c.channelBind(0x4001, peerA)).code, 200, 'the peer may take a new number');
    assert.equal((await c.channelBind(0x4000, peerB)).code, 200, 'the old number may go to another peer');
    await h.advance(1000);
    socket.inject(Buffer.from('A'), PEER_A, 5000);
    socket.inject(Buffer.from('B'), PEER_B, 5000);
    assert.deepEqual(
      c.received().map((r) => (r.kind === 'channel' ? r.channel : -1)),
      [0x4001, 0x4000],
      'each peer arrives on its new channel',
    );
    const record = await h.store.get(h.key(c));
    assert.deepEqual(Object.keys(record?.channels ?? {}).sort(), [String(0x4000), String(0x4001)]);
    assert.equal(record?.channels[String(0x4000)]?.peerAddress, PEER_B);
    assert.equal(record?.channels[String(0x4001)]?.peerAddress, PEER_A);
  });

  it('drops ChannelData on an unbound number', async () => {
    const h = new Harness();
    const c = h.client();
    const socket = h.relay(await c.mustAllocate());
    c.channelData(0x4005, Buffer.from('x'));
    assert.equal(socket.sent.length, 0);
    assert.equal(h.counters.drops.no_channel, 1);
  });
});

// ------------------------------------------------------------------ EVEN-PORT, RESERVATION-TOKEN, families

describe('TurnEngine: EVEN-PORT and RESERVATION-TOKEN', () => {
  it('gives an even port for EVEN-PORT', async () => {
    const h = new Harness();
    for (let i = 0; i < 8; i++) {
      const r = await h.client().allocate((w) => w.add(Attr.EvenPort, encodeEvenPort(false)));
      assert.equal(r.code, 200);
      assert.equal(r.relayed!.port % 2, 0, `port ${r.relayed!.port}`);
      assert.equal(getAttribute(r.message, Attr.ReservationToken), undefined);
    }
  });

  it('with the R bit reserves port+1 under a RESERVATION-TOKEN that a later Allocate redeems once', async () => {
    const h = new Harness();
    const first = await h.client().allocate((w) => w.add(Attr.EvenPort, encodeEvenPort(true)));
    assert.equal(first.code, 200);
    const port = first.relayed!.port;
    assert.equal(port % 2, 0);
    const token = getAttribute(first.message, Attr.ReservationToken);
    assert.equal(token?.length, 8);
    assert.ok(h.relays.socketAt(RELAY_IP, port + 1), 'port+1 is held');

    const c2 = h.client();
    const second = await c2.allocate((w) => w.add(Attr.ReservationToken, token!));
    assert.equal(second.code, 200);
    assert.deepEqual(second.relayed, { address: RELAY_IP, port: port + 1 });
    assert.equal((await h.store.get(h.key(c2)))?.relayedPort, port + 1);
    // The socket on port+1 now delivers to the second allocation.
    await c2.createPermission(PEER_A);
    h.relay(second.relayed!).inject(Buffer.from('to the redeemer'), PEER_A, 5000);
    assert.deepEqual(c2.received(), [{ kind: 'data', peer: { address: PEER_A, port: 5000 }, data: Buffer.from('to the redeemer') }]);
    const c3 = h.client();
    const third = await c3.allocate((w) => w.add(Attr.ReservationToken, token!));
    assert.equal(third.code, 508, 'a token is redeemed once');
  });

  it('answers 508 for an unknown RESERVATION-TOKEN and 400 for EVEN-PORT with RESERVATION-TOKEN', async () => {
    const h = new Harness();
    const unknown = await h.client().allocate((w) => w.add(Attr.ReservationToken, randomBytes(8)));
    assert.equal(unknown.code, 508);
    const both = await h.client().allocate((w) => {
      w.add(Attr.EvenPort, encodeEvenPort(false));
      w.add(Attr.ReservationToken, randomBytes(8));
    });
    assert.equal(both.code, 400);
    const shortToken = await h.client().allocate((w) => w.add(Attr.ReservationToken, randomBytes(4)));
    assert.equal(shortToken.code, 400);
    assert.equal(h.engine.allocations, 0);
    assert.equal(h.relays.openCount, 0);
  });

  it('releases an unredeemed reservation after its lifetime', async () => {
    const h = new Harness();
    const first = await h.client().allocate((w) => w.add(Attr.EvenPort, encodeEvenPort(true)));
    const port = first.relayed!.port;
    const token = getAttribute(first.message, Attr.ReservationToken)!;
    const held = h.relay({ address: RELAY_IP, port: port + 1 });
    await h.advance(30_000);
    assert.equal(held.closed, true);
    assert.equal((await h.client().allocate((w) => w.add(Attr.ReservationToken, token))).code, 508);
  });
});

describe('TurnEngine: address families', () => {
  it('answers 440 for REQUESTED-ADDRESS-FAMILY IPv6 without an IPv6 relay, and for an unknown family', async () => {
    const h = new Harness();
    const v6 = await h.client().allocate((w) => w.add(Attr.RequestedAddressFamily, encodeAddressFamily(AddressFamily.IPv6)));
    assert.equal(v6.code, 440);
    const unknown = await h.client().allocate((w) => w.add(Attr.RequestedAddressFamily, encodeAddressFamily(0x03)));
    assert.equal(unknown.code, 440);
    const v4 = await h.client().allocate((w) => w.add(Attr.RequestedAddressFamily, encodeAddressFamily(AddressFamily.IPv4)));
    assert.equal(v4.code, 200);
  });

  it('relays over IPv6 when asked and an IPv6 relay exists', async () => {
    const h = new Harness({ relayAddressIPv6: RELAY_IPV6 });
    const r = await h.client().allocate((w) => w.add(Attr.RequestedAddressFamily, encodeAddressFamily(AddressFamily.IPv6)));
    assert.equal(r.code, 200);
    assert.equal(r.relayed?.address, RELAY_IPV6);
  });

  it('answers 440 for IPv4 when only an IPv6 relay exists', async () => {
    const h = new Harness({ relayAddressIPv4: undefined, relayAddressIPv6: RELAY_IPV6 });
    assert.equal((await h.client().allocate()).code, 440);
  });

  it('succeeds with ADDRESS-ERROR-CODE 440 for ADDITIONAL-ADDRESS-FAMILY IPv6 without an IPv6 relay', async () => {
    const h = new Harness();
    const r = await h.client().allocate((w) => w.add(Attr.AdditionalAddressFamily, encodeAddressFamily(AddressFamily.IPv6)));
    assert.equal(r.code, 200);
    assert.equal(r.relayed?.address, RELAY_IP);
    const err = decodeAddressErrorCode(getAttribute(r.message, Attr.AddressErrorCode)!);
    assert.equal(err?.family, AddressFamily.IPv6);
    assert.equal(err?.code, 440);
  });
});

// ------------------------------------------------------------------ store record

describe('TurnEngine: the store record', () => {
  it('reflects permissions, channels and expiry, with a growing version', async () => {
    const h = new Harness();
    const c = h.client();
    const t0 = h.clock.now();
    const relayed = await c.mustAllocate();
    const key = h.key(c);
    const r1 = await h.store.get(key);
    assert.ok(r1);
    assert.equal(r1.version, 1);
    assert.deepEqual(
      { ...r1, permissions: undefined, channels: undefined },
      {
        key,
        transport: 'udp',
        clientAddress: c.address,
        clientPort: c.port,
        serverAddress: SERVER_IP,
        serverPort: SERVER_PORT,
        relayedAddress: relayed.address,
        relayedPort: relayed.port,
        ownerNodeId: 'node-a',
        username: 'alice',
        realm: REALM,
        createdAtMs: t0,
        expiresAtMs: t0 + 600_000,
        version: 1,
        permissions: undefined,
        channels: undefined,
      },
    );
    assert.deepEqual(r1.permissions, {});
    assert.deepEqual(r1.channels, {});

    await h.advance(10_000);
    await c.createPermission(PEER_A);
    const r2 = (await h.store.get(key))!;
    assert.ok(r2.version > r1.version);
    assert.deepEqual(r2.permissions, { [PEER_A]: h.clock.now() + 300_000 });

    await h.advance(10_000);
    await c.channelBind(0x4000, { address: PEER_B, port: 5000 });
    const r3 = (await h.store.get(key))!;
    assert.ok(r3.version > r2.version);
    assert.deepEqual(r3.channels, { [String(0x4000)]: { peerAddress: PEER_B, peerPort: 5000, expiresAtMs: h.clock.now() + 600_000 } });
    assert.equal(r3.permissions[PEER_B], h.clock.now() + 300_000);

    await h.advance(10_000);
    await c.refresh(1800);
    const r4 = (await h.store.get(key))!;
    assert.ok(r4.version > r3.version);
    assert.equal(r4.expiresAtMs, h.clock.now() + 1_800_000);
    assert.equal(r4.createdAtMs, t0);
  });

  it('emits created, updated and deleted events for the allocation', async () => {
    const h = new Harness();
    const events: string[] = [];
    h.store.subscribe((e) => events.push(e.type === 'deleted' ? `deleted:${e.reason}` : `${e.type}:${e.record.version}`));
    const c = h.client();
    await c.mustAllocate();
    await c.createPermission(PEER_A);
    await c.refresh(0);
    await flush();
    assert.deepEqual(events, ['created:1', 'updated:2', 'deleted:refresh-zero']);
  });
});

/** A memory store that counts updates, can hold them unanswered until released, and can play another writer. */
class HeldUpdates extends MemoryAllocationStore {
  updates = 0;
  hold = false;
  private readonly held: (() => void)[] = [];

  /** Runs before the next update (another writer's change). */
  before: (() => Promise<void>) | undefined;
  /** Changes what an update answers. */
  answer: ((outcome: UpdateOutcome) => UpdateOutcome) | undefined;

  override async update(next: AllocationRecord): Promise<UpdateOutcome> {
    this.updates++;
    if (this.hold) await new Promise<void>((resolve) => this.held.push(resolve));
    await this.before?.();
    const outcome = await super.update(next);
    return this.answer ? this.answer(outcome) : outcome;
  }

  release(): void {
    this.hold = false;
    for (const resolve of this.held.splice(0)) resolve();
  }
}

describe('TurnEngine: store writes of requests (allocation/write-through.ts)', () => {
  it('hands a change to the store in the turn of its request when no write is in flight, one write at a time otherwise', async () => {
    const store = new HeldUpdates();
    const h = new Harness({ store });
    const c = h.client();
    await c.mustAllocate();
    const updatesBefore = store.updates;
    store.hold = true;
    const permission = c.build(Method.CreatePermission, (w) => w.addXorAddress(Attr.XorPeerAddress, PEER_A, 0));
    h.engine.handleClientPacket(h.listener, permission.buf, c.address, c.port);
    // No wait for a promise that had settled already (docs/scaling.md, part 1).
    assert.equal(store.updates, updatesBefore + 1, 'the write started before the packet handler returned');
    // The ChannelBind's write waits for the CreatePermission's, still held by the store.
    const bind = c.build(Method.ChannelBind, (w) => {
      w.add(Attr.ChannelNumber, encodeChannelNumber(0x4000));
      w.addXorAddress(Attr.XorPeerAddress, PEER_B, 5000);
    });
    h.engine.handleClientPacket(h.listener, bind.buf, c.address, c.port);
    await flush();
    assert.equal(store.updates, updatesBefore + 1, 'the second write waits for the first');
    assert.equal(h.path.sent.filter((s) => s.address === c.address && s.port === c.port).length, 2, 'no answer before the writes (401 and Allocate only)');
    store.release();
    assert.equal((await c.send(permission.buf, permission.transactionId)).code, 200);
    assert.equal((await c.send(bind.buf, bind.transactionId)).code, 200);
    assert.equal(store.updates, updatesBefore + 4, 'one write each, and one each for the two repeated requests');
    const record = (await store.get(h.key(c)))!;
    assert.deepEqual(Object.keys(record.permissions).sort(), [PEER_A, PEER_B].sort());
    assert.deepEqual(Object.keys(record.channels), [String(0x4000)]);
  });

  it('a write the store answers at once (the memory store) is done, and the request answered, when the packet handler returns', async () => {
    const h = new Harness();
    const c = h.client();
    await c.mustAllocate();
    const allocation = h.engine.allAllocations().next().value!;
    const answeredNow = (transactionId: Buffer, from: number): boolean =>
      h.path.sent.slice(from).some((s) => s.kind === 'message' && s.data.subarray(8, 20).equals(transactionId));
    const permission = c.build(Method.CreatePermission, (w) => w.addXorAddress(Attr.XorPeerAddress, PEER_A, 0));
    let from = h.path.sent.length;
    h.engine.handleClientPacket(h.listener, permission.buf, c.address, c.port);
    assert.equal(allocation.persisting, NOTHING_PERSISTING, 'no write in flight');
    assert.equal(allocation.dirty, false);
    assert.ok(answeredNow(permission.transactionId, from), 'CreatePermission answered within the call');
    const bind = c.build(Method.ChannelBind, (w) => {
      w.add(Attr.ChannelNumber, encodeChannelNumber(0x4000));
      w.addXorAddress(Attr.XorPeerAddress, PEER_B, 5000);
    });
    from = h.path.sent.length;
    h.engine.handleClientPacket(h.listener, bind.buf, c.address, c.port);
    assert.ok(answeredNow(bind.transactionId, from), 'ChannelBind answered within the call');
    assert.equal(allocation.persisting, NOTHING_PERSISTING, 'no write in flight');
    const record = (await h.store.get(h.key(c)))!;
    assert.equal(allocation.version, record.version, 'the version the store answered, taken within the call');
    assert.deepEqual(Object.keys(record.permissions).sort(), [PEER_A, PEER_B].sort());
    assert.deepEqual(Object.keys(record.channels), [String(0x4000)]);
    await flush();
    assert.equal((await c.send(permission.buf, permission.transactionId)).code, 200);
    assert.equal((await c.send(bind.buf, bind.transactionId)).code, 200);
  });

  it("merges another writer's change into a write that lost its compare-and-set, and writes the union", async () => {
    const store = new HeldUpdates();
    const h = new Harness({ store });
    const c = h.client();
    await c.mustAllocate();
    const key = h.key(c);
    // Another node's change lands between this write's read of the version and its update.
    store.before = async () => {
      store.before = undefined;
      const current = (await store.get(key))!;
      assert.ok((await store.update({ ...current, permissions: { ...current.permissions, [PEER_C]: h.clock.now() + 300_000 } })).ok);
    };
    assert.equal((await c.createPermission(PEER_A)).code, 200);
    const record = (await store.get(key))!;
    assert.deepEqual(Object.keys(record.permissions).sort(), [PEER_A, PEER_C].sort());
    const allocation = h.engine.allAllocations().next().value!;
    assert.ok(allocation.permissionsByAddress.has(PEER_C), "the other writer's permission is held here too");
    assert.equal(allocation.version, record.version);
  });

  it("detaches an allocation whose written record turns out to be another allocation's (a relayed address it does not have)", async () => {
    const store = new HeldUpdates();
    const h = new Harness({ store });
    const c = h.client();
    await c.mustAllocate();
    store.answer = (outcome) => (outcome.ok ? { ok: true, record: { ...outcome.record, relayedPort: outcome.record.relayedPort + 1 } } : outcome);
    assert.equal((await c.createPermission(PEER_A)).code, 200);
    const allocation = h.engine.allAllocations().next().value!;
    assert.equal(allocation.detached, true);
    assert.equal(h.counters.storeConflicts.five_tuple.lost, 1);
  });

  it('logs a request whose error answer cannot be sent, and never leaves a rejected promise', async () => {
    const errors: string[] = [];
    const logger: EngineLogger = {
      isLevelEnabled: () => true,
      info: () => undefined,
      warn: () => undefined,
      error: (_obj, msg) => errors.push(msg),
      debug: () => undefined,
    };
    const rejections: unknown[] = [];
    const onRejection = (reason: unknown): void => {
      rejections.push(reason);
    };
    process.on('unhandledRejection', onRejection);
    try {
      const h = new Harness({ logger });
      const c = h.client();
      h.path.sendMessage = () => {
        throw new Error('the path is gone');
      };
      const { buf } = c.build(Method.Allocate, (w) => w.add(Attr.RequestedTransport, encodeRequestedTransport(TRANSPORT_UDP)), { auth: false });
      h.engine.handleClientPacket(h.listener, buf, c.address, c.port);
      await flush();
      // The 401 failed to go out, then the 500 that answers that failure did too.
      assert.deepEqual(errors, ['request failed', 'request handler failed']);
      // The same in a method's handler, after its store write (runMethod).
      h.path.sendMessage = FakeClientPath.prototype.sendMessage;
      const d = h.client();
      await d.mustAllocate();
      errors.length = 0;
      h.path.sendMessage = () => {
        throw new Error('the path is gone');
      };
      const permission = d.build(Method.CreatePermission, (w) => w.addXorAddress(Attr.XorPeerAddress, PEER_A, 0));
      h.engine.handleClientPacket(h.listener, permission.buf, d.address, d.port);
      await flush();
      assert.deepEqual(errors, ['request failed', 'request handler failed']);
      assert.ok(h.engine.allAllocations().next().value?.permissionsByAddress.has(PEER_A), 'the permission was installed before the answer failed');
      assert.deepEqual(rejections, []);
    } finally {
      process.off('unhandledRejection', onRejection);
    }
  });
});

// ------------------------------------------------------------------ indications without an allocation

describe('TurnEngine: packets without an allocation', () => {
  it('drops and counts ChannelData and Send indications from a 5-tuple without allocation', async () => {
    const h = new Harness();
    const owner = h.client();
    const socket = h.relay(await owner.mustAllocate());
    await owner.channelBind(0x4000, { address: PEER_A, port: 5000 });
    const stranger = h.client('alice', 'alice-pw', owner.address, owner.port + 1000);
    stranger.channelData(0x4000, Buffer.from('x'));
    stranger.sendIndication({ address: PEER_A, port: 5000 }, Buffer.from('y'));
    await flush();
    assert.equal(h.counters.drops.no_allocation, 2);
    assert.equal(socket.sent.length, 0);
    assert.equal(h.path.sentTo(stranger.address, stranger.port).length, 0, 'nothing is sent back');
  });

  it('answers Binding without authentication', async () => {
    const h = new Harness();
    const c = h.client();
    const req = c.build(Method.Binding, () => undefined, { auth: false });
    const r = await c.send(req.buf, req.transactionId);
    assert.equal(r.code, 200);
    const mapped = decodeAddress(getAttribute(r.message, Attr.XorMappedAddress)!, r.message.transactionId)!;
    assert.equal(mapped.port, c.port);
  });
});

// ------------------------------------------------------------------ hostile input (security review)

describe('TurnEngine: port 0 and oversized datagrams', () => {
  it('answers ChannelBind to peer port 0 with 400 and binds nothing', async () => {
    const h = new Harness();
    const c = h.client();
    await c.mustAllocate();
    const r = await c.channelBind(0x4000, { address: PEER_A, port: 0 });
    assert.equal(r.code, 400);
    c.channelData(0x4000, Buffer.from('x'));
    assert.equal(h.counters.drops.no_channel, 1);
  });

  it('drops and counts a Send indication to peer port 0 (the relay is never asked to send there)', async () => {
    const h = new Harness();
    const c = h.client();
    const relayed = await c.mustAllocate();
    assert.equal((await c.createPermission(PEER_A)).code, 200);
    c.sendIndication({ address: PEER_A, port: 0 }, Buffer.from('to port zero'));
    c.sendIndication({ address: PEER_A, port: 9 }, Buffer.from('to port nine'));
    const sent = h.relay(relayed).sent;
    assert.deepEqual(
      sent.map((s) => s.port),
      [9],
    );
    assert.equal(h.counters.drops.bad_peer_port, 1);
  });

  it('drops and counts packets from client source port 0 and peer source port 0, answering nothing', async () => {
    const h = new Harness();
    const c = h.client();
    const relayed = await c.mustAllocate();
    assert.equal((await c.createPermission(PEER_A)).code, 200);
    const before = h.path.sent.length;
    const binding = new MessageWriter(Method.Binding, MessageClass.Request, randomBytes(12)).toBuffer();
    h.engine.handleClientPacket(h.listener, binding, '198.51.100.99', 0);
    await flush();
    assert.equal(h.path.sent.length, before, 'no answer to port 0');
    h.relay(relayed).inject(Buffer.from('from port zero'), PEER_A, 0);
    assert.deepEqual(c.received(), []);
    assert.equal(h.counters.drops.source_port_zero, 2);
  });

  it('drops a peer datagram too large for a Data indication (16-bit length), and relays the largest that fits', async () => {
    const h = new Harness({ relayAddressIPv6: RELAY_IPV6 });
    const c = h.client();
    const relayed = await c.mustAllocate((w) => w.add(Attr.RequestedAddressFamily, encodeAddressFamily(AddressFamily.IPv6)));
    const peer = '2001:4860:4860::8888'; // data only: the relay is a fake, nothing is sent
    assert.equal((await c.createPermission(peer)).code, 200);
    // An IPv6 peer can send up to 65,527 bytes; 65,504 is the most a Data indication can frame.
    h.relay(relayed).inject(Buffer.alloc(65_520, 1), peer, 5000);
    h.relay(relayed).inject(Buffer.alloc(65_505, 2), peer, 5000);
    h.relay(relayed).inject(Buffer.alloc(65_504, 3), peer, 5000);
    const got = c.received();
    assert.equal(got.length, 1);
    assert.equal(got[0]!.data.length, 65_504);
    assert.equal(h.counters.drops.too_large, 2);
  });
});

describe('TurnEngine: per-allocation and per-request caps', () => {
  const peers = (n: number, base = 0): string[] =>
    Array.from({ length: n }, (_, i) => `8.${((base + i) >> 16) & 255}.${((base + i) >> 8) & 255}.${(base + i) & 255}`);

  it('answers 508 to a CreatePermission with more peers than --max-peers-per-request, installing none', async () => {
    const h = new Harness({ limits: { peersPerRequest: 3 } });
    const c = h.client();
    const relayed = await c.mustAllocate();
    const r = await c.createPermission(...peers(4));
    assert.equal(r.code, 508);
    assert.equal(h.counters.limitRefusals, 1);
    assert.equal((await c.createPermission(...peers(3))).code, 200);
    h.relay(relayed).inject(Buffer.from('hi'), peers(4)[3]!, 7);
    assert.deepEqual(c.received(), [], 'the refused request installed no permission');
  });

  it('answers 508 past --max-permissions-per-allocation, all or nothing, and still refreshes the ones it has', async () => {
    const h = new Harness({ limits: { permissionsPerAllocation: 4 } });
    const c = h.client();
    await c.mustAllocate();
    assert.equal((await c.createPermission(...peers(3))).code, 200);
    // One new peer fits, two do not: the request with two installs neither.
    assert.equal((await c.createPermission(...peers(2, 3))).code, 508);
    assert.equal((await c.createPermission(...peers(1, 3))).code, 200);
    assert.equal((await c.createPermission(...peers(1, 4))).code, 508);
    // Refreshing peers it already has is no new state: allowed at the cap.
    assert.equal((await c.createPermission(...peers(4))).code, 200);
    // A ChannelBind to a new peer IP would add a permission: 508 too; to a known one it binds.
    assert.equal((await c.channelBind(0x4000, { address: peers(1, 9)[0]!, port: 5000 })).code, 508);
    assert.equal((await c.channelBind(0x4000, { address: peers(1)[0]!, port: 5000 })).code, 200);
    assert.equal(h.counters.limitRefusals, 3);
    const record = await h.store.get(h.key(c));
    assert.equal(Object.keys(record!.permissions).length, 4);
  });

  it('answers 508 past --max-channels-per-allocation and still refreshes a bound channel', async () => {
    const h = new Harness({ limits: { channelsPerAllocation: 2 } });
    const c = h.client();
    await c.mustAllocate();
    assert.equal((await c.channelBind(0x4000, { address: PEER_A, port: 1000 })).code, 200);
    assert.equal((await c.channelBind(0x4001, { address: PEER_A, port: 1001 })).code, 200);
    assert.equal((await c.channelBind(0x4002, { address: PEER_A, port: 1002 })).code, 508);
    assert.equal((await c.channelBind(0x4001, { address: PEER_A, port: 1001 })).code, 200, 'a refresh is no new binding');
    assert.equal(h.counters.limitRefusals, 1);
  });
});

/** The kernel data plane as the engine sees it: what it was last told per allocation. */
class RecordingOffload implements ChannelOffload {
  readonly listed = new Map<string, readonly OffloadChannel[]>();
  calls = 0;

  set(key: string, channels: readonly OffloadChannel[]): Promise<void> | undefined {
    this.calls++;
    if (channels.length > 0) this.listed.set(key, channels);
    else this.listed.delete(key);
    return undefined;
  }

  takeTraffic(): undefined {
    return undefined;
  }
}

describe('TurnEngine: the kernel data plane port (allocation/offload.ts)', () => {
  it("lists a moved allocation's channels (RFC 8016) under its new client address and port, and nothing under the old", async () => {
    const offload = new RecordingOffload();
    const h = new Harness({ offload, mobility: true });
    const c = h.client();
    const { relayed, ticket } = await mobileAllocate(c);
    assert.equal((await c.channelBind(0x4001, { address: PEER_A, port: 5000 })).code, 200);
    assert.equal(offload.listed.get(h.key(c))?.[0]?.clientPort, c.port);
    const moved = movedClient(c, c.port + 1000);
    assert.equal((await refreshWithTicket(moved, ticket)).code, 200);
    assert.equal(offload.listed.has(h.key(c)), false, "the old 5-tuple's entries are gone");
    const entries = offload.listed.get(h.key(moved));
    assert.deepEqual(
      entries?.map((e) => ({ clientAddress: e.clientAddress, clientPort: e.clientPort, channel: e.channel, relayPort: e.relayPort, peerPort: e.peerPort })),
      [{ clientAddress: moved.address, clientPort: moved.port, channel: 0x4001, relayPort: relayed.port, peerPort: 5000 }],
    );
  });

  it('lists a bound channel with the earliest of the channel, permission and allocation expiries', async () => {
    const offload = new RecordingOffload();
    const h = new Harness({ offload });
    const c = h.client();
    const relayed = await c.mustAllocate();
    assert.equal(offload.listed.size, 0, 'no channel yet, nothing listed');
    const t0 = h.clock.now();
    assert.equal((await c.channelBind(0x4001, { address: PEER_A, port: 5000 })).code, 200);
    assert.deepEqual(offload.listed.get(h.key(c)), [
      {
        clientAddress: c.address,
        clientPort: c.port,
        serverAddress: SERVER_IP,
        serverPort: SERVER_PORT,
        channel: 0x4001,
        relayAddress: relayed.address,
        relayPort: relayed.port,
        peerAddress: PEER_A,
        peerPort: 5000,
        // The permission (300 s) ends first.
        expiresAtMs: t0 + 300_000,
      },
    ]);
    // CreatePermission at 200 s moves the permission to 500 s: the entry follows.
    await h.advance(200_000);
    assert.equal((await c.createPermission(PEER_A)).code, 200);
    assert.equal(offload.listed.get(h.key(c))?.[0]?.expiresAtMs, t0 + 500_000);
    // A second CreatePermission at 400 s: now the channel (600 s) ends first.
    await h.advance(200_000);
    await c.createPermission(PEER_A);
    assert.equal(offload.listed.get(h.key(c))?.[0]?.expiresAtMs, t0 + 600_000);
  });

  it('answers a ChannelBind only once the kernel holds the channel', async () => {
    let release: (() => void) | undefined;
    const offload = new RecordingOffload();
    const h = new Harness({ offload });
    const c = h.client();
    await c.mustAllocate();
    offload.set = (key, channels) => {
      RecordingOffload.prototype.set.call(offload, key, channels);
      return new Promise<void>((resolve) => {
        release = resolve;
      });
    };
    const { buf, transactionId } = c.build(Method.ChannelBind, (w) => {
      w.add(Attr.ChannelNumber, encodeChannelNumber(0x4000));
      w.addXorAddress(Attr.XorPeerAddress, PEER_A, 5000);
    });
    const sentBefore = h.path.sent.length;
    await c.deliver(buf);
    assert.equal(offload.listed.size, 1, 'listed at once');
    assert.equal(h.path.sent.length, sentBefore, 'no answer while the kernel has not confirmed the entry');
    assert.ok(release);
    release();
    await flush();
    const answers = h.path.sent.slice(sentBefore).flatMap((sent) => {
      const decoded = decodeMessage(sent.data);
      return decoded.ok && decoded.message.transactionId.equals(transactionId) ? [codeOf(decoded.message).code] : [];
    });
    assert.deepEqual(answers, [200], 'answered once the kernel confirmed');
  });

  it('empties the list on Refresh 0, on expiry, and once a channel is pruned', async () => {
    const offload = new RecordingOffload();
    const h = new Harness({ offload });
    const a = h.client();
    await a.mustAllocate();
    await a.channelBind(0x4000, { address: PEER_A, port: 5000 });
    assert.equal(offload.listed.has(h.key(a)), true);
    await a.refresh(0);
    assert.equal(offload.listed.has(h.key(a)), false, 'Refresh 0');

    const b = h.client();
    await b.mustAllocate();
    await b.channelBind(0x4000, { address: PEER_A, port: 5000 });
    await h.advance(600_000);
    assert.equal(h.engine.allocations, 0);
    assert.equal(offload.listed.has(h.key(b)), false, 'allocation expiry');

    const c = h.client();
    await c.mustAllocate();
    await c.channelBind(0x4000, { address: PEER_A, port: 5000 });
    await c.channelBind(0x4001, { address: PEER_B, port: 5000 });
    // Keep the allocation and PEER_B's binding alive past PEER_A's binding and its quarantine.
    for (let t = 0; t < 3; t++) {
      await h.advance(290_000);
      await c.refresh();
      await c.channelBind(0x4001, { address: PEER_B, port: 5000 });
    }
    assert.deepEqual(
      offload.listed.get(h.key(c))?.map((ch) => ch.channel),
      [0x4001],
    );
  });

  it("never lists a peer on the server's own addresses, a peer of the other family, or a TCP client", async () => {
    const offload = new RecordingOffload();
    const h = new Harness({ offload, allowedPeerRanges: ['192.0.2.0/24', '2001:db8::/32'], relayAddressIPv6: RELAY_IPV6 });
    const c = h.client();
    await c.mustAllocate((w) => w.add(Attr.AdditionalAddressFamily, encodeAddressFamily(AddressFamily.IPv6)));
    // The server's own listening port: ChannelBind refuses it with 403 before anything is listed.
    assert.equal((await c.channelBind(0x4000, { address: SERVER_IP, port: SERVER_PORT })).code, 403);
    assert.equal((await c.channelBind(0x4001, { address: '2001:db8::5', port: 5000 })).code, 200);
    assert.equal((await c.channelBind(0x4002, { address: PEER_A, port: 5000 })).code, 200);
    assert.equal((await c.channelBind(0x4003, { address: '192.0.2.50', port: 4000 })).code, 200);
    // Another allocation of this server (its relayed address): JavaScript relays between them.
    assert.equal((await c.channelBind(0x4004, { address: RELAY_IP, port: 50_000 })).code, 200);
    assert.deepEqual(
      offload.listed.get(h.key(c))?.map((ch) => ch.channel),
      [0x4002, 0x4003],
      'the IPv6 peer of an IPv4 client stays on the JavaScript path',
    );
    // The cluster learns that 192.0.2.50 is one of its nodes: the next tick takes the channel out.
    h.peerPolicy.addServer(['192.0.2.50'], [4000]);
    await h.advance(1000);
    assert.deepEqual(
      offload.listed.get(h.key(c))?.map((ch) => ch.channel),
      [0x4002],
    );

    const tcp = new RecordingOffload();
    const t = new Harness({ offload: tcp, transport: 'tcp' });
    const tc = t.client();
    await tc.mustAllocate();
    assert.equal((await tc.channelBind(0x4000, { address: PEER_A, port: 5000 })).code, 200);
    assert.equal(tcp.listed.size, 0);
  });

  it('never lists a channel of an allocation under a bandwidth limit: the kernel program has no token bucket', async () => {
    const limits: BandwidthOptions[] = [
      { maxBps: 10_000, userMaxBps: 0, bpsCapacity: 0 },
      { maxBps: 0, userMaxBps: 10_000, bpsCapacity: 0 },
      { maxBps: 0, userMaxBps: 0, bpsCapacity: 10_000 },
    ];
    for (const bandwidth of limits) {
      const offload = new RecordingOffload();
      const h = new Harness({ offload, bandwidth });
      const c = h.client();
      const socket = h.relay(await c.mustAllocate());
      assert.equal((await c.channelBind(0x4000, { address: PEER_A, port: 5000 })).code, 200);
      await h.advance(1000);
      assert.equal(offload.listed.size, 0, `nothing listed with ${JSON.stringify(bandwidth)}`);
      // JavaScript relays it, under the limit.
      c.channelData(0x4000, Buffer.alloc(100));
      assert.equal(socket.sent.length, 1);
    }
    // The same without a limit is listed (the control).
    const offload = new RecordingOffload();
    const h = new Harness({ offload, bandwidth: { maxBps: 0, userMaxBps: 0, bpsCapacity: 0 } });
    const c = h.client();
    await c.mustAllocate();
    await c.channelBind(0x4000, { address: PEER_A, port: 5000 });
    assert.equal(offload.listed.size, 1);
  });
});

// ------------------------------------------------------------------ bandwidth limits (turn/bandwidth.ts)

const KB = Buffer.alloc(1000, 0x61);

/** Sends `count` 1000-byte ChannelData messages on 0x4000 and says how many reached the peer. */
function sendUp(c: Client, socket: FakeRelaySocket, count: number): number {
  const before = socket.sent.length;
  for (let i = 0; i < count; i++) c.channelData(0x4000, KB);
  return socket.sent.length - before;
}

/** The peer sends `count` 1000-byte datagrams; how many reached the client. */
function sendDown(c: Client, socket: FakeRelaySocket, count: number): number {
  for (let i = 0; i < count; i++) socket.inject(KB, PEER_A, 5000);
  return c.received().length;
}

async function boundClient(h: Harness, username = 'alice', address?: string): Promise<{ c: Client; socket: FakeRelaySocket }> {
  const c = h.client(username, undefined, address);
  const socket = h.relay(await c.mustAllocate());
  assert.equal((await c.channelBind(0x4000, { address: PEER_A, port: 5000 })).code, 200);
  return { c, socket };
}

describe('TurnEngine: bandwidth limits', () => {
  it('--max-bps: a full bucket of one second passes, the excess is dropped and counted, the bucket refills; each direction on its own', async () => {
    const h = new Harness({ bandwidth: { maxBps: 10_000, userMaxBps: 0, bpsCapacity: 0 } });
    const { c, socket } = await boundClient(h);
    // The bucket starts full: 10,000 bytes = ten 1000-byte messages, then nothing.
    assert.equal(sendUp(c, socket, 10), 10);
    assert.equal(h.counters.drops.bandwidth, 0);
    assert.equal(sendUp(c, socket, 3), 0);
    assert.equal(h.counters.drops.bandwidth, 3);
    // 100 ms refill 1000 bytes: exactly one more.
    h.clock.advance(100);
    assert.equal(sendUp(c, socket, 2), 1);
    assert.equal(h.counters.drops.bandwidth, 4);
    // A Send indication counts its DATA against the same bucket.
    c.sendIndication({ address: PEER_A, port: 5000 }, KB);
    assert.equal(h.counters.drops.bandwidth, 5);
    // Peer to client has its own bucket (coturn: input and output apart): still full.
    assert.equal(sendDown(c, socket, 12), 10);
    assert.equal(h.counters.drops.bandwidth, 7);
    // Never more than one second of burst: after 5 s, again ten.
    h.clock.advance(5000);
    assert.equal(sendUp(c, socket, 12), 10);
    assert.equal(h.counters.packetsClientToPeer, 21);
    assert.equal(h.counters.bytesClientToPeer, 21_000);
    // Dropping is all: the allocation lives and answers (coturn #1168 tore it down).
    assert.equal(h.engine.allocations, 1);
    assert.equal((await c.refresh()).code, 200);
  });

  it('--max-bps is per allocation: another allocation has its own bucket', async () => {
    const h = new Harness({ bandwidth: { maxBps: 5_000, userMaxBps: 0, bpsCapacity: 0 } });
    const a = await boundClient(h, 'alice');
    const b = await boundClient(h, 'alice');
    assert.equal(sendUp(a.c, a.socket, 8), 5);
    assert.equal(sendUp(b.c, b.socket, 8), 5);
    assert.equal(h.counters.drops.bandwidth, 6);
  });

  it('--bps-capacity is the whole node: two users share one bucket per direction', async () => {
    const h = new Harness({ bandwidth: { maxBps: 0, userMaxBps: 0, bpsCapacity: 10_000 } });
    const a = await boundClient(h, 'alice');
    const b = await boundClient(h, 'bob');
    assert.equal(sendUp(a.c, a.socket, 6), 6);
    assert.equal(sendUp(b.c, b.socket, 6), 4);
    assert.equal(sendDown(b.c, b.socket, 6), 6, 'the other direction has its own');
    assert.equal(h.counters.drops.bandwidth, 2);
  });

  it("--user-max-bps on one node: a user's allocations share one bucket, another user is not touched", async () => {
    const h = new Harness({ bandwidth: { maxBps: 0, userMaxBps: 10_000, bpsCapacity: 0 } });
    const a1 = await boundClient(h, 'alice');
    const a2 = await boundClient(h, 'alice');
    const b = await boundClient(h, 'bob');
    assert.equal(sendUp(a1.c, a1.socket, 6), 6);
    assert.equal(sendUp(a2.c, a2.socket, 6), 4);
    assert.equal(sendUp(b.c, b.socket, 10), 10);
    assert.equal(h.counters.drops.bandwidth, 2);
  });

  it('--user-max-bps across two nodes: after one exchange through the store each node takes its share, together the limit', async () => {
    const store = new MemoryAllocationStore();
    const bandwidth = { maxBps: 0, userMaxBps: 10_000, bpsCapacity: 0 };
    const a = new Harness({ store, nodeId: 'node-a', bandwidth });
    const b = new Harness({ store, nodeId: 'node-b', bandwidth });
    const ca = await boundClient(a);
    const cb = await boundClient(b, 'alice', '198.51.100.20');
    const second = async (): Promise<void> => {
      await a.advance(1000);
      await b.advance(1000);
    };
    await second(); // The first tick starts the measuring window.
    // Second 1: 8 KB/s on each node, nobody has reported yet: each node alone is under the limit.
    assert.equal(sendUp(ca.c, ca.socket, 8), 8);
    assert.equal(sendUp(cb.c, cb.socket, 8), 8);
    // A reports first and hears of nobody else; B hears of A: 16 KB/s wanted, B's share is half.
    await second();
    assert.equal(sendUp(ca.c, ca.socket, 8), 8);
    assert.equal(sendUp(cb.c, cb.socket, 8), 5);
    // Now both know: 5 KB/s each, together the limit.
    await second();
    assert.equal(sendUp(ca.c, ca.socket, 8), 5);
    assert.equal(sendUp(cb.c, cb.socket, 8), 5);
    assert.equal(a.counters.drops.bandwidth + b.counters.drops.bandwidth, 9);
    // B goes quiet: its next report still carries second 3, the one after says zero; once A
    // hears the zero (A ticks first, so one second later), A has the whole limit again.
    await second();
    await second();
    await second();
    assert.equal(sendUp(ca.c, ca.socket, 10), 10);
    assert.equal(a.engine.allocations + b.engine.allocations, 2, 'nothing torn down');
  });

  it('--user-max-bps: a node that gets no answer from the store falls back to the whole limit after three periods (fail open)', async () => {
    const store = new MemoryAllocationStore();
    const bandwidth = { maxBps: 0, userMaxBps: 10_000, bpsCapacity: 0 };
    const a = new Harness({ store, nodeId: 'node-a', bandwidth });
    const b = new Harness({ store, nodeId: 'node-b', bandwidth });
    const ca = await boundClient(a);
    const cb = await boundClient(b, 'alice', '198.51.100.20');
    for (let i = 0; i < 3; i++) {
      await a.advance(1000);
      await b.advance(1000);
      sendUp(ca.c, ca.socket, 8);
      sendUp(cb.c, cb.socket, 8);
    }
    await a.advance(1000);
    assert.equal(sendUp(ca.c, ca.socket, 8), 5, 'A holds half while both report');
    // The store fails from now on.
    store.exchangeUsage = () => Promise.reject(new Error('store down'));
    const errors = a.counters.storeErrors;
    await a.advance(1000);
    sendUp(ca.c, ca.socket, 8);
    await a.advance(1000);
    sendUp(ca.c, ca.socket, 8);
    await a.advance(1000);
    assert.ok(a.counters.storeErrors > errors, 'the failed exchanges are counted');
    assert.equal(sendUp(ca.c, ca.socket, 12), 10);
  });
});

// ------------------------------------------------------------------ RFC 8016 mobility

/** An Allocate with an empty MOBILITY-TICKET: the relayed address and the ticket of the answer. */
async function mobileAllocate(c: Client): Promise<{ relayed: Endpoint; ticket: Buffer }> {
  const r = await c.allocate((w) => w.add(Attr.MobilityTicket, Buffer.alloc(0)));
  assert.equal(r.code, 200, `Allocate failed: ${r.code} ${r.reason}`);
  const ticket = getAttribute(r.message, Attr.MobilityTicket);
  assert.ok(ticket && ticket.length > 0, 'the answer carries a ticket');
  return { relayed: r.relayed!, ticket: Buffer.from(ticket) };
}

function refreshWithTicket(c: Client, ticket: Buffer): Promise<Reply> {
  return c.request(Method.Refresh, (w) => w.add(Attr.MobilityTicket, ticket));
}

/** The same client (user, password, nonce) sending from another source port, as after a NAT rebinding or a network change. */
function movedClient(c: Client, port: number, address = c.address): Client {
  const moved = c.h.client(c.username, c.password, address, port);
  moved.nonce = c.nonce;
  return moved;
}

describe('TurnEngine: RFC 8016 mobility (--mobility)', () => {
  it('gives a ticket to an Allocate that asks with an empty MOBILITY-TICKET, and none to one that does not', async () => {
    const h = new Harness({ mobility: true });
    await mobileAllocate(h.client());
    const plain = await h.client('bob').allocate();
    assert.equal(plain.code, 200);
    assert.equal(getAttribute(plain.message, Attr.MobilityTicket), undefined);
    const nonEmpty = await h.client('carol').allocate((w) => w.add(Attr.MobilityTicket, Buffer.from('xx')));
    assert.equal(nonEmpty.code, 400, 'an Allocate carries an empty ticket');
  });

  it('moves the allocation to the new 5-tuple of a Refresh with the ticket: same relayed address, permissions and channels, both ways', async () => {
    const h = new Harness({ mobility: true });
    const c = h.client();
    const { relayed, ticket } = await mobileAllocate(c);
    assert.equal((await c.createPermission(PEER_B)).code, 200);
    assert.equal((await c.channelBind(0x4000, { address: PEER_A, port: 5000 })).code, 200);
    const moved = movedClient(c, c.port + 1, '198.51.100.77');
    const r = await refreshWithTicket(moved, ticket);
    assert.equal(r.code, 200);
    const next = getAttribute(r.message, Attr.MobilityTicket);
    assert.ok(next && !next.equals(ticket), 'a new ticket in the answer');
    assert.equal(h.engine.allocations, 1);
    // The store holds it under the new 5-tuple only, with the same relayed address.
    assert.equal(await h.store.get(h.key(c)), undefined);
    const record = await h.store.get(h.key(moved));
    assert.deepEqual(
      [record?.relayedAddress, record?.relayedPort, record?.clientAddress, record?.clientPort],
      [relayed.address, relayed.port, moved.address, moved.port],
    );
    assert.deepEqual(Object.keys(record?.permissions ?? {}).sort(), [PEER_A, PEER_B].sort());
    // ChannelData from the new 5-tuple reaches the peer from the same relayed address...
    const socket = h.relay(relayed);
    moved.channelData(0x4000, Buffer.from('up'));
    assert.deepEqual(socket.sent.at(-1), { data: Buffer.from('up'), address: PEER_A, port: 5000 });
    // ...and the peer's answer goes to the new 5-tuple, on the channel.
    socket.inject(Buffer.from('down'), PEER_A, 5000);
    assert.deepEqual(
      moved.received().map((x) => (x.kind === 'channel' ? [x.channel, x.data.toString()] : x.kind)),
      [[0x4000, 'down']],
    );
    assert.deepEqual(c.received(), [], 'nothing for the old 5-tuple');
    // The old 5-tuple holds nothing any more: its ChannelData is dropped, its Refresh is 437.
    const sentBefore = socket.sent.length;
    c.channelData(0x4000, Buffer.from('stale'));
    assert.equal(socket.sent.length, sentBefore);
    assert.equal((await c.refresh()).code, 437);
    // The permission for PEER_B came along too.
    moved.sendIndication({ address: PEER_B, port: 6000 }, Buffer.from('b'));
    assert.deepEqual(socket.sent.at(-1), { data: Buffer.from('b'), address: PEER_B, port: 6000 });
    assert.equal(h.counters.mobilityMoves, 1);
  });

  it('moves once per ticket: a replay after the move, a second redemption at once, and a move back with the first ticket are refused', async () => {
    const h = new Harness({ mobility: true });
    const c = h.client();
    const { relayed, ticket } = await mobileAllocate(c);
    // Two redemptions of one ticket from two new 5-tuples, delivered together: one moves it.
    const m1 = movedClient(c, c.port + 1);
    const m2 = movedClient(c, c.port + 2);
    const [r1, r2] = await Promise.all([refreshWithTicket(m1, ticket), refreshWithTicket(m2, ticket)]);
    assert.deepEqual([r1.code, r2.code].sort(), [200, 400]);
    const winner = r1.code === 200 ? m1 : m2;
    const next = Buffer.from(getAttribute((r1.code === 200 ? r1 : r2).message, Attr.MobilityTicket)!);
    // A replay of the spent ticket from a third 5-tuple: its 5-tuple holds no allocation now.
    const thief = movedClient(c, c.port + 3);
    assert.equal((await refreshWithTicket(thief, ticket)).code, 437);
    // Back to the first 5-tuple with the new ticket: moved again.
    assert.equal((await refreshWithTicket(c, next)).code, 200);
    // The first ticket names this 5-tuple again, but it was spent: 400 from anywhere else.
    assert.equal((await refreshWithTicket(thief, ticket)).code, 400);
    assert.equal((await refreshWithTicket(winner, next)).code, 437, 'the second ticket names the 5-tuple the allocation left');
    assert.equal(h.engine.allocations, 1);
    assert.ok((await h.store.get(h.key(c)))?.relayedPort === relayed.port, 'still with the client that moved it');
    assert.equal(h.counters.mobilityMoves, 2);
  });

  it("refuses another user's Refresh with the ticket (441), and a ticket this server did not seal (400)", async () => {
    const h = new Harness({ mobility: true });
    const c = h.client();
    const { ticket } = await mobileAllocate(c);
    const bob = h.client('bob', 'bob-pw', c.address, c.port + 1);
    assert.equal((await refreshWithTicket(bob, ticket)).code, 441);
    const forged = Buffer.from(ticket);
    forged[forged.length - 1]! ^= 1;
    assert.equal((await refreshWithTicket(movedClient(c, c.port + 2), forged)).code, 400);
    const other = new MobilityTickets(Buffer.from('another cluster secret'));
    const foreign = other.seal({ key: h.key(c), createdAtMs: h.clock.now(), relayedPort: 1, generation: 0 });
    assert.equal((await refreshWithTicket(movedClient(c, c.port + 3), foreign)).code, 400);
    // None of these moved it.
    assert.ok(await h.store.get(h.key(c)));
    assert.equal(h.counters.mobilityMoves, 0);
  });

  it("answers a Refresh with the ticket from the allocation's own 5-tuple with a new ticket, and no move", async () => {
    const h = new Harness({ mobility: true });
    const c = h.client();
    const { ticket } = await mobileAllocate(c);
    const r = await refreshWithTicket(c, ticket);
    assert.equal(r.code, 200);
    assert.ok(getAttribute(r.message, Attr.MobilityTicket));
    assert.equal(h.counters.mobilityMoves, 0);
  });

  it('is off without --mobility: 405 Mobility Forbidden for an Allocate or a Refresh with MOBILITY-TICKET', async () => {
    const h = new Harness();
    const c = h.client();
    const a = await c.allocate((w) => w.add(Attr.MobilityTicket, Buffer.alloc(0)));
    assert.equal(a.code, 405);
    assert.equal(a.reason, 'Mobility Forbidden');
    assert.equal(h.engine.allocations, 0);
    await c.mustAllocate();
    const ticket = new MobilityTickets(NONCE_SECRET).seal({ key: h.key(c), createdAtMs: h.clock.now(), relayedPort: 1, generation: 0 });
    assert.equal((await refreshWithTicket(movedClient(c, c.port + 1), ticket)).code, 405);
    assert.ok(await h.store.get(h.key(c)), 'not moved');
  });
});

// RFC 6062 TCP allocations in the engine, driven with fakes of the ports (no sockets) and a
// ManualClock: the Allocate rules (§5.1), Connect (§5.2) with the peer policy and
// permissions of UDP peers, 446 and 447, inbound peer connections and ConnectionAttempt
// (§5.3), ConnectionBind (§5.4), the 30 s wait for a bind, the quotas, and the end of the
// allocation closing its connections (§5.5).

import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { createLogger } from '../../../../src/ops/log.js';
import { MemoryAllocationStore } from '../../../../src/store/memory.js';
import type { ClientTransportKind } from '../../../../src/store/types.js';
import { decodeAddress } from '../../../../src/stun/address.js';
import { decodeErrorCode, decodeUint32, encodeEvenPort, encodeRequestedTransport, encodeUint32 } from '../../../../src/stun/attributes.js';
import { Attr, MessageClass, Method, TRANSPORT_TCP, TRANSPORT_UDP } from '../../../../src/stun/constants.js';
import { longTermKey } from '../../../../src/stun/integrity.js';
import { type StunMessage, decodeMessage, getAttribute } from '../../../../src/stun/message.js';
import { MessageWriter } from '../../../../src/stun/writer.js';
import type { EngineListener } from '../../../../src/turn/allocation/table.js';
import { CredentialStore } from '../../../../src/turn/auth/credentials.js';
import { NonceIssuer } from '../../../../src/turn/auth/nonce.js';
import { ManualClock } from '../../../../src/turn/clock.js';
import { EngineCounters } from '../../../../src/turn/counters.js';
import { TurnEngine } from '../../../../src/turn/engine.js';
import { createPeerPolicy } from '../../../../src/turn/peer-policy.js';
import { FakeClientPath, FakeRelayFactory, FakeTcpRelayFactory, type FakeTcpRelaySocket } from '../../../helpers/fake-io.js';

const REALM = 'example.org';
const SERVER_IP = '192.0.2.1';
const SERVER_PORT = 3478;
const RELAY_IP = '192.0.2.100';
const PEER = '8.8.8.8';
const CLIENT_IP = '198.51.100.10';

async function flush(rounds = 3): Promise<void> {
  for (let i = 0; i < rounds; i++) await new Promise<void>((resolve) => setImmediate(resolve));
}

interface Reply {
  readonly message: StunMessage;
  readonly code: number;
}

function codeOf(m: StunMessage): number {
  if (m.cls === MessageClass.SuccessResponse) return 200;
  return decodeErrorCode(getAttribute(m, Attr.ErrorCode) ?? Buffer.alloc(0))?.code ?? 0;
}

class Node {
  readonly clock = new ManualClock();
  readonly counters = new EngineCounters();
  readonly tcp = new FakeTcpRelayFactory();
  readonly engine: TurnEngine;
  private nextPort = 40000;

  constructor(o: { tcpRelays?: boolean; userQuota?: number; totalQuota?: number } = {}) {
    const credentials = new CredentialStore({
      realm: REALM,
      users: new Map([
        ['alice', 'alice-pw'],
        ['bob', 'bob-pw'],
      ]),
      authSecrets: [],
    });
    this.engine = new TurnEngine({
      nodeId: 'node-a',
      credentials,
      nonces: new NonceIssuer(Buffer.from('nonce secret'), 600_000, credentials.securityFeatures),
      peerPolicy: createPeerPolicy({
        allowLoopbackPeers: false,
        allowedPeerRanges: [],
        deniedPeerRanges: [],
        serverAddresses: [SERVER_IP, RELAY_IP],
        servicePorts: [SERVER_PORT],
      }),
      store: new MemoryAllocationStore({ now: () => this.clock.now() }),
      relays: new FakeRelayFactory(),
      tcpRelays: o.tcpRelays === false ? undefined : this.tcp,
      clock: this.clock,
      logger: createLogger('silent'),
      counters: this.counters,
      relayAddressIPv4: RELAY_IP,
      minPort: 49152,
      maxPort: 65535,
      maxLifetimeSeconds: 3600,
      userQuota: o.userQuota ?? 0,
      totalQuota: o.totalQuota ?? 0,
      software: 'anyturn-test',
    });
  }

  /** A new client connection (each TCP/TLS connection is its own path, as the stream listener makes them). */
  connection(username = 'alice', transport: ClientTransportKind = 'tcp'): Conn {
    return new Conn(this, new FakeClientPath(transport, SERVER_IP, SERVER_PORT), this.nextPort++, username);
  }

  async advance(ms: number): Promise<void> {
    this.clock.advance(ms);
    await this.engine.tick();
    await flush();
  }
}

class Conn {
  readonly listener: EngineListener;
  nonce: string | undefined;

  constructor(
    readonly node: Node,
    readonly path: FakeClientPath,
    readonly port: number,
    readonly username: string,
  ) {
    this.listener = node.engine.addListener(path);
  }

  build(method: number, decorate: (w: MessageWriter) => void): { buf: Buffer; transactionId: Buffer } {
    const transactionId = randomBytes(12);
    const w = new MessageWriter(method, MessageClass.Request, transactionId);
    decorate(w);
    if (this.nonce !== undefined) {
      w.addText(Attr.Username, this.username);
      w.addText(Attr.Realm, REALM);
      w.addText(Attr.Nonce, this.nonce);
      w.addIntegrity(longTermKey(this.username, REALM, `${this.username}-pw`));
    }
    return { buf: w.toBuffer(), transactionId };
  }

  async request(method: number, decorate: (w: MessageWriter) => void = () => undefined): Promise<Reply> {
    for (let attempt = 0; attempt < 2; attempt++) {
      const { buf, transactionId } = this.build(method, decorate);
      const from = this.path.sent.length;
      this.node.engine.handleClientPacket(this.listener, buf, CLIENT_IP, this.port);
      let reply: Reply | undefined;
      for (let round = 0; round < 50 && !reply; round++) {
        for (const s of this.path.sent.slice(from)) {
          const decoded = decodeMessage(s.data);
          if (decoded.ok && decoded.message.transactionId.equals(transactionId)) reply = { message: decoded.message, code: codeOf(decoded.message) };
        }
        if (!reply) await flush(1);
      }
      if (!reply) throw new Error('no answer');
      if (reply.code === 401 && this.nonce === undefined) {
        this.nonce = getAttribute(reply.message, Attr.Nonce)!.toString('utf8');
        continue;
      }
      return reply;
    }
    throw new Error('authentication did not converge');
  }

  allocate(transport = TRANSPORT_TCP, decorate: (w: MessageWriter) => void = () => undefined): Promise<Reply> {
    return this.request(Method.Allocate, (w) => {
      w.add(Attr.RequestedTransport, encodeRequestedTransport(transport));
      decorate(w);
    });
  }

  /** A TCP allocation with a permission for PEER; its relayed address's fake socket. */
  async tcpAllocation(): Promise<FakeTcpRelaySocket> {
    const r = await this.allocate();
    assert.equal(r.code, 200);
    const relayed = decodeAddress(getAttribute(r.message, Attr.XorRelayedAddress)!, r.message.transactionId)!;
    assert.equal((await this.permit(PEER)).code, 200);
    return this.node.tcp.socketAt(relayed.address, relayed.port)!;
  }

  permit(address: string): Promise<Reply> {
    return this.request(Method.CreatePermission, (w) => w.addXorAddress(Attr.XorPeerAddress, address, 1));
  }

  connect(address: string, port: number): Promise<Reply> {
    return this.request(Method.Connect, (w) => w.addXorAddress(Attr.XorPeerAddress, address, port));
  }

  bind(connectionId: number | undefined): Promise<Reply> {
    return this.request(Method.ConnectionBind, (w) => {
      if (connectionId !== undefined) w.add(Attr.ConnectionId, encodeUint32(connectionId));
    });
  }

  /** ConnectionAttempt indications this connection received. */
  attempts(): { peer: { address: string; port: number }; connectionId: number }[] {
    const out: { peer: { address: string; port: number }; connectionId: number }[] = [];
    for (const s of this.path.sent) {
      const decoded = decodeMessage(s.data);
      if (!decoded.ok || decoded.message.method !== Method.ConnectionAttempt || decoded.message.cls !== MessageClass.Indication) continue;
      const m = decoded.message;
      const peer = decodeAddress(getAttribute(m, Attr.XorPeerAddress)!, m.transactionId)!;
      out.push({ peer: { address: peer.address, port: peer.port }, connectionId: decodeUint32(getAttribute(m, Attr.ConnectionId)!)! });
    }
    return out;
  }
}

function connectionIdOf(r: Reply): number {
  const value = getAttribute(r.message, Attr.ConnectionId);
  assert.ok(value, 'CONNECTION-ID in the Connect answer');
  return decodeUint32(value)!;
}

describe('RFC 6062 §5.1: TCP Allocate', () => {
  it('makes a TCP relayed address over TCP and TLS', async () => {
    const node = new Node();
    for (const transport of ['tcp', 'tls'] as const) {
      const r = await node.connection('alice', transport).allocate();
      assert.equal(r.code, 200);
      const relayed = decodeAddress(getAttribute(r.message, Attr.XorRelayedAddress)!, r.message.transactionId)!;
      assert.ok(node.tcp.socketAt(relayed.address, relayed.port), 'listening on the relayed address');
    }
  });

  it('answers 400 over UDP, and to EVEN-PORT, RESERVATION-TOKEN, DONT-FRAGMENT', async () => {
    const node = new Node();
    assert.equal((await node.connection('alice', 'udp').allocate()).code, 400);
    assert.equal((await node.connection().allocate(TRANSPORT_TCP, (w) => w.add(Attr.EvenPort, encodeEvenPort(false)))).code, 400);
    assert.equal((await node.connection().allocate(TRANSPORT_TCP, (w) => w.add(Attr.ReservationToken, randomBytes(8)))).code, 400);
    assert.equal((await node.connection().allocate(TRANSPORT_TCP, (w) => w.add(Attr.DontFragment, Buffer.alloc(0)))).code, 400);
    assert.equal(node.tcp.sockets.length, 0);
  });

  it('answers 442 when the server relays no TCP (--no-tcp-relay)', async () => {
    assert.equal((await new Node({ tcpRelays: false }).connection().allocate()).code, 442);
  });

  it('counts TCP allocations in the quotas: --total-quota (508) and --user-quota (486)', async () => {
    const total = new Node({ totalQuota: 1 });
    assert.equal((await total.connection().allocate()).code, 200);
    assert.equal((await total.connection('bob').allocate(TRANSPORT_UDP)).code, 508);
    const user = new Node({ userQuota: 1 });
    assert.equal((await user.connection().allocate()).code, 200);
    assert.equal((await user.connection().allocate(TRANSPORT_UDP)).code, 486);
  });

  it('refuses ChannelBind (400) and drops Send indications on a TCP allocation', async () => {
    const node = new Node();
    const control = node.connection();
    await control.tcpAllocation();
    const bind = await control.request(Method.ChannelBind, (w) => {
      w.add(Attr.ChannelNumber, Buffer.from([0x40, 0x00, 0, 0]));
      w.addXorAddress(Attr.XorPeerAddress, PEER, 80);
    });
    assert.equal(bind.code, 400);
    const send = new MessageWriter(Method.Send, MessageClass.Indication, randomBytes(12));
    send.addXorAddress(Attr.XorPeerAddress, PEER, 80);
    send.add(Attr.Data, Buffer.from('hi'));
    node.engine.handleClientPacket(control.listener, send.toBuffer(), CLIENT_IP, control.port);
    assert.equal(node.counters.drops.tcp_allocation, 1);
    assert.equal(node.counters.packetsClientToPeer, 0);
  });
});

describe('RFC 6062 §5.2: Connect', () => {
  it('connects from the relayed address within the 30 s timeout and answers with a CONNECTION-ID', async () => {
    const node = new Node();
    const control = node.connection();
    const relay = await control.tcpAllocation();
    const r = await control.connect(PEER, 80);
    assert.equal(r.code, 200);
    assert.ok(connectionIdOf(r) > 0);
    assert.deepEqual(relay.connects, [{ address: PEER, port: 80, timeoutMs: 30_000 }]);
    assert.equal(node.counters.tcpPeerConnections.connected, 1);
  });

  it('answers 437 without an allocation, 400 on a UDP allocation, 400 without XOR-PEER-ADDRESS, 441 to another user', async () => {
    const node = new Node();
    assert.equal((await node.connection().connect(PEER, 80)).code, 437);
    const udp = node.connection('alice', 'udp');
    assert.equal((await udp.allocate(TRANSPORT_UDP)).code, 200);
    assert.equal((await udp.permit(PEER)).code, 200);
    assert.equal((await udp.connect(PEER, 80)).code, 400);
    const control = node.connection();
    await control.tcpAllocation();
    assert.equal((await control.request(Method.Connect)).code, 400);
    const other = new Conn(node, control.path, control.port, 'bob');
    // Same 5-tuple (the control connection's listener), other credentials.
    (other as { listener: EngineListener }).listener = control.listener;
    assert.equal((await other.connect(PEER, 80)).code, 441);
  });

  for (const [what, address, port] of [
    ['a private address', '10.0.0.1', 80],
    ['loopback', '127.0.0.1', 80],
    ['the cloud metadata address', '169.254.169.254', 80],
    ["the server's own service port", SERVER_IP, SERVER_PORT],
  ] as const) {
    it(`refuses ${what} by the peer policy (403) and makes no connection`, async () => {
      const node = new Node();
      const control = node.connection();
      const relay = await control.tcpAllocation();
      assert.equal((await control.connect(address, port)).code, 403);
      assert.equal(relay.connects.length, 0);
      assert.ok(node.counters.peerPolicyRefusals >= 1);
    });
  }

  it('needs a live permission for the peer (403)', async () => {
    const node = new Node();
    const control = node.connection();
    const relay = await control.tcpAllocation();
    assert.equal((await control.connect('9.9.9.9', 80)).code, 403);
    await node.advance(300_001);
    assert.equal((await control.connect(PEER, 80)).code, 403, 'the permission expired');
    assert.equal(relay.connects.length, 0);
  });

  it('answers 446 while a Connect to the peer is under way, and while its connection is pending or joined', async () => {
    const node = new Node();
    const control = node.connection();
    const relay = await control.tcpAllocation();
    relay.holding = true;
    const first = control.connect(PEER, 80);
    await flush();
    assert.equal((await control.connect(PEER, 80)).code, 446, 'under way');
    relay.release();
    const id = connectionIdOf(await first);
    assert.equal((await control.connect(PEER, 80)).code, 446, 'pending');
    assert.equal((await node.connection().bind(id)).code, 200);
    assert.equal((await control.connect(PEER, 80)).code, 446, 'joined');
    assert.equal((await control.connect(PEER, 81)).code, 200, 'another port of the peer is another connection');
  });

  it('answers 447 when the peer refuses or the attempt fails', async () => {
    const node = new Node();
    const control = node.connection();
    const relay = await control.tcpAllocation();
    relay.refusing.add(`${PEER}|80`);
    assert.equal((await control.connect(PEER, 80)).code, 447);
    assert.equal(node.counters.tcpPeerConnections.connect_failed, 1);
    // Nothing is left behind: the next Connect to that peer is tried again.
    relay.refusing.clear();
    assert.equal((await control.connect(PEER, 80)).code, 200);
  });
});

describe('RFC 6062 §5.3, §5.4: ConnectionAttempt and ConnectionBind', () => {
  it('joins a new client connection to the peer connection after its success answer', async () => {
    const node = new Node();
    const control = node.connection();
    const relay = await control.tcpAllocation();
    const id = connectionIdOf(await control.connect(PEER, 80));
    const data = node.connection();
    assert.equal((await data.bind(id)).code, 200);
    assert.equal(relay.connections[0]!.joinedTo, data.path);
    assert.equal(node.counters.tcpPeerConnections.bound, 1);
    // Bound once: the id names no pending connection any more.
    assert.equal((await node.connection().bind(id)).code, 400);
  });

  it('answers 400 without CONNECTION-ID, for an unknown one, on a control connection, and over UDP; 441 to another user', async () => {
    const node = new Node();
    const control = node.connection();
    const relay = await control.tcpAllocation();
    const id = connectionIdOf(await control.connect(PEER, 80));
    assert.equal((await node.connection().bind(undefined)).code, 400);
    assert.equal((await node.connection().bind(id ^ 1)).code, 400);
    assert.equal((await control.bind(id)).code, 400, 'the control connection holds an allocation');
    assert.equal((await node.connection('alice', 'udp').bind(id)).code, 400);
    assert.equal((await node.connection('bob').bind(id)).code, 441);
    assert.equal(relay.connections[0]!.joinedTo, undefined);
    assert.equal((await node.connection().bind(id)).code, 200, 'still pending after the refusals');
  });

  it('closes a peer connection no ConnectionBind claimed within 30 s', async () => {
    const node = new Node();
    const control = node.connection();
    const relay = await control.tcpAllocation();
    const id = connectionIdOf(await control.connect(PEER, 80));
    await node.advance(29_000);
    assert.equal(relay.connections[0]!.closed, false);
    await node.advance(1_000);
    assert.equal(relay.connections[0]!.closed, true);
    assert.equal(node.counters.drops.tcp_bind_timeout, 1);
    assert.equal((await node.connection().bind(id)).code, 400);
  });

  it('announces a permitted peer connection in a ConnectionAttempt on the control connection', async () => {
    const node = new Node();
    const control = node.connection();
    const relay = await control.tcpAllocation();
    const inbound = relay.inject(PEER, 5555);
    const attempts = control.attempts();
    assert.equal(attempts.length, 1);
    assert.deepEqual(attempts[0]!.peer, { address: PEER, port: 5555 });
    const data = node.connection();
    assert.equal((await data.bind(attempts[0]!.connectionId)).code, 200);
    assert.equal(inbound.joinedTo, data.path);
    assert.equal(node.counters.tcpPeerConnections.accepted, 1);
  });

  it('closes a peer connection without a live permission (none, or expired), and announces nothing', async () => {
    const node = new Node();
    const control = node.connection();
    const relay = await control.tcpAllocation();
    assert.equal(relay.inject('9.9.9.9', 5555).closed, true);
    await node.advance(300_001);
    assert.equal(relay.inject(PEER, 5555).closed, true, 'the permission expired');
    assert.equal(control.attempts().length, 0);
    assert.equal(node.counters.drops.tcp_peer_refused, 2);
  });
});

describe('RFC 6062 §5.5: the allocation ends, so do its connections', () => {
  for (const [how, end] of [
    [
      'Refresh 0',
      async (_node: Node, control: Conn) => assert.equal((await control.request(Method.Refresh, (w) => w.add(Attr.Lifetime, encodeUint32(0)))).code, 200),
    ],
    ['its control connection closing', async (node: Node, control: Conn) => node.engine.closeListener(control.listener, 'connection-closed')],
    ['expiry', async (node: Node) => node.advance(601_000)],
  ] as const) {
    it(`closes every peer connection and the relayed address on ${how}`, async () => {
      const node = new Node();
      const control = node.connection();
      const relay = await control.tcpAllocation();
      const joined = connectionIdOf(await control.connect(PEER, 80));
      assert.equal((await node.connection().bind(joined)).code, 200);
      connectionIdOf(await control.connect(PEER, 81));
      await end(node, control);
      await flush();
      assert.equal(relay.closed, true);
      assert.deepEqual(
        relay.connections.map((c) => c.closed),
        [true, true],
      );
    });
  }
});

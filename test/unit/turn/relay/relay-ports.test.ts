// Relay port choice: random first, then the whole range, so that the last free
// ports of a nearly full range are still found (a benchmark filling a 1,000-port
// range saw 508s at 92-97% full when only 64 random ports were tried). Ports this
// node holds cost no bind; ports held by another process cost at most
// MAX_BIND_COLLISIONS failed binds per Allocate; out of descriptors, none at all.

import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';

import { createLogger } from '../../../../src/ops/log.js';
import { MemoryAllocationStore } from '../../../../src/store/memory.js';
import { decodeAddress } from '../../../../src/stun/address.js';
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
import { MAX_BIND_COLLISIONS } from '../../../../src/turn/relay/relay-ports.js';
import { FakeClientPath, FakeRelayFactory } from '../../../helpers/fake-io.js';

const RELAY = '192.0.2.100';
const MIN = 50000;
const MAX = 50099;

/** `answerAtOnce`: the factory's binds answer within the call (as UdpRelayFactory's on an IP literal), else by a promise. */
function setup(pool: readonly string[] = [], answerAtOnce = false) {
  const clock = new ManualClock();
  const counters = new EngineCounters();
  const nonces = new NonceIssuer(Buffer.from('0123456789abcdef0123456789abcdef'), 600_000);
  const relays = new FakeRelayFactory();
  relays.answerAtOnce = answerAtOnce;
  const path = new FakeClientPath('udp', '192.0.2.1', 3478);
  const engine = new TurnEngine({
    nodeId: 'n',
    credentials: new CredentialStore({ realm: 'r', users: new Map([['u', 'p']]), authSecrets: [] }),
    nonces,
    peerPolicy: createPeerPolicy({ allowLoopbackPeers: false, allowedPeerRanges: [], deniedPeerRanges: [], serverAddresses: [] }),
    store: new MemoryAllocationStore({ now: () => clock.now() }),
    relays,
    clock,
    logger: createLogger('silent'),
    counters,
    relayAddressIPv4: RELAY,
    relayPoolIPv4: pool,
    minPort: MIN,
    maxPort: MAX,
    maxLifetimeSeconds: 3600,
    userQuota: 0,
    totalQuota: 0,
    software: '',
  });
  const listener = engine.addListener(path);
  const allocate = async (clientPort: number): Promise<{ code: number | undefined; port?: number }> => {
    const id = randomBytes(12);
    const w = new MessageWriter(Method.Allocate, MessageClass.Request, id);
    w.add(Attr.RequestedTransport, encodeRequestedTransport(TRANSPORT_UDP));
    w.addText(Attr.Username, 'u');
    w.addText(Attr.Realm, 'r');
    w.addText(Attr.Nonce, nonces.issue('198.51.100.7', clock.now()));
    w.addIntegrity(longTermKey('u', 'r', 'p'));
    engine.handleClientPacket(listener, w.toBuffer(), '198.51.100.7', clientPort);
    for (let i = 0; i < 1000; i++) {
      const sent = path
        .sentTo('198.51.100.7', clientPort)
        .map((x) => decodeMessage(x.data))
        .find((d) => d.ok && d.message.transactionId.equals(id));
      if (sent?.ok) {
        const m = sent.message;
        if (m.cls === MessageClass.SuccessResponse) return { code: 200, port: decodeAddress(getAttribute(m, Attr.XorRelayedAddress)!, m.transactionId)!.port };
        return { code: decodeErrorCode(getAttribute(m, Attr.ErrorCode)!)?.code };
      }
      await new Promise((r) => setImmediate(r));
    }
    return { code: undefined };
  };
  return { engine, relays, allocate, counters, clock };
}

/** Binds address:port through the factory, as this node's other allocations would hold it. */
async function holdOwn(relays: FakeRelayFactory, address: string, port: number): Promise<void> {
  const r = await relays.bind(address, port, () => undefined);
  assert.ok(!('failed' in r), `${address}:${port} bound`);
}

// Both ways a factory may answer: RelayPorts binds without a promise while the factory's binds
// answer at once, and the choice of ports must not depend on which.
for (const answerAtOnce of [false, true]) {
  describe(`relay port choice (binds answered ${answerAtOnce ? 'at once' : 'by a promise'})`, () => {
    it('finds the one free port of a range where this node holds every other port, with one bind', async () => {
      const { relays, allocate, engine } = setup([], answerAtOnce);
      for (let port = MIN; port <= MAX; port++) if (port !== 50042) await holdOwn(relays, RELAY, port);
      const before = relays.bindAttempts.length;
      const r = await allocate(40000);
      assert.equal(r.code, 200);
      assert.equal(r.port, 50042);
      assert.equal(relays.bindAttempts.length - before, 1, 'the ports it holds are never tried');
      await engine.stop();
    });

    it('adds the port range of every further relay address (--relay-ip repeated)', async () => {
      const { relays, allocate, engine } = setup(['192.0.2.101'], answerAtOnce);
      for (let port = MIN; port <= MAX; port++) await holdOwn(relays, RELAY, port);
      const seen = new Set<string>();
      for (let i = 0; i <= MAX - MIN; i++) {
        const r = await allocate(41000 + i);
        assert.equal(r.code, 200, `allocation ${i + 1} on the second relay address`);
      }
      for (const a of engine.allAllocations()) seen.add(`${a.relay.address}:${a.relay.port}`);
      assert.equal(seen.size, MAX - MIN + 1);
      assert.ok([...seen].every((x) => x.startsWith('192.0.2.101:')));
      assert.equal((await allocate(45001)).code, 508, 'both ranges full');
      await engine.stop();
    });

    it('fills every port of the range before answering 508', async () => {
      const { allocate, engine } = setup([], answerAtOnce);
      const ports = new Set<number>();
      for (let i = 0; i <= MAX - MIN; i++) {
        const r = await allocate(40000 + i);
        assert.equal(r.code, 200, `allocation ${i + 1} of ${MAX - MIN + 1}`);
        ports.add(r.port!);
      }
      assert.equal(ports.size, MAX - MIN + 1);
      assert.equal((await allocate(45000)).code, 508);
      await engine.stop();
    });

    it('ports another process holds: at most MAX_BIND_COLLISIONS failed binds per Allocate, then 508', async () => {
      const { relays, allocate, engine, counters } = setup([], answerAtOnce);
      for (let port = MIN; port <= MAX; port++) relays.takePort(RELAY, port);
      for (let i = 0; i < 5; i++) {
        const before = relays.bindAttempts.length;
        assert.equal((await allocate(42000 + i)).code, 508);
        assert.equal(relays.bindAttempts.length - before, MAX_BIND_COLLISIONS);
      }
      assert.equal(counters.relayBinds.in_use, 5 * MAX_BIND_COLLISIONS);
      assert.equal(counters.allocateRefusals.relay_ports_full, 5);
      await engine.stop();
    });

    it('a range full of its own allocations: 508 without a bind, and not ready until one goes', async () => {
      const { relays, allocate, engine, counters, clock } = setup([], answerAtOnce);
      for (let i = 0; i <= MAX - MIN; i++) assert.equal((await allocate(40000 + i)).code, 200);
      assert.match(engine.capacityProblem() ?? '', /every relay port is in use/);
      const before = relays.bindAttempts.length;
      for (let i = 0; i < 20; i++) assert.equal((await allocate(43000 + i)).code, 508);
      assert.equal(relays.bindAttempts.length, before, 'no bind for a port it holds');
      assert.equal(counters.allocateRefusals.relay_ports_full, 20);
      // One allocation runs out: a port is free again, and found.
      const first = [...engine.allAllocations()][0]!;
      first.expiresAtMs = clock.now();
      await engine.tick();
      assert.equal(engine.capacityProblem(), undefined);
      assert.equal((await allocate(44000)).code, 200);
      await engine.stop();
    });

    it('out of descriptors: 508 after one bind, then none per Allocate, until the probe binds again', async () => {
      const { relays, allocate, engine, counters } = setup([], answerAtOnce);
      assert.equal((await allocate(40000)).code, 200);
      relays.failAllBinds('EMFILE');
      let before = relays.bindAttempts.length;
      assert.equal((await allocate(40001)).code, 508);
      assert.equal(relays.bindAttempts.length - before, 1, 'the first EMFILE ends the Allocate');
      assert.match(engine.capacityProblem() ?? '', /out of file descriptors \(EMFILE\)/);
      before = relays.bindAttempts.length;
      for (let i = 0; i < 50; i++) assert.equal((await allocate(41000 + i)).code, 508);
      assert.equal(relays.bindAttempts.length, before, 'no bind while marked');
      assert.equal(counters.allocateRefusals.no_descriptors, 51);
      assert.equal(counters.relayBinds.no_descriptors, 1);
      await engine.tick();
      await new Promise((r) => setImmediate(r));
      assert.ok(relays.probes.length >= 1, 'the tick probes');
      assert.notEqual(engine.capacityProblem(), undefined, 'still out');
      relays.failAllBinds(undefined);
      await engine.tick();
      await new Promise((r) => setImmediate(r));
      assert.equal(engine.capacityProblem(), undefined);
      assert.equal((await allocate(42000)).code, 200);
      await engine.stop();
    });

    it('another bind error (EADDRNOTAVAIL) is refused at once too, counted as bind_error', async () => {
      const { relays, allocate, engine, counters } = setup([], answerAtOnce);
      relays.failAllBinds('EADDRNOTAVAIL');
      assert.equal((await allocate(40000)).code, 508);
      assert.equal((await allocate(40001)).code, 508);
      assert.equal(relays.bindAttempts.length, 1);
      assert.equal(counters.allocateRefusals.bind_error, 2);
      assert.match(engine.capacityProblem() ?? '', /EADDRNOTAVAIL/);
      await engine.stop();
    });
  });
}

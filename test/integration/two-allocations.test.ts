// Two allocations relaying to each other through their relayed addresses:
// client A -> relay A -> relay B -> client B, and back. Each relay is the
// other's peer (RFC 8656 §2: a peer may itself be a TURN relay). Then the
// quotas: a deleted allocation frees its place for a new Allocate.

import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { buildConfig } from '../../src/config/index.js';
import { createLogger } from '../../src/ops/log.js';
import { type RunningServer, startServer } from '../../src/server.js';
import { type Endpoint, type Received, TestTurnClient } from '../helpers/turn-client.js';

const REALM = 'anyturn.pair.test';
const cred = (name: string): { username: string; password: string; realm: string } => ({ username: name, password: `pw-${name}`, realm: REALM });

const PACKETS_EACH_WAY = 400;
const BATCH = 50;

/** Payload i of a stream: its sequence number, then deterministic bytes, 4..1200 bytes long. */
function payload(stream: number, i: number): Buffer {
  const length = 4 + ((i * 131 + stream * 17) % 1197);
  const out = Buffer.alloc(length);
  out.writeUInt16BE(stream, 0);
  out.writeUInt16BE(i, 2);
  for (let k = 4; k < length; k++) out[k] = (k * 7 + i * 13 + stream) & 255;
  return out;
}

/** Checks that `got` holds exactly payloads 0..n-1 of `stream` (any order), each once. */
function assertExactly(got: readonly Received[], stream: number, n: number): void {
  assert.equal(got.length, n, `stream ${stream}: ${got.length} of ${n} packets`);
  const seen = new Set<number>();
  for (const r of got) {
    assert.ok(r.data.length >= 4);
    assert.equal(r.data.readUInt16BE(0), stream);
    const i = r.data.readUInt16BE(2);
    assert.ok(!seen.has(i), `packet ${i} twice`);
    seen.add(i);
    assert.ok(r.data.equals(payload(stream, i)), `packet ${i} intact`);
  }
}

describe('two allocations relaying to each other', () => {
  let server: RunningServer;
  let endpoint: Endpoint;
  let a: TestTurnClient;
  let b: TestTurnClient;
  let relayA: Endpoint;
  let relayB: Endpoint;
  const extra: TestTurnClient[] = [];

  before(async () => {
    server = await startServer(
      buildConfig({
        'listening-ip': ['127.0.0.1'],
        'listening-port': 0,
        'min-port': 45000,
        'max-port': 45999,
        realm: REALM,
        user: ['alice', 'bob', 'carol'].map((u) => `${u}:pw-${u}`),
        'allow-loopback-peers': true,
        'user-quota': 1,
        'total-quota': 2,
      }),
      { logger: createLogger('silent') },
    );
    endpoint = { address: '127.0.0.1', port: server.listening[0]!.port };
    a = await TestTurnClient.open(endpoint, cred('alice'));
    b = await TestTurnClient.open(endpoint, cred('bob'));
    const ra = await a.allocate();
    const rb = await b.allocate();
    assert.equal(ra.response.code, 200);
    assert.equal(rb.response.code, 200);
    relayA = ra.relayed!;
    relayB = rb.relayed!;
  });
  after(async () => {
    a.close();
    b.close();
    for (const c of extra) c.close();
    await server.stop();
  });

  /** Sends both streams in batches, waiting for each batch to arrive before the next. */
  async function exchange(sendAB: (i: number) => void, sendBA: (i: number) => void): Promise<{ atB: Received[]; atA: Received[] }> {
    const startA = a.received.length;
    const startB = b.received.length;
    for (let base = 0; base < PACKETS_EACH_WAY; base += BATCH) {
      const end = Math.min(PACKETS_EACH_WAY, base + BATCH);
      for (let i = base; i < end; i++) {
        sendAB(i);
        sendBA(i);
      }
      await b.waitForReceived(startB + end);
      await a.waitForReceived(startA + end);
    }
    return { atB: b.received.slice(startB), atA: a.received.slice(startA) };
  }

  it('relays by Send/Data indications, every packet intact both ways', async () => {
    assert.equal((await a.createPermission(relayB)).code, 200);
    assert.equal((await b.createPermission(relayA)).code, 200);
    const { atB, atA } = await exchange(
      (i) => a.sendIndication(relayB, payload(1, i)),
      (i) => b.sendIndication(relayA, payload(2, i)),
    );
    assertExactly(atB, 1, PACKETS_EACH_WAY);
    assertExactly(atA, 2, PACKETS_EACH_WAY);
    // B sees A's relayed address as the peer, and A sees B's.
    for (const r of atB) {
      assert.equal(r.kind, 'data-indication');
      assert.deepEqual(r.peer, relayA);
    }
    for (const r of atA) {
      assert.equal(r.kind, 'data-indication');
      assert.deepEqual(r.peer, relayB);
    }
  });

  it('relays by channels, every packet intact both ways', async () => {
    assert.equal((await a.channelBind(0x4001, relayB)).code, 200);
    assert.equal((await b.channelBind(0x4ffe, relayA)).code, 200);
    const { atB, atA } = await exchange(
      (i) => a.sendChannelData(0x4001, payload(3, i)),
      (i) => b.sendChannelData(0x4ffe, payload(4, i)),
    );
    assertExactly(atB, 3, PACKETS_EACH_WAY);
    assertExactly(atA, 4, PACKETS_EACH_WAY);
    // Each side receives on its own channel number for the other relay.
    for (const r of atB) assert.deepEqual([r.kind, r.channel], ['channel-data', 0x4ffe]);
    for (const r of atA) assert.deepEqual([r.kind, r.channel], ['channel-data', 0x4001]);
  });

  it('mixes both: A sends by channel, B by Send indication; each gets what its own bindings say', async () => {
    const { atB, atA } = await exchange(
      (i) => a.sendChannelData(0x4001, payload(5, i)),
      (i) => b.sendIndication(relayA, payload(6, i)),
    );
    assertExactly(atB, 5, PACKETS_EACH_WAY);
    assertExactly(atA, 6, PACKETS_EACH_WAY);
    // B has a channel for relay A, so relay B hands A's packets to B as ChannelData;
    // A has a channel for relay B, so B's packets reach A as ChannelData too.
    for (const r of atB) assert.equal(r.channel, 0x4ffe);
    for (const r of atA) assert.equal(r.channel, 0x4001);
  });

  it('frees user and total quotas on delete, so a new Allocate succeeds', async () => {
    assert.equal(server.engine.allocations, 2);
    const carol = await TestTurnClient.open(endpoint, cred('carol'));
    extra.push(carol);
    assert.equal((await carol.allocate()).response.code, 508, 'total quota 2 is full');

    // A second alice (another socket) is over the total quota first; free one place.
    assert.equal((await b.refresh(0)).code, 200);
    const alice2 = await TestTurnClient.open(endpoint, cred('alice'));
    extra.push(alice2);
    assert.equal((await alice2.allocate()).response.code, 486, 'user quota 1: alice already has one');
    assert.equal((await carol.allocate()).response.code, 200, 'the place bob freed is usable');
    assert.equal((await alice2.allocate()).response.code, 508, 'total full again');

    assert.equal((await a.refresh(0)).code, 200);
    assert.equal((await alice2.allocate()).response.code, 200, "alice's quota was freed by her delete");
    assert.equal(server.engine.allocations, 2);

    // And the relays of the new pair work: alice2 <-> carol.
    const relayAlice2 = [...server.engine.allAllocations()].find((x) => x.clientPort === alice2.localPort)!.relay;
    const relayCarol = [...server.engine.allAllocations()].find((x) => x.clientPort === carol.localPort)!.relay;
    assert.equal((await alice2.createPermission({ address: relayCarol.address, port: relayCarol.port })).code, 200);
    assert.equal((await carol.createPermission({ address: relayAlice2.address, port: relayAlice2.port })).code, 200);
    alice2.sendIndication({ address: relayCarol.address, port: relayCarol.port }, Buffer.from('new pair'));
    const [got] = await carol.waitForReceived(1);
    assert.equal(got?.data.toString(), 'new pair');

    assert.equal((await alice2.refresh(0)).code, 200);
    assert.equal((await carol.refresh(0)).code, 200);
    assert.equal(server.engine.allocations, 0);
    assert.equal(server.counters.allocationsCreated, server.counters.allocationsDeleted);
  });
});

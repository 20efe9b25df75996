// Failing open in a cluster (docs/architecture.md §5): engines in one process over one
// store the test switches off and on (a Redis outage every node sees), time moved by
// hand. Allocations made during the outage are local-only; once the store is back they
// are written to it and another node resumes them after a reroute (forward mode: over a
// real mesh socket; anycast relay mode: the copy serves the client itself); the same
// relayed port or 5-tuple claimed by two nodes meanwhile goes to the same winner
// whichever node writes first; the user quota is counted per node during the outage.

import { after, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';

import { createLogger } from '../../src/ops/log.js';
import { MemoryAllocationStore, MemoryNodeRegistry } from '../../src/store/memory.js';
import { type AllocationRecord, type AllocationStore, fiveTupleKey } from '../../src/store/types.js';
import { encodeChannelNumber, encodeRequestedTransport, encodeUint32 } from '../../src/stun/attributes.js';
import { encodeChannelData } from '../../src/stun/channel-data.js';
import { Attr, MessageClass, Method, TRANSPORT_UDP } from '../../src/stun/constants.js';
import { MessageWriter } from '../../src/stun/writer.js';
import { keepsClaim } from '../../src/turn/allocation/store-conflicts.js';
import { NonceIssuer } from '../../src/turn/auth/nonce.js';
import { ManualClock } from '../../src/turn/clock.js';
import { EngineCounters } from '../../src/turn/counters.js';
import type { EngineOptions } from '../../src/turn/options.js';
import { ANYCAST, CLIENT, type EngineNode, type MeshNode, PEER, PORT, askEngine, startEngineNode, startMeshNode, until } from '../helpers/engine-node.js';

const REALM = 'store-outage.test';
const SECRET = Buffer.from('a cluster secret of enough bytes');
const RELAY = '198.18.100.2';
const logger = createLogger('silent');

/** One shared store; `down` makes it unreachable for every node (every call rejects, isAvailable() false). */
class OutageStore {
  down = false;
  readonly shared: MemoryAllocationStore;
  readonly store: AllocationStore;
  constructor(clock: ManualClock) {
    this.shared = new MemoryAllocationStore({ now: () => clock.now() });
    this.store = new Proxy(this.shared, {
      get: (target, prop, receiver) => {
        const value = Reflect.get(target, prop, receiver) as unknown;
        if (prop === 'isAvailable') return () => !this.down;
        // subscribe and watcher are synchronous: they answer at once, as a store whose connection is down does.
        if (typeof value !== 'function' || prop === 'subscribe' || prop === 'watcher') return typeof value === 'function' ? value.bind(target) : value;
        return async (...args: unknown[]) => {
          if (this.down) throw new Error('store unreachable (test switch)');
          return (value as (...a: unknown[]) => unknown).apply(target, args);
        };
      },
    });
  }

  async records(): Promise<AllocationRecord[]> {
    return this.shared.listAllocations();
  }
}

interface Node extends EngineNode {
  readonly id: string;
  readonly counters: EngineCounters;
}

class Cluster {
  readonly clock = new ManualClock(1_800_000_000_000);
  readonly outage = new OutageStore(this.clock);
  readonly nonces = new NonceIssuer(SECRET, 600_000);
  readonly nodes: Node[] = [];

  /** An engine node on ANYCAST:PORT; anycast relay mode unless `engine` says otherwise. */
  start(id: string, engine: Partial<EngineOptions> = { relayMode: 'anycast' }, relayAddressIPv4 = RELAY): Node {
    const counters = new EngineCounters();
    const node = {
      ...startEngineNode({
        nodeId: id,
        realm: REALM,
        nonces: this.nonces,
        store: this.outage.store,
        clock: this.clock,
        logger,
        counters,
        relayAddressIPv4,
        serverAddresses: [ANYCAST, relayAddressIPv4],
        servicePorts: [PORT],
        engine,
      }),
      id,
      counters,
    };
    this.nodes.push(node);
    return node;
  }

  async ask(node: EngineNode, clientPort: number, method: number, decorate: (w: MessageWriter) => void = () => undefined): Promise<number | undefined> {
    return askEngine(node, this.nonces.issue(CLIENT, this.clock.now()), clientPort, method, REALM, decorate);
  }

  allocate(node: EngineNode, clientPort: number): Promise<number | undefined> {
    return this.ask(node, clientPort, Method.Allocate, (w) => {
      w.add(Attr.RequestedTransport, encodeRequestedTransport(TRANSPORT_UDP));
      w.add(Attr.Lifetime, encodeUint32(600));
    });
  }

  /** A Send indication to PEER:6000. */
  sendIndication(text: string): Buffer {
    const w = new MessageWriter(Method.Send, MessageClass.Indication, randomBytes(12));
    w.addXorAddress(Attr.XorPeerAddress, PEER, 6000);
    w.add(Attr.Data, Buffer.from(text));
    return w.toBuffer();
  }

  async stop(): Promise<void> {
    this.outage.down = false;
    for (const n of this.nodes) await n.engine.stop();
  }
}

const bind = (w: MessageWriter): void => {
  w.add(Attr.ChannelNumber, encodeChannelNumber(0x4000));
  w.addXorAddress(Attr.XorPeerAddress, PEER, 6000);
};
const key = (clientPort: number): string => fiveTupleKey('udp', CLIENT, clientPort, ANYCAST, PORT);

describe('fail open: an allocation made during a store outage is resumable once the store is back', () => {
  it('forward mode: made local-only on node A, written back, then node B resumes it after a reroute (over the mesh)', async (t) => {
    const cluster = new Cluster();
    const registry = new MemoryNodeRegistry(() => cluster.clock.now());
    const nodes: MeshNode[] = [];
    t.after(async () => {
      cluster.outage.down = false;
      for (const n of nodes) {
        n.router.close();
        await n.engine.stop();
        await n.mesh.close();
      }
    });
    for (const [id, relayIp] of [
      ['node-a', '198.18.1.2'],
      ['node-b', '198.18.2.2'],
    ] as const) {
      const n = await startMeshNode({
        id,
        realm: REALM,
        secret: SECRET,
        nonces: cluster.nonces,
        store: cluster.outage.store,
        registry,
        clock: cluster.clock,
        logger,
        relayIp,
        lookupsPerSecond: 1000,
      });
      await registry.heartbeat({ nodeId: id, meshAddress: '127.0.0.1', meshPort: n.mesh.port }, 600_000);
      nodes.push(n);
    }
    const [a, b] = nodes as [MeshNode, MeshNode];
    const clientPort = 40001;

    cluster.outage.down = true;
    assert.equal(await cluster.allocate(a, clientPort), 200, 'Allocate during the outage succeeds');
    assert.equal(await cluster.ask(a, clientPort, Method.ChannelBind, bind), 200, 'and so do later requests');
    const made = a.listener.find(CLIENT, clientPort)!;
    assert.equal(made.localOnly, true);
    assert.equal(a.engineCounters.allocationsLocalOnly, 1);
    a.engine.handleClientPacket(a.listener, encodeChannelData(0x4000, Buffer.from('during')), CLIENT, clientPort);
    const relay = a.relays.socketAt(made.relay.address, made.relay.port)!;
    assert.deepEqual(
      relay.sent.map((s) => s.data.toString()),
      ['during'],
      'it relays during the outage',
    );
    await a.engine.tick();
    assert.equal(a.engineCounters.storeErrors, 0, 'no write is tried (or logged) while the store is unreachable');

    cluster.outage.down = false;
    await a.engine.tick();
    const record = await cluster.outage.shared.get(key(clientPort));
    assert.deepEqual(
      [record?.ownerNodeId, record?.relayedAddress, record?.relayedPort, record?.channels['16384']?.peerPort],
      ['node-a', made.relay.address, made.relay.port, 6000],
      'written to the store once it is back, channel included',
    );
    assert.equal(made.localOnly, false);
    assert.equal(a.engineCounters.allocationsWrittenBack, 1);

    // The reroute: the same client 5-tuple now reaches node B, which finds the record and forwards.
    b.engine.handleClientPacket(b.listener, encodeChannelData(0x4000, Buffer.from('via b')), CLIENT, clientPort);
    await until(() => relay.sent.length === 2, 'ChannelData through node B relayed by node A');
    assert.equal(relay.sent[1]!.data.toString(), 'via b');
    assert.equal(b.counters.allocationsResumed, 1);
  });

  it('anycast relay mode: made local-only on node A, written back, node B takes it on and serves the client itself', async (t) => {
    const cluster = new Cluster();
    t.after(() => cluster.stop());
    const a = cluster.start('a');
    const b = cluster.start('b');
    const clientPort = 40002;

    cluster.outage.down = true;
    assert.equal(await cluster.allocate(a, clientPort), 200);
    assert.equal(await cluster.ask(a, clientPort, Method.ChannelBind, bind), 200);
    const made = a.listener.find(CLIENT, clientPort)!;
    await a.engine.tick();
    assert.equal(b.listener.find(CLIENT, clientPort), undefined, 'node B cannot know of it during the outage: a reroute now could not resume it');

    cluster.outage.down = false;
    await a.engine.tick();
    await until(() => b.listener.find(CLIENT, clientPort) !== undefined, 'node B taking the written-back allocation on');
    const copy = b.listener.find(CLIENT, clientPort)!;
    assert.deepEqual([copy.relay.address, copy.relay.port], [made.relay.address, made.relay.port], 'on the same shared relayed address');
    b.engine.handleClientPacket(b.listener, encodeChannelData(0x4000, Buffer.from('via b')), CLIENT, clientPort);
    assert.equal(b.relays.socketAt(RELAY, made.relay.port)!.sent.at(-1)?.data.toString(), 'via b', 'node B relays for it (the channel came along)');
  });
});

describe('fail open: conflicts after the outage are settled by one rule, whoever writes first', () => {
  const PORT_RANGE = { minPort: 50000, maxPort: 50000 };

  for (const firstWriter of ['a', 'b'] as const) {
    it(`anycast relay mode: the same relayed port claimed by two nodes; the earlier allocation keeps it (node ${firstWriter} writes first)`, async (t) => {
      const cluster = new Cluster();
      t.after(() => cluster.stop());
      const a = cluster.start('a', { relayMode: 'anycast', ...PORT_RANGE });
      const b = cluster.start('b', { relayMode: 'anycast', ...PORT_RANGE });

      cluster.outage.down = true;
      assert.equal(await cluster.allocate(a, 41000), 200);
      cluster.clock.advance(1000);
      assert.equal(await cluster.allocate(b, 41001), 200);
      assert.equal(await cluster.ask(b, 41001, Method.CreatePermission, (w) => w.addXorAddress(Attr.XorPeerAddress, PEER, 1)), 200);
      const onA = a.listener.find(CLIENT, 41000)!;
      const onB = b.listener.find(CLIENT, 41001)!;
      assert.deepEqual([onA.relay.port, onB.relay.port], [50000, 50000], 'both nodes handed out the one port');

      cluster.outage.down = false;
      const [first, second] = firstWriter === 'a' ? [a, b] : [b, a];
      await first.engine.tick();
      await second.engine.tick();
      await until(() => onB.detached, 'node B’s allocation to lose');

      const records = await cluster.outage.records();
      assert.deepEqual(
        records.map((r) => [r.key, r.ownerNodeId, r.relayedPort]),
        [[key(41000), 'a', 50000]],
        'the store holds node A’s (earlier) allocation on the port, and nothing of node B’s',
      );
      assert.equal(onA.detached, false);
      assert.deepEqual(
        [a.counters.storeConflicts.relay_port, b.counters.storeConflicts.relay_port],
        [
          { kept: firstWriter === 'b' ? 1 : 0, lost: 0 },
          { kept: 0, lost: 1 },
        ],
      );
      // The loser keeps serving its own client from its own state, and takes nothing of the winner's.
      assert.equal(b.listener.find(CLIENT, 41001), onB);
      assert.equal(b.listener.find(CLIENT, 41000), undefined, 'node B does not take over node A’s record');
      b.engine.handleClientPacket(b.listener, cluster.sendIndication('still served'), CLIENT, 41001);
      assert.equal(b.relays.socketAt(RELAY, 50000)!.sent.at(-1)?.data.toString(), 'still served');
      await b.engine.tick();
      assert.deepEqual(
        (await cluster.outage.records()).map((r) => r.key),
        [key(41000)],
        'the loser never writes again',
      );
      // Its end removes nothing from the store: the record on the port is the winner's.
      assert.equal(await cluster.ask(b, 41001, Method.Refresh, (w) => w.add(Attr.Lifetime, encodeUint32(0))), 200);
      assert.deepEqual(
        (await cluster.outage.records()).map((r) => r.key),
        [key(41000)],
      );
    });
  }

  for (const firstWriter of ['a', 'b'] as const) {
    it(`forward mode: the same 5-tuple allocated on two nodes (a reroute during the outage); the newer allocation keeps it (node ${firstWriter} writes first)`, async (t) => {
      const cluster = new Cluster();
      t.after(() => cluster.stop());
      const a = cluster.start('a', {}, '198.18.1.2');
      const b = cluster.start('b', {}, '198.18.2.2');
      const clientPort = 42000;

      cluster.outage.down = true;
      assert.equal(await cluster.allocate(a, clientPort), 200);
      cluster.clock.advance(1000);
      assert.equal(await cluster.allocate(b, clientPort), 200, 'the client, rerouted, allocated again on node B');
      const onA = a.listener.find(CLIENT, clientPort)!;
      const onB = b.listener.find(CLIENT, clientPort)!;

      cluster.outage.down = false;
      const [first, second] = firstWriter === 'a' ? [a, b] : [b, a];
      await first.engine.tick();
      await second.engine.tick();
      // Node A may have written first and not heard yet: its next write finds out.
      assert.equal(await cluster.ask(a, clientPort, Method.Refresh, (w) => w.add(Attr.Lifetime, encodeUint32(600))), 200);
      await a.engine.tick();

      const records = await cluster.outage.records();
      assert.deepEqual(
        records.map((r) => [r.ownerNodeId, r.relayedAddress, r.createdAtMs]),
        [['b', '198.18.2.2', onB.createdAtMs]],
        'the store holds node B’s (newer) allocation',
      );
      assert.deepEqual([onA.detached, onB.detached], [true, false]);
      assert.equal(a.counters.storeConflicts.five_tuple.lost, 1);
    });
  }

  it('the rule is one order: exactly one of two claimants keeps it, by creation time, then node id, then key', () => {
    const x = { createdAtMs: 1, ownerNodeId: 'b', key: 'k1' };
    const y = { createdAtMs: 2, ownerNodeId: 'a', key: 'k2' };
    assert.deepEqual([keepsClaim('relay_port', x, y), keepsClaim('relay_port', y, x)], [true, false], 'relayed port: the earlier');
    assert.deepEqual([keepsClaim('five_tuple', x, y), keepsClaim('five_tuple', y, x)], [false, true], '5-tuple: the newer');
    const z = { createdAtMs: 1, ownerNodeId: 'a', key: 'k3' };
    assert.deepEqual([keepsClaim('relay_port', z, x), keepsClaim('relay_port', x, z)], [true, false], 'same time: the lower node id');
    const w = { createdAtMs: 1, ownerNodeId: 'b', key: 'k0' };
    assert.deepEqual([keepsClaim('five_tuple', w, x), keepsClaim('five_tuple', x, w)], [true, false], 'same node and time: the lower key');
  });
});

describe('fail open: the user quota during the outage', () => {
  const cluster = new Cluster();
  after(() => cluster.stop());

  it('is counted per node while the store is unreachable (486), and an overrun across nodes is tolerated and counted once the store is back', async () => {
    const a = cluster.start('a', { relayMode: 'anycast', userQuota: 1 });
    const b = cluster.start('b', { relayMode: 'anycast', userQuota: 1 });
    cluster.outage.down = true;
    assert.equal(await cluster.allocate(a, 43000), 200);
    assert.equal(await cluster.allocate(a, 43001), 486, 'node A counts its own allocations of the user');
    assert.equal(await cluster.allocate(b, 43002), 200, 'node B cannot see node A’s');

    cluster.outage.down = false;
    await a.engine.tick();
    await b.engine.tick();
    const records = await cluster.outage.records();
    assert.deepEqual(records.map((r) => r.key).sort(), [key(43000), key(43002)], 'both live allocations are written back, over the quota');
    assert.equal(a.counters.userQuotaOverruns + b.counters.userQuotaOverruns, 1, 'the second write back saw the overrun');
    assert.equal(await cluster.allocate(a, 43003), 486, 'with the store back the cluster-wide count applies again');
  });
});

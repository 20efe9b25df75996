// Anycast relay mode (docs/architecture.md §4): a node taking on an allocation another
// node made must not miss a change that the store announces while it is still setting
// its copy up (binding the relayed port, reading the record again). The soak
// (docs/reliability.md, "Soak") found it: an allocation whose CreatePermission and
// ChannelBind came right after its Allocate sometimes had, on the other node, a copy
// without them, so every peer packet reaching that node was dropped (no_permission)
// until the next refresh. Here node B's read of the record is held until the change
// has been announced, and returns the record as it was when B asked for it.

import { afterEach, describe, it } from 'node:test';
import assert from 'node:assert/strict';

import { createLogger } from '../../src/ops/log.js';
import { MemoryAllocationStore } from '../../src/store/memory.js';
import type { AllocationRecord, AllocationStore } from '../../src/store/types.js';
import { encodeChannelNumber, encodeRequestedTransport, encodeUint32 } from '../../src/stun/attributes.js';
import { Attr, Method, TRANSPORT_UDP } from '../../src/stun/constants.js';
import type { MessageWriter } from '../../src/stun/writer.js';
import { NonceIssuer } from '../../src/turn/auth/nonce.js';
import { systemClock } from '../../src/turn/clock.js';
import { ANYCAST, CLIENT, type EngineNode, PEER, PORT, askEngine, startEngineNode, until } from '../helpers/engine-node.js';

const RELAY = '198.18.100.2';
const REALM = 'anycast-replica-race.test';
const nonces = new NonceIssuer(Buffer.from('shared nonce secret, 32 bytes..'), 600_000);
const logger = createLogger('silent');

/** The store as node B sees it: get() answers with what the store held when asked, but only once released. */
function heldReads(store: AllocationStore): { store: AllocationStore; asked: () => boolean; release: () => void } {
  let asked = false;
  let release!: () => void;
  const released = new Promise<void>((r) => (release = r));
  const view = new Proxy(store, {
    get(target, prop) {
      if (prop === 'get') {
        return async (key: string): Promise<AllocationRecord | undefined> => {
          const then = await target.get(key);
          asked = true;
          await released;
          return then;
        };
      }
      const v = Reflect.get(target, prop, target) as unknown;
      return typeof v === 'function' ? (v as (...a: unknown[]) => unknown).bind(target) : v;
    },
  });
  return { store: view, asked: () => asked, release };
}

function startNode(id: string, store: AllocationStore): EngineNode {
  return startEngineNode({
    nodeId: id,
    realm: REALM,
    nonces,
    store,
    clock: systemClock,
    logger,
    relayAddressIPv4: RELAY,
    serverAddresses: [ANYCAST, RELAY],
    servicePorts: [PORT],
    engine: { relayMode: 'anycast' },
  });
}

const ask = (node: EngineNode, clientPort: number, method: number, decorate?: (w: MessageWriter) => void) =>
  askEngine(node, nonces.issue(CLIENT, Date.now()), clientPort, method, REALM, decorate);

describe('anycast relay mode: a change announced while another node takes the allocation on', () => {
  const nodes: EngineNode[] = [];
  afterEach(async () => {
    for (const n of nodes.splice(0)) await n.engine.stop();
  });

  it('reaches that node’s copy: the channel bound meanwhile relays the peer’s packets there', async () => {
    const store = new MemoryAllocationStore();
    const held = heldReads(store);
    const a = startNode('a', store);
    const b = startNode('b', held.store);
    nodes.push(a, b);
    const clientPort = 41000;
    assert.equal(await ask(a, clientPort, Method.Allocate, (w) => void w.add(Attr.RequestedTransport, encodeRequestedTransport(TRANSPORT_UDP))), 200);
    // B has bound the relayed port and is reading the record again (as it was: no channel).
    await until(held.asked, 'node B reading the record of the allocation it takes on');
    const bound = await ask(a, clientPort, Method.ChannelBind, (w) => {
      w.add(Attr.ChannelNumber, encodeChannelNumber(0x4000));
      w.addXorAddress(Attr.XorPeerAddress, PEER, 6000);
    });
    assert.equal(bound, 200);
    held.release();
    await until(() => b.listener.find(CLIENT, clientPort) !== undefined, 'node B holding the allocation');
    // B then reads the record once more (no longer held): a bounded wait for that read.
    await until(() => b.listener.find(CLIENT, clientPort)?.channel(0x4000) !== undefined, 'the channel reaching B’s copy').catch(() => undefined);
    const copy = b.listener.find(CLIENT, clientPort)!;
    assert.ok(copy.channel(0x4000), 'node B’s copy has the channel announced while B was taking the allocation on');
    // And so the peer's packet reaching B goes to the client as ChannelData.
    const relay = b.relays.socketAt(RELAY, copy.relay.port)!;
    assert.equal(relay.inject(Buffer.from('from the peer'), PEER, 6000), true);
    const last = b.path.sentTo(CLIENT, clientPort).at(-1);
    assert.equal(last?.data.readUInt16BE(0), 0x4000, 'the peer packet was relayed by B as ChannelData');
  });

  it('a deletion announced meanwhile ends that node’s copy and frees its relayed port there', async () => {
    const store = new MemoryAllocationStore();
    const held = heldReads(store);
    const a = startNode('a', store);
    const b = startNode('b', held.store);
    nodes.push(a, b);
    const clientPort = 41001;
    assert.equal(await ask(a, clientPort, Method.Allocate, (w) => void w.add(Attr.RequestedTransport, encodeRequestedTransport(TRANSPORT_UDP))), 200);
    await until(held.asked, 'node B reading the record of the allocation it takes on');
    assert.equal(await ask(a, clientPort, Method.Refresh, (w) => w.add(Attr.Lifetime, encodeUint32(0))), 200);
    held.release();
    await until(() => b.engine.allocations === 0 && b.relays.sockets.every((x) => x.closed), 'node B dropping its copy').catch(() => undefined);
    assert.equal(b.engine.allocations, 0, 'node B holds no copy of an allocation deleted while it took it on');
    assert.ok(
      b.relays.sockets.every((x) => x.closed),
      'node B keeps no relay socket bound for it',
    );
  });
});

// Allocation.merge: how a record from the store folds into a live allocation (anycast
// relay mode replicas, and a write that lost its compare-and-set). Later expiries win,
// permissions and channels are the union, every entry passes the peer filter, and a
// record not newer than what is held changes nothing.

import { describe, it } from 'node:test';
import assert from 'node:assert/strict';

import type { AllocationRecord } from '../../../../src/store/types.js';
import { Allocation, type AllocationSeed, type ChannelBinding, type PeerFilter } from '../../../../src/turn/allocation/allocation.js';
import { FakeClientPath, FakeRelaySocket } from '../../../helpers/fake-io.js';

const T0 = 1_700_000_000_000;
const seed: AllocationSeed = {
  key: 'k1',
  clientAddress: '198.51.100.7',
  clientPort: 40000,
  username: 'alice',
  realm: 'example.org',
  createdAtMs: T0,
  expiresAtMs: T0 + 600_000,
};

function relay(address: string, port: number): FakeRelaySocket {
  return new FakeRelaySocket(
    address,
    port,
    () => undefined,
    () => undefined,
  );
}

function make(dual = false): Allocation {
  const path = new FakeClientPath();
  return new Allocation(seed, path, { relay: relay('192.0.2.10', 50000), additional: dual ? relay('2001:db8::10', 50002) : undefined }, true);
}

/** The allocation's own record with some fields changed: what another node would have written. */
function recordOf(allocation: Allocation, change: Partial<AllocationRecord>): AllocationRecord {
  return { ...allocation.toRecord('node-b'), ...change };
}

const allowAll: PeerFilter = () => true;

describe('Allocation.merge', () => {
  it('ignores a record that is not newer than the version held', () => {
    const a = make();
    a.version = 3;
    const stale = recordOf(a, { version: 3, expiresAtMs: T0 + 3_600_000, permissions: { '203.0.113.5': T0 + 300_000 } });
    let refused = 0;
    assert.equal(
      a.merge(stale, allowAll, () => refused++),
      false,
    );
    assert.equal(a.expiresAtMs, T0 + 600_000);
    assert.equal(a.permissionsByAddress.size, 0);
    assert.equal(a.version, 3);
    assert.equal(refused, 0);
  });

  it('keeps the later expiry of the allocation, whichever side has it, and takes the record version', () => {
    const a = make();
    assert.equal(
      a.merge(recordOf(a, { version: 1, expiresAtMs: T0 + 900_000 }), allowAll, () => undefined),
      true,
    );
    assert.equal(a.expiresAtMs, T0 + 900_000);
    assert.equal(a.version, 1);
    // An older expiry from a newer record (a node that missed our refresh) does not shorten it.
    assert.equal(
      a.merge(recordOf(a, { version: 2, expiresAtMs: T0 + 100_000 }), allowAll, () => undefined),
      true,
    );
    assert.equal(a.expiresAtMs, T0 + 900_000);
    assert.equal(a.version, 2);
  });

  it('unites permissions: ours stay, theirs are added, the later expiry of a shared one wins', () => {
    const a = make();
    a.permit('203.0.113.1', 0xcb007101, T0 + 300_000);
    a.permit('203.0.113.2', 0xcb007102, T0 + 400_000);
    const record = recordOf(a, { version: 1, permissions: { '203.0.113.2': T0 + 500_000, '203.0.113.3': T0 + 200_000 } });
    a.merge(record, allowAll, () => undefined);
    assert.deepEqual([...a.permissionsByAddress].map(([address, p]) => [address, p.expiresAtMs]).sort(), [
      ['203.0.113.1', T0 + 300_000],
      ['203.0.113.2', T0 + 500_000],
      ['203.0.113.3', T0 + 200_000],
    ]);
    // The IPv4 index of the hot path knows the merged one too.
    assert.equal(a.permissionsByAddress.getIPv4(0xcb007103)?.peerAddress, '203.0.113.3');
  });

  it('unites channels and refreshes the same binding; another peer on a number we hold keeps ours', () => {
    const a = make();
    const mine = a.permit('203.0.113.1', 0xcb007101, T0 + 300_000);
    a.bindChannel(0x4000, mine, 5000, T0 + 600_000);
    const record = recordOf(a, {
      version: 1,
      permissions: { '203.0.113.1': T0 + 300_000, '203.0.113.9': T0 + 300_000 },
      channels: {
        [String(0x4000)]: { peerAddress: '203.0.113.9', peerPort: 6000, expiresAtMs: T0 + 900_000 },
        [String(0x4001)]: { peerAddress: '203.0.113.1', peerPort: 5001, expiresAtMs: T0 + 700_000 },
      },
    });
    a.merge(record, allowAll, () => undefined);
    const kept = a.channel(0x4000)!;
    assert.equal(kept.peerAddress, '203.0.113.1');
    assert.equal(kept.peerPort, 5000);
    assert.equal(kept.expiresAtMs, T0 + 600_000, 'a different peer does not refresh our binding');
    const added = a.channel(0x4001)!;
    assert.equal(added.peerAddress, '203.0.113.1');
    assert.equal(added.peerPort, 5001);
    assert.equal(a.permissionsByAddress.get('203.0.113.1')!.channelFor(5001), added);
    assert.equal(a.channelCount, 2);
    // The same binding, refreshed elsewhere: the later expiry wins.
    a.merge(
      recordOf(a, { version: 2, channels: { [String(0x4001)]: { peerAddress: '203.0.113.1', peerPort: 5001, expiresAtMs: T0 + 800_000 } } }),
      allowAll,
      () => undefined,
    );
    assert.equal(a.channel(0x4001)!.expiresAtMs, T0 + 800_000);
  });

  it('does not bind a second number to a peer transport address that already has one', () => {
    const a = make();
    const p = a.permit('203.0.113.1', 0xcb007101, T0 + 300_000);
    a.bindChannel(0x4000, p, 5000, T0 + 600_000);
    a.merge(
      recordOf(a, { version: 1, channels: { [String(0x4005)]: { peerAddress: '203.0.113.1', peerPort: 5000, expiresAtMs: T0 + 600_000 } } }),
      allowAll,
      () => undefined,
    );
    assert.equal(a.channel(0x4005), undefined);
    assert.equal(a.channelCount, 1);
  });

  it('installs nothing the peer filter refuses, and counts each refusal', () => {
    const a = make();
    const asked: Array<[string, number | undefined]> = [];
    const filter: PeerFilter = (address, port) => {
      asked.push([address, port]);
      return address !== '10.0.0.1';
    };
    let refused = 0;
    const record = recordOf(a, {
      version: 1,
      permissions: { '10.0.0.1': T0 + 300_000, '203.0.113.1': T0 + 300_000 },
      channels: { [String(0x4000)]: { peerAddress: '10.0.0.1', peerPort: 5000, expiresAtMs: T0 + 600_000 } },
    });
    a.merge(record, filter, () => refused++);
    assert.deepEqual([...a.permissionsByAddress.keys()], ['203.0.113.1']);
    assert.equal(a.channel(0x4000), undefined);
    assert.equal(refused, 2);
    // A channel is checked with its port (the service-port rule), a permission without.
    assert.deepEqual(asked, [
      ['10.0.0.1', undefined],
      ['203.0.113.1', undefined],
      ['10.0.0.1', 5000],
    ]);
  });

  it('refuses channel numbers and peer ports a ChannelBind would refuse', () => {
    const a = make();
    let refused = 0;
    const record = recordOf(a, {
      version: 1,
      permissions: { '203.0.113.1': T0 + 300_000 },
      channels: {
        [String(0x3fff)]: { peerAddress: '203.0.113.1', peerPort: 5000, expiresAtMs: T0 + 600_000 },
        [String(0x8000)]: { peerAddress: '203.0.113.1', peerPort: 5001, expiresAtMs: T0 + 600_000 },
        [String(0x4000)]: { peerAddress: '203.0.113.1', peerPort: 0, expiresAtMs: T0 + 600_000 },
        [String(0x4001)]: { peerAddress: '203.0.113.1', peerPort: 65536, expiresAtMs: T0 + 600_000 },
        [String(0x4002)]: { peerAddress: '203.0.113.1', peerPort: 1.5, expiresAtMs: T0 + 600_000 },
      },
    });
    a.merge(record, allowAll, () => refused++);
    assert.equal(a.channelCount, 0);
    assert.equal(refused, 5);
  });

  it('skips peers of a family the allocation has no relayed address for, without counting them as refused', () => {
    const v4 = make();
    let refused = 0;
    v4.merge(
      recordOf(v4, {
        version: 1,
        permissions: { '2001:db8::99': T0 + 300_000 },
        channels: { [String(0x4000)]: { peerAddress: '2001:db8::99', peerPort: 5000, expiresAtMs: T0 + 600_000 } },
      }),
      allowAll,
      () => refused++,
    );
    assert.equal(v4.permissionsByAddress.size, 0);
    assert.equal(v4.channelCount, 0);
    assert.equal(refused, 0);
    // A dual allocation takes it, on its IPv6 relay.
    const dual = make(true);
    dual.merge(recordOf(dual, { version: 1, permissions: { '2001:db8::99': T0 + 300_000 } }), allowAll, () => undefined);
    assert.equal(dual.permissionsByAddress.get('2001:db8::99')?.relay.address, '2001:db8::10');
  });

  it('round-trips through toRecord: a replica built from a record holds the same state', () => {
    const a = make();
    const p = a.permit('203.0.113.1', 0xcb007101, T0 + 300_000);
    a.bindChannel(0x4000, p, 5000, T0 + 600_000);
    a.permit('203.0.113.2', 0xcb007102, T0 + 250_000);
    a.version = 4;
    const record = a.toRecord('node-a');
    const replica = new Allocation(record, new FakeClientPath(), { relay: relay(record.relayedAddress, record.relayedPort), additional: undefined });
    assert.equal(
      replica.merge(record, allowAll, () => undefined),
      true,
    );
    assert.deepEqual({ ...replica.toRecord('node-a') }, { ...record });
  });

  it('names the IPv6 relayed address and the move generation in its record only when it has them', () => {
    const plain = make().toRecord('node-a');
    for (const field of ['additionalRelayedAddress', 'additionalRelayedPort', 'mobilityGeneration']) assert.equal(field in plain, false, field);
    const dual = make(true);
    dual.mobilityGeneration = 2;
    const record = dual.toRecord('node-a');
    assert.equal(record.additionalRelayedAddress, '2001:db8::10');
    assert.equal(record.additionalRelayedPort, 50002);
    assert.equal(record.mobilityGeneration, 2);
    assert.deepEqual(
      { ...record, additionalRelayedAddress: undefined, additionalRelayedPort: undefined, mobilityGeneration: undefined },
      {
        ...plain,
        additionalRelayedAddress: undefined,
        additionalRelayedPort: undefined,
        mobilityGeneration: undefined,
      },
    );
  });
});

// Allocations without a channel share one empty slot array and set, and every allocation
// starts with the shared settled promise (docs/scaling.md, "At scale"): the first binding
// must give an allocation its own, never write to the shared ones.
describe('Allocation: state shared until needed', () => {
  it('gives the first channel binding its own slots and set, leaving other allocations without', () => {
    const a = make();
    const b = make();
    assert.equal(a.bindings, b.bindings, 'both start with the shared empty set');
    const p = a.permit('203.0.113.1', 0xcb007101, T0 + 300_000);
    const bound = a.bindChannel(0x4001, p, 5000, T0 + 600_000);
    assert.equal(a.channel(0x4001), bound);
    assert.equal(a.channelCount, 1);
    assert.notEqual(a.bindings, b.bindings);
    assert.equal(b.channel(0x4001), undefined, 'nothing leaked into the shared slots');
    assert.equal(b.channelCount, 0);
    assert.equal([...make().bindings].length, 0, 'nor into the shared set');
    // Pruned away, and bound again: its own slots still work.
    assert.equal(a.prune(T0 + 600_000 + 300_000), true);
    assert.equal(a.channel(0x4001), undefined);
    assert.equal(a.channelCount, 0);
    const again = a.bindChannel(0x4002, a.permit('203.0.113.1', 0xcb007101, T0 + 1_200_000), 5001, T0 + 1_200_000);
    assert.equal(a.channel(0x4002), again);
    assert.equal(b.channel(0x4002), undefined);
  });

  it('shares one empty IPv6 address between IPv4 permissions, and gives an IPv6 one its bytes', () => {
    const a = make(true);
    const p4 = a.permit('203.0.113.1', 0xcb007101, T0 + 300_000);
    const q4 = make().permit('203.0.113.2', 0xcb007102, T0 + 300_000);
    assert.equal(p4.peerIPv6.length, 0);
    assert.equal(p4.peerIPv6, q4.peerIPv6);
    const p6 = a.permit('2001:db8::99', -1, T0 + 300_000);
    assert.equal(p6.peerIPv6.length, 16);
    assert.equal(p6.peerIPv6[15], 0x99);
  });
});

// One channel is held in a field, a Map from the second on (allocation and permission
// alike): every lookup must give the same answers whichever way the bindings are held.
describe('Allocation: one channel in a field, more in a Map', () => {
  it('finds every binding by number and by peer port while channels come and go in any order', () => {
    const a = make();
    const p = a.permit('203.0.113.1', 0xcb007101, T0 + 3_000_000);
    const q = a.permit('203.0.113.2', 0xcb007102, T0 + 3_000_000);
    // Random numbers, as browsers pick them (far apart: no array indexed by number).
    const one = a.bindChannel(0x7abc, p, 5000, T0 + 600_000);
    const two = a.bindChannel(0x4000, p, 5001, T0 + 900_000);
    const three = a.bindChannel(0x5555, q, 5000, T0 + 1_200_000);
    const made = [one, two, three];
    const check = (live: ChannelBinding[]): void => {
      assert.equal(a.channelCount, live.length);
      assert.deepEqual(new Set(a.bindings), new Set(live));
      for (const b of made) {
        assert.equal(a.channel(b.number), live.includes(b) ? b : undefined, `channel ${b.number.toString(16)}`);
        const onPort = live.find((x) => x.permission === b.permission && x.peerPort === b.peerPort);
        assert.equal(b.permission.channelFor(b.peerPort), onPort, `${b.peerAddress}:${b.peerPort}`);
      }
      assert.equal(p.channelFor(5002), undefined);
      assert.equal(a.channel(0x4001), undefined);
      assert.equal(
        p.hasChannels,
        live.some((b) => b.permission === p),
      );
      assert.equal(
        q.hasChannels,
        live.some((b) => b.permission === q),
      );
    };
    check([one, two, three]);
    // The quarantine (5 minutes) after each expiry: one goes first, then two, then three.
    assert.equal(a.prune(T0 + 600_000 + 300_000), true);
    check([two, three]);
    assert.equal(a.prune(T0 + 900_000 + 300_000), true);
    check([three]);
    assert.equal(a.prune(T0 + 1_200_000 + 300_000), true);
    check([]);
    assert.equal(a.prune(T0 + 1_200_000 + 300_000), false, 'nothing left to prune');
    // Bound again after all went, then a second: from a field to a Map again.
    const four = a.bindChannel(0x4abc, q, 5000, T0 + 2_000_000);
    made.push(four);
    check([four]);
    const five = a.bindChannel(0x4abd, q, 5001, T0 + 2_100_000);
    made.push(five);
    check([four, five]);
  });
});

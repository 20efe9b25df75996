// MemoryAllocationStore: the shared contract, plus what only the memory store
// lets a test control (its clock, for reservation expiry).

import { describe, it } from 'node:test';
import assert from 'node:assert/strict';

import { MemoryAllocationStore } from '../../../src/store/memory.js';
import { type NewAllocationRecord, fiveTupleKey } from '../../../src/store/types.js';
import { ManualClock } from '../../../src/turn/clock.js';
import { runStoreContract } from './contract.js';

runStoreContract('memory', async () => {
  const store = new MemoryAllocationStore();
  return { store, cleanup: () => store.close() };
});

/** A UDP allocation's record from 198.51.100.1:clientPort on relayed port 192.0.2.100:relayedPort (data only: no packet is sent). */
function recordAt(clientPort: number, relayedPort: number): NewAllocationRecord {
  return {
    key: fiveTupleKey('udp', '198.51.100.1', clientPort, '192.0.2.1', 3478),
    transport: 'udp',
    clientAddress: '198.51.100.1',
    clientPort,
    serverAddress: '192.0.2.1',
    serverPort: 3478,
    relayedAddress: '192.0.2.100',
    relayedPort,
    ownerNodeId: 'n',
    username: 'u',
    realm: 'r',
    createdAtMs: 0,
    expiresAtMs: 1,
    permissions: {},
    channels: {},
  };
}

describe('MemoryAllocationStore specifics', () => {
  it('lets a reservation lapse after its ttl (injected clock): the token is gone and the port free', async () => {
    const clock = new ManualClock();
    const store = new MemoryAllocationStore({ now: () => clock.now() });
    const port = { relayedAddress: '192.0.2.100', relayedPort: 50001 };
    assert.equal(await store.reservePort('t1', port, 30_000), true);
    clock.advance(29_999);
    assert.equal(await store.reservePort('t2', port, 30_000), false, 'still held');
    clock.advance(1);
    const record = recordAt(40000, port.relayedPort);
    // No reservation call in between: the lapse alone frees the port.
    assert.equal((await store.create(record, { userQuota: 0 })).ok, true, 'the lapsed reservation no longer blocks the port');
    assert.equal(await store.takeReservation('t1'), undefined, 'expired');
    await store.close();
  });

  it('stores and answers the record field by field: optional fields only when set, an update keeping the identity it was created with', async () => {
    const store = new MemoryAllocationStore();
    const base: NewAllocationRecord = {
      key: fiveTupleKey('udp', '198.51.100.2', 40000, '192.0.2.1', 3478),
      transport: 'udp',
      clientAddress: '198.51.100.2',
      clientPort: 40000,
      serverAddress: '192.0.2.1',
      serverPort: 3478,
      relayedAddress: '192.0.2.100',
      relayedPort: 50002,
      ownerNodeId: 'n',
      username: 'u',
      realm: 'r',
      createdAtMs: 0,
      expiresAtMs: 1,
      permissions: { '203.0.113.1': 2 },
      channels: { '16384': { peerAddress: '203.0.113.1', peerPort: 5000, expiresAtMs: 3 } },
    };
    const created = await store.create(base, { userQuota: 0 });
    assert.ok(created.ok);
    assert.deepEqual(created.record, { ...base, version: 1 });
    assert.deepEqual(Object.keys(created.record).sort(), [...Object.keys(base), 'version'].sort(), 'no field the record did not have');
    // Another identity, an IPv6 relayed address and a move generation named by an update: only the generation is taken.
    const updated = await store.update({
      ...created.record,
      relayedPort: 1,
      username: 'mallory',
      additionalRelayedAddress: '2001:db8::1',
      additionalRelayedPort: 2,
      mobilityGeneration: 3,
      expiresAtMs: 5,
    });
    assert.ok(updated.ok);
    assert.deepEqual(updated.record, { ...base, version: 2, expiresAtMs: 5, mobilityGeneration: 3 });
    assert.deepEqual(await store.get(base.key), updated.record);

    // A dual allocation keeps its IPv6 relayed address through an update that leaves it out.
    const dualInput: NewAllocationRecord = {
      ...base,
      key: fiveTupleKey('udp', '198.51.100.2', 40001, '192.0.2.1', 3478),
      clientPort: 40001,
      relayedPort: 50004,
      additionalRelayedAddress: '2001:db8::100',
      additionalRelayedPort: 50006,
    };
    const dual = await store.create(dualInput, { userQuota: 0 });
    assert.ok(dual.ok);
    const { additionalRelayedAddress: _address, additionalRelayedPort: _port, ...withoutIPv6 } = dual.record;
    const kept = await store.update({ ...withoutIPv6, expiresAtMs: 9 });
    assert.ok(kept.ok);
    assert.deepEqual(kept.record, { ...dualInput, version: 2, expiresAtMs: 9 });
    await store.close();
  });

  it('refuses every call once closed', async () => {
    const store = new MemoryAllocationStore();
    await store.close();
    await assert.rejects(store.get('x'), /closed/);
    await assert.rejects(store.countUserAllocations('x'), /closed/);
  });

  it('answers create within the call (no promise) while open, each refusal too; a closed store still rejects', async () => {
    const store = new MemoryAllocationStore();
    const record = recordAt;
    const answers = [
      store.create(record(40000, 50000), { userQuota: 2 }),
      store.create(record(40000, 50001), { userQuota: 2 }),
      store.create(record(40001, 50000), { userQuota: 2 }),
      store.create(record(40002, 50002), { userQuota: 2 }),
      store.create(record(40003, 50003), { userQuota: 2 }),
    ];
    for (const answer of answers) assert.ok(!(answer instanceof Promise), 'answered within the call');
    assert.deepEqual(
      answers.map((a) => (a instanceof Promise ? 'promise' : a.ok ? 'ok' : a.reason)),
      ['ok', 'exists', 'port-taken', 'ok', 'user-quota'],
    );
    await store.close();
    const closed = store.create(record(40004, 50004), { userQuota: 0 });
    assert.ok(closed instanceof Promise, 'a closed store rejects, as before');
    await assert.rejects(closed, /closed/);
  });
});

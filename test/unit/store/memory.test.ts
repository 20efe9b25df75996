// MemoryAllocationStore: the shared contract, plus what only the memory store
// lets a test control (its clock, for reservation expiry).

import { describe, it } from 'node:test';
import assert from 'node:assert/strict';

import { MemoryAllocationStore } from '../../../src/store/memory.js';
import { fiveTupleKey } from '../../../src/store/types.js';
import { ManualClock } from '../../../src/turn/clock.js';
import { runStoreContract } from './contract.js';

runStoreContract('memory', async () => {
  const store = new MemoryAllocationStore();
  return { store, cleanup: () => store.close() };
});

describe('MemoryAllocationStore specifics', () => {
  it('lets a reservation lapse after its ttl (injected clock): the token is gone and the port free', async () => {
    const clock = new ManualClock();
    const store = new MemoryAllocationStore({ now: () => clock.now() });
    const port = { relayedAddress: '192.0.2.100', relayedPort: 50001 };
    assert.equal(await store.reservePort('t1', port, 30_000), true);
    clock.advance(29_999);
    assert.equal(await store.reservePort('t2', port, 30_000), false, 'still held');
    clock.advance(1);
    const record = {
      key: fiveTupleKey('udp', '198.51.100.1', 40000, '192.0.2.1', 3478),
      transport: 'udp' as const,
      clientAddress: '198.51.100.1',
      clientPort: 40000,
      serverAddress: '192.0.2.1',
      serverPort: 3478,
      ...port,
      ownerNodeId: 'n',
      username: 'u',
      realm: 'r',
      createdAtMs: 0,
      expiresAtMs: 1,
      permissions: {},
      channels: {},
    };
    // No reservation call in between: the lapse alone frees the port.
    assert.equal((await store.create(record, { userQuota: 0 })).ok, true, 'the lapsed reservation no longer blocks the port');
    assert.equal(await store.takeReservation('t1'), undefined, 'expired');
    await store.close();
  });

  it('refuses every call once closed', async () => {
    const store = new MemoryAllocationStore();
    await store.close();
    await assert.rejects(store.get('x'), /closed/);
    await assert.rejects(store.countUserAllocations('x'), /closed/);
  });
});

// The AllocationStore contract: what every store (memory, Redis) must do. Run it
// with runStoreContract(name, makeStore) from a *.test.ts file.
//
// Implementation-agnostic on purpose: every test uses its own keys, usernames and
// relayed addresses (so a shared Redis can run it), reads events filtered by its
// own keys, and waits for events instead of assuming when they arrive.

import { afterEach, beforeEach, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';

import type { AllocationRecord, AllocationStore, NewAllocationRecord, StoreEvent } from '../../../src/store/types.js';
import { fiveTupleKey } from '../../../src/store/types.js';

export interface StoreUnderTest {
  readonly store: AllocationStore;
  cleanup(): Promise<void>;
}

type Mutable<T> = { -readonly [K in keyof T]: T[K] };

/** Waits (without a fixed sleep) until `done()` holds; fails after `timeoutMs`. */
async function waitFor(done: () => boolean, what: string, timeoutMs = 2000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!done()) {
    if (Date.now() > deadline) assert.fail(`timed out waiting for ${what}`);
    await new Promise<void>((resolve) => setTimeout(resolve, 2));
  }
}

/** Names unique to one test, so tests never see each other's state in a shared store. */
class Scope {
  private readonly id = randomBytes(4);
  private nextClientPort = 40000;
  private nextRelayPort = 50000;
  readonly clientAddress = `10.${this.id[0]}.${this.id[1]}.${this.id[2]}`;
  readonly relayAddress = `172.16.${this.id[2]}.${this.id[3]}`;
  /** The IPv6 relayed address of dual allocations (ADDITIONAL-ADDRESS-FAMILY). */
  readonly relayAddressV6 = `2001:db8::${this.id.subarray(0, 2).toString('hex')}:${this.id.subarray(2).toString('hex')}`;
  readonly tag = this.id.toString('hex');

  user(name = 'user'): string {
    return `${name}-${this.tag}`;
  }

  relayPort(): number {
    return this.nextRelayPort++;
  }

  record(overrides: Partial<NewAllocationRecord> = {}): NewAllocationRecord {
    const clientPort = overrides.clientPort ?? this.nextClientPort++;
    const base: NewAllocationRecord = {
      key: fiveTupleKey('udp', this.clientAddress, clientPort, '192.0.2.1', 3478),
      transport: 'udp',
      clientAddress: this.clientAddress,
      clientPort,
      serverAddress: '192.0.2.1',
      serverPort: 3478,
      relayedAddress: this.relayAddress,
      relayedPort: this.relayPort(),
      ownerNodeId: 'node-a',
      username: this.user(),
      realm: 'example.org',
      createdAtMs: 1_700_000_000_000,
      expiresAtMs: 1_700_000_600_000,
      permissions: {},
      channels: {},
    };
    return { ...base, ...overrides };
  }

  /** A dual allocation: an IPv4 and an IPv6 relayed address. */
  dual(overrides: Partial<NewAllocationRecord> = {}): NewAllocationRecord {
    return this.record({ additionalRelayedAddress: this.relayAddressV6, additionalRelayedPort: this.relayPort(), ...overrides });
  }

  owns(event: StoreEvent): boolean {
    const key = event.type === 'deleted' ? event.key : event.record.key;
    return key.includes(`|${this.clientAddress}|`);
  }
}

async function mustCreate(store: AllocationStore, record: NewAllocationRecord, userQuota = 0): Promise<AllocationRecord> {
  const outcome = await store.create(record, { userQuota });
  assert.ok(outcome.ok, `create ${record.key}: ${outcome.ok ? '' : outcome.reason}`);
  return outcome.record;
}

function describeEvent(e: StoreEvent): string {
  return e.type === 'deleted' ? `deleted ${e.key} ${e.ownerNodeId} ${e.reason}` : `${e.type} ${e.record.key} v${e.record.version}`;
}

export interface ContractOptions {
  /**
   * Events of different keys are heard in the order they were written (one server
   * publishes every event). False for Redis Cluster, where two keys' masters publish
   * separately over the cluster bus (types.ts subscribe()); each key's order still holds.
   */
  readonly orderedAcrossKeys: boolean;
}

export function runStoreContract(name: string, makeStore: () => Promise<StoreUnderTest>, options: ContractOptions = { orderedAcrossKeys: true }): void {
  describe(`AllocationStore contract: ${name}`, () => {
    let sut: StoreUnderTest;
    let store: AllocationStore;
    let s: Scope;

    beforeEach(async () => {
      sut = await makeStore();
      store = sut.store;
      s = new Scope();
    });

    afterEach(async () => {
      await sut.cleanup();
    });

    describe('create and get', () => {
      it('round-trips a record as plain data at version 1', async () => {
        const input = s.record({
          permissions: { '8.8.8.8': 1_700_000_300_000, '2001:db8::1': 1_700_000_300_001 },
          channels: { '16384': { peerAddress: '8.8.8.8', peerPort: 5000, expiresAtMs: 1_700_000_600_000 } },
        });
        const created = await mustCreate(store, input);
        assert.deepEqual(created, { ...input, version: 1 });
        const got = await store.get(input.key);
        assert.deepEqual(got, { ...input, version: 1 });
        assert.deepEqual(JSON.parse(JSON.stringify(got)), got, 'plain, serialisable data');
        assert.equal(Object.getPrototypeOf(got), Object.prototype);
      });

      it('lists every record it holds (start-up sync), and not deleted ones', async () => {
        const a = s.record();
        const b = s.record({ permissions: { '8.8.8.8': 1_700_000_300_000 } });
        const gone = s.record();
        await mustCreate(store, a);
        await mustCreate(store, b);
        await mustCreate(store, gone);
        assert.equal(await store.delete(gone.key, 'test'), true);
        // Other tests may share the store: look at our keys only.
        const listed = (await store.listAllocations()).filter((r) => [a.key, b.key, gone.key].includes(r.key));
        listed.sort((x, y) => (x.key === a.key ? -1 : y.key === a.key ? 1 : 0));
        assert.deepEqual(listed, [
          { ...a, version: 1 },
          { ...b, version: 1 },
        ]);
      });

      it('returns undefined for a key it does not hold', async () => {
        assert.equal(await store.get(s.record().key), undefined);
      });

      it("refuses an existing key ('exists') and keeps the first record", async () => {
        const first = s.record();
        await mustCreate(store, first);
        const again = await store.create({ ...first, relayedPort: s.relayPort(), username: s.user('other') }, { userQuota: 0 });
        assert.deepEqual(again, { ok: false, reason: 'exists' });
        assert.deepEqual(await store.get(first.key), { ...first, version: 1 });
        assert.equal(await store.countUserAllocations(s.user('other')), 0, 'the refused create counted nothing');
      });

      it("refuses a relayed port another allocation holds ('port-taken'), not the same port on another address", async () => {
        const first = s.record();
        await mustCreate(store, first);
        const clash = s.record({ relayedPort: first.relayedPort, username: s.user('clash') });
        assert.deepEqual(await store.create(clash, { userQuota: 0 }), { ok: false, reason: 'port-taken' });
        assert.equal(await store.get(clash.key), undefined);
        assert.equal(await store.countUserAllocations(s.user('clash')), 0);
        const otherAddress = s.record({ relayedPort: first.relayedPort, relayedAddress: `${s.relayAddress}9` });
        await mustCreate(store, otherAddress);
      });

      it('round-trips the IPv6 relayed address of a dual allocation, in get, list and events', async () => {
        const events: StoreEvent[] = [];
        const unsubscribe = store.subscribe((e) => {
          if (s.owns(e)) events.push(e);
        });
        try {
          const input = s.dual();
          assert.deepEqual(await mustCreate(store, input), { ...input, version: 1 });
          assert.deepEqual(await store.get(input.key), { ...input, version: 1 });
          assert.deepEqual(
            (await store.listAllocations()).find((r) => r.key === input.key),
            { ...input, version: 1 },
          );
          await waitFor(() => events.length === 1, 'the created event');
          assert.deepEqual(events[0], { type: 'created', record: { ...input, version: 1 } });
        } finally {
          unsubscribe();
        }
      });

      it("refuses a dual allocation whose IPv6 relayed port another allocation holds ('port-taken', additional)", async () => {
        const first = await mustCreate(store, s.dual());
        const clash = s.dual({ additionalRelayedPort: first.additionalRelayedPort, username: s.user('clash6') });
        assert.deepEqual(await store.create(clash, { userQuota: 0 }), { ok: false, reason: 'port-taken', additional: true });
        assert.equal(await store.get(clash.key), undefined);
        assert.equal(await store.countUserAllocations(s.user('clash6')), 0);
        // The refused create left its IPv4 port free.
        await mustCreate(store, s.record({ relayedPort: clash.relayedPort }));
        // An IPv6-only allocation cannot take it either: one port, one holder.
        const v6only = s.record({ relayedAddress: s.relayAddressV6, relayedPort: first.additionalRelayedPort! });
        assert.deepEqual(await store.create(v6only, { userQuota: 0 }), { ok: false, reason: 'port-taken' });
        // An update cannot move it, and a delete frees it.
        const moved = await store.update({ ...first, additionalRelayedPort: s.relayPort(), expiresAtMs: first.expiresAtMs + 1 });
        assert.ok(moved.ok);
        assert.equal((await store.get(first.key))!.additionalRelayedPort, first.additionalRelayedPort);
        assert.equal(await store.delete(first.key, 'test'), true);
        await mustCreate(store, v6only);
      });

      it("enforces the user quota ('user-quota') per user; 0 means unlimited", async () => {
        const alice = s.user('alice');
        const a1 = await mustCreate(store, s.record({ username: alice }), 2);
        const a2 = await mustCreate(store, s.record({ username: alice }), 2);
        assert.equal(await store.countUserAllocations(alice), 2);
        const refused = s.record({ username: alice });
        assert.deepEqual(await store.create(refused, { userQuota: 2 }), { ok: false, reason: 'user-quota' });
        assert.equal(await store.get(refused.key), undefined);
        assert.equal(await store.countUserAllocations(alice), 2);
        // The refused create did not hold its port; another user is not affected by alice's quota.
        await mustCreate(store, s.record({ username: s.user('bob'), relayedPort: refused.relayedPort }), 2);
        // No quota means no limit.
        const a3 = await mustCreate(store, s.record({ username: alice }), 0);
        assert.equal(await store.countUserAllocations(alice), 3);
        // Delete frees quota.
        assert.equal(await store.delete(a1.key, 'test'), true);
        assert.equal(await store.delete(a3.key, 'test'), true);
        assert.equal(await store.countUserAllocations(alice), 1);
        await mustCreate(store, s.record({ username: alice }), 2);
        assert.equal(await store.countUserAllocations(alice), 2);
        assert.deepEqual((await store.create(s.record({ username: alice }), { userQuota: 2 })).ok, false);
        assert.ok(await store.get(a2.key));
      });

      it('counts allocations per user', async () => {
        const dave = s.user('dave');
        assert.equal(await store.countUserAllocations(dave), 0);
        const records = [];
        for (let i = 0; i < 3; i++) records.push(await mustCreate(store, s.record({ username: dave })));
        assert.equal(await store.countUserAllocations(dave), 3);
        assert.equal(await store.countUserAllocations(s.user('erin')), 0);
        for (const r of records) await store.delete(r.key, 'test');
        assert.equal(await store.countUserAllocations(dave), 0);
      });
    });

    describe('update', () => {
      it('writes at the stored version and bumps it', async () => {
        const created = await mustCreate(store, s.record());
        const next: AllocationRecord = { ...created, expiresAtMs: created.expiresAtMs + 1000, permissions: { '9.9.9.9': 5 } };
        const outcome = await store.update(next);
        assert.ok(outcome.ok);
        assert.deepEqual(outcome.record, { ...next, version: 2 });
        assert.deepEqual(await store.get(created.key), { ...next, version: 2 });
        const third = await store.update({ ...outcome.record, channels: { '16385': { peerAddress: '9.9.9.9', peerPort: 1, expiresAtMs: 7 } } });
        assert.ok(third.ok);
        assert.equal(third.record.version, 3);
      });

      it("refuses a stale version ('conflict') and returns the current record", async () => {
        const created = await mustCreate(store, s.record());
        const v2 = await store.update({ ...created, expiresAtMs: 1 });
        assert.ok(v2.ok);
        const stale = await store.update({ ...created, expiresAtMs: 2 });
        assert.equal(stale.ok, false);
        assert.equal(stale.ok ? '' : stale.reason, 'conflict');
        assert.deepEqual(stale.ok ? undefined : stale.current, v2.record);
        assert.deepEqual(await store.get(created.key), v2.record, 'nothing written');
        const ahead = await store.update({ ...v2.record, version: 7 });
        assert.equal(ahead.ok ? '' : ahead.reason, 'conflict', 'a version from the future conflicts too');
      });

      it("refuses a record it does not hold ('missing')", async () => {
        const outcome = await store.update({ ...s.record(), version: 1 });
        assert.equal(outcome.ok, false);
        assert.equal(outcome.ok ? '' : outcome.reason, 'missing');
        const created = await mustCreate(store, s.record());
        await store.delete(created.key, 'test');
        const afterDelete = await store.update(created);
        assert.equal(afterDelete.ok ? '' : afterDelete.reason, 'missing');
        assert.equal(await store.get(created.key), undefined, 'update never creates');
      });

      it('keeps the relayed address, relayed port and username fixed at creation', async () => {
        const created = await mustCreate(store, s.record());
        const otherPort = s.relayPort();
        const outcome = await store.update({
          ...created,
          relayedAddress: '203.0.113.200',
          relayedPort: otherPort,
          username: s.user('mallory'),
          expiresAtMs: created.expiresAtMs + 5,
        });
        assert.ok(outcome.ok);
        const got = (await store.get(created.key))!;
        assert.equal(got.relayedAddress, created.relayedAddress);
        assert.equal(got.relayedPort, created.relayedPort);
        assert.equal(got.username, created.username);
        assert.equal(got.expiresAtMs, created.expiresAtMs + 5, 'the rest of the update is written');
        assert.deepEqual(outcome.record, got);
        assert.equal(await store.countUserAllocations(created.username), 1);
        assert.equal(await store.countUserAllocations(s.user('mallory')), 0);
        // The original port is still held; the other one was never taken.
        const clash = await store.create(s.record({ relayedPort: created.relayedPort }), { userQuota: 0 });
        assert.equal(clash.ok ? '' : clash.reason, 'port-taken');
        await mustCreate(store, s.record({ relayedPort: otherPort }));
      });
    });

    describe('delete', () => {
      it('removes the record, frees its port and quota, and answers false the second time', async () => {
        const frank = s.user('frank');
        const created = await mustCreate(store, s.record({ username: frank }), 1);
        assert.equal(await store.delete(created.key, 'test'), true);
        assert.equal(await store.get(created.key), undefined);
        assert.equal(await store.countUserAllocations(frank), 0);
        assert.equal(await store.delete(created.key, 'test'), false);
        // Port and quota are free: the same user can take the same port again.
        await mustCreate(store, s.record({ username: frank, relayedPort: created.relayedPort }), 1);
        assert.equal(await store.countUserAllocations(frank), 1);
      });

      it('does nothing when expectedVersion does not match, and deletes when it does', async () => {
        const created = await mustCreate(store, s.record());
        const v2 = await store.update({ ...created, expiresAtMs: 9 });
        assert.ok(v2.ok);
        assert.equal(await store.delete(created.key, 'test', 1), false);
        assert.deepEqual(await store.get(created.key), v2.record);
        assert.equal(await store.countUserAllocations(created.username), 1);
        assert.equal(await store.delete(created.key, 'test', 2), true);
        assert.equal(await store.get(created.key), undefined);
      });

      it('answers false for a key it never held', async () => {
        assert.equal(await store.delete(s.record().key, 'test'), false);
      });
    });

    describe('move (RFC 8016 mobility)', () => {
      it('writes the record under the new key and drops the old one, keeping its relayed port and user count; the new key then updates and deletes as any', async () => {
        const old = await mustCreate(store, s.record({ permissions: { '8.8.8.8': 1_700_000_300_000 } }), 1);
        const next = s.record({ relayedPort: old.relayedPort, permissions: old.permissions, mobilityGeneration: 1 });
        const outcome = await store.move(old.key, old.version, next);
        assert.ok(outcome.ok);
        assert.deepEqual(outcome.record, { ...next, createdAtMs: old.createdAtMs, movedFrom: old.key, version: 1 });
        assert.equal(await store.get(old.key), undefined);
        assert.deepEqual(await store.get(next.key), outcome.record);
        assert.equal(await store.countUserAllocations(old.username), 1, 'counted once');
        // The relayed port is still claimed (now by the new key): another allocation cannot take it.
        const clash = await store.create(s.record({ relayedPort: old.relayedPort, username: s.user('other') }), { userQuota: 0 });
        assert.deepEqual(clash, { ok: false, reason: 'port-taken' });
        const updated = await store.update({ ...outcome.record, expiresAtMs: old.expiresAtMs + 1 });
        assert.ok(updated.ok);
        assert.equal(await store.delete(next.key, 'test'), true);
        assert.equal(await store.countUserAllocations(old.username), 0);
        assert.ok((await store.create(s.record({ relayedPort: old.relayedPort }), { userQuota: 0 })).ok, 'the port is free once it is deleted');
      });

      it('moves a record once: a second move at the same version gets conflict or missing; a taken new key is exists', async () => {
        const old = await mustCreate(store, s.record());
        const first = await store.move(old.key, old.version, s.record({ relayedPort: old.relayedPort }));
        assert.ok(first.ok);
        const second = await store.move(old.key, old.version, s.record({ relayedPort: old.relayedPort }));
        assert.deepEqual(second, { ok: false, reason: 'missing' });
        const other = await mustCreate(store, s.record());
        const stale = await store.move(first.record.key, first.record.version + 1, s.record({ relayedPort: first.record.relayedPort }));
        assert.equal(stale.ok ? 'ok' : stale.reason, 'conflict');
        const taken = await store.move(first.record.key, first.record.version, { ...s.record({ relayedPort: first.record.relayedPort }), key: other.key });
        assert.deepEqual(taken, { ok: false, reason: 'exists' });
        assert.ok(await store.get(first.record.key), 'a refused move changes nothing');
      });

      it("publishes the old key's deletion with reason 'moved', then the new record with movedFrom", async () => {
        const old = await mustCreate(store, s.record());
        const seen: string[] = [];
        const unsubscribe = store.subscribe((e) => {
          if (s.owns(e)) seen.push(e.type === 'created' ? `created ${e.record.key} from ${e.record.movedFrom}` : describeEvent(e));
        });
        const next = s.record({ relayedPort: old.relayedPort });
        assert.ok((await store.move(old.key, old.version, next)).ok);
        await waitFor(() => seen.length >= 2, 'two events');
        unsubscribe();
        const expected = [`deleted ${old.key} node-a moved`, `created ${next.key} from ${old.key}`];
        assert.deepEqual(options.orderedAcrossKeys ? seen : [...seen].sort(), options.orderedAcrossKeys ? expected : [...expected].sort());
      });
    });

    describe('relayed-port reservations (EVEN-PORT R bit)', () => {
      it('holds a port under a token, redeemable exactly once', async () => {
        const port = { relayedAddress: s.relayAddress, relayedPort: s.relayPort() };
        const token = `tok-${s.tag}-1`;
        assert.equal(await store.reservePort(token, port, 60_000), true);
        assert.deepEqual(await store.takeReservation(token), port);
        assert.equal(await store.takeReservation(token), undefined);
        assert.equal(await store.takeReservation(`tok-${s.tag}-unknown`), undefined);
      });

      it('refuses a port that is already reserved or allocated, and a token already in use', async () => {
        const port = { relayedAddress: s.relayAddress, relayedPort: s.relayPort() };
        assert.equal(await store.reservePort(`tok-${s.tag}-a`, port, 60_000), true);
        assert.equal(await store.reservePort(`tok-${s.tag}-b`, port, 60_000), false, 'port already reserved');
        const other = { relayedAddress: s.relayAddress, relayedPort: s.relayPort() };
        assert.equal(await store.reservePort(`tok-${s.tag}-a`, other, 60_000), false, 'token already in use');
        const allocated = await mustCreate(store, s.record());
        assert.equal(
          await store.reservePort(`tok-${s.tag}-c`, { relayedAddress: allocated.relayedAddress, relayedPort: allocated.relayedPort }, 60_000),
          false,
          'port held by an allocation',
        );
        // Once the allocation is gone its port can be reserved.
        await store.delete(allocated.key, 'test');
        assert.equal(await store.reservePort(`tok-${s.tag}-c`, { relayedAddress: allocated.relayedAddress, relayedPort: allocated.relayedPort }, 60_000), true);
      });

      it("blocks create on a reserved port ('port-taken') until the reservation is taken", async () => {
        const port = { relayedAddress: s.relayAddress, relayedPort: s.relayPort() };
        const token = `tok-${s.tag}-x`;
        assert.equal(await store.reservePort(token, port, 60_000), true);
        const record = s.record({ relayedPort: port.relayedPort });
        assert.deepEqual(await store.create(record, { userQuota: 0 }), { ok: false, reason: 'port-taken' });
        assert.deepEqual(await store.takeReservation(token), port);
        // The redeemer now allocates on it.
        await mustCreate(store, record);
      });
    });

    describe('records are copies', () => {
      it('does not change when a returned or stored-from object is mutated', async () => {
        const input = s.record({ permissions: { '8.8.8.8': 1 }, channels: { '16384': { peerAddress: '8.8.8.8', peerPort: 1, expiresAtMs: 2 } } });
        const created = await mustCreate(store, input);
        const snapshot = structuredClone({ ...input, version: 1 });

        const mutInput = input as Mutable<NewAllocationRecord>;
        mutInput.expiresAtMs = 42;
        (input.permissions as Record<string, number>)['6.6.6.6'] = 3;
        const mutCreated = created as Mutable<AllocationRecord>;
        mutCreated.version = 99;
        (created.channels as Record<string, unknown>)['16385'] = { peerAddress: 'x', peerPort: 0, expiresAtMs: 0 };
        const got = (await store.get(snapshot.key))!;
        (got as Mutable<AllocationRecord>).username = 'changed';
        (got.permissions as Record<string, number>)['8.8.8.8'] = 0;
        assert.deepEqual(await store.get(snapshot.key), snapshot);

        const updated = await store.update({ ...snapshot, expiresAtMs: 5 });
        assert.ok(updated.ok);
        (updated.record as Mutable<AllocationRecord>).expiresAtMs = 6;
        assert.equal((await store.get(snapshot.key))?.expiresAtMs, 5);
      });

      it('hands out copies in events too', async () => {
        const seen: StoreEvent[] = [];
        const unsubscribe = store.subscribe((e) => {
          if (s.owns(e)) seen.push(e);
        });
        const created = await mustCreate(store, s.record());
        await waitFor(() => seen.length >= 1, 'the created event');
        const event = seen[0]!;
        assert.equal(event.type, 'created');
        if (event.type === 'created') (event.record as Mutable<AllocationRecord>).expiresAtMs = 1;
        assert.deepEqual(await store.get(created.key), created);
        unsubscribe();
      });
    });

    describe('events', () => {
      it('delivers created, updated and deleted in order, asynchronously, to every subscriber', async () => {
        const a: StoreEvent[] = [];
        const b: StoreEvent[] = [];
        const offA = store.subscribe((e) => {
          if (s.owns(e)) a.push(e);
        });
        const offB = store.subscribe((e) => {
          if (s.owns(e)) b.push(e);
        });
        const input = s.record({ ownerNodeId: 'node-z' });
        const pending = store.create(input, { userQuota: 0 });
        assert.equal(a.length + b.length, 0, 'not delivered synchronously from inside create()');
        const created = await pending;
        assert.ok(created.ok);
        const v2 = await store.update({ ...created.record, expiresAtMs: 1 });
        assert.ok(v2.ok);
        const v3 = await store.update({ ...v2.record, expiresAtMs: 2 });
        assert.ok(v3.ok);
        assert.equal(await store.delete(input.key, 'refresh-zero'), true);

        const expected = [`created ${input.key} v1`, `updated ${input.key} v2`, `updated ${input.key} v3`, `deleted ${input.key} node-z refresh-zero`];
        await waitFor(() => a.length >= 4 && b.length >= 4, 'four events on both subscribers');
        assert.deepEqual(a.map(describeEvent), expected);
        assert.deepEqual(b.map(describeEvent), expected);
        const lastUpdate = a[2]!;
        assert.deepEqual(lastUpdate.type === 'updated' ? lastUpdate.record : undefined, v3.record, 'an update event carries the whole record');
        offA();
        offB();
      });

      it('emits nothing for refused writes', async () => {
        const seen: StoreEvent[] = [];
        const off = store.subscribe((e) => {
          if (s.owns(e)) seen.push(e);
        });
        const created = await mustCreate(store, s.record());
        await store.create(created, { userQuota: 0 }); // exists
        await store.update({ ...created, version: 5 }); // conflict
        await store.delete(created.key, 'test', 9); // wrong version
        const absent = s.record();
        await store.update({ ...absent, version: 1 }); // missing
        // Then a good write to each record, whose event tells us that any event of the
        // refused writes to it has been delivered. One marker per record: a record's events
        // arrive in order, but on a Redis Cluster each comes from the shard holding the
        // record, with no order between shards.
        const updated = await store.update(created);
        assert.ok(updated.ok, 'the marker update');
        await mustCreate(store, absent);
        const of = (key: string): string[] => seen.filter((e) => (e.type === 'deleted' ? e.key : e.record.key) === key).map(describeEvent);
        await waitFor(() => of(created.key).length >= 2 && of(absent.key).length >= 1, 'the marker events');
        assert.deepEqual(of(created.key), [`created ${created.key} v1`, `updated ${created.key} v2`]);
        assert.deepEqual(of(absent.key), [`created ${absent.key} v1`]);
        assert.equal(seen.length, 3, seen.map(describeEvent).join('\n'));
        off();
      });

      it('stops delivering to a listener after unsubscribe', async () => {
        const kept: StoreEvent[] = [];
        const dropped: StoreEvent[] = [];
        const offKept = store.subscribe((e) => {
          if (s.owns(e)) kept.push(e);
        });
        const offDropped = store.subscribe((e) => {
          if (s.owns(e)) dropped.push(e);
        });
        const created = await mustCreate(store, s.record());
        await waitFor(() => kept.length === 1 && dropped.length === 1, 'the created event on both');
        offDropped();
        await store.update({ ...created, expiresAtMs: 1 });
        await store.delete(created.key, 'test');
        await waitFor(() => kept.length === 3, 'the later events on the remaining subscriber');
        assert.equal(dropped.length, 1);
        offKept();
      });
    });

    describe('key watches (forward mode: a node hears the 5-tuples it cached, docs/scaling.md "The event feed")', () => {
      it('delivers to a watcher the events of the keys it watches only, in order, asynchronously, until the watch closes', async () => {
        assert.ok(store.watcher, 'the store has key watchers');
        const mine: string[] = [];
        const marker: string[] = [];
        const watcher = store.watcher((e) => mine.push(describeEvent(e)));
        // A second watcher on the other key, then on this one: it tells when an event was delivered.
        const markers = store.watcher((e) => marker.push(describeEvent(e)));
        try {
          const watched = s.record({ ownerNodeId: 'node-w' });
          const other = s.record();
          const watch = watcher.watch(watched.key);
          const otherWatch = markers.watch(other.key);
          await Promise.all([watch.ready, otherWatch.ready]);
          const pending = store.create(watched, { userQuota: 0 });
          assert.equal(mine.length, 0, 'not delivered synchronously from inside create()');
          const created = await pending;
          assert.ok(created.ok);
          await mustCreate(store, other);
          const v2 = await store.update({ ...created.record, expiresAtMs: 1 });
          assert.ok(v2.ok);
          await waitFor(() => mine.length >= 2 && marker.length >= 1, 'the watched events and the other key’s');
          assert.deepEqual(marker, [`created ${other.key} v1`], 'the other watcher heard only its key');

          watch.close();
          watch.close(); // twice is harmless
          const after = markers.watch(watched.key);
          await after.ready;
          assert.equal(await store.delete(watched.key, 'refresh-zero'), true);
          await waitFor(() => marker.length >= 2, 'the deletion on the other watcher');
          assert.deepEqual(marker, [`created ${other.key} v1`, `deleted ${watched.key} node-w refresh-zero`]);
          assert.deepEqual(mine, [`created ${watched.key} v1`, `updated ${watched.key} v2`], 'only the watched key, and nothing after close');
        } finally {
          watcher.close();
          markers.close();
        }
      });

      it('keeps two watches of one key apart: closing one leaves the other; closing the watcher ends both', async () => {
        assert.ok(store.watcher, 'the store has key watchers');
        const seen: string[] = [];
        const marker: string[] = [];
        const watcher = store.watcher((e) => seen.push(describeEvent(e)));
        const markers = store.watcher((e) => marker.push(describeEvent(e)));
        try {
          const input = s.record();
          const first = watcher.watch(input.key);
          const second = watcher.watch(input.key);
          const mark = markers.watch(input.key);
          await Promise.all([first.ready, second.ready, mark.ready]);
          first.close();
          const created = await mustCreate(store, input);
          await waitFor(() => marker.length >= 1 && seen.length >= 1, 'the created event');
          watcher.close();
          const updated = await store.update({ ...created, expiresAtMs: 1 });
          assert.ok(updated.ok);
          await waitFor(() => marker.length >= 2, 'the update on the marker');
          assert.deepEqual(seen, [`created ${input.key} v1`], 'once (one watch open), and nothing after the watcher closed');
        } finally {
          watcher.close();
          markers.close();
        }
      });
    });

    describe('bandwidth usage exchange (--user-max-bps, turn/bandwidth.ts)', () => {
      it("stores each node's demand per user and answers the sum of the others' fresh ones", async () => {
        assert.ok(store.exchangeUsage, 'the store exchanges usage');
        const alice = s.user('alice');
        const bob = s.user('bob');
        const now = 1_700_000_000_000;
        const ttl = 3000;
        // The first node to report hears of nobody.
        assert.deepEqual(await store.exchangeUsage('node-a', [{ username: alice, up: 8000.5, down: 0 }], now, ttl), [
          { up: 0, down: 0, upNodes: 0, downNodes: 0 },
        ]);
        // Two reports at once, answered in order; B hears A's for alice, nothing for bob.
        assert.deepEqual(
          await store.exchangeUsage(
            'node-b',
            [
              { username: alice, up: 3000, down: 1000 },
              { username: bob, up: 5, down: 5 },
            ],
            now + 100,
            ttl,
          ),
          [
            { up: 8000.5, down: 0, upNodes: 1, downNodes: 0 },
            { up: 0, down: 0, upNodes: 0, downNodes: 0 },
          ],
        );
        // A third node sums A and B, never itself.
        assert.deepEqual(await store.exchangeUsage('node-c', [{ username: alice, up: 1, down: 1 }], now + 200, ttl), [
          { up: 11000.5, down: 1000, upNodes: 2, downNodes: 1 },
        ]);
        // A report replaces the node's earlier one.
        await store.exchangeUsage('node-a', [{ username: alice, up: 0, down: 0 }], now + 300, ttl);
        assert.deepEqual(await store.exchangeUsage('node-c', [{ username: alice, up: 1, down: 1 }], now + 400, ttl), [
          { up: 3000, down: 1000, upNodes: 1, downNodes: 1 },
        ]);
        // Past its ttl a report no longer counts (B reported at now + 100).
        assert.deepEqual(await store.exchangeUsage('node-c', [{ username: alice, up: 1, down: 1 }], now + 100 + ttl, ttl), [
          { up: 0, down: 0, upNodes: 0, downNodes: 0 },
        ]);
      });
    });
  });
}

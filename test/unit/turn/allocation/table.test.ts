// AllocationTable.snapshot and the gauges ops/metrics builds from it: metrics read
// counts, never allocation internals.

import { describe, it } from 'node:test';
import assert from 'node:assert/strict';

import { createMetrics } from '../../../../src/ops/metrics.js';
import { MemoryAllocationStore } from '../../../../src/store/memory.js';
import { Allocation } from '../../../../src/turn/allocation/allocation.js';
import { AllocationTable } from '../../../../src/turn/allocation/table.js';
import { EngineCounters } from '../../../../src/turn/counters.js';
import { FakeClientPath, FakeRelaySocket } from '../../../helpers/fake-io.js';

const T0 = 1_700_000_000_000;

function relay(address: string, port: number): FakeRelaySocket {
  return new FakeRelaySocket(
    address,
    port,
    () => undefined,
    () => undefined,
  );
}

function filledTable(): AllocationTable {
  const table = new AllocationTable();
  const udp = table.addListener(new FakeClientPath('udp'));
  const tcp = table.addListener(new FakeClientPath('tcp'));
  const seed = (key: string, clientPort: number, username: string) => ({
    key,
    clientAddress: '198.51.100.7',
    clientPort,
    username,
    realm: 'r',
    createdAtMs: T0,
    expiresAtMs: T0 + 600_000,
  });
  const a = new Allocation(seed('a', 1, 'alice'), udp.path, { relay: relay('192.0.2.10', 50000), additional: undefined });
  const b = new Allocation(seed('b', 2, 'alice'), udp.path, { relay: relay('192.0.2.10', 50001), additional: relay('2001:db8::10', 50001) });
  const c = new Allocation(seed('c', 3, 'bob'), tcp.path, { relay: relay('2001:db8::10', 50002), additional: undefined });
  const p = a.permit('203.0.113.1', 0xcb007101, T0 + 300_000);
  a.permit('203.0.113.2', 0xcb007102, T0 + 300_000);
  a.bindChannel(0x4000, p, 5000, T0 + 600_000);
  b.permit('203.0.113.3', 0xcb007103, T0 + 300_000);
  table.add(udp, a);
  table.add(udp, b);
  table.add(tcp, c);
  return table;
}

describe('AllocationTable.snapshot', () => {
  it('counts allocations by transport and family, permissions, channels and allocations per user', () => {
    const snapshot = filledTable().snapshot();
    assert.deepEqual(snapshot.allocations.map((e) => `${e.transport} ${e.family} ${e.count}`).sort(), ['tcp ipv6 1', 'udp dual 1', 'udp ipv4 1']);
    assert.equal(snapshot.permissions, 3);
    assert.equal(snapshot.channels, 1);
    assert.deepEqual([...snapshot.allocationsByUser].sort(), [
      ['alice', 2],
      ['bob', 1],
    ]);
  });

  it('feeds the allocation, permission, channel and per-user gauges', async () => {
    const table = filledTable();
    const registry = createMetrics({ engine: table, counters: new EngineCounters(), store: new MemoryAllocationStore(), usernameLabels: true });
    const text = await registry.metrics();
    const line = (prefix: string): string | undefined => text.split('\n').find((l) => l.startsWith(prefix));
    assert.equal(line('anyturn_allocations{transport="udp",family="dual"}'), 'anyturn_allocations{transport="udp",family="dual"} 1');
    assert.equal(line('anyturn_allocations{transport="udp",family="ipv4"}'), 'anyturn_allocations{transport="udp",family="ipv4"} 1');
    assert.equal(line('anyturn_allocations{transport="tcp",family="ipv6"}'), 'anyturn_allocations{transport="tcp",family="ipv6"} 1');
    assert.equal(line('anyturn_permissions '), 'anyturn_permissions 3');
    assert.equal(line('anyturn_channel_bindings '), 'anyturn_channel_bindings 1');
    assert.equal(line('anyturn_user_allocations{user="alice"}'), 'anyturn_user_allocations{user="alice"} 2');
    assert.equal(line('anyturn_user_allocations{user="bob"}'), 'anyturn_user_allocations{user="bob"} 1');
  });

  it('takes one snapshot per scrape (not one per gauge), and a new one for the next scrape', async () => {
    const table = filledTable();
    let walks = 0;
    const engine = {
      snapshot: () => {
        walks++;
        return table.snapshot();
      },
    };
    const registry = createMetrics({ engine, counters: new EngineCounters(), store: new MemoryAllocationStore(), usernameLabels: true });
    const first = await registry.metrics();
    assert.equal(walks, 1);
    assert.match(first, /^anyturn_permissions 3$/m);
    const held = [...table.all()].find((a) => a.permissionsByAddress.size === 1)!;
    held.permit('203.0.113.9', 0xcb007109, T0 + 300_000);
    await new Promise<void>((resolve) => setImmediate(resolve));
    const second = await registry.metrics();
    assert.equal(walks, 2);
    assert.match(second, /^anyturn_permissions 4$/m);
  });
});

describe('EngineListener: client address -> allocation, or -> port -> allocation for an address with several', () => {
  const at = (key: string, clientAddress: string, clientPort: number, path: FakeClientPath) =>
    new Allocation({ key, clientAddress, clientPort, username: 'u', realm: 'r', createdAtMs: T0, expiresAtMs: T0 + 600_000 }, path, {
      relay: relay('192.0.2.10', 50000 + clientPort),
      additional: undefined,
    });

  it('finds each allocation by address and port as addresses gain and lose allocations, and counts them', () => {
    const table = new AllocationTable();
    const path = new FakeClientPath('udp');
    const listener = table.addListener(path);
    const one = at('one', '198.51.100.1', 1000, path);
    const two = at('two', '198.51.100.1', 1001, path);
    const three = at('three', '198.51.100.1', 1002, path);
    const other = at('other', '198.51.100.2', 1000, path);
    table.add(listener, one);
    table.add(listener, other);
    assert.equal(listener.find('198.51.100.1', 1000), one);
    assert.equal(listener.find('198.51.100.1', 1001), undefined, 'another port of an address with one allocation');
    table.add(listener, two);
    table.add(listener, three);
    assert.deepEqual(
      [listener.find('198.51.100.1', 1000), listener.find('198.51.100.1', 1001), listener.find('198.51.100.1', 1002), listener.find('198.51.100.2', 1000)],
      [one, two, three, other],
    );
    assert.equal(listener.size, 4);
    table.remove(listener, two);
    table.remove(listener, one);
    // Back to one allocation on the address: still found, the others not.
    assert.deepEqual(
      [listener.find('198.51.100.1', 1000), listener.find('198.51.100.1', 1001), listener.find('198.51.100.1', 1002)],
      [undefined, undefined, three],
    );
    assert.equal(listener.size, 2);
    assert.deepEqual(new Set(listener.values()), new Set([three, other]));
    table.remove(listener, three);
    table.remove(listener, other);
    assert.equal(listener.size, 0);
    assert.equal(listener.holdsAllocation, false);
    assert.equal(listener.find('198.51.100.1', 1002), undefined);
  });

  it('lets go only of the allocation it holds, and a new one on the same 5-tuple takes the place', () => {
    const table = new AllocationTable();
    const path = new FakeClientPath('udp');
    const listener = table.addListener(path);
    const first = at('k', '198.51.100.1', 1000, path);
    const again = at('k2', '198.51.100.1', 1000, path);
    listener.put(first);
    listener.put(again);
    assert.equal(listener.size, 1);
    listener.take(first); // no longer held there: nothing happens
    assert.equal(listener.find('198.51.100.1', 1000), again);
    listener.put(at('k3', '198.51.100.1', 1001, path));
    listener.take(first);
    assert.equal(listener.size, 2);
    assert.equal(listener.find('198.51.100.1', 1000), again);
  });
});

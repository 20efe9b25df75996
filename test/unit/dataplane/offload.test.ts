// KernelOffload (src/dataplane/offload.ts) over a recording fake of the kernel's
// entries: what the engine's lists become in the maps, and how the kernel's counters
// come back into the engine's (the program's totals) and into the deletion log (a
// removed entry's final counts). The kernel itself is tested in
// test/integration/dataplane-kernel.test.ts.

import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { type KernelEntries, KernelOffload, REFUSAL_LOG_INTERVAL_NS } from '../../../src/dataplane/offload.js';
import type { KernelChannel, KernelTraffic } from '../../../src/dataplane/kernel/kernel-dataplane.js';
import { createLogger } from '../../../src/ops/log.js';
import { EngineCounters } from '../../../src/turn/counters.js';
import type { OffloadChannel } from '../../../src/turn/ports.js';

class FakeKernel implements KernelEntries {
  readonly entries = new Map<number, KernelChannel>();
  readonly log: string[] = [];
  /** What retire() answers per handle. */
  readonly final = new Map<number, KernelTraffic>();
  private next = 1;

  /** Entries it holds at most: a full map refuses (as KernelDataplane.install throws). */
  capacity = Number.POSITIVE_INFINITY;

  install(channel: KernelChannel): number {
    if (this.entries.size >= this.capacity) throw new Error(`the kernel dataplane holds ${this.capacity} channels already (maxEntries)`);
    const handle = this.next++;
    this.entries.set(handle, channel);
    this.log.push(`install ${handle}`);
    return handle;
  }

  update(handle: number, channel: KernelChannel): void {
    assert.ok(this.entries.has(handle), `update of a live handle ${handle}`);
    this.entries.set(handle, channel);
    this.log.push(`update ${handle}`);
  }

  remove(handle: number, channel: KernelChannel): void {
    const installed = this.entries.get(handle);
    assert.ok(installed, `remove of a live handle ${handle}`);
    // The map keys are worked out from what remove() is given: the same tuple as installed.
    assert.deepEqual({ ...channel, expiresAtNs: 0n }, { ...installed, expiresAtNs: 0n }, `remove ${handle} names its installed tuple`);
    this.entries.delete(handle);
    this.log.push(`remove ${handle}`);
  }

  flush(): Promise<void> {
    this.log.push('flush');
    return Promise.resolve();
  }

  /** A removed handle's final counts, as the kernel would answer them. */
  retire(handle: number): Promise<KernelTraffic | undefined> {
    assert.ok(!this.entries.has(handle), `retire of a removed handle ${handle}`);
    this.log.push(`retire ${handle}`);
    return Promise.resolve(this.final.get(handle));
  }
}

function channel(number: number, peerPort: number, expiresAtMs: number): OffloadChannel {
  return {
    clientAddress: '198.18.10.2',
    clientPort: 40000,
    serverAddress: '198.18.1.2',
    serverPort: 3478,
    channel: number,
    relayAddress: '198.18.1.2',
    relayPort: 50000,
    peerAddress: '198.18.20.2',
    peerPort,
    expiresAtMs,
  };
}

function harness(): { kernel: FakeKernel; counters: EngineCounters; offload: KernelOffload } {
  const kernel = new FakeKernel();
  const counters = new EngineCounters();
  // The monotonic clock reads 5 s whenever asked.
  const offload = new KernelOffload(kernel, counters, createLogger('silent'), () => 5_000_000_000n);
  return { kernel, counters, offload };
}

describe('KernelOffload', () => {
  it('installs each channel once, updates it when only its expiry moves, and removes what is no longer listed', () => {
    const { kernel, offload } = harness();
    assert.ok(offload.set('a', [channel(0x4000, 5000, 10_300), channel(0x4001, 5001, 10_600)], 10_000), 'a change waits for the kernel');
    assert.deepEqual(kernel.log, ['install 1', 'install 2', 'flush']);
    // The engine clock's 300 ms ahead becomes the monotonic clock's 5 s + 300 ms.
    assert.equal(kernel.entries.get(1)?.expiresAtNs, 5_300_000_000n);
    assert.equal(offload.size, 2);

    assert.equal(offload.set('a', [channel(0x4000, 5000, 10_300), channel(0x4001, 5001, 10_600)], 10_000), undefined, 'nothing to wait for');
    assert.deepEqual(kernel.log.slice(3), [], 'the same list again changes nothing');
    offload.set('a', [channel(0x4000, 5000, 20_000), channel(0x4001, 5001, 10_600)], 10_000);
    assert.deepEqual(kernel.log.slice(3), ['update 1', 'flush']);
    // Another peer on number 0x4001 (a rebinding after quarantine): a new entry, not an update.
    offload.set('a', [channel(0x4000, 5000, 20_000), channel(0x4001, 6000, 10_600)], 10_000);
    // Each removed entry's final counts are read right after it (for the deletion log).
    assert.deepEqual(kernel.log.slice(5), ['remove 2', 'retire 2', 'install 3', 'flush']);
    offload.set('a', [], 10_000);
    assert.deepEqual(kernel.log.slice(9), ['remove 1', 'retire 1', 'remove 3', 'retire 3', 'flush']);
    assert.equal(kernel.entries.size, 0);
    assert.equal(offload.size, 0);
  });

  it("adds the program's relayed totals to the engine counters, as deltas between reads", () => {
    const { counters, offload } = harness();
    offload.accountTotals({ relayed_to_peer: 11, bytes_relayed_to_peer: 1050, relayed_to_client: 7, bytes_relayed_to_client: 700, expired: 3 });
    assert.deepEqual([counters.packetsClientToPeer, counters.bytesClientToPeer, counters.packetsPeerToClient, counters.bytesPeerToClient], [11, 1050, 7, 700]);
    offload.accountTotals({ relayed_to_peer: 14, bytes_relayed_to_peer: 1350, relayed_to_client: 7, bytes_relayed_to_client: 700, expired: 9 });
    assert.deepEqual([counters.packetsClientToPeer, counters.bytesClientToPeer, counters.packetsPeerToClient, counters.bytesPeerToClient], [14, 1350, 7, 700]);
    offload.accountTotals({});
    assert.equal(counters.packetsClientToPeer, 14, 'a read without the totals adds nothing');
  });

  it("gives the deletion log what an allocation's removed entries relayed, read once each after its removal", async () => {
    const { kernel, offload } = harness();
    offload.set('a', [channel(0x4000, 5000, 99_000)], 0);
    offload.set('b', [channel(0x4001, 5001, 99_000)], 0);
    assert.equal(offload.takeTraffic('a'), undefined, 'nothing while its entries are installed');
    kernel.final.set(1, { handle: 1, toPeerPackets: 10, toPeerBytes: 1000, toClientPackets: 7, toClientBytes: 700 });
    kernel.final.set(3, { handle: 3, toPeerPackets: 2, toPeerBytes: 20, toClientPackets: 0, toClientBytes: 0 });
    // 'a' moves to another peer (entry 1 goes, 3 comes), then goes: both entries add up.
    offload.set('a', [channel(0x4000, 6000, 99_000)], 0);
    offload.set('a', [], 0);
    assert.deepEqual(kernel.log.slice(-7), ['remove 1', 'retire 1', 'install 3', 'flush', 'remove 3', 'retire 3', 'flush']);
    assert.deepEqual(await offload.takeTraffic('a'), { packets: 19, bytes: 1720 });
    assert.equal(offload.takeTraffic('a'), undefined, 'taken once');
    offload.set('b', [], 0);
    assert.equal(await offload.takeTraffic('b'), undefined, 'an entry that relayed nothing: no figure');
  });

  it('counts refused channels and logs them at most once per 10 s, with how many since', () => {
    const kernel = new FakeKernel();
    kernel.capacity = 1;
    const lines: Record<string, unknown>[] = [];
    const logger = { ...createLogger('silent'), warn: (o: object) => void lines.push(o as Record<string, unknown>) };
    let nowNs = 1_000_000_000n;
    const offload = new KernelOffload(kernel, new EngineCounters(), logger as ReturnType<typeof createLogger>, () => nowNs);
    offload.set('a', [channel(0x4000, 5000, 99_000)], 0);
    for (const key of ['b', 'c', 'd']) offload.set(key, [channel(0x4001, 5001, 99_000)], 0);
    assert.equal(offload.refused, 3);
    assert.equal(offload.size, 1, 'the refused ones are not counted as installed');
    assert.deepEqual(
      lines.map((l) => l.refused),
      [1],
      'one line for the first, the next two within 10 s unlogged',
    );
    nowNs += REFUSAL_LOG_INTERVAL_NS;
    offload.set('e', [channel(0x4001, 5001, 99_000)], 0);
    assert.deepEqual(
      lines.map((l) => l.refused),
      [1, 3],
      'then one line saying how many since',
    );
    // A refusal part way through a list leaves what is still installed tracked: the next
    // list removes it (no entry left in the kernel that nothing knows of).
    kernel.capacity = 2;
    offload.set('a', [channel(0x4001, 6000, 99_000), channel(0x4002, 6001, 99_000), channel(0x4000, 5000, 99_000)], 0);
    offload.set('a', [], 0);
    assert.equal(kernel.entries.size, 0, 'every entry of a removed');
    assert.equal(offload.size, 0);
  });

  it('gives never-negative lifetimes, and does nothing once the kernel path is gone', () => {
    const { kernel, offload } = harness();
    offload.set('a', [channel(0x4000, 5000, 900)], 1000);
    assert.equal(kernel.entries.get(1)?.expiresAtNs, 5_000_000_000n, 'already expired: now, never in the past');
    offload.markDead();
    offload.set('b', [channel(0x4001, 5001, 99_000)], 1000);
    assert.deepEqual(kernel.log, ['install 1', 'flush']);
    assert.equal(offload.size, 0);
  });
});

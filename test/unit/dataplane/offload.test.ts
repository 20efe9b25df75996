// KernelOffload (src/dataplane/offload.ts) over a recording fake of the kernel's
// entries: what the engine's lists become in the maps, and how the kernel's counters
// come back into the engine's. The kernel itself is tested in
// test/integration/dataplane-kernel.test.ts.

import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { type KernelEntries, KernelOffload } from '../../../src/dataplane/offload.js';
import type { KernelChannel, KernelTraffic } from '../../../src/dataplane/kernel/kernel-dataplane.js';
import { createLogger } from '../../../src/ops/log.js';
import { EngineCounters } from '../../../src/turn/counters.js';
import type { OffloadChannel } from '../../../src/turn/ports.js';

class FakeKernel implements KernelEntries {
  readonly entries = new Map<number, KernelChannel>();
  readonly log: string[] = [];
  pending: KernelTraffic[] = [];
  private next = 1;

  install(channel: KernelChannel): number {
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

  remove(handle: number): void {
    assert.ok(this.entries.delete(handle), `remove of a live handle ${handle}`);
    this.log.push(`remove ${handle}`);
  }

  readTraffic(): Promise<KernelTraffic[]> {
    const out = this.pending;
    this.pending = [];
    return Promise.resolve(out);
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
    offload.set('a', [channel(0x4000, 5000, 10_300), channel(0x4001, 5001, 10_600)], 10_000);
    assert.deepEqual(kernel.log, ['install 1', 'install 2']);
    // The engine clock's 300 ms ahead becomes the monotonic clock's 5 s + 300 ms.
    assert.equal(kernel.entries.get(1)?.expiresAtNs, 5_300_000_000n);
    assert.equal(offload.size, 2);

    offload.set('a', [channel(0x4000, 5000, 10_300), channel(0x4001, 5001, 10_600)], 10_000);
    assert.deepEqual(kernel.log.slice(2), [], 'the same list again changes nothing');
    offload.set('a', [channel(0x4000, 5000, 20_000), channel(0x4001, 5001, 10_600)], 10_000);
    assert.deepEqual(kernel.log.slice(2), ['update 1']);
    // Another peer on number 0x4001 (a rebinding after quarantine): a new entry, not an update.
    offload.set('a', [channel(0x4000, 5000, 20_000), channel(0x4001, 6000, 10_600)], 10_000);
    assert.deepEqual(kernel.log.slice(3), ['remove 2', 'install 3']);
    offload.set('a', [], 10_000);
    assert.deepEqual(kernel.log.slice(5), ['remove 1', 'remove 3']);
    assert.equal(kernel.entries.size, 0);
    assert.equal(offload.size, 0);
  });

  it('adds what the kernel relayed to the engine counters, per allocation until the read after its removal', async () => {
    const { kernel, counters, offload } = harness();
    offload.set('a', [channel(0x4000, 5000, 99_000)], 0);
    offload.set('b', [channel(0x4001, 5001, 99_000)], 0);
    kernel.pending = [
      { handle: 1, toPeerPackets: 10, toPeerBytes: 1000, toClientPackets: 7, toClientBytes: 700 },
      { handle: 2, toPeerPackets: 1, toPeerBytes: 50, toClientPackets: 0, toClientBytes: 0 },
    ];
    await offload.poll();
    assert.deepEqual([counters.packetsClientToPeer, counters.bytesClientToPeer, counters.packetsPeerToClient, counters.bytesPeerToClient], [11, 1050, 7, 700]);
    assert.deepEqual(offload.trafficOf('a'), { packets: 17, bytes: 1700 });
    // 'a' goes; its last traffic still arrives with the next read and is counted once.
    offload.set('a', [], 0);
    assert.deepEqual(offload.trafficOf('a'), { packets: 17, bytes: 1700 }, 'the deletion log reads it right after the removal');
    kernel.pending = [{ handle: 1, toPeerPackets: 3, toPeerBytes: 300, toClientPackets: 0, toClientBytes: 0 }];
    await offload.poll();
    assert.equal(counters.packetsClientToPeer, 14);
    assert.equal(offload.trafficOf('a'), undefined, 'forgotten after the read that followed its removal');
    assert.deepEqual(offload.trafficOf('b'), { packets: 1, bytes: 50 });
  });

  it('gives never-negative lifetimes, and does nothing once the kernel path is gone', () => {
    const { kernel, offload } = harness();
    offload.set('a', [channel(0x4000, 5000, 900)], 1000);
    assert.equal(kernel.entries.get(1)?.expiresAtNs, 5_000_000_000n, 'already expired: now, never in the past');
    offload.markDead();
    offload.set('b', [channel(0x4001, 5001, 99_000)], 1000);
    assert.deepEqual(kernel.log, ['install 1']);
    assert.equal(offload.size, 0);
  });
});

// The engine's ChannelOffload port (turn/ports.ts) over the kernel's maps: turns the
// engine's list of an allocation's channels into install/update/remove of map entries
// (one handle per bound channel, both directions), and reads the kernel's per-entry
// counters back about once a second into the engine's counters, so that
// anyturn_relayed_* counts what the kernel relayed too (docs/dataplane.md).

import type { EngineCounters } from '../turn/counters.js';
import type { ChannelOffload, EngineLogger, OffloadChannel } from '../turn/ports.js';
import type { KernelChannel, KernelTraffic } from './kernel/kernel-dataplane.js';

/** What this adapter needs of KernelDataplane (a fake in unit tests). */
export interface KernelEntries {
  install(channel: KernelChannel): number;
  update(handle: number, channel: KernelChannel): void;
  remove(handle: number): void;
  readTraffic(): Promise<KernelTraffic[]>;
}

interface Installed {
  readonly handle: number;
  readonly channel: OffloadChannel;
}

/** Both directions added up: what the deletion log and trafficOf report. */
interface Traffic {
  packets: number;
  bytes: number;
}

function sameTuple(a: OffloadChannel, b: OffloadChannel): boolean {
  return (
    a.clientAddress === b.clientAddress &&
    a.clientPort === b.clientPort &&
    a.serverAddress === b.serverAddress &&
    a.serverPort === b.serverPort &&
    a.relayAddress === b.relayAddress &&
    a.relayPort === b.relayPort &&
    a.peerAddress === b.peerAddress &&
    a.peerPort === b.peerPort
  );
}

export class KernelOffload implements ChannelOffload {
  /** Allocation key -> channel number -> what is installed for it. */
  private readonly installed = new Map<string, Map<number, Installed>>();
  /** Handle -> allocation key, for reading counters back (kept until the read after a removal). */
  private readonly keyOf = new Map<number, string>();
  private readonly removedSinceRead = new Set<number>();
  private readonly traffic = new Map<string, Traffic>();
  private entries = 0;
  private dead = false;

  constructor(
    private readonly kernel: KernelEntries,
    private readonly counters: EngineCounters,
    private readonly logger: EngineLogger,
    /** process.hrtime.bigint by default: the kernel's CLOCK_MONOTONIC (bpf_ktime_get_ns). */
    private readonly monotonicNs: () => bigint = process.hrtime.bigint,
  ) {}

  /** Channel entries installed now (metrics). */
  get size(): number {
    return this.entries;
  }

  set(key: string, channels: readonly OffloadChannel[], nowMs: number): void {
    if (this.dead) return;
    const before = this.installed.get(key);
    if (!before && channels.length === 0) return;
    const nowNs = this.monotonicNs();
    const after = new Map<number, Installed>();
    try {
      for (const channel of channels) {
        const old = before?.get(channel.channel);
        before?.delete(channel.channel);
        const entry = this.toKernel(channel, nowMs, nowNs);
        if (old && sameTuple(old.channel, channel)) {
          if (old.channel.expiresAtMs !== channel.expiresAtMs) this.kernel.update(old.handle, entry);
          after.set(channel.channel, { handle: old.handle, channel });
          continue;
        }
        if (old) this.remove(old.handle);
        const handle = this.kernel.install(entry);
        this.keyOf.set(handle, key);
        this.entries++;
        after.set(channel.channel, { handle, channel });
      }
      for (const old of before?.values() ?? []) this.remove(old.handle);
    } catch (err) {
      // A refused entry (the class checks families, sizes) leaves that channel to user space.
      this.logger.warn({ err, allocation: key }, 'kernel data plane refused a channel entry');
    }
    if (after.size > 0) this.installed.set(key, after);
    else this.installed.delete(key);
  }

  trafficOf(key: string): { readonly packets: number; readonly bytes: number } | undefined {
    return this.traffic.get(key);
  }

  /** Reads the kernel's counters and adds what moved to the engine's (about once a second; never per packet). */
  async poll(): Promise<void> {
    const moved = await this.kernel.readTraffic();
    this.account(moved);
    // Handles removed before this read have reported their last traffic: forget them, and
    // the traffic of allocations that no longer have any entry.
    for (const handle of this.removedSinceRead) this.keyOf.delete(handle);
    this.removedSinceRead.clear();
    for (const key of this.traffic.keys()) if (!this.installed.has(key)) this.traffic.delete(key);
  }

  /** The kernel path is gone (its helper died): every packet takes the JavaScript path from now on. */
  markDead(): void {
    this.dead = true;
    this.installed.clear();
    this.entries = 0;
  }

  private account(moved: readonly KernelTraffic[]): void {
    const c = this.counters;
    for (const t of moved) {
      c.packetsClientToPeer += t.toPeerPackets;
      c.bytesClientToPeer += t.toPeerBytes;
      c.packetsPeerToClient += t.toClientPackets;
      c.bytesPeerToClient += t.toClientBytes;
      const key = this.keyOf.get(t.handle);
      if (key === undefined) continue;
      let total = this.traffic.get(key);
      if (!total) this.traffic.set(key, (total = { packets: 0, bytes: 0 }));
      total.packets += t.toPeerPackets + t.toClientPackets;
      total.bytes += t.toPeerBytes + t.toClientBytes;
    }
  }

  private remove(handle: number): void {
    this.kernel.remove(handle);
    this.removedSinceRead.add(handle);
    this.entries--;
  }

  private toKernel(c: OffloadChannel, nowMs: number, nowNs: bigint): KernelChannel {
    const remainingMs = Math.max(0, Math.floor(c.expiresAtMs - nowMs));
    return {
      clientAddress: c.clientAddress,
      clientPort: c.clientPort,
      serverAddress: c.serverAddress,
      serverPort: c.serverPort,
      channel: c.channel,
      relayAddress: c.relayAddress,
      relayPort: c.relayPort,
      peerAddress: c.peerAddress,
      peerPort: c.peerPort,
      expiresAtNs: nowNs + BigInt(remainingMs) * 1_000_000n,
    };
  }
}

// The engine's ChannelOffload port (turn/ports.ts) over the kernel's maps: turns the
// engine's list of an allocation's channels into install/update/remove of map entries
// (one handle per bound channel, both directions). What the kernel relayed reaches the
// engine's counters from the program's totals, read about once a second, so that
// anyturn_relayed_* counts it too; an entry's own counters are read once, after its
// removal, for its allocation's deletion log (docs/dataplane.md §7). Reading every
// entry's counters each second cost the event loop milliseconds per 10,000 channels.

import type { EngineCounters } from '../turn/counters.js';
import type { ChannelOffload, EngineLogger, OffloadChannel } from '../turn/ports.js';
import type { KernelChannel, KernelTraffic } from './kernel/kernel-dataplane.js';

/** What this adapter needs of KernelDataplane (a fake in unit tests). */
export interface KernelEntries {
  install(channel: KernelChannel): number;
  update(handle: number, channel: KernelChannel): void;
  /** `channel`: what the handle was installed (or last updated) with. */
  remove(handle: number, channel: KernelChannel): void;
  /** A removed handle's traffic not reported yet; the handle is free for reuse after. */
  retire(handle: number): Promise<KernelTraffic | undefined>;
  /** Resolves once the kernel holds every earlier install, update and remove. */
  flush(): Promise<void>;
}

interface Installed {
  readonly handle: number;
  /** As listed (the map keys are worked out again from it on removal). */
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

/** At most one log line about refused channel entries per 10 s. */
export const REFUSAL_LOG_INTERVAL_NS = 10_000_000_000n;

export class KernelOffload implements ChannelOffload {
  /**
   * Allocation key -> what is installed for its channels: the one most allocations have
   * held directly, an array for more (a Map per allocation was ~250 B of heap each at
   * 100,000: docs/scaling.md, "At scale").
   */
  private readonly installed = new Map<string, Installed | Installed[]>();
  /** What removed entries relayed, by allocation key, until its deletion log takes it. */
  private readonly traffic = new Map<string, Traffic>();
  /** Allocation key -> the final reads of its removed entries still under way. */
  private readonly retiring = new Map<string, Promise<void>>();
  /** The program's relayed totals at the last read: [to peer packets, bytes, to client packets, bytes]. */
  private readonly relayed: [number, number, number, number] = [0, 0, 0, 0];
  private entries = 0;
  /** Writes to the kernel so far: set() waits for a flush only when it wrote. */
  private writes = 0;
  private dead = false;
  private refusals = 0;
  private refusalsUnlogged = 0;
  private refusalLoggedAtNs: bigint | undefined;

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

  /** Channels refused so far (anyturn_dataplane_kernel_refused_total): relayed in JavaScript instead. */
  get refused(): number {
    return this.refusals;
  }

  /**
   * Counts a refusal and logs at most once per REFUSAL_LOG_INTERVAL_NS, with how many since:
   * a full map refuses every new channel, and a line with a stack each was a flood.
   */
  private refusedOne(err: unknown, key: string, nowNs: bigint): void {
    this.refusals++;
    this.refusalsUnlogged++;
    if (this.refusalLoggedAtNs !== undefined && nowNs - this.refusalLoggedAtNs < REFUSAL_LOG_INTERVAL_NS) return;
    const message = err instanceof Error ? err.message : String(err);
    this.logger.warn({ error: message, allocation: key, refused: this.refusalsUnlogged }, 'kernel data plane refused a channel entry: relayed in JavaScript');
    this.refusalLoggedAtNs = nowNs;
    this.refusalsUnlogged = 0;
  }

  set(key: string, channels: readonly OffloadChannel[], nowMs: number): Promise<void> | undefined {
    if (this.dead) return undefined;
    const before = this.installed.get(key);
    if (before === undefined && channels.length === 0) return undefined;
    const written = this.writes;
    const nowNs = this.monotonicNs();
    const olds: Installed[] = before === undefined ? [] : Array.isArray(before) ? [...before] : [before];
    const after: Installed[] = [];
    try {
      for (const channel of channels) {
        const at = olds.findIndex((o) => o.channel.channel === channel.channel);
        const old = at < 0 ? undefined : olds.splice(at, 1)[0];
        if (old && sameTuple(old.channel, channel)) {
          if (old.channel.expiresAtMs === channel.expiresAtMs) after.push(old);
          else {
            this.kernel.update(old.handle, this.toKernel(channel, nowMs, nowNs));
            this.writes++;
            after.push({ handle: old.handle, channel });
          }
          continue;
        }
        if (old) this.remove(key, old);
        const handle = this.kernel.install(this.toKernel(channel, nowMs, nowNs));
        this.writes++;
        this.entries++;
        after.push({ handle, channel });
      }
      for (const old of olds) this.remove(key, old);
    } catch (err) {
      // A refused entry (the class checks families, sizes; a full map) leaves that channel to user space.
      this.refusedOne(err, key, nowNs);
      // What the loop had not reached yet is still in the kernel: kept, for the next list to settle.
      after.push(...olds);
    }
    if (after.length === 0) this.installed.delete(key);
    else this.installed.set(key, after.length === 1 ? (after[0] as Installed) : after);
    // A dead helper resolves it at once (its pending answers are settled on exit).
    return this.writes === written ? undefined : this.kernel.flush().catch(() => undefined);
  }

  /**
   * What the kernel relayed for `key`, once the reads of its removed entries are in; forgets
   * it. Undefined when no entry of it was ever removed (nothing the kernel relayed for it).
   */
  takeTraffic(key: string): Promise<Traffic | undefined> | undefined {
    const reads = this.retiring.get(key);
    if (reads === undefined && !this.traffic.has(key)) return undefined;
    const take = (): Traffic | undefined => {
      const total = this.traffic.get(key);
      this.traffic.delete(key);
      return total;
    };
    return reads === undefined ? Promise.resolve(take()) : reads.then(take);
  }

  /**
   * Adds what the program relayed since the last call to the engine's counters: its totals
   * (KernelDataplane.readTotals), about once a second, never per packet.
   */
  accountTotals(totals: Readonly<Record<string, number>>): void {
    const c = this.counters;
    const r = this.relayed;
    const now = [
      totals.relayed_to_peer ?? r[0],
      totals.bytes_relayed_to_peer ?? r[1],
      totals.relayed_to_client ?? r[2],
      totals.bytes_relayed_to_client ?? r[3],
    ] as const;
    c.packetsClientToPeer += Math.max(0, now[0] - r[0]);
    c.bytesClientToPeer += Math.max(0, now[1] - r[1]);
    c.packetsPeerToClient += Math.max(0, now[2] - r[2]);
    c.bytesPeerToClient += Math.max(0, now[3] - r[3]);
    r[0] = now[0];
    r[1] = now[1];
    r[2] = now[2];
    r[3] = now[3];
  }

  /** The kernel path is gone (its helper died): every packet takes the JavaScript path from now on. */
  markDead(): void {
    this.dead = true;
    this.installed.clear();
    this.entries = 0;
  }

  /** Removes an entry, and reads what it relayed once the kernel dropped it (the helper answers in order). */
  private remove(key: string, { handle, channel }: Installed): void {
    // The keys come from the addresses, ports and number; the expiry is no part of them.
    this.kernel.remove(handle, this.toKernel(channel, channel.expiresAtMs, 0n));
    this.writes++;
    this.entries--;
    const read = this.kernel.retire(handle).then(
      (t) => {
        if (t === undefined) return;
        let total = this.traffic.get(key);
        if (!total) this.traffic.set(key, (total = { packets: 0, bytes: 0 }));
        total.packets += t.toPeerPackets + t.toClientPackets;
        total.bytes += t.toPeerBytes + t.toClientBytes;
      },
      () => undefined, // a dead helper: what it relayed is lost with it
    );
    const before = this.retiring.get(key);
    const all = before === undefined ? read : Promise.all([before, read]).then(() => undefined);
    this.retiring.set(key, all);
    void all.then(() => {
      if (this.retiring.get(key) === all) this.retiring.delete(key);
    });
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

// Where the engine finds allocations: per listener, client address -> client port
// -> allocation (the packet path's lookup, no string building), and every one by
// its store key (replication and cleanup, never on the packet path).

import type { ClientTransportKind } from '../../store/types.js';
import type { BandwidthLimits } from '../bandwidth.js';
import type { ClientPath, EngineSnapshot, ListenerHandle, RelayFamily } from '../ports.js';
import type { Allocation } from './allocation.js';

/** One place client packets arrive (a UDP socket, or a TCP/TLS connection) with its allocations. */
export class EngineListener implements ListenerHandle {
  /** client address -> client port -> allocation: no string building per packet. */
  readonly allocations = new Map<string, Map<number, Allocation>>();
  /** Set by closeListener: the connection is gone, an Allocate still in flight must not land here. */
  closed = false;
  constructor(readonly path: ClientPath) {}

  find(address: string, port: number): Allocation | undefined {
    return this.allocations.get(address)?.get(port);
  }

  get holdsAllocation(): boolean {
    return this.allocations.size > 0;
  }
}

export interface Held {
  readonly listener: EngineListener;
  readonly allocation: Allocation;
}

export class AllocationTable {
  readonly listeners = new Set<EngineListener>();
  /** Store keys of Allocates in flight (their 5-tuple is being claimed). */
  readonly pending = new Set<string>();
  /** Store key -> allocation (its `listener` says where it is held): no object per entry beside the allocation. */
  private readonly byKey = new Map<string, Allocation>();
  /** Allocations per username held here: the user quota while the store is unreachable (relay/relay-allocator.ts). */
  private readonly byUser = new Map<string, number>();
  private count = 0;

  /** `bandwidth`: gives every allocation that enters its limits (when any is configured). */
  constructor(private readonly bandwidth?: BandwidthLimits) {}

  get size(): number {
    return this.count;
  }

  addListener(path: ClientPath): EngineListener {
    const listener = new EngineListener(path);
    this.listeners.add(listener);
    return listener;
  }

  /** The listener on this server transport address (an adopted record names it). */
  findListener(transport: string, address: string, port: number): EngineListener | undefined {
    for (const listener of this.listeners) {
      const p = listener.path;
      if (p.transport === transport && p.localAddress === address && p.localPort === port) return listener;
    }
    return undefined;
  }

  /** Allocations of `username` held here (made here or taken on). */
  userCount(username: string): number {
    return this.byUser.get(username) ?? 0;
  }

  byStoreKey(key: string): Held | undefined {
    const allocation = this.byKey.get(key);
    return allocation?.listener === undefined ? undefined : { listener: allocation.listener, allocation };
  }

  add(listener: EngineListener, allocation: Allocation): void {
    let byPort = listener.allocations.get(allocation.clientAddress);
    if (!byPort) listener.allocations.set(allocation.clientAddress, (byPort = new Map()));
    byPort.set(allocation.clientPort, allocation);
    allocation.listener = listener;
    this.byKey.set(allocation.key, allocation);
    this.byUser.set(allocation.username, this.userCount(allocation.username) + 1);
    this.count++;
    if (this.bandwidth !== undefined && allocation.bandwidth === undefined) allocation.bandwidth = this.bandwidth.attach(allocation.username);
  }

  /**
   * RFC 8016: the allocation takes a new client 5-tuple (and store key), on `to`. False
   * when it is not held here under its key; nothing to do when it already has `key`.
   */
  move(allocation: Allocation, to: EngineListener, address: string, port: number, key: string): boolean {
    if (allocation.key === key) return false;
    if (this.byKey.get(allocation.key) !== allocation || allocation.listener === undefined) return false;
    this.remove(allocation.listener, allocation);
    allocation.key = key;
    allocation.path = to.path;
    allocation.clientAddress = address;
    allocation.clientPort = port;
    this.add(to, allocation);
    return true;
  }

  /** Takes an allocation out of both indexes (only if it is the one held there). */
  remove(listener: EngineListener, allocation: Allocation): void {
    const byPort = listener.allocations.get(allocation.clientAddress);
    if (byPort?.get(allocation.clientPort) === allocation) {
      byPort.delete(allocation.clientPort);
      if (byPort.size === 0) listener.allocations.delete(allocation.clientAddress);
    }
    if (this.byKey.get(allocation.key) === allocation) this.byKey.delete(allocation.key);
    const users = this.userCount(allocation.username) - 1;
    if (users > 0) this.byUser.set(allocation.username, users);
    else this.byUser.delete(allocation.username);
    this.count--;
    this.bandwidth?.release(allocation.bandwidth);
  }

  /**
   * Every live allocation, through one Map iterator (the store-key index holds them all):
   * the tick walks this every second, and walking the listeners' maps made an iterator
   * per client address, garbage per allocation where each client has its own address.
   */
  values(): IterableIterator<Allocation> {
    return this.byKey.values();
  }

  /** Every live allocation with its listener. */
  *entries(): IterableIterator<Held> {
    for (const listener of this.listeners) {
      for (const byPort of listener.allocations.values()) for (const allocation of byPort.values()) yield { listener, allocation };
    }
  }

  *all(): IterableIterator<Allocation> {
    for (const listener of this.listeners) for (const byPort of listener.allocations.values()) yield* byPort.values();
  }

  /**
   * Counts for metrics, on demand (a scrape), never per packet: one walk over the
   * allocations that builds nothing per allocation (at 100,000 allocations a string key
   * or a generator step each would be a pause on the relay path at every scrape; the
   * per-user counts are the table's own).
   */
  snapshot(): EngineSnapshot {
    const counts = new Array<number>(SNAPSHOT_TRANSPORTS.length * SNAPSHOT_FAMILIES.length).fill(0);
    let permissions = 0;
    let channels = 0;
    let localOnly = 0;
    for (const listener of this.listeners) {
      const t = SNAPSHOT_TRANSPORTS.indexOf(listener.path.transport) * SNAPSHOT_FAMILIES.length;
      for (const byPort of listener.allocations.values()) {
        for (const a of byPort.values()) {
          if (a.localOnly || a.detached) localOnly++;
          counts[t + SNAPSHOT_FAMILIES.indexOf(a.family)]!++;
          permissions += a.permissionsByAddress.size;
          channels += a.channelCount;
        }
      }
    }
    const allocations: { transport: ClientTransportKind; family: RelayFamily; count: number }[] = [];
    for (const [i, transport] of SNAPSHOT_TRANSPORTS.entries()) {
      for (const [j, family] of SNAPSHOT_FAMILIES.entries()) {
        const count = counts[i * SNAPSHOT_FAMILIES.length + j]!;
        if (count > 0) allocations.push({ transport, family, count });
      }
    }
    return { allocations, permissions, channels, allocationsByUser: new Map(this.byUser), localOnly };
  }
}

const SNAPSHOT_TRANSPORTS: readonly ClientTransportKind[] = ['udp', 'tcp', 'tls'];
const SNAPSHOT_FAMILIES: readonly RelayFamily[] = ['ipv4', 'ipv6', 'dual'];

// Where the engine finds allocations: per listener, client address -> client port
// -> allocation (the packet path's lookup, no string building), and every one by
// its store key (replication and cleanup, never on the packet path).

import type { ClientTransportKind } from '../../store/types.js';
import type { BandwidthLimits } from '../bandwidth.js';
import type { ClientPath, EngineSnapshot, ListenerHandle, RelayFamily } from '../ports.js';
import type { Allocation } from './allocation.js';

/** One place client packets arrive (a UDP socket, or a TCP/TLS connection) with its allocations. */
export class EngineListener implements ListenerHandle {
  /**
   * Client address -> its allocation, or, for an address with several (clients behind one
   * NAT), client port -> allocation. No string building per packet, and no map of its own
   * for the usual client, one allocation per address: at 100,000 allocations a map each was
   * ~270 B per allocation (docs/scaling.md, "At scale").
   */
  private readonly byAddress = new Map<string, Allocation | Map<number, Allocation>>();
  private count = 0;
  /** Set by closeListener: the connection is gone, an Allocate still in flight must not land here. */
  closed = false;
  constructor(readonly path: ClientPath) {}

  find(address: string, port: number): Allocation | undefined {
    const held = this.byAddress.get(address);
    if (held === undefined) return undefined;
    if (held instanceof Map) return held.get(port);
    return held.clientPort === port ? held : undefined;
  }

  /** Allocations held on this listener. */
  get size(): number {
    return this.count;
  }

  get holdsAllocation(): boolean {
    return this.count > 0;
  }

  /** Holds `allocation` under its client address and port, in place of any held there. */
  put(allocation: Allocation): void {
    const address = allocation.clientAddress;
    const held = this.byAddress.get(address);
    if (held === undefined) {
      this.byAddress.set(address, allocation);
      this.count++;
    } else if (held instanceof Map) {
      if (!held.has(allocation.clientPort)) this.count++;
      held.set(allocation.clientPort, allocation);
    } else if (held.clientPort === allocation.clientPort) {
      this.byAddress.set(address, allocation);
    } else {
      this.byAddress.set(
        address,
        new Map([
          [held.clientPort, held],
          [allocation.clientPort, allocation],
        ]),
      );
      this.count++;
    }
  }

  /** Lets `allocation` go, if it is the one held under its client address and port. */
  take(allocation: Allocation): void {
    const address = allocation.clientAddress;
    const held = this.byAddress.get(address);
    if (held === allocation) {
      this.byAddress.delete(address);
      this.count--;
    } else if (held instanceof Map && held.get(allocation.clientPort) === allocation) {
      held.delete(allocation.clientPort);
      this.count--;
      // Back to one: held without a map again.
      if (held.size === 1) for (const only of held.values()) this.byAddress.set(address, only);
    }
  }

  /** Every allocation held here (not for packet paths). */
  *values(): IterableIterator<Allocation> {
    for (const held of this.byAddress.values()) {
      if (held instanceof Map) yield* held.values();
      else yield held;
    }
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
    listener.put(allocation);
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
    listener.take(allocation);
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

  *all(): IterableIterator<Allocation> {
    for (const listener of this.listeners) yield* listener.values();
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
    for (const a of this.byKey.values()) {
      if (a.localOnly || a.detached) localOnly++;
      counts[SNAPSHOT_TRANSPORTS.indexOf(a.path.transport) * SNAPSHOT_FAMILIES.length + SNAPSHOT_FAMILIES.indexOf(a.family)]!++;
      permissions += a.permissionsByAddress.size;
      channels += a.channelCount;
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

// Forward mode (docs/architecture.md §4): a packet from a client 5-tuple this node holds
// no allocation for may belong to an allocation on another node, reached here by
// an anycast reroute. The router looks the 5-tuple up in the shared store once,
// caches the answer (invalidated by the store's event feed), and forwards the
// packet to the live owner over the mesh. When the owner is dead it removes the
// record and lets the engine answer 437, so the client re-allocates at once.
//
// The router hears only the events of the 5-tuples it has cached (AllocationStore.watcher):
// a watch opens before the lookup reads the record, so no change after the read is
// missed, and closes when the entry goes (an answer of "no allocation" keeps its watch
// until it expires). So what a node hears grows with the clients rerouted to it, not
// with the allocations of the cluster (docs/scaling.md "The event feed").

import { performance } from 'node:perf_hooks';
import type { AllocationRecord, AllocationStore, KeyWatcher, NodeInfo, NodeRegistry, StoreEvent, StoreWatch } from '../store/types.js';
import { fiveTupleKey } from '../store/types.js';
import type { Clock } from '../turn/clock.js';
import { SourceRateLimiter } from '../turn/auth/rate-limit.js';
import type { ClientPacketSink, EngineLogger, ForeignPacketHandler, ListenerHandle } from '../turn/ports.js';
import type { ClusterCounters } from './counters.js';
import type { MeshSocket } from './mesh.js';

/** How long "no allocation anywhere" is believed (a created event clears it sooner). */
const ABSENT_TTL_MS = 5_000;
/** After a store error, retry the lookup this soon. */
const ERROR_TTL_MS = 1_000;
/** A remote owner's liveness is checked again this often, without holding packets back. */
const REMOTE_RECHECK_MS = 5_000;
/** Watches of expired "no allocation" answers are closed this often. */
const SWEEP_MS = 1_000;
/** Packets held while a lookup is under way; more are dropped. */
const MAX_QUEUED = 16;
/**
 * Cached 5-tuples at most (bounded memory under junk traffic). Past it the least recently
 * used goes, one per new entry: an answer that has expired (the junk's 'absent' ones) is
 * old by then, and a live forwarded client is refreshed at every recheck, so it is not
 * pushed out unless more than this many lookups happen within REMOTE_RECHECK_MS.
 */
export const DEFAULT_MAX_CACHED = 200_000;
/**
 * One source IPv4 address or IPv6 /64 may use this share of --cluster-lookup-rate (per
 * second and as its burst): it takes this many sources to exhaust the lookups, so junk
 * from one host cannot starve the lookups of the clients a reroute brings here. Sources
 * are tracked as the unauthenticated-answer limit tracks them (turn/rate-limit.ts).
 */
export const LOOKUP_SHARE_DIVISOR = 10;

interface RemoteEntry {
  kind: 'remote';
  readonly key: string;
  node: NodeInfo;
  checkedAtMs: number;
  checking: boolean;
  /** The key's events while the entry lives (undefined: the store has no watcher). */
  watch: StoreWatch | undefined;
}
interface AbsentEntry {
  kind: 'absent';
  readonly key: string;
  readonly expiresAtMs: number;
  /** Until it expires: a 'created' event elsewhere clears it sooner. */
  watch: StoreWatch | undefined;
}
interface PendingEntry {
  kind: 'pending';
  readonly key: string;
  readonly queue: Buffer[];
  /** Opened before the lookup reads the store; the settled entry takes it over. */
  watch: StoreWatch | undefined;
}
type Entry = RemoteEntry | AbsentEntry | PendingEntry;

interface Place {
  readonly listener: ListenerHandle;
  readonly address: string;
  readonly port: number;
}

export interface ClusterRouterOptions {
  readonly nodeId: string;
  readonly store: AllocationStore;
  readonly registry: NodeRegistry;
  readonly mesh: MeshSocket;
  readonly clock: Clock;
  readonly logger: EngineLogger;
  readonly counters: ClusterCounters;
  /**
   * Store lookups per second for unknown 5-tuples (a token bucket), so junk can't hammer
   * the store; each source IP gets at most 1/LOOKUP_SHARE_DIVISOR of it.
   */
  readonly lookupsPerSecond: number;
  /** Cached 5-tuples at most (tests); DEFAULT_MAX_CACHED. */
  readonly maxCached?: number;
  /**
   * Anycast relay mode: take the allocation on here instead of forwarding (every node
   * can serve it). Its owner's death is then no reason to delete it.
   */
  readonly adopt?: (record: AllocationRecord) => Promise<boolean>;
}

export class ClusterRouter implements ForeignPacketHandler {
  private engine: ClientPacketSink | undefined;
  private readonly cache = new Map<ListenerHandle, Map<string, Map<number, Entry>>>();
  /** Map order is recency order: the first entry is the least recently used. */
  private readonly places = new Map<string, Place>();
  private tokens: number;
  private refilledAtMs: number;
  private readonly perSource: SourceRateLimiter;
  private readonly maxCached: number;
  private readonly unsubscribe: () => void;
  /** Forward mode with a store that has one: the events of the cached 5-tuples only. */
  private readonly watcher: KeyWatcher | undefined;
  /** Answers of "no allocation" that hold a watch, oldest first (closed once expired). */
  private readonly watchedAbsent = new Set<AbsentEntry>();
  private readonly sweeper: NodeJS.Timeout | undefined;

  constructor(private readonly o: ClusterRouterOptions) {
    const share = Math.max(1, Math.ceil(o.lookupsPerSecond / LOOKUP_SHARE_DIVISOR));
    this.perSource = new SourceRateLimiter({ perSecond: share, burst: share });
    this.maxCached = o.maxCached ?? DEFAULT_MAX_CACHED;
    this.tokens = o.lookupsPerSecond;
    this.refilledAtMs = o.clock.now();
    // Anycast relay mode takes every allocation on (the engine hears every event there anyway).
    const watcher = o.adopt ? undefined : o.store.watcher?.((event) => this.onStoreEvent(event));
    this.watcher = watcher;
    if (watcher) {
      this.unsubscribe = () => watcher.close();
      this.sweeper = setInterval(() => this.sweepAbsent(), SWEEP_MS);
      this.sweeper.unref();
    } else this.unsubscribe = o.store.subscribe((event) => this.onStoreEvent(event));
  }

  /** The engine is built after the router (it takes the router as its ForeignPacketHandler). */
  attach(engine: ClientPacketSink): void {
    this.engine = engine;
  }

  get cachedEntries(): number {
    return this.places.size;
  }

  offer(listener: ListenerHandle, buf: Buffer, address: string, port: number): boolean {
    // A TCP/TLS connection ends on the node that accepted it (docs/architecture.md §4): nothing to look for elsewhere.
    if (listener.path.transport !== 'udp') return false;
    const entry = this.cache.get(listener)?.get(address)?.get(port);
    const now = this.o.clock.now();
    if (entry !== undefined) {
      switch (entry.kind) {
        case 'remote':
          this.forward(entry, listener, buf, address, port);
          if (now - entry.checkedAtMs > REMOTE_RECHECK_MS && !entry.checking) void this.recheck(entry);
          return true;
        case 'pending':
          if (entry.queue.length < MAX_QUEUED) entry.queue.push(buf);
          return true;
        case 'absent':
          if (entry.expiresAtMs > now) return false;
          break;
      }
    }
    if (!this.takeToken(address, now)) {
      this.o.counters.lookupsRateLimited++;
      return false;
    }
    const key = fiveTupleKey(listener.path.transport, address, port, listener.path.localAddress, listener.path.localPort);
    this.set({ listener, address, port }, { kind: 'pending', key, queue: [buf], watch: undefined });
    void this.lookup({ listener, address, port }, key);
    return true;
  }

  /**
   * RFC 8016 mobility (forward mode): a Refresh from a new 5-tuple whose ticket names the
   * allocation at `key`, held by another live node. The request goes to that node, which
   * moves the allocation and answers; until its 'created' event for the new 5-tuple comes,
   * what the client sends from there goes the same way. Only after the engine
   * authenticated the request: one store read per such Refresh.
   */
  async forwardToOwner(key: string, listener: ListenerHandle, buf: Buffer, address: string, port: number): Promise<boolean> {
    if (listener.path.transport !== 'udp' || this.o.adopt) return false;
    this.o.counters.storeLookups++;
    const record = await this.o.store.get(key).catch(() => undefined);
    if (!record || record.ownerNodeId === this.o.nodeId) return false;
    const node = await this.o.registry.getNode(record.ownerNodeId).catch(() => undefined);
    if (!node) return false;
    const place = { listener, address, port };
    const entry: RemoteEntry = {
      kind: 'remote',
      key: fiveTupleKey(listener.path.transport, address, port, listener.path.localAddress, listener.path.localPort),
      node,
      checkedAtMs: this.o.clock.now(),
      checking: false,
      watch: undefined,
    };
    if (this.get(place)?.kind !== 'pending') {
      entry.watch = this.watcher?.watch(entry.key);
      this.set(place, entry);
    }
    this.forward(entry, listener, buf, address, port);
    return true;
  }

  /** The global bucket first (an empty one costs the source nothing), then the source's share. */
  private takeToken(address: string, now: number): boolean {
    const rate = this.o.lookupsPerSecond;
    this.tokens = Math.min(rate, this.tokens + ((now - this.refilledAtMs) * rate) / 1000);
    this.refilledAtMs = now;
    if (this.tokens < 1 || !this.perSource.take(address, now)) return false;
    this.tokens -= 1;
    return true;
  }

  private forward(entry: RemoteEntry, listener: ListenerHandle, buf: Buffer, address: string, port: number): void {
    this.o.mesh.forward(entry.node.meshAddress, entry.node.meshPort, address, port, listener.path.localAddress, listener.path.localPort, buf);
    this.o.counters.meshForwarded++;
  }

  private async lookup(place: Place, key: string): Promise<void> {
    const pendingEntry = this.get(place);
    const watch = this.watcher?.watch(key);
    if (pendingEntry?.kind === 'pending' && pendingEntry.key === key) pendingEntry.watch = watch;
    else watch?.close();
    try {
      // Subscribed before the read: a change the read does not show comes as an event.
      if (watch) await watch.ready;
      const started = performance.now();
      this.o.counters.storeLookups++;
      const record = await this.o.store.get(key);
      this.o.counters.observeLookupSeconds((performance.now() - started) / 1000);
      if (!record) return this.settleAbsent(place, key, ABSENT_TTL_MS);
      if (this.o.adopt) {
        // Held here now (or it can't be): either way the engine decides the held packets.
        if (await this.o.adopt(record)) this.o.counters.allocationsResumed++;
        this.settleAbsent(place, key, ABSENT_TTL_MS);
        this.invalidate(key);
        return;
      }
      if (record.ownerNodeId === this.o.nodeId) {
        // Our own record, but no live allocation here (this node restarted): it is stale.
        await this.o.store.delete(key, 'stale', record.version);
        return this.settleAbsent(place, key, ABSENT_TTL_MS);
      }
      const node = await this.o.registry.getNode(record.ownerNodeId);
      if (!node) {
        this.o.counters.deadOwnerCleanups++;
        this.o.logger.info(
          { event: 'owner_dead', allocation: key, owner: record.ownerNodeId, user: record.username },
          'allocation owner is dead: removing its record',
        );
        await this.o.store.delete(key, 'owner-dead', record.version);
        return this.settleAbsent(place, key, ABSENT_TTL_MS);
      }
      this.o.counters.allocationsResumed++;
      this.o.logger.info({ event: 'allocation_resumed', allocation: key, owner: node.nodeId }, 'forwarding a rerouted client to its allocation owner');
      const pending = this.get(place);
      const entry: RemoteEntry = { kind: 'remote', key, node, checkedAtMs: this.o.clock.now(), checking: false, watch: this.takeWatch(place, key) };
      this.set(place, entry);
      if (pending?.kind === 'pending') for (const buf of pending.queue) this.forward(entry, place.listener, buf, place.address, place.port);
    } catch (err) {
      this.o.counters.storeLookupErrors++;
      this.o.logger.warn({ err, allocation: key }, 'store lookup failed');
      this.settleAbsent(place, key, ERROR_TTL_MS, false);
    }
  }

  /** No remote owner: the engine decides the held packets locally (437 for a request, drop otherwise). */
  private settleAbsent(place: Place, key: string, ttlMs: number, watched = true): void {
    const pending = this.get(place);
    const entry: AbsentEntry = { kind: 'absent', key, expiresAtMs: this.o.clock.now() + ttlMs, watch: watched ? this.takeWatch(place, key) : undefined };
    this.set(place, entry);
    if (entry.watch) this.watchedAbsent.add(entry);
    if (pending?.kind === 'pending' && this.engine) {
      for (const buf of pending.queue) this.engine.handleClientPacket(place.listener, buf, place.address, place.port, true);
    }
  }

  private async recheck(entry: RemoteEntry): Promise<void> {
    entry.checking = true;
    try {
      const node = await this.o.registry.getNode(entry.node.nodeId);
      entry.checkedAtMs = this.o.clock.now();
      if (node) {
        entry.node = node;
        // In use (a recheck runs only when packets come): most recently used now.
        this.touch(entry.key);
      } else this.invalidate(entry.key); // the next packet looks again, and finds the owner dead
    } catch {
      entry.checkedAtMs = this.o.clock.now();
    } finally {
      entry.checking = false;
    }
  }

  /** The watch a settled entry keeps: the pending entry's, or a new one when that entry was evicted meanwhile. */
  private takeWatch(place: Place, key: string): StoreWatch | undefined {
    const pending = this.get(place);
    if (pending?.kind === 'pending' && pending.key === key && pending.watch) {
      const watch = pending.watch;
      pending.watch = undefined;
      return watch;
    }
    return this.watcher?.watch(key);
  }

  /** Closes the entry's watch: it is no longer cached (or replaced). */
  private release(entry: Entry | undefined): void {
    if (!entry?.watch) return;
    entry.watch.close();
    entry.watch = undefined;
    if (entry.kind === 'absent') this.watchedAbsent.delete(entry);
  }

  /** Expired answers of "no allocation" stop hearing their key (the entry stays, as a miss). */
  private sweepAbsent(): void {
    const now = this.o.clock.now();
    for (const entry of this.watchedAbsent) {
      // Oldest first; an error answer's shorter life holds no watch, so the order is the expiry order.
      if (entry.expiresAtMs > now) break;
      this.release(entry);
    }
  }

  private onStoreEvent(event: StoreEvent): void {
    const key = event.type === 'deleted' ? event.key : event.record.key;
    if (event.type !== 'updated') this.invalidate(key);
  }

  private invalidate(key: string): void {
    const place = this.places.get(key);
    if (!place) return;
    const entry = this.get(place);
    if (entry?.kind === 'pending') return; // its lookup settles it
    this.release(entry);
    this.places.delete(key);
    const byAddress = this.cache.get(place.listener);
    const byPort = byAddress?.get(place.address);
    byPort?.delete(place.port);
    if (byPort?.size === 0) byAddress?.delete(place.address);
  }

  private get(place: Place): Entry | undefined {
    return this.cache.get(place.listener)?.get(place.address)?.get(place.port);
  }

  /** Moves a cached 5-tuple to the most recently used end. */
  private touch(key: string): void {
    const place = this.places.get(key);
    if (!place) return;
    this.places.delete(key);
    this.places.set(key, place);
  }

  /** Forgets the least recently used 5-tuple: O(1), no sweep, no cliff. */
  private evictOldest(): void {
    const oldest = this.places.entries().next();
    if (oldest.done) return;
    const [key, place] = oldest.value;
    this.places.delete(key);
    const byAddress = this.cache.get(place.listener);
    const byPort = byAddress?.get(place.address);
    // A pending entry's lookup still settles: it finds no queue and installs its answer anew.
    this.release(byPort?.get(place.port));
    byPort?.delete(place.port);
    if (byPort?.size === 0) byAddress?.delete(place.address);
  }

  private set(place: Place, entry: Entry): void {
    if (this.places.has(entry.key))
      this.places.delete(entry.key); // set again: most recently used
    else if (this.places.size >= this.maxCached) this.evictOldest();
    let byAddress = this.cache.get(place.listener);
    if (!byAddress) this.cache.set(place.listener, (byAddress = new Map()));
    let byPort = byAddress.get(place.address);
    if (!byPort) byAddress.set(place.address, (byPort = new Map()));
    const replaced = byPort.get(place.port);
    if (replaced !== undefined && replaced.watch !== entry.watch) this.release(replaced);
    byPort.set(place.port, entry);
    this.places.set(entry.key, place);
  }

  /** Forgets every cached answer (after a store outage, when invalidation events may have been lost). */
  reset(): void {
    for (const [key, place] of this.places) if (this.get(place)?.kind !== 'pending') this.invalidate(key);
  }

  close(): void {
    if (this.sweeper) clearInterval(this.sweeper);
    this.unsubscribe();
  }
}

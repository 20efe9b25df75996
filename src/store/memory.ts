// The embedded, single-node AllocationStore. Same contract as the Redis store:
// copies in and out (callers can't mutate stored state), versions, events
// delivered asynchronously.

import {
  type AllocationLimits,
  type AllocationRecord,
  type AllocationStore,
  type ChannelRecord,
  type CreateOutcome,
  type KeyWatcher,
  MOVED,
  type MoveOutcome,
  type NewAllocationRecord,
  type NodeInfo,
  type NodeRegistry,
  type ReservedPort,
  type StoreEvent,
  type StoreEventListener,
  type UpdateOutcome,
  type UsageReport,
  type UsageTotals,
} from './types.js';

export interface MemoryStoreOptions {
  /** Milliseconds since the epoch; injected so tests control reservation expiry. */
  readonly now?: () => number;
}

/**
 * A copy sharing nothing with `record`, at `version`: the record's fields one by one (fields
 * that are undefined left out, as JSON.parse(JSON.stringify()) did, and as the Redis store
 * keeps them, store/redis/records.ts). With `identity` (an update), the fields an allocation
 * keeps from its creation (relayed port(s), user) are that record's, whatever `record` says.
 * One copy where a spread and a copy were two, and a literal rather than a field at a time
 * by name: the single-node server stores and hands back a copy on every create and update
 * (docs/scaling.md, part 1).
 */
function clone(record: NewAllocationRecord, version: number, identity?: AllocationRecord): AllocationRecord {
  const id = identity ?? record;
  const out: Mutable<AllocationRecord> = {
    key: record.key,
    transport: record.transport,
    clientAddress: record.clientAddress,
    clientPort: record.clientPort,
    serverAddress: record.serverAddress,
    serverPort: record.serverPort,
    relayedAddress: id.relayedAddress,
    relayedPort: id.relayedPort,
    ownerNodeId: record.ownerNodeId,
    username: id.username,
    realm: record.realm,
    createdAtMs: record.createdAtMs,
    expiresAtMs: record.expiresAtMs,
    permissions: copyPermissions(record.permissions),
    channels: copyChannels(record.channels),
    version,
  };
  // An update keeps the stored IPv6 relayed address only whole (both fields), as it always did.
  const dual = identity === undefined || (identity.additionalRelayedAddress !== undefined && identity.additionalRelayedPort !== undefined);
  if (dual && id.additionalRelayedAddress !== undefined) out.additionalRelayedAddress = id.additionalRelayedAddress;
  if (dual && id.additionalRelayedPort !== undefined) out.additionalRelayedPort = id.additionalRelayedPort;
  if (record.mobilityGeneration !== undefined) out.mobilityGeneration = record.mobilityGeneration;
  if (record.movedFrom !== undefined) out.movedFrom = record.movedFrom;
  return out;
}

function copyPermissions(permissions: AllocationRecord['permissions']): Record<string, number> {
  const out: Record<string, number> = {};
  for (const peer in permissions) out[peer] = permissions[peer]!;
  return out;
}

function copyChannels(channels: AllocationRecord['channels']): Record<string, ChannelRecord> {
  const out: Record<string, ChannelRecord> = {};
  for (const number in channels) {
    const c = channels[number]!;
    out[number] = { peerAddress: c.peerAddress, peerPort: c.peerPort, expiresAtMs: c.expiresAtMs };
  }
  return out;
}

/** A stored record's own copy (get, list, answers, events). */
function copy(record: AllocationRecord): AllocationRecord {
  return clone(record, record.version);
}

type Mutable<T> = { -readonly [K in keyof T]: T[K] };

function portKey(address: string, port: number): string {
  return `${address}|${port}`;
}

function additionalPortKey(r: NewAllocationRecord): string | undefined {
  return r.additionalRelayedAddress !== undefined && r.additionalRelayedPort !== undefined
    ? portKey(r.additionalRelayedAddress, r.additionalRelayedPort)
    : undefined;
}

export class MemoryAllocationStore implements AllocationStore {
  readonly kind = 'memory';
  private readonly records = new Map<string, AllocationRecord>();
  private readonly ports = new Map<string, string>();
  private readonly userCounts = new Map<string, number>();
  private readonly reservations = new Map<string, { port: ReservedPort; expiresAtMs: number }>();
  private readonly listeners = new Set<StoreEventListener>();
  /** Key -> the watches of it (watcher()): one entry per watch. */
  private readonly watched = new Map<string, Set<{ readonly listener: StoreEventListener }>>();
  /** username -> node id -> its last bandwidth report and when it goes stale (exchangeUsage). */
  private readonly usage = new Map<string, Map<string, { up: number; down: number; untilMs: number }>>();
  private readonly now: () => number;
  private closed = false;

  constructor(options: MemoryStoreOptions = {}) {
    this.now = options.now ?? Date.now;
  }

  private emit(event: StoreEvent): void {
    for (const listener of this.listeners) queueMicrotask(() => listener(event));
    const watches = this.watched.get(event.type === 'deleted' ? event.key : event.record.key);
    if (watches) for (const { listener } of watches) queueMicrotask(() => listener(event));
  }

  /** A 'created' or 'updated' event with its own copy of the record, made only when someone listens. */
  private emitRecord(type: 'created' | 'updated', record: AllocationRecord): void {
    if (this.listeners.size > 0 || this.watched.has(record.key)) this.emit({ type, record: copy(record) });
  }

  isAvailable(): boolean {
    return !this.closed;
  }

  private checkOpen(): void {
    if (this.closed) throw new Error('store is closed');
  }

  /**
   * Answered within the call (no promise) while the store is open: every Allocate on the
   * single-node server creates a record, and an async frame and a promise each cost more
   * than the work (docs/scaling.md, part 1). A closed store still rejects, as before.
   */
  create(input: NewAllocationRecord, limits: AllocationLimits): CreateOutcome | Promise<CreateOutcome> {
    if (this.closed) return Promise.reject(new Error('store is closed'));
    // A lapsed reservation must not keep blocking its port.
    this.dropExpiredReservations();
    if (this.records.has(input.key)) return { ok: false, reason: 'exists' };
    const pk = portKey(input.relayedAddress, input.relayedPort);
    const holder = this.ports.get(pk);
    if (holder !== undefined && holder !== input.key) return { ok: false, reason: 'port-taken' };
    // A dual allocation's IPv6 relayed port is claimed too (anycast relay mode binds it on every node).
    const apk = additionalPortKey(input);
    const additionalHolder = apk === undefined ? undefined : this.ports.get(apk);
    if (additionalHolder !== undefined && additionalHolder !== input.key) return { ok: false, reason: 'port-taken', additional: true };
    const count = this.userCounts.get(input.username) ?? 0;
    if (limits.userQuota > 0 && count >= limits.userQuota) return { ok: false, reason: 'user-quota' };
    const record = clone(input, 1);
    this.records.set(record.key, record);
    this.ports.set(pk, record.key);
    if (apk !== undefined) this.ports.set(apk, record.key);
    this.userCounts.set(record.username, count + 1);
    this.emitRecord('created', record);
    return { ok: true, record: copy(record) };
  }

  async get(key: string): Promise<AllocationRecord | undefined> {
    this.checkOpen();
    const record = this.records.get(key);
    return record ? copy(record) : undefined;
  }

  /** Answered within the call while open, as create (every CreatePermission, ChannelBind and Refresh writes). */
  update(next: AllocationRecord): UpdateOutcome | Promise<UpdateOutcome> {
    if (this.closed) return Promise.reject(new Error('store is closed'));
    const current = this.records.get(next.key);
    if (!current) return { ok: false, reason: 'missing' };
    if (current.version !== next.version) return { ok: false, reason: 'conflict', current: copy(current) };
    // The identity of an allocation (its relayed port(s), user, owner) is fixed at creation.
    const record = clone(next, current.version + 1, current);
    this.records.set(record.key, record);
    this.emitRecord('updated', record);
    return { ok: true, record: copy(record) };
  }

  async move(fromKey: string, expectedVersion: number, input: NewAllocationRecord): Promise<MoveOutcome> {
    this.checkOpen();
    const current = this.records.get(fromKey);
    if (!current) return { ok: false, reason: 'missing' };
    if (current.version !== expectedVersion) return { ok: false, reason: 'conflict', current: copy(current) };
    if (this.records.has(input.key)) return { ok: false, reason: 'exists' };
    // The identity (relayed ports, user, creation) stays the stored one; only the 5-tuple changes.
    const record = clone(
      {
        ...input,
        relayedAddress: current.relayedAddress,
        relayedPort: current.relayedPort,
        username: current.username,
        createdAtMs: current.createdAtMs,
        movedFrom: fromKey,
      },
      1,
    );
    this.records.delete(fromKey);
    this.records.set(record.key, record);
    for (const [pk, holder] of this.ports) if (holder === fromKey) this.ports.set(pk, record.key);
    this.emit({ type: 'deleted', key: fromKey, ownerNodeId: current.ownerNodeId, reason: MOVED });
    this.emitRecord('created', record);
    return { ok: true, record: copy(record) };
  }

  async delete(key: string, reason: string, expectedVersion?: number): Promise<boolean> {
    this.checkOpen();
    const current = this.records.get(key);
    if (!current) return false;
    if (expectedVersion !== undefined && current.version !== expectedVersion) return false;
    this.records.delete(key);
    const pk = portKey(current.relayedAddress, current.relayedPort);
    if (this.ports.get(pk) === key) this.ports.delete(pk);
    const apk = additionalPortKey(current);
    if (apk !== undefined && this.ports.get(apk) === key) this.ports.delete(apk);
    const count = (this.userCounts.get(current.username) ?? 1) - 1;
    if (count > 0) this.userCounts.set(current.username, count);
    else this.userCounts.delete(current.username);
    this.emit({ type: 'deleted', key, ownerNodeId: current.ownerNodeId, reason });
    return true;
  }

  async listAllocations(): Promise<AllocationRecord[]> {
    this.checkOpen();
    return [...this.records.values()].map(copy);
  }

  async countUserAllocations(username: string): Promise<number> {
    this.checkOpen();
    return this.userCounts.get(username) ?? 0;
  }

  private dropExpiredReservations(): void {
    const now = this.now();
    for (const [token, r] of this.reservations) {
      if (r.expiresAtMs <= now) {
        this.reservations.delete(token);
        const pk = portKey(r.port.relayedAddress, r.port.relayedPort);
        if (this.ports.get(pk) === `reservation|${token}`) this.ports.delete(pk);
      }
    }
  }

  async reservePort(token: string, port: ReservedPort, ttlMs: number): Promise<boolean> {
    this.checkOpen();
    this.dropExpiredReservations();
    const pk = portKey(port.relayedAddress, port.relayedPort);
    if (this.ports.has(pk) || this.reservations.has(token)) return false;
    this.ports.set(pk, `reservation|${token}`);
    this.reservations.set(token, { port: { ...port }, expiresAtMs: this.now() + ttlMs });
    return true;
  }

  async takeReservation(token: string): Promise<ReservedPort | undefined> {
    this.checkOpen();
    this.dropExpiredReservations();
    const r = this.reservations.get(token);
    if (!r) return undefined;
    this.reservations.delete(token);
    const pk = portKey(r.port.relayedAddress, r.port.relayedPort);
    if (this.ports.get(pk) === `reservation|${token}`) this.ports.delete(pk);
    return { ...r.port };
  }

  subscribe(listener: StoreEventListener): () => void {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  }

  watcher(listener: StoreEventListener): KeyWatcher {
    const closers = new Set<() => void>();
    return {
      watch: (key) => {
        const watches = this.watched.get(key) ?? new Set<{ readonly listener: StoreEventListener }>();
        this.watched.set(key, watches);
        const entry = { listener };
        watches.add(entry);
        const close = (): void => {
          closers.delete(close);
          watches.delete(entry);
          if (watches.size === 0 && this.watched.get(key) === watches) this.watched.delete(key);
        };
        closers.add(close);
        return { ready: Promise.resolve(), close };
      },
      close: () => {
        for (const close of [...closers]) close();
      },
    };
  }

  async exchangeUsage(nodeId: string, reports: readonly UsageReport[], nowMs: number, ttlMs: number): Promise<UsageTotals[]> {
    this.checkOpen();
    return reports.map((report) => {
      let byNode = this.usage.get(report.username);
      if (!byNode) this.usage.set(report.username, (byNode = new Map()));
      byNode.set(nodeId, { up: report.up, down: report.down, untilMs: nowMs + ttlMs });
      const totals = { up: 0, down: 0, upNodes: 0, downNodes: 0 };
      for (const [id, entry] of byNode) {
        if (entry.untilMs <= nowMs) byNode.delete(id);
        else if (id !== nodeId) {
          totals.up += entry.up;
          totals.down += entry.down;
          if (entry.up > 0) totals.upNodes++;
          if (entry.down > 0) totals.downNodes++;
        }
      }
      return totals;
    });
  }

  async close(): Promise<void> {
    this.closed = true;
    this.listeners.clear();
    this.watched.clear();
  }
}

/** In-process NodeRegistry: for a single node, and for tests that run several engines in one process. */
export class MemoryNodeRegistry implements NodeRegistry {
  private readonly nodes = new Map<string, { node: NodeInfo; expiresAtMs: number }>();
  constructor(private readonly now: () => number = Date.now) {}

  async heartbeat(node: NodeInfo, ttlMs: number): Promise<void> {
    this.nodes.set(node.nodeId, { node: { ...node }, expiresAtMs: this.now() + ttlMs });
  }

  async getNode(nodeId: string): Promise<NodeInfo | undefined> {
    const entry = this.nodes.get(nodeId);
    if (!entry || entry.expiresAtMs <= this.now()) return undefined;
    return { ...entry.node };
  }

  async removeNode(nodeId: string): Promise<void> {
    this.nodes.delete(nodeId);
  }

  async listNodes(): Promise<NodeInfo[]> {
    const now = this.now();
    return [...this.nodes.values()].filter((e) => e.expiresAtMs > now).map((e) => ({ ...e.node }));
  }
}

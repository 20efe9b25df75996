// Anycast relay mode: every node holds every allocation. The relayed address is
// shared by all nodes, so whichever node the routing brings a packet to can relay
// it; a node's death loses nothing. Allocations other nodes made are taken on from
// the store (its event feed, and a full listing at start and after an outage) and
// kept current by merging each newer record.

import { type AllocationRecord, MOVED, type StoreEvent } from '../../store/types.js';
import type { TurnContext } from '../context.js';
import type { RelaySocket } from '../ports.js';
import { Allocation } from './allocation.js';
import type { EngineListener } from './table.js';

/** Store unreachable: how long past its expiry an allocation is kept in case it was refreshed elsewhere. */
const EXPIRY_GRACE_WITHOUT_STORE_MS = 60_000;
/**
 * Records a sync takes on at once: their binds overlap instead of running one after
 * the other (docs/scaling.md, part 3), bounded so that a store of 100,000 records does
 * not start 100,000 binds in one go.
 */
export const SYNC_CONCURRENCY = 256;

/** Failed adoptions are logged at most this often (the count says how many). */
export const ADOPT_FAILURE_LOG_INTERVAL_MS = 10_000;

/** What one sync from the store did. */
export interface SyncResult {
  /** Records the store listed. */
  readonly records: number;
  /** Of those, the ones this sync took on (not held here before). */
  readonly adopted: number;
}

export class Replication {
  /**
   * Keys whose replica is being set up: true once the store's feed announced a change of
   * the key meanwhile. adopt() reads the record again only after binding the relayed
   * port, and that read can be older than an event arriving while it is in flight (a
   * CreatePermission or ChannelBind right after the Allocate, or a deletion): such an
   * event would be lost until the key's next change (docs/reliability.md, "Soak"), so the
   * record is read once more when the copy is in the table (catchUp).
   */
  private readonly materializing = new Map<string, boolean>();
  /**
   * One set per sync in progress: the keys the store's feed announced a change or a
   * deletion of since its listing began. The listing can be seconds old by the time a
   * record's turn comes (100,000 records): such a record is read again after binding,
   * as an event's is, so a deletion announced meanwhile leaves no copy behind.
   */
  private readonly syncing = new Set<Set<string>>();

  /** Failed adoptions since the last log line about them, and when that was. */
  private failuresUnlogged = 0;
  private failureLoggedAtMs = -Infinity;

  constructor(private readonly ctx: TurnContext) {}

  /**
   * Counts an adoption that failed (anyturn_allocations_adopt_failures_total) and logs at
   * most once per ADOPT_FAILURE_LOG_INTERVAL_MS, with how many since: a start-up sync on a
   * node that cannot bind the relay addresses (a misconfiguration) fails every record, and
   * 100,000 records were 100,000 lines.
   */
  private failed(fields: object, msg: string): void {
    const { counters, clock, logger } = this.ctx.o;
    counters.replicaFailures++;
    this.failuresUnlogged++;
    const now = clock.now();
    if (now - this.failureLoggedAtMs < ADOPT_FAILURE_LOG_INTERVAL_MS) return;
    logger.warn({ ...fields, failed: this.failuresUnlogged }, msg);
    this.failureLoggedAtMs = now;
    this.failuresUnlogged = 0;
  }

  /** One event of the store's feed: a deletion elsewhere ends our copy, a change is merged or taken on. */
  onStoreEvent(event: StoreEvent): void {
    const { table, writer } = this.ctx;
    if (this.ctx.stopped) return;
    for (const changed of this.syncing) changed.add(event.type === 'deleted' ? event.key : event.record.key);
    if (event.type === 'deleted') {
      // A move (RFC 8016): the record comes back under its new key, with movedFrom (follow()).
      if (event.reason === MOVED) return;
      if (this.materializing.has(event.key)) this.materializing.set(event.key, true);
      const local = table.byStoreKey(event.key);
      // A conflict settled after an outage removed this node's own record: it lost, and keeps serving its client here.
      if (local && !local.allocation.localOnly && !writer.lostConflict(local.allocation, event.reason)) {
        void writer.delete(local.listener, local.allocation, event.reason, false);
      }
      return;
    }
    if (event.type === 'created' && this.follow(event.record)) return;
    const local = table.byStoreKey(event.record.key);
    if (local) writer.merge(local.allocation, event.record);
    else if (!table.pending.has(event.record.key)) void this.adopt(event.record);
  }

  /** A record a move wrote (RFC 8016): the copy held under its old key takes the new 5-tuple. */
  private follow(record: AllocationRecord): boolean {
    const { table, writer } = this.ctx;
    const local = record.movedFrom === undefined ? undefined : table.byStoreKey(record.movedFrom);
    if (!local?.allocation.matches(record)) return false;
    const listener = table.findListener(record.transport, record.serverAddress, record.serverPort);
    if (!listener) return false;
    const allocation = local.allocation;
    void writer.rekey(allocation, listener, record.clientAddress, record.clientPort, record.key);
    // Versions count per key: the record under the new key starts again.
    if (allocation.key === record.key && allocation.version > record.version) allocation.version = 0;
    writer.merge(allocation, record);
    return true;
  }

  /**
   * An allocation whose lifetime ran out here: another node may have refreshed it
   * (an event we missed or haven't seen yet), so ask the store before deleting.
   */
  async expire(listener: EngineListener, allocation: Allocation, now: number): Promise<void> {
    // Nobody else refreshes an allocation that has no record of its own.
    if (allocation.localOnly || allocation.detached) return this.ctx.writer.delete(listener, allocation, 'expired');
    try {
      const current = await this.ctx.o.store.get(allocation.key);
      if (current && current.expiresAtMs > now && allocation.matches(current)) {
        this.ctx.writer.merge(allocation, current);
        return;
      }
    } catch {
      // Store unreachable: keep relaying a while rather than cut a call another node may have refreshed.
      if (now < allocation.expiresAtMs + EXPIRY_GRACE_WITHOUT_STORE_MS) return;
    }
    await this.ctx.writer.delete(listener, allocation, 'expired');
  }

  /**
   * Takes on an allocation made by another node: binds its relayed address (shared by
   * every node in anycast relay mode) and serves it from here. Returns true when the
   * allocation is (now) held locally. `fresh`: the record was just read from the
   * store (no need to read it again).
   */
  async adopt(record: AllocationRecord, fresh = false): Promise<boolean> {
    const outcome = await this.takeOn(record, fresh);
    // Read again, the 5-tuple's record was another allocation's (deleted and made again meanwhile, on
    // other relayed ports): the sockets bound for the first are closed; take the other one on.
    return typeof outcome === 'boolean' ? outcome : await this.adopt(outcome, true);
  }

  private async takeOn(record: AllocationRecord, fresh: boolean): Promise<boolean | AllocationRecord> {
    const { table, o } = this.ctx;
    if (table.byStoreKey(record.key)) return true;
    if (this.materializing.has(record.key)) {
      this.materializing.set(record.key, true);
      return false;
    }
    if (this.ctx.stopped || record.transport !== 'udp') return false;
    const listener = table.findListener(record.transport, record.serverAddress, record.serverPort);
    if (!listener || record.expiresAtMs <= o.clock.now()) return false;
    this.materializing.set(record.key, false);
    let relay: RelaySocket | undefined;
    let additional: RelaySocket | undefined;
    try {
      let allocation: Allocation | undefined;
      const onPacket = (payload: Buffer, peerAddress: string, peerPort: number, length?: number): void => {
        if (allocation) this.ctx.peerData.onPeerPacket(allocation, payload, peerAddress, peerPort, length);
      };
      relay = await this.ctx.relays.bindAt(record.relayedAddress, record.relayedPort, onPacket);
      if (record.additionalRelayedAddress !== undefined && record.additionalRelayedPort !== undefined) {
        additional = await this.ctx.relays.bindAt(record.additionalRelayedAddress, record.additionalRelayedPort, onPacket);
      }
      if (!relay) {
        this.failed({ allocation: record.key, relayed: `${record.relayedAddress}:${record.relayedPort}` }, 'cannot bind a shared relayed address here');
        return false;
      }
      // An event may be old by now: read the record again (a start-up listing was just read).
      const current = fresh ? record : await o.store.get(record.key);
      if (!current || table.byStoreKey(record.key) || this.ctx.stopped) return table.byStoreKey(record.key) !== undefined;
      if (current.relayedAddress !== record.relayedAddress || current.relayedPort !== record.relayedPort || current.createdAtMs !== record.createdAtMs) {
        return current;
      }
      allocation = new Allocation(current, listener.path, { relay, additional });
      this.ctx.writer.merge(allocation, current);
      relay = undefined;
      additional = undefined;
      table.add(listener, allocation);
      if (this.materializing.get(record.key)) void this.catchUp(listener, allocation);
      o.counters.allocationsAdopted++;
      o.logger.debug(
        { event: 'allocation_adopted', allocation: current.key, relayed: `${current.relayedAddress}:${current.relayedPort}`, user: current.username },
        'allocation adopted',
      );
      return true;
    } catch (err) {
      this.failed({ err, allocation: record.key }, 'adopting an allocation failed');
      return false;
    } finally {
      relay?.close();
      additional?.close();
      this.materializing.delete(record.key);
    }
  }

  /**
   * The key changed while its copy was being set up: reads the record once more, now
   * that later events find the copy in the table. Merged (versions guard against an
   * older read); gone, or another allocation's by now (the 5-tuple deleted and made
   * again): the copy goes, and that other allocation is taken on.
   */
  private async catchUp(listener: EngineListener, allocation: Allocation): Promise<void> {
    let current: AllocationRecord | undefined;
    try {
      current = await this.ctx.o.store.get(allocation.key);
    } catch {
      return; // Store unreachable: its return syncs every allocation (syncFromStore).
    }
    if (allocation.deleted || this.ctx.stopped) return;
    if (current && allocation.matches(current)) {
      this.ctx.writer.merge(allocation, current);
      return;
    }
    await this.ctx.writer.delete(listener, allocation, 'deleted', false);
    if (current) await this.adopt(current, true);
  }

  /**
   * Takes on every allocation in the store (at start, after a store outage, after a gap
   * in the event feed): one listing (read in batches by the store), then up to
   * SYNC_CONCURRENCY records taken on at once, each from the record just listed unless
   * the feed announced a change of its key since the listing began.
   */
  async syncFromStore(): Promise<SyncResult> {
    const changed = new Set<string>();
    this.syncing.add(changed);
    try {
      const records = await this.ctx.o.store.listAllocations();
      let adopted = 0;
      let next = 0;
      const takeOn = async (): Promise<void> => {
        while (next < records.length && !this.ctx.stopped) {
          const record = records[next++]!;
          if (await this.syncOne(record, changed)) adopted++;
        }
      };
      await Promise.all(Array.from({ length: Math.min(SYNC_CONCURRENCY, records.length) }, takeOn));
      return { records: records.length, adopted };
    } finally {
      this.syncing.delete(changed);
    }
  }

  /** One listed record: merged into the copy held here, else taken on. True when taken on now. */
  private async syncOne(record: AllocationRecord, changed: ReadonlySet<string>): Promise<boolean> {
    const local = this.ctx.table.byStoreKey(record.key);
    if (local) {
      this.ctx.writer.merge(local.allocation, record);
      return false;
    }
    return await this.adopt(record, !changed.has(record.key));
  }
}

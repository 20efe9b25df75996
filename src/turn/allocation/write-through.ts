// Store write-through: every change to a local allocation is written to the store,
// one write at a time per allocation, with compare-and-set on the record's version.
// A write that lost the race (anycast relay mode: any node may change any
// allocation) folds the winner's record in (Allocation.merge) and writes the union:
// never a lost update. An allocation the store does not hold (made during an outage,
// or lost by a Redis restart) is created, its conflicts settled by store-conflicts.ts.
// Also the one way an allocation ends.

import type { AllocationRecord, AllocationStore, NewAllocationRecord, UpdateOutcome } from '../../store/types.js';
import type { Clock } from '../clock.js';
import type { EngineCounters } from '../counters.js';
import type { PeerPolicy } from '../peer-policy.js';
import type { ChannelOffload, EngineLogger } from '../ports.js';
import { type Allocation, NOTHING_PERSISTING } from './allocation.js';
import { OffloadSync } from './offload.js';
import { FIVE_TUPLE_CONFLICT, RELAY_PORT_CONFLICT, type SettleOutcome, StoreConflicts } from './store-conflicts.js';
import type { AllocationTable, EngineListener } from './table.js';

/** Conflicting writes retried per persist before the allocation waits for a later tick. */
const MAX_CONFLICT_RETRIES = 5;

/** How a move (RFC 8016) ended: `lost` another node moved it first; `exists` the new 5-tuple is another allocation's. */
export type MoveResult = 'moved' | 'unavailable' | 'lost' | 'exists';

export interface WriteThroughOptions {
  readonly nodeId: string;
  readonly store: AllocationStore;
  readonly userQuota: number;
  readonly peerPolicy: PeerPolicy;
  readonly counters: EngineCounters;
  readonly logger: EngineLogger;
  readonly clock: Clock;
  /** The kernel data plane, when one is loaded: told every allocation's channels after each change. */
  readonly offload?: ChannelOffload;
}

export class WriteThrough {
  private readonly conflicts: StoreConflicts;
  /** Every change below passes through here, so the kernel data plane hears of each one. */
  readonly offload: OffloadSync;

  constructor(
    private readonly o: WriteThroughOptions,
    private readonly table: AllocationTable,
  ) {
    this.conflicts = new StoreConflicts(o);
    this.offload = new OffloadSync(o.offload, o.peerPolicy);
  }

  /** The peer policy for permissions and channels that come from the store (Allocation.merge). */
  private readonly storePeerFilter = (address: string, port: number | undefined): boolean =>
    (port === undefined ? this.o.peerPolicy.check(address) : this.o.peerPolicy.checkPeer(address, port)).allowed;

  private readonly onStorePeerRefused = (): void => {
    this.o.counters.peerPolicyRefusals++;
    this.o.counters.storePeerRefusals++;
  };

  /** Folds a record from the store into a live allocation, through the peer policy. */
  merge(allocation: Allocation, record: AllocationRecord): boolean {
    const merged = allocation.merge(record, this.storePeerFilter, this.onStorePeerRefused);
    if (merged) this.offload.sync(allocation, this.o.clock.now());
    return merged;
  }

  /** Writes the allocation through to the store, one write at a time per allocation (and lists its channels for the kernel at once). */
  persist(allocation: Allocation): Promise<void> {
    return this.persistNow(allocation) ?? NOTHING_PERSISTING;
  }

  /**
   * persist(), undefined when the write was done within the call and nothing else is in
   * flight (the memory store): a request's handler then answers at once, without an async
   * frame (docs/scaling.md, part 1).
   */
  persistNow(allocation: Allocation): Promise<void> | undefined {
    const installed = this.offload.sync(allocation, this.o.clock.now());
    // With no write in flight the write starts now: waiting a turn for a promise that has
    // settled already cost a promise, a closure and the adoption of write's promise on
    // every CreatePermission, ChannelBind and Refresh (docs/scaling.md, part 1).
    // A write done within the call (the memory store) leaves nothing in flight: no promise,
    // frame or closure for it.
    const persisting = allocation.persisting === NOTHING_PERSISTING ? this.write(allocation) : allocation.persisting.then(() => this.write(allocation));
    if (persisting === undefined) return installed ? installed.then(() => undefined) : undefined;
    this.inLine(allocation, persisting);
    return installed ? Promise.all([installed, persisting]).then(() => undefined) : persisting;
  }

  /**
   * `done` is the allocation's last write now; once it settles and nothing came after it,
   * the allocation holds the shared settled promise again, not a promise of its own for
   * the rest of its life (docs/scaling.md, "At scale").
   */
  private inLine(allocation: Allocation, done: Promise<void>): void {
    allocation.persisting = done;
    const settled = (): void => {
      if (allocation.persisting === done) allocation.persisting = NOTHING_PERSISTING;
    };
    done.then(settled, settled);
  }

  /**
   * One write of the allocation; undefined when it was done within the call (the usual write
   * to a store that answers at once, the memory store: docs/scaling.md, part 1), else the
   * promise of the rest (writeAfter).
   */
  private write(allocation: Allocation): Promise<void> | undefined {
    if (allocation.deleted || allocation.detached) return undefined;
    // Unreachable: nothing to try (and nothing to log per allocation each tick); the
    // store health watcher marks every allocation for a write when it returns.
    if (!this.o.store.isAvailable()) {
      allocation.dirty = true;
      return undefined;
    }
    if (allocation.localOnly || allocation.throughOutage) return this.writeAfter(allocation, undefined);
    // The usual write: update() and its async frame only for what follows a refusal or
    // another record (two writes per allocation's life, docs/scaling.md part 1).
    let first: UpdateOutcome | Promise<UpdateOutcome>;
    try {
      first = this.o.store.update(allocation.toRecord(this.o.nodeId));
    } catch (err) {
      this.failed(allocation, err);
      return undefined;
    }
    if (first instanceof Promise || !first.ok || !holdsOwnRecord(allocation, first.record)) return this.writeAfter(allocation, first);
    this.written(allocation, first.record, false);
    return undefined;
  }

  /** write() from where it got to: `first`, the usual write's answer or its promise; undefined: a write after an outage. */
  private async writeAfter(allocation: Allocation, first: UpdateOutcome | Promise<UpdateOutcome> | undefined): Promise<void> {
    try {
      const wasLocalOnly = allocation.localOnly;
      let outcome: SettleOutcome | 'refused';
      if (first === undefined && wasLocalOnly) outcome = await this.conflicts.create(allocation);
      else if (first === undefined) outcome = await this.update(allocation);
      else {
        const answered = await first;
        outcome = answered.ok && holdsOwnRecord(allocation, answered.record) ? { written: answered.record } : await this.update(allocation, answered);
      }
      if (outcome === 'detached') return;
      if (outcome === 'retry' || outcome === 'refused') {
        allocation.dirty = true;
        if (outcome === 'refused') this.o.logger.warn({ allocation: allocation.key }, 'store update refused');
        return;
      }
      this.written(allocation, outcome.written, wasLocalOnly);
    } catch (err) {
      this.failed(allocation, err);
    }
  }

  /** The store holds the allocation's record at `record`'s version. */
  private written(allocation: Allocation, record: AllocationRecord, wasLocalOnly: boolean): void {
    allocation.version = record.version;
    allocation.dirty = false;
    allocation.localOnly = false;
    if (wasLocalOnly) {
      this.o.counters.allocationsWrittenBack++;
      this.o.logger.debug({ event: 'allocation_written_back', allocation: allocation.key }, 'local-only allocation written to the store');
    }
  }

  /** A write that failed: RFC-level state stays live locally; the store catches up on a later tick. */
  private failed(allocation: Allocation, err: unknown): void {
    allocation.dirty = true;
    this.o.counters.storeErrors++;
    this.o.logger.warn({ err, allocation: allocation.key }, 'store write failed; will retry');
  }

  /**
   * Compare-and-set of a record the store held; a conflict merges the winner's record in and
   * writes the union. `first`: the outcome of the first write, made already (write()).
   */
  private async update(allocation: Allocation, first?: UpdateOutcome): Promise<SettleOutcome | 'refused'> {
    const { store, nodeId } = this.o;
    if (first === undefined && allocation.throughOutage) {
      // The store's compare-and-set keeps a record's identity but would take our fields over
      // another allocation's record on this 5-tuple (a conflict after the outage that another
      // node won): look first. (A settlement between this read and the write is caught below.)
      const current = await store.get(allocation.key);
      if (!current) return this.conflicts.create(allocation);
      if (!allocation.matches(current)) return this.conflicts.otherOnFiveTuple(allocation, current);
    }
    let outcome = first ?? (await store.update(allocation.toRecord(nodeId)));
    // Another writer got there first: fold its record into ours and write the union.
    for (let attempt = 0; attempt < MAX_CONFLICT_RETRIES && !outcome.ok && outcome.reason === 'conflict' && outcome.current; attempt++) {
      // Not ours: another allocation on this 5-tuple, made during an outage.
      if (!allocation.matches(outcome.current)) return this.conflicts.otherOnFiveTuple(allocation, outcome.current);
      this.merge(allocation, outcome.current);
      allocation.version = outcome.current.version;
      outcome = await store.update(allocation.toRecord(nodeId));
    }
    // The store lost the record (a Redis restart without persistence): write it again. A
    // live allocation is never refused for quota here.
    if (!outcome.ok && outcome.reason === 'missing') return this.conflicts.create(allocation);
    if (!outcome.ok) return 'refused';
    // The store keeps a record's relayed address (its identity): another one means the
    // record on this 5-tuple became another allocation's, the winner of a conflict after an
    // outage that this node had not heard of yet. This one lost.
    if (!holdsOwnRecord(allocation, outcome.record)) {
      this.conflicts.lost(allocation, 'five_tuple', outcome.record.ownerNodeId);
      return 'detached';
    }
    return { written: outcome.record };
  }

  /**
   * RFC 8016: moves the allocation to a new client 5-tuple, in the store first (its record
   * under the new key, the old one deleted: store/types.ts move()), then here (the table's
   * indexes, the kernel's entries under the old key emptied and listed under the new one).
   * In line with the allocation's other writes. An allocation without a record of its own
   * (local-only, detached) moves here only; one with a record does not move while the
   * store is unreachable.
   */
  move(to: EngineListener, allocation: Allocation, address: string, port: number, key: string): Promise<MoveResult> {
    const done = allocation.persisting.then(() => this.moveNow(to, allocation, address, port, key));
    this.inLine(
      allocation,
      done.then(
        () => undefined,
        () => undefined,
      ),
    );
    return done;
  }

  private async moveNow(to: EngineListener, allocation: Allocation, address: string, port: number, key: string): Promise<MoveResult> {
    if (allocation.deleted) return 'lost';
    const fromKey = allocation.key;
    let missing = false;
    if (!allocation.localOnly && !allocation.detached) {
      if (!this.o.store.isAvailable()) return 'unavailable';
      const record: NewAllocationRecord = {
        ...allocation.toRecord(this.o.nodeId),
        key,
        transport: to.path.transport,
        clientAddress: address,
        clientPort: port,
        serverAddress: to.path.localAddress,
        serverPort: to.path.localPort,
      };
      const outcome = await this.moveRecord(allocation, fromKey, record);
      if (outcome !== 'moved' && outcome !== 'missing') return outcome;
      missing = outcome === 'missing';
    }
    await this.rekey(allocation, to, address, port, key);
    // The store lost the record (a Redis restart): write it under the new key.
    if (missing) await this.write(allocation);
    return 'moved';
  }

  /** The store's move, with the conflict rule of persist: another writer's changes are merged in, another node's move wins. */
  private async moveRecord(allocation: Allocation, fromKey: string, next: NewAllocationRecord): Promise<MoveResult | 'missing'> {
    let record = next;
    for (let attempt = 0; attempt <= MAX_CONFLICT_RETRIES; attempt++) {
      const outcome = await this.o.store.move(fromKey, allocation.version, { ...record, mobilityGeneration: allocation.mobilityGeneration });
      if (outcome.ok) {
        allocation.version = outcome.record.version;
        allocation.dirty = false;
        return 'moved';
      }
      if (outcome.reason !== 'conflict') return outcome.reason;
      const current = outcome.current;
      if (!current) continue;
      // Another allocation's record, or a move made elsewhere with this generation or a later one.
      if (!allocation.matches(current) || (current.mobilityGeneration ?? 0) >= allocation.mobilityGeneration) return 'lost';
      this.merge(allocation, current);
      allocation.version = current.version;
      record = { ...allocation.toRecord(this.o.nodeId), ...pickTuple(next) };
    }
    return 'lost';
  }

  /** The allocation takes its new 5-tuple here (a move made here, or one heard of from the store); resolves once the kernel knows. */
  async rekey(allocation: Allocation, to: EngineListener, address: string, port: number, key: string): Promise<void> {
    const fromKey = allocation.key;
    if (!this.table.move(allocation, to, address, port, key)) return;
    const now = this.o.clock.now();
    this.offload.clear(fromKey, now);
    await this.offload.sync(allocation, now);
  }

  /**
   * A deletion elsewhere of this node's allocation to settle a conflict after an outage
   * (anycast relay mode hears it as an event): this one lost; it keeps serving here.
   */
  lostConflict(allocation: Allocation, reason: string): boolean {
    if (!allocation.madeHere || (reason !== RELAY_PORT_CONFLICT && reason !== FIVE_TUPLE_CONFLICT)) return false;
    this.conflicts.lost(allocation, reason === RELAY_PORT_CONFLICT ? 'relay_port' : 'five_tuple', undefined);
    return true;
  }

  /** Deletes a local allocation; with writeStore false only this node's copy goes (a replica). */
  async delete(listener: EngineListener, allocation: Allocation, reason: string, writeStore = true): Promise<void> {
    if (allocation.deleted) return;
    allocation.deleted = true;
    this.offload.sync(allocation, this.o.clock.now());
    this.table.remove(listener, allocation);
    this.o.counters.allocationsDeleted++;
    allocation.closeRelays();
    // The kernel's last counts for it are read after its entries went (sync above).
    const reading = this.offload.takeTraffic(allocation.key);
    const kernel = reading === undefined ? undefined : await reading;
    this.o.logger.info(
      {
        event: 'allocation_deleted',
        client: `${allocation.clientAddress}:${allocation.clientPort}`,
        relayed: `${allocation.relay.address}:${allocation.relay.port}`,
        user: allocation.username,
        reason,
        ...(kernel ? { kernelPackets: kernel.packets, kernelBytes: kernel.bytes } : {}),
      },
      'allocation deleted',
    );
    // A local-only allocation has no record: the one on its 5-tuple, if any, is another's.
    if (!writeStore || allocation.localOnly || allocation.detached) return;
    try {
      await allocation.persisting;
      if (allocation.localOnly || allocation.detached) return;
      if (!allocation.throughOutage) {
        await this.o.store.delete(allocation.key, reason);
        return;
      }
      // After an outage the record on this 5-tuple may be another allocation's (a conflict
      // this node has not heard of yet): delete it only if it is this one.
      for (let attempt = 0; attempt < MAX_CONFLICT_RETRIES; attempt++) {
        const current = await this.o.store.get(allocation.key);
        if (!current || !allocation.matches(current) || (await this.o.store.delete(allocation.key, reason, current.version))) return;
      }
    } catch (err) {
      this.o.counters.storeErrors++;
      this.o.logger.warn({ err, allocation: allocation.key }, 'store delete failed');
    }
  }
}

/** The written record has the allocation's relayed address: the store keeps a record's identity, so it is still this allocation's. */
function holdsOwnRecord(allocation: Allocation, record: AllocationRecord): boolean {
  return record.relayedAddress === allocation.relay.address && record.relayedPort === allocation.relay.port;
}

/** The 5-tuple fields of a record. */
function pickTuple(r: NewAllocationRecord): Pick<NewAllocationRecord, 'key' | 'transport' | 'clientAddress' | 'clientPort' | 'serverAddress' | 'serverPort'> {
  return {
    key: r.key,
    transport: r.transport,
    clientAddress: r.clientAddress,
    clientPort: r.clientPort,
    serverAddress: r.serverAddress,
    serverPort: r.serverPort,
  };
}

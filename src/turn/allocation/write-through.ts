// Store write-through: every change to a local allocation is written to the store,
// one write at a time per allocation, with compare-and-set on the record's version.
// A write that lost the race (anycast relay mode: any node may change any
// allocation) folds the winner's record in (Allocation.merge) and writes the union:
// never a lost update. Also the one way an allocation ends.

import type { AllocationRecord, AllocationStore } from '../../store/types.js';
import type { Clock } from '../clock.js';
import type { EngineCounters } from '../counters.js';
import type { PeerPolicy } from '../peer-policy.js';
import type { ChannelOffload, EngineLogger } from '../ports.js';
import type { Allocation } from './allocation.js';
import { OffloadSync } from './offload.js';
import type { AllocationTable, EngineListener } from './table.js';

/** Conflicting writes retried per persist before the allocation waits for a later tick. */
const MAX_CONFLICT_RETRIES = 5;

export interface WriteThroughOptions {
  readonly nodeId: string;
  readonly store: AllocationStore;
  readonly peerPolicy: PeerPolicy;
  readonly counters: EngineCounters;
  readonly logger: EngineLogger;
  readonly clock: Clock;
  /** The kernel data plane, when one is loaded: told every allocation's channels after each change. */
  readonly offload?: ChannelOffload;
}

export class WriteThrough {
  /** Every change below passes through here, so the kernel data plane hears of each one. */
  readonly offload: OffloadSync;

  constructor(
    private readonly o: WriteThroughOptions,
    private readonly table: AllocationTable,
  ) {
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
    this.offload.sync(allocation, this.o.clock.now());
    allocation.persisting = allocation.persisting.then(() => this.write(allocation));
    return allocation.persisting;
  }

  private async write(allocation: Allocation): Promise<void> {
    if (allocation.deleted) return;
    const { store, nodeId } = this.o;
    try {
      let outcome = await store.update(allocation.toRecord(nodeId));
      // Another writer got there first: fold its record into ours and write the union.
      for (let attempt = 0; attempt < MAX_CONFLICT_RETRIES && !outcome.ok && outcome.reason === 'conflict' && outcome.current; attempt++) {
        this.merge(allocation, outcome.current);
        allocation.version = outcome.current.version;
        outcome = await store.update(allocation.toRecord(nodeId));
      }
      if (!outcome.ok && outcome.reason === 'missing') {
        // The store lost the record (a Redis restart without persistence): write it
        // again. A live allocation is never refused for quota here.
        const created = await store.create(allocation.toRecord(nodeId), { userQuota: 0 });
        if (created.ok) outcome = created;
      }
      if (outcome.ok) {
        allocation.version = outcome.record.version;
        allocation.dirty = false;
      } else {
        allocation.dirty = true;
        this.o.logger.warn({ allocation: allocation.key, reason: outcome.reason }, 'store update refused');
      }
    } catch (err) {
      // RFC-level state stays live locally; the store catches up on a later tick.
      allocation.dirty = true;
      this.o.counters.storeErrors++;
      this.o.logger.warn({ err, allocation: allocation.key }, 'store write failed; will retry');
    }
  }

  /** Deletes a local allocation; with writeStore false only this node's copy goes (a replica). */
  async delete(listener: EngineListener, allocation: Allocation, reason: string, writeStore = true): Promise<void> {
    if (allocation.deleted) return;
    allocation.deleted = true;
    this.offload.sync(allocation, this.o.clock.now());
    this.table.remove(listener, allocation);
    this.o.counters.allocationsDeleted++;
    allocation.closeRelays();
    const kernel = this.offload.trafficOf(allocation.key);
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
    if (!writeStore) return;
    try {
      await allocation.persisting;
      await this.o.store.delete(allocation.key, reason);
    } catch (err) {
      this.o.counters.storeErrors++;
      this.o.logger.warn({ err, allocation: allocation.key }, 'store delete failed');
    }
  }
}

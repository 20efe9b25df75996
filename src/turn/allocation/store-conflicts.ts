// Writing an allocation the store does not hold: one made while the store was
// unreachable (fail open, docs/architecture.md §5), or one whose record the store lost
// (a Redis restart without persistence). During an outage nodes decide alone, so two
// of them may claim the same thing, and the store, once back, sees both:
// - the same relayed port (anycast relay mode: every node binds the shared relay
//   address): the allocation made first keeps it, then the lower node id;
// - the same 5-tuple (a client rerouted during the outage could not be resumed and
//   allocated again elsewhere): the newer allocation keeps it, then the lower node id,
//   because a client allocates again only when it lost the older one.
// Every node computes the same winner from the two records alone. The winner takes the
// store's record (the loser's is deleted, with its version as a guard); the loser
// keeps serving its own client from this node's state (it is `detached`: never written,
// merged into, or deleted from the store again) and takes over nothing of the winner's.

import type { AllocationRecord, AllocationStore } from '../../store/types.js';
import type { EngineCounters, StoreConflictKind } from '../counters.js';
import type { EngineLogger } from '../ports.js';
import type { Allocation } from './allocation.js';

/** How often one write may displace a loser and try again before it waits for a later tick. */
const MAX_DISPLACEMENTS = 4;

/** Why a relayed port's loser record is deleted (Replication keeps a detached copy where it was made). */
export const RELAY_PORT_CONFLICT = 'relay-port-conflict';
export const FIVE_TUPLE_CONFLICT = 'five-tuple-conflict';

/** The fields the rule reads: the same on every node. */
type Claimant = Pick<AllocationRecord, 'createdAtMs' | 'ownerNodeId' | 'key'>;

/**
 * True when `a` keeps what it and `b` both claim (docs/architecture.md §5). Relayed
 * port: the earlier allocation; 5-tuple: the later one. Ties: the lower node id, then
 * the lower key; so exactly one of keeps(a, b) and keeps(b, a) holds.
 */
export function keepsClaim(kind: StoreConflictKind, a: Claimant, b: Claimant): boolean {
  if (a.createdAtMs !== b.createdAtMs) return kind === 'relay_port' ? a.createdAtMs < b.createdAtMs : a.createdAtMs > b.createdAtMs;
  if (a.ownerNodeId !== b.ownerNodeId) return a.ownerNodeId < b.ownerNodeId;
  return a.key < b.key;
}

export type SettleOutcome = { readonly written: AllocationRecord } | 'detached' | 'retry';

export interface ConflictOptions {
  readonly nodeId: string;
  readonly store: AllocationStore;
  readonly userQuota: number;
  readonly counters: EngineCounters;
  readonly logger: EngineLogger;
}

export class StoreConflicts {
  constructor(private readonly o: ConflictOptions) {}

  /**
   * Creates the allocation's record. Never refused for quota (the allocation is live: an
   * overrun is logged); a clash on its 5-tuple or relayed port is settled by keepsClaim.
   */
  async create(allocation: Allocation): Promise<SettleOutcome> {
    const { store, nodeId } = this.o;
    for (let attempt = 0; attempt <= MAX_DISPLACEMENTS; attempt++) {
      const mine = allocation.toRecord(nodeId);
      const outcome = await store.create(mine, { userQuota: 0 });
      if (outcome.ok) {
        await this.checkQuota(allocation, outcome.record);
        return { written: outcome.record };
      }
      if (outcome.reason === 'user-quota') return 'retry';
      const kind: StoreConflictKind = outcome.reason === 'exists' ? 'five_tuple' : 'relay_port';
      const holder =
        kind === 'five_tuple' ? await store.get(mine.key) : await this.portHolder(mine, outcome.reason === 'port-taken' && outcome.additional === true);
      // Gone meanwhile: try again. A port held by a reservation (EVEN-PORT) waits for a later tick.
      if (holder === undefined) {
        if (kind === 'five_tuple') continue;
        return 'retry';
      }
      if (kind === 'five_tuple' && allocation.matches(holder)) return { written: holder };
      if (!(await this.settle(kind, allocation, mine, holder))) return 'detached';
    }
    return 'retry';
  }

  /**
   * A stored record on this allocation's 5-tuple that is another allocation (update's
   * conflict): settled like a create that found it.
   */
  async otherOnFiveTuple(allocation: Allocation, holder: AllocationRecord): Promise<SettleOutcome> {
    if (!(await this.settle('five_tuple', allocation, allocation.toRecord(this.o.nodeId), holder))) return 'detached';
    return this.create(allocation);
  }

  /** Applies the rule: true when ours won (the holder's record is deleted), false when ours is detached. */
  private async settle(kind: StoreConflictKind, allocation: Allocation, mine: AllocationRecord, holder: AllocationRecord): Promise<boolean> {
    const kept = keepsClaim(kind, mine, holder);
    this.o.counters.storeConflicts[kind][kept ? 'kept' : 'lost']++;
    const winner = kept ? mine : holder;
    const loser = kept ? holder : mine;
    this.o.logger.warn(
      {
        event: 'store_conflict',
        kind,
        relayed: `${mine.relayedAddress}:${mine.relayedPort}`,
        client: `${mine.clientAddress}:${mine.clientPort}`,
        winner: { node: winner.ownerNodeId, allocation: winner.key, createdAtMs: winner.createdAtMs },
        loser: { node: loser.ownerNodeId, allocation: loser.key, createdAtMs: loser.createdAtMs },
        keptHere: kept,
      },
      kept
        ? 'store conflict after an outage: this node keeps the claim, the other record is removed'
        : 'store conflict after an outage: the other record keeps the claim; this allocation is served here only (local-only) until it ends',
    );
    if (!kept) {
      this.detach(allocation);
      return false;
    }
    await this.o.store.delete(holder.key, kind === 'relay_port' ? RELAY_PORT_CONFLICT : FIVE_TUPLE_CONFLICT, holder.version);
    return true;
  }

  /** Another node settled a conflict against this allocation (its record was removed or taken over): counted and logged here too. */
  lost(allocation: Allocation, kind: StoreConflictKind, winnerNode: string | undefined): void {
    this.o.counters.storeConflicts[kind].lost++;
    this.o.logger.warn(
      {
        event: 'store_conflict',
        kind,
        relayed: `${allocation.relay.address}:${allocation.relay.port}`,
        allocation: allocation.key,
        winner: { node: winnerNode },
        keptHere: false,
      },
      'store conflict after an outage settled by another node: this allocation is served here only (local-only) until it ends',
    );
    this.detach(allocation);
  }

  /** The allocation lost its claim: served here only, the store is never asked about it again. */
  detach(allocation: Allocation): void {
    allocation.detached = true;
    allocation.localOnly = true;
    allocation.dirty = false;
  }

  /** The record holding the relayed port `mine` wants (rare: only after an outage; a full listing). */
  private async portHolder(mine: AllocationRecord, additional: boolean): Promise<AllocationRecord | undefined> {
    const address = additional ? mine.additionalRelayedAddress : mine.relayedAddress;
    const port = additional ? mine.additionalRelayedPort : mine.relayedPort;
    const holds = (r: AllocationRecord): boolean =>
      r.key !== mine.key &&
      ((r.relayedAddress === address && r.relayedPort === port) || (r.additionalRelayedAddress === address && r.additionalRelayedPort === port));
    return (await this.o.store.listAllocations()).find(holds);
  }

  /** The user's cluster-wide count once the record is in: over --user-quota is tolerated (the allocation is live) and logged. */
  private async checkQuota(allocation: Allocation, record: AllocationRecord): Promise<void> {
    if (this.o.userQuota <= 0) return;
    const count = await this.o.store.countUserAllocations(record.username);
    if (count <= this.o.userQuota) return;
    this.o.counters.userQuotaOverruns++;
    this.o.logger.warn(
      { event: 'user_quota_overrun', user: record.username, allocations: count, quota: this.o.userQuota, allocation: allocation.key },
      'user over --user-quota after a store outage (allocations made meanwhile were counted per node): tolerated',
    );
  }
}

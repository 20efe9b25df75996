// The allocation store a node runs with, and the watcher that acts when it goes away and
// comes back.

import type { ServerConfig } from '../config/index.js';
import type { Logger } from '../ops/log.js';
import { MemoryAllocationStore, MemoryNodeRegistry } from '../store/memory.js';
import { openSharedStore } from '../store/shared.js';
import type { AllocationStore, NodeRegistry } from '../store/types.js';
import type { Clock } from '../turn/clock.js';

const STORE_READY_WAIT_MS = 3000;

export interface NodeStore {
  readonly store: AllocationStore;
  readonly registry: NodeRegistry;
  /** Opened here, so closed here at stop (a store handed in belongs to its giver). */
  readonly owned: boolean;
}

export interface StoreChoice {
  /** A store to use instead of the one the config names (tests share one between nodes). */
  readonly store?: AllocationStore;
  readonly registry?: NodeRegistry;
}

/**
 * The given store; else in a cluster the shared one (Redis), waited for a little; else one
 * in memory. `onEventsResubscribed`: the store's event feed came back after a gap, whose
 * events are lost.
 */
export async function openNodeStore(
  config: ServerConfig,
  given: StoreChoice,
  clock: Clock,
  logger: Logger,
  onEventsResubscribed: () => void,
): Promise<NodeStore> {
  if (given.store) return { store: given.store, registry: given.registry ?? new MemoryNodeRegistry(() => clock.now()), owned: false };
  if (!config.cluster)
    return { store: new MemoryAllocationStore({ now: () => clock.now() }), registry: new MemoryNodeRegistry(() => clock.now()), owned: true };
  const shared = openSharedStore(config.cluster.redis, { logger, onEventsResubscribed, region: config.cluster.region });
  // Start either way: a node whose store is down runs degraded (new Allocates are local-only, docs/architecture.md §5).
  if (!(await shared.waitUntilReady(STORE_READY_WAIT_MS))) logger.warn({ store: shared.store.kind }, 'allocation store not reachable yet; starting degraded');
  return { store: shared.store, registry: shared.registry, owned: true };
}

/**
 * Looks at the store's availability once a tick and logs each change: one line on
 * entering degraded mode, one on leaving it (docs/architecture.md §5); `onBack` runs when
 * the store returns.
 */
export class StoreHealthWatcher {
  private wasUp: boolean;
  private downSinceMs: number | undefined;

  constructor(
    private readonly store: AllocationStore,
    private readonly clock: Clock,
    private readonly logger: Logger,
    private readonly onBack: () => void,
  ) {
    this.wasUp = store.isAvailable();
    if (!this.wasUp) this.downSinceMs = clock.now();
  }

  check(): void {
    const up = this.store.isAvailable();
    if (up === this.wasUp) return;
    this.wasUp = up;
    if (!up) {
      this.downSinceMs = this.clock.now();
      this.logger.warn(
        { event: 'store_degraded', store: this.store.kind, degraded: true },
        'allocation store unreachable: degraded mode. Live allocations keep relaying; new Allocates are local-only (a reroute cannot resume them) until the store returns',
      );
      return;
    }
    const outageMs = this.downSinceMs === undefined ? undefined : this.clock.now() - this.downSinceMs;
    this.downSinceMs = undefined;
    this.logger.warn(
      { event: 'store_degraded', store: this.store.kind, degraded: false, outageMs },
      'allocation store is back: leaving degraded mode, writing every live allocation to it',
    );
    this.onBack();
  }
}

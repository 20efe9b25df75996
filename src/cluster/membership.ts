// Cluster membership: this node's heartbeat in the registry. A node whose
// heartbeat has expired is dead; the router then cleans up its allocations.
// Every few beats it also lists the live nodes and hands them to onNodes: the
// peer policy refuses the other nodes' relay and mesh addresses at their
// service ports as it does this node's (turn/peer-policy.ts).

import type { NodeInfo, NodeRegistry } from '../store/types.js';
import type { EngineLogger } from '../turn/ports.js';
import type { ClusterCounters } from './counters.js';

export const HEARTBEAT_INTERVAL_MS = 1_000;
/** A node missing this long is dead: a few missed beats, so one slow write doesn't kill it. */
export const HEARTBEAT_TTL_MS = 5_000;
/** The other nodes are listed on the first beat and then every this many beats. */
export const LIST_NODES_EVERY_BEATS = 5;

export class Membership {
  private timer: NodeJS.Timeout | undefined;
  private failing = false;
  private beats = 0;

  constructor(
    private readonly self: NodeInfo,
    private readonly registry: NodeRegistry,
    private readonly logger: EngineLogger,
    private readonly counters: ClusterCounters,
    /** Called with the live nodes (this one included) after each listing. */
    private readonly onNodes?: (nodes: readonly NodeInfo[]) => void,
  ) {}

  async start(): Promise<void> {
    await this.beat();
    this.timer = setInterval(() => void this.beat(), HEARTBEAT_INTERVAL_MS);
    this.timer.unref();
  }

  private async beat(): Promise<void> {
    try {
      await this.registry.heartbeat(this.self, HEARTBEAT_TTL_MS);
      if (this.failing) this.logger.info({ node: this.self.nodeId }, 'heartbeat restored');
      this.failing = false;
      if (this.onNodes && this.beats++ % LIST_NODES_EVERY_BEATS === 0) {
        // A failed listing is tried again on the next beat; what was learned before stays.
        await this.registry.listNodes().then(this.onNodes, () => {
          this.beats = 0;
        });
      }
    } catch (err) {
      this.counters.heartbeatFailures++;
      if (!this.failing) this.logger.warn({ err, node: this.self.nodeId }, 'heartbeat failed; retrying every second');
      this.failing = true;
    }
  }

  async stop(): Promise<void> {
    if (this.timer) clearInterval(this.timer);
    await this.registry.removeNode(this.self.nodeId).catch(() => undefined);
  }
}

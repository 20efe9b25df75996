// Cluster membership: this node's heartbeat in the registry. A node whose
// heartbeat has expired is dead; the router then cleans up its allocations.

import type { NodeInfo, NodeRegistry } from '../store/types.js';
import type { EngineLogger } from '../turn/engine.js';
import type { ClusterCounters } from './counters.js';

export const HEARTBEAT_INTERVAL_MS = 1_000;
/** A node missing this long is dead: a few missed beats, so one slow write doesn't kill it. */
export const HEARTBEAT_TTL_MS = 5_000;

export class Membership {
  private timer: NodeJS.Timeout | undefined;
  private failing = false;

  constructor(
    private readonly self: NodeInfo,
    private readonly registry: NodeRegistry,
    private readonly logger: EngineLogger,
    private readonly counters: ClusterCounters,
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

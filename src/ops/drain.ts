// Drain (docs/architecture.md, the lifecycle): before maintenance, a node stops taking new
// allocations (Allocate gets 403, as coturn answers on SIGUSR1) while the live
// ones keep relaying until they end; /readyz says 503 "draining" so the BGP
// speaker next to the node withdraws the anycast route.

import type { EngineLogger } from '../turn/ports.js';

export class DrainSwitch {
  private on = false;
  private sinceMs: number | undefined;

  constructor(
    private readonly logger: Pick<EngineLogger, 'info' | 'warn'>,
    private readonly liveAllocations: () => number,
    private readonly now: () => number = Date.now,
  ) {}

  get draining(): boolean {
    return this.on;
  }

  /** When draining began (ms since the epoch), else undefined. */
  get drainingSinceMs(): number | undefined {
    return this.sinceMs;
  }

  /** Idempotent; `source` (SIGUSR1, POST /drain) goes to the log. Returns whether it changed anything. */
  drain(source: string): boolean {
    if (this.on) return false;
    this.on = true;
    this.sinceMs = this.now();
    this.logger.warn({ event: 'drain', source, allocations: this.liveAllocations() }, 'draining: new Allocates get 403, live allocations keep relaying');
    return true;
  }

  undrain(source: string): boolean {
    if (!this.on) return false;
    this.on = false;
    this.sinceMs = undefined;
    this.logger.warn({ event: 'undrain', source, allocations: this.liveAllocations() }, 'drain cancelled: taking new allocations again');
    return true;
  }
}

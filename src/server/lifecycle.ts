// The life of one node, whichever process model runs it (src/server.ts in one process,
// src/workers/primary.ts over --workers): drain and undrain (SIGUSR1, POST /drain), the
// wait for the last allocation to go (--drain-exit), the ops endpoint (/metrics,
// /healthz, /readyz, the admin POSTs), and a stop that runs once.

import type { Registry } from 'prom-client';
import type { ServerConfig } from '../config/index.js';
import { DrainSwitch } from '../ops/drain.js';
import { OpsHttpServer } from '../ops/http.js';
import type { Logger } from '../ops/log.js';

/** How often a --drain-exit waiter looks whether the last allocation is gone. */
const DRAINED_POLL_MS = 200;

/** What the command line (src/cli.ts) drives. */
export interface RunningNode {
  /** Starts draining: new Allocates get 403, live allocations go on; `source` goes to the log. Idempotent. */
  drain(source: string): void;
  undrain(source: string): void;
  /** Resolves once the node is draining and no allocation is left (or it is stopping). */
  drained(): Promise<void>;
  stop(): Promise<void>;
}

/** What the lifecycle asks of the node it runs. */
export interface NodeState {
  /** Live allocations (over every worker). */
  allocations(): number;
  /** Why the node should not get new clients, drain aside (the lifecycle says that first); undefined when it should. */
  notReadyReason(): string | undefined;
  /** False while a drain has not yet reached every part that serves clients (a worker): drained() waits for it. */
  drainReached?(): boolean;
  /** A drain or an undrain was asked for, whether or not it changed anything: pass it on. */
  onDrain?(draining: boolean): void;
}

/** Renders /metrics: a prom-client Registry, or the primary's sum over its workers. */
export type MetricsSource = Pick<Registry, 'metrics' | 'contentType'>;

export class NodeLifecycle {
  /** Also read by the metrics (anyturn_draining). */
  readonly drainSwitch: DrainSwitch;
  private state: NodeState | undefined;
  private ops: OpsHttpServer | undefined;
  private stopping: Promise<void> | undefined;
  private drainedWait: Promise<void> | undefined;

  constructor(private readonly logger: Logger) {
    this.drainSwitch = new DrainSwitch(logger, () => this.state?.allocations() ?? 0);
  }

  /** What is being run; set once it exists, before drain, readiness or the ops endpoint are asked anything. */
  watch(state: NodeState): void {
    this.state = state;
  }

  get draining(): boolean {
    return this.drainSwitch.draining;
  }

  get opsPort(): number {
    return this.ops?.port ?? 0;
  }

  notReadyReason(): string | undefined {
    if (this.drainSwitch.draining) return 'draining';
    return this.state?.notReadyReason();
  }

  drain(source: string): void {
    this.drainSwitch.drain(source);
    this.changed(true);
  }

  undrain(source: string): void {
    this.drainSwitch.undrain(source);
    this.changed(false);
  }

  private changed(draining: boolean): void {
    this.state?.onDrain?.(draining);
    // The next scrape shows the new anyturn_draining, not a cached rendering.
    this.ops?.invalidateMetrics();
  }

  drained(): Promise<void> {
    return (this.drainedWait ??= new Promise<void>((resolve) => {
      const poll = setInterval(() => {
        if (this.stopping || this.isDrained()) {
          clearInterval(poll);
          resolve();
        }
      }, DRAINED_POLL_MS);
      poll.unref();
    }));
  }

  private isDrained(): boolean {
    const state = this.state;
    if (!this.drainSwitch.draining || state === undefined) return false;
    return (state.drainReached?.() ?? true) && state.allocations() === 0;
  }

  /** Serves the ops endpoint when --metrics-port is on; resolves its bound port, or 0 when off. */
  async startOps(config: ServerConfig, metrics: MetricsSource): Promise<number> {
    if (config.metricsPort === 0) return 0;
    const ops = new OpsHttpServer(
      config.metricsIp,
      config.metricsPort,
      metrics,
      { notReadyReason: () => this.notReadyReason() },
      {
        token: config.adminToken,
        drain: () => this.drain('POST /drain'),
        undrain: () => this.undrain('POST /undrain'),
        state: () => ({ draining: this.draining, allocations: this.state?.allocations() ?? 0 }),
      },
      { metricsCacheMs: config.metricsCacheMs },
    );
    this.ops = ops;
    await ops.start();
    return ops.port;
  }

  async closeOps(): Promise<void> {
    await this.ops?.close();
  }

  get isStopping(): boolean {
    return this.stopping !== undefined;
  }

  /** Runs `close` once, however often it is asked; later calls get the same promise. */
  stop(close: () => Promise<void> = async () => undefined): Promise<void> {
    return (this.stopping ??= (async () => {
      await close();
      this.logger.info({}, 'anyturn stopped');
    })());
  }
}

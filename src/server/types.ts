// What starting a server takes and gives (src/server.ts), and the seam a worker process
// plugs its UDP side into (src/workers/udp-frontend.ts).

import type { Registry } from 'prom-client';
import type { ClusterCounters } from '../cluster/counters.js';
import type { Logger } from '../ops/log.js';
import type { AllocationStore, NodeRegistry } from '../store/types.js';
import type { StreamCounters } from '../transport/counters.js';
import type { Clock } from '../turn/clock.js';
import type { EngineCounters } from '../turn/counters.js';
import type { TurnEngine } from '../turn/engine.js';
import type { EngineListener } from '../turn/allocation/table.js';
import type { RunningNode } from './lifecycle.js';

/**
 * Takes over UDP client traffic from the listening sockets (a worker process, src/workers/):
 * packets reach the engine through it, and it says which engine listener holds a client.
 */
export interface UdpFrontend {
  /** Called once per listening address, after the engine exists; returns where a client's packets go. */
  open(engine: TurnEngine, index: number, address: string, port: number): Promise<ClientResolver>;
  close(): Promise<void>;
}

/** The engine listener a client (by address and port) belongs to on one listening address. */
export type ClientResolver = (clientAddress: string, clientPort: number) => EngineListener;

export interface ServerDeps {
  /** Set in a worker process: UDP comes from the primary and per-client sessions; TCP/TLS listeners are shared through node:cluster. */
  readonly udpFrontend?: UdpFrontend;
  readonly logger?: Logger;
  /** Engine counters to use (a worker's UDP frontend counts into the same ones). */
  readonly counters?: EngineCounters;
  readonly clock?: Clock;
  /** A store to use instead of the one the config names (tests share one between nodes). */
  readonly store?: AllocationStore;
  readonly registry?: NodeRegistry;
}

export interface ListeningAddress {
  readonly transport: 'udp' | 'tcp' | 'tls';
  readonly address: string;
  readonly port: number;
}

export interface RunningServer extends RunningNode {
  readonly engine: TurnEngine;
  readonly counters: EngineCounters;
  readonly clusterCounters: ClusterCounters | undefined;
  /** TCP/TLS connections accepted, refused, open and closed; framing errors. */
  readonly streamCounters: StreamCounters;
  readonly store: AllocationStore;
  /** The Prometheus registry (served on /metrics when --metrics-port is on; a worker's primary collects it). */
  readonly metrics: Registry;
  readonly listening: readonly ListeningAddress[];
  /** The bound ops HTTP port (/metrics, /healthz, /readyz), or 0 when off. */
  readonly metricsPort: number;
  /** The bound mesh port in a cluster, else 0. */
  readonly meshPort: number;
  /** Undefined when ready for new clients, else why not. */
  notReadyReason(): string | undefined;
  /** True while draining: new Allocates get 403, live allocations go on. */
  isDraining(): boolean;
}

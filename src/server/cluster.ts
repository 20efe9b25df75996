// A node's part in a cluster (--redis-*): the mesh socket that carries client packets
// between nodes and the dispatch of those that arrive, the router that sends packets for
// other nodes' allocations there, and the membership heartbeat.

import { performance } from 'node:perf_hooks';

import { ClusterCounters } from '../cluster/counters.js';
import { Membership } from '../cluster/membership.js';
import { type MeshPacket, MeshSocket } from '../cluster/mesh.js';
import { ClusterRouter } from '../cluster/router.js';
import type { ClusterConfig, ServerConfig } from '../config/index.js';
import type { Logger } from '../ops/log.js';
import type { AllocationStore, NodeInfo, NodeRegistry } from '../store/types.js';
import type { Clock } from '../turn/clock.js';
import type { TurnEngine } from '../turn/engine.js';
import type { PeerPolicy } from '../turn/peer-policy.js';
import type { ClientListeners } from './listeners.js';
import { learnClusterNodes } from './peers.js';

export class ClusterNode {
  readonly counters = new ClusterCounters();
  readonly mesh: MeshSocket;
  private router: ClusterRouter | undefined;
  private membership: Membership | undefined;
  /** Set by attach(), before the first packet can arrive (the mesh starts after it). */
  private engine: TurnEngine | undefined;
  private listeners: ClientListeners | undefined;
  /** start() is over: mesh, membership and (anycast relay mode) the start-up sync. */
  private started = false;

  constructor(
    private readonly config: ServerConfig,
    private readonly cluster: ClusterConfig,
    private readonly logger: Logger,
  ) {
    const counters = this.counters;
    this.mesh = new MeshSocket(cluster.meshAddress, cluster.meshPort, cluster.clusterSecret, {
      onPacket: (p) => this.dispatch(p),
      onRejected: (reason) => counters.meshRejected[reason]++,
      onTooLarge: () => counters.meshTooLarge++,
      onError: (err) => logger.warn({ err }, 'mesh socket error'),
    });
  }

  /** A client packet another node forwarded: handled as if it had come straight from the client. */
  private dispatch(p: MeshPacket): void {
    const listener = this.listeners?.resolver(p.serverAddress, p.serverPort)?.(p.clientAddress, p.clientPort);
    if (!listener || !this.engine) {
      this.counters.meshRejected.no_listener++;
      return;
    }
    this.counters.meshReceived++;
    // The answer leaves from the address the client sent to.
    this.engine.handleClientPacket(listener, p.payload, p.clientAddress, p.clientPort, true);
  }

  /** The router the engine hands packets for other nodes' allocations to (built once the store is open). */
  route(store: AllocationStore, registry: NodeRegistry, clock: Clock): ClusterRouter {
    return (this.router = new ClusterRouter({
      nodeId: this.config.nodeId,
      store,
      registry,
      mesh: this.mesh,
      clock,
      logger: this.logger,
      counters: this.counters,
      lookupsPerSecond: this.cluster.lookupsPerSecond,
      // Anycast relay mode: every node can serve every allocation, so take it on rather than forward.
      adopt: this.cluster.relayMode === 'anycast' ? (record) => this.engine!.adopt(record) : undefined,
    }));
  }

  /** Events published while the store's feed was away are lost: forget what the router cached. */
  resetRouter(): void {
    this.router?.reset();
  }

  /**
   * The store's event feed was recreated after a gap: the events published meanwhile are
   * lost. Forget what the router cached and, in anycast relay mode, take on again what the
   * store holds (allocations made, permissions and channels added elsewhere meanwhile).
   */
  afterEventGap(): void {
    this.router?.reset();
    if (this.cluster.relayMode === 'anycast' && this.engine) {
      void this.engine.syncFromStore().catch((err: unknown) => this.logger.warn({ err }, 'sync from the store after an event gap failed'));
    }
  }

  attach(engine: TurnEngine, listeners: ClientListeners): void {
    this.engine = engine;
    this.listeners = listeners;
    this.router?.attach(engine);
  }

  /** Starts the mesh and joins the membership, announcing the node's addresses and ports (attach() first). */
  async start(policy: PeerPolicy, registry: NodeRegistry, servicePorts: readonly number[]): Promise<void> {
    await this.mesh.start();
    policy.addServer([], [this.mesh.port]);
    const self: NodeInfo = {
      nodeId: this.config.nodeId,
      meshAddress: this.cluster.meshAddress,
      meshPort: this.mesh.port,
      relayAddresses: this.config.relayIps,
      servicePorts: [...new Set([...servicePorts, this.mesh.port])],
      ...(this.cluster.region === undefined ? {} : { region: this.cluster.region }),
    };
    this.membership = new Membership(self, registry, this.logger, this.counters, (nodes) => learnClusterNodes(policy, nodes, this.logger));
    await this.membership.start();
    if (this.cluster.relayMode === 'anycast') await this.syncAtStart();
    this.started = true;
  }

  /**
   * /readyz's reason until start() is over (docs/architecture.md §6): in anycast relay mode a
   * BGP speaker must announce the node only once it can serve any client routed to it.
   */
  notReadyReason(): string | undefined {
    if (this.started) return undefined;
    return this.cluster.relayMode === 'anycast' ? 'taking on the allocations in the store (start-up sync)' : 'joining the cluster';
  }

  /** Anycast relay mode: every node serves every allocation, so take on those that exist before serving. */
  private async syncAtStart(): Promise<void> {
    const started = performance.now();
    const result = await this.engine!.syncFromStoreCounted().catch((err: unknown) => {
      this.logger.warn({ err }, 'start-up sync from the store failed; allocations are taken on as their events arrive');
      return { records: 0, adopted: 0 };
    });
    const seconds = (performance.now() - started) / 1000;
    this.counters.startupSyncSeconds = seconds;
    this.logger.info(
      { event: 'startup_sync', adopted: result.adopted, records: result.records, ms: Math.round(seconds * 1000) },
      'anycast relay: took on the allocations in the store',
    );
  }

  /** Before the engine stops: leave the membership, stop routing. */
  async leave(): Promise<void> {
    await this.membership?.stop();
    this.router?.close();
  }

  /** After the engine stopped. */
  close(): Promise<void> {
    return this.mesh.close();
  }
}

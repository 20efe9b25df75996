// The composition root: builds every part of one node from a validated ServerConfig and
// owns its start and stop; the parts with behaviour live in src/server/. It runs a whole
// node in one process, or one worker of --workers (src/workers/worker.ts).

import type { ServerConfig } from './config/index.js';
import type { Logger } from './ops/log.js';
import { createLogger } from './ops/log.js';
import type { Dataplane } from './dataplane/open.js';
import { type MetricsSources, createMetrics } from './ops/metrics.js';
import { ClusterNode } from './server/cluster.js';
import { type NodeRelaying, openNodeRelaying } from './server/dataplane.js';
import { createEngine } from './server/engine.js';
import { NodeLifecycle } from './server/lifecycle.js';
import { ClientListeners } from './server/listeners.js';
import { nodePeerPolicy } from './server/peers.js';
import type { NodeRelaySockets } from './server/relay-sockets.js';
import { StoreHealthWatcher, openNodeStore } from './server/store.js';
import type { RunningServer, ServerDeps } from './server/types.js';
import { type Clock, systemClock } from './turn/clock.js';
import { EngineCounters } from './turn/counters.js';
import type { TurnEngine } from './turn/engine.js';
import type { AllocationStore } from './store/types.js';

export type { ClientResolver, ListeningAddress, RunningServer, ServerDeps, UdpFrontend } from './server/types.js';

const TICK_MS = 1000;

/**
 * Why this node should not get new clients, drain aside; undefined when it should. Only
 * this node's own faults: a store outage is not one (new Allocates fail open,
 * docs/architecture.md §6), else one Redis behind every PoP would withdraw them all at once.
 */
function capacityProblem(config: ServerConfig, engine: TurnEngine, cluster: ClusterNode | undefined, relaying: NodeRelaying): string | undefined {
  // Not before the node is in the cluster and, in anycast relay mode, holds every allocation in the
  // store: the ops endpoint starts before the cluster part, so /readyz says 503 during the sync.
  const starting = cluster?.notReadyReason();
  if (starting !== undefined) return starting;
  if (config.totalQuota > 0 && engine.allocations >= config.totalQuota) return 'at --total-quota capacity';
  // Shared relay sockets live on the kernel's steering (docs/dataplane.md §8): without its
  // helper no new relayed port can be steered, so the node is out until restarted.
  const stopped = relaying.relaySockets.mode === 'shared' ? relaying.dataplane.stopped() : undefined;
  if (stopped !== undefined) return `${stopped}: shared relay sockets can steer no new relayed port; restart the node`;
  // Out of descriptors, or (unicast relay mode) every relay port in use: this node's own capacity.
  return engine.capacityProblem();
}

/** Once a second: the store's health first, then the engine's tick (expiry, refresh of the store). */
function startTicking(
  config: ServerConfig,
  engine: TurnEngine,
  store: AllocationStore,
  cluster: ClusterNode | undefined,
  clock: Clock,
  logger: Logger,
): NodeJS.Timeout {
  const health = new StoreHealthWatcher(store, clock, logger, () => {
    // After an outage the store may have lost records (a restart without persistence): write every live one again.
    engine.resyncAll();
    cluster?.resetRouter();
    if (config.cluster?.relayMode === 'anycast') void engine.syncFromStore().catch(() => undefined);
  });
  const timer = setInterval(() => {
    health.check();
    engine.tick().catch((err: unknown) => logger.error({ err }, 'tick failed'));
  }, TICK_MS);
  timer.unref();
  return timer;
}

/** The start-up log line's fields, besides the listening addresses. */
function startLine(
  config: ServerConfig,
  store: AllocationStore,
  cluster: ClusterNode | undefined,
  opsPort: number,
  dataplane: Dataplane,
  relaySockets: NodeRelaySockets,
): Record<string, unknown> {
  return {
    dataplane: dataplane.mode,
    relaySockets: relaySockets.mode,
    relay: config.relayIps,
    ports: `${config.minPort}-${config.maxPort}`,
    realm: config.realm,
    store: store.kind,
    nodeId: config.nodeId,
    region: config.cluster?.region,
    mesh: cluster ? `${config.cluster?.meshAddress}:${cluster.mesh.port}` : undefined,
    metrics: opsPort > 0 ? `${config.metricsIp}:${opsPort}` : undefined,
  };
}

/** What the metrics take from the configuration alone. */
function configuredMetrics(config: ServerConfig): Pick<MetricsSources, 'usernameLabels' | 'tlsCertificate' | 'region'> {
  return { usernameLabels: config.prometheusUsernameLabels, tlsCertificate: config.tls?.cert, region: config.cluster?.region };
}

/**
 * A refusal to start after the store was opened (--dataplane kernel or --relay-sockets shared
 * without the kernel path): the store this node opened goes first, then the error.
 */
function closeOwned(owned: boolean, store: AllocationStore): (err: unknown) => Promise<never> {
  return async (err) => {
    if (owned) await store.close().catch(() => undefined);
    throw err;
  };
}

export async function startServer(config: ServerConfig, deps: ServerDeps = {}): Promise<RunningServer> {
  const logger = deps.logger ?? createLogger(config.logLevel);
  const clock = deps.clock ?? systemClock;
  const counters = deps.counters ?? new EngineCounters();
  const cluster = config.cluster ? new ClusterNode(config, config.cluster, logger) : undefined;
  const { store, registry, owned } = await openNodeStore(config, deps, clock, logger, () => cluster?.afterEventGap());
  const { policy: peerPolicy, servicePorts } = nodePeerPolicy(config);
  const lifecycle = new NodeLifecycle(logger);
  const foreign = cluster?.route(store, registry, clock);
  const relaying = await openNodeRelaying(config, deps.udpFrontend !== undefined, counters, logger).catch(closeOwned(owned, store));
  const { dataplane, relaySockets } = relaying;
  const { offload } = dataplane;
  const relays = relaySockets.factory;
  const engine = createEngine(config, { peerPolicy, store, relays, clock, logger, counters, foreign, offload, isDraining: () => lifecycle.draining });
  const listeners = new ClientListeners(config, engine, counters, logger, deps.udpFrontend);
  cluster?.attach(engine, listeners);
  lifecycle.watch({ allocations: () => engine.allocations, notReadyReason: () => capacityProblem(config, engine, cluster, relaying) });
  const metrics = createMetrics({
    engine,
    counters,
    store,
    cluster: cluster?.counters,
    streams: listeners.streamCounters,
    drain: lifecycle.drainSwitch,
    dataplane,
    relaySockets,
    ...configuredMetrics(config),
  });
  const closeAll = async (): Promise<void> => {
    await lifecycle.closeOps();
    await cluster?.leave();
    await engine.stop();
    await cluster?.close();
    await listeners.close();
    if (owned) await store.close();
    await relaySockets.close();
    // After engine.stop() removed every allocation's entries: detach the program.
    await dataplane.close();
  };
  try {
    await listeners.open();
    peerPolicy.addServer([], listeners.boundPorts);
    const opsPort = await lifecycle.startOps(config, metrics);
    if (opsPort > 0) peerPolicy.addServer([], [opsPort]);
    await cluster?.start(peerPolicy, registry, [...servicePorts, ...listeners.boundPorts]);
  } catch (err) {
    await closeAll().catch(() => undefined);
    throw err;
  }

  const timer = startTicking(config, engine, store, cluster, clock, logger);

  const listening = listeners.listening;
  logger.info(
    { listening, ...startLine(config, store, cluster, lifecycle.opsPort, dataplane, relaySockets) },
    // A worker's line must not look like the node's: the primary says 'anyturn ready' once all workers are.
    deps.udpFrontend ? 'anyturn worker ready' : 'anyturn ready',
  );
  return {
    engine,
    counters,
    clusterCounters: cluster?.counters,
    streamCounters: listeners.streamCounters,
    store,
    metrics,
    listening,
    metricsPort: lifecycle.opsPort,
    meshPort: cluster?.mesh.port ?? 0,
    notReadyReason: () => lifecycle.notReadyReason(),
    isDraining: () => lifecycle.draining,
    drain: (source) => lifecycle.drain(source),
    undrain: (source) => lifecycle.undrain(source),
    drained: () => lifecycle.drained(),
    stop: () =>
      lifecycle.stop(async () => {
        clearInterval(timer);
        await closeAll();
      }),
  };
}

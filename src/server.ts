// The composition root: builds every part from a validated ServerConfig and owns
// start and stop. Nothing else wires parts together.

import { ClusterCounters } from './cluster/counters.js';
import { Membership } from './cluster/membership.js';
import { MeshSocket } from './cluster/mesh.js';
import { ClusterRouter } from './cluster/router.js';
import type { ServerConfig } from './config.js';
import { localIPv4Addresses } from './config.js';
import { OpsHttpServer } from './ops/http.js';
import type { Logger } from './ops/log.js';
import { createLogger } from './ops/log.js';
import { createMetrics } from './ops/metrics.js';
import { MemoryAllocationStore, MemoryNodeRegistry } from './store/memory.js';
import { openSharedStore } from './store/shared.js';
import type { AllocationStore, NodeRegistry } from './store/types.js';
import { UdpClientListener, UdpRelayFactory } from './transport/udp.js';
import { CredentialStore } from './turn/auth.js';
import { type Clock, systemClock } from './turn/clock.js';
import { EngineCounters } from './turn/counters.js';
import { type EngineListener, TurnEngine } from './turn/engine.js';
import { NonceIssuer } from './turn/nonce.js';
import { createPeerPolicy } from './turn/peer-policy.js';

export interface ServerDeps {
  readonly logger?: Logger;
  readonly clock?: Clock;
  /** A store to use instead of the one the config names (tests share one between nodes). */
  readonly store?: AllocationStore;
  readonly registry?: NodeRegistry;
}

export interface ListeningAddress {
  readonly transport: 'udp';
  readonly address: string;
  readonly port: number;
}

export interface RunningServer {
  readonly engine: TurnEngine;
  readonly counters: EngineCounters;
  readonly clusterCounters: ClusterCounters | undefined;
  readonly store: AllocationStore;
  readonly listening: readonly ListeningAddress[];
  /** The bound ops HTTP port (/metrics, /healthz, /readyz), or 0 when off. */
  readonly metricsPort: number;
  /** The bound mesh port in a cluster, else 0. */
  readonly meshPort: number;
  /** Undefined when ready for new clients, else why not. */
  notReadyReason(): string | undefined;
  stop(): Promise<void>;
}

const TICK_MS = 1000;
const STORE_READY_WAIT_MS = 3000;

export async function startServer(config: ServerConfig, deps: ServerDeps = {}): Promise<RunningServer> {
  const logger = deps.logger ?? createLogger(config.logLevel);
  const clock = deps.clock ?? systemClock;
  const counters = new EngineCounters();
  const cluster = config.cluster;
  const clusterCounters = cluster ? new ClusterCounters() : undefined;

  let store: AllocationStore;
  let registry: NodeRegistry;
  const ownStore = deps.store === undefined;
  if (deps.store) {
    store = deps.store;
    registry = deps.registry ?? new MemoryNodeRegistry(() => clock.now());
  } else if (cluster) {
    const shared = openSharedStore(cluster.redisUrl, { logger });
    ({ store, registry } = shared);
    // Start either way: a node whose store is down says so on /readyz and answers new Allocates 508.
    if (!(await shared.waitUntilReady(STORE_READY_WAIT_MS))) logger.warn({ store: store.kind }, 'allocation store not reachable yet; starting not ready');
  } else {
    store = new MemoryAllocationStore({ now: () => clock.now() });
    registry = new MemoryNodeRegistry(() => clock.now());
  }

  // The server's own addresses are never peers (RFC 8656 §21 security considerations).
  const ownAddresses = new Set<string>([...config.listeningIps, ...config.relayIps, config.metricsIp]);
  if (cluster) ownAddresses.add(cluster.meshAddress);
  if (config.listeningIps.includes('0.0.0.0') || config.metricsIp === '0.0.0.0') for (const ip of localIPv4Addresses()) ownAddresses.add(ip);
  ownAddresses.delete('0.0.0.0');
  ownAddresses.delete('::');

  const listenersByAddress = new Map<string, Map<number, EngineListener>>();
  let mesh: MeshSocket | undefined;
  let router: ClusterRouter | undefined;
  if (cluster && clusterCounters) {
    mesh = new MeshSocket(cluster.meshAddress, cluster.meshPort, cluster.clusterSecret, {
      onPacket: (p) => {
        const listener = listenersByAddress.get(p.serverAddress)?.get(p.serverPort);
        if (!listener) {
          clusterCounters.meshRejected++;
          return;
        }
        clusterCounters.meshReceived++;
        // As if it had come straight from the client: the answer leaves from the address it was sent to.
        engine.handleClientPacket(listener, p.payload, p.clientAddress, p.clientPort, true);
      },
      onRejected: () => clusterCounters.meshRejected++,
      onError: (err) => logger.warn({ err }, 'mesh socket error'),
    });
    router = new ClusterRouter({
      nodeId: config.nodeId,
      store,
      registry,
      mesh,
      clock,
      logger,
      counters: clusterCounters,
      lookupsPerSecond: cluster.lookupsPerSecond,
    });
  }

  const engine = new TurnEngine({
    nodeId: config.nodeId,
    credentials: new CredentialStore({ realm: config.realm, users: config.users, authSecrets: config.authSecrets }),
    nonces: new NonceIssuer(config.nonceSecret, config.nonceLifetimeSeconds * 1000),
    peerPolicy: createPeerPolicy({
      allowLoopbackPeers: config.allowLoopbackPeers,
      allowedPeerRanges: config.allowedPeerIps,
      deniedPeerRanges: config.deniedPeerIps,
      serverAddresses: [...ownAddresses],
    }),
    store,
    relays: new UdpRelayFactory((err) => logger.warn({ err }, 'relay socket error')),
    clock,
    logger,
    counters,
    relayAddressIPv4: config.relayIps.find((ip) => !ip.includes(':')),
    relayAddressIPv6: config.relayIps.find((ip) => ip.includes(':')),
    minPort: config.minPort,
    maxPort: config.maxPort,
    maxLifetimeSeconds: config.maxAllocateLifetimeSeconds,
    userQuota: config.userQuota,
    totalQuota: config.totalQuota,
    software: config.software,
    foreign: router,
  });
  router?.attach(engine);

  const notReadyReason = (): string | undefined => {
    if (!store.isAvailable()) return 'allocation store unavailable';
    if (config.totalQuota > 0 && engine.allocations >= config.totalQuota) return 'at --total-quota capacity';
    return undefined;
  };

  const udpListeners: UdpClientListener[] = [];
  const handles = new Map<UdpClientListener, EngineListener>();
  const hooks = {
    onPacket: (path: UdpClientListener, buf: Buffer, address: string, port: number) => engine.handleClientPacket(handles.get(path)!, buf, address, port),
    onCongestionDrop: () => counters.drops.send_queue_full++,
    onError: (err: Error) => logger.warn({ err }, 'listening socket error'),
  };
  let ops: OpsHttpServer | undefined;
  let membership: Membership | undefined;
  const closeAll = async (): Promise<void> => {
    await ops?.close();
    await membership?.stop();
    router?.close();
    await engine.stop();
    await mesh?.close();
    await Promise.all(udpListeners.map((l) => l.close()));
    if (ownStore) await store.close();
  };
  try {
    for (const ip of config.listeningIps) {
      const listener = new UdpClientListener(ip, config.listeningPort, hooks);
      await listener.start();
      udpListeners.push(listener);
      const handle = engine.addListener(listener);
      handles.set(listener, handle);
      let byPort = listenersByAddress.get(ip);
      if (!byPort) listenersByAddress.set(ip, (byPort = new Map()));
      byPort.set(listener.localPort, handle);
    }
    if (mesh && cluster && clusterCounters) {
      await mesh.start();
      membership = new Membership({ nodeId: config.nodeId, meshAddress: cluster.meshAddress, meshPort: mesh.port }, registry, logger, clusterCounters);
      await membership.start();
    }
    if (config.metricsPort > 0) {
      ops = new OpsHttpServer(config.metricsIp, config.metricsPort, createMetrics({ engine, counters, store, cluster: clusterCounters }), { notReadyReason });
      await ops.start();
    }
  } catch (err) {
    await closeAll().catch(() => undefined);
    throw err;
  }

  let storeWasUp = store.isAvailable();
  const timer = setInterval(() => {
    const up = store.isAvailable();
    if (up !== storeWasUp) {
      logger.warn({ store: store.kind, available: up }, up ? 'allocation store is back: re-syncing live allocations' : 'allocation store unavailable: live allocations keep relaying, new Allocates get 508');
      // After an outage the store may have lost records (a restart without persistence): write every live one again.
      if (up) {
        engine.resyncAll();
        // Events published while the store was away are lost: forget what the router cached.
        router?.reset();
      }
      storeWasUp = up;
    }
    engine.tick().catch((err: unknown) => logger.error({ err }, 'tick failed'));
  }, TICK_MS);
  timer.unref();

  const listening = udpListeners.map((l) => ({ transport: 'udp' as const, address: l.localAddress, port: l.localPort }));
  logger.info(
    {
      listening,
      relay: config.relayIps,
      ports: `${config.minPort}-${config.maxPort}`,
      realm: config.realm,
      store: store.kind,
      nodeId: config.nodeId,
      mesh: mesh ? `${cluster?.meshAddress}:${mesh.port}` : undefined,
      metrics: ops ? `${config.metricsIp}:${ops.port}` : undefined,
    },
    'anyturn ready',
  );

  let stopping: Promise<void> | undefined;
  return {
    engine,
    counters,
    clusterCounters,
    store,
    listening,
    metricsPort: ops?.port ?? 0,
    meshPort: mesh?.port ?? 0,
    notReadyReason,
    stop() {
      stopping ??= (async () => {
        clearInterval(timer);
        await closeAll();
        logger.info({}, 'anyturn stopped');
      })();
      return stopping;
    },
  };
}

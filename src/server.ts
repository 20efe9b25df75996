// The composition root: builds every part from a validated ServerConfig and owns
// start and stop. Nothing else wires parts together.

import { ClusterCounters } from './cluster/counters.js';
import { Membership } from './cluster/membership.js';
import { MeshSocket } from './cluster/mesh.js';
import { ClusterRouter } from './cluster/router.js';
import type { ServerConfig } from './config/index.js';
import { networkInterfaces } from 'node:os';
import { DrainSwitch } from './ops/drain.js';
import { OpsHttpServer } from './ops/http.js';
import type { Logger } from './ops/log.js';
import { createLogger } from './ops/log.js';
import { createMetrics } from './ops/metrics.js';
import type { Registry } from 'prom-client';
import { MemoryAllocationStore, MemoryNodeRegistry } from './store/memory.js';
import { openSharedStore } from './store/shared.js';
import type { AllocationStore, NodeRegistry } from './store/types.js';
import { StreamCounters } from './transport/counters.js';
import { StreamClientListener, type StreamListenerHooks } from './transport/tcp.js';
import { UdpClientListener, UdpRelayFactory } from './transport/udp.js';
import { createAllocateAdmission } from './turn/admission.js';
import { CredentialStore } from './turn/auth/credentials.js';
import { type Clock, systemClock } from './turn/clock.js';
import { EngineCounters } from './turn/counters.js';
import type { EngineListener } from './turn/allocation/table.js';
import { TurnEngine } from './turn/engine.js';
import { NonceIssuer } from './turn/auth/nonce.js';
import { createPeerPolicy, type PeerPolicy } from './turn/peer-policy.js';
import type { NodeInfo } from './store/types.js';

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

export interface RunningServer {
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
  /** Starts draining (SIGUSR1, POST /drain); `source` goes to the log. Idempotent. */
  drain(source: string): void;
  undrain(source: string): void;
  /** Resolves once the node is draining and no allocation is left (or it is stopping). */
  drained(): Promise<void>;
  stop(): Promise<void>;
}

const TICK_MS = 1000;
/** How often a --drain-exit waiter looks whether the last allocation is gone. */
const DRAINED_POLL_MS = 200;
const STORE_READY_WAIT_MS = 3000;
/** With --listening-port 0: tries at an ephemeral port number free for both UDP and TCP. */
const SAME_PORT_ATTEMPTS = 20;

const isWildcard = (ip: string): boolean => ip === '0.0.0.0' || ip === '::';

/** Every address of this host's interfaces, IPv4 and IPv6 (without a zone id), and all of loopback. */
function hostAddresses(): string[] {
  const out = ['127.0.0.0/8', '::1'];
  for (const list of Object.values(networkInterfaces())) for (const a of list ?? []) out.push(a.address.split('%')[0]!);
  return out;
}

/** At most this many cluster addresses are learned (a bound on a polluted registry). */
const MAX_CLUSTER_ADDRESSES = 4096;

/** The other nodes' relay and mesh addresses and service ports join this node's own (membership listing). */
function learnClusterNodes(policy: PeerPolicy, nodes: readonly NodeInfo[], logger: Logger): void {
  for (const node of nodes) {
    for (const address of [node.meshAddress, ...(node.relayAddresses ?? [])]) {
      if (isWildcard(address) || policy.serverAddressCount >= MAX_CLUSTER_ADDRESSES) continue;
      try {
        policy.addServer([address], []);
      } catch {
        logger.warn({ node: node.nodeId, address }, 'cluster node announces an address that is not an IP; ignored');
      }
    }
    policy.addServer([], [node.meshPort, ...(node.servicePorts ?? [])]);
  }
}

export async function startServer(config: ServerConfig, deps: ServerDeps = {}): Promise<RunningServer> {
  const logger = deps.logger ?? createLogger(config.logLevel);
  const clock = deps.clock ?? systemClock;
  const counters = deps.counters ?? new EngineCounters();
  const cluster = config.cluster;
  const clusterCounters = cluster ? new ClusterCounters() : undefined;

  let store: AllocationStore;
  let registry: NodeRegistry;
  const ownStore = deps.store === undefined;
  if (deps.store) {
    store = deps.store;
    registry = deps.registry ?? new MemoryNodeRegistry(() => clock.now());
  } else if (cluster) {
    const shared = openSharedStore(cluster.redis, { logger, onEventsResubscribed: () => router?.reset() }); // events in the gap are lost: drop cached lookups
    ({ store, registry } = shared);
    // Start either way: a node whose store is down says so on /readyz and answers new Allocates 508.
    if (!(await shared.waitUntilReady(STORE_READY_WAIT_MS))) logger.warn({ store: store.kind }, 'allocation store not reachable yet; starting not ready');
  } else {
    store = new MemoryAllocationStore({ now: () => clock.now() });
    registry = new MemoryNodeRegistry(() => clock.now());
  }

  // The server's own addresses and service ports (RFC 8656 §21; the rule is in turn/peer-policy.ts).
  // A socket on a wildcard takes packets for every address of the host: then every one is ours,
  // IPv4 and IPv6, and all of loopback (127.0.0.0/8 reaches a 0.0.0.0 socket, not just 127.0.0.1).
  const ownAddresses = new Set<string>([...config.listeningIps, ...config.relayIps, config.metricsIp]);
  if (cluster) ownAddresses.add(cluster.meshAddress);
  if ([...ownAddresses].some(isWildcard)) for (const ip of hostAddresses()) ownAddresses.add(ip);
  ownAddresses.delete('0.0.0.0');
  ownAddresses.delete('::');
  // The configured ones now; the bound ones (with port 0, known only later) once they are bound.
  const servicePorts = [config.listeningPort, config.tls?.port ?? 0, config.metricsPort, cluster?.meshPort ?? 0].filter((p) => p > 0);
  const peerPolicy = createPeerPolicy({
    allowLoopbackPeers: config.allowLoopbackPeers,
    allowedPeerRanges: config.allowedPeerIps,
    deniedPeerRanges: config.deniedPeerIps,
    serverAddresses: [...ownAddresses],
    servicePorts,
  });

  // Assigned below, before anything can ask it (the engine is built next, and no packet arrives before that).
  let engineRef: TurnEngine | undefined;
  const drain = new DrainSwitch(logger, () => engineRef?.allocations ?? 0);

  const listenersByAddress = new Map<string, Map<number, ClientResolver>>();
  let mesh: MeshSocket | undefined;
  let router: ClusterRouter | undefined;
  if (cluster && clusterCounters) {
    mesh = new MeshSocket(cluster.meshAddress, cluster.meshPort, cluster.clusterSecret, {
      onPacket: (p) => {
        const listener = listenersByAddress.get(p.serverAddress)?.get(p.serverPort)?.(p.clientAddress, p.clientPort);
        if (!listener) {
          clusterCounters.meshRejected.no_listener++;
          return;
        }
        clusterCounters.meshReceived++;
        // As if it had come straight from the client: the answer leaves from the address it was sent to.
        engine.handleClientPacket(listener, p.payload, p.clientAddress, p.clientPort, true);
      },
      onRejected: (reason) => clusterCounters.meshRejected[reason]++,
      onTooLarge: () => clusterCounters.meshTooLarge++,
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
      // Anycast relay mode: every node can serve every allocation, so take it on rather than forward.
      adopt: cluster.relayMode === 'anycast' ? (record) => engine.adopt(record) : undefined,
    });
  }

  const relays = new UdpRelayFactory((err) => logger.warn({ err }, 'relay socket error'));
  const engine = new TurnEngine({
    nodeId: config.nodeId,
    credentials: new CredentialStore({ realm: config.realm, users: config.users, authSecrets: config.authSecrets }),
    nonces: new NonceIssuer(config.nonceSecret, config.nonceLifetimeSeconds * 1000),
    peerPolicy,
    store,
    relays,
    clock,
    logger,
    counters,
    relayAddressIPv4: config.relayIps.find((ip) => !ip.includes(':')),
    relayAddressIPv6: config.relayIps.find((ip) => ip.includes(':')),
    relayPoolIPv4: config.relayIps.filter((ip) => !ip.includes(':')).slice(1),
    relayPoolIPv6: config.relayIps.filter((ip) => ip.includes(':')).slice(1),
    minPort: config.minPort,
    maxPort: config.maxPort,
    maxLifetimeSeconds: config.maxAllocateLifetimeSeconds,
    userQuota: config.userQuota,
    totalQuota: config.totalQuota,
    limits: config.allocationLimits,
    software: config.software,
    foreign: router,
    relayMode: cluster?.relayMode,
    unauthenticatedErrorLimit: { perSecond: config.unauthErrorRate, burst: config.unauthErrorBurst },
    admission: createAllocateAdmission({ alternateServers: config.alternateServers, isDraining: () => drain.draining }),
  });
  engineRef = engine;
  router?.attach(engine);

  const notReadyReason = (): string | undefined => {
    if (drain.draining) return 'draining';
    if (!store.isAvailable()) return 'allocation store unavailable';
    if (config.totalQuota > 0 && engine.allocations >= config.totalQuota) return 'at --total-quota capacity';
    // Out of descriptors, or (unicast relay mode) every relay port in use: this node's own capacity.
    return engine.capacityProblem();
  };

  const udpListeners: UdpClientListener[] = [];
  const handles = new Map<UdpClientListener, EngineListener>();
  const hooks = {
    onPacket: (path: UdpClientListener, buf: Buffer, address: string, port: number) => {
      const handle = handles.get(path);
      if (handle) engine.handleClientPacket(handle, buf, address, port);
    },
    onCongestionDrop: () => counters.drops.send_queue_full++,
    onError: (err: Error) => logger.warn({ err }, 'listening socket error'),
  };
  // TCP and TLS: every connection is its own engine listener, and takes its allocation with it when it closes.
  const streamCounters = new StreamCounters();
  const streamListeners: StreamClientListener[] = [];
  const streamHooks: StreamListenerHooks = {
    onConnection: (connection) => {
      const handle = engine.addListener(connection);
      return {
        onMessage: (message) => engine.handleClientPacket(handle, message, connection.remoteAddress, connection.remotePort),
        hasAllocation: () => handle.holdsAllocation,
        onClose: () => void engine.closeListener(handle, 'connection-closed').catch((err: unknown) => logger.warn({ err }, 'closing a connection\'s allocation failed')),
      };
    },
    onSendDrop: () => counters.drops.send_queue_full++,
    onError: (err) => logger.warn({ err }, 'listening socket error'),
  };
  // In a worker, the primary holds the TCP/TLS listening sockets and shares out connections (node:cluster).
  const streamOptions = {
    idleTimeoutMs: config.tcpIdleTimeoutSeconds * 1000,
    unallocatedTimeoutMs: config.tcpUnallocatedTimeoutSeconds * 1000,
    maxConnections: config.maxTcpConnections,
    maxConnectionsPerSource: config.maxTcpConnectionsPerIp,
    shared: deps.udpFrontend !== undefined,
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
    await deps.udpFrontend?.close();
    await Promise.all(streamListeners.map((l) => l.close()));
    if (ownStore) await store.close();
    relays.close();
  };
  const udpPorts: ListeningAddress[] = [];
  const metrics = createMetrics({ engine, counters, store, cluster: clusterCounters, streams: streamCounters, drain, usernameLabels: config.prometheusUsernameLabels });
  try {
    for (const [index, ip] of config.listeningIps.entries()) {
      const makeStream = (transport: 'tcp' | 'tls', port: number): StreamClientListener =>
        new StreamClientListener({ transport, address: ip, port, tls: transport === 'tls' ? config.tls : undefined, ...streamOptions }, streamCounters, streamHooks);
      let tcp: StreamClientListener | undefined;
      const byPort = listenersByAddress.get(ip) ?? new Map<number, ClientResolver>();
      listenersByAddress.set(ip, byPort);
      if (config.udp && deps.udpFrontend) {
        byPort.set(config.listeningPort, await deps.udpFrontend.open(engine, index, ip, config.listeningPort));
        udpPorts.push({ transport: 'udp', address: ip, port: config.listeningPort });
      } else if (config.udp) {
        // RFC 8656 §3.1: TCP on the UDP port number. With --listening-port 0 (tests), the
        // ephemeral number UDP got may be taken for TCP: bind again until both agree.
        const sameNumber = config.tcp && config.listeningPort === 0;
        let udp: UdpClientListener | undefined;
        for (let attempt = 0; !udp; attempt++) {
          const candidate = new UdpClientListener(ip, config.listeningPort, hooks);
          await candidate.start();
          if (!sameNumber) {
            udp = candidate;
            break;
          }
          const stream = makeStream('tcp', candidate.localPort);
          try {
            await stream.start();
            udp = candidate;
            tcp = stream;
          } catch (err) {
            await candidate.close();
            if (attempt >= SAME_PORT_ATTEMPTS) throw err;
          }
        }
        udpListeners.push(udp);
        const handle = engine.addListener(udp);
        handles.set(udp, handle);
        byPort.set(udp.localPort, () => handle);
        udpPorts.push({ transport: 'udp', address: udp.localAddress, port: udp.localPort });
      }
      if (config.tcp && !tcp) {
        tcp = makeStream('tcp', config.listeningPort);
        await tcp.start();
      }
      if (tcp) streamListeners.push(tcp);
      if (config.tls) {
        const tls = makeStream('tls', config.tls.port);
        await tls.start();
        streamListeners.push(tls);
      }
    }
    const boundPorts = [...udpPorts.map((l) => l.port), ...streamListeners.map((l) => l.localPort)];
    peerPolicy.addServer([], boundPorts);
    if (mesh && cluster && clusterCounters) {
      await mesh.start();
      peerPolicy.addServer([], [mesh.port]);
      const self: NodeInfo = {
        nodeId: config.nodeId,
        meshAddress: cluster.meshAddress,
        meshPort: mesh.port,
        relayAddresses: config.relayIps,
        servicePorts: [...new Set([...servicePorts, ...boundPorts, mesh.port])],
      };
      membership = new Membership(self, registry, logger, clusterCounters, (nodes) => learnClusterNodes(peerPolicy, nodes, logger));
      await membership.start();
    }
    if (cluster?.relayMode === 'anycast') {
      // Every node serves every allocation: take on those that exist before serving.
      const adopted = await engine.syncFromStore().catch((err: unknown) => {
        logger.warn({ err }, 'start-up sync from the store failed; allocations are taken on as their events arrive');
        return 0;
      });
      logger.info({ adopted }, 'anycast relay: took on the allocations in the store');
    }
    if (config.metricsPort > 0) {
      ops = new OpsHttpServer(config.metricsIp, config.metricsPort, metrics, { notReadyReason }, {
        token: config.adminToken,
        drain: () => drain.drain('POST /drain'),
        undrain: () => drain.undrain('POST /undrain'),
        state: () => ({ draining: drain.draining, allocations: engine.allocations }),
      }, { metricsCacheMs: config.metricsCacheMs });
      await ops.start();
      peerPolicy.addServer([], [ops.port]);
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
        if (cluster?.relayMode === 'anycast') void engine.syncFromStore().catch(() => undefined);
      }
      storeWasUp = up;
    }
    engine.tick().catch((err: unknown) => logger.error({ err }, 'tick failed'));
  }, TICK_MS);
  timer.unref();

  const listening: ListeningAddress[] = [
    ...udpPorts,
    ...streamListeners.map((l) => ({ transport: l.transport, address: l.localAddress, port: l.localPort })),
  ];
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
    // A worker's line must not look like the node's: the primary says 'anyturn ready' once all workers are.
    deps.udpFrontend ? 'anyturn worker ready' : 'anyturn ready',
  );

  let stopping: Promise<void> | undefined;
  let drainedWait: Promise<void> | undefined;
  const drained = (): Promise<void> =>
    (drainedWait ??= new Promise<void>((resolve) => {
      const poll = setInterval(() => {
        if (stopping || (drain.draining && engine.allocations === 0)) {
          clearInterval(poll);
          resolve();
        }
      }, DRAINED_POLL_MS);
      poll.unref();
    }));
  return {
    engine,
    counters,
    clusterCounters,
    streamCounters,
    store,
    metrics,
    listening,
    metricsPort: ops?.port ?? 0,
    meshPort: mesh?.port ?? 0,
    notReadyReason,
    isDraining: () => drain.draining,
    // The next scrape shows the new anyturn_draining, not a cached rendering.
    drain: (source) => {
      drain.drain(source);
      ops?.invalidateMetrics();
    },
    undrain: (source) => {
      drain.undrain(source);
      ops?.invalidateMetrics();
    },
    drained,
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

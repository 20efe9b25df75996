// The composition root: builds every part from a validated ServerConfig and owns
// start and stop. Nothing else wires parts together.

import type { Logger } from './ops/log.js';
import { createLogger } from './ops/log.js';
import type { ServerConfig } from './config.js';
import { localIPv4Addresses } from './config.js';
import { MemoryAllocationStore } from './store/memory.js';
import type { AllocationStore } from './store/types.js';
import { UdpClientListener, UdpRelayFactory } from './transport/udp.js';
import { CredentialStore } from './turn/auth.js';
import { type Clock, systemClock } from './turn/clock.js';
import { EngineCounters } from './turn/counters.js';
import { TurnEngine } from './turn/engine.js';
import { NonceIssuer } from './turn/nonce.js';
import { createPeerPolicy } from './turn/peer-policy.js';

export interface ServerDeps {
  readonly logger?: Logger;
  readonly clock?: Clock;
  readonly store?: AllocationStore;
}

export interface ListeningAddress {
  readonly transport: 'udp';
  readonly address: string;
  readonly port: number;
}

export interface RunningServer {
  readonly engine: TurnEngine;
  readonly counters: EngineCounters;
  readonly store: AllocationStore;
  readonly listening: readonly ListeningAddress[];
  stop(): Promise<void>;
}

const TICK_MS = 1000;

export async function startServer(config: ServerConfig, deps: ServerDeps = {}): Promise<RunningServer> {
  const logger = deps.logger ?? createLogger(config.logLevel);
  const clock = deps.clock ?? systemClock;
  const store = deps.store ?? new MemoryAllocationStore({ now: () => clock.now() });
  const counters = new EngineCounters();

  // The server's own addresses are never peers (RFC 8656 §21 security considerations).
  const ownAddresses = new Set<string>([...config.listeningIps, ...config.relayIps]);
  if (config.listeningIps.includes('0.0.0.0')) for (const ip of localIPv4Addresses()) ownAddresses.add(ip);
  ownAddresses.delete('0.0.0.0');
  ownAddresses.delete('::');

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
  });

  const udpListeners: UdpClientListener[] = [];
  const hooks = {
    onPacket: (path: UdpClientListener, buf: Buffer, address: string, port: number) => engine.handleClientPacket(handles.get(path)!, buf, address, port),
    onCongestionDrop: () => counters.drops.send_queue_full++,
    onError: (err: Error) => logger.warn({ err }, 'listening socket error'),
  };
  const handles = new Map<UdpClientListener, ReturnType<TurnEngine['addListener']>>();
  try {
    for (const ip of config.listeningIps) {
      const listener = new UdpClientListener(ip, config.listeningPort, hooks);
      await listener.start();
      udpListeners.push(listener);
      handles.set(listener, engine.addListener(listener));
    }
  } catch (err) {
    await Promise.all(udpListeners.map((l) => l.close()));
    throw err;
  }

  const timer = setInterval(() => {
    engine.tick().catch((err: unknown) => logger.error({ err }, 'tick failed'));
  }, TICK_MS);
  timer.unref();

  const listening = udpListeners.map((l) => ({ transport: 'udp' as const, address: l.localAddress, port: l.localPort }));
  logger.info(
    { listening, relay: config.relayIps, ports: `${config.minPort}-${config.maxPort}`, realm: config.realm, store: store.kind, nodeId: config.nodeId },
    'anyturn ready',
  );

  let stopping: Promise<void> | undefined;
  return {
    engine,
    counters,
    store,
    listening,
    stop() {
      stopping ??= (async () => {
        clearInterval(timer);
        await engine.stop();
        await Promise.all(udpListeners.map((l) => l.close()));
        if (!deps.store) await store.close();
        logger.info({}, 'anyturn stopped');
      })();
      return stopping;
    },
  };
}

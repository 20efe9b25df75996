// The TURN engine a node runs, built from the flags and the parts it talks to.

import type { ServerConfig } from '../config/index.js';
import type { Logger } from '../ops/log.js';
import type { AllocationStore } from '../store/types.js';
import { createAllocateAdmission } from '../turn/admission.js';
import { CredentialStore } from '../turn/auth/credentials.js';
import type { Clock } from '../turn/clock.js';
import type { EngineCounters } from '../turn/counters.js';
import { TurnEngine } from '../turn/engine.js';
import type { ChannelOffload, ForeignPacketHandler, RelaySocketFactory } from '../turn/ports.js';
import { TcpRelays } from '../transport/tcp-relay/relay.js';
import { MobilityTickets } from '../turn/auth/mobility-ticket.js';
import { NonceIssuer } from '../turn/auth/nonce.js';
import type { PeerPolicy } from '../turn/peer-policy.js';

export interface EngineParts {
  readonly peerPolicy: PeerPolicy;
  readonly store: AllocationStore;
  readonly relays: RelaySocketFactory;
  readonly clock: Clock;
  readonly logger: Logger;
  readonly counters: EngineCounters;
  /** In a cluster: where packets for other nodes' allocations go. */
  readonly foreign: ForeignPacketHandler | undefined;
  /** The kernel data plane, when loaded (src/dataplane/open.ts). */
  readonly offload: ChannelOffload | undefined;
  readonly isDraining: () => boolean;
}

export function createEngine(config: ServerConfig, parts: EngineParts): TurnEngine {
  const ipv4 = config.relayIps.filter((ip) => !ip.includes(':'));
  const ipv6 = config.relayIps.filter((ip) => ip.includes(':'));
  const credentials = new CredentialStore({ realm: config.realm, users: config.users, authSecrets: config.authSecrets });
  return new TurnEngine({
    nodeId: config.nodeId,
    credentials,
    // The cookie announces what the credentials support (RFC 8489 §9.2, §18.1).
    nonces: new NonceIssuer(config.nonceSecret, config.nonceLifetimeSeconds * 1000, credentials.securityFeatures),
    peerPolicy: parts.peerPolicy,
    store: parts.store,
    relays: parts.relays,
    // RFC 6062 TCP allocations: asked for over TCP or TLS client connections (--no-tcp-relay: none).
    tcpRelays: config.tcpRelay && (config.tcp || config.tls) ? new TcpRelays((err) => parts.logger.warn({ err }, 'TCP relay socket error')) : undefined,
    clock: parts.clock,
    logger: parts.logger,
    counters: parts.counters,
    relayAddressIPv4: ipv4[0],
    relayAddressIPv6: ipv6[0],
    relayPoolIPv4: ipv4.slice(1),
    relayPoolIPv6: ipv6.slice(1),
    minPort: config.minPort,
    maxPort: config.maxPort,
    maxLifetimeSeconds: config.maxAllocateLifetimeSeconds,
    userQuota: config.userQuota,
    totalQuota: config.totalQuota,
    bandwidth: config.bandwidth,
    limits: config.allocationLimits,
    software: config.software,
    foreign: parts.foreign,
    offload: parts.offload,
    // Sealed under the cluster secret, so that any node redeems another's ticket (docs/security.md).
    mobility: config.mobility ? new MobilityTickets(config.cluster?.clusterSecret ?? config.nonceSecret) : undefined,
    relayMode: config.cluster?.relayMode,
    unauthenticatedErrorLimit: { perSecond: config.unauthErrorRate, burst: config.unauthErrorBurst },
    admission: createAllocateAdmission({ alternateServers: config.alternateServers, isDraining: parts.isDraining }),
  });
}

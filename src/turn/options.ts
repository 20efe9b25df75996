// What a TurnEngine is built from: its collaborators (credentials, nonces, peer
// policy, store, relay sockets, clock) and its limits. Every module of src/turn
// reads the same options through TurnContext.

import type { AllocationStore } from '../store/types.js';
import type { AllocateAdmission } from './admission.js';
import type { MobilityTickets } from './auth/mobility-ticket.js';
import type { CredentialStore } from './auth/credentials.js';
import type { NonceIssuer } from './auth/nonce.js';
import type { SourceRateLimitOptions } from './auth/rate-limit.js';
import type { EngineCounters } from './counters.js';
import type { BandwidthOptions } from './bandwidth.js';
import type { AllocationLimits } from './limits.js';
import type { PeerPolicy } from './peer-policy.js';
import type { ChannelOffload, EngineLogger, ForeignPacketHandler, TcpRelayFactory } from './ports.js';
import type { RelayPortOptions } from './relay/relay-ports.js';

/** With the relay addresses and port range of RelayPortOptions; a family without a relay address answers 440. */
export interface EngineOptions extends RelayPortOptions {
  readonly nodeId: string;
  readonly credentials: CredentialStore;
  readonly nonces: NonceIssuer;
  readonly peerPolicy: PeerPolicy;
  readonly store: AllocationStore;
  readonly logger: EngineLogger;
  readonly counters: EngineCounters;
  readonly maxLifetimeSeconds: number;
  readonly userQuota: number;
  readonly totalQuota: number;
  /** SOFTWARE attribute for responses; empty leaves it out. */
  readonly software: string;
  /** In a cluster: takes packets from 5-tuples this node holds no allocation for. */
  readonly foreign?: ForeignPacketHandler;
  /**
   * Per source IP, how many error answers (400/401/420/438) requests that are not yet
   * authenticated may get; over it they are dropped ('rate_limited'). Binding answers
   * get their own limit, derived from it (bindingLimitFor). Absent: no limit.
   */
  readonly unauthenticatedErrorLimit?: SourceRateLimitOptions;
  /** Asked before each new allocation: 300 to an alternate server, 403 while draining. */
  readonly admission?: AllocateAdmission;
  /**
   * 'unicast' (default): an allocation lives on the node that made it. 'anycast': the
   * relay address is shared by every node, and every node holds every allocation
   * (kept current from the store's event feed, allocation/replication.ts), so any node
   * serves any packet and a node's death loses nothing.
   */
  readonly relayMode?: 'unicast' | 'anycast';
  /** Caps on one allocation's state and one request's work; absent fields take ALLOCATION_LIMIT_DEFAULTS. */
  readonly limits?: Partial<AllocationLimits>;
  /**
   * The kernel data plane (src/dataplane), when loaded: told which channels it may relay
   * (allocation/offload.ts). Absent: every packet takes the JavaScript path.
   */
  readonly offload?: ChannelOffload;
  /** Bandwidth limits (turn/bandwidth.ts): per allocation, per user across the cluster, per node. Absent: none. */
  readonly bandwidth?: BandwidthOptions;
  /**
   * RFC 6062 TCP allocations (on unless --no-tcp-relay): binds their relayed transport
   * addresses. Absent: REQUESTED-TRANSPORT TCP gets 442.
   */
  readonly tcpRelays?: TcpRelayFactory;
  /** RFC 8016 mobility (--mobility): seals and opens MOBILITY-TICKETs. Absent: any ticket gets 405. */
  readonly mobility?: MobilityTickets;
}

// What every part of the engine shares, built once by TurnEngine: the options, the
// allocation table, reply sealing, authentication, store write-through, the relay
// allocator and the peer data path. Method handlers take it as their first argument.

import type { Authenticator } from './auth/authenticate.js';
import type { AllocationTable } from './allocation/table.js';
import type { BandwidthLimits } from './bandwidth.js';
import type { TcpConnectionIds } from './allocation/tcp-connections.js';
import type { WriteThrough } from './allocation/write-through.js';
import type { DropReason } from './counters.js';
import type { AllocationLimits } from './limits.js';
import type { CapacityRefusals } from './methods/allocate.js';
import type { PeerData } from './methods/data.js';
import type { EngineOptions } from './options.js';
import type { RelayAllocator } from './relay/relay-allocator.js';
import type { Replies } from './reply.js';

export interface TurnContext {
  readonly o: EngineOptions;
  readonly limits: AllocationLimits;
  readonly table: AllocationTable;
  readonly replies: Replies;
  readonly auth: Authenticator;
  readonly writer: WriteThrough;
  readonly relays: RelayAllocator;
  readonly refusals: CapacityRefusals;
  /** Peer -> client: where a relay socket's packets go. */
  readonly peerData: PeerData;
  /** Bandwidth limits: the gates the table gives allocations, and the per-user exchange. */
  readonly bandwidth: BandwidthLimits;
  /** RFC 6062: every peer data connection of the node by CONNECTION-ID. */
  readonly tcpConnections: TcpConnectionIds;
  /** The clock for the expiry checks on every relayed packet: its coarse reading if it has one. */
  readonly packetClock: () => number;
  /** True once stop() began: nothing new lands. */
  readonly stopped: boolean;
  readonly anycastRelay: boolean;
  drop(reason: DropReason): void;
}

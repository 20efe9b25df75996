// Plain numeric counters the engine bumps on every path (cheap: no labels, no
// hashing on the packet path). ops/metrics exposes them to Prometheus.

export const DROP_REASONS = [
  'malformed',
  'not_stun',
  'bad_fingerprint',
  'unexpected_class',
  'no_allocation',
  'no_permission',
  'no_channel',
  'bad_channel_data',
  'bad_send_indication',
  'unknown_required_attribute',
  'send_queue_full',
  'request_in_flight',
  /** An error answer to an unauthenticated request over the per-source rate (turn/rate-limit.ts). */
  'rate_limited',
  /** A datagram from UDP source port 0 (client or peer): nothing can be sent back to it. */
  'source_port_zero',
  /** A Send indication to peer port 0: no datagram can go there. */
  'bad_peer_port',
  /** A peer datagram too large to frame for the client (a Data indication's 16-bit length). */
  'too_large',
  /** A Send indication or ChannelData to a service port of a server or cluster address (turn/peer-policy.ts). */
  'peer_service_port',
  /** A Send indication or ChannelData to a port of the server's own address that is not a relayed port (turn/peer-policy.ts). */
  'peer_server_port',
  /** Relayed data over a bandwidth limit (--max-bps, --user-max-bps, --bps-capacity; turn/bandwidth.ts). */
  'bandwidth',
  /** A Send indication or ChannelData on a TCP allocation (RFC 6062 §5.1: data goes over data connections). */
  'tcp_allocation',
  /** An inbound peer connection to a TCP allocation without a permission, or refused by the peer policy (RFC 6062 §5.3): closed. */
  'tcp_peer_refused',
  /** A peer data connection no ConnectionBind claimed within 30 s (RFC 6062 §5.2, §5.3): closed. */
  'tcp_bind_timeout',
  /**
   * A datagram on a shared relay socket (--relay-sockets shared) without the kernel's
   * trailer, or for a relayed port nobody holds (docs/dataplane.md §8).
   */
  'no_steer_trailer',
] as const;
export type DropReason = (typeof DROP_REASONS)[number];

/** Results of relay socket binds: ok, port in use, out of descriptors (EMFILE/ENFILE), any other error. */
export const BIND_RESULTS = ['ok', 'in_use', 'no_descriptors', 'error'] as const;
export type BindResult = (typeof BIND_RESULTS)[number];

/**
 * Why an Allocate was refused for capacity (508, or 486 for user_quota): the quotas, a full relay port range (or its collision budget spent), no descriptors
 * (EMFILE/ENFILE), or another bind error that is not "address in use".
 */
export const ALLOCATE_REFUSAL_REASONS = ['total_quota', 'user_quota', 'relay_ports_full', 'no_descriptors', 'bind_error'] as const;
export type AllocateRefusalReason = (typeof ALLOCATE_REFUSAL_REASONS)[number];

/** RFC 6062 peer data connections: made by a Connect, failed (447), accepted from a peer and announced, joined by a ConnectionBind. */
export const TCP_PEER_OUTCOMES = ['connected', 'connect_failed', 'accepted', 'bound'] as const;
export type TcpPeerOutcome = (typeof TCP_PEER_OUTCOMES)[number];

/** What two allocations made during a store outage can claim twice: a relayed port (anycast relay mode), a 5-tuple. */
export const STORE_CONFLICT_KINDS = ['relay_port', 'five_tuple'] as const;
export type StoreConflictKind = (typeof STORE_CONFLICT_KINDS)[number];
export type StoreConflictOutcome = 'kept' | 'lost';

export class EngineCounters {
  readonly drops: Record<DropReason, number> = Object.fromEntries(DROP_REASONS.map((r) => [r, 0])) as Record<DropReason, number>;
  /** "method code" -> count, e.g. "allocate 200", "allocate 401". */
  readonly requests = new Map<string, number>();
  packetsClientToPeer = 0;
  bytesClientToPeer = 0;
  packetsPeerToClient = 0;
  bytesPeerToClient = 0;
  authFailures = 0;
  quotaRefusals = 0;
  peerPolicyRefusals = 0;
  /** Requests refused with 508 for a per-allocation or per-request cap (engine AllocationLimits). */
  limitRefusals = 0;
  /** Of those, permissions and channels in records from the store (Allocation.merge), not installed. */
  storePeerRefusals = 0;
  allocationsCreated = 0;
  allocationsDeleted = 0;
  storeErrors = 0;
  readonly relayBinds: Record<BindResult, number> = { ok: 0, in_use: 0, no_descriptors: 0, error: 0 };
  readonly allocateRefusals: Record<AllocateRefusalReason, number> = Object.fromEntries(ALLOCATE_REFUSAL_REASONS.map((r) => [r, 0])) as Record<
    AllocateRefusalReason,
    number
  >;
  /** Anycast relay mode: allocations taken on from the store, and ones that could not be. */
  allocationsAdopted = 0;
  replicaFailures = 0;
  /** Allocations made while the store was unreachable (fail open, docs/architecture.md §5). */
  allocationsLocalOnly = 0;
  /** Of those, written to the store once it came back. */
  allocationsWrittenBack = 0;
  /** Conflicts settled after an outage (store-conflicts.ts), by what was claimed twice and whether this node kept it. */
  readonly storeConflicts: Record<StoreConflictKind, Record<StoreConflictOutcome, number>> = {
    relay_port: { kept: 0, lost: 0 },
    five_tuple: { kept: 0, lost: 0 },
  };
  /** RFC 8016: allocations moved to a new client 5-tuple, and MOBILITY-TICKETs refused (405, 400, 437, 441). */
  mobilityMoves = 0;
  mobilityRefusals = 0;
  /** RFC 6062 peer data connections by outcome (methods/connect.ts, connection-bind.ts). */
  readonly tcpPeerConnections: Record<TcpPeerOutcome, number> = { connected: 0, connect_failed: 0, accepted: 0, bound: 0 };
  /** Allocations written back after an outage that put their user over --user-quota (tolerated, logged). */
  userQuotaOverruns = 0;

  /** Observer for request handling time, receipt to response, in seconds (set by the metrics module). */
  observeRequestSeconds: (method: string, seconds: number) => void = () => undefined;

  /** method -> code -> the key of `requests`: built once per pair, not once per request. */
  private readonly requestKeys = new Map<string, Map<number, string>>();

  countRequest(method: string, code: number): void {
    let byCode = this.requestKeys.get(method);
    if (byCode === undefined) this.requestKeys.set(method, (byCode = new Map()));
    let key = byCode.get(code);
    if (key === undefined) byCode.set(code, (key = `${method} ${code}`));
    this.requests.set(key, (this.requests.get(key) ?? 0) + 1);
  }
}

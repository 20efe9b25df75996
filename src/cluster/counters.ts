/**
 * Why a mesh frame was refused (cluster/mesh.ts): not a frame of this version, a
 * failed authentication tag, a timestamp too far from this node's clock, a sequence
 * number already seen (or behind the replay window), a sender field that is not the
 * UDP source, or (server.ts) no listener for the client's server address.
 */
export const MESH_REJECT_REASONS = ['malformed', 'bad_tag', 'stale', 'replayed', 'wrong_sender', 'no_listener'] as const;
export type MeshRejectReason = (typeof MESH_REJECT_REASONS)[number];

/** Cluster figures, bumped as plain numbers; ops/metrics exposes them. */
export class ClusterCounters {
  /** Client packets sent to their allocation's owner over the mesh. */
  meshForwarded = 0;
  /** Authenticated client packets received from other nodes. */
  meshReceived = 0;
  /** Client packets not forwarded because, framed, they would not fit in one UDP datagram. */
  meshTooLarge = 0;
  /** Mesh frames refused, by reason. */
  readonly meshRejected: Record<MeshRejectReason, number> = Object.fromEntries(MESH_REJECT_REASONS.map((r) => [r, 0])) as Record<MeshRejectReason, number>;
  storeLookups = 0;
  storeLookupErrors = 0;
  /** Lookups skipped because unknown 5-tuples came faster than the lookup budget. */
  lookupsRateLimited = 0;
  /** 5-tuples found to belong to a live allocation on another node (picked up after a reroute). */
  allocationsResumed = 0;
  /** Records removed because their owner's heartbeat had expired. */
  deadOwnerCleanups = 0;
  heartbeatFailures = 0;
  /** Anycast relay mode: how long the start-up sync from the store took (0 until it is over). */
  startupSyncSeconds = 0;
  /** Observer for store lookup latency in seconds (set by the metrics module). */
  observeLookupSeconds: (seconds: number) => void = () => undefined;
}

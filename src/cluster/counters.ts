/** Cluster figures, bumped as plain numbers; ops/metrics exposes them. */
export class ClusterCounters {
  /** Client packets sent to their allocation's owner over the mesh. */
  meshForwarded = 0;
  /** Authenticated client packets received from other nodes. */
  meshReceived = 0;
  /** Mesh frames refused (bad tag or malformed). */
  meshRejected = 0;
  storeLookups = 0;
  storeLookupErrors = 0;
  /** Lookups skipped because unknown 5-tuples came faster than the lookup budget. */
  lookupsRateLimited = 0;
  /** 5-tuples found to belong to a live allocation on another node (picked up after a reroute). */
  allocationsResumed = 0;
  /** Records removed because their owner's heartbeat had expired. */
  deadOwnerCleanups = 0;
  heartbeatFailures = 0;
  /** Observer for store lookup latency in seconds (set by the metrics module). */
  observeLookupSeconds: (seconds: number) => void = () => undefined;
}

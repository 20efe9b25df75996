// What the Redis store takes as options (shared by the connection, the allocation
// store and the node registry), and the defaults more than one of them use.

export interface RedisStoreLogger {
  warn(obj: object, msg: string): void;
  info(obj: object, msg: string): void;
}

export interface RedisStoreOptions {
  readonly logger?: RedisStoreLogger;
  /** Called on every transition of the command connection (true = ready). */
  readonly onAvailability?: (up: boolean) => void;
  /** Prepended to every key and to the event channel; default "anyturn:". No braces. */
  readonly keyPrefix?: string;
  /** Milliseconds since the epoch (this node's clock); injected for tests. */
  readonly now?: () => number;
  /** Backstop TTL beyond a record's expiry; default 60 s. */
  readonly expiryGraceMs?: number;
  /** Per-command deadline; default 500 ms. A STUN transaction must not wait on a dead Redis. */
  readonly commandTimeoutMs?: number;
  /** TCP (and TLS) connect deadline; default 2000 ms. */
  readonly connectTimeoutMs?: number;
  /** How often the store publishes its own heartbeat on the event channel while subscribed; default 1000 ms. */
  readonly eventHeartbeatMs?: number;
  /**
   * How long a heartbeat that Redis accepted may go unseen by this store's own
   * subscriber before the subscriber connection is torn down and made again;
   * default 3000 ms.
   */
  readonly eventStaleMs?: number;
  /** Called after the event subscriber was recreated (events published in the gap are lost). */
  readonly onEventsResubscribed?: () => void;
  /** Redis Cluster: how often CLUSTER INFO is asked whether every slot is served; default 1000 ms. */
  readonly clusterProbeMs?: number;
}

export const DEFAULT_CONNECT_TIMEOUT_MS = 2_000;

export const silentLogger: RedisStoreLogger = { warn() {}, info() {} };

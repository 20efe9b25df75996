// The connections to the shared store: the command connection, the subscriber, and
// whether the store is available.
//
// High availability: the target is one Redis by URL, a master found through
// Sentinel, or a Redis Cluster (RedisTarget). Every one keeps the request path
// fail-fast (no offline queue, a per-command deadline, reconnect forever). Since
// every script touches one key and every other command one key, nothing can
// answer CROSSSLOT on a Cluster; PUBLISH is broadcast to every Cluster node. After
// a failover a subscriber can stay attached to a node that no longer hears the
// PUBLISHes without ioredis noticing; the store's heartbeat on its own channel
// finds that and recreates the subscriber (EventWatchdog). Replication is
// asynchronous: a failover can lose the last writes the old master acknowledged;
// the server re-writes its live allocations when the store comes back.

import { Cluster, Redis, type RedisOptions } from 'ioredis';

import { clusterRedisOptions, redisTlsOptions, requestPathRedisOptions, sentinelRedisOptions } from './client-options.js';
import { silentLogger, type RedisStoreLogger, type RedisStoreOptions } from './options.js';
import { describeRedisTarget, toTarget, type RedisTarget } from './target.js';

/** A command (or subscriber) client: one Redis (plain or through Sentinel) or a Redis Cluster. */
export type RedisClient = Redis | Cluster;

const DEFAULT_CLUSTER_PROBE_MS = 1_000;
/** Consecutive failed CLUSTER INFO probes before the cluster counts as unreachable. */
const CLUSTER_PROBE_FAILURES = 2;
const ERROR_LOG_INTERVAL_MS = 10_000;

/**
 * The command connection (request path) plus a lazily created subscriber
 * connection. Owned by the store (store.close() closes it); the node registry
 * borrows the command connection. C is the client class: Redis for a URL or
 * Sentinel target, Cluster for a Redis Cluster.
 */
export class RedisConnection<C extends RedisClient = Redis> {
  /** The command connection. Not for subscriber mode. */
  readonly client: C;
  readonly target: RedisTarget;
  private subscriberClient: RedisClient | undefined;
  private readonly options: RedisStoreOptions;
  private readonly logger: RedisStoreLogger;
  private readonly onAvailability: ((up: boolean) => void) | undefined;
  private readonly where: string;
  private up = false;
  private closed = false;
  /** Redis Cluster only: false while CLUSTER INFO says a slot is unserved (or the probe keeps failing). */
  private clusterHealthy = true;
  private clusterProbeFailures = 0;
  private clusterProbeTimer: NodeJS.Timeout | undefined;
  private clusterProbing = false;
  private readonly errorLog = new Map<string, { lastAtMs: number; suppressed: number }>();

  constructor(target: string | RedisTarget, options: RedisStoreOptions = {}) {
    this.target = toTarget(target);
    this.options = options;
    this.where = describeRedisTarget(this.target);
    this.logger = options.logger ?? silentLogger;
    this.onAvailability = options.onAvailability;
    this.client = this.createClient('command') as C;
    this.watch(this.client, 'command', true);
    if (this.target.kind === 'cluster') this.startClusterProbe();
  }

  /** A new client for the target: the command client fails fast; the subscriber waits for its connection. */
  private createClient(role: 'command' | 'subscriber'): RedisClient {
    const connectionName = role === 'command' ? 'anyturn' : 'anyturn-events';
    // Subscriber commands are not on the request path: let SUBSCRIBE wait for the
    // connection (offline queue on, no per-command timeout); ioredis re-subscribes by
    // itself after every reconnect (autoResubscribe), and the store's heartbeat
    // watchdog replaces the connection when that silently fails.
    const subscriberOverrides: RedisOptions = { enableOfflineQueue: true, maxRetriesPerRequest: null, commandTimeout: undefined, autoResubscribe: true };
    const t = this.target;
    switch (t.kind) {
      case 'url': {
        const base = {
          ...requestPathRedisOptions(this.options),
          ...(t.password !== undefined ? { password: t.password } : {}),
          ...(t.tls ? { tls: redisTlsOptions(t.tls) } : {}),
          connectionName,
        };
        return new Redis(t.url, role === 'command' ? base : { ...base, ...subscriberOverrides });
      }
      case 'sentinel': {
        const base = { ...sentinelRedisOptions(t, this.options), connectionName };
        return new Redis(role === 'command' ? base : { ...base, ...subscriberOverrides });
      }
      case 'cluster': {
        const base = clusterRedisOptions(t, this.options);
        const nodes = t.nodes.map((n) => ({ host: n.host, port: n.port }));
        if (role === 'command') return new Cluster(nodes, { ...base, redisOptions: { ...base.redisOptions, connectionName } });
        // Pub/sub through the Cluster client: it subscribes on one node (PUBLISH is
        // broadcast over the cluster bus to every node) and picks another node when
        // that one goes away.
        const { commandTimeout: _drop, ...redisOptions } = base.redisOptions ?? {};
        void _drop;
        return new Cluster(nodes, { ...base, enableOfflineQueue: true, redisOptions: { ...redisOptions, connectionName } });
      }
    }
  }

  private watch(client: RedisClient, role: string, tracksAvailability: boolean): void {
    // An ioredis 'error' without a listener would be thrown as an unhandled error.
    client.on('error', (err: unknown) => this.logError(role, err));
    if (client instanceof Cluster) client.on('node error', (err: unknown) => this.logError(`${role}-node`, err));
    client.on('ready', () => {
      this.logger.info({ role, redis: this.where }, 'redis connection ready');
      if (tracksAvailability) this.refreshAvailability();
    });
    const down = (): void => {
      if (tracksAvailability) this.refreshAvailability();
    };
    client.on('close', down);
    client.on('end', down);
  }

  private refreshAvailability(): void {
    this.setUp(!this.closed && this.client.status === 'ready' && this.clusterHealthy);
  }

  private setUp(up: boolean): void {
    if (this.up === up) return;
    this.up = up;
    if (!up && !this.closed) this.logger.warn({ redis: this.where }, 'redis connection lost; reconnecting');
    try {
      this.onAvailability?.(up);
    } catch (err) {
      this.logger.warn({ err }, 'redis availability callback threw');
    }
  }

  /*
   * Redis Cluster keeps its client 'ready' while one master is dead: every command
   * to that master's slots fails (and with cluster-require-full-coverage, every
   * command) until a replica takes over. CLUSTER INFO's cluster_state says so;
   * availability follows it, and a failover shows as down-then-up (the server
   * re-syncs its live allocations after such a transition).
   */
  private startClusterProbe(): void {
    const intervalMs = this.options.clusterProbeMs ?? DEFAULT_CLUSTER_PROBE_MS;
    this.clusterProbeTimer = setInterval(() => void this.probeCluster(), intervalMs);
    this.clusterProbeTimer.unref();
  }

  private async probeCluster(): Promise<void> {
    if (this.closed || this.clusterProbing || this.client.status !== 'ready') return;
    this.clusterProbing = true;
    try {
      const info = String(await this.client.cluster('INFO'));
      this.clusterProbeFailures = 0;
      const state = /cluster_state:(\w+)/.exec(info)?.[1];
      this.clusterHealthy = state === 'ok';
    } catch {
      this.clusterProbeFailures++;
      if (this.clusterProbeFailures >= CLUSTER_PROBE_FAILURES) this.clusterHealthy = false;
    } finally {
      this.clusterProbing = false;
    }
    if (!this.closed) this.refreshAvailability();
  }

  /** warn, at most once per interval per connection, with a count of what was suppressed. */
  private logError(role: string, err: unknown): void {
    const now = Date.now();
    const entry = this.errorLog.get(role);
    if (entry && now - entry.lastAtMs < ERROR_LOG_INTERVAL_MS) {
      entry.suppressed++;
      return;
    }
    const message = err instanceof Error ? err.message : String(err);
    this.logger.warn({ role, redis: this.where, err: message, suppressed: entry?.suppressed ?? 0 }, 'redis connection error');
    this.errorLog.set(role, { lastAtMs: now, suppressed: 0 });
  }

  isAvailable(): boolean {
    return !this.closed && this.client.status === 'ready' && this.clusterHealthy;
  }

  /** Resolves once the command connection is ready; rejects after timeoutMs. */
  waitUntilReady(timeoutMs = 5_000): Promise<void> {
    if (this.isAvailable()) return Promise.resolve();
    return new Promise<void>((resolve, reject) => {
      const onReady = (): void => {
        clearTimeout(timer);
        resolve();
      };
      const timer = setTimeout(() => {
        this.client.off('ready', onReady);
        reject(new Error(`redis not ready after ${timeoutMs} ms`));
      }, timeoutMs);
      this.client.once('ready', onReady);
    });
  }

  /** The subscriber-mode connection, created on first use. */
  subscriber(): RedisClient {
    if (this.closed) throw new Error('store is closed');
    if (!this.subscriberClient) {
      const client = this.createClient('subscriber');
      this.watch(client, 'subscriber', false);
      this.subscriberClient = client;
    }
    return this.subscriberClient;
  }

  /** Drops the subscriber connection (no reconnect); the next subscriber() makes a new one. */
  resetSubscriber(): void {
    const old = this.subscriberClient;
    this.subscriberClient = undefined;
    if (!old) return;
    old.removeAllListeners('message');
    // Keep an 'error' listener: a late socket error on the dying client must not throw.
    old.disconnect();
  }

  isClosed(): boolean {
    return this.closed;
  }

  /** Quits both connections; never throws (also when Redis is already down). */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    if (this.clusterProbeTimer) clearInterval(this.clusterProbeTimer);
    await Promise.all([quietly(this.client), this.subscriberClient ? quietly(this.subscriberClient) : Promise.resolve()]);
    this.setUp(false);
  }
}

async function quietly(client: RedisClient): Promise<void> {
  if (client.status === 'end') return;
  if (client.status !== 'ready') {
    client.disconnect();
    return;
  }
  try {
    await client.quit();
  } catch {
    // disconnected below
  }
  // Also after QUIT: only disconnect() reaches the Sentinel connector, whose failover
  // detector otherwise keeps its subscriptions on the sentinels open for good.
  client.disconnect();
}

// The shared AllocationStore and NodeRegistry on Redis (ioredis), for clusters.
//
// Key layout (prefix "anyturn:" by default). Every key carries a hash tag, so
// each one maps to a single Redis Cluster slot, and every script touches exactly
// one key: nothing here needs the keys to share a slot.
//
//   <p>alloc:{<5-tuple key>}    hash  v = version, r = record JSON, i = identity
//                                      JSON [relayedAddress, relayedPort, username],
//                                      o = ownerNodeId JSON, c = create-attempt nonce
//   <p>port:{<relay ip>|<port>} string  the 5-tuple key of the allocation holding the
//                                      relayed port, or "resv|<token tag>"
//   <p>user:{<sha256(username)>} zset   5-tuple keys of the user's allocations, scored
//                                      by their backstop deadline (ms)
//   <p>resv:{<token tag>}        string  JSON {relayedAddress, relayedPort} (EVEN-PORT R)
//   <p>node:{<node id tag>}      string  JSON NodeInfo, PX = heartbeat ttl
//   <p>events                    pub/sub channel of allocation events (and each
//                                      store's own heartbeats, see EventWatchdog)
//
// Client-chosen strings (usernames, tokens) never appear in a key name: usernames
// are always hashed; addresses, 5-tuple keys, tokens and node ids are used as they
// are only when made of a small safe alphabet (no braces, spaces, quotes, '*'),
// otherwise hashed as '~<sha256>' ('~' is outside every safe alphabet, so a hashed
// name never equals a literal one). Values reach scripts only as ARGV.
//
// Expiry: the record's expiresAtMs is the clock (the owning node deletes expired
// allocations). Each key also carries a TTL as a backstop, so a crashed node can't
// leak state forever: deadline = max(expiresAtMs, now) + grace, set as a relative
// PEXPIRE/PX (relative, so clock skew between this node and Redis doesn't matter).
// The user zset scores use the same deadline, so a user's count heals itself when a
// node dies without deleting (members past their deadline are dropped).
//
// Never KEYS, and SCAN only in listAllocations (start-up sync, on every master of a
// Redis Cluster): every request-path lookup is by a computed key.
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

import { createHash, randomBytes } from 'node:crypto';

import { Cluster, Redis, type ClusterOptions, type RedisOptions } from 'ioredis';

import type {
  AllocationLimits,
  AllocationRecord,
  AllocationStore,
  ChannelRecord,
  ClientTransportKind,
  CreateOutcome,
  NewAllocationRecord,
  NodeInfo,
  NodeRegistry,
  ReservedPort,
  StoreEvent,
  StoreEventListener,
  UpdateOutcome,
} from './types.js';

// ---------------------------------------------------------------------------
// Options and connection

export interface RedisStoreLogger {
  warn(obj: object, msg: string): void;
  info(obj: object, msg: string): void;
}

export interface RedisHostPort {
  readonly host: string;
  readonly port: number;
}

/**
 * Where the shared store lives: one Redis by URL (--redis-url), a master found
 * through Sentinel (--redis-sentinel, --redis-sentinel-name), or Redis Cluster
 * (--redis-cluster). `password` is --redis-password (a URL carries its own).
 */
export type RedisTarget =
  | { readonly kind: 'url'; readonly url: string; readonly password?: string }
  | { readonly kind: 'sentinel'; readonly sentinels: readonly RedisHostPort[]; readonly name: string; readonly password?: string }
  | { readonly kind: 'cluster'; readonly nodes: readonly RedisHostPort[]; readonly password?: string };

/** A command (or subscriber) client: one Redis (plain or through Sentinel) or a Redis Cluster. */
export type RedisClient = Redis | Cluster;

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

export const DEFAULT_KEY_PREFIX = 'anyturn:';
const DEFAULT_GRACE_MS = 60_000;
const DEFAULT_COMMAND_TIMEOUT_MS = 500;
const DEFAULT_CONNECT_TIMEOUT_MS = 2_000;
const DEFAULT_EVENT_HEARTBEAT_MS = 1_000;
const DEFAULT_EVENT_STALE_MS = 3_000;
const DEFAULT_CLUSTER_PROBE_MS = 1_000;
/** Consecutive failed CLUSTER INFO probes before the cluster counts as unreachable. */
const CLUSTER_PROBE_FAILURES = 2;
const CLUSTER_SLOTS_REFRESH_MS = 5_000;
/** Reconnect attempts back off by 100 ms a try up to this: a failover (seconds) is found within half a second. */
const RECONNECT_BACKOFF_CAP_MS = 500;
const ERROR_LOG_INTERVAL_MS = 10_000;

const silentLogger: RedisStoreLogger = { warn() {}, info() {} };

/** Capped backoff, forever: a number means "wait that long, then try again". */
function reconnectForever(times: number): number {
  return Math.min(times * 100, RECONNECT_BACKOFF_CAP_MS);
}

/**
 * A demoted master (after a Sentinel failover that didn't kill it) answers writes
 * with READONLY: reconnect, so the Sentinel connector finds the new master. The
 * failed command is not resent (true, not 2): the request path fails fast.
 */
function reconnectOnReadOnly(err: Error): boolean {
  return err.message.startsWith('READONLY');
}

/** ioredis options for the request path: fail fast while down, reconnect forever. */
export function requestPathRedisOptions(options: RedisStoreOptions = {}): RedisOptions {
  return {
    // Commands issued while disconnected reject at once instead of queueing.
    enableOfflineQueue: false,
    maxRetriesPerRequest: 1,
    commandTimeout: options.commandTimeoutMs ?? DEFAULT_COMMAND_TIMEOUT_MS,
    connectTimeout: options.connectTimeoutMs ?? DEFAULT_CONNECT_TIMEOUT_MS,
    enableReadyCheck: true,
    retryStrategy: reconnectForever,
    reconnectOnError: reconnectOnReadOnly,
    lazyConnect: false,
  };
}

/**
 * Sentinel: the same fail-fast options; the master is asked of the sentinels on
 * every (re)connect and its role checked (role: 'master'), the sentinels are
 * retried forever, and the failover detector (a subscription to +switch-master
 * on the sentinels) drops the connection as soon as a failover is announced.
 */
export function sentinelRedisOptions(target: Extract<RedisTarget, { kind: 'sentinel' }>, options: RedisStoreOptions = {}): RedisOptions {
  return {
    ...requestPathRedisOptions(options),
    sentinels: target.sentinels.map((s) => ({ host: s.host, port: s.port })),
    name: target.name,
    role: 'master',
    ...(target.password !== undefined ? { password: target.password } : {}),
    sentinelRetryStrategy: reconnectForever,
    sentinelCommandTimeout: options.commandTimeoutMs ?? DEFAULT_COMMAND_TIMEOUT_MS,
    failoverDetector: true,
    // Sentinels may be hostnames: keep the list the operator gave in front.
    updateSentinels: true,
  };
}

/**
 * Redis Cluster: no offline queue, a per-command deadline on every node
 * connection (set once per command, so redirects and failover retries stay
 * inside it), reconnect forever when no node answers, writes and reads on
 * masters only, and a periodic slots refresh so a promoted replica is found
 * without waiting for a MOVED.
 */
export function clusterRedisOptions(target: Extract<RedisTarget, { kind: 'cluster' }>, options: RedisStoreOptions = {}): ClusterOptions {
  const commandTimeout = options.commandTimeoutMs ?? DEFAULT_COMMAND_TIMEOUT_MS;
  return {
    redisOptions: {
      commandTimeout,
      connectTimeout: options.connectTimeoutMs ?? DEFAULT_CONNECT_TIMEOUT_MS,
      maxRetriesPerRequest: 1,
      enableReadyCheck: true,
      reconnectOnError: reconnectOnReadOnly,
      ...(target.password !== undefined ? { password: target.password } : {}),
    },
    clusterRetryStrategy: reconnectForever,
    enableOfflineQueue: false,
    enableReadyCheck: true,
    scaleReads: 'master',
    retryDelayOnFailover: 100,
    retryDelayOnClusterDown: 100,
    retryDelayOnTryAgain: 100,
    slotsRefreshTimeout: Math.max(commandTimeout, 1_000),
    slotsRefreshInterval: CLUSTER_SLOTS_REFRESH_MS,
    lazyConnect: false,
  };
}

function validatePrefix(prefix: string): string {
  if (!/^[A-Za-z0-9:_.-]*$/.test(prefix)) {
    throw new Error(`redis key prefix ${JSON.stringify(prefix)} may only contain letters, digits and ":_.-"`);
  }
  return prefix;
}

/** Strips credentials from a Redis URL before it is logged. */
function redactUrl(url: string): string {
  try {
    const u = new URL(url);
    if (u.password) u.password = '***';
    return u.toString();
  } catch {
    return '<unparseable redis url>';
  }
}

/** The target for logs (never a password). */
export function describeRedisTarget(target: RedisTarget): string {
  const list = (nodes: readonly RedisHostPort[]): string => nodes.map((n) => `${n.host.includes(':') ? `[${n.host}]` : n.host}:${n.port}`).join(',');
  switch (target.kind) {
    case 'url':
      return redactUrl(target.url);
    case 'sentinel':
      return `sentinel ${target.name} via ${list(target.sentinels)}`;
    case 'cluster':
      return `cluster ${list(target.nodes)}`;
  }
}

function toTarget(target: string | RedisTarget): RedisTarget {
  const t: RedisTarget = typeof target === 'string' ? { kind: 'url', url: target } : target;
  if (t.kind === 'url' && !/^rediss?:\/\//i.test(t.url)) {
    throw new Error(`--redis-url must start with redis:// or rediss:// (got ${JSON.stringify(redactUrl(t.url))})`);
  }
  if (t.kind === 'sentinel' && (t.sentinels.length === 0 || t.name === '')) throw new Error('--redis-sentinel needs at least one host:port and --redis-sentinel-name');
  if (t.kind === 'cluster' && t.nodes.length === 0) throw new Error('--redis-cluster needs at least one host:port');
  return t;
}

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
        const base = { ...requestPathRedisOptions(this.options), ...(t.password !== undefined ? { password: t.password } : {}), connectionName };
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

// ---------------------------------------------------------------------------
// Key names

const SAFE_ADDRESS = /^[0-9A-Za-z.:%_-]{1,64}$/;
const SAFE_FIVE_TUPLE = /^(udp|tcp|tls)\|[0-9A-Za-z.:%_-]{1,64}\|\d{1,5}\|[0-9A-Za-z.:%_-]{1,64}\|\d{1,5}$/;
const SAFE_TOKEN = /^[0-9a-fA-F]{1,128}$/;
const SAFE_NODE_ID = /^[A-Za-z0-9._:-]{1,128}$/;

function sha256Hex(text: string): string {
  return createHash('sha256').update(text, 'utf8').digest('hex');
}

/** `text` when it matches `safe`, otherwise '~' + its SHA-256 (never a literal). */
function tag(text: string, safe: RegExp): string {
  return safe.test(text) ? text : `~${sha256Hex(text)}`;
}

class KeySpace {
  readonly events: string;
  constructor(private readonly prefix: string) {
    this.events = `${prefix}events`;
  }
  alloc(fiveTupleKey: string): string {
    return `${this.prefix}alloc:{${tag(fiveTupleKey, SAFE_FIVE_TUPLE)}}`;
  }

  /** SCAN pattern of every allocation key (start-up sync only). */
  allocPattern(): string {
    return `${this.prefix}alloc:{*`;
  }
  port(relayedAddress: string, relayedPort: number): string {
    return `${this.prefix}port:{${tag(relayedAddress, SAFE_ADDRESS)}|${relayedPort}}`;
  }
  user(username: string): string {
    return `${this.prefix}user:{${sha256Hex(username)}}`;
  }
  tokenTag(token: string): string {
    return tag(token, SAFE_TOKEN);
  }
  reservation(token: string): string {
    return `${this.prefix}resv:{${this.tokenTag(token)}}`;
  }
  node(nodeId: string): string {
    return `${this.prefix}node:{${tag(nodeId, SAFE_NODE_ID)}}`;
  }
}

// ---------------------------------------------------------------------------
// Lua scripts: each touches exactly one key (KEYS[1]); all values come as ARGV.

class LuaScript {
  readonly sha: string;
  constructor(readonly lua: string) {
    this.sha = createHash('sha1').update(lua).digest('hex');
  }

  /** EVALSHA, falling back to EVAL once when the server doesn't know it (e.g. after a restart). */
  async run(client: RedisClient, key: string, ...args: (string | number)[]): Promise<unknown> {
    try {
      return await client.evalsha(this.sha, 1, key, ...args);
    } catch (err) {
      if (err instanceof Error && err.message.startsWith('NOSCRIPT')) return await client.eval(this.lua, 1, key, ...args);
      throw err;
    }
  }
}

/** ARGV: holder, ttlMs. 1 = claimed, 2 = already held by this holder, 0 = held by someone else. */
const CLAIM_PORT = new LuaScript(`
local holder = redis.call('GET', KEYS[1])
if not holder then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
if holder == ARGV[1] then return 2 end
return 0`);

/** ARGV: holder. Deletes the key only while it still holds `holder`. */
const RELEASE_IF_HELD = new LuaScript(`
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0`);

/** ARGV: holder, ttlMs. Moves the TTL only while the key still holds `holder`. */
const TOUCH_IF_HELD = new LuaScript(`
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 0`);

/**
 * The quota check on the user's zset. ARGV: member, score (deadline ms), now ms,
 * quota (0 = unlimited), ttlMs of the zset. Drops members past their deadline first.
 * 1 = added, 2 = already a member, 0 = at quota.
 */
const USER_ADD = new LuaScript(`
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[3])
if redis.call('ZSCORE', KEYS[1], ARGV[1]) then return 2 end
local quota = tonumber(ARGV[4])
if quota > 0 and redis.call('ZCARD', KEYS[1]) >= quota then return 0 end
redis.call('ZADD', KEYS[1], ARGV[2], ARGV[1])
local ttl = tonumber(ARGV[5])
if redis.call('PTTL', KEYS[1]) < ttl then redis.call('PEXPIRE', KEYS[1], ttl) end
return 1`);

/** ARGV: member, score, ttlMs. Moves an existing member's score (never re-adds a removed one). */
const USER_TOUCH = new LuaScript(`
if not redis.call('ZSCORE', KEYS[1], ARGV[1]) then return 0 end
redis.call('ZADD', KEYS[1], 'XX', ARGV[2], ARGV[1])
local ttl = tonumber(ARGV[3])
if redis.call('PTTL', KEYS[1]) < ttl then redis.call('PEXPIRE', KEYS[1], ttl) end
return 1`);

/**
 * The commit point of create. ARGV: record JSON, identity, owner JSON, ttlMs,
 * attempt nonce, channel, event JSON. 1 = created (and published), 0 = exists.
 */
const CREATE_ALLOC = new LuaScript(`
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('HSET', KEYS[1], 'v', '1', 'r', ARGV[1], 'i', ARGV[2], 'o', ARGV[3], 'c', ARGV[5])
redis.call('PEXPIRE', KEYS[1], ARGV[4])
redis.call('PUBLISH', ARGV[6], ARGV[7])
return 1`);

/**
 * Rolls back a create whose reply was lost (timeout): deletes the record only if it
 * is still version 1 of this attempt. ARGV: nonce, channel, event JSON.
 */
const UNDO_CREATE = new LuaScript(`
local cur = redis.call('HMGET', KEYS[1], 'v', 'c')
if cur[1] == '1' and cur[2] == ARGV[1] then
  redis.call('DEL', KEYS[1])
  redis.call('PUBLISH', ARGV[2], ARGV[3])
  return 1
end
return 0`);

/**
 * Compare-and-set on the version. ARGV: expected version, new record JSON, identity,
 * owner JSON, ttlMs, channel, event JSON.
 * {0} = missing, {1, current JSON} = conflict, {2, current JSON} = identity differs
 * (the caller re-bases on the stored identity), {3} = written (and published).
 */
const UPDATE_ALLOC = new LuaScript(`
local cur = redis.call('HMGET', KEYS[1], 'v', 'r', 'i')
if not cur[1] then return {0} end
if cur[1] ~= ARGV[1] then return {1, cur[2]} end
if cur[3] ~= ARGV[3] then return {2, cur[2]} end
redis.call('HSET', KEYS[1], 'v', tostring(tonumber(ARGV[1]) + 1), 'r', ARGV[2], 'o', ARGV[4])
redis.call('PEXPIRE', KEYS[1], ARGV[5])
redis.call('PUBLISH', ARGV[6], ARGV[7])
return {3}`);

/**
 * ARGV: expected version ('' = any), channel, event JSON without its closing part:
 * the script appends the stored owner and '}'. Returns the deleted record JSON or nil.
 */
const DELETE_ALLOC = new LuaScript(`
local cur = redis.call('HMGET', KEYS[1], 'v', 'r', 'o')
if not cur[1] then return false end
if ARGV[1] ~= '' and cur[1] ~= ARGV[1] then return false end
redis.call('DEL', KEYS[1])
redis.call('PUBLISH', ARGV[2], ARGV[3] .. (cur[3] or '""') .. '}')
return cur[2]`);

/** GETDEL for servers older than 6.2: the value, once. */
const TAKE = new LuaScript(`
local v = redis.call('GET', KEYS[1])
if v then redis.call('DEL', KEYS[1]) end
return v`);

// ---------------------------------------------------------------------------
// Records and events as JSON, read defensively

const TRANSPORTS: ReadonlySet<string> = new Set<ClientTransportKind>(['udp', 'tcp', 'tls']);

function isObject(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

function isFiniteNumber(v: unknown): v is number {
  return typeof v === 'number' && Number.isFinite(v);
}

/** Exactly the record's fields, in a fixed order, as fresh plain data. */
function canonical(r: AllocationRecord): AllocationRecord {
  const permissions: Record<string, number> = {};
  for (const [peer, expiresAtMs] of Object.entries(r.permissions)) permissions[peer] = expiresAtMs;
  const channels: Record<string, ChannelRecord> = {};
  for (const [number, c] of Object.entries(r.channels)) {
    channels[number] = { peerAddress: c.peerAddress, peerPort: c.peerPort, expiresAtMs: c.expiresAtMs };
  }
  return {
    key: r.key,
    transport: r.transport,
    clientAddress: r.clientAddress,
    clientPort: r.clientPort,
    serverAddress: r.serverAddress,
    serverPort: r.serverPort,
    relayedAddress: r.relayedAddress,
    relayedPort: r.relayedPort,
    ownerNodeId: r.ownerNodeId,
    username: r.username,
    realm: r.realm,
    createdAtMs: r.createdAtMs,
    expiresAtMs: r.expiresAtMs,
    permissions,
    channels,
    version: r.version,
  };
}

function toRecord(v: unknown): AllocationRecord | undefined {
  if (!isObject(v)) return undefined;
  const strings = ['key', 'clientAddress', 'serverAddress', 'relayedAddress', 'ownerNodeId', 'username', 'realm'] as const;
  const numbers = ['clientPort', 'serverPort', 'relayedPort', 'createdAtMs', 'expiresAtMs', 'version'] as const;
  for (const f of strings) if (typeof v[f] !== 'string') return undefined;
  for (const f of numbers) if (!isFiniteNumber(v[f])) return undefined;
  if (typeof v.transport !== 'string' || !TRANSPORTS.has(v.transport)) return undefined;
  if (!isObject(v.permissions) || !isObject(v.channels)) return undefined;
  for (const e of Object.values(v.permissions)) if (!isFiniteNumber(e)) return undefined;
  for (const c of Object.values(v.channels)) {
    if (!isObject(c) || typeof c.peerAddress !== 'string' || !isFiniteNumber(c.peerPort) || !isFiniteNumber(c.expiresAtMs)) return undefined;
  }
  return canonical(v as unknown as AllocationRecord);
}

function parseJson(text: unknown): unknown {
  if (typeof text !== 'string') return undefined;
  try {
    return JSON.parse(text) as unknown;
  } catch {
    return undefined;
  }
}

function decodeStoredRecord(text: unknown, key: string): AllocationRecord {
  const record = toRecord(parseJson(text));
  if (!record) throw new Error(`redis store: unreadable allocation record for ${key}`);
  return record;
}

function toStoreEvent(v: unknown): StoreEvent | undefined {
  if (!isObject(v)) return undefined;
  if (v.type === 'created' || v.type === 'updated') {
    const record = toRecord(v.record);
    return record ? { type: v.type, record } : undefined;
  }
  if (v.type === 'deleted' && typeof v.key === 'string' && typeof v.ownerNodeId === 'string' && typeof v.reason === 'string') {
    return { type: 'deleted', key: v.key, ownerNodeId: v.ownerNodeId, reason: v.reason };
  }
  return undefined;
}

function cloneEvent(e: StoreEvent): StoreEvent {
  return e.type === 'deleted' ? { ...e } : { type: e.type, record: canonical(e.record) };
}

function identityOf(r: { relayedAddress: string; relayedPort: number; username: string }): string {
  return JSON.stringify([r.relayedAddress, r.relayedPort, r.username]);
}

function checkTime(name: string, value: number): void {
  if (!Number.isFinite(value)) throw new TypeError(`redis store: ${name} must be a finite number (got ${value})`);
}

function checkPort(port: number): void {
  if (!Number.isInteger(port) || port < 0 || port > 65535) throw new TypeError(`redis store: bad relayed port ${port}`);
}

function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms).unref());
}

// ---------------------------------------------------------------------------
// The allocation store

export class RedisAllocationStore implements AllocationStore {
  readonly kind = 'redis';
  private readonly keys: KeySpace;
  private readonly now: () => number;
  private readonly graceMs: number;
  private readonly logger: RedisStoreLogger;
  private readonly listeners = new Set<StoreEventListener>();
  /** Identifies this writer in events (debugging; listeners get every writer's events). */
  private readonly origin = randomBytes(8).toString('hex');
  private subscribed = false;
  /** Pending initial SUBSCRIBE: writes wait (briefly) for it, so a listener sees this node's next write. */
  private subscribing: Promise<void> | undefined;
  private readonly subscribeWaitMs: number;
  /** Bumped whenever the subscriber connection is replaced: messages of an older one are dropped. */
  private subscriberGeneration = 0;
  private readonly watchdog: EventWatchdog;

  constructor(
    private readonly connection: RedisConnection<RedisClient>,
    options: RedisStoreOptions = {},
  ) {
    this.keys = new KeySpace(validatePrefix(options.keyPrefix ?? DEFAULT_KEY_PREFIX));
    this.now = options.now ?? Date.now;
    this.graceMs = options.expiryGraceMs ?? DEFAULT_GRACE_MS;
    this.logger = options.logger ?? silentLogger;
    this.subscribeWaitMs = options.connectTimeoutMs ?? DEFAULT_CONNECT_TIMEOUT_MS;
    this.watchdog = new EventWatchdog({
      heartbeatMs: options.eventHeartbeatMs ?? DEFAULT_EVENT_HEARTBEAT_MS,
      staleMs: options.eventStaleMs ?? DEFAULT_EVENT_STALE_MS,
      publish: (seq) => this.publishHeartbeat(seq),
      canPublish: () => this.connection.isAvailable(),
      resubscribe: () => this.resubscribe(),
    });
    this.onEventsResubscribed = options.onEventsResubscribed;
  }

  private readonly onEventsResubscribed: (() => void) | undefined;

  isAvailable(): boolean {
    return this.connection.isAvailable();
  }

  /** Resolves once the command connection is ready (for startup; calls fail fast before). */
  waitUntilReady(timeoutMs?: number): Promise<void> {
    return this.connection.waitUntilReady(timeoutMs);
  }

  private get client(): RedisClient {
    return this.connection.client;
  }

  private async beforeWrite(): Promise<void> {
    if (this.connection.isClosed()) throw new Error('store is closed');
    if (this.subscribing && this.connection.isAvailable()) await Promise.race([this.subscribing, sleep(this.subscribeWaitMs)]);
  }

  private checkOpen(): void {
    if (this.connection.isClosed()) throw new Error('store is closed');
  }

  /** The backstop deadline of a record (this node's clock) and the matching relative TTL. */
  private backstop(expiresAtMs: number): { deadlineMs: number; ttlMs: number } {
    const now = this.now();
    const deadlineMs = Math.ceil(Math.max(expiresAtMs, now) + this.graceMs);
    return { deadlineMs, ttlMs: Math.max(1, deadlineMs - now) };
  }

  private warnStep(step: string, key: string, err: unknown): void {
    this.logger.warn({ step, allocation: key, err: err instanceof Error ? err.message : String(err) }, 'redis store: follow-up step failed; the key TTL will clean up');
  }

  private deletedEventPrefix(key: string, reason: string): string {
    // The delete script appends the stored owner (already JSON) and the closing brace.
    return `{"type":"deleted","key":${JSON.stringify(key)},"reason":${JSON.stringify(reason)},"origin":${JSON.stringify(this.origin)},"ownerNodeId":`;
  }

  /*
   * create: port, user and allocation keys live in different slots, so create is a
   * sequence of single-key atomic steps; the allocation key is written last and is
   * the commit point (its script also publishes 'created'):
   *   0. EXISTS on the allocation key: a retransmitted Allocate ('exists') costs
   *      nothing and leaves no trace.
   *   1. claim the relayed port (set if free, accept if it already names this key);
   *      'port-taken' before quota, so a port clash never touches the user's count.
   *   2. the quota script on the user's zset; 'user-quota' undoes step 1.
   *   3. create the allocation hash if absent; 'exists' (a racing create of the same
   *      5-tuple) undoes steps 1 and 2.
   * Why this order: the record becomes visible only once its port and quota are
   * held, so nobody ever reads an allocation that is then rolled back, and every
   * step before the commit is undone by deleting only what this attempt added
   * (compare-and-delete on the port, ZREM only when this attempt added the member).
   * On an error (Redis down, timeout) the same undo runs best-effort; a step whose
   * reply was lost may still have happened, so step 3 is undone by its nonce. What
   * the undo can't reach expires with the backstop TTLs.
   */
  async create(input: NewAllocationRecord, limits: AllocationLimits): Promise<CreateOutcome> {
    await this.beforeWrite();
    checkTime('expiresAtMs', input.expiresAtMs);
    checkPort(input.relayedPort);
    const record = canonical({ ...input, version: 1 });
    const allocKey = this.keys.alloc(record.key);
    const portKey = this.keys.port(record.relayedAddress, record.relayedPort);
    const userKey = this.keys.user(record.username);
    const { deadlineMs, ttlMs } = this.backstop(record.expiresAtMs);

    if ((await this.client.exists(allocKey)) === 1) return { ok: false, reason: 'exists' };

    let undoPort = true; // unknown until step 1 answers
    let undoUser = false;
    try {
      const claimed = await CLAIM_PORT.run(this.client, portKey, record.key, ttlMs);
      if (claimed === 0) return { ok: false, reason: 'port-taken' };
      undoPort = claimed === 1;

      undoUser = true;
      const quota = Math.max(0, Math.floor(limits.userQuota));
      const added = await USER_ADD.run(this.client, userKey, record.key, deadlineMs, this.now(), quota, ttlMs);
      undoUser = added === 1;
      if (added === 0) {
        await this.undoCreateSteps(record.key, portKey, undoPort, userKey, false);
        return { ok: false, reason: 'user-quota' };
      }

      const nonce = randomBytes(8).toString('hex');
      const recordJson = JSON.stringify(record);
      const event = JSON.stringify({ type: 'created', record, ownerNodeId: record.ownerNodeId, origin: this.origin });
      let committed: unknown;
      try {
        committed = await CREATE_ALLOC.run(
          this.client,
          allocKey,
          recordJson,
          identityOf(record),
          JSON.stringify(record.ownerNodeId),
          ttlMs,
          nonce,
          this.keys.events,
          event,
        );
      } catch (err) {
        // The reply is lost, not necessarily the write: take the record back first, and
        // only if that worked release the port and quota (else they'd be pulled from
        // under a record that may exist; the TTLs settle it).
        const rollback = `${this.deletedEventPrefix(record.key, 'create-rolled-back')}${JSON.stringify(record.ownerNodeId)}}`;
        try {
          await UNDO_CREATE.run(this.client, allocKey, nonce, this.keys.events, rollback);
        } catch (e) {
          this.warnStep('undo-create', record.key, e);
          undoPort = false;
          undoUser = false;
        }
        throw err;
      }
      if (committed !== 1) {
        await this.undoCreateSteps(record.key, portKey, undoPort, userKey, undoUser);
        return { ok: false, reason: 'exists' };
      }
      return { ok: true, record: canonical(record) };
    } catch (err) {
      await this.undoCreateSteps(record.key, portKey, undoPort, userKey, undoUser);
      throw err;
    }
  }

  /** Best-effort: never throws (what it can't undo expires with the backstop TTLs). */
  private async undoCreateSteps(key: string, portKey: string, port: boolean, userKey: string, user: boolean): Promise<void> {
    if (port) await RELEASE_IF_HELD.run(this.client, portKey, key).catch((e: unknown) => this.warnStep('undo-port', key, e));
    if (user) await this.client.zrem(userKey, key).catch((e: unknown) => this.warnStep('undo-quota', key, e));
  }

  async get(key: string): Promise<AllocationRecord | undefined> {
    this.checkOpen();
    const json = await this.client.hget(this.keys.alloc(key), 'r');
    if (json === null) return undefined;
    return decodeStoredRecord(json, key);
  }

  /**
   * Every allocation record, for a node taking on all of them at start (anycast
   * relay mode). A SCAN over the allocation keys: never on a request path.
   */
  async listAllocations(): Promise<AllocationRecord[]> {
    this.checkOpen();
    const out: AllocationRecord[] = [];
    // A SCAN sees one server's keys: on Redis Cluster, scan every master.
    const servers: Redis[] = this.client instanceof Cluster ? this.client.nodes('master') : [this.client];
    for (const server of servers) {
      await this.listFrom(server, out);
    }
    return out;
  }

  private async listFrom(server: Redis, out: AllocationRecord[]): Promise<void> {
    let cursor = '0';
    do {
      const [next, keys] = await server.scan(cursor, 'MATCH', this.keys.allocPattern(), 'COUNT', 500);
      cursor = next;
      for (const allocKey of keys) {
        const json = await this.client.hget(allocKey, 'r');
        if (json === null) continue;
        try {
          const record = JSON.parse(json) as AllocationRecord;
          if (typeof record.key === 'string') out.push(decodeStoredRecord(json, record.key));
        } catch {
          // a malformed record is skipped, as get() would refuse it
        }
      }
    } while (cursor !== '0');
  }

  /*
   * update: one compare-and-set script on the allocation key (version guard, the
   * identity fixed at creation, the backstop TTL, the 'updated' event), then the
   * port key's TTL and the user's zset score follow (best-effort: the allocation is
   * already written; both only move what still belongs to this allocation).
   */
  async update(next: AllocationRecord): Promise<UpdateOutcome> {
    await this.beforeWrite();
    checkTime('expiresAtMs', next.expiresAtMs);
    const allocKey = this.keys.alloc(next.key);
    let candidate = canonical(next);
    // At most twice: a second pass only when the caller's identity fields differed.
    for (let attempt = 0; attempt < 2; attempt++) {
      const expected = candidate.version;
      if (!Number.isSafeInteger(expected) || expected < 0) {
        const current = await this.get(next.key);
        return current ? { ok: false, reason: 'conflict', current } : { ok: false, reason: 'missing' };
      }
      const written = canonical({ ...candidate, version: expected + 1 });
      const { deadlineMs, ttlMs } = this.backstop(written.expiresAtMs);
      const event = JSON.stringify({ type: 'updated', record: written, ownerNodeId: written.ownerNodeId, origin: this.origin });
      const reply = await UPDATE_ALLOC.run(
        this.client,
        allocKey,
        String(expected),
        JSON.stringify(written),
        identityOf(written),
        JSON.stringify(written.ownerNodeId),
        ttlMs,
        this.keys.events,
        event,
      );
      if (!Array.isArray(reply)) throw new Error('redis store: unexpected reply to update');
      const [code, currentJson] = reply as [unknown, unknown];
      if (code === 0) return { ok: false, reason: 'missing' };
      if (code === 1) return { ok: false, reason: 'conflict', current: decodeStoredRecord(currentJson, next.key) };
      if (code === 2) {
        // The relayed address/port and username are fixed at creation: keep the stored ones.
        const stored = decodeStoredRecord(currentJson, next.key);
        candidate = canonical({ ...candidate, relayedAddress: stored.relayedAddress, relayedPort: stored.relayedPort, username: stored.username });
        continue;
      }
      await this.afterUpdate(written, deadlineMs, ttlMs);
      return { ok: true, record: written };
    }
    throw new Error('redis store: update could not settle the allocation identity');
  }

  private async afterUpdate(record: AllocationRecord, deadlineMs: number, ttlMs: number): Promise<void> {
    await Promise.all([
      TOUCH_IF_HELD.run(this.client, this.keys.port(record.relayedAddress, record.relayedPort), record.key, ttlMs).catch((e: unknown) =>
        this.warnStep('port-ttl', record.key, e),
      ),
      USER_TOUCH.run(this.client, this.keys.user(record.username), record.key, deadlineMs, ttlMs).catch((e: unknown) =>
        this.warnStep('quota-score', record.key, e),
      ),
    ]);
  }

  /*
   * delete: the script on the allocation key is the commit point (version guard,
   * 'deleted' event with the stored owner) and returns the stored record; then the
   * port is released if it still names this allocation, and the user's member goes.
   * If those follow-ups fail, the port key's TTL and the member's score expire them.
   */
  async delete(key: string, reason: string, expectedVersion?: number): Promise<boolean> {
    await this.beforeWrite();
    const expected = expectedVersion === undefined ? '' : String(expectedVersion);
    const stored = await DELETE_ALLOC.run(this.client, this.keys.alloc(key), expected, this.keys.events, this.deletedEventPrefix(key, reason));
    if (stored === null || stored === undefined) return false;
    let record: AllocationRecord;
    try {
      record = decodeStoredRecord(stored, key);
    } catch (err) {
      this.warnStep('decode-deleted', key, err);
      return true;
    }
    await Promise.all([
      RELEASE_IF_HELD.run(this.client, this.keys.port(record.relayedAddress, record.relayedPort), key).catch((e: unknown) => this.warnStep('release-port', key, e)),
      this.client.zrem(this.keys.user(record.username), key).catch((e: unknown) => this.warnStep('release-quota', key, e)),
    ]);
    return true;
  }

  async countUserAllocations(username: string): Promise<number> {
    this.checkOpen();
    return await this.client.zcount(this.keys.user(username), `(${this.now()}`, '+inf');
  }

  /*
   * reservePort: the token first (SET NX: a token in use refuses), then the port
   * (SET NX naming the token); a taken port deletes the token key again.
   */
  async reservePort(token: string, port: ReservedPort, ttlMs: number): Promise<boolean> {
    await this.beforeWrite();
    checkPort(port.relayedPort);
    checkTime('ttlMs', ttlMs);
    const px = Math.max(1, Math.ceil(ttlMs));
    const resvKey = this.keys.reservation(token);
    const value = JSON.stringify({ relayedAddress: port.relayedAddress, relayedPort: port.relayedPort });
    if ((await this.client.set(resvKey, value, 'PX', px, 'NX')) === null) return false;
    const holder = `resv|${this.keys.tokenTag(token)}`;
    let portSet: string | null;
    try {
      portSet = await this.client.set(this.keys.port(port.relayedAddress, port.relayedPort), holder, 'PX', px, 'NX');
    } catch (err) {
      await RELEASE_IF_HELD.run(this.client, resvKey, value).catch((e: unknown) => this.warnStep('undo-reservation', resvKey, e));
      await RELEASE_IF_HELD.run(this.client, this.keys.port(port.relayedAddress, port.relayedPort), holder).catch(() => undefined);
      throw err;
    }
    if (portSet === null) {
      await RELEASE_IF_HELD.run(this.client, resvKey, value);
      return false;
    }
    return true;
  }

  async takeReservation(token: string): Promise<ReservedPort | undefined> {
    await this.beforeWrite();
    const value = await TAKE.run(this.client, this.keys.reservation(token));
    const parsed = parseJson(value);
    if (!isObject(parsed) || typeof parsed.relayedAddress !== 'string' || !isFiniteNumber(parsed.relayedPort)) return undefined;
    const port: ReservedPort = { relayedAddress: parsed.relayedAddress, relayedPort: parsed.relayedPort };
    const holder = `resv|${this.keys.tokenTag(token)}`;
    await RELEASE_IF_HELD.run(this.client, this.keys.port(port.relayedAddress, port.relayedPort), holder).catch((e: unknown) =>
      this.warnStep('release-reserved-port', token, e),
    );
    return port;
  }

  subscribe(listener: StoreEventListener): () => void {
    if (this.connection.isClosed()) return () => undefined;
    this.listeners.add(listener);
    if (!this.subscribed) {
      this.subscribed = true;
      this.subscribing = this.attachSubscriber();
      this.watchdog.start();
    }
    return () => {
      this.listeners.delete(listener);
    };
  }

  /** Subscribes a (new) subscriber connection to the event channel; resolves when SUBSCRIBE answered. */
  private attachSubscriber(): Promise<void> {
    const generation = ++this.subscriberGeneration;
    const sub = this.connection.subscriber();
    const heartbeats = this.heartbeatChannel();
    sub.on('message', (channel: string, message: string) => {
      if (generation !== this.subscriberGeneration) return;
      if (channel === this.keys.events) this.deliver(message);
      else if (channel === heartbeats) this.deliver(message);
    });
    // A reconnect (ioredis re-subscribes by itself) starts the watchdog's wait afresh.
    sub.on('ready', () => {
      if (generation === this.subscriberGeneration) this.watchdog.restartWait();
    });
    const pending: Promise<void> = sub
      .subscribe(this.keys.events, heartbeats)
      .then(() => undefined)
      .catch((err: unknown) => {
        if (generation === this.subscriberGeneration && !this.connection.isClosed()) this.warnStep('subscribe', this.keys.events, err);
      })
      .finally(() => {
        if (this.subscribing === pending) this.subscribing = undefined;
      });
    return pending;
  }

  /*
   * The watchdog's remedy: after a failover the subscriber can stay attached to a
   * node that no longer hears the cluster's PUBLISHes (a demoted or partitioned
   * master, a half-open socket) while ioredis sees nothing wrong. Drop it and
   * subscribe on a fresh connection (found through Sentinel or the cluster slots
   * again). Writes don't wait for this SUBSCRIBE: the request path stays fast.
   */
  private resubscribe(): void {
    if (this.connection.isClosed()) return;
    this.logger.warn({ channel: this.keys.events, resubscriptions: this.watchdog.resubscriptions }, 'redis store: own heartbeat did not come back on the event channel; recreating the subscriber');
    this.connection.resetSubscriber();
    void this.attachSubscriber();
    try {
      this.onEventsResubscribed?.();
    } catch (err) {
      this.logger.warn({ err }, 'onEventsResubscribed threw');
    }
  }

  /**
   * The heartbeat goes on a channel of this store's own, carried by the same
   * subscriber connection as the events: it proves that connection end to end,
   * while other nodes never hear it (on the shared channel every node would hear
   * every node's heartbeat each second: traffic growing with the square of the nodes).
   */
  private heartbeatChannel(): string {
    return `${this.keys.events}:heartbeat:${this.origin}`;
  }

  private async publishHeartbeat(seq: number): Promise<void> {
    await this.client.publish(this.heartbeatChannel(), JSON.stringify({ type: 'heartbeat', origin: this.origin, seq }));
  }

  /** How the event subscription is doing (for metrics and tests). */
  eventStats(): EventStats {
    return this.watchdog.stats();
  }

  private deliver(message: string): void {
    if (this.connection.isClosed()) return;
    const parsed = parseJson(message);
    if (isObject(parsed) && parsed.type === 'heartbeat') {
      // Only this store's own heartbeats matter to it; other nodes' are ignored.
      if (parsed.origin === this.origin && isFiniteNumber(parsed.seq)) this.watchdog.echo(parsed.seq);
      return;
    }
    const event = toStoreEvent(parsed);
    if (!event) return; // malformed or foreign: ignore
    for (const listener of [...this.listeners]) {
      try {
        listener(cloneEvent(event));
      } catch (err) {
        this.logger.warn({ err: err instanceof Error ? err.message : String(err) }, 'store event listener threw');
      }
    }
  }

  async close(): Promise<void> {
    this.listeners.clear();
    this.watchdog.stop();
    await this.connection.close();
  }
}

// ---------------------------------------------------------------------------
// The event watchdog

export interface EventStats {
  /** Heartbeats Redis accepted (PUBLISH answered). */
  readonly heartbeatsPublished: number;
  /** Own heartbeats that came back through the subscriber. */
  readonly heartbeatsReceived: number;
  /** Times the subscriber connection was torn down and made again. */
  readonly resubscriptions: number;
  /** Milliseconds since the last own heartbeat came back (undefined: none yet). */
  readonly lastEchoAgeMs: number | undefined;
}

interface WatchdogHooks {
  readonly heartbeatMs: number;
  readonly staleMs: number;
  publish(seq: number): Promise<void>;
  canPublish(): boolean;
  resubscribe(): void;
}

/*
 * Proves the event subscription end to end: every heartbeatMs the store
 * publishes a numbered heartbeat on its own event channel. A heartbeat counts
 * from the moment Redis accepted it (so a Redis outage, when nothing can be
 * published, never looks like a dead subscription); if no later-or-equal heartbeat
 * has come back through the subscriber within staleMs, the subscription is dead
 * while commands work, and the subscriber is recreated (at most once per staleMs).
 */
class EventWatchdog {
  private timer: NodeJS.Timeout | undefined;
  private seq = 0;
  private echoedSeq = 0;
  /** The oldest accepted heartbeat not echoed yet. */
  private pending: { seq: number; acceptedAtMs: number } | undefined;
  private published = 0;
  private received = 0;
  private lastEchoAtMs: number | undefined;
  resubscriptions = 0;

  constructor(private readonly hooks: WatchdogHooks) {}

  start(): void {
    if (this.timer) return;
    this.timer = setInterval(() => this.tick(), this.hooks.heartbeatMs);
    this.timer.unref();
    this.tick();
  }

  stop(): void {
    if (this.timer) clearInterval(this.timer);
    this.timer = undefined;
  }

  private tick(): void {
    const now = Date.now();
    if (this.pending && now - this.pending.acceptedAtMs > this.hooks.staleMs) {
      this.pending = undefined;
      this.resubscriptions++;
      this.hooks.resubscribe();
    }
    if (!this.hooks.canPublish()) {
      // A heartbeat accepted before an outage says nothing about the subscriber after it.
      this.pending = undefined;
      return;
    }
    const seq = ++this.seq;
    this.hooks.publish(seq).then(
      () => {
        this.published++;
        if (seq > this.echoedSeq && !this.pending && this.timer) this.pending = { seq, acceptedAtMs: Date.now() };
      },
      () => undefined, // Redis unreachable: nothing to learn about the subscriber
    );
  }

  /** The subscriber (re)connected: what was published before proves nothing either way. */
  restartWait(): void {
    this.pending = undefined;
  }

  echo(seq: number): void {
    this.received++;
    this.lastEchoAtMs = Date.now();
    if (seq > this.echoedSeq) this.echoedSeq = seq;
    if (this.pending && this.pending.seq <= seq) this.pending = undefined;
  }

  stats(): EventStats {
    return {
      heartbeatsPublished: this.published,
      heartbeatsReceived: this.received,
      resubscriptions: this.resubscriptions,
      lastEchoAgeMs: this.lastEchoAtMs === undefined ? undefined : Date.now() - this.lastEchoAtMs,
    };
  }
}

// ---------------------------------------------------------------------------
// The node registry

export class RedisNodeRegistry implements NodeRegistry {
  private readonly keys: KeySpace;

  constructor(
    private readonly connection: RedisConnection<RedisClient>,
    options: Pick<RedisStoreOptions, 'keyPrefix'> = {},
  ) {
    this.keys = new KeySpace(validatePrefix(options.keyPrefix ?? DEFAULT_KEY_PREFIX));
  }

  async heartbeat(node: NodeInfo, ttlMs: number): Promise<void> {
    if (this.connection.isClosed()) throw new Error('store is closed');
    checkTime('ttlMs', ttlMs);
    const value = JSON.stringify({ nodeId: node.nodeId, meshAddress: node.meshAddress, meshPort: node.meshPort });
    await this.connection.client.set(this.keys.node(node.nodeId), value, 'PX', Math.max(1, Math.ceil(ttlMs)));
  }

  async getNode(nodeId: string): Promise<NodeInfo | undefined> {
    if (this.connection.isClosed()) throw new Error('store is closed');
    const parsed = parseJson(await this.connection.client.get(this.keys.node(nodeId)));
    if (!isObject(parsed) || parsed.nodeId !== nodeId || typeof parsed.meshAddress !== 'string' || !isFiniteNumber(parsed.meshPort)) return undefined;
    return { nodeId, meshAddress: parsed.meshAddress, meshPort: parsed.meshPort };
  }

  async removeNode(nodeId: string): Promise<void> {
    if (this.connection.isClosed()) throw new Error('store is closed');
    await this.connection.client.del(this.keys.node(nodeId));
  }
}

// ---------------------------------------------------------------------------
// Factory for the composition root

export interface RedisClients {
  readonly connection: RedisConnection<RedisClient>;
  readonly store: RedisAllocationStore;
  readonly registry: RedisNodeRegistry;
  /** Closes everything (same as store.close()). */
  close(): Promise<void>;
}

/**
 * Builds the store and the node registry on one command connection: from
 * --redis-url (redis:// or rediss:// for TLS; a string is taken as a URL), from
 * Sentinel, or from Redis Cluster. Connecting starts at once; calls fail fast
 * until it is ready (await store.waitUntilReady() at startup if needed).
 */
export function createRedisClients(target: string | RedisTarget, options: RedisStoreOptions = {}): RedisClients {
  const connection = new RedisConnection<RedisClient>(target, options);
  const store = new RedisAllocationStore(connection, options);
  const registry = new RedisNodeRegistry(connection, options);
  return { connection, store, registry, close: () => store.close() };
}

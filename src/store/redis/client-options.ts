// ioredis options for each kind of target: the request path fails fast (no offline
// queue, a per-command deadline) and reconnects forever.

import type { ClusterOptions, RedisOptions } from 'ioredis';

import { DEFAULT_CONNECT_TIMEOUT_MS, type RedisStoreOptions } from './options.js';
import type { ConnectionOptions } from 'node:tls';

import type { RedisTarget, RedisTls } from './target.js';

/** Node TLS options for a Redis connection: verified against --redis-ca, or the system's CAs. */
export function redisTlsOptions(tls: RedisTls): ConnectionOptions {
  return { rejectUnauthorized: true, ...(tls.ca !== undefined ? { ca: tls.ca } : {}) };
}

const DEFAULT_COMMAND_TIMEOUT_MS = 500;
const CLUSTER_SLOTS_REFRESH_MS = 5_000;
/** Reconnect attempts back off by 100 ms a try up to this: a failover (seconds) is found within half a second. */
const RECONNECT_BACKOFF_CAP_MS = 500;

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
    // --redis-tls: TLS to the sentinels and to the master they name.
    ...(target.tls ? { enableTLSForSentinelMode: true, sentinelTLS: redisTlsOptions(target.tls), tls: redisTlsOptions(target.tls) } : {}),
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
      // --redis-tls: TLS to every node (the seeds and those CLUSTER SLOTS names).
      ...(target.tls ? { tls: redisTlsOptions(target.tls) } : {}),
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

// The shared AllocationStore and NodeRegistry on Redis (ioredis), for clusters:
// the factory for the composition root, one command connection shared by both.

import { RedisAllocationStore } from './allocation-store.js';
import { RedisConnection, type RedisClient } from './connection.js';
import { RedisNodeRegistry } from './node-registry.js';
import type { RedisStoreOptions } from './options.js';
import type { RedisTarget } from './target.js';

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

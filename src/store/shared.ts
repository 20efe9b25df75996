// Opens the shared (cluster) store named by --redis-url, --redis-sentinel or
// --redis-cluster.

import { createRedisClients } from './redis/clients.js';
import { regionKeyPrefix } from './redis/keys.js';
import type { RedisStoreLogger } from './redis/options.js';
import type { RedisTarget } from './redis/target.js';
import type { AllocationStore, NodeRegistry } from './types.js';

export type { RedisHostPort, RedisTarget, RedisTls } from './redis/target.js';

export interface SharedStore {
  readonly store: AllocationStore;
  readonly registry: NodeRegistry;
  /** Resolves when the store answers, or after timeoutMs (the node then starts not ready). */
  waitUntilReady(timeoutMs: number): Promise<boolean>;
}

/**
 * `target` is a RedisTarget from the config (a plain string is taken as a redis:// URL);
 * `region` (--region) puts every key and channel under the region's prefix.
 */
export function openSharedStore(
  target: RedisTarget | string,
  options: { logger: RedisStoreLogger; onEventsResubscribed?: () => void; region?: string | undefined },
): SharedStore {
  const clients = createRedisClients(target, {
    logger: options.logger,
    onEventsResubscribed: options.onEventsResubscribed,
    keyPrefix: regionKeyPrefix(options.region),
  });
  return {
    store: clients.store,
    registry: clients.registry,
    waitUntilReady: (timeoutMs) =>
      clients.store.waitUntilReady(timeoutMs).then(
        () => true,
        () => false,
      ),
  };
}

// Opens the shared (cluster) store named by --redis-url.

import { createRedisClients, type RedisStoreLogger } from './redis.js';
import type { AllocationStore, NodeRegistry } from './types.js';

export interface SharedStore {
  readonly store: AllocationStore;
  readonly registry: NodeRegistry;
  /** Resolves when the store answers, or after timeoutMs (the node then starts not ready). */
  waitUntilReady(timeoutMs: number): Promise<boolean>;
}

export function openSharedStore(url: string, options: { logger: RedisStoreLogger }): SharedStore {
  const clients = createRedisClients(url, { logger: options.logger });
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

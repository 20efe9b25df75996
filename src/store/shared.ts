// Opens the shared (cluster) store named by --redis-url.

import type { AllocationStore, NodeRegistry } from './types.js';

export interface SharedStoreLogger {
  info(obj: object, msg: string): void;
  warn(obj: object, msg: string): void;
}

export function openSharedStore(url: string, options: { logger: SharedStoreLogger }): { store: AllocationStore; registry: NodeRegistry } {
  void url;
  void options;
  throw new Error('the Redis store is not wired yet');
}

// What the Redis allocation store's parts share: the command client, the key
// names, this writer's identity in events, and the backstop arithmetic (see
// allocation-store.ts for why every key carries a TTL).

import type { RedisClient } from './connection.js';
import type { KeySpace } from './keys.js';

export interface StoreContext {
  /** The command connection's client (read on every use: the connection may replace it). */
  readonly client: RedisClient;
  readonly keys: KeySpace;
  /** Identifies this writer in events (debugging; listeners get every writer's events). */
  readonly origin: string;
  now(): number;
  /** The backstop deadline of a record (this node's clock) and the matching relative TTL. */
  backstop(expiresAtMs: number): { deadlineMs: number; ttlMs: number };
  /** Logs a failed best-effort step (never throws). */
  warnStep(step: string, key: string, err: unknown): void;
  /** The 'deleted' event up to the owner: the delete scripts append the owner JSON and the closing brace. */
  deletedEventPrefix(key: string, reason: string): string;
}

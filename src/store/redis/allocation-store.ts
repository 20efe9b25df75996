// The shared AllocationStore on Redis.
//
// Expiry: the record's expiresAtMs is the clock (the owning node deletes expired
// allocations). Each key also carries a TTL as a backstop, so a crashed node can't
// leak state forever: deadline = max(expiresAtMs, now) + grace, set as a relative
// PEXPIRE/PX (relative, so clock skew between this node and Redis doesn't matter).
// The user zset scores use the same deadline, so a user's count heals itself when a
// node dies without deleting (members past their deadline are dropped).
//
// The parts: create-allocation.ts (the multi-step create and its undo),
// port-reservations.ts (EVEN-PORT reservations), event-feed.ts (the subscription);
// this file holds the single-key reads and writes and wires the parts together.

import { randomBytes } from 'node:crypto';

import { Cluster, type Redis } from 'ioredis';

import type {
  AllocationLimits,
  AllocationRecord,
  AllocationStore,
  CreateOutcome,
  KeyWatcher,
  MoveOutcome,
  NewAllocationRecord,
  ReservedPort,
  StoreEventListener,
  UpdateOutcome,
  UsageReport,
  UsageTotals,
} from '../types.js';
import type { RedisClient, RedisConnection } from './connection.js';
import { createAllocation } from './create-allocation.js';
import { RedisEventFeed } from './event-feed.js';
import type { EventStats } from './event-watchdog.js';
import { DEFAULT_KEY_PREFIX, KeySpace, validatePrefix } from './keys.js';
import { moveAllocation } from './move-allocation.js';
import { DEFAULT_CONNECT_TIMEOUT_MS, silentLogger, type RedisStoreLogger, type RedisStoreOptions } from './options.js';
import { reservePort, takeReservation } from './port-reservations.js';
import { canonical, checkTime, decodeStoredRecord, hasAdditionalRelay, identityOf, readListedRecord } from './records.js';
import { DELETE_ALLOC, RELEASE_IF_HELD, TOUCH_IF_HELD, UPDATE_ALLOC, USER_TOUCH } from './scripts.js';
import type { StoreContext } from './store-context.js';
import { exchangeUsage } from './usage.js';

const DEFAULT_GRACE_MS = 60_000;
const DEFAULT_EVENT_HEARTBEAT_MS = 1_000;
const DEFAULT_EVENT_STALE_MS = 3_000;
/** Keys a SCAN step of listAllocations looks at: large, so 100,000 records take ~100 steps (and as many round trips of HGETs). */
const LIST_SCAN_COUNT = 1_000;

function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms).unref());
}

export class RedisAllocationStore implements AllocationStore {
  readonly kind = 'redis';
  private readonly keys: KeySpace;
  private readonly now: () => number;
  private readonly graceMs: number;
  private readonly logger: RedisStoreLogger;
  /** Identifies this writer in events (debugging; listeners get every writer's events). */
  private readonly origin = randomBytes(8).toString('hex');
  private readonly subscribeWaitMs: number;
  private readonly feed: RedisEventFeed;
  /** What create and the reservations share with this store. */
  private readonly ctx: StoreContext;

  constructor(
    private readonly connection: RedisConnection<RedisClient>,
    options: RedisStoreOptions = {},
  ) {
    this.keys = new KeySpace(validatePrefix(options.keyPrefix ?? DEFAULT_KEY_PREFIX));
    this.now = options.now ?? Date.now;
    this.graceMs = options.expiryGraceMs ?? DEFAULT_GRACE_MS;
    this.logger = options.logger ?? silentLogger;
    this.subscribeWaitMs = options.connectTimeoutMs ?? DEFAULT_CONNECT_TIMEOUT_MS;
    const warnStep = (step: string, key: string, err: unknown): void => this.warnStep(step, key, err);
    this.feed = new RedisEventFeed(connection, {
      keys: this.keys,
      origin: this.origin,
      logger: this.logger,
      heartbeatMs: options.eventHeartbeatMs ?? DEFAULT_EVENT_HEARTBEAT_MS,
      staleMs: options.eventStaleMs ?? DEFAULT_EVENT_STALE_MS,
      subscribeWaitMs: this.subscribeWaitMs,
      onEventsResubscribed: options.onEventsResubscribed,
      warnStep,
    });
    this.ctx = {
      get client(): RedisClient {
        return connection.client;
      },
      keys: this.keys,
      origin: this.origin,
      now: () => this.now(),
      backstop: (expiresAtMs) => this.backstop(expiresAtMs),
      warnStep,
      deletedEventPrefix: (key, reason) => this.deletedEventPrefix(key, reason),
    };
  }

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
    const subscribing = this.feed.pending;
    if (subscribing && this.connection.isAvailable()) await Promise.race([subscribing, sleep(this.subscribeWaitMs)]);
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
    this.logger.warn(
      { step, allocation: key, err: err instanceof Error ? err.message : String(err) },
      'redis store: follow-up step failed; the key TTL will clean up',
    );
  }

  private deletedEventPrefix(key: string, reason: string): string {
    // The delete script appends the stored owner (already JSON) and the closing brace.
    return `{"type":"deleted","key":${JSON.stringify(key)},"reason":${JSON.stringify(reason)},"origin":${JSON.stringify(this.origin)},"ownerNodeId":`;
  }

  /** The multi-step create with its undo: see create-allocation.ts. */
  async create(input: NewAllocationRecord, limits: AllocationLimits): Promise<CreateOutcome> {
    await this.beforeWrite();
    return await createAllocation(this.ctx, input, limits);
  }

  async get(key: string): Promise<AllocationRecord | undefined> {
    this.checkOpen();
    const json = await this.client.hget(this.keys.alloc(key), 'r');
    if (json === null) return undefined;
    return decodeStoredRecord(json, key);
  }

  /**
   * Every allocation record, for a node taking on all of them at start (anycast
   * relay mode). A SCAN over the allocation keys: never on a request path. Each
   * batch the SCAN answers is read in one round trip (its HGETs sent together), not
   * one record after another (docs/scaling.md, part 3).
   */
  async listAllocations(): Promise<AllocationRecord[]> {
    this.checkOpen();
    const out: AllocationRecord[] = [];
    // A SCAN sees one server's keys: on Redis Cluster, scan every master.
    const servers: Redis[] = this.client instanceof Cluster ? this.client.nodes('master') : [this.client];
    await Promise.all(servers.map((server) => this.listFrom(server, out)));
    return out;
  }

  private async listFrom(server: Redis, out: AllocationRecord[]): Promise<void> {
    let cursor = '0';
    do {
      const [next, keys] = await server.scan(cursor, 'MATCH', this.keys.allocPattern(), 'COUNT', LIST_SCAN_COUNT);
      cursor = next;
      // Through the command client: on a Cluster it sends each key to its slot's master.
      const records = await Promise.all(keys.map((allocKey) => this.client.hget(allocKey, 'r')));
      for (const json of records) {
        // A malformed record is skipped, as get() would refuse it.
        const record = json === null ? undefined : readListedRecord(json);
        if (record) out.push(record);
      }
    } while (cursor !== '0');
  }

  /*
   * update: one compare-and-set script on the allocation key (version guard, the
   * identity fixed at creation, the backstop TTL, the 'updated' event), and with it,
   * in the same round trip (docs/scaling.md, part 4), the port key's TTL and the
   * user's zset score (best-effort; both only move what still names this allocation's
   * key). They don't wait for the update's answer: when it is refused (conflict,
   * identity, missing) they moved this key's own backstops to the deadline of a write
   * that did not happen, which the retry that follows a conflict moves again, and a
   * record deleted meanwhile has had its port released and its member removed.
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
      const updating = UPDATE_ALLOC.run(
        this.client,
        allocKey,
        String(expected),
        JSON.stringify(written),
        identityOf(written),
        JSON.stringify(written.ownerNodeId),
        ttlMs,
        this.keys.eventChannel(next.key),
        event,
      );
      // Sent after the update on the same connection: never waits for its answer.
      const touched = this.afterUpdate(written, deadlineMs, ttlMs);
      const reply = await updating.finally(() => touched);
      if (!Array.isArray(reply)) throw new Error('redis store: unexpected reply to update');
      const [code, currentJson] = reply as [unknown, unknown];
      if (code === 0) return { ok: false, reason: 'missing' };
      if (code === 1) return { ok: false, reason: 'conflict', current: decodeStoredRecord(currentJson, next.key) };
      if (code === 2) {
        // The relayed address(es)/port(s) and username are fixed at creation: keep the stored ones.
        const stored = decodeStoredRecord(currentJson, next.key);
        const { additionalRelayedAddress: _a, additionalRelayedPort: _p, ...rest } = candidate;
        candidate = canonical({
          ...rest,
          relayedAddress: stored.relayedAddress,
          relayedPort: stored.relayedPort,
          username: stored.username,
          ...(hasAdditionalRelay(stored)
            ? { additionalRelayedAddress: stored.additionalRelayedAddress, additionalRelayedPort: stored.additionalRelayedPort }
            : {}),
        });
        continue;
      }
      return { ok: true, record: written };
    }
    throw new Error('redis store: update could not settle the allocation identity');
  }

  private async afterUpdate(record: AllocationRecord, deadlineMs: number, ttlMs: number): Promise<void> {
    await Promise.all([
      ...this.portKeys(record).map((portKey) =>
        TOUCH_IF_HELD.run(this.client, portKey, record.key, ttlMs).catch((e: unknown) => this.warnStep('port-ttl', record.key, e)),
      ),
      USER_TOUCH.run(this.client, this.keys.user(record.username), record.key, deadlineMs, ttlMs).catch((e: unknown) =>
        this.warnStep('quota-score', record.key, e),
      ),
    ]);
  }

  /** RFC 8016 mobility: the record under a new key; see move-allocation.ts. */
  async move(fromKey: string, expectedVersion: number, record: NewAllocationRecord): Promise<MoveOutcome> {
    await this.beforeWrite();
    return await moveAllocation(this.ctx, fromKey, expectedVersion, record);
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
    const stored = await DELETE_ALLOC.run(this.client, this.keys.alloc(key), expected, this.keys.eventChannel(key), this.deletedEventPrefix(key, reason));
    if (stored === null || stored === undefined) return false;
    let record: AllocationRecord;
    try {
      record = decodeStoredRecord(stored, key);
    } catch (err) {
      this.warnStep('decode-deleted', key, err);
      return true;
    }
    await Promise.all([
      ...this.portKeys(record).map((portKey) => RELEASE_IF_HELD.run(this.client, portKey, key).catch((e: unknown) => this.warnStep('release-port', key, e))),
      this.client.zrem(this.keys.user(record.username), key).catch((e: unknown) => this.warnStep('release-quota', key, e)),
    ]);
    return true;
  }

  /** The port keys a record holds: its relayed port, and a dual allocation's additional one. */
  private portKeys(record: AllocationRecord): string[] {
    const keys = [this.keys.port(record.relayedAddress, record.relayedPort)];
    if (hasAdditionalRelay(record)) keys.push(this.keys.port(record.additionalRelayedAddress, record.additionalRelayedPort));
    return keys;
  }

  async countUserAllocations(username: string): Promise<number> {
    this.checkOpen();
    return await this.client.zcount(this.keys.user(username), `(${this.now()}`, '+inf');
  }

  async exchangeUsage(nodeId: string, reports: readonly UsageReport[], nowMs: number, ttlMs: number): Promise<UsageTotals[]> {
    this.checkOpen();
    return await exchangeUsage(this.client, this.keys, nodeId, reports, nowMs, ttlMs);
  }

  async reservePort(token: string, port: ReservedPort, ttlMs: number): Promise<boolean> {
    await this.beforeWrite();
    return await reservePort(this.ctx, token, port, ttlMs);
  }

  async takeReservation(token: string): Promise<ReservedPort | undefined> {
    await this.beforeWrite();
    return await takeReservation(this.ctx, token);
  }

  subscribe(listener: StoreEventListener): () => void {
    return this.feed.subscribe(listener);
  }

  /** Only the events of watched keys: one channel each (event-feed.ts). */
  watcher(listener: StoreEventListener): KeyWatcher {
    return this.feed.watcher(listener);
  }

  /** How the event subscription is doing (for metrics and tests). */
  eventStats(): EventStats {
    return this.feed.stats();
  }

  async close(): Promise<void> {
    this.feed.stop();
    await this.connection.close();
  }
}

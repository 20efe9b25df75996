// The shared AllocationStore on Redis.
//
// Expiry: the record's expiresAtMs is the clock (the owning node deletes expired
// allocations). Each key also carries a TTL as a backstop, so a crashed node can't
// leak state forever: deadline = max(expiresAtMs, now) + grace, set as a relative
// PEXPIRE/PX (relative, so clock skew between this node and Redis doesn't matter).
// The user zset scores use the same deadline, so a user's count heals itself when a
// node dies without deleting (members past their deadline are dropped).

import { randomBytes } from 'node:crypto';

import { Cluster, type Redis } from 'ioredis';

import type {
  AllocationLimits,
  AllocationRecord,
  AllocationStore,
  CreateOutcome,
  NewAllocationRecord,
  ReservedPort,
  StoreEventListener,
  UpdateOutcome,
} from '../types.js';
import type { RedisClient, RedisConnection } from './connection.js';
import { EventWatchdog, type EventStats } from './event-watchdog.js';
import { DEFAULT_KEY_PREFIX, KeySpace, validatePrefix } from './keys.js';
import { DEFAULT_CONNECT_TIMEOUT_MS, silentLogger, type RedisStoreLogger, type RedisStoreOptions } from './options.js';
import {
  canonical,
  checkPort,
  checkTime,
  cloneEvent,
  decodeStoredRecord,
  hasAdditionalRelay,
  identityOf,
  isFiniteNumber,
  isObject,
  parseJson,
  toStoreEvent,
} from './records.js';
import {
  CLAIM_PORT,
  CREATE_ALLOC,
  DELETE_ALLOC,
  RELEASE_IF_HELD,
  TAKE,
  TOUCH_IF_HELD,
  UNDO_CREATE,
  UPDATE_ALLOC,
  USER_ADD,
  USER_TOUCH,
} from './scripts.js';

const DEFAULT_GRACE_MS = 60_000;
const DEFAULT_EVENT_HEARTBEAT_MS = 1_000;
const DEFAULT_EVENT_STALE_MS = 3_000;

function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms).unref());
}

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
   *      A dual allocation claims its additional (IPv6) relayed port the same way
   *      (in anycast relay mode every node binds the same addresses: an unclaimed
   *      one could be handed out twice); a clash there undoes the first claim.
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
    if (input.additionalRelayedPort !== undefined) checkPort(input.additionalRelayedPort);
    const record = canonical({ ...input, version: 1 });
    const allocKey = this.keys.alloc(record.key);
    const portKey = this.keys.port(record.relayedAddress, record.relayedPort);
    const additionalPortKey = hasAdditionalRelay(record) ? this.keys.port(record.additionalRelayedAddress, record.additionalRelayedPort) : undefined;
    const userKey = this.keys.user(record.username);
    const { deadlineMs, ttlMs } = this.backstop(record.expiresAtMs);

    if ((await this.client.exists(allocKey)) === 1) return { ok: false, reason: 'exists' };

    let undoPort = true; // unknown until step 1 answers
    let undoAdditional = false;
    let undoUser = false;
    const ports = (): { key: string; undo: boolean }[] => [
      { key: portKey, undo: undoPort },
      ...(additionalPortKey !== undefined ? [{ key: additionalPortKey, undo: undoAdditional }] : []),
    ];
    try {
      const claimed = await CLAIM_PORT.run(this.client, portKey, record.key, ttlMs);
      if (claimed === 0) return { ok: false, reason: 'port-taken' };
      undoPort = claimed === 1;
      if (additionalPortKey !== undefined) {
        undoAdditional = true;
        const also = await CLAIM_PORT.run(this.client, additionalPortKey, record.key, ttlMs);
        undoAdditional = also === 1;
        if (also === 0) {
          await this.undoCreateSteps(record.key, ports(), userKey, false);
          return { ok: false, reason: 'port-taken', additional: true };
        }
      }

      undoUser = true;
      const quota = Math.max(0, Math.floor(limits.userQuota));
      const added = await USER_ADD.run(this.client, userKey, record.key, deadlineMs, this.now(), quota, ttlMs);
      undoUser = added === 1;
      if (added === 0) {
        await this.undoCreateSteps(record.key, ports(), userKey, false);
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
          undoAdditional = false;
          undoUser = false;
        }
        throw err;
      }
      if (committed !== 1) {
        await this.undoCreateSteps(record.key, ports(), userKey, undoUser);
        return { ok: false, reason: 'exists' };
      }
      return { ok: true, record: canonical(record) };
    } catch (err) {
      await this.undoCreateSteps(record.key, ports(), userKey, undoUser);
      throw err;
    }
  }

  /** Best-effort: never throws (what it can't undo expires with the backstop TTLs). */
  private async undoCreateSteps(key: string, ports: readonly { key: string; undo: boolean }[], userKey: string, user: boolean): Promise<void> {
    for (const port of ports) {
      if (port.undo) await RELEASE_IF_HELD.run(this.client, port.key, key).catch((e: unknown) => this.warnStep('undo-port', key, e));
    }
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
        // The relayed address(es)/port(s) and username are fixed at creation: keep the stored ones.
        const stored = decodeStoredRecord(currentJson, next.key);
        const { additionalRelayedAddress: _a, additionalRelayedPort: _p, ...rest } = candidate;
        candidate = canonical({
          ...rest,
          relayedAddress: stored.relayedAddress,
          relayedPort: stored.relayedPort,
          username: stored.username,
          ...(hasAdditionalRelay(stored) ? { additionalRelayedAddress: stored.additionalRelayedAddress, additionalRelayedPort: stored.additionalRelayedPort } : {}),
        });
        continue;
      }
      await this.afterUpdate(written, deadlineMs, ttlMs);
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

// The Redis store's event feed: one subscriber connection on the event channel,
// fan-out to the listeners, and the heartbeat that proves the subscription.

import type { StoreEventListener } from '../types.js';
import type { RedisClient, RedisConnection } from './connection.js';
import { EventWatchdog, type EventStats } from './event-watchdog.js';
import type { KeySpace } from './keys.js';
import type { RedisStoreLogger } from './options.js';
import { cloneEvent, isFiniteNumber, isObject, parseJson, toStoreEvent } from './records.js';

export interface EventFeedOptions {
  readonly keys: KeySpace;
  /** This store's writer id: its heartbeats carry it, and only its own count. */
  readonly origin: string;
  readonly logger: RedisStoreLogger;
  readonly heartbeatMs: number;
  readonly staleMs: number;
  readonly onEventsResubscribed: (() => void) | undefined;
  warnStep(step: string, key: string, err: unknown): void;
}

export class RedisEventFeed {
  private readonly listeners = new Set<StoreEventListener>();
  private subscribed = false;
  /** Pending initial SUBSCRIBE: writes wait (briefly) for it, so a listener sees this node's next write. */
  private subscribing: Promise<void> | undefined;
  /** Bumped whenever the subscriber connection is replaced: messages of an older one are dropped. */
  private subscriberGeneration = 0;
  private readonly watchdog: EventWatchdog;

  constructor(
    private readonly connection: RedisConnection<RedisClient>,
    private readonly options: EventFeedOptions,
  ) {
    this.watchdog = new EventWatchdog({
      heartbeatMs: options.heartbeatMs,
      staleMs: options.staleMs,
      publish: (seq) => this.publishHeartbeat(seq),
      canPublish: () => this.connection.isAvailable(),
      resubscribe: () => this.resubscribe(),
    });
  }

  /** The initial SUBSCRIBE while it has not answered yet. */
  get pending(): Promise<void> | undefined {
    return this.subscribing;
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

  /** How the event subscription is doing (for metrics and tests). */
  stats(): EventStats {
    return this.watchdog.stats();
  }

  /** Drops the listeners and stops the heartbeat (the connection is closed by the store). */
  stop(): void {
    this.listeners.clear();
    this.watchdog.stop();
  }

  /** Subscribes a (new) subscriber connection to the event channel; resolves when SUBSCRIBE answered. */
  private attachSubscriber(): Promise<void> {
    const { keys } = this.options;
    const generation = ++this.subscriberGeneration;
    const sub = this.connection.subscriber();
    const heartbeats = this.heartbeatChannel();
    sub.on('message', (channel: string, message: string) => {
      if (generation !== this.subscriberGeneration) return;
      if (channel === keys.events) this.deliver(message);
      else if (channel === heartbeats) this.deliver(message);
    });
    // A reconnect (ioredis re-subscribes by itself) starts the watchdog's wait afresh.
    sub.on('ready', () => {
      if (generation === this.subscriberGeneration) this.watchdog.restartWait();
    });
    const pending: Promise<void> = sub
      .subscribe(keys.events, heartbeats)
      .then(() => undefined)
      .catch((err: unknown) => {
        if (generation === this.subscriberGeneration && !this.connection.isClosed()) this.options.warnStep('subscribe', keys.events, err);
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
    const { keys, logger } = this.options;
    logger.warn(
      { channel: keys.events, resubscriptions: this.watchdog.resubscriptions },
      'redis store: own heartbeat did not come back on the event channel; recreating the subscriber',
    );
    this.connection.resetSubscriber();
    void this.attachSubscriber();
    try {
      this.options.onEventsResubscribed?.();
    } catch (err) {
      logger.warn({ err }, 'onEventsResubscribed threw');
    }
  }

  /**
   * The heartbeat goes on a channel of this store's own, carried by the same
   * subscriber connection as the events: it proves that connection end to end,
   * while other nodes never hear it (on the shared channel every node would hear
   * every node's heartbeat each second: traffic growing with the square of the nodes).
   */
  private heartbeatChannel(): string {
    return `${this.options.keys.events}:heartbeat:${this.options.origin}`;
  }

  private async publishHeartbeat(seq: number): Promise<void> {
    await this.connection.client.publish(this.heartbeatChannel(), JSON.stringify({ type: 'heartbeat', origin: this.options.origin, seq }));
  }

  private deliver(message: string): void {
    if (this.connection.isClosed()) return;
    const parsed = parseJson(message);
    if (isObject(parsed) && parsed.type === 'heartbeat') {
      // Only this store's own heartbeats matter to it; other nodes' are ignored.
      if (parsed.origin === this.options.origin && isFiniteNumber(parsed.seq)) this.watchdog.echo(parsed.seq);
      return;
    }
    const event = toStoreEvent(parsed);
    if (!event) return; // malformed or foreign: ignore
    for (const listener of [...this.listeners]) {
      try {
        listener(cloneEvent(event));
      } catch (err) {
        this.options.logger.warn({ err: err instanceof Error ? err.message : String(err) }, 'store event listener threw');
      }
    }
  }
}

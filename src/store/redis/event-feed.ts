// The Redis store's event feed: one subscriber connection, fan-out to the listeners,
// and the heartbeat that proves the subscription.
//
// Every allocation's events go to its own channel, <p>ev:{<5-tuple>} (keys.ts), so what a
// node hears depends on what it asked for (docs/scaling.md "The event feed"):
// - subscribe(): every event (anycast relay mode, where every node serves every
//   allocation): one PSUBSCRIBE of <p>ev:{*, plus the channel older versions published
//   every event on (<p>events), so their events are still heard during an upgrade;
// - watcher(): only the keys it watches (forward mode: the 5-tuples the router has
//   cached): one SUBSCRIBE per watched key, UNSUBSCRIBE when the last watch goes.
// With the pattern on, watched keys are served from it: no second delivery is asked for.

import type { KeyWatcher, StoreEventListener, StoreWatch } from '../types.js';
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
  /** How long a watch's `ready` waits for its SUBSCRIBE at most (the store's connect timeout). */
  readonly subscribeWaitMs: number;
  readonly onEventsResubscribed: (() => void) | undefined;
  warnStep(step: string, key: string, err: unknown): void;
}

/** One watched channel: its watches (one entry per watch, so two watches of one listener stay two). */
interface Watched {
  readonly entries: Set<{ readonly listener: StoreEventListener }>;
  /** Its SUBSCRIBE on the current subscriber connection. */
  ready: Promise<void>;
}

function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms).unref());
}

export class RedisEventFeed {
  private readonly listeners = new Set<StoreEventListener>();
  /** Channel -> its watches. */
  private readonly watched = new Map<string, Watched>();
  /** The subscriber is attached and the watchdog runs. */
  private started = false;
  /** Some listener wants every event: the pattern (and the older global channel) are subscribed. */
  private everything = false;
  /** Pending PSUBSCRIBE of every event: writes wait (briefly) for it, so a listener sees this node's next write. */
  private subscribing: Promise<void> | undefined;
  /** Bumped whenever the subscriber connection is replaced: messages of an older one are dropped. */
  private subscriberGeneration = 0;
  /** Allocation events Redis delivered to this node (anyturn_store_events_received_total). */
  private received = 0;
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

  /** The subscription of every event while it has not answered yet. */
  get pending(): Promise<void> | undefined {
    return this.subscribing;
  }

  /** Every event, of every writer (this node's included). */
  subscribe(listener: StoreEventListener): () => void {
    if (this.connection.isClosed()) return () => undefined;
    this.listeners.add(listener);
    if (!this.everything) {
      this.everything = true;
      if (this.started) this.subscribing = this.settle(this.subscribeEverything(this.connection.subscriber()), this.options.keys.events);
      else this.start();
    }
    return () => {
      this.listeners.delete(listener);
    };
  }

  /** A listener of the keys it watches only; starts the feed (the heartbeat proves the subscriber). */
  watcher(listener: StoreEventListener): KeyWatcher {
    const watches = new Set<StoreWatch>();
    if (!this.connection.isClosed()) this.start();
    return {
      watch: (key) => {
        const watch = this.watchKey(key, listener, () => watches.delete(watch));
        watches.add(watch);
        return watch;
      },
      close: () => {
        for (const watch of [...watches]) watch.close();
      },
    };
  }

  /** How the event subscription is doing (for metrics and tests). */
  stats(): EventStats {
    return { ...this.watchdog.stats(), eventsReceived: this.received };
  }

  /** Drops the listeners and stops the heartbeat (the connection is closed by the store). */
  stop(): void {
    this.listeners.clear();
    this.watched.clear();
    this.watchdog.stop();
  }

  private start(): void {
    if (this.started) return;
    this.started = true;
    const attached = this.attachSubscriber();
    if (this.everything) this.subscribing = attached;
    this.watchdog.start();
  }

  private watchKey(key: string, listener: StoreEventListener, forget: () => void): StoreWatch {
    if (this.connection.isClosed()) return { ready: Promise.resolve(), close: () => undefined };
    const channel = this.options.keys.eventChannel(key);
    let watched = this.watched.get(channel);
    if (!watched) {
      watched = { entries: new Set(), ready: Promise.resolve() };
      this.watched.set(channel, watched);
      // Served by the pattern when it is on; else its own SUBSCRIBE.
      if (this.everything) watched.ready = this.subscribing ?? Promise.resolve();
      else watched.ready = this.settle(this.connection.subscriber().subscribe(channel), channel);
    }
    const entry = { listener };
    watched.entries.add(entry);
    const current = watched;
    let open = true;
    return {
      ready: this.bounded(current.ready),
      close: () => {
        if (!open) return;
        open = false;
        forget();
        current.entries.delete(entry);
        if (current.entries.size > 0 || this.watched.get(channel) !== current) return;
        this.watched.delete(channel);
        if (!this.everything && !this.connection.isClosed())
          this.connection
            .subscriber()
            .unsubscribe(channel)
            .catch(() => undefined);
      },
    };
  }

  /** A watch is ready when its SUBSCRIBE answered, or the store could not say so in time (no hang on an outage). */
  private bounded(ready: Promise<void>): Promise<void> {
    if (!this.connection.isAvailable()) return Promise.resolve();
    return Promise.race([ready, sleep(this.options.subscribeWaitMs)]);
  }

  /** A subscription's promise that never rejects: a failure is logged. */
  private settle(work: Promise<unknown>, channel: string): Promise<void> {
    const generation = this.subscriberGeneration;
    const pending: Promise<void> = work
      .then(() => undefined)
      .catch((err: unknown) => {
        if (generation === this.subscriberGeneration && !this.connection.isClosed()) this.options.warnStep('subscribe', channel, err);
      })
      .finally(() => {
        if (this.subscribing === pending) this.subscribing = undefined;
      });
    return pending;
  }

  private subscribeEverything(sub: RedisClient): Promise<unknown> {
    const { keys } = this.options;
    return Promise.all([sub.psubscribe(keys.eventPattern()), sub.subscribe(keys.events)]);
  }

  /** Subscribes a (new) subscriber connection: the heartbeat, every event or the watched keys; resolves when Redis answered. */
  private attachSubscriber(): Promise<void> {
    const { keys } = this.options;
    const generation = ++this.subscriberGeneration;
    const sub = this.connection.subscriber();
    const heartbeats = this.heartbeatChannel();
    sub.on('message', (channel: string, message: string) => {
      if (generation !== this.subscriberGeneration) return;
      if (channel === heartbeats) this.heartbeat(message);
      else if (channel === keys.events) this.deliver(message, undefined, true);
      // With the pattern on, the same message comes as a pmessage too: that one is delivered.
      else this.deliver(message, channel, !this.everything);
    });
    sub.on('pmessage', (_pattern: string, channel: string, message: string) => {
      if (generation === this.subscriberGeneration) this.deliver(message, channel, true);
    });
    // A reconnect (ioredis re-subscribes by itself) starts the watchdog's wait afresh.
    sub.on('ready', () => {
      if (generation === this.subscriberGeneration) this.watchdog.restartWait();
    });
    const channels = [heartbeats, ...(this.everything ? [] : this.watched.keys())];
    const work: Promise<unknown>[] = [sub.subscribe(...channels)];
    if (this.everything) work.push(this.subscribeEverything(sub));
    const pending = this.settle(Promise.all(work), keys.events);
    for (const watched of this.watched.values()) watched.ready = pending;
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
   * while other nodes never hear it (on a shared channel every node would hear
   * every node's heartbeat each second: traffic growing with the square of the nodes).
   */
  private heartbeatChannel(): string {
    return `${this.options.keys.events}:heartbeat:${this.options.origin}`;
  }

  private async publishHeartbeat(seq: number): Promise<void> {
    await this.connection.client.publish(this.heartbeatChannel(), JSON.stringify({ type: 'heartbeat', origin: this.options.origin, seq }));
  }

  private heartbeat(message: string): void {
    const parsed = parseJson(message);
    // Only this store's own heartbeats matter to it.
    if (isObject(parsed) && parsed.type === 'heartbeat' && parsed.origin === this.options.origin && isFiniteNumber(parsed.seq)) this.watchdog.echo(parsed.seq);
  }

  /**
   * One allocation event as Redis delivered it: counted, then (unless `handOut` is false:
   * a copy the pattern delivers too) handed to the listeners of every event and to the
   * watches of its channel (`channel`, or the event's own for the older global channel).
   */
  private deliver(message: string, channel: string | undefined, handOut: boolean): void {
    if (this.connection.isClosed()) return;
    this.received++;
    if (!handOut) return;
    const event = toStoreEvent(parseJson(message));
    if (!event) return; // malformed or foreign: ignore
    const key = event.type === 'deleted' ? event.key : event.record.key;
    const watched = this.watched.get(channel ?? this.options.keys.eventChannel(key));
    const targets = [...this.listeners, ...(watched ? [...watched.entries].map((e) => e.listener) : [])];
    for (const listener of targets) {
      try {
        listener(cloneEvent(event));
      } catch (err) {
        this.options.logger.warn({ err: err instanceof Error ? err.message : String(err) }, 'store event listener threw');
      }
    }
  }
}

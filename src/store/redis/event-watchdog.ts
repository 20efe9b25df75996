// The store's heartbeat on its own event channel, which finds a subscriber that
// silently stopped hearing the events.

import type { StoreEventStats } from '../types.js';
/** The feed's heartbeat figures (the type lives with the store interface). */
export type EventStats = StoreEventStats;

export interface WatchdogHooks {
  readonly heartbeatMs: number;
  readonly staleMs: number;
  publish(seq: number): Promise<void>;
  canPublish(): boolean;
  resubscribe(): void;
}

/*
 * Proves the event subscription end to end: every heartbeatMs the store
 * publishes a numbered heartbeat on its own event channel. A heartbeat counts
 * from the moment Redis accepted it (so a Redis outage, when nothing can be
 * published, never looks like a dead subscription); if no later-or-equal heartbeat
 * has come back through the subscriber within staleMs, the subscription is dead
 * while commands work, and the subscriber is recreated (at most once per staleMs).
 */
export class EventWatchdog {
  private timer: NodeJS.Timeout | undefined;
  private seq = 0;
  private echoedSeq = 0;
  /** The oldest accepted heartbeat not echoed yet. */
  private pending: { seq: number; acceptedAtMs: number } | undefined;
  private published = 0;
  private received = 0;
  private lastEchoAtMs: number | undefined;
  resubscriptions = 0;

  constructor(private readonly hooks: WatchdogHooks) {}

  start(): void {
    if (this.timer) return;
    this.timer = setInterval(() => this.tick(), this.hooks.heartbeatMs);
    this.timer.unref();
    this.tick();
  }

  stop(): void {
    if (this.timer) clearInterval(this.timer);
    this.timer = undefined;
  }

  private tick(): void {
    const now = Date.now();
    if (this.pending && now - this.pending.acceptedAtMs > this.hooks.staleMs) {
      this.pending = undefined;
      this.resubscriptions++;
      this.hooks.resubscribe();
    }
    if (!this.hooks.canPublish()) {
      // A heartbeat accepted before an outage says nothing about the subscriber after it.
      this.pending = undefined;
      return;
    }
    const seq = ++this.seq;
    this.hooks.publish(seq).then(
      () => {
        this.published++;
        if (seq > this.echoedSeq && !this.pending && this.timer) this.pending = { seq, acceptedAtMs: Date.now() };
      },
      () => undefined, // Redis unreachable: nothing to learn about the subscriber
    );
  }

  /** The subscriber (re)connected: what was published before proves nothing either way. */
  restartWait(): void {
    this.pending = undefined;
  }

  echo(seq: number): void {
    this.received++;
    this.lastEchoAtMs = Date.now();
    if (seq > this.echoedSeq) this.echoedSeq = seq;
    if (this.pending && this.pending.seq <= seq) this.pending = undefined;
  }

  stats(): Omit<EventStats, 'eventsReceived'> {
    return {
      heartbeatsPublished: this.published,
      heartbeatsReceived: this.received,
      resubscriptions: this.resubscriptions,
      lastEchoAgeMs: this.lastEchoAtMs === undefined ? undefined : Date.now() - this.lastEchoAtMs,
    };
  }
}

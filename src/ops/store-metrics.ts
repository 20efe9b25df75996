// The store's metrics (health, degraded mode, the event feed) and --region's info metric;
// part of the registry src/ops/metrics.ts builds.

import { Gauge, type Registry } from 'prom-client';
import type { AllocationStore } from '../store/types.js';
import { type Labelled, totalCounter } from './total-counter.js';

function single(value: number): readonly Labelled[] {
  return [[{}, value]];
}

/** --region: the store (and the event feed) this node shares with that region's nodes only. */
export function regionInfo(registry: Registry, region: string): void {
  new Gauge({
    name: 'anyturn_region_info',
    help: "1, labelled with this node's --region: the store and event feed it shares with that region's nodes only",
    labelNames: ['region'],
    registers: [registry],
    aggregator: 'max',
  }).set({ region }, 1);
}

/** The store's health and its event feed's. */
export function storeMetrics(registry: Registry, store: AllocationStore): void {
  new Gauge({
    name: 'anyturn_store_up',
    help: '1 when the allocation store is reachable',
    labelNames: ['store'],
    registers: [registry],
    // With --workers, the primary sums the workers' metrics: 0 if any worker lost the store.
    aggregator: 'min',
    collect() {
      this.reset();
      this.set({ store: store.kind }, store.isAvailable() ? 1 : 0);
    },
  });

  new Gauge({
    name: 'anyturn_store_degraded',
    help: '1 while the allocation store is unreachable: the node runs degraded, new Allocates are local-only (a reroute cannot resume them until they are written back)',
    registers: [registry],
    aggregator: 'max',
    collect() {
      this.set(store.isAvailable() ? 0 : 1);
    },
  });

  const feed = store.eventStats?.bind(store);
  if (feed) {
    totalCounter(
      registry,
      'anyturn_store_event_heartbeats_total',
      "The store's event feed checks itself: heartbeats published on its own channel, and heard back",
      ['kind'],
      () => {
        const f = feed();
        return [
          [{ kind: 'published' }, f.heartbeatsPublished],
          [{ kind: 'received' }, f.heartbeatsReceived],
        ];
      },
    );
    totalCounter(
      registry,
      'anyturn_store_events_received_total',
      'Allocation events the store delivered to this node: every one it heard (forward mode hears the 5-tuples it cached; anycast relay mode every event of the store)',
      [],
      () => single(feed().eventsReceived),
    );
    totalCounter(
      registry,
      'anyturn_store_event_resubscriptions_total',
      'Times the event subscription went deaf or dropped and was made again (events in the gap are lost; the node re-syncs)',
      [],
      () => single(feed().resubscriptions),
    );
    new Gauge({
      name: 'anyturn_store_event_echo_age_seconds',
      help: 'Seconds since this node last heard its own heartbeat on the event feed (-1: not yet); above a few seconds the feed is deaf',
      registers: [registry],
      aggregator: 'max',
      collect() {
        const age = feed().lastEchoAgeMs;
        this.set(age === undefined ? -1 : age / 1000);
      },
    });
  }
}

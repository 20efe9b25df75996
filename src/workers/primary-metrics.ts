// The primary's /metrics: its own series (the workers, hand-overs, its datagrams and the
// process) and, summed in, every worker's.

import { AggregatorRegistry, Counter, Gauge, Registry, collectDefaultMetrics } from 'prom-client';
import type { MetricsSource } from '../server/lifecycle.js';
import { DISPATCH_KINDS, type WorkerPool } from './pool.js';

/** Counts into a Counter at scrape time: the increase of a plain number since the last scrape. */
function deltaCounter(registry: Registry, name: string, help: string, read: () => number): void {
  let seen = 0;
  new Counter({
    name,
    help,
    registers: [registry],
    collect() {
      const now = read();
      if (now > seen) this.inc(now - seen);
      seen = now;
    },
  });
}

function workerGauges(registry: Registry, pool: WorkerPool): void {
  const slots = pool.slots;
  new Gauge({
    name: 'anyturn_workers',
    help: 'Worker processes running and serving (--workers)',
    registers: [registry],
    collect() {
      this.set(slots.filter((s) => s.started).length);
    },
  });
  new Gauge({
    name: 'anyturn_worker_allocations',
    help: 'Live allocations by worker process',
    labelNames: ['worker'],
    registers: [registry],
    collect() {
      for (const s of slots) this.set({ worker: String(s.index) }, s.state?.allocations ?? 0);
    },
  });
  new Gauge({
    name: 'anyturn_worker_udp_sessions',
    help: 'UDP clients a worker serves on its own connected socket (their packets bypass the primary)',
    labelNames: ['worker'],
    registers: [registry],
    collect() {
      for (const s of slots) this.set({ worker: String(s.index) }, s.state?.sessions ?? 0);
    },
  });
}

function datagramCounters(registry: Registry, pool: WorkerPool): void {
  let seenHandoffs = [...pool.handoffs];
  new Counter({
    name: 'anyturn_worker_handoffs_total',
    help: 'Datagrams the primary handed to a worker: clients without a session yet (the first packets, Binding, unauthenticated requests)',
    labelNames: ['worker'],
    registers: [registry],
    collect() {
      const handoffs = pool.handoffs;
      for (let i = 0; i < handoffs.length; i++) if (handoffs[i]! > seenHandoffs[i]!) this.inc({ worker: String(i) }, handoffs[i]! - seenHandoffs[i]!);
      seenHandoffs = [...handoffs];
    },
  });
  let seenDispatch = { ...pool.dispatch };
  new Counter({
    name: 'anyturn_primary_datagrams_total',
    help: 'Other datagrams through the primary: answers sent for workers, strays re-dispatched, drops because the worker was not running or its IPC channel was full, datagrams from source port 0 dropped, answers that could not be sent',
    labelNames: ['kind'],
    registers: [registry],
    collect() {
      const dispatch = pool.dispatch;
      for (const kind of DISPATCH_KINDS) if (dispatch[kind] > seenDispatch[kind]) this.inc({ kind }, dispatch[kind] - seenDispatch[kind]);
      seenDispatch = { ...dispatch };
    },
  });
}

/** What the primary's ops endpoint serves on /metrics. */
export function primaryMetrics(pool: WorkerPool): MetricsSource {
  const registry = new Registry();
  collectDefaultMetrics({ register: registry, prefix: 'anyturn_process_' });
  workerGauges(registry, pool);
  deltaCounter(registry, 'anyturn_worker_restarts_total', 'Worker processes that died and were started again', () => pool.restarts);
  datagramCounters(registry, pool);
  return {
    contentType: registry.contentType,
    async metrics(): Promise<string> {
      const workers = await Promise.all(pool.slots.filter((s) => s.started).map((s) => pool.metricsOf(s)));
      // Own series after the workers answered: each sent its state just before its metrics,
      // so anyturn_worker_allocations{worker} and the summed anyturn_allocations agree.
      return AggregatorRegistry.aggregate([await registry.getMetricsAsJSON(), ...workers]).metrics();
    },
  };
}

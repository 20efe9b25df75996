// A Prometheus counter read from a running total at scrape time: the engine and the
// kernel data plane keep plain numbers (cheap on the packet path); this turns them into
// counters when /metrics is rendered.

import { Counter, type Registry } from 'prom-client';

export type Labelled = readonly [Record<string, string>, number];

/** A counter whose value is read from a running total at scrape time. */
export function totalCounter(registry: Registry, name: string, help: string, labelNames: string[], read: () => readonly Labelled[]): void {
  const seen = new Map<string, number>();
  new Counter({
    name,
    help,
    labelNames,
    registers: [registry],
    collect() {
      for (const [labels, value] of read()) {
        const id = JSON.stringify(labels);
        const delta = value - (seen.get(id) ?? 0);
        if (delta > 0) this.inc(labels, delta);
        seen.set(id, value);
      }
    },
  });
}

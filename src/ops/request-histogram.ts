// anyturn_request_duration_seconds: one observation per answered request. prom-client's
// Histogram.observe builds a label object, validates it and hashes it on every call (a bound
// child from labels() still does all but the first); that was ~2 % of the server's CPU per
// Allocate lifecycle (docs/scaling.md, part 1). This keeps plain counts per method, found by
// the method's name (a string constant: its hash is cached), and hands prom-client the same
// series, in the same order and shape as its Histogram, when /metrics is rendered.

import type { Metric, Registry } from 'prom-client';

interface Series {
  /** Observations per bucket (not cumulative); the last slot is above every bound (+Inf). */
  readonly counts: Float64Array;
  sum: number;
  count: number;
}

interface ValuePair {
  readonly labels: Record<string, string | number>;
  readonly value: number;
  readonly metricName: string;
  /** prom-client's shape: null on buckets (no exemplars), undefined on _sum and _count. */
  readonly exemplar: null | undefined;
}

export class RequestHistogram {
  readonly type = 'histogram';
  readonly aggregator = 'sum';
  private readonly series = new Map<string, Series>();

  constructor(
    registry: Registry,
    readonly name: string,
    readonly help: string,
    /** The one label (its value is the key of each series). */
    private readonly labelName: string,
    /** Upper bounds, ascending (prom-client's `buckets`). */
    private readonly bounds: readonly number[],
  ) {
    // prom-client's Registry reads a metric through name, help, type, aggregator, get() and reset().
    registry.registerMetric(this as unknown as Metric);
  }

  observe(label: string, seconds: number): void {
    if (!Number.isFinite(seconds)) return;
    let s = this.series.get(label);
    if (s === undefined) this.series.set(label, (s = { counts: new Float64Array(this.bounds.length + 1), sum: 0, count: 0 }));
    const bounds = this.bounds;
    let i = 0;
    while (i < bounds.length && seconds > bounds[i]!) i++;
    s.counts[i]!++;
    s.sum += seconds;
    s.count++;
  }

  /** What prom-client's Histogram.get() gives: per series the cumulative buckets, +Inf, _sum and _count. */
  get(): { name: string; help: string; type: string; aggregator: string; values: ValuePair[] } {
    const values: ValuePair[] = [];
    const bucket = `${this.name}_bucket`;
    for (const [label, s] of this.series) {
      let cumulative = 0;
      for (let i = 0; i < this.bounds.length; i++) {
        cumulative += s.counts[i]!;
        values.push({ labels: { le: this.bounds[i]!, [this.labelName]: label }, value: cumulative, metricName: bucket, exemplar: null });
      }
      values.push({ labels: { le: '+Inf', [this.labelName]: label }, value: s.count, metricName: bucket, exemplar: null });
      values.push({ labels: { [this.labelName]: label }, value: s.sum, metricName: `${this.name}_sum`, exemplar: undefined });
      values.push({ labels: { [this.labelName]: label }, value: s.count, metricName: `${this.name}_count`, exemplar: undefined });
    }
    return { name: this.name, help: this.help, type: this.type, aggregator: this.aggregator, values };
  }

  reset(): void {
    this.series.clear();
  }
}

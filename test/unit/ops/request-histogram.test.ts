// RequestHistogram (src/ops/request-histogram.ts) stands in for prom-client's Histogram on
// the request path: /metrics must not tell them apart. The same observations go into both;
// the rendered text and the JSON (what --workers' aggregation reads) must be identical.

import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { AggregatorRegistry, Histogram, Registry } from 'prom-client';

import { RequestHistogram } from '../../../src/ops/request-histogram.js';

const BUCKETS = [0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5];
const NAME = 'anyturn_request_duration_seconds';
const HELP = 'Time from receiving a STUN/TURN request to sending its response, by method';

function pair(): { theirs: Histogram<'method'>; ours: RequestHistogram; theirRegistry: Registry; ourRegistry: Registry } {
  const theirRegistry = new Registry();
  const ourRegistry = new Registry();
  const theirs = new Histogram({ name: NAME, help: HELP, labelNames: ['method'], buckets: BUCKETS, registers: [theirRegistry] });
  const ours = new RequestHistogram(ourRegistry, NAME, HELP, 'method', BUCKETS);
  return { theirs, ours, theirRegistry, ourRegistry };
}

describe('RequestHistogram', () => {
  it('renders what prom-client renders for the same observations (bounds, 0, above the last bound, several methods)', async () => {
    const { theirs, ours, theirRegistry, ourRegistry } = pair();
    const observations: [string, number][] = [
      ['allocate', 0.00012],
      ['allocate', 0.0001],
      ['allocate', 0],
      ['allocate', 3.7],
      ['create_permission', 0.0025],
      ['create_permission', 0.004],
      ['channel_bind', 2.5],
      ['allocate', 0.05],
      ['binding', 0.00003],
    ];
    for (const [method, seconds] of observations) {
      theirs.observe({ method }, seconds);
      ours.observe(method, seconds);
    }
    assert.equal(await ourRegistry.metrics(), await theirRegistry.metrics());
    assert.deepEqual(await ourRegistry.getMetricsAsJSON(), await theirRegistry.getMetricsAsJSON());
    assert.match(await ourRegistry.metrics(), /anyturn_request_duration_seconds_bucket\{le="\+Inf",method="allocate"\} 5/);
  });

  it('renders nothing before the first observation, and nothing after reset()', async () => {
    const { theirs, ours, theirRegistry, ourRegistry } = pair();
    assert.equal(await ourRegistry.metrics(), await theirRegistry.metrics());
    theirs.observe({ method: 'refresh' }, 0.001);
    ours.observe('refresh', 0.001);
    ourRegistry.resetMetrics();
    theirRegistry.resetMetrics();
    assert.equal(await ourRegistry.metrics(), await theirRegistry.metrics());
    assert.doesNotMatch(await ourRegistry.metrics(), /refresh/);
  });

  it('aggregates across --workers as prom-client aggregates its Histogram (the primary sums the workers)', async () => {
    const a = pair();
    const b = pair();
    for (const [h, method, seconds] of [
      [a, 'allocate', 0.0003],
      [a, 'refresh', 0.02],
      [b, 'allocate', 0.0004],
      [b, 'allocate', 7],
    ] as const) {
      h.theirs.observe({ method }, seconds);
      h.ours.observe(method, seconds);
    }
    const theirs = AggregatorRegistry.aggregate([await a.theirRegistry.getMetricsAsJSON(), await b.theirRegistry.getMetricsAsJSON()]);
    const ours = AggregatorRegistry.aggregate([await a.ourRegistry.getMetricsAsJSON(), await b.ourRegistry.getMetricsAsJSON()]);
    assert.equal(await ours.metrics(), await theirs.metrics());
    assert.match(await ours.metrics(), /anyturn_request_duration_seconds_count\{method="allocate"\} 3/);
  });
});

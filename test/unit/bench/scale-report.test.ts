// The scale benchmark's latency rounds (bench/allocations/scale-report.ts): one run of the
// probe moves 10-20 % here, so the report gives each size's rounds and their median; the
// grouping must keep each size's rounds together and skip rounds whose probe failed.

import assert from 'node:assert/strict';
import { describe, it } from 'node:test';

import type { LatencyResult, ProbeDone } from '../../../bench/allocations/scale-measure.js';
import { addedByLive, median } from '../../../bench/allocations/scale-report.js';
import { parseScaleOptions } from '../../../bench/allocations/scale-options.js';

function summary(p50: number, p99: number): ProbeDone['rttMs'] {
  return { count: 100, p50, p99, max: p99, mean: p50 };
}

function probe(p50: number, p99: number): ProbeDone {
  return { sent: 100, received: 100, lost: 0, rttMs: summary(p50, p99), maxLagMs: 0 };
}

function round(live: number, relay: [number, number] | undefined, direct: [number, number], added?: [number, number]): LatencyResult {
  return {
    live,
    direct: probe(...direct),
    relay: relay === undefined ? undefined : probe(...relay),
    added: added === undefined ? undefined : summary(...added),
    churn: undefined,
    gc: { seconds: 15, byKind: {} },
    errors: [],
  };
}

describe('scale benchmark: latency rounds', () => {
  it('groups the added p50/p99 by live count, in run order, skipping a round without a relayed probe', () => {
    const groups = addedByLive([
      round(1000, [0.4, 2.0], [0.1, 1.0]),
      round(1000, [0.5, 3.0], [0.1, 1.0]),
      round(1000, undefined, [0.1, 1.0]),
      round(100_000, [0.4, 2.5], [0.2, 1.0]),
    ]);
    assert.equal(groups.length, 2);
    assert.equal(groups[0]!.live, 1000);
    assert.deepEqual(
      groups[0]!.p99.map((v) => Math.round(v * 1000)),
      [1000, 2000],
    );
    assert.deepEqual(
      groups[0]!.p50.map((v) => Math.round(v * 1000)),
      [300, 400],
    );
    assert.equal(groups[1]!.live, 100_000);
    assert.deepEqual(
      groups[1]!.p99.map((v) => Math.round(v * 1000)),
      [1500],
    );
  });

  it("takes the pairs' own added p50/p99 where the probe measured them (relay and direct sent together)", () => {
    const [g] = addedByLive([round(1000, [0.4, 2.0], [0.1, 1.0], [0.25, 0.7])]);
    assert.deepEqual(g?.p50, [0.25]);
    assert.deepEqual(g?.p99, [0.7], 'not 2.0 - 1.0: the pairs, not the difference of the percentiles');
  });

  it('median: the middle value, the mean of the middle two for an even count, undefined for none', () => {
    assert.equal(median([3, 1, 2]), 2);
    assert.equal(median([4, 1, 3, 2]), 2.5);
    assert.equal(median([]), undefined);
  });

  it('--latency-rounds: 3 by default, 1 to 20', () => {
    assert.equal(parseScaleOptions(['--parts', 'scale']).latencyRounds, 3);
    assert.equal(parseScaleOptions(['--parts', 'scale', '--latency-rounds', '5']).latencyRounds, 5);
    assert.throws(() => parseScaleOptions(['--parts', 'scale', '--latency-rounds', '0']), /--latency-rounds/);
    assert.throws(() => parseScaleOptions(['--parts', 'scale', '--latency-rounds', '21']), /--latency-rounds/);
  });
});

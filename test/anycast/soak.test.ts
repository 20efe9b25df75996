// The soak's short version (docs/reliability.md, "Soak"; the full run is `npm run
// soak`): about a minute of allocation churn (Allocate, CreatePermission, ChannelBind,
// Refresh, CreatePermission + ChannelBind again, Refresh 0) with probes relayed both
// ways, across two anyturn processes in anycast relay mode on one redis-server, in
// network namespaces (test/reliability/soak.ts: requests and client packets through
// N1, peer answers through N2). Sampled every 5 s.
//
// Asserted: every counted probe came back (nothing lost in either direction, none
// left unanswered), every request was answered 200, every allocation made was deleted,
// the nodes never exited, and once the churn stops the store's key count returns to
// what it was before it (no allocation, port or user key left behind) and both nodes
// hold no allocation. Nothing asserts how fast or how big: memory figures are printed.
// Needs root, iproute2 and redis-server; skipped otherwise (never under CI=true).

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { netnsUnavailableReason } from '../helpers/netns.js';
import { runSoak } from '../reliability/soak.js';

const skip = netnsUnavailableReason();

test('soak (short): a minute of churn across two anycast-relay nodes loses no probe and leaves the store as it found it', {
  skip,
  timeout: 240_000,
}, async () => {
  const r = await runSoak({ durationMs: 45_000, sampleMs: 5_000, concurrent: 6, lifetimeMs: 12_000, pps: 60, settleDeadlineMs: 30_000 });
  const s = r.summary;
  console.log(`[soak] load ${JSON.stringify({ ...s, errors: s.errors.slice(0, 5) })}`);
  console.log(
    `[soak] baseline keys ${JSON.stringify(r.baseline.keys)} dbsize ${r.baseline.dbsize}; final ${JSON.stringify(r.final.keys)} dbsize ${r.final.dbsize}`,
  );
  for (const n of ['N1', 'N2'] as const) {
    const first = r.samples[0]?.nodes[n];
    const last = r.samples.at(-1)?.nodes[n];
    console.log(
      `[soak] ${n} rss ${first?.rssBytes} -> ${last?.rssBytes}, heap ${first?.heapUsedBytes} -> ${last?.heapUsedBytes}, fds ${first?.openFds} -> ${last?.openFds}`,
    );
  }
  assert.ok(r.samples.length > 0, 'no sample was taken');
  assert.ok(s.allocated > 0 && s.sent > 0, `the load did nothing: ${JSON.stringify(s)}`);
  assert.deepEqual(s.failures, {}, `requests not answered 200: ${JSON.stringify(s.errors)}`);
  assert.equal(s.failedAllocations, 0, JSON.stringify(s.errors));
  assert.equal(s.lost, 0, 'probes lost');
  assert.equal(s.echoed, s.sent, 'every counted probe echoed');
  assert.equal(s.deleted, s.allocated, 'every allocation deleted by its Refresh 0');
  assert.notEqual(
    r.settledAfterS,
    undefined,
    `the store never returned to its baseline: ${JSON.stringify(r.baseline.keys)} -> ${JSON.stringify(r.final.keys)}`,
  );
  assert.deepEqual(r.final.keys, r.baseline.keys, 'the same keys of each kind as before the churn');
  // The routes make every probe cross both nodes: out through N1, back through N2.
  assert.ok(r.final.nodes.N1.relayedToPeer >= s.sent, `N1 relayed ${r.final.nodes.N1.relayedToPeer} of ${s.sent} probes to the peer`);
  assert.ok(r.final.nodes.N2.relayedToClient >= s.sent, `N2 relayed ${r.final.nodes.N2.relayedToClient} of ${s.sent} echoes to the client`);
  assert.equal(r.final.nodes.N1.allocations, 0);
  assert.equal(r.final.nodes.N2.allocations, 0);
});

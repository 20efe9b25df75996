// Redis failover under load, the CI version (docs/reliability.md, "Redis failover under
// load"; the full run with 1,000 allocations is `npm run failover`): 100 allocations
// relaying across three anyturn processes on one Redis Sentinel group, spread over two
// load-client processes, while the master is SIGKILLed (test/reliability/failover.ts).
//
// Asserted: no probe lost (every one echoed), every request answered 200 (Refresh and
// CreatePermission go on being answered through the outage: the fail-open store), no
// allocation lost (every record the old master held is on the new one after the
// failover, and every allocation was deleted by its client at the end), writes
// resumed (a Refresh made after the kill reached the new master), the nodes kept
// running. Nothing asserts how fast: the promotion time and the write stall are
// printed; the deadlines only bound a broken run.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { runFailover } from '../reliability/failover.js';

test('Redis Sentinel failover under load: 100 relaying allocations on three nodes lose no packet, no allocation, and writes resume', {
  timeout: 240_000,
}, async () => {
  const r = await runFailover({
    allocations: 100,
    pps: 200,
    processes: 2,
    refreshMs: 2_000,
    beforeMs: 3_000,
    afterMs: 4_000,
    deadlineMs: 60_000,
    log: (text) => console.log(`[failover] ${text}`),
  });
  console.log(`[failover] ${JSON.stringify(r)}`);
  assert.equal(r.relayingAtKill, 100, 'every allocation relayed before the kill');
  assert.ok(r.sent > 0, 'probes were sent');
  assert.deepEqual(r.failures, {}, `requests not answered 200: ${JSON.stringify(r.errors)}`);
  assert.equal(r.failedAllocations, 0, JSON.stringify(r.errors));
  assert.equal(r.lost, 0, 'probes lost');
  assert.equal(r.echoed, r.sent, 'every probe echoed');
  assert.equal(r.recordsBefore, 100, 'the old master held every allocation before the kill');
  assert.equal(r.missingAfter, 0, 'allocations missing from the new master after the failover');
  assert.equal(r.recordsAtEnd, 0, 'every allocation deleted at the end');
  assert.ok(r.nodesRunning, 'a node exited');
});

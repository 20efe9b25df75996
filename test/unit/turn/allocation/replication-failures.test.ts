// Anycast relay mode: allocations another node made that this one cannot take on (its
// relayed address cannot be bound here: a misconfigured relay IP, a port another process
// holds) are counted in a metric and logged at most once per interval with how many, not
// once each: a start-up sync of 100,000 such records was 100,000 log lines.

import { describe, it } from 'node:test';
import assert from 'node:assert/strict';

import { createMetrics } from '../../../../src/ops/metrics.js';
import { MemoryAllocationStore } from '../../../../src/store/memory.js';
import { fiveTupleKey } from '../../../../src/store/types.js';
import { NonceIssuer } from '../../../../src/turn/auth/nonce.js';
import { ManualClock } from '../../../../src/turn/clock.js';
import { EngineCounters } from '../../../../src/turn/counters.js';
import { ADOPT_FAILURE_LOG_INTERVAL_MS } from '../../../../src/turn/allocation/replication.js';
import type { EngineLogger } from '../../../../src/turn/ports.js';
import { ANYCAST, PORT, startEngineNode, until } from '../../../helpers/engine-node.js';

class CapturingLogger implements EngineLogger {
  readonly warnings: { obj: Record<string, unknown>; msg: string }[] = [];
  info(): void {}
  debug(): void {}
  error(): void {}
  warn(obj: object, msg: string): void {
    this.warnings.push({ obj: obj as Record<string, unknown>, msg });
  }
}

describe('anycast relay mode: allocations that cannot be taken on here', () => {
  it('are counted (anyturn_allocations_adopt_failures_total) and logged once per interval with a count', async () => {
    const clock = new ManualClock(1_700_000_000_000);
    const store = new MemoryAllocationStore({ now: () => clock.now() });
    const logger = new CapturingLogger();
    const counters = new EngineCounters();
    const node = startEngineNode({
      nodeId: 'n2',
      realm: 'r',
      nonces: new NonceIssuer(Buffer.alloc(32, 1), 600_000),
      store,
      clock,
      logger,
      counters,
      relayAddressIPv4: '198.18.100.2',
      serverAddresses: [ANYCAST, '198.18.100.2'],
      engine: { relayMode: 'anycast' },
    });
    try {
      const record = (i: number) => ({
        key: fiveTupleKey('udp', '198.18.10.9', 20_000 + i, ANYCAST, PORT),
        transport: 'udp' as const,
        clientAddress: '198.18.10.9',
        clientPort: 20_000 + i,
        serverAddress: ANYCAST,
        serverPort: PORT,
        relayedAddress: '198.18.100.2',
        relayedPort: 50_000 + i,
        ownerNodeId: 'n1',
        username: 'alice',
        realm: 'r',
        createdAtMs: clock.now(),
        expiresAtMs: clock.now() + 600_000,
        permissions: {},
        channels: {},
      });
      node.relays.failAllBinds('EADDRNOTAVAIL');
      // Each record's 'created' event is heard, and its adoption fails.
      for (let i = 0; i < 50; i++) assert.ok((await store.create(record(i), { userQuota: 0 })).ok);
      await until(() => counters.replicaFailures === 50, 'the 50 events heard');
      // Then a sync (start-up, or after a gap in the feed) meets every record again.
      assert.equal(await node.engine.syncFromStore(), 0);
      assert.equal(counters.replicaFailures, 100);
      assert.equal(logger.warnings.length, 1, 'one line for the 100');
      assert.equal(logger.warnings[0]?.msg, 'cannot bind a shared relayed address here');
      assert.equal(logger.warnings[0]?.obj.failed, 1, 'the first is logged at once');
      // The next interval's first failure says how many there were since the last line.
      clock.advance(ADOPT_FAILURE_LOG_INTERVAL_MS);
      assert.equal(await node.engine.syncFromStore(), 0);
      assert.equal(counters.replicaFailures, 150);
      assert.equal(logger.warnings.length, 2);
      assert.equal(logger.warnings[1]?.obj.failed, 100, 'the 99 not logged before, and this one');
      const text = await createMetrics({ engine: node.engine, counters, store }).metrics();
      assert.match(text, /^anyturn_allocations_adopt_failures_total 150$/m);
      assert.match(text, /^anyturn_allocations_adopted_total 0$/m);
    } finally {
      await node.engine.stop();
    }
  });
});

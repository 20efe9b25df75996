// Allocation records for store tests: each call a fresh client port and relay port,
// so tests sharing one Redis never collide.

import { type AllocationStore, type NewAllocationRecord, fiveTupleKey } from '../../src/store/types.js';

export interface RecordFactoryOptions {
  readonly clientAddress: string;
  readonly relayedAddress: string;
  readonly firstClientPort: number;
  readonly firstRelayPort: number;
  readonly username?: string;
}

export interface RecordFactory {
  newRecord(overrides?: Partial<NewAllocationRecord>): NewAllocationRecord;
  /** A relay port no record of this factory has used. */
  nextRelayPort(): number;
}

export function recordFactory(o: RecordFactoryOptions): RecordFactory {
  let clientPortSeq = o.firstClientPort;
  let relayPortSeq = o.firstRelayPort;
  const newRecord = (overrides: Partial<NewAllocationRecord> = {}): NewAllocationRecord => {
    const clientPort = overrides.clientPort ?? clientPortSeq++;
    const base: NewAllocationRecord = {
      key: fiveTupleKey('udp', o.clientAddress, clientPort, '192.0.2.1', 3478),
      transport: 'udp',
      clientAddress: o.clientAddress,
      clientPort,
      serverAddress: '192.0.2.1',
      serverPort: 3478,
      relayedAddress: o.relayedAddress,
      relayedPort: relayPortSeq++,
      ownerNodeId: 'node-a',
      username: o.username ?? 'user',
      realm: 'example.org',
      createdAtMs: Date.now(),
      expiresAtMs: Date.now() + 600_000,
      permissions: {},
      channels: {},
    };
    return { ...base, ...overrides };
  };
  return { newRecord, nextRelayPort: () => relayPortSeq++ };
}

/**
 * Resolves once every subscription feeding `seen` has delivered events, then empties the lists.
 * A store's subscribe() returns before Redis answers its SUBSCRIBE, and an event published
 * before then never reaches it; on a Cluster the subscriber takes several round trips. A
 * warm-up record written through `writer` and deleted again proves every subscription; it
 * is written again (a round) until one round's two events reached every list, since a
 * writer can be quicker than another store's SUBSCRIBE (Allocate takes 2 round trips).
 * Events are delivered in order, so once a round's events arrived nothing older is pending.
 */
export async function proveSubscriptions(writer: AllocationStore, record: NewAllocationRecord, seen: unknown[][], timeoutMs = 10_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const before = seen.map((list) => list.length);
    // The same record each round: deleted at the end of one, free for the next.
    const warm = record;
    const created = await writer.create(warm, { userQuota: 0 });
    if (!created.ok) throw new Error(`warm-up record ${warm.key} not created: ${created.reason}`);
    await writer.delete(warm.key, 'warm-up');
    const roundEnds = Math.min(deadline, Date.now() + 500);
    while (seen.some((list, i) => list.length < before[i]! + 2) && Date.now() < roundEnds) await new Promise<void>((resolve) => setTimeout(resolve, 10));
    if (seen.every((list, i) => list.length >= before[i]! + 2)) break;
    if (Date.now() >= deadline)
      throw new Error(`timed out waiting for the warm-up events on every subscription (seen ${seen.map((l) => l.length).join(', ')})`);
  }
  for (const list of seen) list.length = 0;
}

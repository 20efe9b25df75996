// Allocation records for store tests: each call a fresh client port and relay port,
// so tests sharing one Redis never collide.

import { type NewAllocationRecord, fiveTupleKey } from '../../src/store/types.js';

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

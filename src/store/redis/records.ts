// Records and events as JSON, read defensively

import type { AllocationRecord, ChannelRecord, ClientTransportKind, StoreEvent } from '../types.js';

const TRANSPORTS: ReadonlySet<string> = new Set<ClientTransportKind>(['udp', 'tcp', 'tls']);

export function isObject(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

export function isFiniteNumber(v: unknown): v is number {
  return typeof v === 'number' && Number.isFinite(v);
}

/** True when the record has a second (IPv6) relayed address: both of its fields. */
export function hasAdditionalRelay(r: AllocationRecord): r is AllocationRecord & { additionalRelayedAddress: string; additionalRelayedPort: number } {
  return r.additionalRelayedAddress !== undefined && r.additionalRelayedPort !== undefined;
}

/** Exactly the record's fields, in a fixed order, as fresh plain data. */
export function canonical(r: AllocationRecord): AllocationRecord {
  const permissions: Record<string, number> = {};
  for (const [peer, expiresAtMs] of Object.entries(r.permissions)) permissions[peer] = expiresAtMs;
  const channels: Record<string, ChannelRecord> = {};
  for (const [number, c] of Object.entries(r.channels)) {
    channels[number] = { peerAddress: c.peerAddress, peerPort: c.peerPort, expiresAtMs: c.expiresAtMs };
  }
  return {
    key: r.key,
    transport: r.transport,
    clientAddress: r.clientAddress,
    clientPort: r.clientPort,
    serverAddress: r.serverAddress,
    serverPort: r.serverPort,
    relayedAddress: r.relayedAddress,
    relayedPort: r.relayedPort,
    // A dual allocation's IPv6 relayed address: claimed and replicated like the first one.
    ...(hasAdditionalRelay(r) ? { additionalRelayedAddress: r.additionalRelayedAddress, additionalRelayedPort: r.additionalRelayedPort } : {}),
    ownerNodeId: r.ownerNodeId,
    username: r.username,
    realm: r.realm,
    createdAtMs: r.createdAtMs,
    expiresAtMs: r.expiresAtMs,
    permissions,
    channels,
    ...(isFiniteNumber(r.mobilityGeneration) && r.mobilityGeneration > 0 ? { mobilityGeneration: r.mobilityGeneration } : {}),
    ...(typeof r.movedFrom === 'string' ? { movedFrom: r.movedFrom } : {}),
    version: r.version,
  };
}

function toRecord(v: unknown): AllocationRecord | undefined {
  if (!isObject(v)) return undefined;
  const strings = ['key', 'clientAddress', 'serverAddress', 'relayedAddress', 'ownerNodeId', 'username', 'realm'] as const;
  const numbers = ['clientPort', 'serverPort', 'relayedPort', 'createdAtMs', 'expiresAtMs', 'version'] as const;
  for (const f of strings) if (typeof v[f] !== 'string') return undefined;
  for (const f of numbers) if (!isFiniteNumber(v[f])) return undefined;
  if (typeof v.transport !== 'string' || !TRANSPORTS.has(v.transport)) return undefined;
  if (!isObject(v.permissions) || !isObject(v.channels)) return undefined;
  if ((v.additionalRelayedAddress === undefined) !== (v.additionalRelayedPort === undefined)) return undefined;
  if (v.additionalRelayedAddress !== undefined && (typeof v.additionalRelayedAddress !== 'string' || !isFiniteNumber(v.additionalRelayedPort)))
    return undefined;
  for (const e of Object.values(v.permissions)) if (!isFiniteNumber(e)) return undefined;
  for (const c of Object.values(v.channels)) {
    if (!isObject(c) || typeof c.peerAddress !== 'string' || !isFiniteNumber(c.peerPort) || !isFiniteNumber(c.expiresAtMs)) return undefined;
  }
  return canonical(v as unknown as AllocationRecord);
}

export function parseJson(text: unknown): unknown {
  if (typeof text !== 'string') return undefined;
  try {
    return JSON.parse(text) as unknown;
  } catch {
    return undefined;
  }
}

export function decodeStoredRecord(text: unknown, key: string): AllocationRecord {
  const record = toRecord(parseJson(text));
  if (!record) throw new Error(`redis store: unreadable allocation record for ${key}`);
  return record;
}

/** A record read by a listing (its key is inside it), or undefined when it is unreadable: parsed once. */
export function readListedRecord(text: string): AllocationRecord | undefined {
  return toRecord(parseJson(text));
}

export function toStoreEvent(v: unknown): StoreEvent | undefined {
  if (!isObject(v)) return undefined;
  if (v.type === 'created' || v.type === 'updated') {
    const record = toRecord(v.record);
    return record ? { type: v.type, record } : undefined;
  }
  if (v.type === 'deleted' && typeof v.key === 'string' && typeof v.ownerNodeId === 'string' && typeof v.reason === 'string') {
    return { type: 'deleted', key: v.key, ownerNodeId: v.ownerNodeId, reason: v.reason };
  }
  return undefined;
}

export function cloneEvent(e: StoreEvent): StoreEvent {
  return e.type === 'deleted' ? { ...e } : { type: e.type, record: canonical(e.record) };
}

/**
 * What is fixed at creation. A dual allocation's second relayed address is part of it;
 * a record without one keeps the three-element form records always had.
 */
export function identityOf(r: AllocationRecord): string {
  return hasAdditionalRelay(r)
    ? JSON.stringify([r.relayedAddress, r.relayedPort, r.username, r.additionalRelayedAddress, r.additionalRelayedPort])
    : JSON.stringify([r.relayedAddress, r.relayedPort, r.username]);
}

export function checkTime(name: string, value: number): void {
  if (!Number.isFinite(value)) throw new TypeError(`redis store: ${name} must be a finite number (got ${value})`);
}

export function checkPort(port: number): void {
  if (!Number.isInteger(port) || port < 0 || port > 65535) throw new TypeError(`redis store: bad relayed port ${port}`);
}

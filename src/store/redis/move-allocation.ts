// The Redis store's move (RFC 8016 mobility, store/types.ts move()): the record takes a
// new key (the client's new 5-tuple). The old and new allocation keys live in different
// slots, so, as create (create-allocation.ts), it is a sequence of single-key steps:
//   0. EXISTS on the new key: another allocation holds it ('exists'), nothing touched.
//   1. the version-guarded deletion of the old record, with a 'deleted' event whose
//      reason is 'moved' (anycast replicas keep their copy, replication.ts): the commit
//      point. Of two moves of one record (two nodes redeeming one ticket at once), one
//      deletes it; the other gets 'conflict' with the record as it is now, or 'missing'.
//   2. the relayed port key(s) and the user's zset member take the new key (the port's
//      claim and the user's count carry over: a move never frees a port nor counts twice).
//   3. the new record is created (version 1, with movedFrom), its 'created' event
//      published.
// A node that dies between 1 and 3 leaves no record: the owner writes it again on its
// next write (WriteThrough: 'missing'), and the backstop TTLs clean up what nobody owns.

import type { AllocationRecord, MoveOutcome, NewAllocationRecord } from '../types.js';
import { MOVED } from '../types.js';
import { canonical, checkTime, decodeStoredRecord, hasAdditionalRelay, identityOf } from './records.js';
import { CREATE_ALLOC, DELETE_ALLOC, REPOINT_IF_HELD, USER_RENAME } from './scripts.js';
import type { StoreContext } from './store-context.js';

export async function moveAllocation(ctx: StoreContext, fromKey: string, expectedVersion: number, input: NewAllocationRecord): Promise<MoveOutcome> {
  checkTime('expiresAtMs', input.expiresAtMs);
  const toKey = ctx.keys.alloc(input.key);
  if ((await ctx.client.exists(toKey)) === 1) return { ok: false, reason: 'exists' };
  const stored = await DELETE_ALLOC.run(
    ctx.client,
    ctx.keys.alloc(fromKey),
    String(expectedVersion),
    ctx.keys.eventChannel(fromKey),
    ctx.deletedEventPrefix(fromKey, MOVED),
  );
  if (stored === null || stored === undefined) {
    const json = await ctx.client.hget(ctx.keys.alloc(fromKey), 'r');
    return json === null ? { ok: false, reason: 'missing' } : { ok: false, reason: 'conflict', current: decodeStoredRecord(json, fromKey) };
  }
  const old = decodeStoredRecord(stored, fromKey);
  // The identity is the stored one: only the 5-tuple changes.
  const record: AllocationRecord = canonical({
    ...input,
    relayedAddress: old.relayedAddress,
    relayedPort: old.relayedPort,
    username: old.username,
    createdAtMs: old.createdAtMs,
    ...(hasAdditionalRelay(old) ? { additionalRelayedAddress: old.additionalRelayedAddress, additionalRelayedPort: old.additionalRelayedPort } : {}),
    movedFrom: fromKey,
    version: 1,
  });
  const { deadlineMs, ttlMs } = ctx.backstop(record.expiresAtMs);
  const ports = [ctx.keys.port(old.relayedAddress, old.relayedPort)];
  if (hasAdditionalRelay(old)) ports.push(ctx.keys.port(old.additionalRelayedAddress, old.additionalRelayedPort));
  await Promise.all([
    ...ports.map((portKey) =>
      REPOINT_IF_HELD.run(ctx.client, portKey, fromKey, record.key, ttlMs).catch((e: unknown) => ctx.warnStep('move-port', record.key, e)),
    ),
    USER_RENAME.run(ctx.client, ctx.keys.user(record.username), fromKey, record.key, deadlineMs, ttlMs).catch((e: unknown) =>
      ctx.warnStep('move-quota', record.key, e),
    ),
  ]);
  const event = JSON.stringify({ type: 'created', record, ownerNodeId: record.ownerNodeId, origin: ctx.origin });
  const created = await CREATE_ALLOC.run(
    ctx.client,
    toKey,
    JSON.stringify(record),
    identityOf(record),
    JSON.stringify(record.ownerNodeId),
    ttlMs,
    'moved',
    ctx.keys.eventChannel(record.key),
    event,
  );
  // Another allocation took the new key between step 0 and here: this one has no record now.
  if (created !== 1) return { ok: false, reason: 'exists' };
  return { ok: true, record };
}

// The Redis store's create: a sequence of single-key atomic steps with its undo.

import { randomBytes } from 'node:crypto';

import type { AllocationLimits, AllocationRecord, CreateOutcome, NewAllocationRecord } from '../types.js';
import { canonical, checkPort, checkTime, hasAdditionalRelay, identityOf } from './records.js';
import { CLAIM_PORT, CREATE_ALLOC, RELEASE_IF_HELD, UNDO_CREATE, USER_ADD } from './scripts.js';
import type { StoreContext } from './store-context.js';

/** The keys one create attempt touches, and the backstop it writes them with. */
interface CreatePlan {
  readonly record: AllocationRecord;
  readonly allocKey: string;
  readonly portKey: string;
  readonly additionalPortKey: string | undefined;
  readonly userKey: string;
  readonly deadlineMs: number;
  readonly ttlMs: number;
}

/**
 * What this attempt added and must take back on failure: the relayed port is
 * unknown (so undone) until its claim answers; the others only once their step ran.
 */
class CreateUndo {
  port = true;
  additional = false;
  user = false;

  constructor(
    private readonly ctx: StoreContext,
    private readonly plan: CreatePlan,
  ) {}

  /** The record may exist (its undo failed): pull nothing from under it, the TTLs settle it. */
  forget(): void {
    this.port = false;
    this.additional = false;
    this.user = false;
  }

  /** Best-effort: never throws (what it can't undo expires with the backstop TTLs). */
  async run(): Promise<void> {
    const { ctx, plan } = this;
    const key = plan.record.key;
    if (this.port) await RELEASE_IF_HELD.run(ctx.client, plan.portKey, key).catch((e: unknown) => ctx.warnStep('undo-port', key, e));
    if (plan.additionalPortKey !== undefined && this.additional) {
      await RELEASE_IF_HELD.run(ctx.client, plan.additionalPortKey, key).catch((e: unknown) => ctx.warnStep('undo-port', key, e));
    }
    if (this.user) await ctx.client.zrem(plan.userKey, key).catch((e: unknown) => ctx.warnStep('undo-quota', key, e));
  }
}

/*
 * create: port, user and allocation keys live in different slots, so create is a
 * sequence of single-key atomic steps; the allocation key is written last and is
 * the commit point (its script also publishes 'created'):
 *   0. EXISTS on the allocation key: a retransmitted Allocate ('exists') costs
 *      nothing and leaves no trace.
 *   1. claim the relayed port (set if free, accept if it already names this key);
 *      'port-taken' before quota, so a port clash never touches the user's count.
 *      A dual allocation claims its additional (IPv6) relayed port the same way
 *      (in anycast relay mode every node binds the same addresses: an unclaimed
 *      one could be handed out twice); a clash there undoes the first claim.
 *   2. the quota script on the user's zset; 'user-quota' undoes step 1.
 *   3. create the allocation hash if absent; 'exists' (a racing create of the same
 *      5-tuple) undoes steps 1 and 2.
 * Why this order: the record becomes visible only once its port and quota are
 * held, so nobody ever reads an allocation that is then rolled back, and every
 * step before the commit is undone by deleting only what this attempt added
 * (compare-and-delete on the port, ZREM only when this attempt added the member).
 * On an error (Redis down, timeout) the same undo runs best-effort; a step whose
 * reply was lost may still have happened, so step 3 is undone by its nonce. What
 * the undo can't reach expires with the backstop TTLs.
 */
export async function createAllocation(ctx: StoreContext, input: NewAllocationRecord, limits: AllocationLimits): Promise<CreateOutcome> {
  checkTime('expiresAtMs', input.expiresAtMs);
  checkPort(input.relayedPort);
  if (input.additionalRelayedPort !== undefined) checkPort(input.additionalRelayedPort);
  const plan = planCreate(ctx, canonical({ ...input, version: 1 }));

  if ((await ctx.client.exists(plan.allocKey)) === 1) return { ok: false, reason: 'exists' };

  const undo = new CreateUndo(ctx, plan);
  try {
    const claimed = await claimPorts(ctx, plan, undo);
    if (claimed !== undefined) return claimed;
    undo.user = true;
    const quota = Math.max(0, Math.floor(limits.userQuota));
    const added = await USER_ADD.run(ctx.client, plan.userKey, plan.record.key, plan.deadlineMs, ctx.now(), quota, plan.ttlMs);
    undo.user = added === 1;
    if (added === 0) {
      await undo.run();
      return { ok: false, reason: 'user-quota' };
    }
    if (!(await commit(ctx, plan, undo))) {
      await undo.run();
      return { ok: false, reason: 'exists' };
    }
    return { ok: true, record: canonical(plan.record) };
  } catch (err) {
    await undo.run();
    throw err;
  }
}

function planCreate(ctx: StoreContext, record: AllocationRecord): CreatePlan {
  const { deadlineMs, ttlMs } = ctx.backstop(record.expiresAtMs);
  return {
    record,
    allocKey: ctx.keys.alloc(record.key),
    portKey: ctx.keys.port(record.relayedAddress, record.relayedPort),
    additionalPortKey: hasAdditionalRelay(record) ? ctx.keys.port(record.additionalRelayedAddress, record.additionalRelayedPort) : undefined,
    userKey: ctx.keys.user(record.username),
    deadlineMs,
    ttlMs,
  };
}

/** Step 1: the relayed port(s). Returns the refusal, or undefined when every port is held. */
async function claimPorts(ctx: StoreContext, plan: CreatePlan, undo: CreateUndo): Promise<CreateOutcome | undefined> {
  const claimed = await CLAIM_PORT.run(ctx.client, plan.portKey, plan.record.key, plan.ttlMs);
  if (claimed === 0) return { ok: false, reason: 'port-taken' };
  undo.port = claimed === 1;
  if (plan.additionalPortKey === undefined) return undefined;
  undo.additional = true;
  const also = await CLAIM_PORT.run(ctx.client, plan.additionalPortKey, plan.record.key, plan.ttlMs);
  undo.additional = also === 1;
  if (also !== 0) return undefined;
  await undo.run();
  return { ok: false, reason: 'port-taken', additional: true };
}

/** Step 3, the commit point: true when this attempt wrote the allocation hash. */
async function commit(ctx: StoreContext, plan: CreatePlan, undo: CreateUndo): Promise<boolean> {
  const { record } = plan;
  const nonce = randomBytes(8).toString('hex');
  const recordJson = JSON.stringify(record);
  const event = JSON.stringify({ type: 'created', record, ownerNodeId: record.ownerNodeId, origin: ctx.origin });
  let committed: unknown;
  try {
    committed = await CREATE_ALLOC.run(
      ctx.client,
      plan.allocKey,
      recordJson,
      identityOf(record),
      JSON.stringify(record.ownerNodeId),
      plan.ttlMs,
      nonce,
      ctx.keys.eventChannel(record.key),
      event,
    );
  } catch (err) {
    // The reply is lost, not necessarily the write: take the record back first, and
    // only if that worked release the port and quota (else they'd be pulled from
    // under a record that may exist; the TTLs settle it).
    const rollback = `${ctx.deletedEventPrefix(record.key, 'create-rolled-back')}${JSON.stringify(record.ownerNodeId)}}`;
    try {
      await UNDO_CREATE.run(ctx.client, plan.allocKey, nonce, ctx.keys.eventChannel(record.key), rollback);
    } catch (e) {
      ctx.warnStep('undo-create', record.key, e);
      undo.forget();
    }
    throw err;
  }
  return committed === 1;
}

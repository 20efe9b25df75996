// The Redis store's create: single-key atomic steps in two round trips, with its undo.

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
 * What this attempt added and must take back on failure: a step not answered yet
 * may have happened, so it is undone (each undo removes only what names this key).
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

  /** Best-effort, one round trip (the keys are independent): never throws (what it can't undo expires with the backstop TTLs). */
  async run(): Promise<void> {
    const { ctx, plan } = this;
    const key = plan.record.key;
    const steps: Promise<unknown>[] = [];
    if (this.port) steps.push(RELEASE_IF_HELD.run(ctx.client, plan.portKey, key).catch((e: unknown) => ctx.warnStep('undo-port', key, e)));
    if (plan.additionalPortKey !== undefined && this.additional) {
      steps.push(RELEASE_IF_HELD.run(ctx.client, plan.additionalPortKey, key).catch((e: unknown) => ctx.warnStep('undo-port', key, e)));
    }
    if (this.user) steps.push(ctx.client.zrem(plan.userKey, key).catch((e: unknown) => ctx.warnStep('undo-quota', key, e)));
    await Promise.all(steps);
  }
}

/*
 * create: port, user and allocation keys live in different slots, so create is a
 * set of single-key atomic steps; the allocation key is written last and is the
 * commit point (its script also publishes 'created'). Two round trips in sequence
 * (docs/scaling.md, part 4):
 *   1. sent together, without waiting for each other's answers:
 *      - EXISTS on the allocation key: a retransmitted Allocate ('exists') wins over
 *        every other refusal and keeps nothing of this attempt;
 *      - the claim of the relayed port (set if free, accept if it already names this
 *        key), and of a dual allocation's additional (IPv6) one (in anycast relay mode
 *        every node binds the same addresses: an unclaimed one could be handed out twice);
 *      - the quota script on the user's zset.
 *      Then the refusal, in this order: 'exists', 'port-taken' (the first port, then
 *      the additional one), 'user-quota'; a refusal undoes what the others added.
 *   2. create the allocation hash if absent; 'exists' (a racing create of the same
 *      5-tuple) undoes step 1.
 * Why this order: the record becomes visible only once its port and quota are
 * held, so nobody ever reads an allocation that is then rolled back, and every
 * step before the commit is undone by deleting only what this attempt added
 * (compare-and-delete on the port, ZREM only when this attempt added the member).
 * The price of step 1 in one round trip: a port clash adds the user's member for the
 * length of a round trip before taking it back (another Allocate of that user at its
 * quota in that instant gets 486), where one step after the other never touched it.
 * On an error (Redis down, timeout) the same undo runs best-effort; a step whose
 * reply was lost may still have happened, so step 2 is undone by its nonce. What
 * the undo can't reach expires with the backstop TTLs.
 */
export async function createAllocation(ctx: StoreContext, input: NewAllocationRecord, limits: AllocationLimits): Promise<CreateOutcome> {
  checkTime('expiresAtMs', input.expiresAtMs);
  checkPort(input.relayedPort);
  if (input.additionalRelayedPort !== undefined) checkPort(input.additionalRelayedPort);
  const plan = planCreate(ctx, canonical({ ...input, version: 1 }));
  const undo = new CreateUndo(ctx, plan);
  try {
    const refused = await claim(ctx, plan, limits, undo);
    if (refused !== undefined) {
      await undo.run();
      return refused;
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

/**
 * Step 1, one round trip: EXISTS, the port claim(s) and the user's quota, each on its
 * own key, sent without waiting for one another. Returns the refusal (what this attempt
 * added marked in `undo`), or undefined when the key is free and every claim is held.
 */
async function claim(ctx: StoreContext, plan: CreatePlan, limits: AllocationLimits, undo: CreateUndo): Promise<CreateOutcome | undefined> {
  const key = plan.record.key;
  const quota = Math.max(0, Math.floor(limits.userQuota));
  // Until a step answers, what it did is unknown: undone (each undo touches only what names this key).
  undo.additional = plan.additionalPortKey !== undefined;
  undo.user = true;
  const [exists, port, additional, user] = await Promise.allSettled([
    ctx.client.exists(plan.allocKey),
    CLAIM_PORT.run(ctx.client, plan.portKey, key, plan.ttlMs),
    plan.additionalPortKey === undefined ? Promise.resolve(undefined) : CLAIM_PORT.run(ctx.client, plan.additionalPortKey, key, plan.ttlMs),
    USER_ADD.run(ctx.client, plan.userKey, key, plan.deadlineMs, ctx.now(), quota, plan.ttlMs),
  ]);
  // 2 = this key already held the port or was already a member: not ours to undo.
  if (port.status === 'fulfilled') undo.port = port.value === 1;
  if (additional.status === 'fulfilled') undo.additional = additional.value === 1;
  if (user.status === 'fulfilled') undo.user = user.value === 1;
  for (const step of [exists, port, additional, user]) if (step.status === 'rejected') throw step.reason;
  if (exists.status === 'fulfilled' && exists.value === 1) return { ok: false, reason: 'exists' };
  if (port.status === 'fulfilled' && port.value === 0) return { ok: false, reason: 'port-taken' };
  if (additional.status === 'fulfilled' && additional.value === 0) return { ok: false, reason: 'port-taken', additional: true };
  if (user.status === 'fulfilled' && user.value === 0) return { ok: false, reason: 'user-quota' };
  return undefined;
}

/** Step 2, the commit point: true when this attempt wrote the allocation hash. */
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

// Allocate (RFC 8656 §7.2, "Receiving an Allocate Request"): the checks in the
// RFC's order, then the relayed transport address(es) from the relay allocator,
// which also claims the allocation in the store, then the success response.

import { encodeAddressErrorCode, encodeUint32 } from '../../stun/attributes.js';
import { AddressFamily, Attr, ErrorCode, MessageClass, Method, reasonPhrase } from '../../stun/constants.js';
import { MessageWriter } from '../../stun/writer.js';
import { fiveTupleKey } from '../../store/types.js';
import type { Allocation, AllocationSeed } from '../allocation/allocation.js';
import type { TurnContext } from '../context.js';
import type { AllocateRefusalReason } from '../counters.js';
import { TurnError } from '../errors.js';
import type { Claim } from '../relay/relay-allocator.js';
import { type AllocateRequest, readAllocateRequest } from './allocate-request.js';
import { startTcpRelay } from './connect.js';
import { issueTicket, mobilityTicketOf } from './mobility.js';
import type { MethodRequest } from './request.js';

/** Capacity refusals are logged at most this often (with the count since), never per Allocate. */
const REFUSAL_LOG_INTERVAL_MS = 60_000;

/**
 * RFC 8656 §7.2. Answers within the call when every step can (a retransmission, a refusal,
 * or a claim that answers at once: RelayAllocator.claim); else the promise of the answer.
 */
export function allocate(ctx: TurnContext, r: MethodRequest): Promise<void> | undefined {
  const { listener, message, address, port } = r;
  // 1. Authenticated: the engine did it (Authenticator) before dispatching here.
  // 2. The 5-tuple in use: 437, unless this is the Allocate that made it, retransmitted.
  const existing = listener.find(address, port);
  if (existing) {
    answerRetransmission(r, existing);
    return;
  }
  // 11. (first, as coturn does) A redirect to an alternate server (300), or a draining node's 403.
  const refusal = ctx.o.admission?.(address);
  if (refusal?.code === ErrorCode.TryAlternate) {
    const w = ctx.replies.error(message, ErrorCode.TryAlternate);
    w.addAddress(Attr.AlternateServer, refusal.alternateServer.address, refusal.alternateServer.port);
    ctx.replies.send(listener, message, w, r.auth.key, address, port, 'allocate', ErrorCode.TryAlternate);
    return;
  }
  if (refusal) throw new TurnError(refusal.code, refusal.reason);
  const key = fiveTupleKey(listener.path.transport, address, port, listener.path.localAddress, listener.path.localPort);
  // A retransmission while the first copy is still being handled: that one answers.
  if (ctx.table.pending.has(key)) {
    ctx.drop('request_in_flight');
    return;
  }
  // 3-9. REQUESTED-TRANSPORT, DONT-FRAGMENT, RESERVATION-TOKEN, the address families, EVEN-PORT, LIFETIME (allocate-request.ts).
  //    REQUESTED-TRANSPORT TCP (RFC 6062 §5.1) over a TCP or TLS connection: a TCP allocation.
  const request = readAllocateRequest(message, ctx.relays.families, ctx.o.maxLifetimeSeconds, {
    relaysTcp: ctx.relays.relaysTcp,
    overStream: listener.path.transport !== 'udp',
  });
  // RFC 8016 §3.1: an empty MOBILITY-TICKET asks for mobility (405 when it is off).
  const mobile = mobilityTicketOf(ctx, message);
  if (mobile !== undefined && mobile.length !== 0) throw new TurnError(ErrorCode.BadRequest, 'MOBILITY-TICKET must be empty in an Allocate');
  // 10. The quotas: this node's total (508) here, the user's (486) with the store claim.
  if (ctx.o.totalQuota > 0 && ctx.table.size + ctx.table.pending.size >= ctx.o.totalQuota) {
    ctx.o.counters.quotaRefusals++;
    ctx.refusals.refuse('total_quota');
    throw new TurnError(ErrorCode.InsufficientCapacity);
  }
  ctx.table.pending.add(key);
  // Set once the rest runs after a promise: that promise's end takes the key out of pending.
  let later = false;
  try {
    const now = ctx.o.clock.now();
    const seed: AllocationSeed = {
      key,
      clientAddress: address,
      clientPort: port,
      username: r.auth.username,
      realm: ctx.o.credentials.realm,
      createdAtMs: now,
      expiresAtMs: now + request.lifetimeSeconds * 1000,
    };
    let allocation: Allocation | undefined;
    const onPacket = (payload: Buffer, peerAddress: string, peerPort: number, length?: number): void => {
      if (allocation) ctx.peerData.onPeerPacket(allocation, payload, peerAddress, peerPort, length);
    };
    // The relayed transport address(es), claimed in the store: at once when the bind and the
    // store answer at once (RelayAllocator.claim), and then so is the answer, without an
    // async frame or a promise per Allocate (docs/scaling.md, part 1).
    // No other closure in this scope but the setter below: V8 keeps one context for the
    // closures of a scope, and onPacket lives as long as the relay socket, so whatever another
    // closure here captured (the request, its message and buffers) would live as long too.
    const claim = ctx.relays.claim(seed, listener.path, request, onPacket);
    if (!(claim instanceof Promise)) {
      if (claim.ok) allocation = claim.allocation;
      const done = finish(ctx, r, key, request, mobile !== undefined, claim);
      if (done === undefined) return;
      later = true;
      return pendingUntil(ctx, key, done);
    }
    later = true;
    return finishLater(ctx, r, key, request, mobile !== undefined, claim, (claimed) => {
      allocation = claimed;
    });
  } finally {
    if (!later) ctx.table.pending.delete(key);
  }
}

/** The claim answered a promise: the rest once it settles; the 5-tuple stays pending until then. */
async function finishLater(
  ctx: TurnContext,
  r: MethodRequest,
  key: string,
  request: AllocateRequest,
  mobile: boolean,
  claim: Promise<Claim>,
  take: (allocation: Allocation) => void,
): Promise<void> {
  try {
    const claimed = await claim;
    if (claimed.ok) take(claimed.allocation);
    await finish(ctx, r, key, request, mobile, claimed);
  } finally {
    ctx.table.pending.delete(key);
  }
}

/** The 5-tuple stays pending until `done` settles. */
async function pendingUntil(ctx: TurnContext, key: string, done: Promise<void>): Promise<void> {
  try {
    await done;
  } finally {
    ctx.table.pending.delete(key);
  }
}

/**
 * The claim made: the allocation goes into the table and is answered; or the claim's refusal.
 * A promise only when the node stopped or the connection closed meanwhile (the store delete).
 */
function finish(ctx: TurnContext, r: MethodRequest, key: string, request: AllocateRequest, mobile: boolean, claim: Claim): Promise<void> | undefined {
  if (!claim.ok) {
    refused(ctx, r, claim);
    return undefined;
  }
  const allocation = claim.allocation;
  if (ctx.stopped || r.listener.closed) return abandoned(ctx, claim, key);
  // RFC 6062 §5.3: from now on the relayed address takes peers' connections.
  if (request.tcp) startTcpRelay(ctx, allocation);
  ctx.table.add(r.listener, allocation);
  ctx.o.counters.allocationsCreated++;
  respond(ctx, r, claim, request.lifetimeSeconds, mobile);
  return undefined;
}

/** Claimed while the node stopped or the client's connection closed: nothing kept, 508. */
async function abandoned(ctx: TurnContext, claim: Claim & { ok: true }, key: string): Promise<void> {
  ctx.relays.abandon(claim);
  if (!claim.allocation.localOnly) await ctx.o.store.delete(key, ctx.stopped ? 'shutdown' : 'connection-closed').catch(() => undefined);
  throw new TurnError(ErrorCode.InsufficientCapacity, ctx.stopped ? 'Shutting down' : 'Connection closed');
}

/** RFC 8656 §7.2 step 2: a retransmitted Allocate gets the original success response again; any other 437. */
function answerRetransmission(r: MethodRequest, existing: Allocation): void {
  const kept = existing.allocateResponseTo(r.message.transactionId);
  if (kept !== undefined && existing.username === r.auth.username) {
    r.listener.path.sendMessage(kept, r.port, r.address);
    return;
  }
  throw new TurnError(ErrorCode.AllocationMismatch);
}

/** No allocation: the error the claim's refusal calls for. */
function refused(ctx: TurnContext, r: MethodRequest, claim: Claim & { ok: false }): void {
  switch (claim.refused) {
    case 'unknown_token':
      // Step 5: a RESERVATION-TOKEN that is not (or no longer) valid.
      throw new TurnError(ErrorCode.InsufficientCapacity, 'Unknown RESERVATION-TOKEN');
    case 'user_quota':
      ctx.o.counters.quotaRefusals++;
      ctx.refusals.refuse('user_quota');
      throw new TurnError(ErrorCode.AllocationQuotaReached);
    case 'five_tuple_taken':
      // Another node holds this 5-tuple's allocation (a retransmitted Allocate after a reroute):
      // its owner answers, with the original response.
      if (!r.local && ctx.o.foreign?.offer(r.listener, r.message.raw, r.address, r.port)) return;
      throw new TurnError(ErrorCode.AllocationMismatch);
    default:
      ctx.refusals.refuse(claim.refused);
      throw new TurnError(ErrorCode.InsufficientCapacity, claim.refused === 'relay_ports_full' ? 'No relay port available' : 'No relay socket available');
  }
}

/** The success response (RFC 8656 §7.2), kept on the allocation to answer retransmissions. */
function respond(ctx: TurnContext, r: MethodRequest, claim: Claim & { ok: true }, lifetime: number, mobile: boolean): void {
  const { allocation, additionalError, reservedToken } = claim;
  const w = new MessageWriter(Method.Allocate, MessageClass.SuccessResponse, r.message.transactionId);
  w.addXorAddress(Attr.XorRelayedAddress, allocation.relay.address, allocation.relay.port);
  if (allocation.additionalRelay) w.addXorAddress(Attr.XorRelayedAddress, allocation.additionalRelay.address, allocation.additionalRelay.port);
  if (additionalError !== undefined) w.add(Attr.AddressErrorCode, encodeAddressErrorCode(AddressFamily.IPv6, additionalError, reasonPhrase(additionalError)));
  w.add(Attr.Lifetime, encodeUint32(lifetime));
  if (reservedToken) w.add(Attr.ReservationToken, reservedToken);
  w.addXorAddress(Attr.XorMappedAddress, r.address, r.port);
  if (mobile) w.add(Attr.MobilityTicket, issueTicket(ctx, allocation));
  // Kept for retransmissions (40 s, Allocation.prune) in the allocations' own slabs
  // (allocation/kept-responses.ts), never in a slice of Node's shared pool.
  allocation.keepAllocateResponse(ctx.replies.send(r.listener, r.message, w, r.auth.key, r.address, r.port, 'allocate', 200));
  // The line's object and its strings only when info is logged (not at the usual warn).
  if (ctx.o.logger.isLevelEnabled?.('info') === false) return;
  ctx.o.logger.info(
    {
      event: 'allocation_created',
      client: `${r.address}:${r.port}`,
      transport: r.listener.path.transport,
      relayTransport: allocation.tcp ? 'tcp' : undefined,
      relayed: `${allocation.relay.address}:${allocation.relay.port}`,
      relayedIPv6: allocation.additionalRelay ? `[${allocation.additionalRelay.address}]:${allocation.additionalRelay.port}` : undefined,
      user: r.auth.username,
      lifetimeSeconds: lifetime,
      localOnly: allocation.localOnly || undefined,
    },
    'allocation created',
  );
}

/** Counts capacity refusals (508/486) and logs about them at most once per interval, never per Allocate. */
export class CapacityRefusals {
  /** Refusals since the last log line about them, and when that was. */
  private unlogged = 0;
  private loggedAtMs = -Infinity;

  constructor(
    private readonly o: Pick<TurnContext['o'], 'counters' | 'clock' | 'logger'>,
    /** Live allocations now (for the log line). */
    private readonly allocations: () => number,
  ) {}

  refuse(reason: AllocateRefusalReason): void {
    this.o.counters.allocateRefusals[reason]++;
    this.unlogged++;
    const now = this.o.clock.now();
    if (now - this.loggedAtMs < REFUSAL_LOG_INTERVAL_MS) return;
    this.o.logger.warn(
      { refused: this.unlogged, reason, allocations: this.allocations(), sinceMs: Number.isFinite(this.loggedAtMs) ? now - this.loggedAtMs : undefined },
      'Allocates refused for capacity',
    );
    this.loggedAtMs = now;
    this.unlogged = 0;
  }
}

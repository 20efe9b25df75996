// Refresh (RFC 8656 §8.2, "Receiving a Refresh Request"): keeps an allocation
// alive, or deletes it with a LIFETIME of 0. With a MOBILITY-TICKET (RFC 8016 §3.2,
// methods/mobility.ts) it may come from a new 5-tuple, which the allocation moves to,
// and its answer carries a new ticket.

import { decodeAddressFamily, encodeUint32 } from '../../stun/attributes.js';
import { AddressFamily, Attr, ErrorCode, MessageClass, Method } from '../../stun/constants.js';
import { getAttribute } from '../../stun/message.js';
import { MessageWriter } from '../../stun/writer.js';
import type { TurnContext } from '../context.js';
import { TurnError } from '../errors.js';
import { requestedLifetimeSeconds } from './allocate-request.js';
import { issueTicket, mobilityTicketOf, redeemTicket } from './mobility.js';
import { type MethodRequest, requireAllocation } from './request.js';

export async function refresh(ctx: TurnContext, r: MethodRequest): Promise<void> {
  const { message } = r;
  const ticket = mobilityTicketOf(ctx, message);
  // (RFC 8656 §5) The allocation of this 5-tuple, made by this user: 437 or 441 otherwise;
  // with a ticket, the allocation it names (moved here if it was elsewhere).
  const allocation = ticket === undefined ? requireAllocation(r) : await redeemTicket(ctx, r, ticket);
  // Held by another node, which answers.
  if (!allocation) return;
  // 1. REQUESTED-ADDRESS-FAMILY names a family the allocation does not have: 443.
  const familyValue = getAttribute(message, Attr.RequestedAddressFamily);
  if (familyValue) {
    const family = decodeAddressFamily(familyValue);
    if (family !== AddressFamily.IPv4 && family !== AddressFamily.IPv6) throw new TurnError(ErrorCode.BadRequest, 'Bad REQUESTED-ADDRESS-FAMILY');
    if (!allocation.relayFor(family === AddressFamily.IPv6)) throw new TurnError(ErrorCode.PeerAddressFamilyMismatch);
  }
  // 2. The new lifetime: 0 deletes the allocation, anything else is bounded as for an Allocate.
  const lifetime = requestedLifetimeSeconds(message, ctx.o.maxLifetimeSeconds);
  if (lifetime === 0) {
    await ctx.writer.delete(r.listener, allocation, 'refresh-zero');
  } else {
    allocation.expiresAtMs = ctx.o.clock.now() + lifetime * 1000;
    await ctx.writer.persist(allocation);
  }
  // 3. The success response carries the lifetime granted.
  const w = new MessageWriter(Method.Refresh, MessageClass.SuccessResponse, message.transactionId);
  w.add(Attr.Lifetime, encodeUint32(lifetime));
  if (ticket !== undefined && lifetime > 0) w.add(Attr.MobilityTicket, issueTicket(ctx, allocation));
  ctx.replies.send(r.listener, message, w, r.auth.key, r.address, r.port, 'refresh', 200);
}

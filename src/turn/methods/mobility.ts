// RFC 8016 mobility: the MOBILITY-TICKET of an Allocate (§3.1) and a Refresh (§3.2),
// and the move of an allocation to the 5-tuple a ticket is redeemed from. Off unless
// the engine has a ticket sealer (--mobility): then any MOBILITY-TICKET gets 405
// Mobility Forbidden (§3.5).
//
// Who moves: the node that holds the allocation. A Refresh that lands on another node
// of a forward-mode cluster (the client changed network and the anycast route took it
// to another PoP) is forwarded to the owner named by the store (ForeignPacketHandler);
// in anycast relay mode every node holds every allocation and moves it itself, the
// store's move (its version-guarded deletion of the old record) deciding between two.
// What a ticket is and why it moves an allocation once: auth/mobility-ticket.ts.

import { Attr, ErrorCode } from '../../stun/constants.js';
import { type StunMessage, getAttribute } from '../../stun/message.js';
import { fiveTupleKey } from '../../store/types.js';
import type { Allocation } from '../allocation/allocation.js';
import type { TicketClaims } from '../auth/mobility-ticket.js';
import type { TurnContext } from '../context.js';
import { TurnError } from '../errors.js';
import type { MethodRequest } from './request.js';

/** The request's MOBILITY-TICKET, if any: 405 when mobility is off (RFC 8016 §3.1, §3.2). */
export function mobilityTicketOf(ctx: TurnContext, message: StunMessage): Buffer | undefined {
  const ticket = getAttribute(message, Attr.MobilityTicket);
  if (ticket === undefined) return undefined;
  if (!ctx.o.mobility) {
    ctx.o.counters.mobilityRefusals++;
    throw new TurnError(ErrorCode.MobilityForbidden);
  }
  return ticket;
}

/** A fresh ticket for the allocation as it is now (its key and move count). */
export function issueTicket(ctx: TurnContext, allocation: Allocation): Buffer {
  return ctx.o.mobility!.seal({
    key: allocation.key,
    createdAtMs: allocation.createdAtMs,
    relayedPort: allocation.relay.port,
    generation: allocation.mobilityGeneration,
  });
}

function names(allocation: Allocation, claims: TicketClaims): boolean {
  return allocation.createdAtMs === claims.createdAtMs && allocation.relay.port === claims.relayedPort;
}

function refuse(ctx: TurnContext, code: number, reason?: string): never {
  ctx.o.counters.mobilityRefusals++;
  throw new TurnError(code, reason);
}

/**
 * RFC 8016 §3.2: the allocation a Refresh with a ticket acts on, moved to the request's
 * 5-tuple when it comes from a new one. Undefined: forwarded to the node that holds it,
 * which answers. 400 for a ticket that is not ours or not current, 437 when the ticket's
 * allocation is gone or the new 5-tuple has one, 441 for another user's allocation.
 */
export async function redeemTicket(ctx: TurnContext, r: MethodRequest, ticket: Buffer): Promise<Allocation | undefined> {
  const claims = ctx.o.mobility!.open(ticket);
  if (!claims) refuse(ctx, ErrorCode.BadRequest, 'Bad MOBILITY-TICKET');
  const own = r.listener.find(r.address, r.port);
  if (own) {
    // From the allocation's own 5-tuple: a plain refresh that asks for a new ticket. An earlier
    // generation is accepted here (the retransmitted Refresh that moved it carries the one
    // before): whoever sends from this 5-tuple with its credentials already holds it.
    if (!names(own, claims) || claims.generation > own.mobilityGeneration) refuse(ctx, ErrorCode.BadRequest, 'Bad MOBILITY-TICKET');
    if (own.username !== r.auth.username) refuse(ctx, ErrorCode.WrongCredentials);
    return own;
  }
  const held = ctx.table.byStoreKey(claims.key);
  if (!held) {
    // Another node's allocation (forward mode): its owner moves it.
    if (await ctx.o.foreign?.forwardToOwner?.(claims.key, r.listener, r.message.raw, r.address, r.port)) return undefined;
    refuse(ctx, ErrorCode.AllocationMismatch);
  }
  const allocation = held.allocation;
  if (!names(allocation, claims) || allocation.deleted) refuse(ctx, ErrorCode.AllocationMismatch);
  // RFC 8016 §3.2: only with the credentials the allocation was made with.
  if (allocation.username !== r.auth.username) refuse(ctx, ErrorCode.WrongCredentials);
  // Spent: the allocation moved since this ticket was issued (a replay, or a second redemption).
  if (claims.generation !== allocation.mobilityGeneration) refuse(ctx, ErrorCode.BadRequest, 'Stale MOBILITY-TICKET');
  const path = r.listener.path;
  const key = fiveTupleKey(path.transport, r.address, r.port, path.localAddress, path.localPort);
  if (ctx.table.pending.has(key) || ctx.table.byStoreKey(key) || r.listener.closed) refuse(ctx, ErrorCode.AllocationMismatch);
  // Spent now, before any wait: a copy of this ticket redeemed meanwhile finds it stale.
  allocation.mobilityGeneration++;
  ctx.table.pending.add(key);
  try {
    const outcome = await ctx.writer.move(r.listener, allocation, r.address, r.port, key);
    if (outcome === 'unavailable') refuse(ctx, ErrorCode.ServerError, 'Store unavailable');
    if (outcome !== 'moved') refuse(ctx, ErrorCode.AllocationMismatch);
  } finally {
    ctx.table.pending.delete(key);
  }
  ctx.o.counters.mobilityMoves++;
  ctx.o.logger.info(
    { event: 'allocation_moved', client: `${r.address}:${r.port}`, relayed: `${allocation.relay.address}:${allocation.relay.port}`, user: allocation.username },
    'allocation moved to a new client 5-tuple (RFC 8016)',
  );
  return allocation;
}

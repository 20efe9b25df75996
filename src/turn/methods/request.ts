// What every method handler receives, and the checks several of them share.

import { decodeAddress } from '../../stun/address.js';
import { AddressFamily, ErrorCode, MessageClass } from '../../stun/constants.js';
import type { StunMessage } from '../../stun/message.js';
import { MessageWriter } from '../../stun/writer.js';
import type { Allocation } from '../allocation/allocation.js';
import type { EngineListener } from '../allocation/table.js';
import type { Authenticated } from '../auth/authenticate.js';
import type { TurnContext } from '../context.js';
import { TurnError } from '../errors.js';

/** One authenticated request on its 5-tuple. */
export interface MethodRequest {
  readonly listener: EngineListener;
  readonly message: StunMessage;
  readonly auth: Authenticated;
  readonly address: string;
  readonly port: number;
  /** The cluster already looked for another owner of this 5-tuple. */
  readonly local: boolean;
}

/** The allocation a Refresh, CreatePermission or ChannelBind acts on: 437 without one. */
export function requireAllocation(r: MethodRequest): Allocation {
  const allocation = r.listener.find(r.address, r.port);
  if (!allocation) throw new TurnError(ErrorCode.AllocationMismatch);
  // RFC 8656 §5: requests on an allocation must use the username that created it.
  if (allocation.username !== r.auth.username) throw new TurnError(ErrorCode.WrongCredentials);
  return allocation;
}

/**
 * Decodes and vets one XOR-PEER-ADDRESS: 400 malformed, 443 wrong family, 403 by policy.
 * `withPort`: the port matters too (ChannelBind; a CreatePermission's port is ignored, RFC 8656 §10.2).
 */
export function checkPeer(ctx: TurnContext, allocation: Allocation, value: Buffer, transactionId: Buffer, withPort = false): { address: string; port: number } {
  const peer = decodeAddress(value, transactionId);
  if (!peer) throw new TurnError(ErrorCode.BadRequest, 'Bad XOR-PEER-ADDRESS');
  // RFC 8656 §10.2/§12.2: a peer of a family the allocation has no relayed address for is 443.
  if (!allocation.relayFor(peer.family === AddressFamily.IPv6)) throw new TurnError(ErrorCode.PeerAddressFamilyMismatch);
  const verdict = withPort ? ctx.o.peerPolicy.checkPeer(peer.address, peer.port) : ctx.o.peerPolicy.check(peer.address);
  if (!verdict.allowed) {
    ctx.o.counters.peerPolicyRefusals++;
    ctx.o.logger.debug({ peer: peer.address, reason: verdict.reason, user: allocation.username }, 'peer refused by policy');
    throw new TurnError(ErrorCode.Forbidden);
  }
  return peer;
}

/** A request over one of the AllocationLimits: 508 (RFC 8656 §10.2, §12.2: a capacity limit), counted. */
export function overLimit(ctx: TurnContext, reason: string): never {
  ctx.o.counters.limitRefusals++;
  throw new TurnError(ErrorCode.InsufficientCapacity, reason);
}

/**
 * Writes the allocation (WriteThrough.persistNow) and then answers an attribute-less success
 * (CreatePermission, ChannelBind): within the call when the store answered within it (the
 * memory store), else once the write is done; a failed write rejects, and the engine answers
 * it as any failure.
 */
export function succeedOncePersisted(ctx: TurnContext, r: MethodRequest, allocation: Allocation, method: number, label: string): Promise<void> | undefined {
  const writing = ctx.writer.persistNow(allocation);
  if (writing === undefined) {
    emptySuccess(ctx, r, method, label);
    return undefined;
  }
  return emptySuccessAfter(ctx, r, method, label, writing);
}

function emptySuccess(ctx: TurnContext, r: MethodRequest, method: number, label: string): void {
  const w = new MessageWriter(method, MessageClass.SuccessResponse, r.message.transactionId);
  ctx.replies.send(r.listener, r.message, w, r.auth.key, r.address, r.port, label, 200);
}

async function emptySuccessAfter(ctx: TurnContext, r: MethodRequest, method: number, label: string, writing: Promise<void>): Promise<void> {
  await writing;
  emptySuccess(ctx, r, method, label);
}

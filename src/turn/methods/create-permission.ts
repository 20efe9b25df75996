// CreatePermission (RFC 8656 §10.2, "Receiving a CreatePermission Request"):
// installs or refreshes a permission for each XOR-PEER-ADDRESS, all or nothing.

import { parseIPv4 } from '../../net/ip.js';
import { Attr, ErrorCode, Method } from '../../stun/constants.js';
import { getAttributes } from '../../stun/message.js';
import { type Allocation, PERMISSION_LIFETIME_MS } from '../allocation/allocation.js';
import type { TurnContext } from '../context.js';
import { TurnError } from '../errors.js';
import { type MethodRequest, checkPeer, overLimit, requireAllocation, succeedOncePersisted } from './request.js';

/** RFC 8656 §10.2. Answers within the call when the store write was done within it (WriteThrough.persistNow), else once it is. */
export function createPermission(ctx: TurnContext, r: MethodRequest): Promise<void> | undefined {
  const { message } = r;
  const allocation = requireAllocation(r);
  // 1. At least one XOR-PEER-ADDRESS (400), and no more than one request may ask (508).
  const values = getAttributes(message, Attr.XorPeerAddress);
  if (values.length === 0) throw new TurnError(ErrorCode.BadRequest, 'XOR-PEER-ADDRESS missing');
  if (values.length > ctx.limits.peersPerRequest) return overLimit(ctx, 'Too many peers in one request');
  // 2. Every address of the allocation's family (443) and allowed by the server (403),
  //    checked before any is installed: all or nothing.
  const peers = values.map((v) => checkPeer(ctx, allocation, v, message.transactionId));
  // 3. The permissions fit under the allocation's cap (508).
  if (allocation.permissionsByAddress.size + newPeerAddresses(allocation, peers) > ctx.limits.permissionsPerAllocation)
    return overLimit(ctx, 'Too many permissions');
  // 4. Install or refresh each for the permission lifetime (RFC 8656 §9: the port is ignored).
  const expiresAtMs = ctx.o.clock.now() + PERMISSION_LIFETIME_MS;
  for (const peer of peers) allocation.permit(peer.address, parseIPv4(peer.address), expiresAtMs);
  // 5. A success response without attributes, once the change is written.
  return succeedOncePersisted(ctx, r, allocation, Method.CreatePermission, 'create_permission');
}

/** Up to this many peers in a request, duplicates are found by comparing each with those before it. */
const PAIRWISE_PEERS = 8;

/**
 * How many distinct peer IPs of the request have no permission yet. A count rather than a
 * set built per request (almost every CreatePermission names one peer); a request with many
 * (up to ctx.limits.peersPerRequest) gets the set, not a quadratic walk.
 */
export function newPeerAddresses(allocation: Allocation, peers: readonly { readonly address: string }[]): number {
  const permitted = allocation.permissionsByAddress;
  if (peers.length > PAIRWISE_PEERS) {
    const added = new Set<string>();
    for (const peer of peers) if (!permitted.has(peer.address)) added.add(peer.address);
    return added.size;
  }
  let count = 0;
  for (let i = 0; i < peers.length; i++) {
    const address = peers[i]!.address;
    if (permitted.has(address)) continue;
    let earlier = false;
    for (let j = 0; j < i && !earlier; j++) earlier = peers[j]!.address === address;
    if (!earlier) count++;
  }
  return count;
}

// ChannelBind (RFC 8656 §12.2, "Receiving a ChannelBind Request"): binds a channel
// number to a peer transport address, or refreshes that binding, and installs or
// refreshes the permission for the peer's IP.

import { parseIPv4 } from '../../net/ip.js';
import { decodeChannelNumber } from '../../stun/attributes.js';
import { isValidChannelNumber } from '../../stun/channel-data.js';
import { Attr, ErrorCode, Method } from '../../stun/constants.js';
import { getAttribute } from '../../stun/message.js';
import { CHANNEL_LIFETIME_MS, CHANNEL_QUARANTINE_MS, PERMISSION_LIFETIME_MS } from '../allocation/allocation.js';
import type { TurnContext } from '../context.js';
import { TurnError } from '../errors.js';
import { type MethodRequest, checkPeer, overLimit, requireAllocation, succeedOncePersisted } from './request.js';

/** RFC 8656 §12.2. Answers within the call when the store write was done within it (WriteThrough.persistNow), else once it is. */
export function channelBind(ctx: TurnContext, r: MethodRequest): Promise<void> | undefined {
  const { message } = r;
  const allocation = requireAllocation(r);
  // RFC 6062 §5.1: a TCP allocation's data goes over data connections, never channels (400).
  if (allocation.tcp) throw new TurnError(ErrorCode.BadRequest, 'No channels on a TCP allocation');
  // 1. Both CHANNEL-NUMBER and XOR-PEER-ADDRESS (400).
  const numberValue = getAttribute(message, Attr.ChannelNumber);
  const peerValue = getAttribute(message, Attr.XorPeerAddress);
  if (!numberValue || !peerValue) throw new TurnError(ErrorCode.BadRequest, 'CHANNEL-NUMBER or XOR-PEER-ADDRESS missing');
  // 2. The number within the channel range (400; stun/channel-data.ts).
  const number = decodeChannelNumber(numberValue);
  if (number === undefined || !isValidChannelNumber(number)) throw new TurnError(ErrorCode.BadRequest, 'Channel number out of range');
  // 3. The peer of the allocation's family (443) and allowed, port included (403).
  const peer = checkPeer(ctx, allocation, peerValue, message.transactionId, true);
  // A channel carries datagrams to one transport address: port 0 is none.
  if (peer.port === 0) throw new TurnError(ErrorCode.BadRequest, 'Peer port 0');
  const now = ctx.o.clock.now();
  // Forget bindings whose quarantine is over before judging this one: the checks below (and
  // bindChannel) must see the state the clock says, not what the last tick() left behind.
  if (allocation.prune(now)) allocation.dirty = true;
  // 4. The number not bound to another peer, nor the peer to another number (400),
  //    quarantined bindings included (RFC 8656 §12: 5 more minutes after expiry).
  const existing = allocation.channel(number);
  if (existing && (existing.peerAddress !== peer.address || existing.peerPort !== peer.port)) {
    throw new TurnError(ErrorCode.BadRequest, 'Channel bound to another peer');
  }
  const peerBinding = allocation.permissionsByAddress.get(peer.address)?.channelFor(peer.port);
  if (peerBinding && peerBinding.number !== number && peerBinding.expiresAtMs + CHANNEL_QUARANTINE_MS > now) {
    throw new TurnError(ErrorCode.BadRequest, 'Peer bound to another channel');
  }
  // 5. A new binding within the allocation's caps (508).
  if (!existing) {
    if (allocation.channelCount >= ctx.limits.channelsPerAllocation) return overLimit(ctx, 'Too many channels');
    if (!allocation.permissionsByAddress.has(peer.address) && allocation.permissionsByAddress.size >= ctx.limits.permissionsPerAllocation) {
      return overLimit(ctx, 'Too many permissions');
    }
  }
  // 6. Create or refresh the binding and the permission for the peer's IP.
  const permission = allocation.permit(peer.address, parseIPv4(peer.address), now + PERMISSION_LIFETIME_MS);
  allocation.bindChannel(number, permission, peer.port, now + CHANNEL_LIFETIME_MS);
  // 7. A success response without attributes, once the change is written.
  return succeedOncePersisted(ctx, r, allocation, Method.ChannelBind, 'channel_bind');
}

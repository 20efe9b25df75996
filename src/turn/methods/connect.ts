// RFC 6062 TCP allocations, the peer side: Connect (§5.2, "Receiving a Connect
// Request"): a connection from the relayed transport address to a peer; and a peer's
// connection to the relayed transport address (§5.3, "Receiving a TCP Connection on a
// Relayed Transport Address"), announced to the client by a ConnectionAttempt
// indication. Either way the peer data connection waits 30 s for a ConnectionBind
// (connection-bind.ts). The peer policy applies exactly as for UDP peers (RFC 8656 §21):
// a TCP relay reaches services a datagram cannot.

import { randomBytes } from 'node:crypto';
import { encodeUint32 } from '../../stun/attributes.js';
import { Attr, ErrorCode, MessageClass, Method } from '../../stun/constants.js';
import { getAttribute } from '../../stun/message.js';
import { MessageWriter } from '../../stun/writer.js';
import type { Allocation } from '../allocation/allocation.js';
import { CONNECT_TIMEOUT_MS, MAX_PEER_CONNECTIONS, type PeerDataConnection, TcpRelayState, peerKey } from '../allocation/tcp-connections.js';
import type { TurnContext } from '../context.js';
import { TurnError } from '../errors.js';
import type { PeerConnection, TcpRelaySocket } from '../ports.js';
import { type MethodRequest, checkPeer, overLimit, requireAllocation } from './request.js';

/** A new TCP allocation (allocate.ts): its relayed address takes peers' connections from now on (§5.3). */
export function startTcpRelay(ctx: TurnContext, allocation: Allocation): void {
  const socket = allocation.relay as TcpRelaySocket;
  const tcp = new TcpRelayState(socket);
  allocation.tcp = tcp;
  socket.accept((connection) => acceptPeer(ctx, allocation, tcp, connection));
}

export async function connect(ctx: TurnContext, r: MethodRequest): Promise<void> {
  const { message } = r;
  // The allocation of this control connection, made by this user (437, 441); a TCP one (400).
  const allocation = requireAllocation(r);
  const tcp = allocation.tcp;
  if (!tcp) throw new TurnError(ErrorCode.BadRequest, 'Connect needs a TCP allocation');
  // 1. XOR-PEER-ADDRESS present and valid (400), of the allocation's family (443), and
  //    allowed by the server's policy, port included: never a service port of the server (403).
  const value = getAttribute(message, Attr.XorPeerAddress);
  if (!value) throw new TurnError(ErrorCode.BadRequest, 'XOR-PEER-ADDRESS missing');
  const peer = checkPeer(ctx, allocation, value, message.transactionId, true);
  if (peer.port === 0) throw new TurnError(ErrorCode.BadRequest, 'Peer port 0');
  // 2. A permission for the peer's IP, as for every peer of an allocation (RFC 8656 §9): 403 without one.
  const permission = allocation.permissionsByAddress.get(peer.address);
  if (!permission || permission.expiresAtMs <= ctx.o.clock.now()) throw new TurnError(ErrorCode.Forbidden, 'No permission for the peer');
  // 3. A Connect to this peer under way, or its connection pending or joined: 446.
  if (tcp.hasPeer(peer.address, peer.port)) throw new TurnError(ErrorCode.ConnectionAlreadyExists);
  if (tcp.size >= MAX_PEER_CONNECTIONS) return overLimit(ctx, 'Too many peer connections');
  // 4. The connection from the relayed transport address; refused, failed or not made within 30 s: 447.
  const key = peerKey(peer.address, peer.port);
  tcp.connecting.add(key);
  let connection: PeerConnection | undefined;
  try {
    connection = await tcp.socket.connect(peer.address, peer.port, CONNECT_TIMEOUT_MS);
  } finally {
    tcp.connecting.delete(key);
  }
  if (!connection) {
    ctx.o.counters.tcpPeerConnections.connect_failed++;
    throw new TurnError(ErrorCode.ConnectionTimeoutOrFailure);
  }
  // The allocation ended meanwhile (Refresh 0, expiry, its connection closed): so does this one.
  if (allocation.deleted || ctx.stopped) {
    connection.close();
    throw new TurnError(ErrorCode.AllocationMismatch);
  }
  ctx.o.counters.tcpPeerConnections.connected++;
  // 5. A peer data connection, waiting 30 s for its ConnectionBind; its CONNECTION-ID in the answer.
  const entry = ctx.tcpConnections.add(allocation, tcp, connection, ctx.o.clock.now());
  const w = new MessageWriter(Method.Connect, MessageClass.SuccessResponse, message.transactionId);
  w.add(Attr.ConnectionId, encodeUint32(entry.id));
  ctx.replies.send(r.listener, message, w, r.auth.key, r.address, r.port, 'connect', 200);
}

/**
 * §5.3: a peer connected to the relayed transport address. Without a live permission for
 * its IP (or against the peer policy, which may have learned more since the permission was
 * made) it is closed at once; else the client hears of it in a ConnectionAttempt.
 */
function acceptPeer(ctx: TurnContext, allocation: Allocation, tcp: TcpRelayState, connection: PeerConnection): void {
  const permission = allocation.permissionsByAddress.get(connection.peerAddress);
  if (
    allocation.deleted ||
    ctx.stopped ||
    !permission ||
    permission.expiresAtMs <= ctx.o.clock.now() ||
    !ctx.o.peerPolicy.check(connection.peerAddress).allowed ||
    tcp.size >= MAX_PEER_CONNECTIONS
  ) {
    ctx.drop('tcp_peer_refused');
    connection.close();
    return;
  }
  ctx.o.counters.tcpPeerConnections.accepted++;
  const entry = ctx.tcpConnections.add(allocation, tcp, connection, ctx.o.clock.now());
  sendConnectionAttempt(ctx, allocation, entry);
}

/** The ConnectionAttempt indication (§5.3) on the allocation's control connection: the peer and the CONNECTION-ID. */
function sendConnectionAttempt(ctx: TurnContext, allocation: Allocation, entry: PeerDataConnection): void {
  const w = new MessageWriter(Method.ConnectionAttempt, MessageClass.Indication, randomBytes(12));
  w.addXorAddress(Attr.XorPeerAddress, entry.connection.peerAddress, entry.connection.peerPort);
  w.add(Attr.ConnectionId, encodeUint32(entry.id));
  if (ctx.o.software) w.addText(Attr.Software, ctx.o.software);
  allocation.path.sendMessage(w.toBuffer(), allocation.clientPort, allocation.clientAddress);
}

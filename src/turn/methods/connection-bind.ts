// ConnectionBind (RFC 6062 §5.4, "Receiving a ConnectionBind Request"): a new TCP or TLS
// client connection claims a peer data connection by its CONNECTION-ID and becomes its
// client data connection: after the success response, bytes pass unchanged both ways and
// no STUN is read on it again (the transport's PeerConnection.join).

import { decodeUint32 } from '../../stun/attributes.js';
import { Attr, ErrorCode, MessageClass, Method } from '../../stun/constants.js';
import { getAttribute } from '../../stun/message.js';
import { MessageWriter } from '../../stun/writer.js';
import type { TurnContext } from '../context.js';
import { TurnError } from '../errors.js';
import type { MethodRequest } from './request.js';

/**
 * Runs synchronously from the request to the join (no await): the client's first raw bytes
 * may follow the request in the same segment, and the connection must stop framing before
 * it reads them.
 */
export async function connectionBind(ctx: TurnContext, r: MethodRequest): Promise<void> {
  const { listener, message } = r;
  // 1. Over TCP or TLS (400), on a connection that is not a control connection (400).
  if (listener.path.transport === 'udp') throw new TurnError(ErrorCode.BadRequest, 'ConnectionBind needs a TCP or TLS connection');
  if (listener.holdsAllocation) throw new TurnError(ErrorCode.BadRequest, 'ConnectionBind on a control connection');
  // 2. CONNECTION-ID present and naming a peer data connection that waits for its bind (400).
  const value = getAttribute(message, Attr.ConnectionId);
  const id = value ? decodeUint32(value) : undefined;
  if (id === undefined) throw new TurnError(ErrorCode.BadRequest, 'CONNECTION-ID missing');
  const entry = ctx.tcpConnections.pending(id);
  if (!entry || entry.allocation.deleted) throw new TurnError(ErrorCode.BadRequest, 'Unknown CONNECTION-ID');
  // 3. The credentials of the allocation's own user (RFC 8656 §5): another user cannot take its peer (441).
  if (entry.allocation.username !== r.auth.username) throw new TurnError(ErrorCode.WrongCredentials);
  // 4. The success response, then the connection carries the peer's bytes.
  entry.bindByMs = 0;
  const w = new MessageWriter(Method.ConnectionBind, MessageClass.SuccessResponse, message.transactionId);
  ctx.replies.send(listener, message, w, r.auth.key, r.address, r.port, 'connection_bind', 200);
  if (!entry.connection.join(listener.path)) {
    entry.connection.close();
    return;
  }
  ctx.o.counters.tcpPeerConnections.bound++;
}

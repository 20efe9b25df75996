// Binding (RFC 8489 §6.3.1 server behaviour, §11 for RFC 3489 clients): the one
// request answered without authentication, with the source transport address the
// server saw. ICE learns its server-reflexive candidate this way.

import { Attr, MessageClass, Method } from '../../stun/constants.js';
import type { StunMessage } from '../../stun/message.js';
import { MessageWriter } from '../../stun/writer.js';
import type { TurnContext } from '../context.js';
import type { ListenerHandle } from '../ports.js';

export function binding(ctx: TurnContext, listener: ListenerHandle, message: StunMessage, address: string, port: number): void {
  // 1. Unauthenticated, so possibly spoofed: a bounded rate of answers per source.
  if (ctx.auth.bindingLimited(address)) return;
  // 2. A client of RFC 8489: XOR-MAPPED-ADDRESS, FINGERPRINT if the request had one.
  if (message.hasMagicCookie) {
    const w = new MessageWriter(Method.Binding, MessageClass.SuccessResponse, message.transactionId);
    w.addXorAddress(Attr.XorMappedAddress, address, port);
    ctx.replies.send(listener, message, w, undefined, address, port, 'binding', 200);
    return;
  }
  // 3. RFC 8489 §11: an RFC 3489 client gets MAPPED-ADDRESS, and its 128-bit transaction id back.
  const w = new MessageWriter(Method.Binding, MessageClass.SuccessResponse, message.transactionId, message.raw.readUInt32BE(4));
  w.addAddress(Attr.MappedAddress, address, port);
  listener.path.sendMessage(w.toBuffer(), port, address);
  ctx.replies.answered(message, 'binding', 200);
}

// Sending from an unconnected UDP socket without an object per datagram: a scratch buffer
// whose views are cached, and FramedSender, the framed send of a listening socket.

import type dgram from 'node:dgram';
import { framedLength, writeFramed } from '../framed.js';
import { SEND_QUEUED, UdpSender } from './dgram-fast.js';
import { DATAGRAM_SCRATCH_BYTES, MAX_SEND_QUEUE } from './socket.js';

/** Scratch views are cached by offset and length, direct-mapped. */
const VIEW_CACHE_SLOTS = 64;

/**
 * A buffer to build or copy datagrams in, with its views cached by (offset, length): a send
 * through UdpSender wants a view of exactly the datagram, and a new view per send costs
 * more than copying the bytes. Sends are synchronous, so one scratch can serve many
 * sockets; when a send was queued instead, the pending send keeps the buffer and the
 * scratch takes a new one.
 */
export class SendScratch {
  buffer = Buffer.allocUnsafe(DATAGRAM_SCRATCH_BYTES);
  private views = newViewCache();

  view(offset: number, length: number): Uint8Array {
    const views = this.views;
    const slot = (length ^ (offset << 3)) & (VIEW_CACHE_SLOTS - 1);
    const byteOffset = this.buffer.byteOffset + offset;
    let view = views[slot];
    if (view === undefined || view.length !== length || view.byteOffset !== byteOffset)
      views[slot] = view = new Uint8Array(this.buffer.buffer, byteOffset, length);
    return view;
  }

  /** The last send was queued and still points at the buffer: continue in a new one. */
  replace(): void {
    this.buffer = Buffer.allocUnsafe(DATAGRAM_SCRATCH_BYTES);
    this.views = newViewCache();
  }
}

function newViewCache(): (Uint8Array | undefined)[] {
  return new Array<Uint8Array | undefined>(VIEW_CACHE_SLOTS).fill(undefined);
}

/**
 * Copies head+payload into a scratch buffer and sends it; replaces the scratch if the send
 * was queued (the queued send still points at it). The socket must use a synchronous lookup.
 */
export class FramedSender {
  private readonly scratch = new SendScratch();
  private readonly sender: UdpSender;

  /** allowFast false: always through Socket.send (see UdpSender). */
  constructor(
    socket: dgram.Socket,
    private readonly onCongestionDrop: () => void,
    allowFast = true,
  ) {
    this.sender = new UdpSender(socket, allowFast);
  }

  send(head: Buffer, headLength: number, payload: Buffer, offset: number, length: number, padTo4: boolean, port: number, address: string): void {
    const sender = this.sender;
    if (sender.queueCount() > MAX_SEND_QUEUE) return this.onCongestionDrop();
    const scratch = this.scratch;
    if (framedLength(headLength, length, padTo4) > scratch.buffer.length) return; // larger than any UDP datagram
    const total = writeFramed(scratch.buffer, head, headLength, payload, offset, length, padTo4);
    if (sender.send(scratch.view(0, total), 0, total, port, address) === SEND_QUEUED) scratch.replace();
  }

  /** Sends a whole message nobody changes afterwards; a bad port or a closed socket is a drop, never a throw. */
  sendWhole(message: Buffer, port: number, address: string): void {
    if (this.sender.queueCount() > MAX_SEND_QUEUE) return this.onCongestionDrop();
    this.sender.sendUnchanging(message, 0, message.length, port, address);
  }
}

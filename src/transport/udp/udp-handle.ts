// Bare UDP handles: node:dgram's own C++ handle (UDPWrap) used without the dgram.Socket
// around it, for the relay sockets of the per-allocation model (relay.ts).
//
// An allocation keeps its relay socket for its whole life, so what a socket costs on the
// heap is copied twice by V8's scavenger before it settles in the old generation, with the
// event loop stopped meanwhile. A dgram.Socket is about 820 B of heap (the Socket and its
// EventEmitter fields, its private state, the handle, a bound lookup function and dgram's
// closures) and 7 µs of CPU to make and bind; the handle alone is about 100 B and 3 µs
// (docs/scaling.md, part 1).
//
// Like dgram-fast.ts this relies on Node internals (checked with Node 20's lib/dgram.js
// and src/udp_wrap.cc), and assumes nothing: the handle's constructor and the SendWrap
// constructor are learnt from one real, bound dgram socket (detectUdpHandleKit), and the
// kit is used only if they have the methods below. Otherwise relay sockets stay dgram
// sockets, as before. What the handle does, per src/udp_wrap.cc:
// - `new UDP()` makes an unopened libuv handle; `bind(ip, port, flags)` (`bind6` for IPv6)
//   opens the socket and answers 0 or a negative errno (EADDRINUSE, EMFILE...);
// - `recvStart()` starts reading; each datagram calls the handle's `onmessage(nread,
//   handle, buf, rinfo)` with the handle as `this`; a negative nread is a read error;
// - `send(req, list, count, port, ip, hasCallback)` (`send6`) answers msg_size + 1 for a
//   datagram that left at once, 0 when libuv queued it (the request and the list then
//   belong to the pending send), a negative errno on failure;
// - `close()` closes it (once; later calls do nothing).

import { getSystemErrorName } from 'node:util';
import type dgram from 'node:dgram';
import {
  type DgramUdpHandle,
  type SendRequest,
  type SendWrapConstructor,
  SEND_DONE,
  SEND_FAILED,
  SEND_QUEUED,
  type SendResult,
  probeSendWrap,
  socketState,
} from './dgram-fast.js';

/** The UDP handle as used here: what dgram-fast.ts uses of it, and the rest of what dgram calls on it. */
export interface UdpHandle extends DgramUdpHandle {
  bind(address: string, port: number, flags: number): number;
  bind6(address: string, port: number, flags: number): number;
  recvStart(): number;
  send6(req: object, list: Uint8Array[], count: number, port: number, address: string, hasCallback: boolean): number;
  close(): void;
  onmessage: ((this: UdpHandle, nread: number, handle: unknown, buf: Buffer, rinfo: dgram.RemoteInfo) => void) | null;
}

export type UdpHandleConstructor = new () => UdpHandle;

/** What a factory needs to make and use bare handles. */
export interface UdpHandleKit {
  readonly UDP: UdpHandleConstructor;
  readonly SendWrap: SendWrapConstructor;
}

const HANDLE_METHODS = ['bind', 'bind6', 'recvStart', 'send', 'send6', 'close'] as const;

/**
 * The kit, learnt from `socket` (a dgram socket bound just now, not yet used), or
 * undefined when its internals are not as expected. Sends one empty datagram through
 * Socket.send that never leaves (dgram-fast.ts, probeSendWrap).
 */
export function detectUdpHandleKit(socket: dgram.Socket): UdpHandleKit | undefined {
  const state = socketState(socket);
  const handle = state?.handle;
  if (handle === null || handle === undefined) return undefined;
  const UDP: unknown = (handle as object).constructor;
  if (typeof UDP !== 'function' || UDP === Object) return undefined;
  const proto: unknown = UDP.prototype;
  if (typeof proto !== 'object' || proto === null) return undefined;
  for (const m of HANDLE_METHODS) if (typeof (proto as Record<string, unknown>)[m] !== 'function') return undefined;
  const SendWrap = probeSendWrap(socket, handle);
  if (SendWrap === undefined) return undefined;
  try {
    // One made and closed unopened: the constructor takes no arguments, as dgram's newHandle calls it.
    new (UDP as UdpHandleConstructor)().close();
  } catch {
    return undefined;
  }
  return { UDP: UDP as UdpHandleConstructor, SendWrap };
}

/** The errno name of a handle's negative answer ('EADDRINUSE', 'EMFILE'...). */
export function errnoName(errno: number): string {
  try {
    return getSystemErrorName(errno);
  } catch {
    return 'EUNKNOWN';
  }
}

/**
 * Opens a handle bound to address:port (an IP literal; `ipv6` says which family), or
 * answers the bind's negative errno (the handle is then closed). Reading is not started.
 */
export function bindUdpHandle(kit: UdpHandleKit, address: string, ipv6: boolean, port: number): UdpHandle | number {
  const handle = new kit.UDP();
  const err = ipv6 ? handle.bind6(address, port, 0) : handle.bind(address, port, 0);
  if (err === 0) return handle;
  handle.close();
  return err < 0 ? err : -1;
}

/**
 * Sends from bare handles with one request object and one list for as long as every send
 * completes at once (the usual case: libuv's uv_udp_try_send). One per factory: the event
 * loop runs one send at a time. When libuv queues a send, the request and the list stay
 * with it and new ones are made.
 */
export class HandleSender {
  private req!: SendRequest;
  private list!: Uint8Array[];

  constructor(private readonly SendWrap: SendWrapConstructor) {
    this.fresh();
  }

  /** Sends data (the whole of it) to address:port; SEND_QUEUED: libuv holds the bytes until sent. */
  send(handle: UdpHandle, ipv6: boolean, data: Uint8Array, port: number, address: string): SendResult {
    const list = this.list;
    list[0] = data;
    const sent = ipv6 ? handle.send6(this.req, list, 1, port, address, false) : handle.send(this.req, list, 1, port, address, false);
    if (sent > 0) return SEND_DONE;
    if (sent < 0) return SEND_FAILED;
    this.fresh();
    return SEND_QUEUED;
  }

  /** A new request and list: the previous ones, if any, belong to a queued send. */
  private fresh(): void {
    const req = new this.SendWrap();
    const list: Uint8Array[] = [];
    req.list = list;
    this.req = req;
    this.list = list;
  }
}

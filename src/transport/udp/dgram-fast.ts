// A cheaper send and receive path for unconnected node:dgram sockets on the relay hot path.
//
// Socket.send spends more JavaScript per datagram than the whole TURN logic: argument
// checks, a Buffer view (sliceBuffer), the lookup callback, a closure (afterDns), a
// one-element list and a new SendWrap per datagram, then UDPWrap::Send in C++. UdpSender
// calls that C++ entry point (the socket's UDP handle's `send(req, list, count, port, ip,
// hasCallback)`) directly, with one request object and one list array reused for as long
// as every send completes synchronously (the usual case: libuv's uv_udp_try_send). The C++
// side answers msg_size + 1 for a synchronous send, 0 when libuv queued it (the request,
// the list and the bytes then belong to the pending send until it completes) and a
// negative errno on failure, which, like Socket.send without a callback, is counted and
// otherwise ignored.
//
// This relies on Node internals (checked with Node 20's lib/dgram.js and src/udp_wrap.cc),
// so nothing is assumed: the socket's state, its handle and the SendWrap constructor are
// detected once the socket is bound, by watching one Socket.send of an empty datagram to an
// address of the wrong family for the socket (so that, should Node ever send it, the kernel
// is never asked: UDPWrap rejects it with EINVAL). If anything is not as expected, every
// send goes through Socket.send, as before. The receive hook is the same idea in the other
// direction: the handle's `onmessage`, which dgram sets to its emitter of 'message' events.

import type dgram from 'node:dgram';

/** The datagram left synchronously: the bytes may be reused at once. */
export const SEND_DONE = 1;
/** libuv queued the datagram: its bytes must not change until the send completes. */
export const SEND_QUEUED = 0;
/** The send failed at once (an errno from the kernel or libuv, or the socket is closed); dropped. */
export const SEND_FAILED = -1;
export type SendResult = typeof SEND_DONE | typeof SEND_QUEUED | typeof SEND_FAILED;

/** The receive callback: the datagram and where it came from. */
export type DatagramHandler = (buf: Buffer, address: string, port: number) => void;

/** What we use of node:dgram's UDP handle (internalBinding('udp_wrap').UDP). */
export interface DgramUdpHandle {
  send(req: object, list: Uint8Array[], count: number, port: number, address: string, hasCallback: boolean): number;
  getSendQueueCount(): number;
  onmessage: unknown;
}

/** What we use of a dgram.Socket's private state (lib/dgram.js, `this[kStateSymbol]`). */
export interface SocketState {
  readonly handle: DgramUdpHandle | null;
  readonly bindState: number;
  readonly connectState: number;
}

export type SendWrapConstructor = new () => SendRequest;
export interface SendRequest {
  /** Keeps the list (and through it the bytes) alive while a queued send is pending, as dgram does. */
  list: Uint8Array[];
}

/** lib/dgram.js: BIND_STATE_BOUND, CONNECT_STATE_DISCONNECTED. */
const BIND_STATE_BOUND = 2;
const CONNECT_STATE_DISCONNECTED = 0;
const EMPTY = Buffer.alloc(0);
/** The probe's destination: a port nobody listens on, at an address UDPWrap rejects for the socket's family. */
const PROBE_PORT = 9;

const enum Mode {
  /** Not bound yet when last looked at: try again at the next send. */
  Unprobed,
  Fast,
  Slow,
}

function isObject(value: unknown): value is Record<PropertyKey, unknown> {
  return typeof value === 'object' && value !== null;
}

/** The socket's private state (found by shape, not by name), or undefined. */
export function socketState(socket: dgram.Socket): SocketState | undefined {
  for (const key of Object.getOwnPropertySymbols(socket)) {
    const value: unknown = (socket as unknown as Record<symbol, unknown>)[key];
    if (!isObject(value) || !('handle' in value) || typeof value.bindState !== 'number' || typeof value.connectState !== 'number') continue;
    const handle = value.handle;
    if (handle !== null && !(isObject(handle) && typeof handle.send === 'function' && typeof handle.getSendQueueCount === 'function')) continue;
    return value as unknown as SocketState;
  }
  return undefined;
}

/**
 * Watches Socket.send hand an empty datagram to handle.send, to learn the calling
 * convention and the SendWrap constructor. The handle's own `send` is swapped for the
 * duration of the call only. Returns undefined when it did not see what it expected.
 */
export function probeSendWrap(socket: dgram.Socket, handle: DgramUdpHandle): SendWrapConstructor | undefined {
  const own = Object.getOwnPropertyDescriptor(handle, 'send');
  const inherited = handle.send;
  let seen: unknown[] | undefined;
  const watch = function (this: unknown, ...args: unknown[]): number {
    if (seen === undefined) seen = args;
    return EMPTY.length + 1; // "sent synchronously", without sending anything
  };
  try {
    Object.defineProperty(handle, 'send', { value: watch, writable: true, configurable: true, enumerable: own?.enumerable ?? false });
    // Wrong family on purpose: if Socket.send ever defers to after the restore below, the
    // real handle refuses the address (EINVAL) and nothing leaves.
    socket.send(EMPTY, 0, 0, PROBE_PORT, socket.address().family === 'IPv6' ? '0.0.0.0' : '::');
  } catch {
    seen = undefined;
  } finally {
    if (own !== undefined) Object.defineProperty(handle, 'send', own);
    else delete (handle as unknown as Record<string, unknown>).send;
  }
  if (handle.send !== (own?.value ?? inherited)) return undefined;
  if (seen === undefined || seen.length !== 6) return undefined;
  const [req, list, count, port, , hasCallback] = seen;
  if (!isObject(req) || !Array.isArray(list) || list.length !== 1 || count !== 1 || port !== PROBE_PORT || hasCallback !== false) return undefined;
  const ctor: unknown = req.constructor;
  if (typeof ctor !== 'function' || ctor === Object) return undefined;
  return ctor as SendWrapConstructor;
}

/**
 * Sends datagrams from one unconnected dgram socket, through the UDP handle when Node's
 * internals are as expected, else through Socket.send. Exactly one of these per socket
 * (it reuses one request object). The socket must use a synchronous `lookup` (like
 * literalLookup) for the fallback's SEND_DONE to be true.
 */
export class UdpSender {
  private mode = Mode.Unprobed;
  private state: SocketState | undefined;
  private handle: DgramUdpHandle | undefined;
  private SendWrap: SendWrapConstructor | undefined;
  private req: SendRequest | undefined;
  private list: Uint8Array[] = [EMPTY];
  /** A send of ours was queued and the queue has not been seen empty since. */
  private backlog = false;
  /** Sends that failed at once (kernel or libuv errors; a closed socket). */
  failures = 0;

  constructor(
    private readonly socket: dgram.Socket,
    /** false: always Socket.send (tests, and a switch should the fast path ever misbehave). */
    private readonly allowFast = true,
  ) {}

  /** Whether sends go through the UDP handle directly (known once the socket is bound and one send was made). */
  get fast(): boolean {
    return this.mode === Mode.Fast;
  }

  /**
   * Datagrams queued in libuv, from any sender on this socket. Free (no call into C++)
   * while none of our sends has been queued since the queue was last seen empty.
   */
  queueCount(): number {
    if (!this.backlog) return 0;
    let count = 0;
    try {
      count = this.socket.getSendQueueCount();
    } catch {
      // closed: nothing will leave any more
    }
    if (count === 0) this.backlog = false;
    return count;
  }

  /**
   * Sends data[offset, offset + length) to address:port (an IP literal of the socket's family).
   * SEND_QUEUED hands the bytes to libuv: the caller must not change them afterwards.
   */
  send(data: Uint8Array, offset: number, length: number, port: number, address: string): SendResult {
    return this.sendVia(data, offset, length, port, address, true);
  }

  /**
   * send() for bytes the caller never changes afterwards (a received datagram): the
   * fallback need not ask libuv whether the send was queued, so the result may say
   * SEND_DONE for a queued send there.
   */
  sendUnchanging(data: Uint8Array, offset: number, length: number, port: number, address: string): SendResult {
    return this.sendVia(data, offset, length, port, address, false);
  }

  private sendVia(data: Uint8Array, offset: number, length: number, port: number, address: string, exact: boolean): SendResult {
    // Port 0 or out of range: dgram would throw (ERR_SOCKET_BAD_PORT) into the caller, and
    // no datagram can go there anyway. Refused here, for every caller.
    if (port <= 0 || port > 0xffff || (port | 0) !== port) return this.fail();
    if (this.mode !== Mode.Fast && !this.enable()) return this.slowSend(data, offset, length, port, address, exact);
    const state = this.state!;
    const handle = this.handle!;
    // A closed socket (handle gone) fails quietly. A connected socket, a non-string address
    // or an empty one (dgram's lookup makes that the loopback address) take the documented way.
    if (state.handle !== handle) return this.fail();
    if (state.connectState !== CONNECT_STATE_DISCONNECTED || typeof address !== 'string' || address.length === 0) {
      return this.slowSend(data, offset, length, port, address, exact);
    }
    const list = this.list;
    list[0] = offset === 0 && length === data.length ? data : new Uint8Array(data.buffer, data.byteOffset + offset, length);
    const sent = handle.send(this.req!, list, 1, port, address, false);
    if (sent > 0) return SEND_DONE;
    if (sent < 0) return this.fail();
    // Queued: the request and the list (which keeps the bytes alive) now belong to the pending send.
    this.backlog = true;
    this.newRequest();
    return SEND_QUEUED;
  }

  private fail(): SendResult {
    this.failures++;
    return SEND_FAILED;
  }

  private newRequest(): void {
    const req = new this.SendWrap!();
    const list: Uint8Array[] = [EMPTY];
    req.list = list;
    this.req = req;
    this.list = list;
  }

  /** Switches to the fast path if the socket is bound and its internals are as expected. */
  private enable(): boolean {
    if (this.mode === Mode.Slow) return false;
    if (!this.allowFast) {
      this.mode = Mode.Slow;
      return false;
    }
    const state = socketState(this.socket);
    if (state === undefined) {
      this.mode = Mode.Slow;
      return false;
    }
    if (state.bindState !== BIND_STATE_BOUND || state.handle === null) return false; // not yet: ask again next time
    if (state.connectState !== CONNECT_STATE_DISCONNECTED) {
      this.mode = Mode.Slow;
      return false;
    }
    const handle = state.handle;
    const SendWrap = probeSendWrap(this.socket, handle);
    if (SendWrap === undefined) {
      this.mode = Mode.Slow;
      return false;
    }
    this.state = state;
    this.handle = handle;
    this.SendWrap = SendWrap;
    this.newRequest();
    this.mode = Mode.Fast;
    return true;
  }

  private slowSend(data: Uint8Array, offset: number, length: number, port: number, address: string, exact: boolean): SendResult {
    const socket = this.socket;
    // Socket.send throws synchronously for a bad port or address, or a socket closed
    // under us: one datagram that cannot leave is a counted drop, never a crash.
    try {
      socket.send(data, offset, length, port, address);
    } catch {
      return this.fail();
    }
    // With a synchronous lookup, a send not done by now was queued (and may hold the bytes).
    if (!exact || socket.getSendQueueCount() === 0) return SEND_DONE;
    this.backlog = true;
    return SEND_QUEUED;
  }
}

/**
 * Delivers the datagrams of a bound socket to `onPacket` straight from the UDP handle,
 * without the 'message' event (no rinfo.size, no EventEmitter dispatch). Read errors still
 * become the socket's 'error' event, through dgram's own handler. Returns false, and
 * changes nothing, when the handle is not as expected: then use socket.on('message').
 */
export function receiveFromHandle(socket: dgram.Socket, onPacket: DatagramHandler): boolean {
  const state = socketState(socket);
  if (state === undefined || state.bindState !== BIND_STATE_BOUND || state.handle === null) return false;
  const handle = state.handle;
  const dgramOnMessage = handle.onmessage;
  if (typeof dgramOnMessage !== 'function') return false;
  handle.onmessage = function onmessage(nread: number, self: unknown, buf: Buffer, rinfo: dgram.RemoteInfo): void {
    if (nread < 0) {
      (dgramOnMessage as (...args: unknown[]) => void).call(this, nread, self, buf, rinfo);
      return;
    }
    onPacket(buf, rinfo.address, rinfo.port);
  };
  return true;
}

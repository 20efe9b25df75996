// Relay sockets: the relayed transport addresses of allocations (RFC 8656 §7.2), bound
// by a factory that keeps track of the ports it holds and of spare descriptors. A relay
// socket is a bare UDP handle (udp-handle.ts) once the factory has learnt how to make one
// from its first dgram socket; a dgram socket where that cannot be learnt.

import type dgram from 'node:dgram';
import { closeSync, openSync } from 'node:fs';
import { isIP } from 'node:net';
import type { PeerPacketHandler, RelayBindFailure, RelayBound, RelaySocket, RelaySocketFactory } from '../../turn/ports.js';
import { SEND_QUEUED, UdpSender, receiveFromHandle } from './dgram-fast.js';
import { SendScratch } from './framed-sender.js';
import { bindUdpSocketNow, createUdpSocket } from './socket.js';
import { HandleSender, type UdpHandle, type UdpHandleKit, bindUdpHandle, detectUdpHandleKit, errnoName } from './udp-handle.js';

class UdpRelaySocket implements RelaySocket {
  private closed = false;
  /** Made at the first send: most relay sockets of a busy node never send, or not for a while. */
  private sender: UdpSender | undefined;
  constructor(
    private readonly socket: dgram.Socket,
    readonly address: string,
    readonly port: number,
    /** Shared by the factory's relay sockets. */
    private readonly scratch: SendScratch,
    /** The factory's bookkeeping of its address's ports (freed at close): no closure per socket. */
    private readonly ports: AddressPorts,
  ) {}

  send(payload: Buffer, offset: number, length: number, port: number, address: string): void {
    if (this.closed) return;
    const sender = (this.sender ??= new UdpSender(this.socket));
    const scratch = this.scratch;
    // Part of a received datagram (the data of a ChannelData message or a Send indication)
    // is copied to the scratch, whose views are cached: a view of the part would be an
    // object per packet. The whole of one, or anything the fast path does not take, goes as
    // it is (a queued send may keep it: nobody changes a received datagram).
    if (
      !sender.fast ||
      (offset === 0 && length === payload.length) ||
      payload.length > scratch.buffer.length ||
      offset < 0 ||
      length < 0 ||
      offset + length > payload.length
    ) {
      sender.sendUnchanging(payload, offset, length, port, address);
      return;
    }
    scratch.buffer.set(payload, 0);
    if (sender.send(scratch.view(offset, length), 0, length, port, address) === SEND_QUEUED) scratch.replace();
  }

  close(): void {
    if (this.closed) return;
    this.closed = true;
    this.ports.bound[this.port] = 0;
    this.ports.closed++;
    try {
      this.socket.close();
    } catch {
      // already closed
    }
  }
}

/** What the bare-handle sockets of one factory share: no field or closure per socket for these. */
interface HandleShared {
  readonly kit: UdpHandleKit;
  readonly sender: HandleSender;
  /** The same scratch as the factory's dgram sockets. */
  readonly scratch: SendScratch;
}

/** A bare handle's own field (set once, at bind): its relay socket, read by the factory's onmessage. */
interface RelayHandle extends UdpHandle {
  relay: HandleRelaySocket;
}

/** A relay socket on a bare UDP handle (udp-handle.ts). */
class HandleRelaySocket implements RelaySocket {
  private closed = false;
  constructor(
    private readonly handle: UdpHandle,
    readonly address: string,
    readonly port: number,
    readonly onPacket: PeerPacketHandler,
    private readonly ports: AddressPorts,
    private readonly shared: HandleShared,
  ) {}

  send(payload: Buffer, offset: number, length: number, port: number, address: string): void {
    // A port no datagram can go to, or a range outside the payload: dropped (Socket.send would throw).
    if (this.closed || port <= 0 || port > 0xffff || (port | 0) !== port) return;
    if (offset < 0 || length < 0 || offset + length > payload.length) return;
    const { sender, scratch } = this.shared;
    const ipv6 = this.ports.ipv6;
    // A whole received datagram goes as it is (nobody changes one). Of part of one (the data
    // of a ChannelData message or a Send indication), the datagram is copied to the scratch,
    // whose views are cached: a view of the part would be an object per packet.
    if (offset === 0 && length === payload.length) {
      sender.send(this.handle, ipv6, payload, port, address);
      return;
    }
    if (payload.length > scratch.buffer.length) return; // larger than any UDP datagram
    scratch.buffer.set(payload, 0);
    if (sender.send(this.handle, ipv6, scratch.view(offset, length), port, address) === SEND_QUEUED) scratch.replace();
  }

  close(): void {
    if (this.closed) return;
    this.closed = true;
    this.ports.bound[this.port] = 0;
    this.ports.closed++;
    this.handle.close();
  }
}

/** Descriptors set aside (see UdpRelayFactory): enough for /readyz, a /metrics scrape and a few store reconnects. */
export const RESERVED_DESCRIPTORS = 16;
const IN_USE: RelayBindFailure = { failed: 'in-use' };

/** Ports this process holds on one relay address, and how many it has let go. */
interface AddressPorts {
  readonly bound: Uint8Array;
  closed: number;
  /** The address is an IPv6 literal (a bare handle binds and sends with bind6 and send6). */
  readonly ipv6: boolean;
}

/**
 * Binds relay sockets and keeps track of the ports it holds, so that port choice never
 * spends a system call on a port this process already has. It also sets aside a few
 * descriptors (on /dev/null): when a bind fails for want of descriptors they are let go,
 * so the ops endpoint can still accept /readyz and /metrics and the log can still be
 * written while the node is out; available() takes them back before saying yes.
 */
export class UdpRelayFactory implements RelaySocketFactory {
  private readonly scratch = new SendScratch();
  private readonly ports = new Map<string, AddressPorts>();
  private reserve: number[] = [];
  /** Every relay socket's 'error' listener: one function for all of them, not a closure each. */
  private readonly onSocketError = (err: Error): void => this.onError(err);
  /**
   * How to make bare handles: undefined until the first dgram relay socket is bound (it is
   * learnt from that one), null where it cannot be learnt (dgram sockets from then on).
   */
  private handles: HandleShared | null | undefined;
  /** Every bare handle's onmessage (`this` is the handle): one function for all of them. */
  private readonly onHandleMessage: NonNullable<UdpHandle['onmessage']>;

  constructor(
    private readonly onError: (err: Error) => void,
    private readonly reserveCount = RESERVED_DESCRIPTORS,
    /** false: every relay socket a dgram socket (tests; a switch should bare handles ever misbehave). */
    bareHandles = true,
  ) {
    if (!bareHandles) this.handles = null;
    this.onHandleMessage = function onRelayHandleMessage(this: UdpHandle, nread, _handle, buf, rinfo): void {
      if (nread >= 0) {
        (this as RelayHandle).relay.onPacket(buf, rinfo.address, rinfo.port);
        return;
      }
      const code = errnoName(nread);
      onError(Object.assign(new Error(`recvmsg ${code}`), { errno: nread, code, syscall: 'recvmsg' }));
    };
    this.takeReserve();
  }

  /** What the relay sockets are: bare UDP handles, dgram sockets, or not known until the first is bound. */
  get socketKind(): 'handle' | 'dgram' | 'unknown' {
    return this.handles === undefined ? 'unknown' : this.handles === null ? 'dgram' : 'handle';
  }

  private portsOf(address: string): AddressPorts {
    let p = this.ports.get(address);
    if (!p) this.ports.set(address, (p = { bound: new Uint8Array(65536), closed: 0, ipv6: isIP(address) === 6 }));
    return p;
  }

  holds(address: string, port: number): boolean {
    return this.ports.get(address)?.bound[port] === 1;
  }

  closedCount(address: string): number {
    return this.ports.get(address)?.closed ?? 0;
  }

  /**
   * Answered at once when the bind is done within the call (the usual case: an IP literal,
   * bindUdpSocketNow), so that an Allocate costs no promise for it; else a promise.
   */
  bind(address: string, port: number, onPacket: PeerPacketHandler): RelayBound | Promise<RelayBound> {
    const handles = this.handles;
    if (handles && isIP(address) !== 0) return this.bindHandle(handles, address, port, onPacket);
    const socket = createUdpSocket(address);
    const bound = bindUdpSocketNow(socket, address, port);
    if (bound instanceof Promise) {
      return bound.then(
        () => this.listen(socket, address, port, onPacket),
        (err: unknown) => this.failed(socket, err),
      );
    }
    return bound === undefined ? this.listen(socket, address, port, onPacket) : this.failed(socket, bound);
  }

  /** A bare handle bound, reading, and made a relay socket; or why not. */
  private bindHandle(shared: HandleShared, address: string, port: number, onPacket: PeerPacketHandler): RelayBound {
    const ports = this.portsOf(address);
    const handle = bindUdpHandle(shared.kit, address, ports.ipv6, port);
    if (typeof handle === 'number') return this.failure(errnoName(handle));
    const relay = new HandleRelaySocket(handle, address, port, onPacket, ports, shared);
    (handle as RelayHandle).relay = relay;
    handle.onmessage = this.onHandleMessage;
    const err = handle.recvStart();
    if (err !== 0) {
      handle.close();
      return this.failure(errnoName(err));
    }
    ports.bound[port] = 1;
    return relay;
  }

  /** A bound socket becomes a relay socket: its datagrams to onPacket, its port marked held. */
  private listen(socket: dgram.Socket, address: string, port: number, onPacket: PeerPacketHandler): RelaySocket {
    if (this.handles === undefined) {
      // The first relay socket, bound just now and not yet used: learn bare handles from it.
      const kit = detectUdpHandleKit(socket);
      this.handles = kit === undefined ? null : { kit, sender: new HandleSender(kit.SendWrap), scratch: this.scratch };
    }
    socket.on('error', this.onSocketError);
    if (!receiveFromHandle(socket, onPacket)) socket.on('message', (msg, rinfo) => onPacket(msg, rinfo.address, rinfo.port));
    const ports = this.portsOf(address);
    ports.bound[port] = 1;
    return new UdpRelaySocket(socket, address, port, this.scratch, ports);
  }

  /** The bind failed: why, for the port choice (in use: try another; else no socket can be had). */
  private failed(socket: dgram.Socket, e: unknown): RelayBindFailure {
    const err = e as NodeJS.ErrnoException;
    try {
      socket.close();
    } catch {
      // never bound
    }
    return this.failure(err.code ?? 'EUNKNOWN');
  }

  /** A bind's error code as the port choice wants it; out of descriptors lets the set-aside ones go. */
  private failure(code: string): RelayBindFailure {
    if (code === 'EADDRINUSE') return IN_USE;
    if (code === 'EMFILE' || code === 'ENFILE') this.releaseReserve();
    return { failed: 'unavailable', code };
  }

  async available(address: string): Promise<boolean> {
    if (!this.takeReserve()) return false;
    // A socket on an ephemeral port of the address: the same system calls a relay bind makes.
    const probe = await this.bind(address, 0, () => undefined);
    if ('failed' in probe) return false;
    probe.close();
    return true;
  }

  /** Takes the set-aside descriptors back; false (holding none) when the process has not that many free. */
  private takeReserve(): boolean {
    try {
      while (this.reserve.length < this.reserveCount) this.reserve.push(openSync('/dev/null', 'r'));
      return true;
    } catch {
      this.releaseReserve();
      return false;
    }
  }

  private releaseReserve(): void {
    for (const fd of this.reserve) {
      try {
        closeSync(fd);
      } catch {
        // already closed
      }
    }
    this.reserve = [];
  }

  /** Lets the set-aside descriptors go (server stop). */
  close(): void {
    this.releaseReserve();
  }
}

// UDP sockets: client listeners (one per listening IP, so answers leave from the
// address the client sent to) and relay sockets.

import dgram from 'node:dgram';
import { closeSync, openSync } from 'node:fs';
import { SEND_QUEUED, UdpSender, receiveFromHandle } from './dgram-fast.js';
import { literalLookup } from './lookup.js';
import type { ClientPath, PeerPacketHandler, RelayBindFailure, RelaySocket, RelaySocketFactory } from '../turn/ports.js';

/** Room for the largest UDP payload plus a Data indication head and padding. */
const SCRATCH_BYTES = 65536 + 64;
/** Scratch views are cached by offset and length, direct-mapped. */
const VIEW_CACHE_SLOTS = 64;
/** Above this many queued datagrams a socket is congested: drop rather than buffer without bound. */
const MAX_SEND_QUEUE = 4096;
const SOCKET_BUFFER_BYTES = 4 * 1024 * 1024;

function familyType(address: string): 'udp4' | 'udp6' {
  return address.includes(':') ? 'udp6' : 'udp4';
}

export interface UdpListenerHooks {
  onPacket(path: UdpClientListener, buf: Buffer, address: string, port: number): void;
  onCongestionDrop(): void;
  onError(err: Error): void;
}

/**
 * A buffer to build or copy datagrams in, with its views cached by (offset, length): a send
 * through UdpSender wants a view of exactly the datagram, and a new view per send costs
 * more than copying the bytes. Sends are synchronous, so one scratch can serve many
 * sockets; when a send was queued instead, the pending send keeps the buffer and the
 * scratch takes a new one.
 */
class SendScratch {
  buffer = Buffer.allocUnsafe(SCRATCH_BYTES);
  private views = newViewCache();

  view(offset: number, length: number): Uint8Array {
    const views = this.views;
    const slot = (length ^ (offset << 3)) & (VIEW_CACHE_SLOTS - 1);
    const byteOffset = this.buffer.byteOffset + offset;
    let view = views[slot];
    if (view === undefined || view.length !== length || view.byteOffset !== byteOffset) views[slot] = view = new Uint8Array(this.buffer.buffer, byteOffset, length);
    return view;
  }

  /** The last send was queued and still points at the buffer: continue in a new one. */
  replace(): void {
    this.buffer = Buffer.allocUnsafe(SCRATCH_BYTES);
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
  constructor(socket: dgram.Socket, private readonly onCongestionDrop: () => void, allowFast = true) {
    this.sender = new UdpSender(socket, allowFast);
  }

  send(head: Buffer, headLength: number, payload: Buffer, offset: number, length: number, padTo4: boolean, port: number, address: string): void {
    const sender = this.sender;
    if (sender.queueCount() > MAX_SEND_QUEUE) return this.onCongestionDrop();
    const pad = padTo4 ? (4 - (length & 3)) & 3 : 0;
    const total = headLength + length + pad;
    const scratch = this.scratch;
    const out = scratch.buffer;
    if (total > out.length) return; // larger than any UDP datagram
    // Heads are a few bytes (4 for ChannelData, at most 36 for a Data indication): a loop
    // beats Buffer.copy, which makes a view of a partial source.
    for (let i = 0; i < headLength; i++) out[i] = head[i]!;
    if (offset === 0 && length === payload.length) out.set(payload, headLength);
    else payload.copy(out, headLength, offset, offset + length);
    for (let i = headLength + length; i < total; i++) out[i] = 0;
    if (sender.send(scratch.view(0, total), 0, total, port, address) === SEND_QUEUED) scratch.replace();
  }

  /** Sends a whole message nobody changes afterwards; a bad port or a closed socket is a drop, never a throw. */
  sendWhole(message: Buffer, port: number, address: string): void {
    if (this.sender.queueCount() > MAX_SEND_QUEUE) return this.onCongestionDrop();
    this.sender.sendUnchanging(message, 0, message.length, port, address);
  }
}

export class UdpClientListener implements ClientPath {
  readonly transport = 'udp' as const;
  private readonly socket: dgram.Socket;
  private readonly framed: FramedSender;
  private boundPort = 0;

  constructor(readonly localAddress: string, private readonly requestedPort: number, private readonly hooks: UdpListenerHooks) {
    this.socket = dgram.createSocket({ type: familyType(localAddress), recvBufferSize: SOCKET_BUFFER_BYTES, sendBufferSize: SOCKET_BUFFER_BYTES, lookup: literalLookup });
    this.framed = new FramedSender(this.socket, hooks.onCongestionDrop);
  }

  get localPort(): number {
    return this.boundPort;
  }

  start(): Promise<void> {
    return new Promise((resolve, reject) => {
      const onError = (err: Error): void => reject(err);
      this.socket.once('error', onError);
      this.socket.bind({ address: this.localAddress, port: this.requestedPort, exclusive: true }, () => {
        this.socket.off('error', onError);
        this.socket.on('error', (err) => this.hooks.onError(err));
        this.boundPort = this.socket.address().port;
        const onPacket = (buf: Buffer, address: string, port: number): void => this.hooks.onPacket(this, buf, address, port);
        if (!receiveFromHandle(this.socket, onPacket)) this.socket.on('message', (msg, rinfo) => onPacket(msg, rinfo.address, rinfo.port));
        resolve();
      });
    });
  }

  sendMessage(message: Buffer, port: number, address: string): void {
    this.framed.sendWhole(message, port, address);
  }

  sendFramed(head: Buffer, headLength: number, payload: Buffer, offset: number, length: number, padTo4: boolean, port: number, address: string): void {
    this.framed.send(head, headLength, payload, offset, length, padTo4, port, address);
  }

  close(): Promise<void> {
    return new Promise((resolve) => {
      try {
        this.socket.close(() => resolve());
      } catch {
        resolve();
      }
    });
  }
}

class UdpRelaySocket implements RelaySocket {
  private closed = false;
  private readonly sender: UdpSender;
  constructor(
    private readonly socket: dgram.Socket,
    readonly address: string,
    readonly port: number,
    /** Shared by the factory's relay sockets. */
    private readonly scratch: SendScratch,
    private readonly onClose: (socket: UdpRelaySocket) => void,
  ) {
    this.sender = new UdpSender(socket);
  }

  send(payload: Buffer, offset: number, length: number, port: number, address: string): void {
    if (this.closed) return;
    const sender = this.sender;
    const scratch = this.scratch;
    // Part of a received datagram (the data of a ChannelData message or a Send indication)
    // is copied to the scratch, whose views are cached: a view of the part would be an
    // object per packet. The whole of one, or anything the fast path does not take, goes as
    // it is (a queued send may keep it: nobody changes a received datagram).
    if (!sender.fast || (offset === 0 && length === payload.length) || payload.length > scratch.buffer.length || offset < 0 || length < 0 || offset + length > payload.length) {
      sender.sendUnchanging(payload, offset, length, port, address);
      return;
    }
    scratch.buffer.set(payload, 0);
    if (sender.send(scratch.view(offset, length), 0, length, port, address) === SEND_QUEUED) scratch.replace();
  }

  close(): void {
    if (this.closed) return;
    this.closed = true;
    this.onClose(this);
    try {
      this.socket.close();
    } catch {
      // already closed
    }
  }
}

/** Descriptors set aside (see UdpRelayFactory): enough for /readyz, a /metrics scrape and a few store reconnects. */
export const RESERVED_DESCRIPTORS = 16;
const IN_USE: RelayBindFailure = { failed: 'in-use' };

/** Ports this process holds on one relay address, and how many it has let go. */
interface AddressPorts {
  readonly bound: Uint8Array;
  closed: number;
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

  constructor(private readonly onError: (err: Error) => void, private readonly reserveCount = RESERVED_DESCRIPTORS) {
    this.takeReserve();
  }

  private portsOf(address: string): AddressPorts {
    let p = this.ports.get(address);
    if (!p) this.ports.set(address, (p = { bound: new Uint8Array(65536), closed: 0 }));
    return p;
  }

  holds(address: string, port: number): boolean {
    return this.ports.get(address)?.bound[port] === 1;
  }

  closedCount(address: string): number {
    return this.ports.get(address)?.closed ?? 0;
  }

  bind(address: string, port: number, onPacket: PeerPacketHandler): Promise<RelaySocket | RelayBindFailure> {
    return new Promise((resolve) => {
      const socket = dgram.createSocket({ type: familyType(address), lookup: literalLookup });
      const onBindError = (err: NodeJS.ErrnoException): void => {
        try {
          socket.close();
        } catch {
          // never bound
        }
        if (err.code === 'EADDRINUSE') return resolve(IN_USE);
        if (err.code === 'EMFILE' || err.code === 'ENFILE') this.releaseReserve();
        resolve({ failed: 'unavailable', code: err.code ?? 'EUNKNOWN' });
      };
      socket.once('error', onBindError);
      socket.bind({ address, port, exclusive: true }, () => {
        socket.off('error', onBindError);
        socket.on('error', (err) => this.onError(err));
        if (!receiveFromHandle(socket, onPacket)) socket.on('message', (msg, rinfo) => onPacket(msg, rinfo.address, rinfo.port));
        const ports = this.portsOf(address);
        ports.bound[port] = 1;
        resolve(
          new UdpRelaySocket(socket, address, port, this.scratch, () => {
            ports.bound[port] = 0;
            ports.closed++;
          }),
        );
      });
    });
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

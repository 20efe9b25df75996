// A UDP "session": a socket bound to the listening address and port (SO_REUSEPORT, or SO_REUSEADDR: workers/shared-port.ts)
// and connect()ed to one client. Linux delivers a datagram to the connected socket
// that matches its 4-tuple before any unconnected one on the same port, so once a
// session exists, that client's packets reach the process holding it, whichever
// process holds the listening socket. This is how a worker process takes a client
// over (src/workers/). coturn does the same to spread UDP clients over its threads.
//
// Sends need no destination: no address parsing and no route lookup per packet.

import dgram from 'node:dgram';
import { literalLookup } from './lookup.js';
import { sharedPortOptions } from '../workers/shared-port.js';
import type { ClientPath } from '../turn/ports.js';

const ZEROS = Buffer.alloc(4);
const MAX_SEND_QUEUE = 4096;
const SOCKET_BUFFER_BYTES = 1024 * 1024;

export interface UdpSessionHooks {
  /** A packet from the session's client. */
  onPacket(session: UdpSession, buf: Buffer): void;
  /** A packet from another client, queued before connect() took effect: not ours to handle. */
  onStray(session: UdpSession, buf: Buffer, address: string, port: number): void;
  onCongestionDrop(): void;
}

export class UdpSession implements ClientPath {
  readonly transport = 'udp' as const;
  private readonly socket: dgram.Socket;
  private scratch = Buffer.allocUnsafe(65536 + 64);
  private connected = false;
  private closed = false;
  /** Packets from the client, for the idle sweep (no clock read per packet). */
  packets = 0;

  constructor(
    readonly localAddress: string,
    readonly localPort: number,
    readonly clientAddress: string,
    readonly clientPort: number,
    private readonly hooks: UdpSessionHooks,
  ) {
    this.socket = dgram.createSocket({
      type: localAddress.includes(':') ? 'udp6' : 'udp4',
      ...sharedPortOptions(), // SO_REUSEPORT where possible (workers/shared-port.ts)
      recvBufferSize: SOCKET_BUFFER_BYTES,
      sendBufferSize: SOCKET_BUFFER_BYTES,
      lookup: literalLookup,
    });
  }

  /** Binds next to the listening socket and connects to the client; resolves false if either fails. */
  open(): Promise<boolean> {
    return new Promise((resolve) => {
      const socket = this.socket;
      const fail = (): void => {
        this.close();
        resolve(false);
      };
      socket.once('error', fail);
      socket.on('message', (msg, rinfo) => {
        // Before connect() the socket was one more unconnected listener for a moment.
        if (rinfo.port !== this.clientPort || rinfo.address !== this.clientAddress) return this.hooks.onStray(this, msg, rinfo.address, rinfo.port);
        this.packets++;
        this.hooks.onPacket(this, msg);
      });
      socket.bind({ address: this.localAddress, port: this.localPort, exclusive: true }, () => {
        const connected = (): void => {
          socket.off('error', fail);
          // ICMP port unreachable surfaces as ECONNREFUSED on a connected socket: the client
          // went away; its allocation expires as usual.
          socket.on('error', () => undefined);
          this.connected = true;
          resolve(true);
        };
        // connect() throws synchronously for a port it refuses (0): a failed session, not a crash.
        try {
          socket.connect(this.clientPort, this.clientAddress, connected);
        } catch {
          fail();
        }
      });
    });
  }

  sendMessage(message: Buffer): void {
    if (!this.connected) return;
    if (this.socket.getSendQueueCount() > MAX_SEND_QUEUE) return this.hooks.onCongestionDrop();
    this.socket.send(message);
  }

  sendFramed(head: Buffer, headLength: number, payload: Buffer, offset: number, length: number, padTo4: boolean): void {
    if (!this.connected) return;
    const socket = this.socket;
    const queued = socket.getSendQueueCount();
    if (queued > MAX_SEND_QUEUE) return this.hooks.onCongestionDrop();
    const pad = padTo4 ? (4 - (length & 3)) & 3 : 0;
    const total = headLength + length + pad;
    // A queued send still points at the scratch buffer: use a fresh one.
    if (queued > 0) this.scratch = Buffer.allocUnsafe(65536 + 64);
    const scratch = this.scratch;
    head.copy(scratch, 0, 0, headLength);
    payload.copy(scratch, headLength, offset, offset + length);
    if (pad) ZEROS.copy(scratch, headLength + length, 0, pad);
    socket.send(scratch, 0, total);
  }

  close(): void {
    if (this.closed) return;
    this.closed = true;
    this.connected = false;
    try {
      this.socket.close();
    } catch {
      // never bound
    }
  }
}

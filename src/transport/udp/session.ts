// A UDP "session": a socket bound to the listening address and port (SO_REUSEPORT, or SO_REUSEADDR: port-sharing.ts)
// and connect()ed to one client. Linux delivers a datagram to the connected socket
// that matches its 4-tuple before any unconnected one on the same port, so once a
// session exists, that client's packets reach the process holding it, whichever
// process holds the listening socket. This is how a worker process takes a client
// over (src/workers/). coturn does the same to spread UDP clients over its threads.
//
// Sends need no destination: no address parsing and no route lookup per packet.

import type dgram from 'node:dgram';
import type { ClientPath } from '../../turn/ports.js';
import { writeFramed } from '../framed.js';
import { sharedPortOptions } from './port-sharing.js';
import { DATAGRAM_SCRATCH_BYTES, MAX_SEND_QUEUE, bindUdpSocket, createUdpSocket } from './socket.js';

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
  private scratch = Buffer.allocUnsafe(DATAGRAM_SCRATCH_BYTES);
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
    this.socket = createUdpSocket(localAddress, {
      ...sharedPortOptions(), // SO_REUSEPORT where possible (port-sharing.ts)
      recvBufferSize: SOCKET_BUFFER_BYTES,
      sendBufferSize: SOCKET_BUFFER_BYTES,
    });
  }

  /** Binds next to the listening socket and connects to the client; resolves false if either fails. */
  async open(): Promise<boolean> {
    const socket = this.socket;
    socket.on('message', (msg, rinfo) => {
      // Before connect() the socket was one more unconnected listener for a moment.
      if (rinfo.port !== this.clientPort || rinfo.address !== this.clientAddress) return this.hooks.onStray(this, msg, rinfo.address, rinfo.port);
      this.packets++;
      this.hooks.onPacket(this, msg);
    });
    try {
      await bindUdpSocket(socket, this.localAddress, this.localPort);
      await this.connect(socket);
    } catch {
      this.close();
      return false;
    }
    // ICMP port unreachable surfaces as ECONNREFUSED on a connected socket: the client
    // went away; its allocation expires as usual.
    socket.on('error', () => undefined);
    this.connected = true;
    return true;
  }

  private connect(socket: dgram.Socket): Promise<void> {
    return new Promise((resolve, reject) => {
      socket.once('error', reject);
      // connect() throws synchronously for a port it refuses (0): a failed session, not a crash.
      socket.connect(this.clientPort, this.clientAddress, () => {
        socket.off('error', reject);
        resolve();
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
    // A queued send still points at the scratch buffer: use a fresh one.
    if (queued > 0) this.scratch = Buffer.allocUnsafe(DATAGRAM_SCRATCH_BYTES);
    const scratch = this.scratch;
    socket.send(scratch, 0, writeFramed(scratch, head, headLength, payload, offset, length, padTo4));
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

// UDP sockets: client listeners (one per listening IP, so answers leave from the
// address the client sent to) and relay sockets.

import dgram from 'node:dgram';
import { literalLookup } from './lookup.js';
import type { ClientPath, PeerPacketHandler, RelaySocket, RelaySocketFactory } from '../turn/io.js';

const ZEROS = Buffer.alloc(4);
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

/** Copies head+payload into a scratch buffer and sends it; replaces the scratch if the send was queued. */
class FramedSender {
  private scratch = Buffer.allocUnsafe(65536 + 64);

  constructor(private readonly socket: dgram.Socket, private readonly onCongestionDrop: () => void) {}

  send(head: Buffer, headLength: number, payload: Buffer, offset: number, length: number, padTo4: boolean, port: number, address: string): void {
    const socket = this.socket;
    if (socket.getSendQueueCount() > MAX_SEND_QUEUE) return this.onCongestionDrop();
    const pad = padTo4 ? (4 - (length & 3)) & 3 : 0;
    const total = headLength + length + pad;
    const scratch = this.scratch;
    head.copy(scratch, 0, 0, headLength);
    payload.copy(scratch, headLength, offset, offset + length);
    if (pad) ZEROS.copy(scratch, headLength + length, 0, pad);
    socket.send(scratch, 0, total, port, address);
    // libuv sends synchronously when it can; if it had to queue, the queued send still
    // points at this buffer, so the next packet needs a fresh one.
    if (socket.getSendQueueCount() > 0) this.scratch = Buffer.allocUnsafe(65536 + 64);
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
        this.socket.on('message', (msg, rinfo) => this.hooks.onPacket(this, msg, rinfo.address, rinfo.port));
        resolve();
      });
    });
  }

  sendMessage(message: Buffer, port: number, address: string): void {
    this.socket.send(message, 0, message.length, port, address);
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
  constructor(private readonly socket: dgram.Socket, readonly address: string, readonly port: number) {}

  send(payload: Buffer, offset: number, length: number, port: number, address: string): void {
    if (this.closed) return;
    this.socket.send(payload, offset, length, port, address);
  }

  close(): void {
    if (this.closed) return;
    this.closed = true;
    try {
      this.socket.close();
    } catch {
      // already closed
    }
  }
}

export class UdpRelayFactory implements RelaySocketFactory {
  constructor(private readonly onError: (err: Error) => void) {}

  bind(address: string, port: number, onPacket: PeerPacketHandler): Promise<RelaySocket | undefined> {
    return new Promise((resolve) => {
      const socket = dgram.createSocket({ type: familyType(address), lookup: literalLookup });
      const onBindError = (): void => {
        try {
          socket.close();
        } catch {
          // never bound
        }
        resolve(undefined);
      };
      socket.once('error', onBindError);
      socket.bind({ address, port, exclusive: true }, () => {
        socket.off('error', onBindError);
        socket.on('error', (err) => this.onError(err));
        socket.on('message', (msg, rinfo) => onPacket(msg, rinfo.address, rinfo.port));
        resolve(new UdpRelaySocket(socket, address, port));
      });
    });
  }
}

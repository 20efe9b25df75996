// A UDP client listener: one socket per listening IP, so answers leave from the address
// the client sent to. It is the engine's ClientPath for every client without a session.

import type dgram from 'node:dgram';
import type { ClientPath } from '../../turn/ports.js';
import { receiveFromHandle } from './dgram-fast.js';
import { FramedSender } from './framed-sender.js';
import { bindUdpSocket, closeUdpSocket, createUdpSocket } from './socket.js';

const SOCKET_BUFFER_BYTES = 4 * 1024 * 1024;

export interface UdpListenerHooks {
  onPacket(path: UdpClientListener, buf: Buffer, address: string, port: number): void;
  onCongestionDrop(): void;
  onError(err: Error): void;
}

export class UdpClientListener implements ClientPath {
  readonly transport = 'udp' as const;
  private readonly socket: dgram.Socket;
  private readonly framed: FramedSender;
  private boundPort = 0;

  constructor(
    readonly localAddress: string,
    private readonly requestedPort: number,
    private readonly hooks: UdpListenerHooks,
  ) {
    this.socket = createUdpSocket(localAddress, { recvBufferSize: SOCKET_BUFFER_BYTES, sendBufferSize: SOCKET_BUFFER_BYTES });
    this.framed = new FramedSender(this.socket, hooks.onCongestionDrop);
  }

  get localPort(): number {
    return this.boundPort;
  }

  async start(): Promise<void> {
    await bindUdpSocket(this.socket, this.localAddress, this.requestedPort);
    this.socket.on('error', (err) => this.hooks.onError(err));
    this.boundPort = this.socket.address().port;
    const onPacket = (buf: Buffer, address: string, port: number): void => this.hooks.onPacket(this, buf, address, port);
    if (!receiveFromHandle(this.socket, onPacket)) this.socket.on('message', (msg, rinfo) => onPacket(msg, rinfo.address, rinfo.port));
  }

  sendMessage(message: Buffer, port: number, address: string): void {
    this.framed.sendWhole(message, port, address);
  }

  sendFramed(head: Buffer, headLength: number, payload: Buffer, offset: number, length: number, padTo4: boolean, port: number, address: string): void {
    this.framed.send(head, headLength, payload, offset, length, padTo4, port, address);
  }

  close(): Promise<void> {
    return closeUdpSocket(this.socket);
  }
}

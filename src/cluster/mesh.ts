// The node-to-node mesh: a UDP socket on each node's unicast address that carries
// client packets a node received for an allocation another node owns. Every frame
// is authenticated with an HMAC under the cluster secret, so nobody can inject
// packets with a forged client address through the mesh.
//
// Frame (version 1):
//   0      magic 0xA7
//   1      version 1
//   2      kind (1 = client packet)
//   3      transport (0 = udp)
//   4-5    client port      6-7  server port
//   8      client family (4 or 6)   9  server family (4 or 6)
//   10..   client address (4 or 16 bytes), server address (4 or 16 bytes)
//   then   tag: first 16 bytes of HMAC-SHA256(secret, every byte before the tag and the payload)
//   then   the client's packet, unchanged

import { createHmac, timingSafeEqual } from 'node:crypto';
import dgram from 'node:dgram';
import { formatIPv4, formatIPv6, parseIPv4, parseIPv6 } from '../stun/address.js';
import { literalLookup } from '../transport/lookup.js';

const MAGIC = 0xa7;
const VERSION = 1;
const KIND_CLIENT_PACKET = 1;
const TAG_LENGTH = 16;
const MAX_HEAD = 10 + 16 + 16 + TAG_LENGTH;

export interface MeshPacket {
  readonly clientAddress: string;
  readonly clientPort: number;
  readonly serverAddress: string;
  readonly serverPort: number;
  readonly payload: Buffer;
}

export interface MeshHooks {
  onPacket(packet: MeshPacket): void;
  /** A frame that failed authentication or parsing. */
  onRejected(reason: 'malformed' | 'bad-tag'): void;
  onError(err: Error): void;
}

function writeAddress(out: Buffer, offset: number, address: string): number {
  const v4 = parseIPv4(address);
  if (v4 >= 0) {
    out.writeUInt32BE(v4, offset);
    return 4;
  }
  const v6 = parseIPv6(address);
  if (!v6) throw new TypeError(`not an IP address: ${address}`);
  out.set(v6, offset);
  return 16;
}

export class MeshSocket {
  private readonly socket: dgram.Socket;
  private scratch = Buffer.allocUnsafe(65536 + MAX_HEAD);

  constructor(
    readonly address: string,
    private readonly requestedPort: number,
    private readonly secret: Buffer,
    private readonly hooks: MeshHooks,
  ) {
    this.socket = dgram.createSocket({ type: address.includes(':') ? 'udp6' : 'udp4', recvBufferSize: 4 * 1024 * 1024, lookup: literalLookup });
  }

  get port(): number {
    return this.socket.address().port;
  }

  start(): Promise<void> {
    return new Promise((resolve, reject) => {
      this.socket.once('error', reject);
      this.socket.bind({ address: this.address, port: this.requestedPort, exclusive: true }, () => {
        this.socket.off('error', reject);
        this.socket.on('error', (err) => this.hooks.onError(err));
        this.socket.on('message', (msg) => this.receive(msg));
        resolve();
      });
    });
  }

  private tag(frame: Buffer, headLength: number, payloadStart: number, payloadEnd: number): Buffer {
    return createHmac('sha256', this.secret)
      .update(frame.subarray(0, headLength))
      .update(frame.subarray(payloadStart, payloadEnd))
      .digest()
      .subarray(0, TAG_LENGTH);
  }

  /** Sends a client packet to the node at toAddress:toPort (positional arguments: no object per packet). */
  forward(toAddress: string, toPort: number, clientAddress: string, clientPort: number, serverAddress: string, serverPort: number, payload: Buffer): void {
    const out = this.scratch;
    out[0] = MAGIC;
    out[1] = VERSION;
    out[2] = KIND_CLIENT_PACKET;
    out[3] = 0;
    out.writeUInt16BE(clientPort, 4);
    out.writeUInt16BE(serverPort, 6);
    let pos = 10;
    const clientLength = writeAddress(out, pos, clientAddress);
    out[8] = clientLength === 4 ? 4 : 6;
    pos += clientLength;
    const serverLength = writeAddress(out, pos, serverAddress);
    out[9] = serverLength === 4 ? 4 : 6;
    pos += serverLength;
    const payloadStart = pos + TAG_LENGTH;
    payload.copy(out, payloadStart);
    const end = payloadStart + payload.length;
    this.tag(out, pos, payloadStart, end).copy(out, pos);
    this.socket.send(out, 0, end, toPort, toAddress);
    // A queued send still points at the scratch buffer: take a fresh one for the next frame.
    if (this.socket.getSendQueueCount() > 0) this.scratch = Buffer.allocUnsafe(65536 + MAX_HEAD);
  }

  private receive(frame: Buffer): void {
    if (frame.length < 10 + 8 + TAG_LENGTH || frame[0] !== MAGIC || frame[1] !== VERSION || frame[2] !== KIND_CLIENT_PACKET) {
      return this.hooks.onRejected('malformed');
    }
    const clientFamily = frame[8];
    const serverFamily = frame[9];
    if ((clientFamily !== 4 && clientFamily !== 6) || (serverFamily !== 4 && serverFamily !== 6)) return this.hooks.onRejected('malformed');
    const clientLength = clientFamily === 4 ? 4 : 16;
    const serverLength = serverFamily === 4 ? 4 : 16;
    const headLength = 10 + clientLength + serverLength;
    const payloadStart = headLength + TAG_LENGTH;
    if (frame.length < payloadStart) return this.hooks.onRejected('malformed');
    const expected = this.tag(frame, headLength, payloadStart, frame.length);
    if (!timingSafeEqual(expected, frame.subarray(headLength, payloadStart))) return this.hooks.onRejected('bad-tag');
    const clientAddress = clientFamily === 4 ? formatIPv4(frame.readUInt32BE(10)) : formatIPv6(frame, 10);
    const serverAt = 10 + clientLength;
    const serverAddress = serverFamily === 4 ? formatIPv4(frame.readUInt32BE(serverAt)) : formatIPv6(frame, serverAt);
    this.hooks.onPacket({
      clientAddress,
      clientPort: frame.readUInt16BE(4),
      serverAddress,
      serverPort: frame.readUInt16BE(6),
      payload: frame.subarray(payloadStart),
    });
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

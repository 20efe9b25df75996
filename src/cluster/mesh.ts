// The node-to-node mesh: a UDP socket on each node's unicast address that carries
// client packets a node received for an allocation another node owns. The mesh
// crosses the Internet between PoPs, so every frame is encrypted and authenticated
// (AES-256-GCM under a key derived from the cluster secret, keys.ts), bound to the
// node that sent it, and accepted once: nobody without the secret can inject a
// packet with a forged client address, read the client's packets, or make a node
// handle a captured frame a second time.
//
// Frame (version 2; all numbers big-endian):
//   0       magic 0xA7
//   1       version 2
//   2       kind (1 = client packet)
//   3       transport (0 = udp)
//   4       sender family (4 or 6)   5  client family   6  server family
//   7       reserved, 0
//   8-9     sender port: the UDP port of the sending node's mesh socket
//   10-11   client port             12-13  server port
//   14-19   timestamp: milliseconds since the Unix epoch when the frame was sent
//   20-27   sequence number of the sender (below 2^53): starts at the sender's start
//           time in microseconds and goes up by one per frame, so a restarted node
//           continues above every number it used before
//   28-39   AES-GCM nonce: 8 random bytes (drawn again every 2^32 frames) and a
//           32-bit counter, so no two frames under the cluster's key share a nonce
//   40..    sender address, client address, server address (4 or 16 bytes each, by family)
//   then    the client's packet, encrypted (same length)
//   then    16-byte GCM tag; the associated data is every byte before the ciphertext
//
// The receiver refuses, in this order (cheap checks before any crypto):
//   malformed     not this version, or too short for what the header says
//   wrong_sender  the sender address and port are not the datagram's UDP source
//   stale         the timestamp is more than MAX_CLOCK_SKEW_MS away from this node's clock
//   replayed      the sequence number was accepted before from this sender, or is more
//                 than REPLAY_WINDOW behind its highest (a sliding bitmap per sender, as
//                 the anti-replay windows of IPsec, RFC 4303 §3.4.3, and DTLS, RFC 6347 §4.1.2.6)
//   bad_tag       the tag does not verify: forged, tampered, or another cluster's key
// A window is updated only after the tag verified. Windows are per sender and forgotten
// only when idle for twice the clock skew, after which every frame they saw is stale.
// Only a frame captured within MAX_CLOCK_SKEW_MS before this node (re)started can be
// handled once more after the restart.

import { createCipheriv, createDecipheriv, createSecretKey, randomFillSync, type KeyObject } from 'node:crypto';
import type dgram from 'node:dgram';
import { MESH_KEY_LABEL, deriveKey } from '../keys.js';
import { formatIPv4, formatIPv6, parseIPv4, parseIPv6 } from '../net/ip.js';
import { bindUdpSocket, closeUdpSocket, createUdpSocket } from '../transport/udp/socket.js';
import type { MeshRejectReason } from './counters.js';

const MAGIC = 0xa7;
const VERSION = 2;
const KIND_CLIENT_PACKET = 1;
const SENDER_PORT_AT = 8;
const TIMESTAMP_AT = 14;
const SEQUENCE_AT = 20;
const NONCE_AT = 28;
const NONCE_LENGTH = 12;
const ADDRESSES_AT = 40;
const TAG_LENGTH = 16;
const MAX_HEAD = ADDRESSES_AT + 3 * 16;
const MIN_FRAME = ADDRESSES_AT + 3 * 4 + TAG_LENGTH;
const TWO_POW_32 = 0x1_0000_0000;
/** The high word of a sequence number stays below this, so the number is exact in a double. */
const SEQUENCE_HIGH_LIMIT = 0x20_0000;
const CIPHER = 'aes-256-gcm';
/** The largest UDP payload (65535 less the IPv4 and UDP headers; IPv6 has no header in its length). */
const MAX_UDP4_PAYLOAD = 65507;
const MAX_UDP6_PAYLOAD = 65527;

/** How far a frame's timestamp may be from the receiver's clock (NTP keeps nodes far closer). */
export const MAX_CLOCK_SKEW_MS = 30_000;
/** Frames a sender may be reordered by and still be accepted (a multiple of 32). */
export const REPLAY_WINDOW = 1024;
/** Senders remembered at most; past it, idle ones (then the least recent) are forgotten. */
const MAX_SENDERS = 4096;

export interface MeshPacket {
  readonly clientAddress: string;
  readonly clientPort: number;
  readonly serverAddress: string;
  readonly serverPort: number;
  readonly payload: Buffer;
}

export interface MeshHooks {
  onPacket(packet: MeshPacket): void;
  /** A frame refused (see the reasons above); counted, never logged per frame. */
  onRejected(reason: Exclude<MeshRejectReason, 'no_listener'>): void;
  /** A client packet not forwarded: framed, it would not fit in one UDP datagram. */
  onTooLarge?(): void;
  onError(err: Error): void;
}

export interface MeshOptions {
  /** Wall clock in ms for frame timestamps and the staleness check (tests move it). */
  readonly now?: () => number;
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

function addressLength(family: number | undefined): number {
  return family === 4 ? 4 : family === 6 ? 16 : 0;
}

/** The anti-replay state of one sender: its highest accepted sequence number and a bitmap below it. */
export class ReplayWindow {
  /** Highest sequence number accepted; -1 before the first. */
  private top = -1;
  /** Bit (seq % REPLAY_WINDOW) is set when seq, within the window, was accepted. */
  private readonly seen = new Uint32Array(REPLAY_WINDOW / 32);
  lastMs = 0;

  constructor(
    /** The sender's address bytes, as authenticated in its first frame from this UDP source. */
    readonly address: Buffer,
  ) {}

  isReplay(seq: number): boolean {
    if (seq > this.top) return false;
    if (this.top - seq >= REPLAY_WINDOW) return true;
    const bit = seq % REPLAY_WINDOW;
    return (this.seen[bit >>> 5]! & (1 << (bit & 31))) !== 0;
  }

  accept(seq: number, nowMs: number): void {
    if (seq > this.top) {
      if (seq - this.top >= REPLAY_WINDOW) {
        this.seen.fill(0);
      } else {
        // The numbers skipped over take the bits of ones that just left the window.
        for (let s = this.top + 1; s < seq; s++) this.clear(s % REPLAY_WINDOW);
      }
      this.top = seq;
    }
    const bit = seq % REPLAY_WINDOW;
    this.seen[bit >>> 5] = this.seen[bit >>> 5]! | (1 << (bit & 31));
    this.lastMs = nowMs;
  }

  private clear(bit: number): void {
    this.seen[bit >>> 5] = this.seen[bit >>> 5]! & ~(1 << (bit & 31));
  }
}

function sameBytes(frame: Buffer, offset: number, expected: Uint8Array): boolean {
  for (let i = 0; i < expected.length; i++) if (frame[offset + i] !== expected[i]) return false;
  return true;
}

export class MeshSocket {
  private readonly socket: dgram.Socket;
  private scratch = Buffer.allocUnsafe(65536 + MAX_HEAD + TAG_LENGTH);
  private readonly key: KeyObject;
  private readonly now: () => number;
  /** This socket's address bytes and family, written into every frame as the sender. */
  private readonly senderAddress: Buffer;
  private readonly senderFamily: number;
  private boundPort = 0;
  private readonly maxFrame: number;
  private sequence = 0;
  /** The next frame's GCM nonce: 8 random bytes, then a counter in the last 4. */
  private readonly nonce = Buffer.alloc(NONCE_LENGTH);
  private nonceCounter = 0;
  /** Replay windows by UDP source address, then port (Node's rinfo strings: no key built per packet). */
  private readonly senders = new Map<string, Map<number, ReplayWindow>>();
  private senderCount = 0;

  constructor(
    readonly address: string,
    private readonly requestedPort: number,
    clusterSecret: Buffer,
    private readonly hooks: MeshHooks,
    options: MeshOptions = {},
  ) {
    this.socket = createUdpSocket(address, { recvBufferSize: 4 * 1024 * 1024 });
    this.maxFrame = address.includes(':') ? MAX_UDP6_PAYLOAD : MAX_UDP4_PAYLOAD;
    this.key = createSecretKey(deriveKey(clusterSecret, MESH_KEY_LABEL));
    this.now = options.now ?? Date.now;
    const sender = Buffer.alloc(16);
    const length = writeAddress(sender, 0, address);
    this.senderAddress = sender.subarray(0, length);
    this.senderFamily = length === 4 ? 4 : 6;
    randomFillSync(this.nonce, 0, 8);
  }

  get port(): number {
    return this.socket.address().port;
  }

  async start(): Promise<void> {
    await bindUdpSocket(this.socket, this.address, this.requestedPort);
    this.boundPort = this.socket.address().port;
    // Above every number this sender used before a restart (it sent fewer than one frame per microsecond).
    this.sequence = Math.floor(this.now() * 1000);
    this.socket.on('error', (err) => this.hooks.onError(err));
    this.socket.on('message', (msg, rinfo) => this.receive(msg, rinfo));
  }

  private nextNonce(): void {
    this.nonceCounter = (this.nonceCounter + 1) >>> 0;
    // 2^32 frames under one random prefix: draw another rather than reuse a nonce.
    if (this.nonceCounter === 0) randomFillSync(this.nonce, 0, 8);
    this.nonce.writeUInt32BE(this.nonceCounter, 8);
  }

  /** Sends a client packet to the node at toAddress:toPort (positional arguments: no object per packet). */
  forward(toAddress: string, toPort: number, clientAddress: string, clientPort: number, serverAddress: string, serverPort: number, payload: Buffer): void {
    const out = this.scratch;
    out[0] = MAGIC;
    out[1] = VERSION;
    out[2] = KIND_CLIENT_PACKET;
    out[3] = 0;
    out[4] = this.senderFamily;
    out[7] = 0;
    out.writeUInt16BE(this.boundPort, SENDER_PORT_AT);
    out.writeUInt16BE(clientPort, 10);
    out.writeUInt16BE(serverPort, 12);
    out.writeUIntBE(this.now(), TIMESTAMP_AT, 6);
    const sequence = ++this.sequence;
    out.writeUInt32BE(Math.floor(sequence / TWO_POW_32), SEQUENCE_AT);
    out.writeUInt32BE(sequence >>> 0, SEQUENCE_AT + 4);
    this.nextNonce();
    this.nonce.copy(out, NONCE_AT);
    let pos = ADDRESSES_AT + this.senderAddress.copy(out, ADDRESSES_AT);
    const clientLength = writeAddress(out, pos, clientAddress);
    out[5] = clientLength === 4 ? 4 : 6;
    pos += clientLength;
    const serverLength = writeAddress(out, pos, serverAddress);
    out[6] = serverLength === 4 ? 4 : 6;
    pos += serverLength;
    if (pos + payload.length + TAG_LENGTH > this.maxFrame) {
      // Dropped and counted here: dgram would fail the send with EMSGSIZE, on the socket's error event.
      this.hooks.onTooLarge?.();
      return;
    }
    // node:crypto has no reusable AEAD context: one cipher object and one output buffer per frame.
    const cipher = createCipheriv(CIPHER, this.key, this.nonce, { authTagLength: TAG_LENGTH });
    cipher.setAAD(out.subarray(0, pos));
    const end = pos + cipher.update(payload).copy(out, pos);
    cipher.final(); // GCM is a stream mode: nothing is held back
    cipher.getAuthTag().copy(out, end);
    this.socket.send(out, 0, end + TAG_LENGTH, toPort, toAddress);
    // A queued send still points at the scratch buffer: take a fresh one for the next frame.
    if (this.socket.getSendQueueCount() > 0) this.scratch = Buffer.allocUnsafe(65536 + MAX_HEAD + TAG_LENGTH);
  }

  private receive(frame: Buffer, rinfo: dgram.RemoteInfo): void {
    if (frame.length < MIN_FRAME || frame[0] !== MAGIC || frame[1] !== VERSION || frame[2] !== KIND_CLIENT_PACKET || frame[3] !== 0) {
      return this.hooks.onRejected('malformed');
    }
    const senderFamily = frame[4];
    const clientFamily = frame[5];
    const serverFamily = frame[6];
    const senderLength = addressLength(senderFamily);
    const clientLength = addressLength(clientFamily);
    const serverLength = addressLength(serverFamily);
    if (senderLength === 0 || clientLength === 0 || serverLength === 0) return this.hooks.onRejected('malformed');
    const clientAt = ADDRESSES_AT + senderLength;
    const serverAt = clientAt + clientLength;
    const headLength = serverAt + serverLength;
    const sequenceHigh = frame.readUInt32BE(SEQUENCE_AT);
    if (frame.length < headLength + TAG_LENGTH || sequenceHigh >= SEQUENCE_HIGH_LIMIT) return this.hooks.onRejected('malformed');

    // Bound to its sender: a frame names the mesh socket that sent it, and only that socket's datagrams may carry it.
    if (frame.readUInt16BE(SENDER_PORT_AT) !== rinfo.port) return this.hooks.onRejected('wrong_sender');
    let window = this.senders.get(rinfo.address)?.get(rinfo.port);
    if (
      window ? !sameBytes(frame, ADDRESSES_AT, window.address) || window.address.length !== senderLength : !this.isSource(frame, senderFamily!, rinfo.address)
    ) {
      return this.hooks.onRejected('wrong_sender');
    }
    const nowMs = this.now();
    const sentMs = frame.readUIntBE(TIMESTAMP_AT, 6);
    if (sentMs > nowMs + MAX_CLOCK_SKEW_MS || sentMs < nowMs - MAX_CLOCK_SKEW_MS) return this.hooks.onRejected('stale');
    const sequence = sequenceHigh * TWO_POW_32 + frame.readUInt32BE(SEQUENCE_AT + 4);
    if (window?.isReplay(sequence)) return this.hooks.onRejected('replayed');

    const tagAt = frame.length - TAG_LENGTH;
    let payload: Buffer;
    try {
      const decipher = createDecipheriv(CIPHER, this.key, frame.subarray(NONCE_AT, NONCE_AT + NONCE_LENGTH), { authTagLength: TAG_LENGTH });
      decipher.setAAD(frame.subarray(0, headLength));
      decipher.setAuthTag(frame.subarray(tagAt));
      payload = decipher.update(frame.subarray(headLength, tagAt));
      decipher.final(); // throws when the tag does not verify; the plaintext is not used then
    } catch {
      return this.hooks.onRejected('bad_tag');
    }
    window ??= this.addSender(rinfo.address, rinfo.port, Buffer.from(frame.subarray(ADDRESSES_AT, clientAt)), nowMs);
    window.accept(sequence, nowMs);

    this.hooks.onPacket({
      clientAddress: clientFamily === 4 ? formatIPv4(frame.readUInt32BE(clientAt)) : formatIPv6(frame, clientAt),
      clientPort: frame.readUInt16BE(10),
      serverAddress: serverFamily === 4 ? formatIPv4(frame.readUInt32BE(serverAt)) : formatIPv6(frame, serverAt),
      serverPort: frame.readUInt16BE(12),
      payload,
    });
  }

  /** Whether the frame's sender address is the datagram's source address (before a window remembers it). */
  private isSource(frame: Buffer, family: number, source: string): boolean {
    if (family === 4) return parseIPv4(source) === frame.readUInt32BE(ADDRESSES_AT);
    const bytes = parseIPv6(source);
    return bytes !== undefined && sameBytes(frame, ADDRESSES_AT, bytes);
  }

  private addSender(address: string, port: number, senderAddress: Buffer, nowMs: number): ReplayWindow {
    if (this.senderCount >= MAX_SENDERS) this.forgetSenders(nowMs);
    const window = new ReplayWindow(senderAddress);
    let byPort = this.senders.get(address);
    if (!byPort) this.senders.set(address, (byPort = new Map()));
    byPort.set(port, window);
    this.senderCount++;
    return window;
  }

  /**
   * Forgets senders idle for over twice the clock skew: every frame such a window
   * accepted is stale by now. If none is that idle (more live senders than any
   * cluster has), the least recently heard one goes.
   */
  private forgetSenders(nowMs: number): void {
    let oldest: { byPort: Map<number, ReplayWindow>; address: string; port: number; lastMs: number } | undefined;
    for (const [address, byPort] of this.senders) {
      for (const [port, window] of byPort) {
        if (nowMs - window.lastMs > 2 * MAX_CLOCK_SKEW_MS) {
          byPort.delete(port);
          this.senderCount--;
        } else if (!oldest || window.lastMs < oldest.lastMs) {
          oldest = { byPort, address, port, lastMs: window.lastMs };
        }
      }
      if (byPort.size === 0) this.senders.delete(address);
    }
    if (this.senderCount >= MAX_SENDERS && oldest) {
      oldest.byPort.delete(oldest.port);
      this.senderCount--;
      if (oldest.byPort.size === 0) this.senders.delete(oldest.address);
    }
  }

  close(): Promise<void> {
    return closeUdpSocket(this.socket);
  }
}

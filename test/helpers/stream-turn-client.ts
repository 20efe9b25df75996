// A small TURN client over one TCP or TLS connection, for integration tests.
// It frames the stream itself (not with src/transport/stream/framer.ts, the code under
// test) and keeps every byte it received, so tests can look at the padding.

import { randomBytes } from 'node:crypto';
import net from 'node:net';
import tls from 'node:tls';
import { decodeAddress } from '../../src/stun/address.js';
import { decodeErrorCode, encodeChannelNumber, encodeRequestedTransport } from '../../src/stun/attributes.js';
import { encodeChannelData } from '../../src/stun/channel-data.js';
import { Attr, MessageClass, Method, TRANSPORT_UDP } from '../../src/stun/constants.js';
import { longTermKey } from '../../src/stun/integrity.js';
import { type StunMessage, decodeMessage, getAttribute } from '../../src/stun/message.js';
import { MessageWriter } from '../../src/stun/writer.js';
import type { Credentials, Endpoint } from './turn-client.js';

export interface StreamReceived {
  readonly kind: 'data-indication' | 'channel-data';
  readonly peer?: Endpoint;
  readonly channel?: number;
  readonly data: Buffer;
  /** The frame as it was on the wire, padding included. */
  readonly wire: Buffer;
}

export interface StreamResponse {
  readonly message: StunMessage;
  readonly code: number;
}

type Decorate = (w: MessageWriter) => void;

export class StreamTurnClient {
  /** Every byte received, in order. */
  rawReceived = Buffer.alloc(0);
  readonly received: StreamReceived[] = [];
  readonly responses: StunMessage[] = [];
  /** Bytes that could not be framed (must stay empty against a correct server). */
  garbage = 0;
  nonce: string | undefined;
  realm: string;
  /** 438 Stale Nonce answers request() retried after (counted so tests can assert "no 438"). */
  staleNonces = 0;
  private pending = Buffer.alloc(0);
  private readonly changed = new Set<() => void>();
  private closedFlag = false;
  readonly closed: Promise<void>;

  private constructor(
    readonly socket: net.Socket,
    readonly credentials: Credentials,
  ) {
    this.realm = credentials.realm;
    socket.on('data', (chunk: Buffer) => this.onData(chunk));
    socket.on('error', () => undefined);
    this.closed = new Promise((resolve) =>
      socket.once('close', () => {
        this.closedFlag = true;
        this.notify();
        resolve();
      }),
    );
  }

  /**
   * Connects to 127.0.0.1 (or `server`) over TCP, or TLS with `tls: true` (the certificate is not checked),
   * from `localAddress` when given (another loopback address is another source).
   */
  static async connect(
    server: Endpoint,
    credentials: Credentials,
    options: { readonly tls?: boolean; readonly localAddress?: string } = {},
  ): Promise<StreamTurnClient> {
    const socket = await new Promise<net.Socket>((resolve, reject) => {
      const { localAddress } = options;
      const s = options.tls
        ? tls.connect({ socket: net.connect({ host: server.address, port: server.port, localAddress }), rejectUnauthorized: false }, () => resolve(s))
        : net.connect({ host: server.address, port: server.port, localAddress }, () => resolve(s));
      s.once('error', reject);
    });
    socket.setNoDelay(true);
    return new StreamTurnClient(socket, credentials);
  }

  get isClosed(): boolean {
    return this.closedFlag;
  }

  get localPort(): number {
    return this.socket.localPort ?? 0;
  }

  private notify(): void {
    for (const f of [...this.changed]) f();
  }

  /** Resolves when `predicate` holds (checked on every arrival and on close), or rejects after the timeout. */
  waitUntil(predicate: () => boolean, what: string, timeoutMs = 3000): Promise<void> {
    if (predicate()) return Promise.resolve();
    return new Promise((resolve, reject) => {
      const check = (): void => {
        if (!predicate()) return;
        clearTimeout(timer);
        this.changed.delete(check);
        resolve();
      };
      const timer = setTimeout(() => {
        this.changed.delete(check);
        reject(new Error(`timed out waiting for ${what}`));
      }, timeoutMs);
      this.changed.add(check);
    });
  }

  private onData(chunk: Buffer): void {
    this.rawReceived = Buffer.concat([this.rawReceived, chunk]);
    let buf = Buffer.concat([this.pending, chunk]);
    for (;;) {
      if (buf.length < 4) break;
      const kind = buf[0]! & 0xc0;
      const length = buf.readUInt16BE(2);
      let total: number;
      if (kind === 0) total = 20 + length;
      else if (kind === 0x40) total = 4 + ((length + 3) & ~3);
      else {
        this.garbage += buf.length;
        buf = Buffer.alloc(0);
        break;
      }
      if (buf.length < total) break;
      const wire = Buffer.from(buf.subarray(0, total));
      buf = buf.subarray(total);
      if (kind === 0x40) {
        this.received.push({ kind: 'channel-data', channel: wire.readUInt16BE(0), data: Buffer.from(wire.subarray(4, 4 + length)), wire });
        continue;
      }
      const decoded = decodeMessage(wire);
      if (!decoded.ok) {
        this.garbage += wire.length;
        continue;
      }
      const m = decoded.message;
      if (m.cls === MessageClass.Indication && m.method === Method.Data) {
        const peer = decodeAddress(getAttribute(m, Attr.XorPeerAddress) ?? Buffer.alloc(0), m.transactionId);
        this.received.push({
          kind: 'data-indication',
          peer: peer ? { address: peer.address, port: peer.port } : undefined,
          data: Buffer.from(getAttribute(m, Attr.Data) ?? Buffer.alloc(0)),
          wire,
        });
      } else {
        this.responses.push(m);
      }
    }
    this.pending = Buffer.from(buf);
    this.notify();
  }

  write(buf: Buffer): void {
    this.socket.write(buf);
  }

  /** Writes `buf` one byte per write, yielding to the event loop in between (so they leave as separate segments). */
  async writeByteByByte(buf: Buffer): Promise<void> {
    for (let i = 0; i < buf.length; i++) {
      await new Promise<void>((resolve) => this.socket.write(buf.subarray(i, i + 1), () => resolve()));
      await new Promise<void>((resolve) => setImmediate(resolve));
    }
  }

  build(method: number, decorate: Decorate = () => undefined, options: { auth?: boolean } = {}): { buf: Buffer; transactionId: Buffer } {
    const transactionId = randomBytes(12);
    const w = new MessageWriter(method, MessageClass.Request, transactionId);
    decorate(w);
    if (options.auth !== false && this.nonce !== undefined) {
      w.addText(Attr.Username, this.credentials.username);
      w.addText(Attr.Realm, this.realm);
      w.addText(Attr.Nonce, this.nonce);
      w.addIntegrity(longTermKey(this.credentials.username, this.realm, this.credentials.password));
    }
    return { buf: w.toBuffer(), transactionId };
  }

  /** Waits for the response with this transaction id. */
  async response(transactionId: Buffer, timeoutMs = 3000): Promise<StreamResponse> {
    const find = (): StunMessage | undefined => this.responses.find((m) => m.transactionId.equals(transactionId));
    await this.waitUntil(() => find() !== undefined || this.closedFlag, 'a response', timeoutMs);
    const m = find();
    if (!m) throw new Error('connection closed before the response');
    const code = m.cls === MessageClass.SuccessResponse ? 200 : (decodeErrorCode(getAttribute(m, Attr.ErrorCode) ?? Buffer.alloc(0))?.code ?? 0);
    return { message: m, code };
  }

  /** An authenticated request: learns REALM/NONCE from a 401 or 438 and retries once. */
  async request(method: number, decorate: Decorate = () => undefined): Promise<StreamResponse> {
    for (let attempt = 0; attempt < 3; attempt++) {
      const { buf, transactionId } = this.build(method, decorate);
      this.write(buf);
      const r = await this.response(transactionId);
      if (r.code === 438) this.staleNonces++;
      if (r.code === 401 || r.code === 438) {
        const hadNonce = this.nonce !== undefined;
        const nonce = getAttribute(r.message, Attr.Nonce);
        const realm = getAttribute(r.message, Attr.Realm);
        if (nonce) this.nonce = nonce.toString('utf8');
        if (realm) this.realm = realm.toString('utf8');
        if (r.code === 438 || !hadNonce) continue;
      }
      return r;
    }
    throw new Error('authentication did not converge');
  }

  async allocate(): Promise<{ response: StreamResponse; relayed?: Endpoint }> {
    const response = await this.request(Method.Allocate, (w) => w.add(Attr.RequestedTransport, encodeRequestedTransport(TRANSPORT_UDP)));
    if (response.code !== 200) return { response };
    const m = response.message;
    const relayed = decodeAddress(getAttribute(m, Attr.XorRelayedAddress)!, m.transactionId)!;
    return { response, relayed: { address: relayed.address, port: relayed.port } };
  }

  createPermission(peer: Endpoint): Promise<StreamResponse> {
    return this.request(Method.CreatePermission, (w) => w.addXorAddress(Attr.XorPeerAddress, peer.address, peer.port));
  }

  channelBind(channel: number, peer: Endpoint): Promise<StreamResponse> {
    return this.request(Method.ChannelBind, (w) => {
      w.add(Attr.ChannelNumber, encodeChannelNumber(channel));
      w.addXorAddress(Attr.XorPeerAddress, peer.address, peer.port);
    });
  }

  /** A Binding request answered: the server has read everything before it on this connection. */
  async binding(): Promise<StreamResponse> {
    const { buf, transactionId } = this.build(Method.Binding, () => undefined, { auth: false });
    this.write(buf);
    return this.response(transactionId);
  }

  sendIndicationBuffer(peer: Endpoint, data: Buffer): Buffer {
    const w = new MessageWriter(Method.Send, MessageClass.Indication, randomBytes(12));
    w.addXorAddress(Attr.XorPeerAddress, peer.address, peer.port);
    w.add(Attr.Data, data);
    return w.toBuffer();
  }

  /** ChannelData padded to 4 bytes, as RFC 8656 §12.5 requires on streams. */
  channelDataBuffer(channel: number, data: Buffer): Buffer {
    return encodeChannelData(channel, data, true);
  }

  async waitForReceived(count: number, timeoutMs = 3000): Promise<StreamReceived[]> {
    await this.waitUntil(() => this.received.length >= count, `${count} relayed messages`, timeoutMs);
    return this.received;
  }

  close(): void {
    this.socket.destroy();
  }
}

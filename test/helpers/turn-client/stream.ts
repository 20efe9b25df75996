// The test TURN client over one TCP or TLS connection. It frames the stream
// itself (RFC 8656 §12.5: a STUN message is 20 bytes plus its length, a
// ChannelData message 4 plus its length padded to 4), not with
// src/transport/stream/framer.ts, the code under test, and keeps every byte
// it received, so tests can look at the padding.

import net from 'node:net';
import tls from 'node:tls';
import { encodeChannelData } from '../../../src/stun/channel-data.js';
import { Method } from '../../../src/stun/constants.js';
import type { StunMessage } from '../../../src/stun/message.js';
import { type Credentials, type Endpoint, type Received, type Response, codeOf, parseIncoming } from './messages.js';
import { TurnSession } from './session.js';

export interface StreamReceived extends Received {
  /** The frame as it was on the wire, padding included. */
  readonly wire: Buffer;
}

export type StreamResponse = Response;

export class StreamTurnClient extends TurnSession {
  /** Every byte received, in order. */
  rawReceived = Buffer.alloc(0);
  readonly received: StreamReceived[] = [];
  readonly responses: StunMessage[] = [];
  /** Bytes that could not be framed (must stay empty against a correct server). */
  garbage = 0;
  private pending = Buffer.alloc(0);
  private readonly changed = new Set<() => void>();
  private closedFlag = false;
  readonly closed: Promise<void>;

  private constructor(
    readonly socket: net.Socket,
    credentials: Credentials,
  ) {
    super(credentials);
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
      const incoming = parseIncoming(wire);
      if (!incoming) this.garbage += wire.length;
      else if (incoming.kind === 'message') this.responses.push(incoming.message);
      else this.received.push({ ...incoming, wire });
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

  /** Waits for the response with this transaction id. */
  async response(transactionId: Buffer, timeoutMs = 3000): Promise<StreamResponse> {
    const find = (): StunMessage | undefined => this.responses.find((m) => m.transactionId.equals(transactionId));
    await this.waitUntil(() => find() !== undefined || this.closedFlag, 'a response', timeoutMs);
    const m = find();
    if (!m) throw new Error('connection closed before the response');
    return { message: m, code: codeOf(m) };
  }

  protected async exchange(_method: number, buf: Buffer, transactionId: Buffer): Promise<StunMessage> {
    this.write(buf);
    return (await this.response(transactionId)).message;
  }

  /** A Binding request answered: the server has read everything before it on this connection. */
  async binding(): Promise<StreamResponse> {
    const { buf, transactionId } = this.build(Method.Binding, () => undefined, { auth: false });
    this.write(buf);
    return this.response(transactionId);
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

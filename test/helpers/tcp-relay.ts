// RFC 6062 from the client's side, for tests: a TCP allocation on a StreamTurnClient
// (the control connection), Connect, and client data connections (a new connection
// that sends ConnectionBind, then carries raw bytes); and TCP peers on loopback.
// Written from the RFC, not with the server's code: the data connection reads its one
// STUN answer by its length and keeps every byte after it as raw data.

import net from 'node:net';
import { decodeAddress } from '../../src/stun/address.js';
import { decodeUint32, encodeRequestedTransport, encodeUint32 } from '../../src/stun/attributes.js';
import { Attr, Method, TRANSPORT_TCP } from '../../src/stun/constants.js';
import { type StunMessage, decodeMessage, getAttribute } from '../../src/stun/message.js';
import { type Endpoint, type Response, type StreamTurnClient, codeOf } from './turn-client.js';

/** An Allocate with REQUESTED-TRANSPORT TCP on the control connection. */
export async function allocateTcp(control: StreamTurnClient): Promise<{ response: Response; relayed?: Endpoint }> {
  const response = await control.request(Method.Allocate, (w) => w.add(Attr.RequestedTransport, encodeRequestedTransport(TRANSPORT_TCP)));
  if (response.code !== 200) return { response };
  const relayed = decodeAddress(getAttribute(response.message, Attr.XorRelayedAddress)!, response.message.transactionId)!;
  return { response, relayed: { address: relayed.address, port: relayed.port } };
}

/** A Connect to `peer`; with success, the CONNECTION-ID. */
export async function connectTo(control: StreamTurnClient, peer: Endpoint): Promise<{ code: number; connectionId?: number }> {
  const response = await control.request(Method.Connect, (w) => w.addXorAddress(Attr.XorPeerAddress, peer.address, peer.port));
  const value = getAttribute(response.message, Attr.ConnectionId);
  return { code: response.code, connectionId: value ? decodeUint32(value) : undefined };
}

/** ConnectionAttempt indications the control connection received: the peer and the CONNECTION-ID of each. */
export function connectionAttempts(control: StreamTurnClient): { peer: Endpoint; connectionId: number }[] {
  return control.responses
    .filter((m) => m.method === Method.ConnectionAttempt)
    .map((m) => {
      const peer = decodeAddress(getAttribute(m, Attr.XorPeerAddress)!, m.transactionId)!;
      return { peer: { address: peer.address, port: peer.port }, connectionId: decodeUint32(getAttribute(m, Attr.ConnectionId)!)! };
    });
}

/** Resolves when `predicate` holds, polling every 10 ms; rejects after timeoutMs (a bound on a hang, not a measurement). */
export async function eventually(what: string, predicate: () => boolean, timeoutMs = 5000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!predicate()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 10));
  }
}

/** A client data connection (RFC 6062 §4.4): ConnectionBind signed with the control connection's credentials, then raw bytes. */
export class DataConnection {
  /** Raw bytes received after the ConnectionBind answer. */
  data = Buffer.alloc(0);
  answer: StunMessage | undefined;
  closed = false;
  private head = Buffer.alloc(0);

  private constructor(readonly socket: net.Socket) {
    socket.on('error', () => undefined);
    socket.on('close', () => {
      this.closed = true;
    });
    socket.on('data', (chunk: Buffer) => this.onData(chunk));
  }

  private onData(chunk: Buffer): void {
    if (this.answer) {
      this.data = Buffer.concat([this.data, chunk]);
      return;
    }
    this.head = Buffer.concat([this.head, chunk]);
    if (this.head.length < 20) return;
    const total = 20 + this.head.readUInt16BE(2);
    if (this.head.length < total) return;
    const decoded = decodeMessage(Buffer.from(this.head.subarray(0, total)));
    if (!decoded.ok) throw new Error('the ConnectionBind answer is not a STUN message');
    this.answer = decoded.message;
    this.data = Buffer.from(this.head.subarray(total));
  }

  /**
   * Opens a connection to `server` and sends ConnectionBind for `connectionId` (with `early`
   * raw bytes right behind it in the same write, when given); resolves with the answer's code.
   */
  static async open(
    server: Endpoint,
    control: StreamTurnClient,
    connectionId: number,
    early: Buffer = Buffer.alloc(0),
  ): Promise<{ code: number; connection: DataConnection }> {
    const socket = await new Promise<net.Socket>((resolve, reject) => {
      const s = net.connect({ host: server.address, port: server.port }, () => resolve(s));
      s.once('error', reject);
    });
    const connection = new DataConnection(socket);
    const { buf } = control.build(Method.ConnectionBind, (w) => w.add(Attr.ConnectionId, encodeUint32(connectionId)));
    socket.write(Buffer.concat([buf, early]));
    await eventually('the ConnectionBind answer', () => connection.answer !== undefined || connection.closed);
    if (!connection.answer) throw new Error('connection closed before the ConnectionBind answer');
    return { code: codeOf(connection.answer), connection };
  }

  write(data: Buffer): void {
    this.socket.write(data);
  }

  close(): void {
    this.socket.destroy();
  }
}

/** A TCP peer on 127.0.0.1: keeps what each accepted connection sends; `echo` writes it back too. */
export class TcpPeer {
  readonly connections: { socket: net.Socket; data: Buffer; closed: boolean }[] = [];

  private constructor(
    private readonly server: net.Server,
    readonly port: number,
  ) {}

  static async listen(echo: boolean): Promise<TcpPeer> {
    let peer!: TcpPeer;
    const server = net.createServer((socket) => {
      const entry = { socket, data: Buffer.alloc(0), closed: false };
      peer.connections.push(entry);
      socket.on('error', () => undefined);
      socket.on('close', () => {
        entry.closed = true;
      });
      socket.on('data', (chunk: Buffer) => {
        entry.data = Buffer.concat([entry.data, chunk]);
        if (echo) socket.write(chunk);
      });
    });
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    const address = server.address();
    peer = new TcpPeer(server, typeof address === 'object' && address !== null ? address.port : 0);
    return peer;
  }

  get endpoint(): Endpoint {
    return { address: '127.0.0.1', port: this.port };
  }

  close(): Promise<void> {
    for (const c of this.connections) c.socket.destroy();
    return new Promise((resolve) => this.server.close(() => resolve()));
  }
}

/** Bytes 0..n-1 of a pattern that no STUN or ChannelData frame starts with (0xff), so nothing could be mistaken for one. */
export function pattern(n: number, seed = 0): Buffer {
  const out = Buffer.alloc(n);
  for (let i = 0; i < n; i++) out[i] = i === 0 ? 0xff : (i * 31 + seed) & 0xff;
  return out;
}

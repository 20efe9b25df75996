// A small TURN client over real UDP for integration tests, built on our codec.
// (Interop tests use clients nobody here wrote; this one exists to reach every
// error path precisely.)

import dgram from 'node:dgram';
import { randomBytes } from 'node:crypto';
import { decodeAddress } from '../../src/stun/address.js';
import { decodeErrorCode, decodeUint32, encodeChannelNumber, encodeRequestedTransport } from '../../src/stun/attributes.js';
import { encodeChannelData, looksLikeChannelData, readChannelDataLength, readChannelNumber } from '../../src/stun/channel-data.js';
import { Attr, MessageClass, Method, TRANSPORT_UDP } from '../../src/stun/constants.js';
import { longTermKey } from '../../src/stun/integrity.js';
import { type StunMessage, decodeMessage, getAttribute } from '../../src/stun/message.js';
import { MessageWriter } from '../../src/stun/writer.js';

export interface Credentials {
  readonly username: string;
  readonly password: string;
  readonly realm: string;
}

export interface Endpoint {
  readonly address: string;
  readonly port: number;
}

export interface Received {
  readonly kind: 'data-indication' | 'channel-data';
  readonly peer?: Endpoint;
  readonly channel?: number;
  readonly data: Buffer;
}

export type Decorate = (w: MessageWriter) => void;

/** 200 for a success response, the ERROR-CODE for an error response, 0 otherwise. */
export function codeOf(m: StunMessage): number {
  if (m.cls === MessageClass.SuccessResponse) return 200;
  return decodeErrorCode(getAttribute(m, Attr.ErrorCode) ?? Buffer.alloc(0))?.code ?? 0;
}

/** The reason phrase of an error response ('' when there is none). */
export function reasonOf(m: StunMessage): string {
  return decodeErrorCode(getAttribute(m, Attr.ErrorCode) ?? Buffer.alloc(0))?.reason ?? '';
}

/** Attribute types of a message, in order (attributes after MESSAGE-INTEGRITY other than FINGERPRINT excluded). */
export function attributeTypes(m: StunMessage): number[] {
  return m.attributes.map((a) => a.type);
}

export interface Response {
  readonly message: StunMessage;
  /** 200 for a success response, else the ERROR-CODE. */
  readonly code: number;
}

/**
 * How long a request waits for its answer (retransmitting) before the client
 * gives up: RFC 8489 §6.2.1's transaction timeout with the default RTO of
 * 500 ms and Rc = 7, 39.5 s. A live server answers long before; this bounds
 * only a dead or deaf one, so a slow, loaded machine is never read as "no
 * answer". Callers that poll for a server coming up pass a shorter one.
 */
export const TRANSACTION_TIMEOUT_MS = 39_500;

export class TestTurnClient {
  readonly socket: dgram.Socket;
  /**
   * 438 Stale Nonce answers received by request() (which retries with the
   * fresh NONCE, as a real client does). Counted so the tests that claim "no
   * 438" (e.g. across a reroute) can assert it.
   */
  staleNonces = 0;
  private readonly waiting = new Map<string, (m: StunMessage) => void>();
  readonly received: Received[] = [];
  private receivedWaiters: (() => void)[] = [];
  /** Every STUN response received, by transaction id (hex), retransmitted answers included. */
  readonly responses = new Map<string, StunMessage[]>();
  private responseWaiters: (() => void)[] = [];
  nonce: string | undefined;
  realm: string;

  private constructor(
    readonly server: Endpoint,
    readonly credentials: Credentials,
    socket: dgram.Socket,
  ) {
    this.socket = socket;
    this.realm = credentials.realm;
    socket.on('message', (buf) => this.onMessage(buf));
  }

  /**
   * Opens a client socket bound to 127.0.0.1 on an ephemeral port, or to
   * `bind.address`/`bind.port` when given (e.g. a veth address inside a
   * network namespace, for the anycast tests).
   */
  static async open(server: Endpoint, credentials: Credentials, bind: { readonly address?: string; readonly port?: number } = {}): Promise<TestTurnClient> {
    const socket = dgram.createSocket(bind.address?.includes(':') ? 'udp6' : 'udp4');
    await new Promise<void>((resolve, reject) => {
      socket.once('error', reject);
      socket.bind(bind.port ?? 0, bind.address ?? '127.0.0.1', () => {
        socket.off('error', reject);
        resolve();
      });
    });
    return new TestTurnClient(server, credentials, socket);
  }

  /**
   * A second client on the very same socket (so the same 5-tuple) with other
   * credentials. Closing either closes the shared socket.
   */
  static share(other: TestTurnClient, credentials: Credentials): TestTurnClient {
    return new TestTurnClient(other.server, credentials, other.socket);
  }

  get localPort(): number {
    return this.socket.address().port;
  }

  private onMessage(buf: Buffer): void {
    if (looksLikeChannelData(buf)) {
      const length = readChannelDataLength(buf);
      this.pushReceived({ kind: 'channel-data', channel: readChannelNumber(buf), data: Buffer.from(buf.subarray(4, 4 + length)) });
      return;
    }
    const decoded = decodeMessage(buf);
    if (!decoded.ok) return;
    const m = decoded.message;
    if (m.cls === MessageClass.Indication && m.method === Method.Data) {
      const peer = decodeAddress(getAttribute(m, Attr.XorPeerAddress) ?? Buffer.alloc(0), m.transactionId);
      this.pushReceived({
        kind: 'data-indication',
        peer: peer ? { address: peer.address, port: peer.port } : undefined,
        data: Buffer.from(getAttribute(m, Attr.Data) ?? Buffer.alloc(0)),
      });
      return;
    }
    const id = m.transactionId.toString('hex');
    if (m.cls === MessageClass.SuccessResponse || m.cls === MessageClass.ErrorResponse) {
      const list = this.responses.get(id);
      if (list) list.push(m);
      else this.responses.set(id, [m]);
      const waiters = this.responseWaiters;
      this.responseWaiters = [];
      for (const w of waiters) w();
    }
    const resolve = this.waiting.get(id);
    if (resolve) resolve(m);
  }

  /** Waits until `count` responses with this transaction id have arrived (or the timeout passes). */
  async waitForResponses(transactionId: Buffer, count: number, timeoutMs = 2000): Promise<StunMessage[]> {
    const id = transactionId.toString('hex');
    const deadline = Date.now() + timeoutMs;
    while ((this.responses.get(id)?.length ?? 0) < count && Date.now() < deadline) {
      await new Promise<void>((resolve) => {
        const t = setTimeout(resolve, Math.max(1, deadline - Date.now()));
        this.responseWaiters.push(() => {
          clearTimeout(t);
          resolve();
        });
      });
    }
    return this.responses.get(id) ?? [];
  }

  /**
   * A Binding request answered: the server has processed everything this
   * socket sent before it (one socket, one loopback path, in order). Returns
   * XOR-MAPPED-ADDRESS, or undefined when there was no answer.
   */
  async binding(timeoutMs = TRANSACTION_TIMEOUT_MS): Promise<Endpoint | undefined> {
    const { buf, transactionId } = this.build(Method.Binding, () => undefined, { auth: false });
    const m = await this.transact(buf, transactionId, timeoutMs);
    if (!m || m.cls !== MessageClass.SuccessResponse) return undefined;
    const mapped = decodeAddress(getAttribute(m, Attr.XorMappedAddress) ?? Buffer.alloc(0), m.transactionId);
    return mapped ? { address: mapped.address, port: mapped.port } : undefined;
  }

  /** Learns REALM and NONCE from a 401 to an unauthenticated Refresh, if not known yet. */
  async ensureNonce(): Promise<void> {
    if (this.nonce !== undefined) return;
    const { buf, transactionId } = this.build(Method.Refresh, () => undefined, { auth: false });
    const m = await this.transact(buf, transactionId);
    const nonce = m ? getAttribute(m, Attr.Nonce) : undefined;
    const realm = m ? getAttribute(m, Attr.Realm) : undefined;
    if (!nonce) throw new Error('no NONCE in the challenge');
    this.nonce = nonce.toString('utf8');
    if (realm) this.realm = realm.toString('utf8');
  }

  private pushReceived(r: Received): void {
    this.received.push(r);
    const waiters = this.receivedWaiters;
    this.receivedWaiters = [];
    for (const w of waiters) w();
  }

  /** Waits until `count` packets have been received in total (or the timeout passes). */
  async waitForReceived(count: number, timeoutMs = 2000): Promise<Received[]> {
    const deadline = Date.now() + timeoutMs;
    while (this.received.length < count && Date.now() < deadline) {
      await new Promise<void>((resolve) => {
        const t = setTimeout(resolve, Math.max(1, deadline - Date.now()));
        this.receivedWaiters.push(() => {
          clearTimeout(t);
          resolve();
        });
      });
    }
    return this.received;
  }

  sendRaw(buf: Buffer, to: Endpoint = this.server): void {
    this.socket.send(buf, to.port, to.address);
  }

  /** Sends one request and waits for its response (retransmitting over UDP); undefined on timeout. */
  async transact(buf: Buffer, transactionId: Buffer, timeoutMs = TRANSACTION_TIMEOUT_MS): Promise<StunMessage | undefined> {
    const id = transactionId.toString('hex');
    return new Promise((resolve) => {
      let timer: NodeJS.Timeout | undefined;
      let done = false;
      // After a stall (a busy machine), timers run before the I/O that piled up: a response
      // already in the socket, or a request waiting in the (in-process) server's socket, would
      // be read only after them. Two loop turns let both happen first, so a retransmission or
      // a timeout only comes when no answer is there to be read.
      const afterPendingIo = (f: () => void): void => {
        setImmediate(() =>
          setImmediate(() => {
            if (!done) f();
          }),
        );
      };
      const retransmit = setInterval(() => afterPendingIo(() => this.sendRaw(buf)), 300);
      const finish = (m: StunMessage | undefined): void => {
        if (done) return;
        done = true;
        clearInterval(retransmit);
        if (timer) clearTimeout(timer);
        this.waiting.delete(id);
        resolve(m);
      };
      this.waiting.set(id, finish);
      timer = setTimeout(() => afterPendingIo(() => finish(undefined)), timeoutMs);
      this.sendRaw(buf);
    });
  }

  key(): Buffer {
    return longTermKey(this.credentials.username, this.realm, this.credentials.password);
  }

  /** Builds a request; with auth, adds USERNAME, REALM, NONCE and MESSAGE-INTEGRITY (and FINGERPRINT if asked). */
  build(
    method: number,
    decorate: Decorate,
    options: { auth?: boolean; fingerprint?: boolean; transactionId?: Buffer } = {},
  ): { buf: Buffer; transactionId: Buffer } {
    const transactionId = options.transactionId ?? randomBytes(12);
    const w = new MessageWriter(method, MessageClass.Request, transactionId);
    decorate(w);
    if (options.auth !== false && this.nonce !== undefined) {
      w.addText(Attr.Username, this.credentials.username);
      w.addText(Attr.Realm, this.realm);
      w.addText(Attr.Nonce, this.nonce);
      w.addIntegrity(this.key());
    }
    if (options.fingerprint) w.addFingerprint();
    return { buf: w.toBuffer(), transactionId };
  }

  /**
   * An authenticated request: learns REALM/NONCE from a 401 or 438 and retries,
   * as a real client does. Returns the final response.
   */
  async request(method: number, decorate: Decorate = () => undefined, options: { fingerprint?: boolean } = {}): Promise<Response> {
    for (let attempt = 0; attempt < 3; attempt++) {
      const { buf, transactionId } = this.build(method, decorate, options);
      const m = await this.transact(buf, transactionId);
      if (!m) throw new Error(`no response to method 0x${method.toString(16)}`);
      const code = m.cls === MessageClass.SuccessResponse ? 200 : (decodeErrorCode(getAttribute(m, Attr.ErrorCode) ?? Buffer.alloc(0))?.code ?? 0);
      const hadNonce = this.nonce !== undefined;
      if (code === 438) this.staleNonces++;
      if (code === 401 || code === 438) {
        const nonce = getAttribute(m, Attr.Nonce);
        const realm = getAttribute(m, Attr.Realm);
        if (nonce) this.nonce = nonce.toString('utf8');
        if (realm) this.realm = realm.toString('utf8');
        if (code === 438 || !hadNonce) continue;
      }
      return { message: m, code };
    }
    throw new Error('authentication did not converge');
  }

  async allocate(decorate: Decorate = () => undefined): Promise<{ response: Response; relayed?: Endpoint; lifetimeSeconds?: number }> {
    const response = await this.request(Method.Allocate, (w) => {
      w.add(Attr.RequestedTransport, encodeRequestedTransport(TRANSPORT_UDP));
      decorate(w);
    });
    if (response.code !== 200) return { response };
    const m = response.message;
    const relayed = decodeAddress(getAttribute(m, Attr.XorRelayedAddress)!, m.transactionId)!;
    const lifetimeSeconds = decodeUint32(getAttribute(m, Attr.Lifetime)!);
    return { response, relayed: { address: relayed.address, port: relayed.port }, lifetimeSeconds };
  }

  createPermission(...peers: Endpoint[]): Promise<Response> {
    return this.request(Method.CreatePermission, (w) => {
      for (const p of peers) w.addXorAddress(Attr.XorPeerAddress, p.address, p.port);
    });
  }

  channelBind(channel: number, peer: Endpoint): Promise<Response> {
    return this.request(Method.ChannelBind, (w) => {
      w.add(Attr.ChannelNumber, encodeChannelNumber(channel));
      w.addXorAddress(Attr.XorPeerAddress, peer.address, peer.port);
    });
  }

  refresh(lifetimeSeconds?: number): Promise<Response> {
    return this.request(Method.Refresh, (w) => {
      if (lifetimeSeconds !== undefined) {
        const v = Buffer.alloc(4);
        v.writeUInt32BE(lifetimeSeconds, 0);
        w.add(Attr.Lifetime, v);
      }
    });
  }

  sendIndication(peer: Endpoint, data: Buffer): void {
    const w = new MessageWriter(Method.Send, MessageClass.Indication, randomBytes(12));
    w.addXorAddress(Attr.XorPeerAddress, peer.address, peer.port);
    w.add(Attr.Data, data);
    this.sendRaw(w.toBuffer());
  }

  sendChannelData(channel: number, data: Buffer): void {
    this.sendRaw(encodeChannelData(channel, data));
  }

  close(): void {
    try {
      this.socket.close();
    } catch {
      // already closed
    }
  }
}

/** A plain UDP peer on 127.0.0.1 that records what it receives and can answer. */
export class TestPeer {
  readonly received: { data: Buffer; from: Endpoint }[] = [];
  private constructor(readonly socket: dgram.Socket) {
    socket.on('message', (data, rinfo) => this.received.push({ data, from: { address: rinfo.address, port: rinfo.port } }));
  }

  /** A peer on loopback: 127.0.0.1 by default, or '::1'. */
  static async open(address: '127.0.0.1' | '::1' = '127.0.0.1'): Promise<TestPeer> {
    const socket = dgram.createSocket(address === '::1' ? 'udp6' : 'udp4');
    await new Promise<void>((resolve) => socket.bind(0, address, () => resolve()));
    return new TestPeer(socket);
  }

  get endpoint(): Endpoint {
    const a = this.socket.address();
    return { address: a.address, port: a.port };
  }

  send(data: Buffer, to: Endpoint): void {
    this.socket.send(data, to.port, to.address);
  }

  async waitFor(count: number, timeoutMs = 2000): Promise<{ data: Buffer; from: Endpoint }[]> {
    const deadline = Date.now() + timeoutMs;
    while (this.received.length < count && Date.now() < deadline) await new Promise((r) => setTimeout(r, 10));
    return this.received;
  }

  close(): void {
    try {
      this.socket.close();
    } catch {
      // already closed
    }
  }
}

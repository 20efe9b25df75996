// The test TURN client over real UDP: one socket, requests retransmitted until
// answered (RFC 8489 §6.2.1). Built on our codec; interop tests use clients
// nobody here wrote, this one exists to reach every error path precisely.

import dgram from 'node:dgram';
import { decodeAddress } from '../../../src/stun/address.js';
import { encodeChannelData } from '../../../src/stun/channel-data.js';
import { Attr, MessageClass, Method } from '../../../src/stun/constants.js';
import { type StunMessage, getAttribute } from '../../../src/stun/message.js';
import { type Credentials, type Endpoint, type Received, TRANSACTION_TIMEOUT_MS, parseIncoming } from './messages.js';
import { TurnSession } from './session.js';

export class TestTurnClient extends TurnSession {
  readonly socket: dgram.Socket;
  private readonly waiting = new Map<string, (m: StunMessage) => void>();
  readonly received: Received[] = [];
  private receivedWaiters: (() => void)[] = [];
  /** Every STUN response received, by transaction id (hex), retransmitted answers included. */
  readonly responses = new Map<string, StunMessage[]>();
  private responseWaiters: (() => void)[] = [];

  private constructor(
    readonly server: Endpoint,
    credentials: Credentials,
    socket: dgram.Socket,
  ) {
    super(credentials);
    this.socket = socket;
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
    const incoming = parseIncoming(buf);
    if (!incoming) return;
    if (incoming.kind !== 'message') {
      this.pushReceived(incoming);
      return;
    }
    const m = incoming.message;
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
    if (!m || !getAttribute(m, Attr.Nonce)) throw new Error('no NONCE in the challenge');
    this.learnChallenge(m);
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

  protected async exchange(method: number, buf: Buffer, transactionId: Buffer): Promise<StunMessage> {
    const m = await this.transact(buf, transactionId);
    if (!m) throw new Error(`no response to method 0x${method.toString(16)}`);
    return m;
  }

  sendIndication(peer: Endpoint, data: Buffer): void {
    this.sendRaw(this.sendIndicationBuffer(peer, data));
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

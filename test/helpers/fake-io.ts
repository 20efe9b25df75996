// In-process fakes of the engine's own transport seams (src/turn/ports.ts), for
// engine unit tests driven by a ManualClock. They fake our interfaces only:
// nothing here stands in for a third-party library or a network service.

import type { ClientTransportKind } from '../../src/store/types.js';
import type {
  ClientPath,
  PeerConnection,
  PeerPacketHandler,
  RelayBindFailure,
  RelaySocket,
  RelaySocketFactory,
  TcpRelayFactory,
  TcpRelaySocket,
} from '../../src/turn/ports.js';

/** One message the engine sent to a client, as the client would receive it. */
export interface SentToClient {
  /** 'message' from sendMessage, 'framed' from sendFramed (Data indications, ChannelData). */
  readonly kind: 'message' | 'framed';
  /** The whole message in one Buffer (a copy: the engine reuses its header buffers). */
  readonly data: Buffer;
  readonly address: string;
  readonly port: number;
}

/** A ClientPath that records everything sent through it. */
export class FakeClientPath implements ClientPath {
  readonly sent: SentToClient[] = [];

  constructor(
    readonly transport: ClientTransportKind = 'udp',
    readonly localAddress = '192.0.2.1',
    readonly localPort = 3478,
  ) {}

  sendMessage(message: Buffer, port: number, address: string): void {
    this.sent.push({ kind: 'message', data: Buffer.from(message), address, port });
  }

  sendFramed(head: Buffer, headLength: number, payload: Buffer, offset: number, length: number, padTo4: boolean, port: number, address: string): void {
    const padding = padTo4 ? (4 - (length % 4)) % 4 : 0;
    const data = Buffer.alloc(headLength + length + padding);
    head.copy(data, 0, 0, headLength);
    payload.copy(data, headLength, offset, offset + length);
    this.sent.push({ kind: 'framed', data, address, port });
  }

  /** Everything sent to one client address:port. */
  sentTo(address: string, port: number): SentToClient[] {
    return this.sent.filter((s) => s.address === address && s.port === port);
  }

  /** Removes and returns what was sent so far. */
  take(): SentToClient[] {
    return this.sent.splice(0, this.sent.length);
  }
}

/** A datagram a relay socket sent towards a peer. */
export interface SentToPeer {
  readonly data: Buffer;
  readonly address: string;
  readonly port: number;
}

export class FakeRelaySocket implements RelaySocket {
  readonly sent: SentToPeer[] = [];
  closed = false;

  constructor(
    readonly address: string,
    readonly port: number,
    private readonly onPacket: PeerPacketHandler,
    private readonly onClose: (socket: FakeRelaySocket) => void,
  ) {}

  send(payload: Buffer, offset: number, length: number, port: number, address: string): void {
    if (this.closed) throw new Error(`send on closed relay socket ${this.address}:${this.port}`);
    this.sent.push({ data: Buffer.from(payload.subarray(offset, offset + length)), address, port });
  }

  close(): void {
    if (this.closed) return;
    this.closed = true;
    this.onClose(this);
  }

  /** A datagram from a peer arriving on this relayed address. Returns false (and delivers nothing) once closed. */
  inject(payload: Buffer, peerAddress: string, peerPort: number): boolean {
    if (this.closed) return false;
    this.onPacket(payload, peerAddress, peerPort);
    return true;
  }
}

/**
 * A RelaySocketFactory that hands out FakeRelaySockets, can report ports as taken (by
 * another process) and can run out of descriptors.
 */
export class FakeRelayFactory implements RelaySocketFactory {
  /** Every socket ever bound, in order (closed ones included). */
  readonly sockets: FakeRelaySocket[] = [];
  /** Every bind() call, successful or not. */
  readonly bindAttempts: { readonly address: string; readonly port: number }[] = [];
  /** Every available() call (the probe while out of descriptors). */
  readonly probes: string[] = [];
  private readonly open = new Map<string, FakeRelaySocket>();
  private readonly taken = new Set<string>();
  private readonly closed = new Map<string, number>();
  private failNext = 0;
  /** While set, every bind() fails with this code (as EMFILE does whatever the port). */
  private unavailable: string | undefined;

  private static id(address: string, port: number): string {
    return `${address}|${port}`;
  }

  /** From now on bind(address, port) reports the port in use (as another process holding it would). */
  takePort(address: string, port: number): void {
    this.taken.add(FakeRelayFactory.id(address, port));
  }

  releasePort(address: string, port: number): void {
    this.taken.delete(FakeRelayFactory.id(address, port));
  }

  /** The next `count` bind() calls report their port in use, whatever it is. */
  failNextBinds(count: number): void {
    this.failNext = count;
  }

  /** From now on every bind fails with `code` (e.g. 'EMFILE'); undefined ends it. */
  failAllBinds(code: string | undefined): void {
    this.unavailable = code;
  }

  /** True: bind() answers at once, as UdpRelayFactory does on an IP literal; false (the default): a promise. */
  answerAtOnce = false;

  bind(address: string, port: number, onPacket: PeerPacketHandler): RelaySocket | RelayBindFailure | Promise<RelaySocket | RelayBindFailure> {
    const bound = this.bindNow(address, port, onPacket);
    return this.answerAtOnce ? bound : Promise.resolve(bound);
  }

  private bindNow(address: string, port: number, onPacket: PeerPacketHandler): RelaySocket | RelayBindFailure {
    this.bindAttempts.push({ address, port });
    const id = FakeRelayFactory.id(address, port);
    if (this.unavailable !== undefined) return { failed: 'unavailable', code: this.unavailable };
    if (this.failNext > 0) {
      this.failNext--;
      return { failed: 'in-use' };
    }
    if (this.taken.has(id) || this.open.has(id)) return { failed: 'in-use' };
    const socket = new FakeRelaySocket(address, port, onPacket, (s) => {
      if (this.open.get(id) === s) this.open.delete(id);
      this.closed.set(address, (this.closed.get(address) ?? 0) + 1);
    });
    this.open.set(id, socket);
    this.sockets.push(socket);
    return socket;
  }

  holds(address: string, port: number): boolean {
    return this.open.has(FakeRelayFactory.id(address, port));
  }

  closedCount(address: string): number {
    return this.closed.get(address) ?? 0;
  }

  async available(address: string): Promise<boolean> {
    this.probes.push(address);
    return this.unavailable === undefined;
  }

  /** The open socket bound on address:port, if any. */
  socketAt(address: string, port: number): FakeRelaySocket | undefined {
    return this.open.get(FakeRelayFactory.id(address, port));
  }

  get openCount(): number {
    return this.open.size;
  }
}

/** A peer data connection (RFC 6062) as the engine sees it: records joins and closes. */
export class FakePeerConnection implements PeerConnection {
  joinedTo: ClientPath | undefined;
  closed = false;
  /** What join() answers (false: the client connection could not take raw bytes). */
  joinable = true;
  private closeHandler: (() => void) | undefined;

  constructor(
    readonly peerAddress: string,
    readonly peerPort: number,
  ) {}

  join(client: ClientPath): boolean {
    if (this.closed || !this.joinable) return false;
    this.joinedTo = client;
    return true;
  }

  onClose(handler: () => void): void {
    this.closeHandler = handler;
  }

  close(): void {
    if (this.closed) return;
    this.closed = true;
    this.closeHandler?.();
  }
}

/** A TCP relayed address: Connects resolve at once (or as the test says), inbound connections come from inject(). */
export class FakeTcpRelaySocket implements TcpRelaySocket {
  closed = false;
  /** Every connect() call. */
  readonly connects: { readonly address: string; readonly port: number; readonly timeoutMs: number }[] = [];
  /** Peers ("address|port") that refuse (connect resolves undefined). */
  readonly refusing = new Set<string>();
  /** While set, connect() waits until release() (a Connect under way). */
  holding = false;
  private readonly held: (() => void)[] = [];
  private onConnection: ((connection: PeerConnection) => void) | undefined;
  /** Every connection made or accepted, in order. */
  readonly connections: FakePeerConnection[] = [];

  constructor(
    readonly address: string,
    readonly port: number,
    private readonly onClosed: (socket: FakeTcpRelaySocket) => void,
  ) {}

  send(): void {
    throw new Error('a TCP relay sends no datagrams');
  }

  accept(onConnection: (connection: PeerConnection) => void): void {
    this.onConnection = onConnection;
  }

  async connect(address: string, port: number, timeoutMs: number): Promise<PeerConnection | undefined> {
    this.connects.push({ address, port, timeoutMs });
    if (this.holding) await new Promise<void>((resolve) => this.held.push(resolve));
    if (this.closed || this.refusing.has(`${address}|${port}`)) return undefined;
    const connection = new FakePeerConnection(address, port);
    this.connections.push(connection);
    return connection;
  }

  /** Lets the held Connects finish. */
  release(): void {
    this.holding = false;
    for (const resolve of this.held.splice(0)) resolve();
  }

  /** A peer connects to this relayed address; closed at once when nobody accepts. */
  inject(peerAddress: string, peerPort: number): FakePeerConnection {
    const connection = new FakePeerConnection(peerAddress, peerPort);
    this.connections.push(connection);
    if (this.closed || !this.onConnection) connection.close();
    else this.onConnection(connection);
    return connection;
  }

  close(): void {
    if (this.closed) return;
    this.closed = true;
    this.onClosed(this);
  }
}

export class FakeTcpRelayFactory implements TcpRelayFactory {
  readonly sockets: FakeTcpRelaySocket[] = [];
  private readonly open = new Map<string, FakeTcpRelaySocket>();
  private closed = 0;

  async bind(address: string, port: number): Promise<TcpRelaySocket | RelayBindFailure> {
    const id = `${address}|${port}`;
    if (this.open.has(id)) return { failed: 'in-use' };
    const socket = new FakeTcpRelaySocket(address, port, (s) => {
      if (this.open.get(id) === s) this.open.delete(id);
      this.closed++;
    });
    this.open.set(id, socket);
    this.sockets.push(socket);
    return socket;
  }

  holds(address: string, port: number): boolean {
    return this.open.has(`${address}|${port}`);
  }

  closedCount(): number {
    return this.closed;
  }

  async available(): Promise<boolean> {
    return true;
  }

  socketAt(address: string, port: number): FakeTcpRelaySocket | undefined {
    return this.open.get(`${address}|${port}`);
  }
}

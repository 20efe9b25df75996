// In-process fakes of the engine's own transport seams (src/turn/ports.ts), for
// engine unit tests driven by a ManualClock. They fake our interfaces only:
// nothing here stands in for a third-party library or a network service.

import type { ClientTransportKind } from '../../src/store/types.js';
import type { ClientPath, PeerPacketHandler, RelayBindFailure, RelaySocket, RelaySocketFactory } from '../../src/turn/ports.js';

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

  async bind(address: string, port: number, onPacket: PeerPacketHandler): Promise<RelaySocket | RelayBindFailure> {
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

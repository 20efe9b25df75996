// A worker's UDP side. The primary hands over every packet from a client that has no
// session yet; an authenticated Allocate opens a session (a socket connected to the
// client, src/transport/udp/session.ts), and from then on the kernel delivers that
// client's packets to this worker directly. Everything else (Binding, the first
// unauthenticated Allocate, junk) is answered through the primary's socket.

import { Attr, Method, MessageClass } from '../stun/constants.js';
import { decodeMessage, findAttribute } from '../stun/message.js';
import { framedLength, writeFramed } from '../transport/framed.js';
import { UdpSession } from '../transport/udp/session.js';
import type { ClientPath } from '../turn/ports.js';
import type { EngineCounters } from '../turn/counters.js';
import type { TurnEngine } from '../turn/engine.js';
import type { EngineListener } from '../turn/allocation/table.js';
import type { ClientResolver, UdpFrontend } from '../server/types.js';

/** A session without an allocation this long after its last packet is closed (a failed or deleted allocation). */
const SESSION_IDLE_MS = 10_000;
const SWEEP_MS = 1000;
/** Sessions without an allocation at most; past it, new clients are served through the primary (slower, same answers). */
const MAX_IDLE_SESSIONS = 1024;

export interface PrimaryLink {
  /** Send bytes to a client from the primary's listening socket `index`. */
  send(index: number, address: string, port: number, bytes: Buffer): void;
  /** A packet for someone else: the primary dispatches it again. */
  stray(index: number, address: string, port: number, bytes: Buffer): void;
}

/** Answers for clients without a session leave through the primary's listening socket. */
class PrimaryPath implements ClientPath {
  readonly transport = 'udp' as const;
  constructor(
    readonly localAddress: string,
    readonly localPort: number,
    private readonly index: number,
    private readonly link: PrimaryLink,
  ) {}

  sendMessage(message: Buffer, port: number, address: string): void {
    this.link.send(this.index, address, port, message);
  }

  sendFramed(head: Buffer, headLength: number, payload: Buffer, offset: number, length: number, padTo4: boolean, port: number, address: string): void {
    // Its own buffer: IPC sends it later, and the engine reuses `head`.
    const out = Buffer.allocUnsafe(framedLength(headLength, length, padTo4));
    writeFramed(out, head, headLength, payload, offset, length, padTo4);
    this.link.send(this.index, address, port, out);
  }
}

interface Open {
  readonly session: UdpSession;
  readonly listener: EngineListener;
  /** Packets that came before the socket was connected. */
  queue: Buffer[] | undefined;
  seenPackets: number;
  idleSinceMs: number;
}

interface Front {
  readonly index: number;
  readonly address: string;
  readonly port: number;
  readonly listener: EngineListener;
  /** client address -> client port -> session. */
  readonly sessions: Map<string, Map<number, Open>>;
}

/** Only an Allocate that carries MESSAGE-INTEGRITY opens a session: a spoofed source costs no socket before that. */
export function isAuthenticatedAllocate(buf: Buffer): boolean {
  if (buf.length < 20 || buf[0] !== 0 || buf[1] !== 0x03) return false;
  const decoded = decodeMessage(buf);
  if (!decoded.ok) return false;
  const m = decoded.message;
  return (
    m.method === Method.Allocate &&
    m.cls === MessageClass.Request &&
    (findAttribute(m, Attr.MessageIntegrity) !== undefined || findAttribute(m, Attr.MessageIntegritySha256) !== undefined)
  );
}

export class WorkerUdpFrontend implements UdpFrontend {
  private engine: TurnEngine | undefined;
  private readonly fronts: Front[] = [];
  private readonly timer: NodeJS.Timeout;
  private idleSessions = 0;
  private sessionCount = 0;

  constructor(
    private readonly link: PrimaryLink,
    private readonly counters: EngineCounters,
    private readonly now: () => number = Date.now,
  ) {
    this.timer = setInterval(() => this.sweep(), SWEEP_MS);
    this.timer.unref();
  }

  get sessions(): number {
    return this.sessionCount;
  }

  async open(engine: TurnEngine, index: number, address: string, port: number): Promise<ClientResolver> {
    this.engine = engine;
    const front: Front = { index, address, port, listener: engine.addListener(new PrimaryPath(address, port, index, this.link)), sessions: new Map() };
    this.fronts[index] = front;
    return (clientAddress, clientPort) => front.sessions.get(clientAddress)?.get(clientPort)?.listener ?? front.listener;
  }

  /** A packet the primary handed over. */
  onPacket(index: number, address: string, port: number, buf: Buffer): void {
    const front = this.fronts[index];
    const engine = this.engine;
    if (!front || !engine) return;
    // No session (a socket connect()ed to port 0 throws) and no answer for source port 0.
    if (port === 0) {
      this.counters.drops.source_port_zero++;
      return;
    }
    const open = front.sessions.get(address)?.get(port);
    if (open) {
      if (open.queue) open.queue.push(buf);
      else engine.handleClientPacket(open.listener, buf, address, port);
      return;
    }
    if (this.idleSessions < MAX_IDLE_SESSIONS && isAuthenticatedAllocate(buf)) return this.startSession(front, engine, address, port, buf);
    engine.handleClientPacket(front.listener, buf, address, port);
  }

  private startSession(front: Front, engine: TurnEngine, address: string, port: number, first: Buffer): void {
    const session = new UdpSession(front.address, front.port, address, port, {
      onPacket: (s, buf) => engine.handleClientPacket(open.listener, buf, s.clientAddress, s.clientPort),
      onStray: (_s, buf, a, p) => this.link.stray(front.index, a, p, buf),
      onCongestionDrop: () => this.counters.drops.send_queue_full++,
    });
    const open: Open = { session, listener: engine.addListener(session), queue: [first], seenPackets: 0, idleSinceMs: this.now() };
    let byPort = front.sessions.get(address);
    if (!byPort) front.sessions.set(address, (byPort = new Map()));
    byPort.set(port, open);
    this.sessionCount++;
    this.idleSessions++;
    void session.open().then((ok) => {
      const queue = open.queue ?? [];
      open.queue = undefined;
      if (!ok) {
        // No socket: serve this client through the primary instead.
        this.remove(front, open);
        for (const buf of queue) engine.handleClientPacket(front.listener, buf, address, port);
        return;
      }
      for (const buf of queue) engine.handleClientPacket(open.listener, buf, address, port);
    });
  }

  private remove(front: Front, open: Open): void {
    const byPort = front.sessions.get(open.session.clientAddress);
    if (byPort?.get(open.session.clientPort) !== open) return;
    byPort.delete(open.session.clientPort);
    if (byPort.size === 0) front.sessions.delete(open.session.clientAddress);
    this.sessionCount--;
    if (open.listener.size === 0) this.idleSessions--;
    open.session.close();
    void this.engine?.closeListener(open.listener, 'udp-session-closed').catch(() => undefined);
  }

  /**
   * Closes sessions that have had no allocation and no packet for SESSION_IDLE_MS, and
   * recounts the idle ones. Runs every second; tests call it after moving their clock.
   */
  sweep(): void {
    const now = this.now();
    let idle = 0;
    for (const front of this.fronts) {
      if (!front) continue;
      for (const byPort of [...front.sessions.values()]) {
        for (const open of [...byPort.values()]) {
          if (open.listener.size > 0 || open.queue) {
            open.idleSinceMs = now;
            continue;
          }
          if (open.session.packets !== open.seenPackets) {
            open.seenPackets = open.session.packets;
            open.idleSinceMs = now;
          }
          if (now - open.idleSinceMs >= SESSION_IDLE_MS) {
            this.remove(front, open);
            continue;
          }
          idle++;
        }
      }
    }
    this.idleSessions = idle;
  }

  async close(): Promise<void> {
    clearInterval(this.timer);
    for (const front of this.fronts) {
      if (!front) continue;
      for (const byPort of front.sessions.values()) for (const open of byPort.values()) open.session.close();
      front.sessions.clear();
    }
    this.sessionCount = 0;
    this.idleSessions = 0;
  }
}

// RFC 6062 TCP allocations: the peer data connections of each TCP allocation, and the
// CONNECTION-IDs that name them across the node (a ConnectionBind arrives on a new
// client connection, which holds no allocation, and finds its peer connection by id).
// No sockets: a peer connection is the transport's PeerConnection (ports.ts).

import { randomInt } from 'node:crypto';
import type { PeerConnection, TcpRelaySocket } from '../ports.js';
import type { Allocation } from './allocation.js';

/** RFC 6062 §5.2: a Connect waits at least 30 s for the peer before answering 447. */
export const CONNECT_TIMEOUT_MS = 30_000;
/** RFC 6062 §5.2, §5.3: a peer data connection no ConnectionBind claimed within 30 s is closed. */
export const CONNECTION_BIND_TIMEOUT_MS = 30_000;
/**
 * Peer data connections one TCP allocation may hold, pending and joined, Connects under way
 * included: past it a Connect gets 508 and an inbound connection is closed. Each one holds
 * two sockets (peer and client data connection): without a cap, one allocation could hold
 * the node's descriptors.
 */
export const MAX_PEER_CONNECTIONS = 256;

/** One peer data connection (RFC 6062 §2): waiting for its ConnectionBind, or joined to a client data connection. */
export interface PeerDataConnection {
  readonly id: number;
  readonly allocation: Allocation;
  readonly connection: PeerConnection;
  /** Engine clock deadline for its ConnectionBind; 0 once joined. */
  bindByMs: number;
}

/** The TCP side of one allocation: its relayed transport address and its peer data connections. */
export class TcpRelayState {
  /** Peers ("address|port") a Connect is under way to: a second Connect to one gets 446. */
  readonly connecting = new Set<string>();
  readonly connections = new Set<PeerDataConnection>();

  constructor(readonly socket: TcpRelaySocket) {}

  /** Connections held and being made (the MAX_PEER_CONNECTIONS cap). */
  get size(): number {
    return this.connections.size + this.connecting.size;
  }

  /** RFC 6062 §5.2 (446): a Connect to this peer is under way, or its connection is pending or joined. */
  hasPeer(address: string, port: number): boolean {
    if (this.connecting.has(peerKey(address, port))) return true;
    for (const c of this.connections) if (c.connection.peerAddress === address && c.connection.peerPort === port) return true;
    return false;
  }

  /** RFC 6062 §5.5: the allocation ends, so does every data connection (a joined one takes its client data connection with it). */
  closeAll(): void {
    for (const c of [...this.connections]) c.connection.close();
    this.connections.clear();
  }
}

export function peerKey(address: string, port: number): string {
  return `${address}|${port}`;
}

/** Every peer data connection of the node by CONNECTION-ID (RFC 6062 §6.2: 32 bits, unique among live ones). */
export class TcpConnectionIds {
  private readonly byId = new Map<number, PeerDataConnection>();

  get size(): number {
    return this.byId.size;
  }

  /** Gives `connection` an id, waiting for its ConnectionBind until nowMs + 30 s; it leaves on its own once closed. */
  add(allocation: Allocation, state: TcpRelayState, connection: PeerConnection, nowMs: number): PeerDataConnection {
    let id = randomInt(1, 0xffffffff);
    while (this.byId.has(id)) id = randomInt(1, 0xffffffff);
    const entry: PeerDataConnection = { id, allocation, connection, bindByMs: nowMs + CONNECTION_BIND_TIMEOUT_MS };
    this.byId.set(id, entry);
    state.connections.add(entry);
    connection.onClose(() => {
      if (this.byId.get(id) === entry) this.byId.delete(id);
      state.connections.delete(entry);
    });
    return entry;
  }

  /** The pending (not yet joined) connection named `id`, if any. */
  pending(id: number): PeerDataConnection | undefined {
    const entry = this.byId.get(id);
    return entry !== undefined && entry.bindByMs > 0 ? entry : undefined;
  }

  /** Closes the pending connections whose ConnectionBind did not come in time; returns how many. */
  expire(nowMs: number): number {
    let closed = 0;
    for (const entry of [...this.byId.values()]) {
      if (entry.bindByMs === 0 || entry.bindByMs > nowMs) continue;
      this.byId.delete(entry.id);
      entry.connection.close();
      closed++;
    }
    return closed;
  }
}

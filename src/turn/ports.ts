// The engine's ports: every interface the layers around src/turn implement or use.
// Transport implements ClientPath and RelaySocketFactory; the cluster implements
// ForeignPacketHandler and hands packets back through ClientPacketSink; ops reads
// EngineSnapshot; all of them log through EngineLogger. Nothing outside src/turn
// needs engine.ts for a type: the engine never sees a socket class, and its
// neighbours never see an allocation.

import type { ClientTransportKind } from '../store/types.js';

/** Where client packets arrive and answers leave: a UDP listening socket, or one TCP/TLS connection. */
export interface ClientPath {
  readonly transport: ClientTransportKind;
  readonly localAddress: string;
  readonly localPort: number;
  /** Sends a whole STUN message to the client. */
  sendMessage(message: Buffer, port: number, address: string): void;
  /**
   * Sends head[0, headLength) followed by payload[offset, offset + length) as one
   * message. `padTo4` asks for zero padding of the payload to a multiple of 4
   * (a Data indication's DATA attribute; ChannelData on streams).
   */
  sendFramed(head: Buffer, headLength: number, payload: Buffer, offset: number, length: number, padTo4: boolean, port: number, address: string): void;
}

/** A relay socket: the relayed transport address of one allocation. */
export interface RelaySocket {
  readonly address: string;
  readonly port: number;
  send(payload: Buffer, offset: number, length: number, port: number, address: string): void;
  close(): void;
}

/**
 * A peer's datagram on a relayed address. `length`: the datagram is payload[0, length)
 * (a shared relay socket hands over the buffer it read, whose last bytes are not the
 * peer's: src/transport/udp/shared-relay.ts); absent, the whole payload.
 */
export type PeerPacketHandler = (payload: Buffer, address: string, port: number, length?: number) => void;

/**
 * Why a relay bind failed. 'in-use': that port is taken (EADDRINUSE), another may be free.
 * 'unavailable': no socket can be had at all, whatever the port (EMFILE/ENFILE: out of
 * descriptors; or EADDRNOTAVAIL, ENOBUFS...): `code` names the error.
 */
export type RelayBindFailure = { readonly failed: 'in-use' } | { readonly failed: 'unavailable'; readonly code: string };

export function isBindFailure(r: RelaySocket | RelayBindFailure): r is RelayBindFailure {
  return 'failed' in r;
}

/** What a relay bind comes to: the socket, or why not. */
export type RelayBound = RelaySocket | RelayBindFailure;

export interface RelaySocketFactory {
  /**
   * Binds a UDP socket on address:port; says why not when it cannot. A bind that is done
   * within the call (node:dgram on an IP literal: transport/udp/relay.ts) answers at once,
   * without a promise: the usual Allocate then runs to its answer without a turn of the
   * event loop (docs/scaling.md, part 1); a factory that must wait answers a promise.
   */
  bind(address: string, port: number, onPacket: PeerPacketHandler): RelayBound | Promise<RelayBound>;
  /** True while a socket of this factory holds address:port (no system call: the factory keeps track). */
  holds(address: string, port: number): boolean;
  /** Relay sockets closed on address so far: a port found held can only be free again once this grows. */
  closedCount(address: string): number;
  /** After an 'unavailable' failure: whether a socket can be bound on address again (about once a second). */
  available(address: string): Promise<boolean>;
}

/**
 * One TCP connection between a TCP allocation's relayed transport address and a peer
 * (RFC 6062 §2: a peer data connection). Nothing is read from it until it is joined: the
 * peer's bytes wait in the TCP receive window meanwhile (RFC 6062 §5.2, §5.3).
 */
export interface PeerConnection {
  readonly peerAddress: string;
  readonly peerPort: number;
  /**
   * RFC 6062 §5.4: `client`, the TCP/TLS client connection whose ConnectionBind just succeeded
   * (its answer already sent), becomes this connection's client data connection: bytes pass
   * unchanged both ways from now on, and when either side closes so does the other. False
   * when `client` cannot carry raw bytes (not a stream, or already gone).
   */
  join(client: ClientPath): boolean;
  /** Called once, when the connection closed (either side, or close()). */
  onClose(handler: () => void): void;
  close(): void;
}

/**
 * The relayed transport address of a TCP allocation (RFC 6062 §5.1): it accepts peers'
 * connections and makes connections to peers from the same address and port.
 */
export interface TcpRelaySocket extends RelaySocket {
  /** Hands inbound peer connections to `onConnection` from now on; until then they are closed at once. */
  accept(onConnection: (connection: PeerConnection) => void): void;
  /**
   * Connects to address:port from the relayed transport address (RFC 6062 §5.2); resolves
   * undefined when the peer refused, the attempt failed, or it did not succeed within timeoutMs.
   */
  connect(address: string, port: number, timeoutMs: number): Promise<PeerConnection | undefined>;
}

/** Binds TCP relayed transport addresses: a RelaySocketFactory whose sockets are TcpRelaySockets (`onPacket` is never called). */
export interface TcpRelayFactory extends RelaySocketFactory {
  bind(address: string, port: number, onPacket: PeerPacketHandler): Promise<TcpRelaySocket | RelayBindFailure>;
}

/** The subset of pino's logger the engine (and the cluster and ops) use. */
export interface EngineLogger {
  /** pino's: lets a caller skip building a line below the log level (the request path, docs/scaling.md part 1). */
  isLevelEnabled?(level: 'info' | 'debug'): boolean;
  info(obj: object, msg: string): void;
  warn(obj: object, msg: string): void;
  error(obj: object, msg: string): void;
  debug(obj: object, msg: string): void;
}

/**
 * One place client packets arrive, as the engine registered it (addListener): outside
 * src/turn only its path is visible; the engine keeps its allocations behind it.
 */
export interface ListenerHandle {
  readonly path: ClientPath;
}

/** Where the cluster hands back a packet it held (TurnEngine implements it). */
export interface ClientPacketSink {
  /** `local`: the cluster already looked for another owner; the engine decides, whatever the outcome. */
  handleClientPacket(listener: ListenerHandle, buf: Buffer, address: string, port: number, local?: boolean): void;
}

/**
 * Where packets go that belong to no local allocation: in a cluster, the node that
 * owns the allocation may be elsewhere (an anycast reroute moved the client here).
 */
export interface ForeignPacketHandler {
  /**
   * Returns true when it takes the packet (forwards it, or decides later and then
   * hands it back through handleClientPacket with local = true); false lets the
   * engine treat it as belonging to no allocation (drop, or 437 for a request).
   */
  offer(listener: ListenerHandle, buf: Buffer, address: string, port: number): boolean;
  /**
   * RFC 8016 mobility in forward mode: a Refresh whose ticket names the allocation at
   * store key `key`, held by another node. Resolves true when the request (and what the
   * client sends from this 5-tuple next) went to that node, which answers.
   */
  forwardToOwner?(key: string, listener: ListenerHandle, buf: Buffer, address: string, port: number): Promise<boolean>;
}

/** The relayed address family of an allocation: one IPv4, one IPv6, or both (RFC 8656 §7.2 ADDITIONAL-ADDRESS-FAMILY). */
export type RelayFamily = 'ipv4' | 'ipv6' | 'dual';

/** Live state counted at one moment, for metrics (built on demand, never on the packet path). */
export interface EngineSnapshot {
  /** Allocations by client transport and relayed family; absent pairs are 0. */
  readonly allocations: ReadonlyArray<{ readonly transport: ClientTransportKind; readonly family: RelayFamily; readonly count: number }>;
  /** Installed permissions (peer IPs) over all allocations. */
  readonly permissions: number;
  /** Channel bindings over all allocations (quarantined ones included). */
  readonly channels: number;
  /** Allocations per username. */
  readonly allocationsByUser: ReadonlyMap<string, number>;
  /** Allocations with no record of their own in the store: made while it was unreachable, or that lost a conflict after (docs/architecture.md §5). */
  readonly localOnly: number;
}

/** What ops reads from the engine. */
export interface EngineStats {
  snapshot(): EngineSnapshot;
}

/**
 * One bound channel as the kernel data plane relays it (docs/dataplane.md): both directions
 * of the 5-tuple, the relayed address and the peer. Expiry is the engine clock's: the
 * earliest of the channel's, its permission's and the allocation's.
 */
export interface OffloadChannel {
  readonly clientAddress: string;
  readonly clientPort: number;
  readonly serverAddress: string;
  readonly serverPort: number;
  readonly channel: number;
  readonly relayAddress: string;
  readonly relayPort: number;
  readonly peerAddress: string;
  readonly peerPort: number;
  readonly expiresAtMs: number;
}

/**
 * Where the engine says which channels may be relayed without it (the kernel data plane,
 * src/dataplane). The engine decides everything a packet on them could be refused for
 * before it lists a channel (permission, peer policy, lifetimes), and lists them again on
 * every change, so what is installed never outlives what the engine would relay.
 */
export interface ChannelOffload {
  /**
   * From now on, exactly these channels of allocation `key` (none: an empty list). `nowMs` is
   * the engine clock's reading. When it changed anything, resolves once the kernel holds the
   * change (never rejects): a ChannelBind is answered after that, so the client's first
   * ChannelData already finds its entry.
   */
  set(key: string, channels: readonly OffloadChannel[], nowMs: number): Promise<void> | undefined;
  /**
   * Packets and payload bytes the kernel relayed for `key`, both directions, once its entries
   * are gone (its deletion log): resolves when their last counts are read, and forgets them.
   * Undefined when it never had an entry.
   */
  takeTraffic(key: string): Promise<{ readonly packets: number; readonly bytes: number } | undefined> | undefined;
}

// What the engine needs from the transport layer, as interfaces: the engine never
// sees a socket class.

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

export type PeerPacketHandler = (payload: Buffer, address: string, port: number) => void;

/**
 * Why a relay bind failed. 'in-use': that port is taken (EADDRINUSE), another may be free.
 * 'unavailable': no socket can be had at all, whatever the port (EMFILE/ENFILE: out of
 * descriptors; or EADDRNOTAVAIL, ENOBUFS...): `code` names the error.
 */
export type RelayBindFailure = { readonly failed: 'in-use' } | { readonly failed: 'unavailable'; readonly code: string };

export function isBindFailure(r: RelaySocket | RelayBindFailure): r is RelayBindFailure {
  return 'failed' in r;
}

export interface RelaySocketFactory {
  /** Binds a UDP socket on address:port; resolves why not when it cannot. */
  bind(address: string, port: number, onPacket: PeerPacketHandler): Promise<RelaySocket | RelayBindFailure>;
  /** True while a socket of this factory holds address:port (no system call: the factory keeps track). */
  holds(address: string, port: number): boolean;
  /** Relay sockets closed on address so far: a port found held can only be free again once this grows. */
  closedCount(address: string): number;
  /** After an 'unavailable' failure: whether a socket can be bound on address again (about once a second). */
  available(address: string): Promise<boolean>;
}

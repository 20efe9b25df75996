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

export interface RelaySocketFactory {
  /** Binds a UDP socket on address:port; resolves undefined when the port is in use. */
  bind(address: string, port: number, onPacket: PeerPacketHandler): Promise<RelaySocket | undefined>;
}

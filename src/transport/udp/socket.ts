// Making and binding a node:dgram socket: the one place every UDP socket of the server
// (client listeners, relay sockets, sessions, the workers' primary, the cluster mesh) is
// created and bound.

import dgram from 'node:dgram';
import { literalLookup } from './lookup.js';

/** Above this many datagrams queued in libuv a socket is congested: drop rather than buffer without bound. */
export const MAX_SEND_QUEUE = 4096;
/** Room for the largest UDP payload plus a Data indication head and padding. */
export const DATAGRAM_SCRATCH_BYTES = 65536 + 64;

export interface UdpSocketOptions {
  readonly recvBufferSize?: number;
  readonly sendBufferSize?: number;
  /** SO_REUSEADDR / SO_REUSEPORT as port-sharing.ts says; default neither. */
  readonly reuseAddr?: boolean;
  readonly reusePort?: boolean;
}

export function udpFamily(address: string): 'udp4' | 'udp6' {
  return address.includes(':') ? 'udp6' : 'udp4';
}

/**
 * A socket of the address's family that resolves destinations synchronously (every
 * address we send to is an IP literal: lookup.ts), unbound.
 */
export function createUdpSocket(address: string, options: UdpSocketOptions = {}): dgram.Socket {
  return dgram.createSocket({ type: udpFamily(address), ...options, lookup: literalLookup } as dgram.SocketOptions);
}

/**
 * Binds `socket` to address:port (0: an ephemeral port) and resolves once it listens;
 * rejects with the bind error (EADDRINUSE, EMFILE...), after which the caller owns the
 * unbound socket. Exclusive: in a node:cluster worker the bind is this process's own,
 * never the primary's shared handle.
 */
export function bindUdpSocket(socket: dgram.Socket, address: string, port: number): Promise<void> {
  return new Promise((resolve, reject) => {
    socket.once('error', reject);
    socket.bind({ address, port, exclusive: true }, () => {
      socket.off('error', reject);
      resolve();
    });
  });
}

/** Closes a socket and resolves once it is closed; one that was never bound or is closed already resolves at once. */
export function closeUdpSocket(socket: dgram.Socket): Promise<void> {
  return new Promise((resolve) => {
    try {
      socket.close(() => resolve());
    } catch {
      resolve();
    }
  });
}

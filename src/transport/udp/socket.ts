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

/** What bindUdpSocketNow saw happen within socket.bind (one bind at a time: the event loop runs one call at a time). */
let boundNow = false;
let bindErrorNow: Error | undefined;
function onListeningNow(): void {
  boundNow = true;
}
function onErrorNow(err: Error): void {
  bindErrorNow = err;
}

/**
 * bindUdpSocket, answered at once when the bind is done within the call: node:dgram binds
 * an IP literal synchronously when the socket's lookup answers synchronously (literalLookup,
 * createUdpSocket), emitting 'listening' or 'error' before bind() returns. Undefined: bound;
 * an Error: the bind error (the caller owns the unbound socket). Otherwise the promise of
 * bindUdpSocket. The listeners are two module functions added and taken off again: no
 * promise, closure or once-wrapper per relay socket (docs/scaling.md, part 1).
 */
export function bindUdpSocketNow(socket: dgram.Socket, address: string, port: number): Error | undefined | Promise<void> {
  boundNow = false;
  bindErrorNow = undefined;
  socket.on('error', onErrorNow);
  socket.on('listening', onListeningNow);
  try {
    socket.bind({ address, port, exclusive: true });
  } catch (err) {
    bindErrorNow = err as Error;
  } finally {
    socket.off('error', onErrorNow);
    socket.off('listening', onListeningNow);
  }
  const bound = boundNow;
  const error = bindErrorNow;
  boundNow = false;
  bindErrorNow = undefined;
  if (error !== undefined) return error;
  if (bound) return undefined;
  // Not settled yet (an asynchronous lookup): wait for it as bindUdpSocket does.
  return new Promise((resolve, reject) => {
    const failed = (err: Error): void => {
      socket.off('listening', listening);
      reject(err);
    };
    const listening = (): void => {
      socket.off('error', failed);
      resolve();
    };
    socket.once('error', failed);
    socket.once('listening', listening);
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

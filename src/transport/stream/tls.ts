// The TLS side of a TLS client listener (RFC 8656 §3.1, TURN over TLS).

import type net from 'node:net';
import tls from 'node:tls';

/**
 * A tls.Server that never listens: the listener accepts TCP itself and hands each socket
 * here (the server's documented 'connection' injection) once it has passed the connection
 * cap, so that cap and the idle deadline apply before a handshake costs anything.
 */
export class TlsAcceptor {
  private readonly server: tls.Server;

  constructor(credentials: { readonly cert: Buffer; readonly key: Buffer }, handshakeTimeoutMs: number, onSecured: (socket: tls.TLSSocket) => void) {
    this.server = tls.createServer({ cert: credentials.cert, key: credentials.key, handshakeTimeout: handshakeTimeoutMs });
    this.server.on('secureConnection', onSecured);
    // A failed handshake destroys the socket; its connection counts it when it closes.
    this.server.on('tlsClientError', () => undefined);
  }

  /** Starts the handshake on an accepted TCP socket. */
  handshake(socket: net.Socket): void {
    this.server.emit('connection', socket);
  }
}

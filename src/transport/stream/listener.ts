// TCP and TLS client listeners (RFC 8656 §3.1: TURN over TCP on the same port
// number as UDP, TURN over TLS on its own, 5349 by default). Every accepted connection
// is its own ClientPath (connection.ts).

import net from 'node:net';
import type tls from 'node:tls';
import { StreamCounters, type StreamTransport } from '../counters.js';
import { StreamConnection, type StreamConnectionOptions, type StreamListenerHooks, plainAddress } from './connection.js';
import { TlsAcceptor } from './tls.js';

export interface StreamListenerOptions extends StreamConnectionOptions {
  readonly transport: StreamTransport;
  readonly address: string;
  /** 0: an ephemeral port. */
  readonly port: number;
  /** PEM certificate chain and private key, for transport 'tls'. */
  readonly tls?: { readonly cert: Buffer; readonly key: Buffer };
  /** Open connections over every listener sharing `counters`; beyond it new ones are closed at once. 0: no cap. */
  readonly maxConnections: number;
  /**
   * Of those, open connections from one source (an IPv4 address, an IPv6 /64) over every
   * listener sharing `counters`; beyond it the source's new ones are closed at once. 0: no limit.
   */
  readonly maxConnectionsPerSource?: number;
  /** In a node:cluster worker: let the primary hold the listening socket and share out connections. */
  readonly shared?: boolean;
}

/** Accepts TCP (or TLS over TCP) connections on one address. */
export class StreamClientListener {
  private readonly server: net.Server;
  private readonly tls: TlsAcceptor | undefined;
  private readonly connections = new Map<string, StreamConnection>();
  private boundPort = 0;
  private closing = false;

  constructor(
    private readonly options: StreamListenerOptions,
    private readonly counters: StreamCounters,
    private readonly hooks: StreamListenerHooks,
  ) {
    if (options.transport === 'tls') {
      if (!options.tls) throw new Error('a TLS listener needs a certificate and a key');
      this.tls = new TlsAcceptor(options.tls, options.idleTimeoutMs + 1000, (socket) => this.onSecured(socket));
    }
    this.server = net.createServer({ noDelay: true }, (socket) => this.onSocket(socket));
  }

  /** A handshake is done: the connection it belongs to reads and writes through it from now on. */
  private onSecured(socket: tls.TLSSocket): void {
    const connection = this.connections.get(`${plainAddress(socket.remoteAddress)}|${socket.remotePort ?? 0}`);
    if (connection) connection.secured(socket);
    else socket.destroy();
  }

  get transport(): StreamTransport {
    return this.options.transport;
  }

  get localAddress(): string {
    return this.options.address;
  }

  get localPort(): number {
    return this.boundPort;
  }

  get connectionCount(): number {
    return this.connections.size;
  }

  start(): Promise<void> {
    return new Promise((resolve, reject) => {
      const onError = (err: Error): void => reject(err);
      this.server.once('error', onError);
      this.server.listen({ host: this.options.address, port: this.options.port, exclusive: !this.options.shared }, () => {
        this.server.off('error', onError);
        this.server.on('error', (err) => this.hooks.onError(err));
        const address = this.server.address();
        this.boundPort = typeof address === 'object' && address !== null ? address.port : 0;
        resolve();
      });
    });
  }

  private onSocket(socket: net.Socket): void {
    const transport = this.options.transport;
    const max = this.options.maxConnections;
    socket.on('error', () => undefined);
    if (this.closing || (max > 0 && this.counters.openTotal >= max)) {
      this.counters.refused[transport][this.closing ? 'shutdown' : 'max_connections']++;
      socket.destroy();
      return;
    }
    // Reset between accept and now: nothing to serve.
    if (socket.remoteAddress === undefined) {
      socket.destroy();
      return;
    }
    // One source may not take the whole cap (TCP and TLS together): one host with 100
    // connections filled a cap of 100. Checked at accept, before a TLS handshake costs anything.
    const source = StreamCounters.sourceKey(plainAddress(socket.remoteAddress));
    const perSource = this.options.maxConnectionsPerSource ?? 0;
    if (perSource > 0 && this.counters.openFrom(source) >= perSource) {
      this.counters.refused[transport].per_source++;
      socket.destroy();
      return;
    }
    this.counters.accepted[transport]++;
    this.counters.open[transport]++;
    const connection = new StreamConnection(transport, socket, this.options, this.counters, this.hooks, (c) => {
      if (this.connections.get(c.remoteKey) === c) this.connections.delete(c.remoteKey);
    });
    // Under the key its close will release (the same as `source`; 'close' comes later, never here).
    this.counters.sourceOpened(connection.sourceKey);
    this.connections.set(connection.remoteKey, connection);
    connection.attach(this.hooks.onConnection(connection));
    this.tls?.handshake(socket);
  }

  /** Stops accepting and closes every connection. */
  close(): Promise<void> {
    this.closing = true;
    const stopped = new Promise<void>((resolve) => this.server.close(() => resolve()));
    const open = [...this.connections.values()];
    for (const connection of open) connection.close('shutdown');
    return Promise.all([stopped, ...open.map((c) => c.closed)]).then(() => undefined);
  }
}

// TCP and TLS client listeners (RFC 8656 §3.1: TURN over TCP on the same port
// number as UDP, TURN over TLS on its own, 5349 by default). Every connection is
// its own ClientPath: the engine ties the connection's allocation to it, and the
// allocation goes when the connection does.

import net from 'node:net';
import tls from 'node:tls';
import { decodeMessage } from '../stun/message.js';
import type { ClientPath } from '../turn/ports.js';
import { type ConnectionCloseReason, StreamCounters, type StreamTransport } from './counters.js';
import { DEFAULT_MAX_FRAME_BYTES, StreamFramer } from './stream.js';

/** Above this many bytes queued for a client that does not read, drop what the relay sends it. */
export const DEFAULT_MAX_WRITE_QUEUE_BYTES = 1024 * 1024;
/** Dead clients with a live allocation are found by keepalive probes. */
const KEEPALIVE_DELAY_MS = 30_000;
const EMPTY = Buffer.alloc(0);

export interface StreamListenerOptions {
  readonly transport: StreamTransport;
  readonly address: string;
  /** 0: an ephemeral port. */
  readonly port: number;
  /** PEM certificate chain and private key, for transport 'tls'. */
  readonly tls?: { readonly cert: Buffer; readonly key: Buffer };
  /** Closes a connection that has not sent a valid STUN message this long after accept (TLS handshake included). */
  readonly idleTimeoutMs: number;
  /**
   * After its first valid STUN message, a connection is checked this often and closed
   * when it holds no allocation (never allocated, or deleted by Refresh 0 or expiry). 0: never.
   */
  readonly unallocatedTimeoutMs: number;
  /** Open connections over every listener sharing `counters`; beyond it new ones are closed at once. 0: no cap. */
  readonly maxConnections: number;
  /**
   * Of those, open connections from one source (an IPv4 address, an IPv6 /64) over every
   * listener sharing `counters`; beyond it the source's new ones are closed at once. 0: no limit.
   */
  readonly maxConnectionsPerSource?: number;
  /** Longest frame, and so most unparsed bytes held per connection. */
  readonly maxFrameBytes?: number;
  readonly maxWriteQueueBytes?: number;
  /** In a node:cluster worker: let the primary hold the listening socket and share out connections. */
  readonly shared?: boolean;
}

/** What a connection's messages are handed to: the engine's side of one connection. */
export interface StreamSession {
  onMessage(message: Buffer): void;
  /** True while the connection holds an allocation (read by the unallocated-connection check). */
  hasAllocation(): boolean;
  onClose(): void;
}

export interface StreamListenerHooks {
  /** A connection was accepted: returns where its messages go. */
  onConnection(connection: StreamConnection): StreamSession;
  /** A message was dropped because the client's write queue is over the cap. */
  onSendDrop(): void;
  onError(err: Error): void;
}

/** "::ffff:192.0.2.1" (an IPv4 client on a dual-stack socket) -> "192.0.2.1". */
function plainAddress(address: string | undefined): string {
  if (address === undefined) return '';
  return address.startsWith('::ffff:') && address.includes('.') ? address.slice(7) : address;
}

/**
 * One client connection. `sendMessage`/`sendFramed` ignore port and address: the
 * connection is the destination. For TLS, messages flow once the handshake is done.
 */
export class StreamConnection implements ClientPath {
  readonly localAddress: string;
  readonly localPort: number;
  readonly remoteAddress: string;
  readonly remotePort: number;
  /** What the per-source limit counts this connection under (StreamCounters.sourceKey). */
  readonly sourceKey: string;
  private readonly framer: StreamFramer;
  private readonly maxWriteQueueBytes: number;
  /** The socket messages are read from and written to: the TCP socket, or the TLS socket over it. */
  private socket: net.Socket | undefined;
  private session: StreamSession | undefined;
  private idleTimer: NodeJS.Timeout | undefined;
  /** From the first valid STUN message on: closes the connection once a check finds it holding no allocation. */
  private allocationCheck: NodeJS.Timeout | undefined;
  private readonly unallocatedTimeoutMs: number;
  private closeReason: ConnectionCloseReason | undefined;
  private finished = false;
  /** TLS only: messages waiting for the write in flight to finish (see write()). */
  private readonly waiting: Buffer[] = [];
  private waitingHead = 0;
  private waitingBytes = 0;
  private writing = false;
  private resolveClosed!: () => void;
  /** Resolves once the connection has closed and its session has been told. */
  readonly closed = new Promise<void>((resolve) => {
    this.resolveClosed = resolve;
  });

  constructor(
    readonly transport: StreamTransport,
    private readonly raw: net.Socket,
    options: StreamListenerOptions,
    private readonly counters: StreamCounters,
    private readonly hooks: StreamListenerHooks,
    private readonly onFinished: (connection: StreamConnection) => void,
  ) {
    this.localAddress = plainAddress(raw.localAddress);
    this.localPort = raw.localPort ?? 0;
    this.remoteAddress = plainAddress(raw.remoteAddress);
    this.remotePort = raw.remotePort ?? 0;
    this.sourceKey = StreamCounters.sourceKey(this.remoteAddress);
    this.framer = new StreamFramer(options.maxFrameBytes ?? DEFAULT_MAX_FRAME_BYTES);
    this.maxWriteQueueBytes = options.maxWriteQueueBytes ?? DEFAULT_MAX_WRITE_QUEUE_BYTES;
    this.unallocatedTimeoutMs = options.unallocatedTimeoutMs;
    raw.setNoDelay(true);
    raw.setKeepAlive(true, KEEPALIVE_DELAY_MS);
    this.idleTimer = setTimeout(() => this.close('idle_timeout'), options.idleTimeoutMs);
    this.idleTimer.unref();
    raw.on('error', () => {
      this.closeReason ??= this.socket ? 'error' : 'tls_handshake';
    });
    raw.on('close', () => this.finish());
    if (transport === 'tcp') this.use(raw);
  }

  /** The key a TLS socket is matched to its connection by, once its handshake is done. */
  get remoteKey(): string {
    return `${this.remoteAddress}|${this.remotePort}`;
  }

  /** Starts the engine session; separate from the constructor so the counters see an open connection first. */
  attach(session: StreamSession): void {
    this.session = session;
  }

  /** The TLS handshake is done: read and write through the TLS socket from now on. */
  secured(socket: tls.TLSSocket): void {
    if (this.closeReason !== undefined) {
      socket.destroy();
      return;
    }
    this.use(socket);
  }

  private use(socket: net.Socket): void {
    this.socket = socket;
    socket.on('data', (chunk: Buffer) => this.onData(chunk));
    if (socket !== this.raw) {
      socket.on('error', () => {
        this.closeReason ??= 'error';
      });
      socket.on('close', () => {
        this.raw.destroy();
        this.finish();
      });
    }
  }

  private onData(chunk: Buffer): void {
    if (this.closeReason !== undefined) return;
    const error = this.framer.push(chunk, (message) => {
      if (this.closeReason !== undefined) return;
      if (this.idleTimer !== undefined && message[0]! < 0x40 && decodeMessage(message).ok) {
        // The first valid STUN message: this is a STUN client, the idle deadline is off.
        // From now on it must hold an allocation to keep the connection (coturn's allocation
        // watchdog does the same), or a client could keep a connection slot with one Binding.
        clearTimeout(this.idleTimer);
        this.idleTimer = undefined;
        if (this.unallocatedTimeoutMs > 0) {
          this.allocationCheck = setInterval(this.checkAllocation, this.unallocatedTimeoutMs);
          this.allocationCheck.unref();
        }
      }
      this.session?.onMessage(message);
    });
    if (error !== undefined) {
      this.counters.framingErrors[this.transport][error]++;
      this.close('framing_error');
    }
  }

  private readonly checkAllocation = (): void => {
    if (this.session !== undefined && !this.session.hasAllocation()) this.close('no_allocation');
  };

  /** Bytes waiting to be written to the client (the socket's queue, and for TLS the messages behind it). */
  get queuedBytes(): number {
    return (this.socket?.writableLength ?? 0) + this.waitingBytes;
  }

  private writableSocket(): net.Socket | undefined {
    const socket = this.socket;
    if (socket === undefined || this.closeReason !== undefined || socket.destroyed) return undefined;
    if (socket.writableLength + this.waitingBytes > this.maxWriteQueueBytes) {
      this.hooks.onSendDrop();
      return undefined;
    }
    return socket;
  }

  /**
   * TCP: a plain write (queued writes may leave in one segment; any stream reader copes).
   * TLS: one message per TLS record, one write in flight. Node merges queued writes into
   * one record, and some clients (coturn's turnutils_uclient, whose TLS path takes one
   * message per SSL_read) lose every message after the first in a record.
   */
  private write(socket: net.Socket, message: Buffer): void {
    if (this.transport === 'tcp') {
      socket.write(message);
    } else if (this.writing) {
      this.waiting.push(message);
      this.waitingBytes += message.length;
    } else {
      this.writing = true;
      socket.write(message, this.onWritten);
    }
  }

  private readonly onWritten = (): void => {
    const socket = this.socket;
    const next = this.waiting[this.waitingHead];
    if (next === undefined || socket === undefined || socket.destroyed) {
      this.writing = false;
      return;
    }
    this.waiting[this.waitingHead++] = EMPTY;
    this.waitingBytes -= next.length;
    if (this.waitingHead === this.waiting.length) {
      this.waiting.length = 0;
      this.waitingHead = 0;
    } else if (this.waitingHead >= 1024) {
      this.waiting.splice(0, this.waitingHead);
      this.waitingHead = 0;
    }
    socket.write(next, this.onWritten);
  };

  sendMessage(message: Buffer): void {
    const socket = this.writableSocket();
    if (socket) this.write(socket, message);
  }

  sendFramed(head: Buffer, headLength: number, payload: Buffer, offset: number, length: number, padTo4: boolean): void {
    const socket = this.writableSocket();
    if (!socket) return;
    const pad = padTo4 ? (4 - (length & 3)) & 3 : 0;
    // One buffer, one write: the engine reuses `head`, and nothing may come between a head and its payload.
    const out = Buffer.allocUnsafe(headLength + length + pad);
    head.copy(out, 0, 0, headLength);
    payload.copy(out, headLength, offset, offset + length);
    if (pad) out.fill(0, headLength + length);
    this.write(socket, out);
  }

  /** Closes the connection at once (queued output to a client being dropped is not worth waiting for). */
  close(reason: ConnectionCloseReason): void {
    this.closeReason ??= reason;
    if (this.socket && this.socket !== this.raw) this.socket.destroy();
    this.raw.destroy();
  }

  private finish(): void {
    if (this.finished) return;
    this.finished = true;
    if (this.idleTimer !== undefined) clearTimeout(this.idleTimer);
    this.idleTimer = undefined;
    if (this.allocationCheck !== undefined) clearInterval(this.allocationCheck);
    this.allocationCheck = undefined;
    const reason = this.closeReason ?? (this.socket ? 'client' : 'tls_handshake');
    this.closeReason = reason;
    this.counters.open[this.transport]--;
    this.counters.sourceClosed(this.sourceKey);
    this.counters.closed[this.transport][reason]++;
    this.onFinished(this);
    this.session?.onClose();
    this.resolveClosed();
  }
}

/** Accepts TCP (or TLS over TCP) connections on one address. */
export class StreamClientListener {
  private readonly server: net.Server;
  /**
   * For TLS: a tls.Server that never listens; accepted sockets are handed to it
   * (its documented 'connection' injection), so the connection cap and the idle
   * deadline apply before a handshake costs anything.
   */
  private readonly tlsServer: tls.Server | undefined;
  private readonly connections = new Map<string, StreamConnection>();
  private boundPort = 0;
  private closing = false;

  constructor(private readonly options: StreamListenerOptions, private readonly counters: StreamCounters, private readonly hooks: StreamListenerHooks) {
    if (options.transport === 'tls') {
      if (!options.tls) throw new Error('a TLS listener needs a certificate and a key');
      this.tlsServer = tls.createServer({ cert: options.tls.cert, key: options.tls.key, handshakeTimeout: options.idleTimeoutMs + 1000 });
      this.tlsServer.on('secureConnection', (socket: tls.TLSSocket) => {
        const connection = this.connections.get(`${plainAddress(socket.remoteAddress)}|${socket.remotePort ?? 0}`);
        if (connection) connection.secured(socket);
        else socket.destroy();
      });
      // A failed handshake destroys the socket; the connection counts it when it closes.
      this.tlsServer.on('tlsClientError', () => undefined);
    }
    this.server = net.createServer({ noDelay: true }, (socket) => this.onSocket(socket));
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
    this.tlsServer?.emit('connection', socket);
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

// One TCP or TLS client connection (RFC 8656 §3.1, RFC 6062 framing): the engine's
// ClientPath for that client. The engine ties the connection's allocation to it, and the
// allocation goes when the connection does.

import type net from 'node:net';
import type tls from 'node:tls';
import { decodeMessage } from '../../stun/message.js';
import type { ClientPath } from '../../turn/ports.js';
import { type ConnectionCloseReason, StreamCounters, type StreamTransport } from '../counters.js';
import { framedLength, writeFramed } from '../framed.js';
import { DEFAULT_MAX_FRAME_BYTES, StreamFramer } from './framer.js';

/** Above this many bytes queued for a client that does not read, drop what the relay sends it. */
export const DEFAULT_MAX_WRITE_QUEUE_BYTES = 1024 * 1024;
/** Dead clients with a live allocation are found by keepalive probes. */
const KEEPALIVE_DELAY_MS = 30_000;
const EMPTY = Buffer.alloc(0);

/** What one connection is held to (a listener's options carry them). */
export interface StreamConnectionOptions {
  /** Closes a connection that has not sent a valid STUN message this long after accept (TLS handshake included). */
  readonly idleTimeoutMs: number;
  /**
   * After its first valid STUN message, a connection is checked this often and closed
   * when it holds no allocation (never allocated, or deleted by Refresh 0 or expiry). 0: never.
   */
  readonly unallocatedTimeoutMs: number;
  /** Longest frame, and so most unparsed bytes held per connection. */
  readonly maxFrameBytes?: number;
  readonly maxWriteQueueBytes?: number;
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

/** A connection given over to raw bytes (detach()): its socket, and how to close it. */
export interface DetachedStream {
  readonly socket: net.Socket;
  /** Closes the connection, counted as `peer_closed`. */
  close(): void;
}

/** "::ffff:192.0.2.1" (an IPv4 client on a dual-stack socket) -> "192.0.2.1". */
export function plainAddress(address: string | undefined): string {
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
  /** Once detached (RFC 6062 client data connection): where every byte read goes, unframed. */
  private rawSink: ((chunk: Buffer) => void) | undefined;
  private resolveClosed!: () => void;
  /** Resolves once the connection has closed and its session has been told. */
  readonly closed = new Promise<void>((resolve) => {
    this.resolveClosed = resolve;
  });

  constructor(
    readonly transport: StreamTransport,
    private readonly raw: net.Socket,
    options: StreamConnectionOptions,
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
    if (this.rawSink !== undefined) return this.rawSink(chunk);
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
    // Detached by the message just handled: what followed it in the chunk is raw already.
    // (A handler may have set rawSink: TypeScript's narrowing above does not know.)
    const sink = this.rawSink as ((chunk: Buffer) => void) | undefined;
    if (sink !== undefined) {
      const rest = this.framer.takeRest();
      if (rest.length > 0) sink(rest);
      return;
    }
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
    // One buffer, one write: the engine reuses `head`, and nothing may come between a head and its payload.
    const out = Buffer.allocUnsafe(framedLength(headLength, length, padTo4));
    writeFramed(out, head, headLength, payload, offset, length, padTo4);
    this.write(socket, out);
  }

  /**
   * RFC 6062 §5.4: the connection becomes a client data connection. From now on nothing is
   * framed: every byte read goes to `onData` (those after the ConnectionBind in the chunk
   * being read, too), and the caller writes to the socket. Messages already queued are
   * written first. Undefined when the connection is closing or was detached before.
   */
  detach(onData: (chunk: Buffer) => void): DetachedStream | undefined {
    const socket = this.socket;
    if (socket === undefined || this.closeReason !== undefined || socket.destroyed || this.rawSink !== undefined) return undefined;
    this.rawSink = onData;
    this.framer.stop();
    if (this.idleTimer !== undefined) clearTimeout(this.idleTimer);
    this.idleTimer = undefined;
    if (this.allocationCheck !== undefined) clearInterval(this.allocationCheck);
    this.allocationCheck = undefined;
    // TLS: the messages behind the write in flight go now, in order, before any raw byte.
    for (let i = this.waitingHead; i < this.waiting.length; i++) socket.write(this.waiting[i]!);
    this.waiting.length = 0;
    this.waitingHead = 0;
    this.waitingBytes = 0;
    return { socket, close: () => this.close('peer_closed') };
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

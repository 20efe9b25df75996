// Plain numbers the TCP/TLS listeners bump (no labels or hashing per packet);
// ops/metrics turns them into Prometheus metrics at scrape time.

import { sourceBucketKey } from '../turn/auth/rate-limit.js';
import { FRAMING_ERRORS, type FramingError } from './stream/framer.js';

/**
 * Default share of one source (an IPv4 address, an IPv6 /64) in the open TCP+TLS
 * connections: without one, a single host filled the whole --max-tcp-connections cap
 * and every other client was turned away. 64 leaves room for a NAT with a few dozen
 * TURN-over-TCP/TLS users; the cap's default 10,000 then needs 157 sources to fill.
 */
export const DEFAULT_MAX_CONNECTIONS_PER_SOURCE = 64;

export const STREAM_TRANSPORTS = ['tcp', 'tls'] as const;
export type StreamTransport = (typeof STREAM_TRANSPORTS)[number];

/**
 * Why a connection ended: `client` (closed or reset by the client), `idle_timeout`
 * (no valid STUN message in time), `no_allocation` (held no allocation at a
 * --tcp-unallocated-timeout check), `framing_error`, `tls_handshake` (failed before
 * it completed), `error` (a socket error after the handshake), `shutdown`, `peer_closed`
 * (an RFC 6062 client data connection whose peer data connection ended).
 */
export const CONNECTION_CLOSE_REASONS = [
  'client',
  'idle_timeout',
  'no_allocation',
  'framing_error',
  'tls_handshake',
  'error',
  'shutdown',
  'peer_closed',
] as const;
export type ConnectionCloseReason = (typeof CONNECTION_CLOSE_REASONS)[number];

/**
 * Why a connection was closed right at accept: `max_connections` (--max-tcp-connections
 * open already), `per_source` (its source had --max-tcp-connections-per-ip open already),
 * `shutdown` (the listener was closing).
 */
export const CONNECTION_REFUSAL_REASONS = ['max_connections', 'per_source', 'shutdown'] as const;
export type ConnectionRefusalReason = (typeof CONNECTION_REFUSAL_REASONS)[number];

function perTransport<T>(make: () => T): Record<StreamTransport, T> {
  return { tcp: make(), tls: make() };
}

function zeros<K extends string>(keys: readonly K[]): Record<K, number> {
  return Object.fromEntries(keys.map((k) => [k, 0])) as Record<K, number>;
}

export class StreamCounters {
  /** Connections open now (TLS ones from accept, handshake included). */
  readonly open = perTransport(() => 0);
  readonly accepted = perTransport(() => 0);
  /** Connections closed at accept, by why (see CONNECTION_REFUSAL_REASONS). */
  readonly refused = perTransport(() => zeros(CONNECTION_REFUSAL_REASONS));
  readonly closed = perTransport(() => zeros(CONNECTION_CLOSE_REASONS));
  readonly framingErrors = perTransport(() => zeros<FramingError>(FRAMING_ERRORS));

  /**
   * Open connections per source (sourceBucketKey: an IPv4 address, an IPv6 /64) over
   * every stream listener sharing these counters; a source leaves the map with its last
   * connection, so the map holds at most one entry per open connection.
   */
  private readonly bySource = new Map<string, number>();

  /** Open connections over every stream listener: what --max-tcp-connections caps. */
  get openTotal(): number {
    return this.open.tcp + this.open.tls;
  }

  /** Open connections from the source `key` (see sourceKey). */
  openFrom(key: string): number {
    return this.bySource.get(key) ?? 0;
  }

  /** Sources with at least one open connection. */
  get sourceCount(): number {
    return this.bySource.size;
  }

  /** The key a connection from `address` is counted under: an IPv6 source by its /64, as one subscriber's prefix. */
  static sourceKey(address: string): string {
    return sourceBucketKey(address);
  }

  sourceOpened(key: string): void {
    this.bySource.set(key, (this.bySource.get(key) ?? 0) + 1);
  }

  sourceClosed(key: string): void {
    const n = (this.bySource.get(key) ?? 0) - 1;
    if (n > 0) this.bySource.set(key, n);
    else this.bySource.delete(key);
  }
}

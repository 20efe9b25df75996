// Plain numbers the TCP/TLS listeners bump (no labels or hashing per packet);
// ops/metrics turns them into Prometheus metrics at scrape time.

import { FRAMING_ERRORS, type FramingError } from './stream.js';

export const STREAM_TRANSPORTS = ['tcp', 'tls'] as const;
export type StreamTransport = (typeof STREAM_TRANSPORTS)[number];

/**
 * Why a connection ended: `client` (closed or reset by the client), `idle_timeout`
 * (no valid STUN message in time), `no_allocation` (held no allocation at a
 * --tcp-unallocated-timeout check), `framing_error`, `tls_handshake` (failed before
 * it completed), `error` (a socket error after the handshake), `shutdown`.
 */
export const CONNECTION_CLOSE_REASONS = ['client', 'idle_timeout', 'no_allocation', 'framing_error', 'tls_handshake', 'error', 'shutdown'] as const;
export type ConnectionCloseReason = (typeof CONNECTION_CLOSE_REASONS)[number];

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
  /** Connections closed at once because --max-tcp-connections were already open. */
  readonly refused = perTransport(() => 0);
  readonly closed = perTransport(() => zeros(CONNECTION_CLOSE_REASONS));
  readonly framingErrors = perTransport(() => zeros<FramingError>(FRAMING_ERRORS));

  /** Open connections over every stream listener: what --max-tcp-connections caps. */
  get openTotal(): number {
    return this.open.tcp + this.open.tls;
  }
}

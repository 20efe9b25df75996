// The messages between the primary and its workers (node:cluster IPC, 'advanced'
// serialization so that Buffers pass as bytes). Only first packets of a client,
// stateless answers and control cross it; relayed traffic never does.

import type { MetricObjectWithValues, MetricValue } from 'prom-client';

/**
 * A datagram between a client and the primary's listening socket `listener` (an index into
 * --listening-ip). Flat on purpose: one of these crosses IPC per handed-over packet.
 */
interface Datagram {
  readonly listener: number;
  readonly address: string;
  readonly port: number;
  readonly data: Uint8Array;
}

/** Primary -> worker. */
export type ToWorker =
  /** Sent once, first: what the worker needs that only the primary knows. */
  | { readonly type: 'init'; readonly index: number; readonly count: number; readonly listeningPort: number; readonly nonceSecret: string }
  /** A datagram from client address:port that reached the primary's listening socket. */
  | ({ readonly type: 'packet' } & Datagram)
  | { readonly type: 'drain' }
  | { readonly type: 'undrain' }
  | { readonly type: 'stop' }
  | { readonly type: 'metrics'; readonly id: number };

export interface WorkerState {
  readonly ready: boolean;
  /** Why not ready (store down, quota full...), when not. */
  readonly reason?: string;
  readonly draining: boolean;
  readonly allocations: number;
  /** Open UDP sessions (connected sockets), for the balance across workers. */
  readonly sessions: number;
}

/** Worker -> primary. */
export type FromWorker =
  /** Listening for 'init' (a message sent before the worker's code has run is lost). */
  | { readonly type: 'hello' }
  /** Serving; `state` follows once a second, after a drain or undrain, and before a metrics answer if it changed. */
  | { readonly type: 'started' }
  | { readonly type: 'state'; readonly state: WorkerState }
  /** Send `data` to address:port from the listening socket: an answer to a client that has no session. */
  | ({ readonly type: 'send' } & Datagram)
  /** A datagram from another client that reached a session socket before connect(): dispatch it again. */
  | ({ readonly type: 'stray' } & Datagram)
  | { readonly type: 'metrics'; readonly id: number; readonly metrics: MetricObjectWithValues<MetricValue<string>>[] };

/** Bytes that crossed IPC: a Buffer view without a copy. */
export function asBuffer(bytes: Uint8Array): Buffer {
  return Buffer.isBuffer(bytes) ? bytes : Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength);
}

/**
 * Which worker a client belongs to: FNV-1a over its address and port. The primary alone
 * computes it, for every packet it sees, so a client's packets all go to one worker
 * until that worker's session socket takes them straight from the kernel.
 */
export function workerFor(address: string, port: number, count: number): number {
  let h = 0x811c9dc5;
  for (let i = 0; i < address.length; i++) h = Math.imul(h ^ address.charCodeAt(i), 0x01000193);
  h = Math.imul(h ^ (port & 0xff), 0x01000193);
  h = Math.imul(h ^ (port >>> 8), 0x01000193);
  // FNV-1a's low bits are weak (bit 0 is the parity of the input bytes' bit 0s): without
  // this finalizer (murmur3's fmix32), the even ports of one 256-port block, as a
  // parity-preserving NAT hands out, all went to worker 0 of 2.
  h ^= h >>> 16;
  h = Math.imul(h, 0x85ebca6b);
  h ^= h >>> 13;
  h = Math.imul(h, 0xc2b2ae35);
  h ^= h >>> 16;
  return (h >>> 0) % count;
}

/** The worker's slice of [minPort, maxPort]: as even as the range allows, disjoint, covering it. */
export function portSlice(minPort: number, maxPort: number, index: number, count: number): { readonly minPort: number; readonly maxPort: number } {
  const size = maxPort - minPort + 1;
  const start = minPort + Math.floor((size * index) / count);
  const end = minPort + Math.floor((size * (index + 1)) / count) - 1;
  return { minPort: start, maxPort: end };
}

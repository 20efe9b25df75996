// Relay port choice (RFC 8656 §7.2): a random free port on one of a family's relay
// addresses, EVEN-PORT, and the R-bit reservation of the next port under a
// RESERVATION-TOKEN. Knows sockets only through RelaySocketFactory and the store only
// through its two reservation calls.

import { randomBytes, randomInt } from 'node:crypto';

import type { AllocationStore } from '../store/types.js';
import type { Clock } from './clock.js';
import type { RelaySocket, RelaySocketFactory } from './io.js';

/** How long an EVEN-PORT R-bit reservation holds the next port (RFC 8656 §7.2 suggests ~30 s). */
export const RESERVATION_LIFETIME_MS = 30_000;
/** Random relay ports tried before walking the whole range. */
const RANDOM_PORT_ATTEMPTS = 32;

type OnPacket = (payload: Buffer, address: string, port: number) => void;

export interface RelayPortOptions {
  readonly relays: RelaySocketFactory;
  readonly store: Pick<AllocationStore, 'reservePort' | 'takeReservation'>;
  readonly clock: Clock;
  /** The relay address per family. */
  readonly relayAddressIPv4?: string;
  readonly relayAddressIPv6?: string;
  /**
   * Further relay addresses of each family. Each adds a port range of capacity (in
   * anycast relay mode the range is shared by the whole cluster, so this is how the
   * cluster grows past one range); allocations are spread over all of them.
   */
  readonly relayPoolIPv4?: readonly string[];
  readonly relayPoolIPv6?: readonly string[];
  readonly minPort: number;
  readonly maxPort: number;
}

interface HeldReservation {
  readonly socket: RelaySocket;
  readonly expiresAtMs: number;
}

export class RelayPorts {
  /** token (hex) -> the placeholder socket holding the reserved port. */
  private readonly reservations = new Map<string, HeldReservation>();

  constructor(private readonly o: RelayPortOptions) {}

  /** Binds a relay socket on one of the family's relay addresses, starting from a random one. */
  async bindInFamily(ipv6: boolean, even: boolean, reserveNext: boolean, onPacket: OnPacket): Promise<{ socket: RelaySocket; token?: Buffer } | undefined> {
    const first = ipv6 ? this.o.relayAddressIPv6 : this.o.relayAddressIPv4;
    if (first === undefined) return undefined;
    const addresses = [first, ...((ipv6 ? this.o.relayPoolIPv6 : this.o.relayPoolIPv4) ?? [])];
    const start = addresses.length > 1 ? randomInt(addresses.length) : 0;
    for (let i = 0; i < addresses.length; i++) {
      const bound = await this.bind(addresses[(start + i) % addresses.length]!, even, reserveNext, onPacket);
      if (bound) return bound;
    }
    return undefined;
  }

  /** Binds a relay socket on a random port (even when asked); with reserveNext also holds port+1 under a token. */
  private async bind(address: string, even: boolean, reserveNext: boolean, onPacket: OnPacket): Promise<{ socket: RelaySocket; token?: Buffer } | undefined> {
    for (const port of this.candidatePorts(even, reserveNext)) {
      const socket = await this.o.relays.bind(address, port, onPacket);
      if (!socket) continue;
      if (!reserveNext) return { socket };
      const next = await this.o.relays.bind(address, port + 1, () => undefined);
      if (!next) {
        socket.close();
        continue;
      }
      const token = randomBytes(8);
      const hex = token.toString('hex');
      let reserved = false;
      try {
        reserved = await this.o.store.reservePort(hex, { relayedAddress: address, relayedPort: port + 1 }, RESERVATION_LIFETIME_MS);
      } catch {
        reserved = false;
      }
      if (!reserved) {
        next.close();
        socket.close();
        continue;
      }
      this.reservations.set(hex, { socket: next, expiresAtMs: this.o.clock.now() + RESERVATION_LIFETIME_MS });
      return { socket, token };
    }
    return undefined;
  }

  /**
   * Relay ports to try: random ones first (RFC 8656 §7.2 and security: unpredictable
   * ports), then, if those were all taken, every port of the range from a random
   * start, so that a nearly full range still yields its last free ports.
   */
  private *candidatePorts(even: boolean, reserveNext: boolean): Generator<number> {
    const { minPort, maxPort } = this.o;
    const step = even ? 2 : 1;
    const first = even ? minPort + (minPort & 1) : minPort;
    const last = reserveNext ? maxPort - 1 : maxPort;
    if (last < first) return;
    const count = Math.floor((last - first) / step) + 1;
    for (let attempt = 0; attempt < RANDOM_PORT_ATTEMPTS; attempt++) yield first + randomInt(count) * step;
    const start = randomInt(count);
    for (let i = 0; i < count; i++) yield first + ((start + i) % count) * step;
  }

  /** RFC 8656 §7.2: a RESERVATION-TOKEN hands over the port reserved by an earlier EVEN-PORT R=1. */
  async redeem(token: Buffer, onPacket: OnPacket): Promise<RelaySocket | undefined> {
    const hex = token.toString('hex');
    const held = this.reservations.get(hex);
    let port;
    try {
      port = await this.o.store.takeReservation(hex);
    } catch {
      return undefined;
    }
    if (!held || !port) return undefined;
    this.reservations.delete(hex);
    // The placeholder socket only held the port; rebind it with the real handler.
    held.socket.close();
    return this.o.relays.bind(port.relayedAddress, port.relayedPort, onPacket);
  }

  /** Gives a reserved port back (its allocation failed, or the reservation ran out). */
  release(token: Buffer | string): void {
    const hex = typeof token === 'string' ? token : token.toString('hex');
    const held = this.reservations.get(hex);
    if (!held) return;
    this.reservations.delete(hex);
    held.socket.close();
    this.o.store.takeReservation(hex).catch(() => undefined);
  }

  /** Releases the reservations that ran out by `now`. */
  expire(now: number): void {
    for (const [hex, held] of this.reservations) if (held.expiresAtMs <= now) this.release(hex);
  }

  /** Releases every reservation (shutdown). */
  releaseAll(): void {
    for (const hex of [...this.reservations.keys()]) this.release(hex);
  }
}

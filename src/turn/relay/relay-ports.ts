// Relay port choice (RFC 8656 §7.2): a random free port on one of a family's relay
// addresses, EVEN-PORT, and the R-bit reservation of the next port under a
// RESERVATION-TOKEN. Knows sockets only through RelaySocketFactory and the store only
// through its two reservation calls.
//
// Every Allocate makes a bounded number of bind attempts: ports this process holds are
// skipped without a system call (the factory keeps track), a port another process holds
// costs one failed bind out of MAX_BIND_COLLISIONS, and once no socket can be had at all
// (out of descriptors) Allocates are refused without a bind until a probe says otherwise.

import { randomBytes, randomInt } from 'node:crypto';

import type { AllocationStore } from '../../store/types.js';
import type { Clock } from '../clock.js';
import type { BindResult } from '../counters.js';
import { type PeerPacketHandler, type RelayBound, type RelaySocket, type RelaySocketFactory, isBindFailure } from '../ports.js';

/** How long an EVEN-PORT R-bit reservation holds the next port (RFC 8656 §7.2 suggests ~30 s). */
export const RESERVATION_LIFETIME_MS = 30_000;
/**
 * Binds per Allocate that may fail because another process holds the port (or, in a
 * cluster, the store says another node does). This process's own ports are never tried,
 * so a collision means a port of the range is used by something else on the host: if
 * half the ports still free to us were, 16 tries would all miss with odds of 1 in 65,536,
 * and 16 failed binds cost well under a millisecond, where the walk of a full 64k range
 * cost seconds.
 */
export const MAX_BIND_COLLISIONS = 16;
/** Random draws among the range before looking for a port this process does not hold in order. */
const RANDOM_DRAWS = 64;

/** What one Allocate may still spend on collisions (shared by its families and store retries). */
export interface BindBudget {
  collisions: number;
}

export function newBindBudget(): BindBudget {
  return { collisions: MAX_BIND_COLLISIONS };
}

/**
 * Why no relay socket could be had: 'ports' (the range is full, or the collision budget
 * is spent) or 'unavailable' (no socket can be opened at all; `code` says why, e.g.
 * EMFILE, ENFILE, EADDRNOTAVAIL).
 */
export type RelayRefusal = { readonly refused: 'ports' } | { readonly refused: 'unavailable'; readonly code: string };

const PORTS_REFUSED: RelayRefusal = { refused: 'ports' };

/** A relay socket bound (with the RESERVATION-TOKEN of the port held next to it, EVEN-PORT R bit), or why not. */
export type Bound = { socket: RelaySocket; token?: Buffer } | RelayRefusal;

export function isRelayRefusal<T extends object>(r: T | RelayRefusal): r is RelayRefusal {
  return 'refused' in r;
}

type OnPacket = PeerPacketHandler;

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
  /**
   * 'anycast': the relay addresses are shared by every node of the cluster, so a
   * RESERVATION-TOKEN another node issued names a port this node can bind too.
   */
  readonly relayMode?: 'unicast' | 'anycast';
  /** Says when relay sockets become unavailable and available again (once each). */
  readonly logger?: { warn(obj: object, msg: string): void; info(obj: object, msg: string): void };
  /** Counts every bind attempt by result. */
  readonly counters?: { readonly relayBinds: Record<BindResult, number> };
}

/** `tried` with `port` added: the one port at first, a set from the second on (RelayPorts.bind). */
function withTried(tried: Set<number> | number | undefined, port: number): Set<number> | number {
  if (tried === undefined) return port;
  if (typeof tried === 'number') return new Set([tried, port]);
  tried.add(port);
  return tried;
}

/** Whether this Allocate tried `port` already: `tried` is none, the one port tried, or a set of them (RelayPorts.bind). */
function wasTried(tried: ReadonlySet<number> | number | undefined, port: number): boolean {
  return tried === undefined ? false : typeof tried === 'number' ? tried === port : tried.has(port);
}

interface HeldReservation {
  readonly socket: RelaySocket;
  readonly expiresAtMs: number;
}

export class RelayPorts {
  /** token (hex) -> the placeholder socket holding the reserved port. */
  private readonly reservations = new Map<string, HeldReservation>();
  /** Set when a bind failed other than EADDRINUSE; cleared when a probe binds again. */
  private unavailableCode: string | undefined;
  private unavailableAddress = '';
  private probing = false;
  /** address -> the factory's closedCount when no free port was found there (full until it grows). */
  private readonly fullAt = new Map<string, number>();

  constructor(private readonly o: RelayPortOptions) {}

  /** Undefined while relay sockets can be opened; else the error code (EMFILE, ENFILE...) of the last failed bind. */
  get unavailable(): string | undefined {
    return this.unavailableCode;
  }

  /**
   * Binds a relay socket on one of the family's relay addresses, starting from a random one.
   * With one relay address (the usual case) and binds that are done within the call
   * (RelaySocketFactory.bind), answered at once: no promise or async frame per Allocate
   * (docs/scaling.md, part 1); else a promise.
   */
  bindInFamily(ipv6: boolean, even: boolean, reserveNext: boolean, onPacket: OnPacket, budget: BindBudget = newBindBudget()): Bound | Promise<Bound> {
    const first = ipv6 ? this.o.relayAddressIPv6 : this.o.relayAddressIPv4;
    if (first === undefined) return PORTS_REFUSED;
    // Out of descriptors: every bind would fail the same way. Answer at once; expire() probes.
    if (this.unavailableCode !== undefined) return { refused: 'unavailable', code: this.unavailableCode };
    const pool = ipv6 ? this.o.relayPoolIPv6 : this.o.relayPoolIPv4;
    if (pool === undefined || pool.length === 0) return this.bind(first, even, reserveNext, onPacket, budget);
    return this.bindInPool([first, ...pool], even, reserveNext, onPacket, budget);
  }

  /** The same over several relay addresses: the next one when one has no port left. */
  private async bindInPool(addresses: readonly string[], even: boolean, reserveNext: boolean, onPacket: OnPacket, budget: BindBudget): Promise<Bound> {
    const start = randomInt(addresses.length);
    for (let i = 0; i < addresses.length; i++) {
      const bound = await this.bind(addresses[(start + i) % addresses.length]!, even, reserveNext, onPacket, budget);
      if (!isRelayRefusal(bound) || bound.refused === 'unavailable') return bound;
    }
    return PORTS_REFUSED;
  }

  /** One bind, counted; an 'unavailable' failure marks the node until a probe binds again. At once when the factory answers at once. */
  private attempt(address: string, port: number, onPacket: OnPacket): RelayBound | Promise<RelayBound> {
    const r = this.o.relays.bind(address, port, onPacket);
    return r instanceof Promise ? r.then((bound) => this.counted(address, port, bound)) : this.counted(address, port, r);
  }

  private counted(address: string, port: number, r: RelayBound): RelayBound {
    const binds = this.o.counters?.relayBinds;
    if (!isBindFailure(r)) {
      if (binds) binds.ok++;
      return r;
    }
    if (r.failed === 'in-use') {
      if (binds) binds.in_use++;
    } else {
      if (binds) binds[r.code === 'EMFILE' || r.code === 'ENFILE' ? 'no_descriptors' : 'error']++;
      if (this.unavailableCode === undefined) {
        this.unavailableCode = r.code;
        this.unavailableAddress = address;
        this.o.logger?.warn(
          { code: r.code, address, port },
          'relay sockets cannot be opened: new Allocates get 508 at once until a probe binds again (checked every second)',
        );
      }
    }
    return r;
  }

  /**
   * Binds a relay socket on a random port (even when asked); with reserveNext also holds
   * port+1 under a token (bindReserving). Without reserveNext, synchronous for as long as
   * the factory's binds are: the first bind that answers a promise goes on in bindAfter.
   */
  private bind(address: string, even: boolean, reserveNext: boolean, onPacket: OnPacket, budget: BindBudget): Bound | Promise<Bound> {
    if (reserveNext) return this.bindReserving(address, even, onPacket, budget);
    // The ports this Allocate tried: a set only from the second try on (the first bind almost always works).
    let tried: Set<number> | number | undefined;
    while (budget.collisions > 0) {
      const port = this.pickPort(address, even, false, tried);
      if (port === undefined) return PORTS_REFUSED;
      tried = withTried(tried, port);
      const socket = this.attempt(address, port, onPacket);
      if (socket instanceof Promise) return this.bindAfter(socket, address, even, onPacket, budget, tried);
      if (!isBindFailure(socket)) return { socket };
      if (socket.failed === 'unavailable') return { refused: 'unavailable', code: socket.code };
      budget.collisions--;
    }
    return PORTS_REFUSED;
  }

  /** bind() once a bind answered a promise: the same loop, awaiting each bind. */
  private async bindAfter(
    pending: Promise<RelayBound>,
    address: string,
    even: boolean,
    onPacket: OnPacket,
    budget: BindBudget,
    tried: Set<number> | number,
  ): Promise<Bound> {
    let socket = await pending;
    for (;;) {
      if (!isBindFailure(socket)) return { socket };
      if (socket.failed === 'unavailable') return { refused: 'unavailable', code: socket.code };
      if (--budget.collisions <= 0) return PORTS_REFUSED;
      const port = this.pickPort(address, even, false, tried);
      if (port === undefined) return PORTS_REFUSED;
      tried = withTried(tried, port);
      socket = await this.attempt(address, port, onPacket);
    }
  }

  /** An EVEN-PORT with the R bit (RFC 8656 §7.2): a socket on a random even port, port+1 held by a placeholder under a token. */
  private async bindReserving(address: string, even: boolean, onPacket: OnPacket, budget: BindBudget): Promise<Bound> {
    let tried: Set<number> | number | undefined;
    while (budget.collisions > 0) {
      const port = this.pickPort(address, even, true, tried);
      if (port === undefined) return PORTS_REFUSED;
      tried = withTried(tried, port);
      const socket = await this.attempt(address, port, onPacket);
      if (isBindFailure(socket)) {
        if (socket.failed === 'unavailable') return { refused: 'unavailable', code: socket.code };
        budget.collisions--;
        continue;
      }
      const next = await this.attempt(address, port + 1, () => undefined);
      if (isBindFailure(next)) {
        socket.close();
        if (next.failed === 'unavailable') return { refused: 'unavailable', code: next.code };
        budget.collisions--;
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
        budget.collisions--;
        continue;
      }
      this.reservations.set(hex, { socket: next, expiresAtMs: this.o.clock.now() + RESERVATION_LIFETIME_MS });
      return { socket, token };
    }
    return PORTS_REFUSED;
  }

  /**
   * A port to try: random (RFC 8656 §7.2, and security: unpredictable ports) among those
   * this process does not hold and this Allocate has not tried; when random draws keep
   * landing on held ones (a nearly full range), the first such port from a random start,
   * so the last free ports are still found. Undefined when there is none. Memory only.
   */
  private pickPort(address: string, even: boolean, reserveNext: boolean, tried: ReadonlySet<number> | number | undefined): number | undefined {
    const { minPort, maxPort, relays } = this.o;
    const step = even ? 2 : 1;
    const first = even ? minPort + (minPort & 1) : minPort;
    const last = reserveNext ? maxPort - 1 : maxPort;
    if (last < first) return undefined;
    const held = (port: number): boolean => relays.holds(address, port) || (reserveNext && relays.holds(address, port + 1));
    const plain = !even && !reserveNext;
    // Found full before, and nothing of ours closed on this address since: still full.
    const closed = relays.closedCount(address);
    if (plain && this.fullAt.get(address) === closed) return undefined;
    const count = Math.floor((last - first) / step) + 1;
    for (let draw = 0; draw < RANDOM_DRAWS; draw++) {
      const port = first + randomInt(count) * step;
      if (!held(port) && !wasTried(tried, port)) return port;
    }
    const start = randomInt(count);
    let everyPortHeld = true;
    for (let i = 0; i < count; i++) {
      const port = first + ((start + i) % count) * step;
      if (held(port)) continue;
      if (!wasTried(tried, port)) return port;
      everyPortHeld = false;
    }
    // Every port is this process's own (not merely tried by this Allocate): remember until one closes.
    if (plain && everyPortHeld) this.fullAt.set(address, closed);
    return undefined;
  }

  /**
   * True when every relay address of the family has no port this process does not hold
   * (the range is full here); checked for /readyz, never per packet.
   */
  rangeFull(): boolean {
    const addresses = [this.o.relayAddressIPv4, ...(this.o.relayPoolIPv4 ?? []), this.o.relayAddressIPv6, ...(this.o.relayPoolIPv6 ?? [])].filter(
      (a): a is string => a !== undefined,
    );
    if (addresses.length === 0) return false;
    return addresses.every((address) => this.pickPort(address, false, false, undefined) === undefined);
  }

  /**
   * RFC 8656 §7.2: a RESERVATION-TOKEN hands over the port reserved by an earlier EVEN-PORT
   * R=1; undefined (508) when it cannot. The token is taken from the store, so it works once,
   * cluster-wide. A token this node did not issue:
   * - anycast relay mode: the cluster is one server with one relayed address, so the token is
   *   good here too (the node that issued it may have died, or the client's packets moved):
   *   the port is bound here. The issuer's placeholder goes once it takes on the allocation
   *   (releaseHeldAt) or its reservation runs out.
   * - forward (unicast) mode: the token names a port on the issuer's own relay address,
   *   which only the issuer can bind; RFC 8656 §7.2 makes a token valid at the server that
   *   issued it alone. 508, and the token is left in the store, so the same Allocate still
   *   succeeds where it was issued (docs/architecture.md §4).
   */
  async redeem(token: Buffer, onPacket: OnPacket): Promise<RelaySocket | undefined> {
    const hex = token.toString('hex');
    const held = this.reservations.get(hex);
    if (!held && this.o.relayMode !== 'anycast') return undefined;
    let port: Awaited<ReturnType<AllocationStore['takeReservation']>>;
    try {
      port = await this.o.store.takeReservation(hex);
    } catch {
      return undefined;
    }
    if (!port) return undefined;
    if (held) {
      this.reservations.delete(hex);
      // The placeholder socket only held the port; rebind it with the real handler.
      held.socket.close();
    } else if (!this.ownsAddress(port.relayedAddress)) {
      return undefined;
    }
    const socket = await this.attempt(port.relayedAddress, port.relayedPort, onPacket);
    return isBindFailure(socket) ? undefined : socket;
  }

  /** One of this node's relay addresses (a record from the store may name any address). */
  private ownsAddress(address: string): boolean {
    const o = this.o;
    return address === o.relayAddressIPv4 || address === o.relayAddressIPv6 || !!o.relayPoolIPv4?.includes(address) || !!o.relayPoolIPv6?.includes(address);
  }

  /**
   * Anycast relay mode: an allocation made elsewhere claims `address:port`, so a
   * reservation this node holds on it was redeemed on another node: its placeholder goes.
   */
  releaseHeldAt(address: string, port: number): void {
    for (const [hex, held] of this.reservations) {
      if (held.socket.port === port && held.socket.address === address) this.release(hex);
    }
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

  /** Releases the reservations that ran out by `now`; while relay sockets are unavailable, probes whether they are again. */
  expire(now: number): void {
    for (const [hex, held] of this.reservations) if (held.expiresAtMs <= now) this.release(hex);
    if (this.unavailableCode !== undefined && !this.probing) void this.probe();
  }

  /** A probe bind on the address that failed; clears the mark when it works (descriptors freed, address back). */
  private async probe(): Promise<void> {
    this.probing = true;
    try {
      if (await this.o.relays.available(this.unavailableAddress)) {
        this.o.logger?.info({ code: this.unavailableCode }, 'relay sockets can be opened again: taking new Allocates');
        this.unavailableCode = undefined;
      }
    } catch {
      // Still unavailable; the next tick tries again.
    } finally {
      this.probing = false;
    }
  }

  /** Releases every reservation (shutdown). */
  releaseAll(): void {
    for (const hex of [...this.reservations.keys()]) this.release(hex);
  }
}

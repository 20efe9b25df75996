// The relay allocator: everything between "this Allocate may go ahead" and "this
// allocation exists": which relayed transport address(es) it gets (RFC 8656 §7.2:
// RESERVATION-TOKEN, EVEN-PORT, REQUESTED- and ADDITIONAL-ADDRESS-FAMILY), the
// socket binds (RelayPorts: port choice and reservations), and the claim of the
// allocation in the store, retried on another port when the store says another
// node holds it (anycast relay mode shares the relayed addresses cluster-wide).
// With the store unreachable the allocation is made from this node's own state
// (fail open, docs/architecture.md §5): the store makes allocations resumable, it is
// never needed for one to exist.

import { AddressFamily, ErrorCode } from '../../stun/constants.js';
import type { AllocationLimits, AllocationStore, CreateOutcome } from '../../store/types.js';
import { Allocation, type AllocationSeed } from '../allocation/allocation.js';
import type { AllocateRefusalReason, EngineCounters } from '../counters.js';
import type { AllocateRequest } from '../methods/allocate-request.js';
import { type ClientPath, type PeerPacketHandler, type RelaySocket, type TcpRelayFactory, isBindFailure } from '../ports.js';
import { type BindBudget, type Bound, RelayPorts, type RelayPortOptions, type RelayRefusal, isRelayRefusal, newBindBudget } from './relay-ports.js';

/** Store claims per Allocate (each a port another node turned out to hold). */
const MAX_PORT_ATTEMPTS = 64;
/** A dual allocation's IPv6 port taken elsewhere this often: the Allocate goes on with IPv4 only (RFC 8656 §7.2). */
const MAX_ADDITIONAL_PORT_ATTEMPTS = 8;

export interface RelayAllocatorOptions extends RelayPortOptions {
  readonly nodeId: string;
  readonly store: AllocationStore;
  readonly userQuota: number;
  readonly counters: EngineCounters;
  /** RFC 6062 TCP relayed addresses, on the same addresses and port range; absent: no TCP allocations. */
  readonly tcpRelays?: TcpRelayFactory;
}

/** Why no allocation was made: a capacity refusal, an unknown RESERVATION-TOKEN, or the 5-tuple held in the store already. */
export type ClaimRefusal = AllocateRefusalReason | 'unknown_token' | 'five_tuple_taken';

export type Claim =
  | {
      readonly ok: true;
      /** Claimed in the store, not yet in the table. */
      readonly allocation: Allocation;
      /** RESERVATION-TOKEN for the port reserved next to it (EVEN-PORT R bit). */
      readonly reservedToken: Buffer | undefined;
      /** Why a dual allocation has no IPv6 half (ADDRESS-ERROR-CODE). */
      readonly additionalError: number | undefined;
    }
  | { readonly ok: false; readonly refused: ClaimRefusal };

/** One store claim's outcome: the claim's answer, or another try (a port clash), or no more tries. */
type ClaimStep = Claim | 'retry' | 'give-up';

/** The state of one Allocate's claim while it runs; every socket in it is closed unless the claim succeeds. */
interface Attempt {
  relay: RelaySocket | undefined;
  additional: RelaySocket | undefined;
  reservedToken: Buffer | undefined;
  additionalError: number | undefined;
  additionalClashes: number;
  /** Binds that may fail on ports held elsewhere, for this whole Allocate (both families, store retries). */
  readonly budget: BindBudget;
}

export class RelayAllocator {
  private readonly ports: RelayPorts;
  /** The same choice of ports for TCP relayed addresses (TCP and UDP port numbers are separate spaces). */
  private readonly tcpPorts: RelayPorts | undefined;

  constructor(
    private readonly o: RelayAllocatorOptions,
    /** Allocations of a user held on this node: the user quota while the store is unreachable. */
    private readonly localUserCount: (username: string) => number,
  ) {
    this.ports = new RelayPorts(o);
    this.tcpPorts = o.tcpRelays ? new RelayPorts({ ...o, relays: o.tcpRelays }) : undefined;
    this.families = { ipv4: o.relayAddressIPv4 !== undefined, ipv6: o.relayAddressIPv6 !== undefined };
    this.limits = { userQuota: o.userQuota };
  }

  /** The limits of every store claim: one object, not one per Allocate. */
  private readonly limits: AllocationLimits;

  /** Whether TCP allocations can be made (RFC 6062). */
  get relaysTcp(): boolean {
    return this.tcpPorts !== undefined;
  }

  /** The relay families this node has (fixed by its options): one object, not one per Allocate. */
  readonly families: { readonly ipv4: boolean; readonly ipv6: boolean };

  /**
   * Binds the relayed address(es) an Allocate asks for and claims the allocation in the
   * store. `request.additionalError` set means the IPv6 half is not even tried. The usual
   * Allocate (one UDP relayed address, no EVEN-PORT or token) whose bind and store claim
   * both answer at once (a node:dgram socket, the memory store) is answered at once too:
   * no promise or async frame for it (docs/scaling.md, part 1); anything else, and every
   * refusal, goes on in claimAfter, as it always did.
   */
  claim(seed: AllocationSeed, path: ClientPath, request: AllocateRequest, onPacket: PeerPacketHandler): Claim | Promise<Claim> {
    const a: Attempt = {
      relay: undefined,
      additional: undefined,
      reservedToken: undefined,
      additionalError: request.additionalError,
      additionalClashes: 0,
      budget: newBindBudget(),
    };
    if (request.wantsDual || request.token || request.evenPort !== undefined || request.tcp) return this.claimAfter(seed, path, request, onPacket, a);
    let bound: Bound | Promise<Bound>;
    try {
      bound = this.ports.bindInFamily(request.family === AddressFamily.IPv6, false, false, onPacket, a.budget);
    } catch (err) {
      return Promise.reject(err);
    }
    if (bound instanceof Promise || isRelayRefusal(bound)) return this.claimAfter(seed, path, request, onPacket, a, bound);
    a.relay = bound.socket;
    let done: ClaimStep | Promise<ClaimStep>;
    try {
      done = this.claimOnce(seed, path, request, a, bound.socket, onPacket);
    } catch (err) {
      a.relay.close();
      return Promise.reject(err);
    }
    if (done instanceof Promise || typeof done === 'string' || !done.ok) return this.claimAfter(seed, path, request, onPacket, a, undefined, done);
    return done;
  }

  /**
   * claim() from where it got to: `bound`, the first bind's answer (or its promise); `step`,
   * the first store claim's. Every socket not handed to an allocation is closed at the end.
   */
  private async claimAfter(
    seed: AllocationSeed,
    path: ClientPath,
    request: AllocateRequest,
    onPacket: PeerPacketHandler,
    a: Attempt,
    bound?: Bound | Promise<Bound>,
    step?: ClaimStep | Promise<ClaimStep>,
  ): Promise<Claim> {
    try {
      if (bound === undefined && step === undefined) {
        if (request.wantsDual && a.additionalError === undefined && this.o.relayAddressIPv6 !== undefined) {
          const extra = await this.ports.bindInFamily(true, false, false, onPacket, a.budget);
          if (isRelayRefusal(extra)) a.additionalError = ErrorCode.InsufficientCapacity;
          else a.additional = extra.socket;
        }
        if (request.token) {
          a.relay = await this.ports.redeem(request.token, onPacket);
          if (!a.relay) return { ok: false, refused: 'unknown_token' };
        }
      }
      let relayRefusal: RelayRefusal | undefined;
      for (let attempt = 0; attempt < MAX_PORT_ATTEMPTS; attempt++) {
        let done: ClaimStep;
        if (step !== undefined) {
          done = await step;
          step = undefined;
        } else {
          if (!a.relay) {
            // A TCP allocation (RFC 6062) has no EVEN-PORT, token or second family (allocate-request.ts).
            const ports = request.tcp && this.tcpPorts ? this.tcpPorts : this.ports;
            const got =
              bound ??
              ports.bindInFamily(
                request.family === AddressFamily.IPv6,
                request.evenPort !== undefined,
                request.evenPort?.reserveNext ?? false,
                onPacket,
                a.budget,
              );
            bound = undefined;
            const result = await got;
            if (isRelayRefusal(result)) {
              relayRefusal = result;
              break;
            }
            a.relay = result.socket;
            a.reservedToken = result.token;
          }
          done = await this.claimOnce(seed, path, request, a, a.relay, onPacket);
        }
        if (done === 'retry') continue;
        if (done === 'give-up') break;
        return done;
      }
      return { ok: false, refused: relayRefusal ? refusalReason(relayRefusal) : 'relay_ports_full' };
    } finally {
      // Anything still held here belongs to no allocation.
      a.relay?.close();
      a.additional?.close();
      if (a.reservedToken) this.ports.release(a.reservedToken);
    }
  }

  /**
   * One store claim with the sockets bound so far; 'retry' after a port clash, 'give-up' when
   * the budget is spent. At once when the store answers at once (the memory store).
   */
  private claimOnce(
    seed: AllocationSeed,
    path: ClientPath,
    request: AllocateRequest,
    a: Attempt,
    relay: RelaySocket,
    onPacket: PeerPacketHandler,
  ): ClaimStep | Promise<ClaimStep> {
    const candidate = new Allocation(seed, path, { relay, additional: a.additional }, true);
    if (!this.o.store.isAvailable()) return this.claimLocally(candidate, a);
    let outcome: CreateOutcome | Promise<CreateOutcome>;
    try {
      outcome = this.o.store.create(candidate.toRecord(this.o.nodeId), this.limits);
    } catch {
      // The store went away under this Allocate: fail open as well.
      return this.claimLocally(candidate, a);
    }
    if (outcome instanceof Promise) {
      return outcome.then(
        (answered) => this.afterCreate(candidate, request, a, relay, onPacket, answered),
        () => this.claimLocally(candidate, a),
      );
    }
    return this.afterCreate(candidate, request, a, relay, onPacket, outcome);
  }

  /** What the store's answer to a claim means for this Allocate. */
  private afterCreate(
    candidate: Allocation,
    request: AllocateRequest,
    a: Attempt,
    relay: RelaySocket,
    onPacket: PeerPacketHandler,
    outcome: CreateOutcome,
  ): ClaimStep | Promise<ClaimStep> {
    if (outcome.ok) {
      candidate.version = outcome.record.version;
      return this.claimed(candidate, a);
    }
    if (outcome.reason === 'port-taken' && outcome.additional === true) return this.rebindAdditional(a, onPacket);
    if (outcome.reason === 'port-taken' && !request.token) {
      // Another node holds it (anycast relay mode): a collision like EADDRINUSE.
      relay.close();
      a.relay = undefined;
      return --a.budget.collisions <= 0 ? 'give-up' : 'retry';
    }
    if (outcome.reason === 'user-quota') return { ok: false, refused: 'user_quota' };
    return { ok: false, refused: 'five_tuple_taken' };
  }

  /**
   * The IPv6 relayed port is held elsewhere (anycast relay mode: another node bound the
   * same shared address): take another one; none left is a 508 for that family only (RFC 8656 §7.2).
   */
  private async rebindAdditional(a: Attempt, onPacket: PeerPacketHandler): Promise<ClaimStep> {
    a.additional?.close();
    const extra = ++a.additionalClashes < MAX_ADDITIONAL_PORT_ATTEMPTS ? await this.ports.bindInFamily(true, false, false, onPacket, a.budget) : undefined;
    a.additional = extra === undefined || isRelayRefusal(extra) ? undefined : extra.socket;
    if (!a.additional) a.additionalError = ErrorCode.InsufficientCapacity;
    return 'retry';
  }

  /** The claim succeeded: the sockets and the reservation belong to the allocation now. */
  private claimed(allocation: Allocation, a: Attempt): Claim {
    const claim: Claim = { ok: true, allocation, reservedToken: a.reservedToken, additionalError: a.additionalError };
    a.relay = undefined;
    a.additional = undefined;
    a.reservedToken = undefined;
    return claim;
  }

  /**
   * Store unreachable: the allocation exists from this node's state alone (local-only: a
   * reroute cannot resume it until its record is written, WriteThrough after the store's
   * return). The user quota is counted over this node's allocations meanwhile; the
   * cluster-wide count is checked, and an overrun logged, when the record is written.
   */
  private claimLocally(allocation: Allocation, a: Attempt): Claim {
    if (this.o.userQuota > 0 && this.localUserCount(allocation.username) >= this.o.userQuota) return { ok: false, refused: 'user_quota' };
    allocation.localOnly = true;
    allocation.throughOutage = true;
    allocation.dirty = true;
    this.o.counters.allocationsLocalOnly++;
    return this.claimed(allocation, a);
  }

  /** Gives back what a claimed allocation holds when it cannot be used after all (shutdown, connection gone). */
  abandon(claim: Claim & { ok: true }): void {
    claim.allocation.closeRelays();
    if (claim.reservedToken) this.ports.release(claim.reservedToken);
  }

  /** A socket on a given relayed address (anycast relay mode: another node's allocation); undefined when it cannot be bound. */
  async bindAt(address: string, port: number, onPacket: PeerPacketHandler): Promise<RelaySocket | undefined> {
    // A placeholder of ours on this port: its token was redeemed on another node (RelayPorts.redeem).
    this.ports.releaseHeldAt(address, port);
    const bound = await this.o.relays.bind(address, port, onPacket);
    return isBindFailure(bound) ? undefined : bound;
  }

  /**
   * Why this node cannot take new allocations for want of its own resources, or
   * undefined: no relay socket can be opened (out of descriptors: EMFILE/ENFILE, or
   * another bind error), or, unicast relay mode, every relay port is in use here. In
   * anycast relay mode the range is the cluster's, full on every node at once: not this
   * node's capacity.
   */
  capacityProblem(anycastRelay: boolean): string | undefined {
    const code = this.ports.unavailable;
    if (code !== undefined) {
      return code === 'EMFILE' || code === 'ENFILE'
        ? `out of file descriptors (${code}): raise the open-file limit (ulimit -n / LimitNOFILE) or lower --total-quota`
        : `relay sockets cannot be bound (${code})`;
    }
    if (!anycastRelay && this.ports.rangeFull()) return 'every relay port is in use (--min-port to --max-port on each --relay-ip)';
    return undefined;
  }

  /** Releases reservations that ran out; probes whether relay sockets can be opened again. */
  expire(now: number): void {
    this.ports.expire(now);
    this.tcpPorts?.expire(now);
  }

  /** Releases every reservation (shutdown). */
  releaseAll(): void {
    this.ports.releaseAll();
  }
}

function refusalReason(refusal: RelayRefusal): AllocateRefusalReason {
  if (refusal.refused === 'ports') return 'relay_ports_full';
  return refusal.code === 'EMFILE' || refusal.code === 'ENFILE' ? 'no_descriptors' : 'bind_error';
}

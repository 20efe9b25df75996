// One allocation's live state on its owner node (RFC 8656 §3.2, §7): the relay
// socket, permissions and channel bindings, kept in maps shaped for the relay
// hot path. The store holds the same facts as a plain AllocationRecord.

import { parseIPv4 } from '../../net/ip.js';
import { isValidChannelNumber } from '../../stun/channel-data.js';
import type { AllocationRecord } from '../../store/types.js';
import type { BandwidthGate } from '../bandwidth.js';
import type { ClientPath, RelayFamily, RelaySocket } from '../ports.js';
import { ResponseSlabs, keptMessage, keptTransactionIs } from './kept-responses.js';
import { ChannelBinding, Permission } from './permission.js';
import { PeerPermissions } from './peer-permissions.js';

export { ChannelBinding, Permission } from './permission.js';
import type { EngineListener } from './table.js';
import type { TcpRelayState } from './tcp-connections.js';

/** RFC 8656 §9: a permission lasts 300 s. */
export const PERMISSION_LIFETIME_MS = 300_000;
/** RFC 8656 §12: a channel binding lasts 600 s. */
export const CHANNEL_LIFETIME_MS = 600_000;
/** RFC 8656 §12: after a binding expires, its number and peer stay reserved to each other for 5 more minutes. */
export const CHANNEL_QUARANTINE_MS = 300_000;

/** How long an allocation keeps its Allocate success response for retransmissions. */
export const ALLOCATE_RESPONSE_KEEP_MS = 40_000;

// Shared by every allocation until it needs its own (docs/scaling.md, "At scale": each
// empty array, set, promise or typed array kept per allocation is heap times 100,000).
// Never written to: an allocation replaces them before its first change.
const NO_BINDINGS: readonly ChannelBinding[] = Object.freeze([]);
/** The slabs every allocation of this process keeps its Allocate response in. */
const KEPT_RESPONSES = new ResponseSlabs();
/** What an allocation's `persisting` is while no write is in flight. */
export const NOTHING_PERSISTING: Promise<void> = Promise.resolve();

/**
 * What makes one allocation, besides its client path and relay sockets: the same fields
 * whether a local Allocate made it (methods/allocate.ts) or another node's record is
 * taken on (replication.ts). An AllocationRecord is one.
 */
export interface AllocationSeed {
  readonly key: string;
  readonly clientAddress: string;
  readonly clientPort: number;
  readonly username: string;
  readonly realm: string;
  readonly createdAtMs: number;
  readonly expiresAtMs: number;
  readonly mobilityGeneration?: number;
}

/** The relay sockets of one allocation: a dual allocation has the IPv6 one as `additional`. */
export interface AllocationRelays {
  readonly relay: RelaySocket;
  /** The second relayed address of a dual allocation (RFC 8656 §7.2 ADDITIONAL-ADDRESS-FAMILY). */
  readonly additional: RelaySocket | undefined;
}

/**
 * The peer policy as merge() asks it: may a permission for `address` (port undefined) or a
 * channel to address:port be installed? A record from the store is no more trusted than a
 * request: anyone who can write to Redis (or publish on its event channel) could otherwise
 * install a permission for any address (RFC 8656 §21).
 */
export type PeerFilter = (address: string, port: number | undefined) => boolean;

function isIPv6Relay(relay: RelaySocket): boolean {
  return relay.address.includes(':');
}

export class Allocation {
  // The client 5-tuple: fixed, except that an RFC 8016 move (table.ts move()) changes it.
  key: string;
  path: ClientPath;
  clientAddress: string;
  clientPort: number;
  readonly username: string;
  readonly realm: string;
  readonly relay: RelaySocket;
  readonly additionalRelay: RelaySocket | undefined;
  readonly createdAtMs: number;
  /**
   * The Allocate success response, kept to answer retransmissions (RFC 8656 §7.2) for
   * ALLOCATE_RESPONSE_KEEP_MS (prune), at keptAt in a slab shared with other allocations'
   * (kept-responses.ts); undefined for one taken on from the store, and after that.
   */
  private keptSlab: Buffer | undefined = undefined;
  private keptAt = 0;
  /** Made here by an Allocate (not taken on from another node's record). */
  readonly madeHere: boolean;
  /** The listener it is held on, set by AllocationTable.add (the table's store-key index finds it through this). */
  listener: EngineListener | undefined = undefined;
  expiresAtMs: number;
  version = 0;
  /** True when the store missed a write (store down); tick() writes it again. */
  dirty = false;
  /**
   * Made while the store was unreachable (docs/architecture.md §5, fail open): no record
   * yet, so a reroute cannot resume it. WriteThrough creates its record once the store is back.
   */
  localOnly = false;
  /**
   * Lost a conflict settled after a store outage (allocation/store-conflicts.ts): the record
   * belongs to another allocation. Served here until it ends; never written to, merged
   * from, or deleted from the store.
   */
  detached = false;
  /** Lived through a store outage: its deletion checks that the record is still its own. */
  throughOutage = false;
  deleted = false;
  /** Its bandwidth limits (turn/bandwidth.ts), set by AllocationTable.add when any is configured. */
  bandwidth: BandwidthGate | undefined = undefined;
  /** RFC 8016 moves so far: a mobility ticket carries it and is good only while it is current (auth/mobility-ticket.ts). */
  mobilityGeneration = 0;
  /** An RFC 6062 TCP allocation's peer data connections (its `relay` is then a TcpRelaySocket); undefined for UDP. */
  tcp: TcpRelayState | undefined = undefined;
  /** The store write in flight (WriteThrough), or NOTHING_PERSISTING. */
  persisting: Promise<void> = NOTHING_PERSISTING;

  /** By peer IP as text, and by IPv4 address as a number (`getIPv4`: the hot path's lookup). */
  readonly permissionsByAddress = new PeerPermissions();
  /**
   * The allocation's channel when it has exactly one (channelsByNumber is then undefined),
   * and a Map by number from the second on. A WebRTC allocation has one: a Set and a Map of
   * its own cost ~500 B of heap each, and an array indexed by number grew to thousands of
   * slots for the random numbers browsers pick (docs/scaling.md, "At scale").
   */
  private soleChannel: ChannelBinding | undefined = undefined;
  private channelsByNumber: Map<number, ChannelBinding> | undefined = undefined;

  /** Every channel binding (quarantined ones included); not for the packet paths. */
  get bindings(): Iterable<ChannelBinding> {
    const sole = this.soleChannel;
    if (sole !== undefined) return [sole];
    return this.channelsByNumber?.values() ?? NO_BINDINGS;
  }

  get channelCount(): number {
    return this.soleChannel !== undefined ? 1 : (this.channelsByNumber?.size ?? 0);
  }

  /** The one place an Allocation is built (a local Allocate and an adopted record alike). */
  constructor(seed: AllocationSeed, path: ClientPath, relays: AllocationRelays, madeHere = false) {
    this.key = seed.key;
    this.path = path;
    this.clientAddress = seed.clientAddress;
    this.clientPort = seed.clientPort;
    this.username = seed.username;
    this.realm = seed.realm;
    this.relay = relays.relay;
    this.additionalRelay = relays.additional;
    this.createdAtMs = seed.createdAtMs;
    this.madeHere = madeHere;
    this.expiresAtMs = seed.expiresAtMs;
    this.mobilityGeneration = seed.mobilityGeneration ?? 0;
  }

  /**
   * True when `record` is this allocation, not another one on the same 5-tuple: the
   * relayed address and the creation time are fixed at creation (store/types.ts).
   */
  matches(record: AllocationRecord): boolean {
    return record.relayedAddress === this.relay.address && record.relayedPort === this.relay.port && record.createdAtMs === this.createdAtMs;
  }

  /** The relayed families it serves (metrics). */
  get family(): RelayFamily {
    return this.additionalRelay ? 'dual' : isIPv6Relay(this.relay) ? 'ipv6' : 'ipv4';
  }

  /** Keeps the Allocate success response for retransmissions (ALLOCATE_RESPONSE_KEEP_MS). */
  keepAllocateResponse(response: Buffer): void {
    const kept = KEPT_RESPONSES.keep(response);
    this.keptSlab = kept.slab;
    this.keptAt = kept.offset;
  }

  /** Whether the Allocate response is still kept. */
  get keepsAllocateResponse(): boolean {
    return this.keptSlab !== undefined;
  }

  /** The kept Allocate response when `transactionId` is the Allocate's (a retransmission), else undefined. */
  allocateResponseTo(transactionId: Buffer): Buffer | undefined {
    const slab = this.keptSlab;
    if (slab === undefined || !keptTransactionIs(slab, this.keptAt, transactionId)) return undefined;
    return keptMessage(slab, this.keptAt);
  }

  /** The binding of channel `number` (the client-to-peer hot path's lookup). */
  channel(number: number): ChannelBinding | undefined {
    const sole = this.soleChannel;
    if (sole !== undefined) return sole.number === number ? sole : undefined;
    return this.channelsByNumber?.get(number);
  }

  /** The relay socket serving peers of this family (IPv4 when peerIPv4 >= 0), if the allocation has one. */
  relayFor(ipv6: boolean): RelaySocket | undefined {
    // Worked out when asked (requests, records merged; the packet paths use the permission's
    // relay): two fields fewer on every allocation.
    if (isIPv6Relay(this.relay) === ipv6) return this.relay;
    const additional = this.additionalRelay;
    return additional !== undefined && isIPv6Relay(additional) === ipv6 ? additional : undefined;
  }

  /** Closes every relay socket of the allocation, and a TCP allocation's connections (RFC 6062 §5.5). */
  closeRelays(): void {
    this.tcp?.closeAll();
    this.relay.close();
    this.additionalRelay?.close();
  }

  /** Installs or refreshes the permission for a peer IP; the caller has checked the family (443 otherwise). */
  permit(peerAddress: string, peerIPv4: number, expiresAtMs: number): Permission {
    let permission = this.permissionsByAddress.get(peerAddress);
    if (permission) {
      permission.expiresAtMs = Math.max(permission.expiresAtMs, expiresAtMs);
      return permission;
    }
    const relay = this.relayFor(peerIPv4 < 0);
    if (!relay) throw new Error(`no relay of the family of ${peerAddress}`);
    permission = new Permission(peerAddress, peerIPv4, relay, expiresAtMs);
    this.permissionsByAddress.add(permission);
    return permission;
  }

  bindChannel(number: number, permission: Permission, peerPort: number, expiresAtMs: number): ChannelBinding {
    const existing = this.channel(number);
    if (existing) {
      existing.expiresAtMs = expiresAtMs;
      return existing;
    }
    const binding = new ChannelBinding(number, permission.peerAddress, peerPort, permission, expiresAtMs);
    const sole = this.soleChannel;
    if (sole === undefined && this.channelsByNumber === undefined) this.soleChannel = binding;
    else {
      if (sole !== undefined) {
        this.channelsByNumber = new Map([[sole.number, sole]]);
        this.soleChannel = undefined;
      }
      this.channelsByNumber?.set(number, binding);
    }
    permission.addChannel(binding);
    return binding;
  }

  /** Drops expired permissions and channels (channels after their quarantine). Returns true if anything went. */
  prune(nowMs: number): boolean {
    // A retransmitted Allocate can only come within the client's transaction timeout
    // (39.5 s with the default RTO: RFC 8489 §6.2.1); kept longer, the response would be
    // memory for nothing (docs/scaling.md, "At scale").
    if (this.keptSlab !== undefined && nowMs - this.createdAtMs >= ALLOCATE_RESPONSE_KEEP_MS) this.keptSlab = undefined;
    let changed = false;
    // Most allocations have no channel: no Set iterator made for the shared empty set.
    if (this.soleChannel !== undefined || this.channelsByNumber !== undefined) changed = this.pruneBindings(nowMs);
    return this.permissionsByAddress.pruneExpired(nowMs) || changed;
  }

  private pruneBindings(nowMs: number): boolean {
    const sole = this.soleChannel;
    if (sole !== undefined) {
      // No iterator for the one channel most allocations have: the tick runs this every second.
      if (sole.expiresAtMs + CHANNEL_QUARANTINE_MS > nowMs) return false;
      this.soleChannel = undefined;
      sole.permission.removeChannel(sole);
      return true;
    }
    const byNumber = this.channelsByNumber;
    if (byNumber === undefined) return false;
    let changed = false;
    for (const binding of byNumber.values()) {
      if (binding.expiresAtMs + CHANNEL_QUARANTINE_MS > nowMs) continue;
      byNumber.delete(binding.number);
      binding.permission.removeChannel(binding);
      changed = true;
    }
    if (byNumber.size <= 1) {
      this.soleChannel = byNumber.size === 1 ? byNumber.values().next().value : undefined;
      this.channelsByNumber = undefined;
    }
    return changed;
  }

  /**
   * Folds a stored record into this live state: later expiries win, permissions and
   * channels are the union. Merging (not replacing) keeps a change this node made
   * but has not written yet; two nodes changing one allocation at once both keep
   * their change. Returns false when the record is not newer than what we hold.
   * Every permission and channel passes `allowed` first (the same policy a request
   * meets); `onRefused` counts what did not. Channel numbers and ports are checked
   * as ChannelBind checks them.
   */
  merge(record: AllocationRecord, allowed: PeerFilter, onRefused: () => void): boolean {
    // Another allocation's record on this 5-tuple (a conflict after a store outage) is never folded in.
    if (record.version <= this.version || this.detached || !this.matches(record)) return false;
    this.expiresAtMs = Math.max(this.expiresAtMs, record.expiresAtMs);
    // A move elsewhere (anycast relay mode) made the tickets before it stale here too.
    this.mobilityGeneration = Math.max(this.mobilityGeneration, record.mobilityGeneration ?? 0);
    for (const [address, expiresAtMs] of Object.entries(record.permissions)) {
      if (!this.relayFor(address.includes(':'))) continue;
      if (!allowed(address, undefined)) {
        onRefused();
        continue;
      }
      this.permit(address, parseIPv4(address), expiresAtMs);
    }
    for (const [key, channel] of Object.entries(record.channels)) {
      const number = Number(key);
      if (!isValidChannelNumber(number) || !Number.isInteger(channel.peerPort) || channel.peerPort < 1 || channel.peerPort > 65535) {
        onRefused();
        continue;
      }
      const existing = this.channel(number);
      if (existing) {
        // The same binding elsewhere refreshed it; a different peer on the same number (a race
        // both nodes lost) keeps ours: the RFC allows only one.
        if (existing.peerAddress === channel.peerAddress && existing.peerPort === channel.peerPort) {
          existing.expiresAtMs = Math.max(existing.expiresAtMs, channel.expiresAtMs);
        }
        continue;
      }
      if (!this.relayFor(channel.peerAddress.includes(':'))) continue;
      if (!allowed(channel.peerAddress, channel.peerPort)) {
        onRefused();
        continue;
      }
      const permission = this.permit(channel.peerAddress, parseIPv4(channel.peerAddress), record.permissions[channel.peerAddress] ?? 0);
      if (permission.channelFor(channel.peerPort) !== undefined) continue;
      this.bindChannel(number, permission, channel.peerPort, channel.expiresAtMs);
    }
    this.version = record.version;
    return true;
  }

  toRecord(ownerNodeId: string): AllocationRecord {
    const permissions: Record<string, number> = {};
    for (const permission of this.permissionsByAddress.values()) permissions[permission.peerAddress] = permission.expiresAtMs;
    const channels: Record<string, { peerAddress: string; peerPort: number; expiresAtMs: number }> = {};
    for (const binding of this.bindings) {
      channels[String(binding.number)] = { peerAddress: binding.peerAddress, peerPort: binding.peerPort, expiresAtMs: binding.expiresAtMs };
    }
    // A literal, then the optional fields: spreads of small objects into the middle of one
    // cost more than the rest of it, on every store write (docs/scaling.md, part 1).
    const record: { -readonly [K in keyof AllocationRecord]: AllocationRecord[K] } = {
      key: this.key,
      transport: this.path.transport,
      clientAddress: this.clientAddress,
      clientPort: this.clientPort,
      serverAddress: this.path.localAddress,
      serverPort: this.path.localPort,
      relayedAddress: this.relay.address,
      relayedPort: this.relay.port,
      ownerNodeId,
      username: this.username,
      realm: this.realm,
      createdAtMs: this.createdAtMs,
      expiresAtMs: this.expiresAtMs,
      permissions,
      channels,
      version: this.version,
    };
    if (this.additionalRelay) {
      record.additionalRelayedAddress = this.additionalRelay.address;
      record.additionalRelayedPort = this.additionalRelay.port;
    }
    if (this.mobilityGeneration > 0) record.mobilityGeneration = this.mobilityGeneration;
    return record;
  }
}

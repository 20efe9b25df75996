// One allocation's live state on its owner node (RFC 8656 §3.2, §7): the relay
// socket, permissions and channel bindings, kept in maps shaped for the relay
// hot path. The store holds the same facts as a plain AllocationRecord.

import { parseIPv4, parseIPv6 } from '../../net/ip.js';
import { isValidChannelNumber } from '../../stun/channel-data.js';
import { CHANNEL_MIN } from '../../stun/constants.js';
import type { AllocationRecord } from '../../store/types.js';
import type { BandwidthGate } from '../bandwidth.js';
import type { ClientPath, RelayFamily, RelaySocket } from '../ports.js';
import type { TcpRelayState } from './tcp-connections.js';

/** RFC 8656 §9: a permission lasts 300 s. */
export const PERMISSION_LIFETIME_MS = 300_000;
/** RFC 8656 §12: a channel binding lasts 600 s. */
export const CHANNEL_LIFETIME_MS = 600_000;
/** RFC 8656 §12: after a binding expires, its number and peer stay reserved to each other for 5 more minutes. */
export const CHANNEL_QUARANTINE_MS = 300_000;

/** How long an allocation keeps its Allocate success response for retransmissions. */
export const ALLOCATE_RESPONSE_KEEP_MS = 40_000;
export class Permission {
  /** Channels bound to this peer IP, by peer port. */
  channelsByPort: Map<number, ChannelBinding> | undefined;
  /** The IPv6 address as bytes (for Data indications), empty for IPv4. */
  readonly peerIPv6: Uint8Array;
  /** Cached PeerPolicy.isServerAddress(peerAddress), valid while the policy's generation equals policyGeneration. */
  serverAddress = false;
  policyGeneration = -1;
  constructor(
    readonly peerAddress: string,
    /** The IPv4 address as a number, or -1 for IPv6. */
    readonly peerIPv4: number,
    /** The relay socket of the peer's family (a dual allocation has one per family). */
    readonly relay: RelaySocket,
    public expiresAtMs: number,
  ) {
    this.peerIPv6 = peerIPv4 >= 0 ? new Uint8Array(0) : (parseIPv6(peerAddress) ?? new Uint8Array(16));
  }
}

export class ChannelBinding {
  constructor(
    readonly number: number,
    readonly peerAddress: string,
    readonly peerPort: number,
    readonly permission: Permission,
    public expiresAtMs: number,
  ) {}
}

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
  readonly relayIPv4: RelaySocket | undefined;
  readonly relayIPv6: RelaySocket | undefined;
  readonly createdAtMs: number;
  /** Transaction id (hex) of the Allocate that made it, to answer retransmissions (RFC 8656 §7.2); '' for one taken on from the store. */
  readonly allocateTransactionId: string;
  allocateResponse: Buffer | undefined;
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
  persisting: Promise<void> = Promise.resolve();

  readonly permissionsByAddress = new Map<string, Permission>();
  readonly permissionsByIPv4 = new Map<number, Permission>();
  /** Indexed by channel number - 0x4000: the hot path's lookup. */
  private readonly channelSlots: (ChannelBinding | undefined)[] = [];
  /** The same bindings, for iteration (the slot array is sparse, up to 16k long). */
  readonly bindings = new Set<ChannelBinding>();

  get channelCount(): number {
    return this.bindings.size;
  }

  /** The one place an Allocation is built (a local Allocate and an adopted record alike). */
  constructor(seed: AllocationSeed, path: ClientPath, relays: AllocationRelays, allocateTransactionId = '') {
    this.key = seed.key;
    this.path = path;
    this.clientAddress = seed.clientAddress;
    this.clientPort = seed.clientPort;
    this.username = seed.username;
    this.realm = seed.realm;
    this.relay = relays.relay;
    this.additionalRelay = relays.additional;
    const all = relays.additional ? [relays.relay, relays.additional] : [relays.relay];
    this.relayIPv4 = all.find((r) => !isIPv6Relay(r));
    this.relayIPv6 = all.find(isIPv6Relay);
    this.createdAtMs = seed.createdAtMs;
    this.allocateTransactionId = allocateTransactionId;
    this.expiresAtMs = seed.expiresAtMs;
    this.mobilityGeneration = seed.mobilityGeneration ?? 0;
  }

  /** Made here by an Allocate (not taken on from another node's record). */
  get madeHere(): boolean {
    return this.allocateTransactionId !== '';
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
    return this.additionalRelay ? 'dual' : this.relayIPv6 ? 'ipv6' : 'ipv4';
  }

  channel(number: number): ChannelBinding | undefined {
    return this.channelSlots[number - CHANNEL_MIN];
  }

  /** The relay socket serving peers of this family (IPv4 when peerIPv4 >= 0), if the allocation has one. */
  relayFor(ipv6: boolean): RelaySocket | undefined {
    return ipv6 ? this.relayIPv6 : this.relayIPv4;
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
    this.permissionsByAddress.set(peerAddress, permission);
    if (peerIPv4 >= 0) this.permissionsByIPv4.set(peerIPv4, permission);
    return permission;
  }

  bindChannel(number: number, permission: Permission, peerPort: number, expiresAtMs: number): ChannelBinding {
    const existing = this.channel(number);
    if (existing) {
      existing.expiresAtMs = expiresAtMs;
      return existing;
    }
    const binding = new ChannelBinding(number, permission.peerAddress, peerPort, permission, expiresAtMs);
    this.channelSlots[number - CHANNEL_MIN] = binding;
    this.bindings.add(binding);
    (permission.channelsByPort ??= new Map()).set(peerPort, binding);
    return binding;
  }

  /** Drops expired permissions and channels (channels after their quarantine). Returns true if anything went. */
  prune(nowMs: number): boolean {
    // A retransmitted Allocate can only come within the client's transaction timeout
    // (39.5 s with the default RTO: RFC 8489 §6.2.1); kept longer, the response would be
    // memory for nothing (docs/scaling.md, "At scale").
    if (this.allocateResponse !== undefined && nowMs - this.createdAtMs >= ALLOCATE_RESPONSE_KEEP_MS) this.allocateResponse = undefined;
    let changed = false;
    for (const binding of this.bindings) {
      if (binding.expiresAtMs + CHANNEL_QUARANTINE_MS > nowMs) continue;
      this.channelSlots[binding.number - CHANNEL_MIN] = undefined;
      this.bindings.delete(binding);
      if (binding.permission.channelsByPort?.get(binding.peerPort) === binding) binding.permission.channelsByPort.delete(binding.peerPort);
      changed = true;
    }
    for (const [address, permission] of this.permissionsByAddress) {
      if (permission.expiresAtMs > nowMs || (permission.channelsByPort?.size ?? 0) > 0) continue;
      this.permissionsByAddress.delete(address);
      if (permission.peerIPv4 >= 0) this.permissionsByIPv4.delete(permission.peerIPv4);
      changed = true;
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
      if (permission.channelsByPort?.has(channel.peerPort)) continue;
      this.bindChannel(number, permission, channel.peerPort, channel.expiresAtMs);
    }
    this.version = record.version;
    return true;
  }

  toRecord(ownerNodeId: string): AllocationRecord {
    const permissions: Record<string, number> = {};
    for (const [address, permission] of this.permissionsByAddress) permissions[address] = permission.expiresAtMs;
    const channels: Record<string, { peerAddress: string; peerPort: number; expiresAtMs: number }> = {};
    for (const binding of this.bindings) {
      channels[String(binding.number)] = { peerAddress: binding.peerAddress, peerPort: binding.peerPort, expiresAtMs: binding.expiresAtMs };
    }
    return {
      key: this.key,
      transport: this.path.transport,
      clientAddress: this.clientAddress,
      clientPort: this.clientPort,
      serverAddress: this.path.localAddress,
      serverPort: this.path.localPort,
      relayedAddress: this.relay.address,
      relayedPort: this.relay.port,
      ...(this.additionalRelay ? { additionalRelayedAddress: this.additionalRelay.address, additionalRelayedPort: this.additionalRelay.port } : {}),
      ownerNodeId,
      username: this.username,
      realm: this.realm,
      createdAtMs: this.createdAtMs,
      expiresAtMs: this.expiresAtMs,
      permissions,
      channels,
      ...(this.mobilityGeneration > 0 ? { mobilityGeneration: this.mobilityGeneration } : {}),
      version: this.version,
    };
  }
}

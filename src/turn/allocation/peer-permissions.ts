// One allocation's permissions (RFC 8656 §9), found by peer IP as text (requests, peers'
// datagrams) or as a number (the Send indication and ChannelData paths: no string per
// packet). Most allocations hold one permission (a WebRTC client talks to one peer): it is
// kept in a field, and the two maps are made only for the second one. Two empty maps per
// allocation were ~400 B of the ~2.2 KB of V8 heap one cost at 100,000 live allocations
// (docs/scaling.md, "At scale").

import type { Permission } from './allocation.js';

const NONE: readonly Permission[] = [];

export class PeerPermissions implements Iterable<[string, Permission]> {
  /** The one permission, while the maps are not made. */
  private only: Permission | undefined = undefined;
  /** From the second permission on (and then for good): peer IP -> permission. */
  private byAddress: Map<string, Permission> | undefined = undefined;
  /** The same for IPv4 peers, by the address as a number. */
  private byIPv4: Map<number, Permission> | undefined = undefined;

  get size(): number {
    if (this.byAddress !== undefined) return this.byAddress.size;
    return this.only === undefined ? 0 : 1;
  }

  get(address: string): Permission | undefined {
    if (this.byAddress !== undefined) return this.byAddress.get(address);
    const only = this.only;
    return only !== undefined && only.peerAddress === address ? only : undefined;
  }

  has(address: string): boolean {
    return this.get(address) !== undefined;
  }

  /** The permission of an IPv4 peer, by its address as a number (the packet paths). */
  getIPv4(address: number): Permission | undefined {
    if (this.byIPv4 !== undefined) return this.byIPv4.get(address);
    const only = this.only;
    return only !== undefined && address >= 0 && only.peerIPv4 === address ? only : undefined;
  }

  /** Adds a permission for a peer IP that has none. */
  add(permission: Permission): void {
    if (this.byAddress === undefined) {
      const only = this.only;
      if (only === undefined) {
        this.only = permission;
        return;
      }
      this.byAddress = new Map([[only.peerAddress, only]]);
      this.byIPv4 = new Map();
      if (only.peerIPv4 >= 0) this.byIPv4.set(only.peerIPv4, only);
      this.only = undefined;
    }
    this.byAddress.set(permission.peerAddress, permission);
    if (permission.peerIPv4 >= 0) this.byIPv4!.set(permission.peerIPv4, permission);
  }

  /** Removes the permission (if it is the one held for its peer). Safe while iterating. */
  delete(permission: Permission): void {
    if (this.byAddress === undefined) {
      if (this.only === permission) this.only = undefined;
      return;
    }
    if (this.byAddress.get(permission.peerAddress) === permission) this.byAddress.delete(permission.peerAddress);
    if (permission.peerIPv4 >= 0 && this.byIPv4!.get(permission.peerIPv4) === permission) this.byIPv4!.delete(permission.peerIPv4);
  }

  /**
   * Drops the permissions whose lifetime ended and that no channel holds; true when one
   * went. Plain loops, not values(): the engine's tick runs this for every allocation
   * every second, and a generator per call was garbage per allocation per second.
   */
  pruneExpired(nowMs: number): boolean {
    if (this.byAddress === undefined) {
      const only = this.only;
      if (only === undefined || only.expiresAtMs > nowMs || only.hasChannels) return false;
      this.only = undefined;
      return true;
    }
    let changed = false;
    for (const permission of this.byAddress.values()) {
      if (permission.expiresAtMs > nowMs || permission.hasChannels) continue;
      this.delete(permission);
      changed = true;
    }
    return changed;
  }

  /**
   * Every permission. A map's or a one-entry array's own iterator rather than a generator
   * delegating to one: every store write lists them (Allocation.toRecord; docs/scaling.md,
   * part 1). The tick's prune does not use it (pruneExpired).
   */
  values(): IterableIterator<Permission> {
    if (this.byAddress !== undefined) return this.byAddress.values();
    return (this.only !== undefined ? [this.only] : NONE).values();
  }

  *keys(): IterableIterator<string> {
    for (const permission of this.values()) yield permission.peerAddress;
  }

  *[Symbol.iterator](): IterableIterator<[string, Permission]> {
    for (const permission of this.values()) yield [permission.peerAddress, permission];
  }
}

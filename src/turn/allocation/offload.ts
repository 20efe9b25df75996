// Which of an allocation's channels the kernel data plane may relay (docs/dataplane.md):
// listed again through the ChannelOffload port after every change the engine makes or
// merges (WriteThrough calls sync), and emptied when the allocation goes. A channel is
// listed only while a ChannelData on it would be relayed by methods/send.ts and a peer's
// datagram by methods/data.ts: the binding, its permission and the allocation alive, a
// UDP client on a concrete listening address, client and peer of one family (the kernel
// rewrites headers in place), and a peer that is not one of the server's or its cluster's
// own addresses (peer-policy.ts): never a service port, and two allocations of one server
// talking to each other (two browsers on one TURN service) stay on the JavaScript path,
// which delivers locally, where the kernel path would send the datagram out of the
// interface to come back. An allocation under a bandwidth limit (it has a gate,
// turn/bandwidth.ts) stays on the JavaScript path entirely: the kernel program has no
// token bucket, and a channel relayed there would escape the limit.
// The expiry given is the earliest of the three lifetimes: past it the kernel hands the
// packets to user space, which decides as it always did.

import type { PeerPolicy } from '../peer-policy.js';
import type { ChannelOffload, OffloadChannel } from '../ports.js';
import type { Allocation } from './allocation.js';

function isWildcard(address: string): boolean {
  return address === '0.0.0.0' || address === '::';
}

export class OffloadSync {
  /** The peer policy's generation when every allocation was last listed (a new server address may now be a service peer). */
  private listedAtGeneration: number;

  constructor(
    private readonly offload: ChannelOffload | undefined,
    private readonly policy: PeerPolicy,
  ) {
    this.listedAtGeneration = policy.generation;
  }

  get enabled(): boolean {
    return this.offload !== undefined;
  }

  /** Lists the allocation's offloadable channels (none once it is deleted); resolves once the kernel holds them. */
  sync(allocation: Allocation, nowMs: number): Promise<void> | undefined {
    const offload = this.offload;
    if (!offload) return undefined;
    return offload.set(allocation.key, allocation.deleted ? [] : this.channelsOf(allocation, nowMs), nowMs);
  }

  /** Nothing listed under `key` any more (an allocation that moved to another 5-tuple). */
  clear(key: string, nowMs: number): void {
    void this.offload?.set(key, [], nowMs);
  }

  /** After the peer policy learned server addresses: lists every allocation again. */
  syncAllIfPolicyChanged(all: Iterable<Allocation>, nowMs: number): void {
    if (!this.offload || this.policy.generation === this.listedAtGeneration) return;
    this.listedAtGeneration = this.policy.generation;
    for (const allocation of all) if (allocation.channelCount > 0) this.sync(allocation, nowMs);
  }

  /** How much the kernel relayed for the allocation, once its entries are gone (its deletion log). */
  takeTraffic(key: string): Promise<{ readonly packets: number; readonly bytes: number } | undefined> | undefined {
    return this.offload?.takeTraffic(key);
  }

  private channelsOf(allocation: Allocation, nowMs: number): OffloadChannel[] {
    const path = allocation.path;
    const channels: OffloadChannel[] = [];
    if (path.transport !== 'udp' || isWildcard(path.localAddress) || allocation.expiresAtMs <= nowMs || allocation.bandwidth !== undefined) return channels;
    const clientIPv6 = allocation.clientAddress.includes(':');
    for (const binding of allocation.bindings) {
      const permission = binding.permission;
      if (binding.expiresAtMs <= nowMs || permission.expiresAtMs <= nowMs) continue;
      if (binding.peerAddress.includes(':') !== clientIPv6) continue;
      if (this.policy.isServerAddress(binding.peerAddress)) continue;
      channels.push({
        clientAddress: allocation.clientAddress,
        clientPort: allocation.clientPort,
        serverAddress: path.localAddress,
        serverPort: path.localPort,
        channel: binding.number,
        relayAddress: permission.relay.address,
        relayPort: permission.relay.port,
        peerAddress: binding.peerAddress,
        peerPort: binding.peerPort,
        expiresAtMs: Math.min(binding.expiresAtMs, permission.expiresAtMs, allocation.expiresAtMs),
      });
    }
    return channels;
  }
}

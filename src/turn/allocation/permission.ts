// A permission (RFC 8656 §9) and a channel binding (§12) of one allocation: what the
// packet paths look up per datagram (turn/methods/send.ts, data.ts), shaped for that
// and for memory at scale (docs/scaling.md, "At scale").

import { parseIPv6 } from '../../net/ip.js';
import type { RelaySocket } from '../ports.js';

/** Shared by every IPv4 permission; never written to. */
const NO_IPV6 = new Uint8Array(0);

export class Permission {
  /**
   * The channel bound to this peer IP when it has exactly one (channelsByPort is then
   * undefined), and a Map by peer port from the second on: most permissions have none or
   * one, and a Map per allocation is ~250 B of heap times 100,000 (docs/scaling.md, "At scale").
   */
  private soleChannel: ChannelBinding | undefined = undefined;
  private channelsByPort: Map<number, ChannelBinding> | undefined = undefined;
  /** The IPv6 address as bytes (for Data indications), empty for IPv4. */
  readonly peerIPv6: Uint8Array;
  /** Cached PeerPolicy.isServerAddress(peerAddress), valid while the policy's generation equals policyGeneration. */
  serverAddress = false;
  /** Cached PeerPolicy.isServerPeer(peerAddress) (a peer at the server's relayed ports only), valid as serverAddress. */
  serverPeer = false;
  policyGeneration = -1;
  constructor(
    readonly peerAddress: string,
    /** The IPv4 address as a number, or -1 for IPv6. */
    readonly peerIPv4: number,
    /** The relay socket of the peer's family (a dual allocation has one per family). */
    readonly relay: RelaySocket,
    public expiresAtMs: number,
  ) {
    this.peerIPv6 = peerIPv4 >= 0 ? NO_IPV6 : (parseIPv6(peerAddress) ?? new Uint8Array(16));
  }

  /** The channel bound to this peer IP and `peerPort` (the peer-to-client hot path's lookup). */
  channelFor(peerPort: number): ChannelBinding | undefined {
    const sole = this.soleChannel;
    if (sole !== undefined) return sole.peerPort === peerPort ? sole : undefined;
    return this.channelsByPort?.get(peerPort);
  }

  get hasChannels(): boolean {
    return this.soleChannel !== undefined || this.channelsByPort !== undefined;
  }

  /** Binds `binding` to its peer port here (replacing one bound to that port before). */
  addChannel(binding: ChannelBinding): void {
    const sole = this.soleChannel;
    if (sole === undefined && this.channelsByPort === undefined) {
      this.soleChannel = binding;
      return;
    }
    if (sole !== undefined) {
      if (sole.peerPort === binding.peerPort) {
        this.soleChannel = binding;
        return;
      }
      this.channelsByPort = new Map([[sole.peerPort, sole]]);
      this.soleChannel = undefined;
    }
    this.channelsByPort?.set(binding.peerPort, binding);
  }

  /** Unbinds `binding` if it is the one bound to its peer port. */
  removeChannel(binding: ChannelBinding): void {
    if (this.soleChannel === binding) {
      this.soleChannel = undefined;
      return;
    }
    const byPort = this.channelsByPort;
    if (byPort === undefined || byPort.get(binding.peerPort) !== binding) return;
    byPort.delete(binding.peerPort);
    if (byPort.size > 1) return;
    this.soleChannel = byPort.size === 1 ? byPort.values().next().value : undefined;
    this.channelsByPort = undefined;
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

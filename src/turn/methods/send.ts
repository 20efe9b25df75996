// Client -> peer: the Send indication (RFC 8656 §11.2, "Receiving a Send
// Indication") and the ChannelData message (§12.6, "Receiving a ChannelData
// Message"). The packet path: nothing here allocates, builds a string or makes a
// closure per packet; errors are drops, counted, never answers (§11.2, §12.6).

import { formatIPv6 } from '../../net/ip.js';
import { CHANNEL_DATA_HEADER_LENGTH, isValidChannelNumber, looksLikeChannelData, readChannelDataLength } from '../../stun/channel-data.js';
import { AddressFamily } from '../../stun/constants.js';
import { SendIndicationView, readSendIndication } from '../../stun/indication.js';
import type { Permission } from '../allocation/allocation.js';
import type { EngineListener } from '../allocation/table.js';
import type { TurnContext } from '../context.js';
import type { EngineCounters } from '../counters.js';
import type { PeerPolicy } from '../peer-policy.js';

export class ClientData {
  private readonly view = new SendIndicationView();
  private readonly counters: EngineCounters;
  private readonly policy: PeerPolicy;

  constructor(private readonly ctx: TurnContext) {
    this.counters = ctx.o.counters;
    this.policy = ctx.o.peerPolicy;
  }

  /** §12.6: a ChannelData message from the client, relayed to the channel's peer. */
  onChannelData(listener: EngineListener, buf: Buffer, address: string, port: number, local: boolean): void {
    // The allocation of the 5-tuple (or, in a cluster, another node's: noAllocation offers it).
    const allocation = listener.find(address, port);
    if (!allocation) return this.noAllocation(listener, buf, address, port, local);
    // 1. A number in the reserved range (0x5000-0xFFFF), or shorter than its length: discarded.
    if (!looksLikeChannelData(buf)) return this.ctx.drop('bad_channel_data');
    const number = (buf[0]! << 8) | buf[1]!;
    const length = readChannelDataLength(buf);
    if (!isValidChannelNumber(number) || CHANNEL_DATA_HEADER_LENGTH + length > buf.length) return this.ctx.drop('bad_channel_data');
    // 2. A channel bound to no peer (or expired): discarded. Receipt refreshes neither it nor the permission.
    const binding = allocation.channel(number);
    const now = this.ctx.packetClock();
    if (!binding || binding.expiresAtMs <= now) return this.ctx.drop('no_channel');
    if (binding.permission.expiresAtMs <= now) return this.ctx.drop('no_permission');
    // 3. Never to a service port of the server or its cluster, nor to one of its ports that is not a relayed one (peer-policy.ts).
    const refused = this.refusedServerPort(binding.permission, binding.peerPort);
    if (refused !== undefined) return this.ctx.drop(refused);
    // Over a bandwidth limit (turn/bandwidth.ts): dropped, the allocation lives on.
    const gate = allocation.bandwidth;
    if (gate !== undefined && !gate.up.admit(length, now)) return this.ctx.drop('bandwidth');
    // 4. The data, from the relayed transport address to the channel's peer.
    binding.permission.relay.send(buf, CHANNEL_DATA_HEADER_LENGTH, length, binding.peerPort, binding.peerAddress);
    this.counters.packetsClientToPeer++;
    this.counters.bytesClientToPeer += length;
  }

  /** §11.2: a Send indication from the client, relayed to its XOR-PEER-ADDRESS. */
  onSendIndication(listener: EngineListener, buf: Buffer, address: string, port: number, local: boolean): void {
    const allocation = listener.find(address, port);
    if (!allocation) return this.noAllocation(listener, buf, address, port, local);
    // RFC 6062 §5.1: a TCP allocation's data goes over data connections, never in indications.
    if (allocation.tcp !== undefined) return this.ctx.drop('tcp_allocation');
    // 1. XOR-PEER-ADDRESS and DATA present and well formed (stun/indication.ts): discarded otherwise.
    const view = this.view;
    if (!readSendIndication(buf, view)) return this.ctx.drop('bad_send_indication');
    // §11.2 gives no error for an indication: a datagram to port 0 cannot leave, so drop it.
    if (view.peerPort === 0) return this.ctx.drop('bad_peer_port');
    // 2. A permission for the peer's IP, not expired: discarded otherwise.
    const permission =
      view.peerFamily === AddressFamily.IPv4
        ? allocation.permissionsByAddress.getIPv4(view.peerIPv4)
        : allocation.permissionsByAddress.get(formatIPv6(view.peerIPv6));
    const now = this.ctx.packetClock();
    if (!permission || permission.expiresAtMs <= now) return this.ctx.drop('no_permission');
    // A permission is per IP (RFC 8656 §9); the port is known only here: never a server's service port,
    // nor a server port that is not a relayed one.
    const refused = this.refusedServerPort(permission, view.peerPort);
    if (refused !== undefined) return this.ctx.drop(refused);
    const gate = allocation.bandwidth;
    if (gate !== undefined && !gate.up.admit(view.dataLength, now)) return this.ctx.drop('bandwidth');
    // 3. The DATA, from the relayed transport address of the peer's family to the peer.
    permission.relay.send(buf, view.dataOffset, view.dataLength, view.peerPort, permission.peerAddress);
    this.counters.packetsClientToPeer++;
    this.counters.bytesClientToPeer += view.dataLength;
  }

  /** No local allocation for the 5-tuple: in a cluster its owner may be another node. */
  noAllocation(listener: EngineListener, buf: Buffer, address: string, port: number, local: boolean): void {
    if (!local && this.ctx.o.foreign?.offer(listener, buf, address, port)) return;
    this.ctx.drop('no_allocation');
  }

  /**
   * Why a datagram to port on the permission's IP is refused, or undefined: a service port of
   * a server or cluster address, or a port outside the relayed ports of an address allowed only
   * as the server's own (peer-policy.ts). The policy's answers for the IP are cached on the
   * permission until the policy learns more; two comparisons of the port come first.
   */
  private refusedServerPort(permission: Permission, port: number): 'peer_service_port' | 'peer_server_port' | undefined {
    const policy = this.policy;
    const service = policy.isServicePort(port);
    if (!service && !policy.isOutsideRelayPorts(port)) return undefined;
    if (permission.policyGeneration !== policy.generation) {
      permission.serverAddress = policy.isServerAddress(permission.peerAddress);
      permission.serverPeer = policy.isServerPeer(permission.peerAddress);
      permission.policyGeneration = policy.generation;
    }
    if (service) return permission.serverAddress ? 'peer_service_port' : undefined;
    return permission.serverPeer ? 'peer_server_port' : undefined;
  }
}

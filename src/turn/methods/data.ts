// Peer -> client: a UDP datagram on a relayed transport address (RFC 8656 §11.3,
// "Receiving a UDP Datagram"), sent to the client as ChannelData when a channel
// is bound to the peer (§12.7, framed as §12.5 says), else as a Data indication.
// The packet path: the heads are written into buffers kept here, nothing is
// allocated per packet.

import { CHANNEL_DATA_HEADER_LENGTH, CHANNEL_DATA_MAX_LENGTH, writeChannelDataHeader } from '../../stun/channel-data.js';
import {
  DATA_INDICATION_MAX_DATA_IPV4,
  DATA_INDICATION_MAX_DATA_IPV6,
  DATA_INDICATION_MAX_HEAD,
  TransactionIdPool,
  writeDataIndicationHeadIPv4,
  writeDataIndicationHeadIPv6,
} from '../../stun/indication.js';
import type { Allocation } from '../allocation/allocation.js';
import type { DropReason, EngineCounters } from '../counters.js';

export class PeerData {
  private readonly ids = new TransactionIdPool();
  private readonly dataHead = Buffer.alloc(DATA_INDICATION_MAX_HEAD);
  private readonly channelHead = Buffer.alloc(CHANNEL_DATA_HEADER_LENGTH);

  constructor(
    private readonly counters: EngineCounters,
    private readonly packetClock: () => number,
    private readonly drop: (reason: DropReason) => void,
  ) {}

  /** The datagram is payload[0, length) (PeerPacketHandler in ports.ts). */
  onPeerPacket(allocation: Allocation, payload: Buffer, address: string, port: number, length = payload.length): void {
    if (allocation.deleted) return;
    if (port === 0) return this.drop('source_port_zero');
    // 1. §11.3: no permission for the peer's IP, no delivery.
    const permission = allocation.permissionsByAddress.get(address);
    const now = this.packetClock();
    if (!permission || permission.expiresAtMs <= now) return this.drop('no_permission');
    const binding = permission.channelFor(port);
    const path = allocation.path;
    const gate = allocation.bandwidth;
    if (binding !== undefined && binding.expiresAtMs > now) {
      // 2. A channel bound to the peer: ChannelData (§12.7), padded to 4 bytes on streams (§12.5).
      if (length > CHANNEL_DATA_MAX_LENGTH) return this.drop('too_large');
      // Over a bandwidth limit (turn/bandwidth.ts): dropped, the allocation lives on.
      if (gate !== undefined && !gate.down.admit(length, now)) return this.drop('bandwidth');
      writeChannelDataHeader(this.channelHead, 0, binding.number, length);
      path.sendFramed(
        this.channelHead,
        CHANNEL_DATA_HEADER_LENGTH,
        payload,
        0,
        length,
        path.transport !== 'udp',
        allocation.clientPort,
        allocation.clientAddress,
      );
    } else {
      // 3. Otherwise a Data indication with XOR-PEER-ADDRESS and DATA (§11.3).
      // RFC 8489 §5: the message length is 16 bits; a datagram close to 64 KiB does not fit
      // once the head and padding are added (an IPv6 peer can send up to 65,527 bytes).
      if (length > (permission.peerIPv4 >= 0 ? DATA_INDICATION_MAX_DATA_IPV4 : DATA_INDICATION_MAX_DATA_IPV6)) return this.drop('too_large');
      if (gate !== undefined && !gate.down.admit(length, now)) return this.drop('bandwidth');
      const headLength =
        permission.peerIPv4 >= 0
          ? writeDataIndicationHeadIPv4(this.dataHead, this.ids, permission.peerIPv4, port, length)
          : writeDataIndicationHeadIPv6(this.dataHead, this.ids, permission.peerIPv6, port, length);
      path.sendFramed(this.dataHead, headLength, payload, 0, length, true, allocation.clientPort, allocation.clientAddress);
    }
    this.counters.packetsPeerToClient++;
    this.counters.bytesPeerToClient += length;
  }
}

// Which peers a node relays to: the peer policy built from the flags and the node's own
// addresses and service ports (RFC 8656 §21; the rule is in turn/peer-policy.ts), later
// joined by the ports it bound and, in a cluster, by the other nodes'.

import { networkInterfaces } from 'node:os';
import type { ServerConfig } from '../config/index.js';
import type { Logger } from '../ops/log.js';
import type { NodeInfo } from '../store/types.js';
import { createPeerPolicy, type PeerPolicy } from '../turn/peer-policy.js';

/** At most this many cluster addresses are learned (a bound on a polluted registry). */
const MAX_CLUSTER_ADDRESSES = 4096;

const isWildcard = (ip: string): boolean => ip === '0.0.0.0' || ip === '::';

/** Every address of this host's interfaces, IPv4 and IPv6 (without a zone id), and all of loopback. */
function hostAddresses(): string[] {
  const out = ['127.0.0.0/8', '::1'];
  for (const list of Object.values(networkInterfaces())) for (const a of list ?? []) out.push(a.address.split('%')[0]!);
  return out;
}

export interface NodePeerPolicy {
  readonly policy: PeerPolicy;
  /** The configured service ports (those given as 0 join once bound). */
  readonly servicePorts: readonly number[];
}

export function nodePeerPolicy(config: ServerConfig): NodePeerPolicy {
  // A socket on a wildcard takes packets for every address of the host: then every one is ours,
  // IPv4 and IPv6, and all of loopback (127.0.0.0/8 reaches a 0.0.0.0 socket, not just 127.0.0.1).
  const own = new Set<string>([...config.listeningIps, ...config.relayIps, config.metricsIp]);
  if (config.cluster) own.add(config.cluster.meshAddress);
  if ([...own].some(isWildcard)) for (const ip of hostAddresses()) own.add(ip);
  own.delete('0.0.0.0');
  own.delete('::');
  const servicePorts = [config.listeningPort, config.tls?.port ?? 0, config.metricsPort, config.cluster?.meshPort ?? 0].filter((p) => p > 0);
  const policy = createPeerPolicy({
    allowLoopbackPeers: config.allowLoopbackPeers,
    allowedPeerRanges: config.allowedPeerIps,
    deniedPeerRanges: config.deniedPeerIps,
    serverAddresses: [...own],
    servicePorts,
    // Two allocations of this server (two browsers on one TURN service) relay to each other.
    relayPorts: { min: config.minPort, max: config.maxPort },
  });
  return { policy, servicePorts };
}

/** The other nodes' relay and mesh addresses and service ports join this node's own (membership listing). */
export function learnClusterNodes(policy: PeerPolicy, nodes: readonly NodeInfo[], logger: Logger): void {
  for (const node of nodes) {
    for (const address of [node.meshAddress, ...(node.relayAddresses ?? [])]) {
      if (isWildcard(address) || policy.serverAddressCount >= MAX_CLUSTER_ADDRESSES) continue;
      try {
        policy.addServer([address], []);
      } catch {
        logger.warn({ node: node.nodeId, address }, 'cluster node announces an address that is not an IP; ignored');
      }
    }
    policy.addServer([], [node.meshPort, ...(node.servicePorts ?? [])]);
  }
}

// --relay-sockets auto|shared|per-allocation: the node's UDP relay socket factory. Shared:
// one socket per relay address, the kernel data plane steering every relayed port to it
// (docs/dataplane.md §8), so the node holds O(relay addresses) descriptors; per-allocation:
// one socket per relayed port (src/transport/udp/relay.ts), wherever the kernel path is not
// loaded.

import type { ServerConfig } from '../config/index.js';
import type { Dataplane } from '../dataplane/open.js';
import type { Logger } from '../ops/log.js';
import { SharedRelayFactory } from '../transport/udp/shared-relay.js';
import { UdpRelayFactory } from '../transport/udp/relay.js';
import type { EngineCounters } from '../turn/counters.js';
import type { RelaySocketFactory } from '../turn/ports.js';

export type RelaySocketsKind = 'shared' | 'per-allocation';

export interface NodeRelaySockets {
  readonly mode: RelaySocketsKind;
  readonly factory: RelaySocketFactory;
  /** Relayed ports the kernel steers to a shared socket (0 per allocation). */
  steeredPorts(): number;
  close(): Promise<void>;
}

/** Which model, and why; refuses `shared` without the kernel path, naming the reason. */
function choose(config: ServerConfig, dataplane: Dataplane): { mode: RelaySocketsKind; why: string } {
  const asked = config.dataplane.relaySockets;
  if (asked === 'per-allocation') return { mode: asked, why: '--relay-sockets per-allocation' };
  if (dataplane.steering !== undefined) {
    return { mode: 'shared', why: asked === 'shared' ? '--relay-sockets shared' : 'the kernel data plane is loaded (--relay-sockets auto)' };
  }
  if (asked === 'shared') {
    throw new Error(
      `--relay-sockets shared: needs the kernel data plane, which is not loaded: ${dataplane.reason ?? 'unknown'}. Use --relay-sockets auto or per-allocation`,
    );
  }
  return { mode: 'per-allocation', why: `the kernel data plane is not loaded (${dataplane.reason ?? 'unknown'})` };
}

export async function openRelaySockets(config: ServerConfig, dataplane: Dataplane, counters: EngineCounters, logger: Logger): Promise<NodeRelaySockets> {
  const { mode, why } = choose(config, dataplane);
  const onError = (err: Error): void => logger.warn({ err }, 'relay socket error');
  if (mode === 'per-allocation' || dataplane.steering === undefined) {
    const factory = new UdpRelayFactory(onError);
    logger.info({ relaySockets: 'per-allocation', reason: why }, `relay sockets: one per allocation: ${why}`);
    return { mode: 'per-allocation', factory, steeredPorts: () => 0, close: async () => factory.close() };
  }
  const factory = await SharedRelayFactory.open({
    addresses: config.relayIps,
    minPort: config.minPort,
    maxPort: config.maxPort,
    steering: dataplane.steering,
    drops: counters.drops,
    onError,
  });
  const shared = Object.fromEntries(config.relayIps.map((ip) => [ip, factory.sharedPort(ip)]));
  logger.info({ relaySockets: 'shared', reason: why, shared }, `relay sockets: one per relay address: ${why}`);
  return { mode: 'shared', factory, steeredPorts: () => factory.steeredPorts, close: () => factory.close() };
}

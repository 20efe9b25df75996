// The node's data plane (--dataplane, src/dataplane/open.ts): opened before the engine,
// which it is handed to as the ChannelOffload port; and the relay sockets on it
// (--relay-sockets, server/relay-sockets.ts).

import type { ServerConfig } from '../config/index.js';
import { type Dataplane, openDataplane } from '../dataplane/open.js';
import type { Logger } from '../ops/log.js';
import type { EngineCounters } from '../turn/counters.js';
import { type NodeRelaySockets, openRelaySockets } from './relay-sockets.js';

/** `worker`: a worker of --workers, where only the JavaScript path relays (the primary's start-up line says so). */
export function openNodeDataplane(config: ServerConfig, worker: boolean, counters: EngineCounters, logger: Logger): Promise<Dataplane> {
  return openDataplane(
    {
      mode: worker ? 'js' : config.dataplane.mode,
      interfaces: config.dataplane.interfaces,
      maxChannels: config.dataplane.maxChannels,
      listeningIps: config.listeningIps,
      relayIps: config.relayIps,
    },
    counters,
    logger,
  );
}

/** The node's data plane and its UDP relay socket factory. */
export interface NodeRelaying {
  readonly dataplane: Dataplane;
  readonly relaySockets: NodeRelaySockets;
}

/**
 * The data plane, then the relay socket factory on it. When either refuses (--dataplane
 * kernel, --relay-sockets shared without the kernel path) what was opened is closed again.
 */
export async function openNodeRelaying(config: ServerConfig, worker: boolean, counters: EngineCounters, logger: Logger): Promise<NodeRelaying> {
  const dataplane = await openNodeDataplane(config, worker, counters, logger);
  try {
    return { dataplane, relaySockets: await openRelaySockets(config, dataplane, counters, logger) };
  } catch (err) {
    await dataplane.close();
    throw err;
  }
}

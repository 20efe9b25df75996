// The node's data plane (--dataplane, src/dataplane/open.ts): opened before the engine,
// which it is handed to as the ChannelOffload port.

import type { ServerConfig } from '../config/index.js';
import { type Dataplane, openDataplane } from '../dataplane/open.js';
import type { Logger } from '../ops/log.js';
import type { EngineCounters } from '../turn/counters.js';

/** `worker`: a worker of --workers, where only the JavaScript path relays (the primary's start-up line says so). */
export function openNodeDataplane(config: ServerConfig, worker: boolean, counters: EngineCounters, logger: Logger): Promise<Dataplane> {
  return openDataplane(
    {
      mode: worker ? 'js' : config.dataplane.mode,
      interfaces: config.dataplane.interfaces,
      listeningIps: config.listeningIps,
      relayIps: config.relayIps,
    },
    counters,
    logger,
  );
}

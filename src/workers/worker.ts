// One worker process of `anyturn --workers N`: a whole anyturn server on its own
// slice of the relay port range, with UDP from the primary and its own sessions
// (udp-frontend.ts), TCP/TLS connections from the primary's shared listeners, and
// its metrics, readiness and drain relayed over IPC.

import type { ServerConfig } from '../config/index.js';
import type { Logger } from '../ops/log.js';
import { startServer, type RunningServer } from '../server.js';
import { EngineCounters } from '../turn/counters.js';
import { type FromWorker, type ToWorker, type WorkerState, asBuffer, portSlice } from './protocol.js';
import { WorkerUdpFrontend } from './udp-frontend.js';
import { detectPortSharing } from '../transport/udp/port-sharing.js';

const STATE_EVERY_MS = 1000;
/** Answers waiting in the IPC channel at most; past it they are dropped (a junk flood must not queue without bound). */
const MAX_PENDING_SENDS = 10_000;

function send(message: FromWorker, done?: () => void): boolean {
  if (!process.connected) return false;
  return process.send!(message, undefined, undefined, done);
}

/** The config a worker runs with: its port slice, its share of --total-quota and --bps-capacity, its own node id and mesh port. */
export function workerConfig(config: ServerConfig, init: Extract<ToWorker, { type: 'init' }>): ServerConfig {
  const slice = portSlice(config.minPort, config.maxPort, init.index, init.count);
  const cluster = config.cluster ? { ...config.cluster, meshPort: config.cluster.meshPort === 0 ? 0 : config.cluster.meshPort + init.index } : undefined;
  return {
    ...config,
    ...slice,
    nodeId: `${config.nodeId}/w${init.index}`,
    listeningPort: init.listeningPort,
    nonceSecret: Buffer.from(init.nonceSecret, 'hex'),
    totalQuota: config.totalQuota === 0 ? 0 : Math.ceil(config.totalQuota / init.count),
    bandwidth: { ...config.bandwidth, bpsCapacity: Math.ceil(config.bandwidth.bpsCapacity / init.count) },
    metricsPort: 0,
    drainExit: false,
    cluster,
  };
}

/** Asks the primary for what only it knows, and waits for the answer. */
function receiveInit(): Promise<Extract<ToWorker, { type: 'init' }>> {
  return new Promise((resolve) => {
    const onInit = (message: ToWorker): void => {
      if (message.type !== 'init') return;
      process.off('message', onInit);
      resolve(message);
    };
    process.on('message', onInit);
    send({ type: 'hello' });
  });
}

/** The UDP side: answers through the primary's sockets, at most MAX_PENDING_SENDS of them in the IPC channel. */
function primaryFrontend(counters: EngineCounters): WorkerUdpFrontend {
  let pendingSends = 0;
  const sent = (): void => {
    pendingSends--;
  };
  return new WorkerUdpFrontend(
    {
      send: (listener, address, port, data) => {
        if (pendingSends >= MAX_PENDING_SENDS) {
          counters.drops.send_queue_full++;
          return;
        }
        pendingSends++;
        if (!send({ type: 'send', listener, address, port, data }, sent)) pendingSends--;
      },
      stray: (listener, address, port, data) => void send({ type: 'stray', listener, address, port, data }),
    },
    counters,
  );
}

export async function runWorker(config: ServerConfig, baseLogger: Logger): Promise<void> {
  const init = await receiveInit();
  const logger = baseLogger.child({ worker: init.index });
  // Session sockets must share the port the way the primary's listeners do (the same Node: the same answer).
  await detectPortSharing();
  const counters = new EngineCounters();
  const frontend = primaryFrontend(counters);
  let running: RunningServer;
  try {
    running = await startServer(workerConfig(config, init), { logger, udpFrontend: frontend, counters });
  } catch (err) {
    logger.fatal({ err }, 'worker could not start');
    process.exit(1);
  }
  serve(running, frontend);
}

/** Reports the worker's state to the primary and does what the primary asks, until it stops. */
function serve(running: RunningServer, frontend: WorkerUdpFrontend): void {
  const state = (): WorkerState => {
    const reason = running.notReadyReason();
    return { ready: reason === undefined, reason, draining: running.isDraining(), allocations: running.engine.allocations, sessions: frontend.sessions };
  };
  let last = '';
  const report = (force: boolean): void => {
    const now = state();
    const text = JSON.stringify(now);
    if (force || text !== last) send({ type: 'state', state: now });
    last = text;
  };
  const timer = setInterval(() => report(true), STATE_EVERY_MS);
  timer.unref();

  let stopping = false;
  const stop = (): void => {
    if (stopping) return;
    stopping = true;
    clearInterval(timer);
    running
      .stop()
      .then(() => process.exit(0))
      .catch(() => process.exit(1));
  };
  process.on('message', (message: ToWorker) => {
    switch (message.type) {
      case 'packet':
        frontend.onPacket(message.listener, message.address, message.port, asBuffer(message.data));
        return;
      case 'drain':
        running.drain('primary');
        report(true);
        return;
      case 'undrain':
        running.undrain('primary');
        report(true);
        return;
      case 'metrics':
        // State first (it reaches the primary before the metrics do): the per-worker
        // gauges of this scrape then agree with the worker's own counts.
        report(false);
        void running.metrics.getMetricsAsJSON().then((metrics) => send({ type: 'metrics', id: message.id, metrics }));
        return;
      case 'stop':
        stop();
        return;
    }
  });
  // The primary is gone: nobody hands us clients or collects our answers.
  process.on('disconnect', stop);
  process.once('SIGTERM', stop);
  process.once('SIGINT', stop);
  send({ type: 'started' });
  report(true);
}

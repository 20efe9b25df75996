// The primary process of `anyturn --workers N`: it relays nothing itself.
// - It holds the UDP listening sockets (SO_REUSEPORT where Node can set it, else
//   SO_REUSEADDR: transport/udp/port-sharing.ts says why) and hands each datagram to
//   the worker the client hashes to. The worker opens a session socket connected
//   to that client once it authenticates an Allocate, and from then on the kernel
//   delivers the client's packets to the worker, not here.
// - node:cluster holds the TCP/TLS listening sockets here and shares connections out.
// - It serves the ops endpoint: /metrics summed over the workers, /readyz, drain.
// - It restarts a worker that dies, and stops them all on SIGTERM.

import type dgram from 'node:dgram';
import type { ServerConfig } from '../config/index.js';
import type { Logger } from '../ops/log.js';
import { NodeLifecycle, type RunningNode } from '../server/lifecycle.js';
import { detectPortSharing } from '../transport/udp/port-sharing.js';
import { bindListeners } from './listening.js';
import { WorkerPool } from './pool.js';
import { primaryMetrics } from './primary-metrics.js';

export type RunningPrimary = RunningNode;

/** Every datagram to a listening socket goes to the worker its client hashes to. */
function dispatchDatagrams(sockets: readonly dgram.Socket[], pool: WorkerPool, logger: Logger): void {
  sockets.forEach((socket, listener) => {
    socket.on('message', (msg, rinfo) => {
      // Nothing can be answered to port 0 (Socket.send would throw); counted, never logged per packet.
      if (rinfo.port === 0) {
        pool.dispatch.source_port_zero++;
        return;
      }
      pool.handOff(listener, rinfo.address, rinfo.port, msg);
    });
    socket.on('error', (err) => logger.warn({ err }, 'listening socket error'));
  });
}

export async function startPrimary(config: ServerConfig, logger: Logger): Promise<RunningPrimary> {
  if ((await detectPortSharing()) === 'reuseaddr') {
    logger.warn(
      {},
      "this Node cannot set SO_REUSEPORT (Node >= 22.12 can): the UDP port is shared with SO_REUSEADDR, which lets any local user bind it and capture a client's datagrams; run --workers only on hosts without untrusted local users",
    );
  }
  const sockets = await bindListeners(config);
  const listeningPort = sockets[0]!.address().port;
  const lifecycle = new NodeLifecycle(logger);
  // Every worker checks every other's nonces: one secret for all (random per start unless given).
  const pool = new WorkerPool({ count: config.workers, sockets, listeningPort, nonceSecret: config.nonceSecret, logger, isDraining: () => lifecycle.draining });
  lifecycle.watch({
    allocations: () => pool.allocations(),
    notReadyReason: () => pool.notReadyReason(),
    drainReached: () => pool.allDraining(),
    onDrain: (draining) => pool.tell({ type: draining ? 'drain' : 'undrain' }),
  });
  const metrics = primaryMetrics(pool);
  dispatchDatagrams(sockets, pool, logger);
  try {
    await pool.start();
  } catch (err) {
    for (const s of sockets) s.close();
    throw err;
  }
  const opsPort = await lifecycle.startOps(config, metrics);
  logger.info(
    {
      workers: config.workers,
      // The kernel data plane serves one process (docs/dataplane.md): workers relay in JavaScript.
      dataplane: 'js',
      listening: config.listeningIps.map((address) => ({ address, port: listeningPort })),
      relay: config.relayIps,
      ports: `${config.minPort}-${config.maxPort}`,
      pids: pool.slots.map((s) => s.worker?.process.pid),
      metrics: opsPort > 0 ? `${config.metricsIp}:${opsPort}` : undefined,
    },
    'anyturn ready',
  );
  return {
    drain: (source) => lifecycle.drain(source),
    undrain: (source) => lifecycle.undrain(source),
    drained: () => lifecycle.drained(),
    stop: () =>
      lifecycle.stop(async () => {
        await pool.stop();
        await lifecycle.closeOps();
        for (const s of sockets) s.close();
      }),
  };
}

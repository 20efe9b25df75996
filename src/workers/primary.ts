// The primary process of `anyturn --workers N`: it relays nothing itself.
// - It holds the UDP listening sockets (SO_REUSEPORT where Node can set it, else
//   SO_REUSEADDR: shared-port.ts says why) and hands each datagram to
//   the worker the client hashes to. The worker opens a session socket connected
//   to that client once it authenticates an Allocate, and from then on the kernel
//   delivers the client's packets to the worker, not here.
// - node:cluster holds the TCP/TLS listening sockets here and shares connections out.
// - It serves the ops endpoint: /metrics summed over the workers, /readyz, drain.
// - It restarts a worker that dies, and stops them all on SIGTERM.

import cluster, { type Worker } from 'node:cluster';
import dgram from 'node:dgram';
import net from 'node:net';
import { AggregatorRegistry, Counter, Gauge, Registry, collectDefaultMetrics, type MetricObjectWithValues, type MetricValue } from 'prom-client';
import type { ServerConfig } from '../config/index.js';
import { OpsHttpServer } from '../ops/http.js';
import type { Logger } from '../ops/log.js';
import { literalLookup } from '../transport/lookup.js';
import { type FromWorker, type ToWorker, type WorkerState, asBuffer, workerFor } from './protocol.js';
import { IpcWindow, detectPortSharing, sharedPortOptions } from './shared-port.js';

const SOCKET_BUFFER_BYTES = 4 * 1024 * 1024;
const RESTART_DELAY_MS = 500;
const METRICS_TIMEOUT_MS = 2000;
const DRAINED_POLL_MS = 200;
/** With --listening-port 0: tries at a port number free for UDP on every address and for TCP. */
const SAME_PORT_ATTEMPTS = 20;

export interface RunningPrimary {
  drain(source: string): void;
  undrain(source: string): void;
  /** Resolves once draining and no worker has an allocation left (or it is stopping). */
  drained(): Promise<void>;
  stop(): Promise<void>;
}

interface Slot {
  readonly index: number;
  worker: Worker | undefined;
  started: boolean;
  state: WorkerState | undefined;
  restarts: number;
  /** Handed-over datagrams not yet written to this worker's IPC channel (a new window per worker process). */
  ipc: IpcWindow;
}

function bindUdp(address: string, port: number, reuseAddr = true): Promise<dgram.Socket> {
  return new Promise((resolve, reject) => {
    const socket = dgram.createSocket({
      type: address.includes(':') ? 'udp6' : 'udp4',
      // Workers' session sockets bind this same address and port.
      ...(reuseAddr ? sharedPortOptions() : { reuseAddr: false }),
      recvBufferSize: SOCKET_BUFFER_BYTES,
      sendBufferSize: SOCKET_BUFFER_BYTES,
      lookup: literalLookup,
    });
    socket.once('error', reject);
    socket.bind({ address, port, exclusive: true }, () => {
      socket.off('error', reject);
      resolve(socket);
    });
  });
}

function tcpPortFree(address: string, port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const server = net.createServer();
    server.once('error', () => resolve(false));
    server.listen({ host: address, port, exclusive: true }, () => server.close(() => resolve(true)));
  });
}

/** One UDP socket per listening address, all on one port number (with port 0: one free for TCP too). */
async function bindListeners(config: ServerConfig): Promise<dgram.Socket[]> {
  for (let attempt = 0; ; attempt++) {
    const sockets: dgram.Socket[] = [];
    try {
      let port = config.listeningPort;
      for (const ip of config.listeningIps) {
        // SO_REUSEADDR would let this bind next to another server's socket and split its
        // clients: first make sure nobody holds the port, as a plain bind would.
        const probe = await bindUdp(ip, port, false);
        port = probe.address().port;
        await new Promise<void>((resolve) => probe.close(() => resolve()));
        const socket = await bindUdp(ip, port);
        sockets.push(socket);
      }
      if (config.listeningPort !== 0 || !config.tcp) return sockets;
      let free = true;
      for (const ip of config.listeningIps) free &&= await tcpPortFree(ip, port);
      if (free) return sockets;
      throw Object.assign(new Error(`port ${port} is taken for TCP`), { code: 'EADDRINUSE' });
    } catch (err) {
      for (const s of sockets) s.close();
      if (config.listeningPort !== 0 || attempt >= SAME_PORT_ATTEMPTS) throw err;
    }
  }
}

export async function startPrimary(config: ServerConfig, logger: Logger): Promise<RunningPrimary> {
  const count = config.workers;
  // Every worker checks every other's nonces: one secret for all (random per start unless given).
  const nonceSecret = config.nonceSecret;
  if ((await detectPortSharing()) === 'reuseaddr') {
    logger.warn({}, 'this Node cannot set SO_REUSEPORT (Node >= 22.12 can): the UDP port is shared with SO_REUSEADDR, which lets any local user bind it and capture a client\'s datagrams; run --workers only on hosts without untrusted local users');
  }
  const sockets = await bindListeners(config);
  const listeningPort = sockets[0]!.address().port;

  const registry = new Registry();
  collectDefaultMetrics({ register: registry, prefix: 'anyturn_process_' });
  const slots: Slot[] = Array.from({ length: count }, (_, index) => ({ index, worker: undefined, started: false, state: undefined, restarts: 0, ipc: new IpcWindow() }));
  const handoffs = new Array<number>(count).fill(0);
  const dispatch = { strays: 0, unavailable: 0, answers: 0, ipc_full: 0, source_port_zero: 0, unsendable: 0 };
  new Gauge({
    name: 'anyturn_workers',
    help: 'Worker processes running and serving (--workers)',
    registers: [registry],
    collect() {
      this.set(slots.filter((s) => s.started).length);
    },
  });
  new Gauge({
    name: 'anyturn_worker_allocations',
    help: 'Live allocations by worker process',
    labelNames: ['worker'],
    registers: [registry],
    collect() {
      for (const s of slots) this.set({ worker: String(s.index) }, s.state?.allocations ?? 0);
    },
  });
  new Gauge({
    name: 'anyturn_worker_udp_sessions',
    help: "UDP clients a worker serves on its own connected socket (their packets bypass the primary)",
    labelNames: ['worker'],
    registers: [registry],
    collect() {
      for (const s of slots) this.set({ worker: String(s.index) }, s.state?.sessions ?? 0);
    },
  });
  const restartsTotal = new Counter({ name: 'anyturn_worker_restarts_total', help: 'Worker processes that died and were started again', registers: [registry] });
  let seenHandoffs = new Array<number>(count).fill(0);
  new Counter({
    name: 'anyturn_worker_handoffs_total',
    help: 'Datagrams the primary handed to a worker: clients without a session yet (the first packets, Binding, unauthenticated requests)',
    labelNames: ['worker'],
    registers: [registry],
    collect() {
      for (let i = 0; i < count; i++) if (handoffs[i]! > seenHandoffs[i]!) this.inc({ worker: String(i) }, handoffs[i]! - seenHandoffs[i]!);
      seenHandoffs = [...handoffs];
    },
  });
  let seenDispatch = { ...dispatch };
  new Counter({
    name: 'anyturn_primary_datagrams_total',
    help: 'Other datagrams through the primary: answers sent for workers, strays re-dispatched, drops because the worker was not running or its IPC channel was full, datagrams from source port 0 dropped, answers that could not be sent',
    labelNames: ['kind'],
    registers: [registry],
    collect() {
      for (const kind of ['strays', 'unavailable', 'answers', 'ipc_full', 'source_port_zero', 'unsendable'] as const) if (dispatch[kind] > seenDispatch[kind]) this.inc({ kind }, dispatch[kind] - seenDispatch[kind]);
      seenDispatch = { ...dispatch };
    },
  });

  const post = (slot: Slot, message: ToWorker): boolean => {
    const w = slot.worker;
    if (!w || !w.isConnected()) return false;
    w.send(message);
    return true;
  };
  const handOff = (l: number, a: string, p: number, d: Buffer): void => {
    const slot = slots[workerFor(a, p, count)]!;
    const w = slot.worker;
    if (!slot.started || !w || !w.isConnected()) {
      dispatch.unavailable++;
      return;
    }
    // IPC backpressure: send() queues here when the channel is full; bound that queue.
    if (!slot.ipc.acquire()) {
      dispatch.ipc_full++;
      return;
    }
    w.send({ t: 'packet', l, a, p, d } satisfies ToWorker, undefined, undefined, slot.ipc.release);
    handoffs[slot.index]!++;
  };
  sockets.forEach((socket, l) => {
    socket.on('message', (msg, rinfo) => {
      // Nothing can be answered to port 0 (Socket.send would throw); counted, never logged per packet.
      if (rinfo.port === 0) {
        dispatch.source_port_zero++;
        return;
      }
      handOff(l, rinfo.address, rinfo.port, msg);
    });
    socket.on('error', (err) => logger.warn({ err }, 'listening socket error'));
  });

  let stopping = false;
  let draining = false;
  const pendingMetrics = new Map<number, (m: MetricObjectWithValues<MetricValue<string>>[]) => void>();
  let metricsId = 0;
  let resolveAllStarted: () => void = () => undefined;
  let failStart: (err: Error) => void = () => undefined;
  let starting = true;
  const allStarted = new Promise<void>((resolve, reject) => {
    resolveAllStarted = resolve;
    failStart = reject;
  });

  cluster.setupPrimary({ serialization: 'advanced' });
  const fork = (slot: Slot): void => {
    const worker = cluster.fork();
    slot.worker = worker;
    slot.started = false;
    slot.state = undefined;
    slot.ipc = new IpcWindow();
    worker.on('message', (message: FromWorker) => {
      switch (message.t) {
        case 'hello':
          worker.send({ t: 'init', index: slot.index, count, listeningPort, nonceSecret: nonceSecret.toString('hex') } satisfies ToWorker);
          if (draining) worker.send({ t: 'drain' } satisfies ToWorker);
          return;
        case 'started':
          slot.started = true;
          if (slots.every((s) => s.started)) resolveAllStarted();
          return;
        case 'state':
          slot.state = message.state;
          return;
        case 'send': {
          const socket = sockets[message.l];
          if (!socket) return;
          const d = asBuffer(message.d);
          // A worker's answer must never be able to throw here: that would end the primary and every worker.
          try {
            socket.send(d, 0, d.length, message.p, message.a);
            dispatch.answers++;
          } catch {
            dispatch.unsendable++;
          }
          return;
        }
        case 'stray':
          dispatch.strays++;
          handOff(message.l, message.a, message.p, asBuffer(message.d));
          return;
        case 'metrics':
          pendingMetrics.get(message.id)?.(message.metrics);
          return;
      }
    });
    worker.on('exit', (code, signal) => {
      if (slot.worker !== worker) return;
      slot.worker = undefined;
      slot.started = false;
      if (stopping) return;
      if (starting) {
        // Not a crash to recover from: the worker could not start (its log says why). Starting again would loop.
        failStart(new Error(`worker ${slot.index} exited (${signal ?? `code ${String(code)}`}) before it was ready; its log line above says why`));
        return;
      }
      logger.error({ worker: slot.index, code, signal }, 'worker died: its allocations are gone; starting it again');
      slot.restarts++;
      restartsTotal.inc();
      setTimeout(() => {
        if (!stopping) fork(slot);
      }, RESTART_DELAY_MS).unref();
    });
  };
  for (const slot of slots) fork(slot);
  try {
    await allStarted;
  } catch (err) {
    stopping = true;
    for (const slot of slots) slot.worker?.kill('SIGKILL');
    for (const s of sockets) s.close();
    throw err;
  }
  starting = false;

  const workerMetrics = (slot: Slot): Promise<MetricObjectWithValues<MetricValue<string>>[]> =>
    new Promise((resolve) => {
      const id = ++metricsId;
      const timer = setTimeout(() => {
        pendingMetrics.delete(id);
        resolve([]);
      }, METRICS_TIMEOUT_MS);
      pendingMetrics.set(id, (m) => {
        clearTimeout(timer);
        pendingMetrics.delete(id);
        resolve(m);
      });
      if (!post(slot, { t: 'metrics', id })) {
        clearTimeout(timer);
        pendingMetrics.delete(id);
        resolve([]);
      }
    });
  const summed = {
    contentType: registry.contentType,
    async metrics(): Promise<string> {
      const workers = await Promise.all(slots.filter((s) => s.started).map(workerMetrics));
      // Own series after the workers answered: each sent its state just before its metrics,
      // so anyturn_worker_allocations{worker} and the summed anyturn_allocations agree.
      return AggregatorRegistry.aggregate([await registry.getMetricsAsJSON(), ...workers]).metrics();
    },
  };

  const allocations = (): number => slots.reduce((n, s) => n + (s.state?.allocations ?? 0), 0);
  const drainAll = (source: string): void => {
    if (!draining) logger.warn({ source, allocations: allocations() }, 'draining: new Allocates get 403, live allocations go on');
    draining = true;
    for (const slot of slots) post(slot, { t: 'drain' });
  };
  const undrainAll = (source: string): void => {
    if (draining) logger.warn({ source }, 'drain ended: accepting new Allocates again');
    draining = false;
    for (const slot of slots) post(slot, { t: 'undrain' });
  };
  const notReadyReason = (): string | undefined => {
    if (draining) return 'draining';
    for (const slot of slots) {
      if (!slot.started) return `worker ${slot.index} not running`;
      // Drain is the primary's to say (above): a worker's 'draining' is a state sent before
      // the undrain reached it, and must not keep /readyz at 503 after POST /undrain answered.
      if (slot.state && !slot.state.ready && slot.state.reason !== 'draining') return `worker ${slot.index}: ${slot.state.reason ?? 'not ready'}`;
    }
    return undefined;
  };

  let ops: OpsHttpServer | undefined;
  if (config.metricsPort > 0) {
    ops = new OpsHttpServer(config.metricsIp, config.metricsPort, summed, { notReadyReason }, {
      token: config.adminToken,
      drain: () => drainAll('POST /drain'),
      undrain: () => undrainAll('POST /undrain'),
      state: () => ({ draining, allocations: allocations() }),
    }, { metricsCacheMs: config.metricsCacheMs });
    await ops.start();
  }
  logger.info(
    {
      workers: count,
      listening: config.listeningIps.map((address) => ({ address, port: listeningPort })),
      relay: config.relayIps,
      ports: `${config.minPort}-${config.maxPort}`,
      pids: slots.map((s) => s.worker?.process.pid),
      metrics: ops ? `${config.metricsIp}:${ops.port}` : undefined,
    },
    'anyturn ready',
  );

  let stopped: Promise<void> | undefined;
  let drainedWait: Promise<void> | undefined;
  return {
    drain: drainAll,
    undrain: undrainAll,
    drained: () =>
      (drainedWait ??= new Promise<void>((resolve) => {
        const poll = setInterval(() => {
          if (stopping || (draining && slots.every((s) => s.state?.draining === true) && allocations() === 0)) {
            clearInterval(poll);
            resolve();
          }
        }, DRAINED_POLL_MS);
        poll.unref();
      })),
    stop() {
      stopped ??= (async () => {
        stopping = true;
        const exits = slots.map(
          (slot) =>
            new Promise<void>((resolve) => {
              const w = slot.worker;
              if (!w || w.isDead()) return resolve();
              w.once('exit', () => resolve());
              if (!post(slot, { t: 'stop' })) w.kill('SIGTERM');
            }),
        );
        await Promise.all(exits);
        await ops?.close();
        for (const s of sockets) s.close();
        logger.info({}, 'anyturn stopped');
      })();
      return stopped;
    },
  };
}

// The primary's worker processes: forking them, the messages to and from them, handing
// them datagrams, restarting one that dies, and stopping them all.

import cluster, { type Worker } from 'node:cluster';
import type dgram from 'node:dgram';
import type { MetricObjectWithValues, MetricValue } from 'prom-client';
import type { Logger } from '../ops/log.js';
import { IpcWindow } from './ipc-window.js';
import { type FromWorker, type ToWorker, type WorkerState, asBuffer, workerFor } from './protocol.js';

const RESTART_DELAY_MS = 500;
const METRICS_TIMEOUT_MS = 2000;

type WorkerMetrics = MetricObjectWithValues<MetricValue<string>>[];

export interface Slot {
  readonly index: number;
  worker: Worker | undefined;
  started: boolean;
  state: WorkerState | undefined;
  restarts: number;
  /** Handed-over datagrams not yet written to this worker's IPC channel (a new window per worker process). */
  ipc: IpcWindow;
}

export interface PoolOptions {
  readonly count: number;
  /** The primary's listening sockets, by --listening-ip index: workers' answers leave from them. */
  readonly sockets: readonly dgram.Socket[];
  readonly listeningPort: number;
  /** Every worker checks every other's nonces: one secret for all. */
  readonly nonceSecret: Buffer;
  readonly logger: Logger;
  /** Whether the node drains: a worker that starts (again) is told. */
  isDraining(): boolean;
}

/** Datagrams through the primary other than hand-overs, by kind (anyturn_primary_datagrams_total). */
export const DISPATCH_KINDS = ['strays', 'unavailable', 'answers', 'ipc_full', 'source_port_zero', 'unsendable'] as const;
export type DispatchCounts = Record<(typeof DISPATCH_KINDS)[number], number>;

export class WorkerPool {
  readonly slots: Slot[];
  /** Datagrams handed to each worker. */
  readonly handoffs: number[];
  readonly dispatch: DispatchCounts = { strays: 0, unavailable: 0, answers: 0, ipc_full: 0, source_port_zero: 0, unsendable: 0 };
  /** Workers that died and were started again. */
  restarts = 0;
  private stopping = false;
  private starting = true;
  private readonly pendingMetrics = new Map<number, (m: WorkerMetrics) => void>();
  private metricsId = 0;
  private allStarted: { resolve: () => void; reject: (err: Error) => void } | undefined;

  constructor(private readonly o: PoolOptions) {
    this.slots = Array.from({ length: o.count }, (_, index) => ({
      index,
      worker: undefined,
      started: false,
      state: undefined,
      restarts: 0,
      ipc: new IpcWindow(),
    }));
    this.handoffs = new Array<number>(o.count).fill(0);
  }

  /** Forks every worker and resolves once all serve; rejects (and kills them) if one exits before. */
  async start(): Promise<void> {
    cluster.setupPrimary({ serialization: 'advanced' });
    const started = new Promise<void>((resolve, reject) => {
      this.allStarted = { resolve, reject };
    });
    for (const slot of this.slots) this.fork(slot);
    try {
      await started;
    } catch (err) {
      this.stopping = true;
      for (const slot of this.slots) slot.worker?.kill('SIGKILL');
      throw err;
    }
    this.starting = false;
  }

  /** Hands a client's datagram to the worker it hashes to (per packet: no object but the message). */
  handOff(listener: number, address: string, port: number, data: Buffer): void {
    const slot = this.slots[workerFor(address, port, this.o.count)]!;
    const w = slot.worker;
    if (!slot.started || !w?.isConnected()) {
      this.dispatch.unavailable++;
      return;
    }
    // IPC backpressure: send() queues here when the channel is full; bound that queue.
    if (!slot.ipc.acquire()) {
      this.dispatch.ipc_full++;
      return;
    }
    w.send({ type: 'packet', listener, address, port, data } satisfies ToWorker, undefined, undefined, slot.ipc.release);
    this.handoffs[slot.index]!++;
  }

  private post(slot: Slot, message: ToWorker): boolean {
    const w = slot.worker;
    if (!w?.isConnected()) return false;
    w.send(message);
    return true;
  }

  /** Tells every running worker. */
  tell(message: ToWorker): void {
    for (const slot of this.slots) this.post(slot, message);
  }

  private fork(slot: Slot): void {
    const worker = cluster.fork();
    slot.worker = worker;
    slot.started = false;
    slot.state = undefined;
    slot.ipc = new IpcWindow();
    worker.on('message', (message: FromWorker) => this.onMessage(slot, worker, message));
    worker.on('exit', (code, signal) => this.onExit(slot, worker, code, signal));
  }

  private onMessage(slot: Slot, worker: Worker, message: FromWorker): void {
    switch (message.type) {
      case 'hello':
        worker.send({
          type: 'init',
          index: slot.index,
          count: this.o.count,
          listeningPort: this.o.listeningPort,
          nonceSecret: this.o.nonceSecret.toString('hex'),
        } satisfies ToWorker);
        if (this.o.isDraining()) worker.send({ type: 'drain' } satisfies ToWorker);
        return;
      case 'started':
        slot.started = true;
        if (this.slots.every((s) => s.started)) this.allStarted?.resolve();
        return;
      case 'state':
        slot.state = message.state;
        return;
      case 'send':
        return this.answer(message.listener, message.address, message.port, asBuffer(message.data));
      case 'stray':
        this.dispatch.strays++;
        this.handOff(message.listener, message.address, message.port, asBuffer(message.data));
        return;
      case 'metrics':
        this.pendingMetrics.get(message.id)?.(message.metrics);
        return;
    }
  }

  /** Sends a worker's answer from listening socket `listener`. */
  private answer(listener: number, address: string, port: number, data: Buffer): void {
    const socket = this.o.sockets[listener];
    if (!socket) return;
    // A worker's answer must never be able to throw here: that would end the primary and every worker.
    try {
      socket.send(data, 0, data.length, port, address);
      this.dispatch.answers++;
    } catch {
      this.dispatch.unsendable++;
    }
  }

  private onExit(slot: Slot, worker: Worker, code: number | null, signal: string | null): void {
    if (slot.worker !== worker) return;
    slot.worker = undefined;
    slot.started = false;
    if (this.stopping) return;
    if (this.starting) {
      // Not a crash to recover from: the worker could not start (its log says why). Starting again would loop.
      this.allStarted?.reject(new Error(`worker ${slot.index} exited (${signal ?? `code ${String(code)}`}) before it was ready; its log line above says why`));
      return;
    }
    this.o.logger.error({ worker: slot.index, code, signal }, 'worker died: its allocations are gone; starting it again');
    slot.restarts++;
    this.restarts++;
    setTimeout(() => {
      if (!this.stopping) this.fork(slot);
    }, RESTART_DELAY_MS).unref();
  }

  /** A worker's metrics as JSON; none if it does not answer within METRICS_TIMEOUT_MS. */
  metricsOf(slot: Slot): Promise<WorkerMetrics> {
    return new Promise((resolve) => {
      const id = ++this.metricsId;
      const done = (m: WorkerMetrics): void => {
        clearTimeout(timer);
        this.pendingMetrics.delete(id);
        resolve(m);
      };
      const timer = setTimeout(() => done([]), METRICS_TIMEOUT_MS);
      this.pendingMetrics.set(id, done);
      if (!this.post(slot, { type: 'metrics', id })) done([]);
    });
  }

  /** Live allocations over every worker (as each last reported). */
  allocations(): number {
    return this.slots.reduce((n, s) => n + (s.state?.allocations ?? 0), 0);
  }

  /** Why the workers cannot take new clients, drain aside; undefined when they all can. */
  notReadyReason(): string | undefined {
    for (const slot of this.slots) {
      if (!slot.started) return `worker ${slot.index} not running`;
      // Drain is the primary's to say: a worker's 'draining' is a state sent before the
      // undrain reached it, and must not keep /readyz at 503 after POST /undrain answered.
      if (slot.state && !slot.state.ready && slot.state.reason !== 'draining') return `worker ${slot.index}: ${slot.state.reason ?? 'not ready'}`;
    }
    return undefined;
  }

  /** Every worker has said it drains. */
  allDraining(): boolean {
    return this.slots.every((s) => s.state?.draining === true);
  }

  /** Asks every worker to stop (SIGTERM when its channel is gone) and resolves once all have exited. */
  async stop(): Promise<void> {
    this.stopping = true;
    const exits = this.slots.map(
      (slot) =>
        new Promise<void>((resolve) => {
          const w = slot.worker;
          if (!w || w.isDead()) return resolve();
          w.once('exit', () => resolve());
          if (!this.post(slot, { type: 'stop' })) w.kill('SIGTERM');
        }),
    );
    await Promise.all(exits);
  }
}

// --dataplane auto|kernel|js: whether this node relays ChannelData in the kernel, on
// which interfaces, and why not (docs/dataplane.md). The composition root calls
// openDataplane before it builds the engine and hands the engine `offload`.

import { networkInterfaces } from 'node:os';
import type { EngineCounters } from '../turn/counters.js';
import type { EngineLogger } from '../turn/ports.js';
import { DataplaneUnavailableError, KernelDataplane } from './kernel/kernel-dataplane.js';
import { KernelOffload } from './offload.js';

/** How often the kernel's counters are read back into the engine's. */
const POLL_MS = 1000;

export interface DataplaneOptions {
  readonly mode: 'auto' | 'kernel' | 'js';
  /** --dataplane-interface; empty: the interfaces holding the addresses below. */
  readonly interfaces: readonly string[];
  /** --dataplane-channels (default: KernelDataplane's). */
  readonly maxChannels?: number;
  readonly listeningIps: readonly string[];
  readonly relayIps: readonly string[];
  /** Why the kernel path cannot serve this process whatever the machine allows (--workers), if so. */
  readonly notForThisProcess?: string;
}

/** What /metrics and the start-up line say about the data plane. */
export interface DataplaneStatus {
  readonly mode: 'kernel' | 'js';
  /** With 'js' under --dataplane auto: why not the kernel. */
  readonly reason: string | undefined;
  readonly interfaces: readonly string[];
  /** Channel entries in the kernel's maps now. */
  entries(): number;
  /** Channels the kernel's maps refused so far (full, or not relayable there): relayed in JavaScript. */
  refused(): number;
  /** The program's own counters (relayed per direction, passed to user space per reason), as of the last read. */
  totals(): Readonly<Record<string, number>>;
  /** Why the kernel path stopped after it loaded (its helper died), or undefined: mode and reason then say 'js' and why. */
  stopped(): string | undefined;
}

/** The kernel's port steering (docs/dataplane.md §8), for shared relay sockets (src/transport/udp/shared-relay.ts). */
export interface KernelSteering {
  shareSocket(address: string, sharedPort: number): Promise<void>;
  steer(address: string, port: number, sharedPort: number): Promise<void>;
  unsteer(address: string, port: number): void;
  readonly steering: boolean;
}

export interface Dataplane extends DataplaneStatus {
  /** Given to the engine (EngineOptions.offload); undefined on the JavaScript path. */
  readonly offload: KernelOffload | undefined;
  /** The kernel's port steering; undefined on the JavaScript path. */
  readonly steering: KernelSteering | undefined;
  close(): Promise<void>;
}

/**
 * The non-loopback interfaces that hold one of `addresses` (os.networkInterfaces sees this
 * network namespace). Traffic for an address on lo (an anycast address) arrives on other
 * interfaces, which only the operator can name: --dataplane-interface.
 */
export function interfacesHolding(addresses: readonly string[]): string[] {
  const wanted = new Set(addresses);
  const found: string[] = [];
  for (const [name, list] of Object.entries(networkInterfaces())) {
    if (list?.some((a) => !a.internal && wanted.has(a.address))) found.push(name);
  }
  return found.sort();
}

function jsPath(reason: string | undefined): Dataplane {
  return {
    mode: 'js',
    reason,
    interfaces: [],
    offload: undefined,
    steering: undefined,
    entries: () => 0,
    refused: () => 0,
    totals: () => ({}),
    stopped: () => undefined,
    close: async () => undefined,
  };
}

/** Why the kernel path cannot be tried, before loading anything; undefined when it can. */
function preconditions(o: DataplaneOptions, interfaces: readonly string[]): string | undefined {
  if (o.notForThisProcess) return o.notForThisProcess;
  if (o.listeningIps.length === 0 || o.listeningIps.some((ip) => ip === '0.0.0.0' || ip === '::')) {
    return 'a wildcard listening address: the kernel answers from the address the client used, so give --listening-ip';
  }
  if (interfaces.length === 0) {
    return 'no interface other than loopback holds --listening-ip or --relay-ip; name the interfaces client and peer packets arrive on with --dataplane-interface';
  }
  return undefined;
}

/**
 * Loads the kernel path as --dataplane asks. 'kernel' rejects with the reason it did not
 * load; 'auto' falls back to the JavaScript path and logs why, once.
 */
export async function openDataplane(o: DataplaneOptions, counters: EngineCounters, logger: EngineLogger): Promise<Dataplane> {
  if (o.mode === 'js') return jsPath('--dataplane js');
  const interfaces = o.interfaces.length > 0 ? [...o.interfaces] : interfacesHolding([...o.listeningIps, ...o.relayIps]);
  let reason = preconditions(o, interfaces);
  let kernel: KernelDataplane | undefined;
  if (reason === undefined) {
    try {
      kernel = await KernelDataplane.open({ interfaces, ...(o.maxChannels === undefined ? {} : { maxEntries: o.maxChannels }) });
    } catch (err) {
      reason = err instanceof DataplaneUnavailableError ? err.reason : String((err as Error).message ?? err);
    }
  }
  if (!kernel) {
    if (o.mode === 'kernel')
      throw new Error(`--dataplane kernel: the kernel data plane did not load: ${reason}. Use --dataplane auto or js to relay in JavaScript`);
    logger.info({ dataplane: 'js', reason }, `kernel data plane off: ${reason}`);
    return jsPath(reason);
  }
  return kernelPath(kernel, counters, logger);
}

function kernelPath(kernel: KernelDataplane, counters: EngineCounters, logger: EngineLogger): Dataplane {
  const offload = new KernelOffload(kernel, counters, logger);
  let totals: Readonly<Record<string, number>> = {};
  let closed = false;
  let stopped: string | undefined;
  const read = async (): Promise<void> => {
    const all = await kernel.readTotals();
    offload.accountTotals(all);
    // The byte totals are in anyturn_relayed_bytes_total (through the engine's counters); the rest are packets by event.
    const packets: Record<string, number> = {};
    for (const [name, value] of Object.entries(all)) if (!name.startsWith('bytes_')) packets[name] = value;
    totals = packets;
  };
  const timer = setInterval(() => {
    read().catch((err: unknown) => logger.warn({ err }, 'reading the kernel data plane counters failed'));
  }, POLL_MS);
  timer.unref();
  kernel.onError = (message) => logger.warn({ dataplane: 'kernel', error: message }, 'the kernel data plane refused a map write');
  kernel.onExit = (why) => {
    if (closed) return;
    clearInterval(timer);
    offload.markDead();
    stopped = `the kernel data plane's helper stopped: ${why}`;
    // With shared relay sockets (docs/dataplane.md §8) no new relayed port can be steered
    // any more: the message says so, for an operator to restart the node.
    logger.error(
      { dataplane: 'js', reason: why },
      'kernel data plane stopped: ChannelData is relayed in JavaScript from now on; with shared relay sockets no new relayed port can be steered (new Allocates get 508): restart the node',
    );
  };
  logger.info({ dataplane: 'kernel', interfaces: kernel.interfaces }, 'kernel data plane attached');
  return {
    get mode() {
      return stopped === undefined ? 'kernel' : 'js';
    },
    get reason() {
      return stopped;
    },
    stopped: () => stopped,
    interfaces: kernel.interfaces,
    offload,
    steering: kernel,
    entries: () => offload.size,
    refused: () => offload.refused,
    totals: () => totals,
    close: async () => {
      if (closed) return;
      closed = true;
      clearInterval(timer);
      // The last counts first, so the final scrape or log misses nothing the kernel relayed.
      await read().catch(() => undefined);
      await kernel.close();
    },
  };
}

// The kernel data plane behind one class (docs/dataplane.md): the engine installs a
// bound channel (both directions), updates its expiry, removes it, and reads back the
// traffic the kernel relayed for it. Everything below is native/dataplane/: the tc
// program (relay.bpf.c) and the helper that loads it and writes its maps (loader.c).
//
// install/update/remove return at once: they write to the helper's stdin, and the pipe
// keeps them in order with every later command. An error the helper reports for one of
// them (a full map, say) is counted in readTotals()'s `command_errors` and passed to
// `onError` when set. flush() waits until the kernel holds all of them.

import {
  type ChannelEntries,
  encodeChannel,
  type KernelChannel,
  parseCounters,
  parseTotals,
  STEER_RELAY,
  STEER_SHARED,
  steerKey,
  steerValue,
} from './entries.js';
import { DataplaneUnavailableError, defaultBuildDir, Helper } from './loader.js';

export type { KernelChannel } from './entries.js';
export { DataplaneUnavailableError } from './loader.js';

export interface KernelTraffic {
  readonly handle: number;
  readonly toPeerPackets: number;
  readonly toPeerBytes: number;
  readonly toClientPackets: number;
  readonly toClientBytes: number;
}

export interface KernelDataplaneOptions {
  readonly interfaces: readonly string[];
  /** Size of each map: bound channels at most (default DEFAULT_MAX_ENTRIES). */
  readonly maxEntries?: number;
  /** Where relay.bpf.o and anyturn-dataplane are (default: build/dataplane of this package). */
  readonly buildDir?: string;
  /** Run the helper in this network namespace (`ip netns exec`): for tests. */
  readonly namespace?: string;
}

/**
 * 262,144 channels (--dataplane-channels): each costs a c2p and a p2c hash entry
 * (allocated on install) and a counter slot of 32 bytes (allocated up front: 8 MiB at this
 * size). 65,536 refused a third of the channels of a node at 100,000 allocations.
 */
export const DEFAULT_MAX_ENTRIES = 262_144;
const MAX_MAX_ENTRIES = 1 << 24;
/** Counter slots asked for in one `read` line. */
const READ_BATCH = 512;
const INTERFACE_NAME = /^[A-Za-z0-9_.:@-]{1,15}$/;

type Counts = [number, number, number, number];
const NOTHING: Readonly<Counts> = [0, 0, 0, 0];

export class KernelDataplane {
  /** Called once if the helper dies unexpectedly (the kernel path is gone). */
  onExit: ((reason: string) => void) | undefined;
  /** Called with the helper's answer when an install, update or remove failed in the kernel. */
  onError: ((message: string) => void) | undefined;

  /** Handles installed and not removed (their map keys are worked out again from the channel when removed). */
  private readonly live = new Set<number>();
  /** Removed handles whose last traffic the next readTraffic() reports. */
  private readonly removed = new Set<number>();
  /** The counters readTraffic() last reported, per handle it read (none until it is called). */
  private readonly last = new Map<number, Readonly<Counts>>();
  private readonly free: number[] = [];
  private nextId = 0;
  private commandErrors = 0;
  private closing: Promise<void> | undefined;
  private dead = false;

  private constructor(
    private readonly helper: Helper,
    readonly interfaces: readonly string[],
    private readonly maxEntries: number,
  ) {
    helper.onExit = (reason) => {
      this.dead = true;
      if (this.closing === undefined) this.onExit?.(reason);
    };
  }

  /**
   * Builds nothing: finds build/dataplane/*, starts the helper, loads and attaches on
   * every interface. Rejects with DataplaneUnavailableError naming why.
   */
  static async open(options: KernelDataplaneOptions): Promise<KernelDataplane> {
    const maxEntries = options.maxEntries ?? DEFAULT_MAX_ENTRIES;
    if (!Number.isInteger(maxEntries) || maxEntries < 1 || maxEntries > MAX_MAX_ENTRIES) {
      throw new DataplaneUnavailableError(`maxEntries must be 1-${MAX_MAX_ENTRIES}, not ${maxEntries}`);
    }
    for (const name of options.interfaces) {
      if (!INTERFACE_NAME.test(name)) throw new DataplaneUnavailableError(`no such interface: ${JSON.stringify(name)}`);
    }
    const helper = await Helper.start({
      interfaces: options.interfaces,
      maxEntries,
      buildDir: options.buildDir ?? defaultBuildDir(),
      ...(options.namespace === undefined ? {} : { namespace: options.namespace }),
    });
    return new KernelDataplane(helper, [...options.interfaces], maxEntries);
  }

  /** The helper's process id (tests: it must die with us). */
  get helperPid(): number {
    return this.helper.pid;
  }

  /** Both directions of one bound channel; returns a handle. Throws on mixed families. */
  install(channel: KernelChannel): number {
    this.checkOpen();
    const id = this.allocateId();
    let entries: ChannelEntries;
    try {
      entries = encodeChannel(channel, id);
    } catch (err) {
      this.free.push(id);
      throw err;
    }
    // The slot may hold a former handle's counts: zero it before the entries point at it.
    this.command(`zero ${id}`);
    this.put(entries);
    this.live.add(id);
    return id;
  }

  /**
   * Same handle and addresses, ports and number, new expiry: the counters are kept. (Other
   * fields changed: remove, then install.) Nothing of the keys is kept here per handle: at
   * 100,000 channels two hex keys each were ~200 B of heap apiece (docs/scaling.md, "At scale").
   */
  update(handle: number, channel: KernelChannel): void {
    this.checkOpen();
    if (!this.live.has(handle)) throw new Error(`no kernel channel with handle ${handle}`);
    this.put(encodeChannel(channel, handle));
  }

  /** Takes the handle's entries out; `channel` is what it was installed (or last updated) with. */
  remove(handle: number, channel: KernelChannel): void {
    if (!this.live.delete(handle)) return;
    if (this.dead) return;
    const entries = encodeChannel(channel, handle);
    this.command(`del c2p ${entries.c2pKey.toString('hex')}`);
    this.command(`del p2c ${entries.p2cKey.toString('hex')}`);
    this.removed.add(handle);
  }

  /**
   * Port steering (docs/dataplane.md §8): `sharedPort` on `address` is the one relay socket
   * of that address; datagrams arriving for it from outside are dropped from now on, and
   * its datagrams leave from the relayed port their trailer names. Resolves once the kernel
   * holds the entry; rejects with the helper's error.
   */
  shareSocket(address: string, sharedPort: number): Promise<void> {
    this.checkOpen();
    return this.steerRequest(`put steer ${steerKey(address, sharedPort).toString('hex')} ${steerValue(sharedPort, STEER_SHARED).toString('hex')}`);
  }

  /** Steers peers' datagrams to address:port to the shared socket on address:sharedPort; resolves once the kernel holds the entry. */
  steer(address: string, port: number, sharedPort: number): Promise<void> {
    this.checkOpen();
    return this.steerRequest(`put steer ${steerKey(address, port).toString('hex')} ${steerValue(sharedPort, STEER_RELAY).toString('hex')}`);
  }

  /** Takes a steered port (or a shared socket's port) out; in order with every other write. */
  unsteer(address: string, port: number): void {
    if (this.dead || this.closing !== undefined) return;
    this.command(`del steer ${steerKey(address, port).toString('hex')}`);
  }

  /** Whether steering entries can still be written (the helper runs and close() was not called). */
  get steering(): boolean {
    return !this.dead && this.closing === undefined;
  }

  private async steerRequest(line: string): Promise<void> {
    try {
      await this.helper.request(line);
    } catch (err) {
      this.commandErrors++;
      throw err;
    }
  }

  /**
   * Traffic since the previous call, only for handles whose counters moved (removed handles
   * report their last traffic once). It reads every handle: for tests and diagnostics. The
   * server reads the program's totals each second and retire()s each removed handle.
   */
  async readTraffic(): Promise<KernelTraffic[]> {
    this.checkOpen();
    const finished = [...this.removed];
    const ids = [...this.live, ...finished];
    const out: KernelTraffic[] = [];
    for (let i = 0; i < ids.length; i += READ_BATCH) {
      const fields = await this.helper.request(`read ${ids.slice(i, i + READ_BATCH).join(' ')}`);
      for (const c of parseCounters(fields)) {
        const moved = this.moved(c);
        if (moved !== undefined) out.push(moved);
      }
    }
    for (const id of finished) this.release(id);
    return out;
  }

  /**
   * A removed handle's traffic not reported yet (by readTraffic), read once the kernel
   * dropped its entries (the helper answers in order); the handle is free for reuse after.
   * Undefined for a handle that is not removed, or when nothing moved.
   */
  async retire(handle: number): Promise<KernelTraffic | undefined> {
    if (!this.removed.has(handle) || this.dead || this.closing !== undefined) return undefined;
    const counters = parseCounters(await this.helper.request(`read ${handle}`))[0];
    const moved = counters === undefined || !this.removed.has(handle) ? undefined : this.moved(counters);
    this.release(handle);
    return moved;
  }

  /** A handle's counters against the last ones reported (zeros at first); undefined when nothing moved. */
  private moved(c: ReturnType<typeof parseCounters>[number]): KernelTraffic | undefined {
    const before = this.last.get(c.id) ?? NOTHING;
    const now: Counts = [c.toPeerPackets, c.toPeerBytes, c.toClientPackets, c.toClientBytes];
    if (now.every((v, j) => v === before[j])) return undefined;
    this.last.set(c.id, now);
    return {
      handle: c.id,
      toPeerPackets: now[0] - before[0],
      toPeerBytes: now[1] - before[1],
      toClientPackets: now[2] - before[2],
      toClientBytes: now[3] - before[3],
    };
  }

  /** Program-wide per-reason counters (docs/dataplane.md, "What passes to user space"), plus `command_errors`. */
  async readTotals(): Promise<Record<string, number>> {
    this.checkOpen();
    const totals = parseTotals(await this.helper.request('totals'));
    totals.command_errors = this.commandErrors;
    return totals;
  }

  /**
   * Resolves when the kernel holds every earlier install, update and remove (the helper
   * answers in order). Packets that arrive before then take the socket path.
   */
  async flush(): Promise<void> {
    this.checkOpen();
    // Any answer would do (the helper answers in order); `ping` costs it nothing, where
    // `totals` read every reason's per-CPU counter: a start-up sync flushes once per channel.
    await this.helper.request('ping');
  }

  /** Detaches the program from every interface; the helper exits. Idempotent. */
  close(): Promise<void> {
    this.closing ??= this.helper.stop();
    return this.closing;
  }

  private checkOpen(): void {
    if (this.closing !== undefined || this.dead) throw new Error('the kernel dataplane is closed');
  }

  private allocateId(): number {
    const reused = this.free.pop();
    if (reused !== undefined) return reused;
    if (this.nextId < this.maxEntries) return this.nextId++;
    // Full of removed handles nobody read: reuse one (its last traffic is lost).
    const oldest = this.removed.values().next();
    if (!oldest.done) {
      this.removed.delete(oldest.value);
      this.last.delete(oldest.value);
      return oldest.value;
    }
    throw new Error(`the kernel dataplane holds ${this.maxEntries} channels already (maxEntries)`);
  }

  private release(id: number): void {
    if (!this.removed.delete(id)) return;
    this.last.delete(id);
    this.free.push(id);
  }

  private put(entries: ChannelEntries): void {
    this.command(`put c2p ${entries.c2pKey.toString('hex')} ${entries.c2pValue.toString('hex')}`);
    this.command(`put p2c ${entries.p2cKey.toString('hex')} ${entries.p2cValue.toString('hex')}`);
  }

  private command(line: string): void {
    this.helper.send(line, (error) => {
      if (error === undefined || this.dead) return;
      this.commandErrors++;
      this.onError?.(error);
    });
  }
}

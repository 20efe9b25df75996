// Bandwidth limits on relayed payload (README "Flags", docs/scaling.md "Bandwidth limits"):
// per allocation (--max-bps), per node (--bps-capacity) and per user across the cluster
// (--user-max-bps). Units and directions follow coturn's --max-bps: bytes per second,
// client-to-peer and peer-to-client counted separately, each direction getting the whole
// limit. Over a limit a datagram is dropped and counted (drop reason 'bandwidth'); the
// allocation lives on (a limit degrades, it never tears down: coturn issue 1168).
//
// The packet path (methods/send.ts, methods/data.ts) asks the allocation's gate, if it has
// one: a few numbers on objects made when the allocation entered the table, refilled from
// the packet clock those paths already read. Nothing is allocated per packet; without a
// limit configured no allocation has a gate and the cost is one branch.
//
// The per-user limit is shared by the nodes through the store (AllocationStore.exchangeUsage):
// every tick (TICK_MS, 1 s) each node reports, per user with traffic here, how many bytes
// per second that user offered here in each direction, and gets the sum the other nodes
// reported. It then sets its local bucket for that user to a share of the limit:
// - everyone together under the limit: the limit less what the others use (nobody drops);
// - over it: the limit split in proportion to demand (fair, and the shares add up to it);
// - quiet here: what the others leave, but never less than the limit over the number of
//   nodes with traffic for that user, so a flow that starts here is not starved until its
//   first report.
// Shares lag demand by one exchange: the cluster holds the limit to within one exchange
// period of traffic. Without an answer from the store for EXCHANGE_STALE_EXCHANGES periods
// the node falls back to the whole limit for each user (fail open, docs/architecture.md §5).

import type { AllocationStore, UsageReport } from '../store/types.js';

/** How many exchange periods without an answer before shares fall back to the whole limit. */
export const EXCHANGE_STALE_EXCHANGES = 3;

/**
 * A token bucket in bytes: it refills at the rate, up to one second of traffic (the burst
 * a flow may send after being quiet), and starts full. Plain numbers: no allocation per use.
 */
export class RateBucket {
  tokens: number;
  /** The packet clock's reading at the last refill. */
  lastMs = 0;
  private perMs: number;
  private capacity: number;

  constructor(bytesPerSecond: number) {
    this.perMs = bytesPerSecond / 1000;
    this.capacity = bytesPerSecond;
    this.tokens = bytesPerSecond;
  }

  get rate(): number {
    return this.capacity;
  }

  /** A new rate (a user's share changed): the burst follows it, tokens above it go. */
  setRate(bytesPerSecond: number): void {
    this.perMs = bytesPerSecond / 1000;
    this.capacity = bytesPerSecond;
    if (this.tokens > bytesPerSecond) this.tokens = bytesPerSecond;
  }

  /** Refills up to nowMs; true when `bytes` fit now. Does not take them (see take). */
  has(bytes: number, nowMs: number): boolean {
    if (nowMs > this.lastMs) {
      const tokens = this.tokens + (nowMs - this.lastMs) * this.perMs;
      this.tokens = Math.min(tokens, this.capacity);
      this.lastMs = nowMs;
    }
    return this.tokens >= bytes;
  }

  take(bytes: number): void {
    this.tokens -= bytes;
  }
}

/** A user's bucket in one direction, with the bytes offered to it since the last exchange. */
export class UserLane extends RateBucket {
  /** Bytes that passed the allocation's own limit and asked this bucket (the user's demand here). */
  offered = 0;
}

/** One user's share of --user-max-bps on this node, held while the user has allocations here. */
export class UserUsage {
  readonly up: UserLane;
  readonly down: UserLane;
  allocations = 0;
  /** Reported a demand at the last exchange: report again (a zero tells the others it stopped). */
  reported = false;
  constructor(
    readonly username: string,
    limit: number,
  ) {
    this.up = new UserLane(limit);
    this.down = new UserLane(limit);
  }
}

/** One direction of an allocation's limits: its own bucket, its user's, the node's. */
export class Lane {
  constructor(
    private readonly own: RateBucket | undefined,
    private readonly user: UserLane | undefined,
    private readonly node: RateBucket | undefined,
  ) {}

  /** True (and the bytes taken from every bucket) when every limit has room; false: drop. */
  admit(bytes: number, nowMs: number): boolean {
    const own = this.own;
    if (own !== undefined && !own.has(bytes, nowMs)) return false;
    const user = this.user;
    if (user !== undefined) {
      user.offered += bytes;
      if (!user.has(bytes, nowMs)) return false;
    }
    const node = this.node;
    if (node !== undefined && !node.has(bytes, nowMs)) return false;
    own?.take(bytes);
    user?.take(bytes);
    node?.take(bytes);
    return true;
  }
}

/** What the packet path asks: client to peer (up) and peer to client (down). */
export class BandwidthGate {
  constructor(
    readonly up: Lane,
    readonly down: Lane,
    readonly user: UserUsage | undefined,
  ) {}
}

export interface BandwidthOptions {
  /** Per allocation, bytes per second in each direction (--max-bps); 0: none. */
  readonly maxBps: number;
  /** Per user across the cluster, bytes per second in each direction (--user-max-bps); 0: none. */
  readonly userMaxBps: number;
  /** This node (this worker with --workers) together, bytes per second in each direction (--bps-capacity); 0: none. */
  readonly bpsCapacity: number;
}

export const NO_BANDWIDTH_LIMITS: BandwidthOptions = { maxBps: 0, userMaxBps: 0, bpsCapacity: 0 };

/** The share of `limit` this node takes, from its own demand and the others' (see the file comment). */
export function userShare(limit: number, mine: number, others: number, otherNodes: number): number {
  // Quiet here: what the others leave, but at least an even split, for a flow that starts.
  if (mine === 0) return Math.max(limit - others, limit / (otherNodes + 1));
  return mine + others <= limit ? limit - others : (limit * mine) / (mine + others);
}

export class BandwidthLimits {
  private readonly users = new Map<string, UserUsage>();
  private readonly nodeUp: RateBucket | undefined;
  private readonly nodeDown: RateBucket | undefined;
  private lastExchangeMs: number | undefined;
  private lastAnswerMs = 0;
  private exchanging = false;

  constructor(
    private readonly o: BandwidthOptions,
    private readonly store: AllocationStore,
    private readonly nodeId: string,
    private readonly onStoreError: (err: unknown) => void,
  ) {
    this.nodeUp = o.bpsCapacity > 0 ? new RateBucket(o.bpsCapacity) : undefined;
    this.nodeDown = o.bpsCapacity > 0 ? new RateBucket(o.bpsCapacity) : undefined;
  }

  /** Whether any limit is configured (then every allocation gets a gate and stays off the kernel path). */
  get enabled(): boolean {
    return this.o.maxBps > 0 || this.o.userMaxBps > 0 || this.o.bpsCapacity > 0;
  }

  /** The gate for a new allocation of `username` (undefined without limits); release() it when the allocation goes. */
  attach(username: string): BandwidthGate | undefined {
    if (!this.enabled) return undefined;
    const { maxBps, userMaxBps } = this.o;
    let user: UserUsage | undefined;
    if (userMaxBps > 0) {
      user = this.users.get(username);
      if (!user) this.users.set(username, (user = new UserUsage(username, userMaxBps)));
      user.allocations++;
    }
    const up = new Lane(maxBps > 0 ? new RateBucket(maxBps) : undefined, user?.up, this.nodeUp);
    const down = new Lane(maxBps > 0 ? new RateBucket(maxBps) : undefined, user?.down, this.nodeDown);
    return new BandwidthGate(up, down, user);
  }

  release(gate: BandwidthGate | undefined): void {
    const user = gate?.user;
    if (user === undefined || --user.allocations > 0) return;
    if (this.users.get(user.username) === user) this.users.delete(user.username);
  }

  /** Users with a per-user share here (tests, metrics). */
  userUsage(username: string): UserUsage | undefined {
    return this.users.get(username);
  }

  /**
   * Reports this node's demand per user and sets each user's share from the answer (once
   * per tick). One exchange at a time; the store's slowness never blocks the tick.
   */
  exchange(nowMs: number): Promise<void> | undefined {
    if (this.o.userMaxBps === 0 || this.exchanging) return undefined;
    const since = this.lastExchangeMs;
    this.lastExchangeMs = nowMs;
    if (since === undefined || nowMs <= since) return undefined;
    const reports = this.reports(nowMs - since);
    if (this.store.exchangeUsage === undefined || !this.store.isAvailable()) return void this.noAnswer(nowMs, nowMs - since);
    if (reports.length === 0) {
      this.lastAnswerMs = nowMs;
      return undefined;
    }
    this.exchanging = true;
    return this.store
      .exchangeUsage(this.nodeId, reports, nowMs, EXCHANGE_STALE_EXCHANGES * (nowMs - since))
      .then(
        (totals) => {
          this.lastAnswerMs = nowMs;
          for (let i = 0; i < reports.length; i++) this.applyShare(reports[i]!, totals[i]);
        },
        (err: unknown) => {
          this.onStoreError(err);
          this.noAnswer(nowMs, nowMs - since);
        },
      )
      .finally(() => {
        this.exchanging = false;
      });
  }

  /** Bytes per second each user offered here since the last exchange; resets the counts. */
  private reports(elapsedMs: number): UsageReport[] {
    const reports: UsageReport[] = [];
    for (const user of this.users.values()) {
      const up = (user.up.offered * 1000) / elapsedMs;
      const down = (user.down.offered * 1000) / elapsedMs;
      user.up.offered = 0;
      user.down.offered = 0;
      // Quiet here, said so, and holding the whole limit: nothing to tell or learn. A quiet user
      // with a smaller share keeps asking, or a flow starting here later would get a stale share.
      const limit = this.o.userMaxBps;
      if (up === 0 && down === 0 && !user.reported && user.up.rate === limit && user.down.rate === limit) continue;
      user.reported = up > 0 || down > 0;
      reports.push({ username: user.username, up, down });
    }
    return reports;
  }

  private applyShare(report: UsageReport, others: { up: number; down: number; upNodes: number; downNodes: number } | undefined): void {
    const user = this.users.get(report.username);
    if (!user) return;
    const limit = this.o.userMaxBps;
    user.up.setRate(userShare(limit, report.up, others?.up ?? 0, others?.upNodes ?? 0));
    user.down.setRate(userShare(limit, report.down, others?.down ?? 0, others?.downNodes ?? 0));
  }

  /** No answer from the store: past the stale limit every user gets the whole limit again (fail open). */
  private noAnswer(nowMs: number, periodMs: number): void {
    if (nowMs - this.lastAnswerMs < EXCHANGE_STALE_EXCHANGES * periodMs) return;
    for (const user of this.users.values()) {
      user.up.setRate(this.o.userMaxBps);
      user.down.setRate(this.o.userMaxBps);
    }
  }
}

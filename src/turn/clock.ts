/** Milliseconds since the epoch. Injected everywhere time matters, so tests can move it. */
export interface Clock {
  now(): number;
  /**
   * Optional: now() as read at most about COARSE_CLOCK_MS ago. For the expiry checks on
   * every relayed packet, where reading the system clock costs more than the checks:
   * permissions and channels last minutes, being a few ms late changes nothing. Clocks
   * without it (ManualClock) are read with now() there too.
   */
  nowCoarse?(): number;
}

/** How stale CoarseTime may be (plus however late the event loop runs its timer). */
export const COARSE_CLOCK_MS = 10;

/**
 * A clock reading refreshed by a timer instead of read per call. The timer runs only while
 * the reading is used: a refresh that finds it unread since the last one stops the timer,
 * and the next read starts it again (with a fresh reading), so an idle server does not wake.
 */
export class CoarseTime {
  private ms = 0;
  private timer: NodeJS.Timeout | undefined;
  private readSinceRefresh = false;

  constructor(
    private readonly resolutionMs = COARSE_CLOCK_MS,
    private readonly source: () => number = Date.now,
  ) {}

  now(): number {
    if (this.timer === undefined) this.start();
    this.readSinceRefresh = true;
    return this.ms;
  }

  /** Whether the refresh timer is running (tests). */
  get running(): boolean {
    return this.timer !== undefined;
  }

  stop(): void {
    if (this.timer !== undefined) clearInterval(this.timer);
    this.timer = undefined;
  }

  private start(): void {
    this.ms = this.source();
    this.timer = setInterval(this.refresh, this.resolutionMs);
    this.timer.unref();
  }

  private readonly refresh = (): void => {
    if (!this.readSinceRefresh) return this.stop();
    this.readSinceRefresh = false;
    this.ms = this.source();
  };
}

const coarseSystemTime = new CoarseTime();

export const systemClock: Clock = { now: () => Date.now(), nowCoarse: () => coarseSystemTime.now() };

/** A clock tests set by hand. */
export class ManualClock implements Clock {
  constructor(private ms = 1_700_000_000_000) {}
  now(): number {
    return this.ms;
  }
  advance(ms: number): void {
    this.ms += ms;
  }
}

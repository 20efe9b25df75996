// npm run bench:allocations's command line: which parts, and how many allocations.

/** Relay ports: 20,000 of them, below Linux's default ephemeral range (32768-60999), so the
 *  driver's own client sockets (ephemeral ports on 127.0.0.1) never hold a relay port. */
export const RELAY_MIN = 12000;
export const RELAY_MAX = 31999;

/** Part 1's default warm-up: see docs/scaling.md, part 1 ("Warm-up"). */
export const DEFAULT_WARMUP = 5000;

export type Part = 1 | 2 | 3 | 4 | 5;

export interface Options {
  readonly parts: readonly Part[];
  readonly allocations: number;
  /** Part 1: unmeasured allocations per server before the measured ones (JIT warm-up for the Node servers). */
  readonly warmup: number;
  readonly live: number;
  readonly lifecycles: number;
  readonly workers: number;
  readonly liveWorkers: number;
  /** Part 5: another build's dist directory (e.g. main's) measured beside this one. */
  readonly feedBaseline: string | undefined;
  /** Part 1: another build's dist directory whose anyturn (memory store) is measured beside this one's. */
  readonly rateBaseline: string | undefined;
  /** Part 1: how many times the servers are measured, one after the other in turn (A/B rounds). */
  readonly rounds: number;
  /**
   * Part 1: 'static', one static user for every allocation; 'rest', a time-limited
   * credential (--use-auth-secret) per allocation, as a WebRTC app hands one to each
   * visitor (anyturn and coturn; the Node floor knows only its static user).
   */
  readonly credentials: 'static' | 'rest';
}

function usage(): string {
  return 'usage: node dist/bench/allocations.js [--parts 1,2,3,4,5] [--allocations N] [--warmup N] [--live N] [--lifecycles N] [--workers N] [--feed-baseline DIST_DIR] [--rate-baseline DIST_DIR] [--rounds N] [--credentials static|rest]';
}

export function parseOptions(argv: readonly string[]): Options {
  const o = {
    parts: [1, 2, 3, 4, 5] as Part[],
    allocations: 5000,
    warmup: DEFAULT_WARMUP,
    live: 10_000,
    lifecycles: 500,
    workers: 8,
    liveWorkers: 16,
    feedBaseline: undefined as string | undefined,
    rateBaseline: undefined as string | undefined,
    rounds: 1,
    credentials: 'static' as 'static' | 'rest',
  };
  for (let i = 0; i < argv.length; i++) {
    const flag = argv[i];
    if (flag === '--help' || flag === '-h') {
      console.log(usage());
      process.exit(0);
    }
    const value = argv[++i];
    if (value === undefined) throw new Error(`${flag ?? ''} needs a value; ${usage()}`);
    if (flag === '--parts') {
      const parts = value.split(',').map((p) => Number(p.trim()));
      if (parts.some((p) => ![1, 2, 3, 4, 5].includes(p))) throw new Error(`--parts '${value}': 1, 2, 3, 4 and/or 5`);
      o.parts = [...new Set(parts)].sort() as Part[];
      continue;
    }
    if (flag === '--credentials') {
      if (value !== 'static' && value !== 'rest') throw new Error(`--credentials '${value}': static or rest`);
      o.credentials = value;
      continue;
    }
    if (flag === '--feed-baseline' || flag === '--rate-baseline') {
      if (flag === '--feed-baseline') o.feedBaseline = value;
      else o.rateBaseline = value;
      continue;
    }
    const n = Number(value);
    if (!Number.isInteger(n) || n < 1) throw new Error(`${flag ?? ''} '${value}': a positive integer is required`);
    if (flag === '--allocations') o.allocations = n;
    else if (flag === '--warmup') o.warmup = n;
    else if (flag === '--live') o.live = n;
    else if (flag === '--lifecycles') o.lifecycles = n;
    else if (flag === '--workers') o.workers = n;
    else if (flag === '--rounds') o.rounds = n;
    else throw new Error(`unknown argument '${flag ?? ''}'; ${usage()}`);
  }
  if (o.live > RELAY_MAX - RELAY_MIN + 1) throw new Error(`--live ${o.live}: at most ${RELAY_MAX - RELAY_MIN + 1} (the relay port range)`);
  return o;
}

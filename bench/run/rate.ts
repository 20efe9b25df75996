// The max lossless rate search (and --scaling, the same search per placement): the
// channel case with N sessions, N stepped up until a step loses a message.
import { rateCase } from '../uclient.js';
import type { ServerName } from '../servers.js';
import { fmt } from '../format.js';
import type { Placement } from './placement.js';
import type { RunContext } from './servers.js';
import { runOne, type RunResult } from './measure.js';

/** The rate steps get a wider relay range: at 80 sessions uclient's 437 retries (a new socket, a new
 *  allocation, the old one left to expire) used up 200 ports on both anyturn and coturn. */
const RATE_RELAY_PORT_COUNT = 1000;
/** Messages per session in a rate step: 8 s of sending per session, so that all sessions
 *  (started at random 1-6 s offsets) overlap at the full rate for at least 3 s. */
export const RATE_MESSAGES_PER_SESSION = 8000;

const RATE_METHOD =
  'the channel case (100-byte ChannelData, -z 1) with N sessions, so N thousand msg/s offered once all sessions run ' +
  '(they start at random 1-6 s offsets; each sends for -n ms); N steps up per server until a step loses a message, ' +
  'and the highest lossless step is reported. "peak sent" = most messages uclient sent in one second; if it falls short ' +
  'of the offer, the load generator (core 0), not the server, was the limit.';

export interface RateStep {
  readonly sessions: number;
  readonly offeredPerSecond: number;
  readonly result: RunResult;
}

export interface ServerRate {
  readonly server: ServerName;
  /** The server and its placement, as in the table. */
  readonly label: string;
  readonly placement: Placement;
  readonly steps: RateStep[];
  /** Highest offered rate (msg/s) with 0 lost, below the first lossy step; undefined if the first step lost. */
  readonly maxLosslessPerSecond: number | undefined;
  /** True if no step lost a message: the figure is a lower bound (the steps ran out, or the next step failed to run). */
  readonly atLeast: boolean;
  /** Why the step after the figure did not count: it failed to run (not a loss). */
  readonly stoppedBy: string | undefined;
}

export interface RateReport {
  readonly method: string;
  readonly messagesPerSession: number;
  readonly servers: ServerRate[];
}

/** The steps for one server and placement, up to the first loss or failure. */
async function searchOne(
  ctx: RunContext,
  serverName: ServerName,
  placement: Placement,
  steps: readonly number[],
  messagesPerSession: number,
  interrupted: () => boolean,
): Promise<ServerRate> {
  const done: RateStep[] = [];
  let maxLossless: number | undefined;
  let atLeast = true;
  let stoppedBy: string | undefined;
  for (const sessions of steps) {
    if (interrupted()) break;
    const c = rateCase(sessions, messagesPerSession);
    process.stderr.write(`[bench] rate ${sessions}k msg/s / ${placement.label}: -m ${sessions} -n ${messagesPerSession} ... `);
    const r = await runOne(ctx, serverName, c, `rate-${sessions}`, RATE_RELAY_PORT_COUNT, placement);
    done.push({ sessions, offeredPerSecond: sessions * 1000, result: r });
    process.stderr.write(
      r.ok
        ? `${r.received}/${r.sent} back (lost ${r.lost}), peak ${fmt(r.uclient.peakSendRate, 0)} sent/s, ${fmt(r.cpuMicrosPerRelayedPacket, 2)} us/pkt\n`
        : `FAILED: ${r.failure ?? ''}\n`,
    );
    if (!r.ok) {
      stoppedBy = `the ${sessions}k step failed to run: ${r.failure ?? ''}`;
      break;
    }
    if (r.lost > 0) {
      atLeast = false;
      break;
    }
    maxLossless = sessions * 1000;
  }
  return { server: serverName, label: placement.label, placement, steps: done, maxLosslessPerSecond: maxLossless, atLeast, stoppedBy };
}

export async function runRate(
  ctx: RunContext,
  entries: readonly { readonly server: ServerName; readonly placement: Placement }[],
  steps: readonly number[],
  messagesPerSession: number,
  interrupted: () => boolean,
): Promise<RateReport> {
  const out: ServerRate[] = [];
  for (const { server, placement } of entries) out.push(await searchOne(ctx, server, placement, steps, messagesPerSession, interrupted));
  return { method: RATE_METHOD, messagesPerSession, servers: out };
}

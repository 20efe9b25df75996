// Reading coturn's turnutils_uclient output (shared by the interop tests).
// The final totals are the `start_mclient: tot_send_msgs=N, tot_recv_msgs=M`
// line without `msz=` (the lines with `msz=` are per-second progress) and
// `Total lost packets L (P%), total send dropped D (P%)`.

import assert from 'node:assert/strict';

import { LOOPBACK_V4, runToCompletion, type CleanupRegistrar, type RunResult } from './anyturn-process.js';

export interface UclientStats {
  readonly sentMessages: number;
  readonly receivedMessages: number;
  readonly lostPackets: number;
  readonly sendDropped: number;
}

function lastMatch(text: string, pattern: RegExp): RegExpMatchArray | undefined {
  let found: RegExpMatchArray | undefined;
  for (const match of text.matchAll(pattern)) found = match;
  return found;
}

/** Parses uclient's final statistics; undefined if they are missing. */
export function parseUclientStats(output: string): UclientStats | undefined {
  const totals = lastMatch(output, /start_mclient: tot_send_msgs=(\d+), tot_recv_msgs=(\d+)\s*$/gm);
  const lost = lastMatch(output, /Total lost packets (\d+) \([^)]*\), total send dropped (\d+)/g);
  if (!totals || !lost) return undefined;
  return {
    sentMessages: Number(totals[1]),
    receivedMessages: Number(totals[2]),
    lostPackets: Number(lost[1]),
    sendDropped: Number(lost[2]),
  };
}

/** What describeRun needs of the server: its output (a RunningTurnServer, or a server in a namespace). */
export interface ServerOutput {
  readonly process: { outputTail(): string };
}

/** The command, its exit and output tails, and the server's output: context for an assertion message. */
export function describeRun(command: string, args: readonly string[], result: RunResult, server: ServerOutput): string {
  const tail = (s: string): string => (s.length > 3000 ? `...${s.slice(-3000)}` : s);
  return [
    `$ ${command} ${args.join(' ')}`,
    `exit code ${String(result.code)}, signal ${String(result.signal)}, timed out ${String(result.timedOut)}`,
    `--- stdout ---\n${tail(result.stdout)}`,
    `--- stderr ---\n${tail(result.stderr)}`,
    server.process.outputTail(),
  ].join('\n');
}

/** What uclient prints when anyturn (or coturn, when the tests run against it) refuses a number bound to another peer. */
const COLLISION_ERROR = /channel bind: error 400 \((Channel bound to another peer|You cannot use the same channel number with different peer)\)/;

/**
 * coturn 4.6.1's uclient fails on its own in 1 of 16,384 channel-mode sessions, whatever the
 * server: start_connection binds a random channel number X to the peer's port+1 (twice), then
 * draws a new random number for the peer's own port from the same 0x4000-0x7FFF without
 * excluding X. When it draws X again, RFC 8656 §12.2 requires the 400 it gets (coturn 4.6.1
 * answers the same, "You cannot use the same channel number with different peer"), and uclient
 * exits before relaying anything. Only uclient's random number generator decides it (OpenSSL's
 * RAND_bytes), not load or timing.
 *
 * Returns the evidence when `output` shows exactly that, else undefined. With -v (setup logging;
 * uclient logs nothing per message over UDP and TCP) the refused request must be the session's
 * third ChannelBind, after two successes with one number: the only request of the sequence a
 * correct server refuses. Over TLS -v logs every record, so there the message alone must do;
 * the UDP and TCP runs check the position for the same server code.
 */
export function uclientChannelCollision(output: string): string | undefined {
  if (parseUclientStats(output)) return undefined;
  const lines = output.split('\n');
  const errorAt = lines.findIndex((l) => COLLISION_ERROR.test(l));
  if (errorAt < 0 || lines.some((l, i) => i > errorAt && /error/i.test(l))) return undefined;
  const error = lines[errorAt]!.trim();
  if (!output.includes('channel bind sent')) return `uclient exited on its own channel-number collision (${error})`;
  // This session's requests since its Allocate and Refresh, which come just before its binds.
  let start = errorAt;
  while (start > 0 && !/(allocate|refresh) (sent|response received)/.test(lines[start - 1]!)) start--;
  const session = lines.slice(start, errorAt + 1);
  const sent = session.filter((l) => l.includes('channel bind sent')).length;
  const bound = session.flatMap((l) => /success: (0x[0-9a-f]+)/.exec(l)?.[1] ?? []);
  if (sent !== 3 || bound.length !== 2 || bound[0] !== bound[1]) return undefined;
  return `uclient exited on its own channel-number collision: ${bound[0]} bound to the peer's port+1 twice, then refused for the peer's port (${error})`;
}

/**
 * Runs turnutils_uclient to completion; after a run that ended on uclient's own channel-number
 * collision (see uclientChannelCollision), runs it once more. The caller asserts on the run
 * returned exactly as on any other: nothing was relayed in the one that collided, and two
 * collisions in a row (about 1 in 700,000 for 20 sessions) still fail.
 */
export async function runUclient(
  args: readonly string[],
  deadlineMs: number,
  t: CleanupRegistrar & { diagnostic(message: string): void },
  options: UclientRunOptions = {},
): Promise<RunResult> {
  const [command = 'turnutils_uclient', ...prefix] = [...(options.runUnder ?? []), 'turnutils_uclient'];
  const first = await runToCompletion(command, [...prefix, ...args], deadlineMs, t);
  const collision = first.timedOut ? undefined : uclientChannelCollision(first.stdout + first.stderr);
  if (collision === undefined) return first;
  t.diagnostic(`${collision}; running uclient once more`);
  return runToCompletion(command, [...prefix, ...args], deadlineMs, t);
}

export interface UclientRunOptions {
  /** A command that execs uclient, e.g. ['ip', 'netns', 'exec', ns] (it must exec, so the process group is uclient's). */
  readonly runUnder?: readonly string[];
}

/**
 * uclient's load: `clients` sessions (-m) each sending `messages` (-n) of `bytes` (-l)
 * every `intervalMs` (-z) from `localAddress` (-L, default 127.0.0.1) to host:port, without
 * its second RTCP allocation (-c). These are the last arguments: the server address ends the list.
 */
export function uclientLoadArgs(o: {
  clients: number;
  messages: number;
  bytes: number;
  intervalMs: number;
  port: number;
  host: string;
  localAddress?: string;
}): string[] {
  return [
    '-c',
    '-m',
    String(o.clients),
    '-n',
    String(o.messages),
    '-l',
    String(o.bytes),
    '-z',
    String(o.intervalMs),
    '-L',
    o.localAddress ?? LOOPBACK_V4,
    '-p',
    String(o.port),
    o.host,
  ];
}

/** uclient finished on its own, exited 0, and each of the `expected` messages was sent and came back. */
export function assertEveryMessageBack(args: readonly string[], result: RunResult, server: ServerOutput, expected: number): void {
  const context = describeRun('turnutils_uclient', args, result, server);
  assert.equal(result.timedOut, false, `uclient did not finish\n${context}`);
  assert.equal(result.code, 0, `uclient failed\n${context}`);
  const stats = parseUclientStats(result.stdout + result.stderr);
  assert.ok(stats, `no final statistics in uclient output\n${context}`);
  assert.equal(stats.lostPackets, 0, `lost packets\n${context}`);
  assert.equal(stats.sendDropped, 0, `send dropped\n${context}`);
  assert.equal(stats.sentMessages, expected, `messages sent\n${context}`);
  assert.equal(stats.receivedMessages, expected, `messages received\n${context}`);
}

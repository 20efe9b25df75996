// Reading coturn's turnutils_uclient output (shared by the interop tests).
// The final totals are the `start_mclient: tot_send_msgs=N, tot_recv_msgs=M`
// line without `msz=` (the lines with `msz=` are per-second progress) and
// `Total lost packets L (P%), total send dropped D (P%)`.

import type { RunResult, RunningTurnServer } from './anyturn-process.js';

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

/** The command, its exit and output tails, and the server's output: context for an assertion message. */
export function describeRun(command: string, args: readonly string[], result: RunResult, server: RunningTurnServer): string {
  const tail = (s: string): string => (s.length > 3000 ? `...${s.slice(-3000)}` : s);
  return [
    `$ ${command} ${args.join(' ')}`,
    `exit code ${String(result.code)}, signal ${String(result.signal)}, timed out ${String(result.timedOut)}`,
    `--- stdout ---\n${tail(result.stdout)}`,
    `--- stderr ---\n${tail(result.stderr)}`,
    server.process.outputTail(),
  ].join('\n');
}

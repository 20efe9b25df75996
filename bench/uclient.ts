// The load: coturn's turnutils_uclient, the same arguments for both servers.
// A uclient "message" is one round trip client -> relay -> peer -> relay -> client.

export type CaseName = 'channel' | 'send' | 'flood';
export const CASE_NAMES: readonly CaseName[] = ['channel', 'send', 'flood'];

export interface LoadCase {
  readonly name: CaseName;
  readonly description: string;
  /** Messages (round trips) per session: uclient -n. */
  readonly messagesPerSession: number;
  /** Per-session send interval: uclient -z (0 = as fast as it can). */
  readonly intervalMs: number;
  /** Send indications (uclient -s) instead of ChannelData. */
  readonly sendIndication: boolean;
}

/** Sessions (uclient -m); with -c each session is one allocation. */
export const SESSIONS = 20;
/** Payload bytes per message (uclient -l). */
export const PAYLOAD_BYTES = 100;

export function defaultCases(): Record<CaseName, LoadCase> {
  return {
    channel: {
      name: 'channel',
      description: 'ChannelData, 1 ms interval per session',
      messagesPerSession: 5000,
      intervalMs: 1,
      sendIndication: false,
    },
    send: {
      name: 'send',
      description: 'Send/Data indications, 1 ms interval per session',
      messagesPerSession: 5000,
      intervalMs: 1,
      sendIndication: true,
    },
    flood: {
      name: 'flood',
      description: 'ChannelData, no interval (-z 0)',
      messagesPerSession: 10000,
      intervalMs: 0,
      sendIndication: false,
    },
  };
}

export interface UclientTarget {
  readonly serverPort: number;
  readonly peerPort: number;
  readonly user: string;
  readonly password: string;
}

export function uclientArgs(c: LoadCase, t: UclientTarget): string[] {
  return [
    '-u', t.user,
    '-w', t.password,
    '-e', '127.0.0.1',
    '-r', String(t.peerPort),
    '-c',
    '-m', String(SESSIONS),
    '-n', String(c.messagesPerSession),
    '-l', String(PAYLOAD_BYTES),
    '-z', String(c.intervalMs),
    ...(c.sendIndication ? ['-s'] : []),
    '-p', String(t.serverPort),
    '-L', '127.0.0.1',
    '127.0.0.1',
  ];
}

/**
 * Upper bound for one uclient run. Sessions start at random 1-6 s offsets and
 * uclient waits a few seconds for late answers (about 16 s in total with 100 % loss
 * for 500 messages), so: a fixed 30 s plus twice the paced sending time.
 */
export function uclientTimeoutMs(c: LoadCase): number {
  return 30_000 + 2 * c.messagesPerSession * Math.max(c.intervalMs, 1);
}

export interface UclientStats {
  /** True if the final statistics block was printed (uclient finished). */
  readonly finished: boolean;
  readonly sent: number;
  readonly received: number;
  /** uclient's own "Total lost packets" figure, if printed. */
  readonly reportedLost: number | undefined;
  readonly sendDropped: number | undefined;
  /** uclient's "Total transmit time is N" (whole seconds). */
  readonly transmitSeconds: number | undefined;
  /** uclient's "Average round trip delay" and its max, in ms (ms resolution). */
  readonly rttAverageMs: number | undefined;
  readonly rttMaxMs: number | undefined;
  readonly errors: readonly string[];
}

/*
 * The final block of uclient's output looks like (prefix = seconds since start):
 *   7: : start_mclient: tot_send_msgs=40000, tot_recv_msgs=40000
 *   7: : Total transmit time is 7
 *   7: : Total lost packets 0 (0.000000%), total send dropped 0 (0.000000%)
 * and progress lines, once per second:
 *   6: : start_mclient: msz=20, tot_send_msgs=35374, tot_recv_msgs=35350, ...
 */
export function parseUclientOutput(text: string): UclientStats {
  const final = /start_mclient: tot_send_msgs=(\d+), tot_recv_msgs=(\d+)/.exec(text);
  let sent = 0;
  let received = 0;
  if (final?.[1] !== undefined && final[2] !== undefined) {
    sent = Number(final[1]);
    received = Number(final[2]);
  } else {
    // Killed before the end: take the last progress line.
    for (const m of text.matchAll(/msz=\d+, tot_send_msgs=(\d+), tot_recv_msgs=(\d+)/g)) {
      sent = Number(m[1]);
      received = Number(m[2]);
    }
  }
  const lost = /Total lost packets (\d+) \([^)]*\), total send dropped (\d+)/.exec(text);
  const transmit = /Total transmit time is (\d+)/.exec(text);
  const rtt = /Average round trip delay ([\d.]+) ms; min = \d+ ms, max = (\d+) ms/.exec(text);
  const errors = text
    .split('\n')
    .filter((l) => /ERROR|error|refused|Cannot|cannot/.test(l))
    .slice(0, 20);
  return {
    finished: final !== null,
    sent,
    received,
    reportedLost: lost?.[1] === undefined ? undefined : Number(lost[1]),
    sendDropped: lost?.[2] === undefined ? undefined : Number(lost[2]),
    transmitSeconds: transmit?.[1] === undefined ? undefined : Number(transmit[1]),
    // With nothing received uclient prints min = 4294967295 and an average of 0.
    rttAverageMs: rtt?.[1] === undefined || received === 0 ? undefined : Number(rtt[1]),
    rttMaxMs: rtt?.[2] === undefined || received === 0 ? undefined : Number(rtt[2]),
    errors,
  };
}

// The load: coturn's turnutils_uclient, the same arguments for both servers.
// A uclient "message" is one round trip client -> relay -> peer -> relay -> client.

export type CaseName = 'channel' | 'send' | 'channel-1000' | 'send-1000' | 'c2c' | 'flood' | 'tcp';
export const CASE_NAMES: readonly CaseName[] = ['channel', 'send', 'channel-1000', 'send-1000', 'c2c', 'flood', 'tcp'];

export interface LoadCase {
  readonly name: CaseName;
  readonly description: string;
  /** Messages (round trips) per session: uclient -n. */
  readonly messagesPerSession: number;
  /** Per-session send interval: uclient -z (0 = as fast as it can). */
  readonly intervalMs: number;
  /** Send indications (uclient -s) instead of ChannelData. */
  readonly sendIndication: boolean;
  /** Payload bytes per message (uclient -l). */
  readonly payloadBytes: number;
  /** Client-to-client (uclient -y): pairs of allocations relay to each other, no peer. */
  readonly clientToClient: boolean;
  /** TCP between client and server (uclient -t); relaying to the peer stays UDP. */
  readonly tcp: boolean;
  /** Sessions (uclient -m); with -c each session is one allocation. */
  readonly sessions: number;
}

/** Sessions (uclient -m); with -c each session is one allocation. */
export const SESSIONS = 20;
/** Payload bytes per message (uclient -l), unless the case says otherwise. */
export const PAYLOAD_BYTES = 100;

export function defaultCases(): Record<CaseName, LoadCase> {
  const base = { sendIndication: false, payloadBytes: PAYLOAD_BYTES, clientToClient: false, tcp: false, sessions: SESSIONS };
  return {
    channel: {
      ...base,
      name: 'channel',
      description: 'ChannelData, 1 ms interval per session',
      messagesPerSession: 5000,
      intervalMs: 1,
    },
    send: {
      ...base,
      name: 'send',
      description: 'Send/Data indications, 1 ms interval per session',
      messagesPerSession: 5000,
      intervalMs: 1,
      sendIndication: true,
    },
    'channel-1000': {
      ...base,
      name: 'channel-1000',
      description: 'ChannelData, 1000-byte payload (-l 1000), 1 ms interval',
      messagesPerSession: 5000,
      intervalMs: 1,
      payloadBytes: 1000,
    },
    'send-1000': {
      ...base,
      name: 'send-1000',
      description: 'Send/Data indications, 1000-byte payload (-l 1000), 1 ms interval',
      messagesPerSession: 5000,
      intervalMs: 1,
      sendIndication: true,
      payloadBytes: 1000,
    },
    c2c: {
      ...base,
      name: 'c2c',
      description: 'client to client (-y): 10 pairs of allocations relay to each other, ChannelData, 1 ms interval',
      messagesPerSession: 5000,
      intervalMs: 1,
      clientToClient: true,
    },
    flood: {
      ...base,
      name: 'flood',
      description: 'ChannelData, no interval (-z 0)',
      messagesPerSession: 10000,
      intervalMs: 0,
    },
    tcp: {
      ...base,
      name: 'tcp',
      description: 'TCP client connections (-t), ChannelData, 1 ms interval; relay to the peer is UDP',
      messagesPerSession: 5000,
      intervalMs: 1,
      tcp: true,
    },
  };
}

/**
 * The 'max lossless rate' steps: the channel case with more sessions at 1 ms each,
 * so that `sessions` thousand messages per second are offered once all have started.
 */
export function rateCase(sessions: number, messagesPerSession: number): LoadCase {
  return {
    name: 'channel',
    description: `ChannelData, ${sessions} sessions at 1 ms = ${sessions}k msg/s offered`,
    messagesPerSession,
    intervalMs: 1,
    sendIndication: false,
    payloadBytes: PAYLOAD_BYTES,
    clientToClient: false,
    tcp: false,
    sessions,
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
    '-u',
    t.user,
    '-w',
    t.password,
    '-e',
    '127.0.0.1',
    '-r',
    String(t.peerPort),
    '-c',
    '-m',
    String(c.sessions),
    '-n',
    String(c.messagesPerSession),
    '-l',
    String(c.payloadBytes),
    '-z',
    String(c.intervalMs),
    ...(c.sendIndication ? ['-s'] : []),
    ...(c.clientToClient ? ['-y'] : []),
    ...(c.tcp ? ['-t'] : []),
    '-p',
    String(t.serverPort),
    '-L',
    '127.0.0.1',
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

/**
 * The highest number of messages sent in one second, from uclient's once-a-second
 * progress lines ("N: : start_mclient: msz=.., tot_send_msgs=X, ..."): what the load
 * generator actually offered at its peak, which may fall short of the nominal rate
 * when core 0 is saturated.
 */
export function peakSendRate(text: string): number | undefined {
  let last: { t: number; sent: number } | undefined;
  let peak: number | undefined;
  for (const m of text.matchAll(/^(\d+): : start_mclient: msz=\d+, tot_send_msgs=(\d+)/gm)) {
    const t = Number(m[1]);
    const sent = Number(m[2]);
    if (last !== undefined && t > last.t) {
      const rate = (sent - last.sent) / (t - last.t);
      if (peak === undefined || rate > peak) peak = rate;
    }
    last = { t, sent };
  }
  return peak;
}

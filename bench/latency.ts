// The latency probe of npm run bench: uclient prints only an average and a maximum
// round trip, in whole milliseconds, so per-packet RTTs come from here.
//
// One UDP client (bench/turn-driver.ts: Allocate with the 401 round trip, then
// ChannelBind) sends `count` ChannelData messages at `ratePerSecond` through the
// server to an echo peer (turnutils_peer) and times every round trip with
// process.hrtime. The same is measured without the server (client -> peer ->
// client, from a second socket, the two taking turns) so that the server's share
// can be given as "added" latency: added p50 = p50 through the server - p50 direct
// (and likewise for p99).
//
// Run it while no other load runs; the figures are the server's latency when
// lightly loaded (one allocation, 200 msg/s), not under load.
// Every socket binds 127.0.0.1 and sends to 127.0.0.1.
import dgram from 'node:dgram';
import { performance } from 'node:perf_hooks';

import { AllocationClient, DriverStats, LOOPBACK, summarize, type Endpoint, type LatencySummary } from './turn-driver.js';

export interface LatencyOptions {
  /** Round trips that are timed. */
  readonly count: number;
  /** Untimed round trips sent first, at the same rate (JIT, caches). */
  readonly warmup: number;
  readonly ratePerSecond: number;
  readonly payloadBytes: number;
  /** How long to wait for the last answers. */
  readonly drainMs: number;
}

export const DEFAULT_LATENCY_OPTIONS: LatencyOptions = { count: 2000, warmup: 200, ratePerSecond: 200, payloadBytes: 100, drainMs: 500 };

export interface LatencyResult {
  readonly sent: number;
  readonly received: number;
  readonly lost: number;
  /** RTT in µs. */
  readonly rttMicros: LatencySummary;
}

const CHANNEL = 0x4000;

/** One way of getting a probe to the echo peer and back. */
interface Path {
  /** The datagram for probe `seq`. */
  readonly frame: (seq: number) => Buffer;
  readonly send: (buf: Buffer) => void;
  /** Wires the socket so that `reply(seq)` runs when probe `seq` comes back. */
  readonly wire: (reply: (seq: number) => void) => void;
}

/**
 * Sends warmup+count probes on every path at `ratePerSecond` each, the paths taking
 * turns (so they see the same machine at the same moments), and times each round trip.
 */
async function pace(o: LatencyOptions, paths: readonly Path[]): Promise<LatencyResult[]> {
  const total = o.warmup + o.count;
  const state = paths.map((p) => {
    const st = { sentAt: new Array<bigint | undefined>(total), rtts: [] as number[], received: 0 };
    p.wire((seq) => {
      const t = st.sentAt[seq];
      if (t === undefined) return;
      st.sentAt[seq] = undefined; // count a duplicate once
      if (seq < o.warmup) return;
      st.received++;
      st.rtts.push(Number(process.hrtime.bigint() - t) / 1000);
    });
    return st;
  });
  const intervalMs = 1000 / (o.ratePerSecond * paths.length);
  const start = performance.now();
  for (let tick = 0; tick < total * paths.length; tick++) {
    // Absolute schedule, so timer lateness does not accumulate.
    const due = start + tick * intervalMs;
    const wait = due - performance.now();
    if (wait > 0) await new Promise((r) => setTimeout(r, wait));
    const which = tick % paths.length;
    const seq = Math.floor(tick / paths.length);
    const p = paths[which]!;
    const buf = p.frame(seq);
    state[which]!.sentAt[seq] = process.hrtime.bigint();
    p.send(buf);
  }
  await new Promise((r) => setTimeout(r, o.drainMs));
  return state.map((st) => ({ sent: o.count, received: st.received, lost: o.count - st.received, rttMicros: summarize(st.rtts) }));
}

function payload(seq: number, bytes: number): Buffer {
  const b = Buffer.alloc(Math.max(4, bytes), 7);
  b.writeUInt32BE(seq, 0);
  return b;
}

async function directPath(peer: Endpoint, o: LatencyOptions): Promise<{ path: Path; socket: dgram.Socket }> {
  const socket = dgram.createSocket('udp4');
  await new Promise<void>((r) => socket.bind(0, LOOPBACK, () => r()));
  return {
    socket,
    path: {
      frame: (seq) => payload(seq, o.payloadBytes),
      send: (buf) => socket.send(buf, peer.port, peer.address),
      wire: (reply) => socket.on('message', (msg) => msg.length >= 4 && reply(msg.readUInt32BE(0))),
    },
  };
}

/** client -> peer -> client, no server: the baseline alone. */
export async function probeDirect(peer: Endpoint, o: LatencyOptions = DEFAULT_LATENCY_OPTIONS): Promise<LatencyResult> {
  const d = await directPath(peer, o);
  try {
    const [r] = await pace(o, [d.path]);
    return r!;
  } finally {
    d.socket.close();
  }
}

export interface ThroughServerResult {
  /** client -> server -> peer -> server -> client */
  readonly through: LatencyResult;
  /** client -> peer -> client, interleaved with the probes through the server */
  readonly direct: LatencyResult;
}

/**
 * Probes through the server, over one channel of one allocation, interleaved with
 * the same number of direct probes (client -> peer -> client) from another socket.
 */
export async function probeThroughServer(
  server: Endpoint,
  credentials: { readonly username: string; readonly password: string },
  peer: Endpoint,
  o: LatencyOptions = DEFAULT_LATENCY_OPTIONS,
): Promise<ThroughServerResult> {
  const client = await AllocationClient.open(server, credentials, new DriverStats());
  const d = await directPath(peer, o);
  try {
    await client.allocate();
    await client.channelBind(CHANNEL, peer);
    const through: Path = {
      frame: (seq) => {
        const p = payload(seq, o.payloadBytes);
        const b = Buffer.alloc(4 + p.length);
        b.writeUInt16BE(CHANNEL, 0);
        b.writeUInt16BE(p.length, 2);
        p.copy(b, 4);
        return b;
      },
      send: (buf) => client.socket.send(buf, server.port, server.address),
      wire: (reply) =>
        client.socket.on('message', (msg) => {
          if (msg.length >= 8 && (msg[0]! & 0xc0) === 0x40) reply(msg.readUInt32BE(4));
        }),
    };
    const [t, dr] = await pace(o, [through, d.path]);
    return { through: t!, direct: dr! };
  } finally {
    d.socket.close();
    await client.close();
  }
}

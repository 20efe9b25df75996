// The scale part's small helpers, run as their own processes in its namespaces
// (bench/allocations/scale.ts starts them): node scale-probe.js <mode> '<json config>'.
//
//   probe   in C: round trips at a steady rate, through the relay (one allocation: a Send
//           indication to the echo peer, the echo back as a Data indication, i.e. the
//           engine's JavaScript path both ways; ChannelData could go through the kernel)
//           and straight to the echo peer (the floor: the same veths and routing, no
//           relay), both sent at the same moments from this one process, so that what
//           delays the client's side (CPU 0's other work, this process's own GC) delays
//           both alike and the difference is the relay's.
//   echo    in P: sends every datagram back to where it came from.
//   bridge  in S: a Unix socket in the scratch directory forwarded to a TCP port on S's
//           loopback, so the benchmark (in the root namespace) reads anyturn's /metrics and
//           /readyz, which listen on S's 127.0.0.1 only.
//
// Each prints {"type":"ready"} once it serves (echo, bridge) or {"type":"done",...} when over (probe).
import dgram from 'node:dgram';
import net from 'node:net';
import { rmSync } from 'node:fs';
import { performance } from 'node:perf_hooks';

import { Attr } from '../../src/stun/constants.js';
import { getAttribute } from '../../src/stun/message.js';
import { AllocationClient, DriverStats, summarize, type Endpoint } from '../turn-driver.js';
import { PASSWORD, USER } from '../servers.js';
import { sleep } from '../host.js';

export interface ProbeConfig {
  readonly server: Endpoint;
  readonly peer: Endpoint;
  /** The relay probe's client socket, and the direct probe's socket. */
  readonly bind: Endpoint;
  readonly directBind: Endpoint;
  /** Round trips per second, and how many; the first `warmup` are left out of the figures. */
  readonly rate: number;
  readonly count: number;
  readonly warmup: number;
  readonly size: number;
}

export interface EchoConfig {
  readonly bind: Endpoint;
}

export interface BridgeConfig {
  readonly path: string;
  readonly port: number;
}

/** How long the probe waits for the last answers after its last send. */
const DRAIN_MS = 1000;

function out(record: Record<string, unknown>): void {
  process.stdout.write(`${JSON.stringify(record)}\n`);
}

/** Send times by sequence number, and the round trips (ms) of the answers after the warm-up. */
class Rtt {
  readonly sentAt: Float64Array;
  readonly seen: Uint8Array;
  readonly ms: number[] = [];
  /** Each answered round trip (ms) by sequence number; NaN while unanswered. */
  readonly bySeq: Float64Array;
  received = 0;
  constructor(private readonly c: ProbeConfig) {
    this.sentAt = new Float64Array(c.count);
    this.seen = new Uint8Array(c.count);
    this.bySeq = new Float64Array(c.count).fill(Number.NaN);
  }

  payload(seq: number): Buffer {
    const b = Buffer.alloc(this.c.size);
    b.writeUInt32BE(seq, 0);
    this.sentAt[seq] = performance.now();
    return b;
  }

  answer(data: Buffer | undefined): void {
    const now = performance.now();
    if (data === undefined || data.length < 4) return;
    const seq = data.readUInt32BE(0);
    if (seq >= this.c.count || this.seen[seq] === 1 || this.sentAt[seq] === 0) return;
    this.seen[seq] = 1;
    if (seq < this.c.warmup) return;
    this.received++;
    this.ms.push(now - this.sentAt[seq]!);
    this.bySeq[seq] = now - this.sentAt[seq]!;
  }
}

/** Sends `count` payloads at `rate`, on schedule (late sends go at once, not skipped). */
async function paced(c: ProbeConfig, send: (seq: number) => void): Promise<number> {
  const period = 1000 / c.rate;
  const t0 = performance.now();
  let maxLagMs = 0;
  for (let seq = 0; seq < c.count; seq++) {
    const at = t0 + seq * period;
    const wait = at - performance.now();
    if (wait > 1) await sleep(wait);
    maxLagMs = Math.max(maxLagMs, performance.now() - at);
    send(seq);
  }
  await sleep(DRAIN_MS);
  return maxLagMs;
}

async function probe(c: ProbeConfig): Promise<void> {
  const relayed = new Rtt(c);
  const direct = new Rtt(c);
  const client = await AllocationClient.open(c.server, { username: USER, password: PASSWORD }, new DriverStats(), c.bind);
  await client.allocate();
  await client.createPermission(c.peer);
  client.onDataIndication = (m) => relayed.answer(getAttribute(m, Attr.Data));
  const socket = dgram.createSocket('udp4');
  await new Promise<void>((resolve, reject) => {
    socket.once('error', reject);
    socket.bind(c.directBind.port, c.directBind.address, () => resolve());
  });
  socket.on('message', (msg) => direct.answer(msg));
  const sendRelayed = (seq: number): void => client.sendIndication(c.peer, relayed.payload(seq));
  const sendDirect = (seq: number): void => {
    socket.send(direct.payload(seq), c.peer.port, c.peer.address);
  };
  // Which goes first alternates, so neither is always the one that waits for the other's send.
  const maxLagMs = await paced(c, (seq) => {
    if (seq % 2 === 0) {
      sendRelayed(seq);
      sendDirect(seq);
    } else {
      sendDirect(seq);
      sendRelayed(seq);
    }
  });
  await client.refresh(0).catch(() => undefined);
  await client.close();
  socket.close();
  const timed = c.count - c.warmup;
  const result = (rtt: Rtt) => ({ sent: timed, received: rtt.received, lost: timed - rtt.received, rttMs: summarize(rtt.ms), maxLagMs });
  // The relay's added latency, probe by probe: relayed minus direct round trip of the pair sent together.
  const added: number[] = [];
  for (let seq = c.warmup; seq < c.count; seq++) {
    const d = relayed.bySeq[seq]! - direct.bySeq[seq]!;
    if (!Number.isNaN(d)) added.push(d);
  }
  out({ type: 'done', relay: result(relayed), direct: result(direct), addedMs: summarize(added) });
}

async function echo(c: EchoConfig): Promise<void> {
  const socket = dgram.createSocket('udp4');
  socket.on('message', (msg, rinfo) => socket.send(msg, rinfo.port, rinfo.address));
  await new Promise<void>((resolve, reject) => {
    socket.once('error', reject);
    socket.bind(c.bind.port, c.bind.address, () => resolve());
  });
  out({ type: 'ready' });
  await new Promise<never>(() => undefined); // until stopped
}

async function bridge(c: BridgeConfig): Promise<void> {
  rmSync(c.path, { force: true });
  const server = net.createServer((downstream) => {
    const upstream = net.connect(c.port, '127.0.0.1');
    const close = (): void => {
      downstream.destroy();
      upstream.destroy();
    };
    downstream.on('error', close);
    upstream.on('error', close);
    downstream.pipe(upstream).pipe(downstream);
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(c.path, () => resolve());
  });
  out({ type: 'ready' });
  await new Promise<never>(() => undefined); // until stopped
}

async function main(): Promise<void> {
  const [mode, json] = process.argv.slice(2);
  const config = JSON.parse(json ?? '{}') as unknown;
  if (mode === 'probe') await probe(config as ProbeConfig);
  else if (mode === 'echo') await echo(config as EchoConfig);
  else if (mode === 'bridge') await bridge(config as BridgeConfig);
  else throw new Error(`scale-probe: unknown mode '${mode ?? ''}' (probe, echo, bridge)`);
}

main().then(
  () => process.exit(0),
  (err: unknown) => {
    console.error(err instanceof Error ? err.message : String(err));
    process.exit(1);
  },
);

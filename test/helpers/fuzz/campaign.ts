// A fuzz campaign against a running server, over real sockets on loopback: mutated
// packets (packets.ts) from several UDP sources (allocated and signing, or bare), the
// peer side (datagrams to the fuzzers' relayed addresses) and TCP/TLS connections (cut
// at random points, reconnected when the server closes them), while relaying clients
// stream ChannelData and Send indications through the same server to an echo peer and
// count what comes back. Used by test/integration/fuzz.test.ts (the CI size, in
// process) and bench/fuzz.ts (a million packets against the CLI).
//
// Safety: peers live on PEER_ADDRESS; the server must allow that address as a peer and
// deny every other (FUZZ_PEER_FLAGS), because signed mutated requests can name any
// address in a permission or channel. The callers configure it so.

import dgram from 'node:dgram';
import { encodeChannelNumber, encodeRequestedTransport } from '../../../src/stun/attributes.js';
import { Attr, Method, TRANSPORT_UDP } from '../../../src/stun/constants.js';
import { decodeAddress } from '../../../src/stun/address.js';
import { getAttribute } from '../../../src/stun/message.js';
import type { SeededRandom } from '../random.js';
import { type Endpoint, StreamTurnClient, TestTurnClient } from '../turn-client.js';
import { udpReceiveDrops } from '../udp-drops.js';
import { PacketFuzzer, type Signer, streamChunks } from './packets.js';
import { seedMessages } from './seeds.js';

/** The only peer address the server under fuzz may relay to. */
export const PEER_ADDRESS = '127.0.0.77';
/** The peer policy a fuzzed server needs (as config keys: flag names without the dashes). */
export const FUZZ_PEER_FLAGS = { 'allowed-peer-ip': [`${PEER_ADDRESS}/32`], 'denied-peer-ip': ['0.0.0.0/0', '::/0'] } as const;
export const FUZZ_REALM = 'anyturn.fuzz.test';
export const FUZZ_USERS = ['live1', 'live2', 'live3', 'f1', 'f2', 'f3', 'f4', 's1', 's2', 'watch'];
export const passwordOf = (user: string): string => `pw-${user}`;
const cred = (username: string) => ({ username, password: passwordOf(username), realm: FUZZ_REALM });

export interface CampaignOptions {
  readonly server: { readonly address: string; readonly port: number; readonly tlsPort?: number };
  readonly rng: SeededRandom;
  readonly packets: number;
  /** Packets between two Binding round trips (the pace: the server has read a batch before the next). */
  readonly batch?: number;
  /** Share of packets over TCP (and TLS when tlsPort is given); default 0.2. */
  readonly streamShare?: number;
  readonly onBatch?: (sent: number) => void;
  /** Tokens each relaying client sends after the fuzz (default 200). */
  readonly postPackets?: number;
}

export interface CampaignResult {
  readonly sent: { udp: number; peer: number; tcp: number; tls: number };
  /** UDP packets from client sockets the engine must count as not_stun (see countsAsNotStun). */
  readonly notStunSent: number;
  readonly bindingFailures: number;
  readonly reconnects: number;
  /** Per relaying client: tokens sent, echoed back; the kernel's drops on the sockets on the way. */
  readonly relaying: { name: string; sent: number; back: number }[];
  /** The same after the fuzz (postPackets each): the allocations still relay everything. */
  readonly after: { name: string; sent: number; back: number }[];
  readonly kernelDrops: number;
  readonly listeningDrops: number;
  readonly mutations: Map<string, number>;
}

/** engine.handleClientPacket: empty, first two bits 10 or 11, or STUN-looking and under 20 bytes. */
export function countsAsNotStun(buf: Buffer): boolean {
  const top = buf.length > 0 ? buf[0]! & 0xc0 : 0xff;
  return top === 0x80 || top === 0xc0 || top === 0xff || (top === 0 && buf.length < 20);
}

/** A UDP peer on PEER_ADDRESS that sends every datagram back where it came from. */
export class EchoPeer {
  private constructor(readonly socket: dgram.Socket) {
    socket.on('message', (data, rinfo) => socket.send(data, rinfo.port, rinfo.address));
  }
  static async open(): Promise<EchoPeer> {
    const socket = dgram.createSocket('udp4');
    await new Promise<void>((resolve) => socket.bind(0, PEER_ADDRESS, () => resolve()));
    return new EchoPeer(socket);
  }
  get endpoint(): Endpoint {
    return { address: PEER_ADDRESS, port: this.socket.address().port };
  }
  close(): void {
    this.socket.close();
  }
}

const signerOf =
  (c: TestTurnClient | StreamTurnClient): (() => Signer | undefined) =>
  () =>
    c.nonce === undefined ? undefined : { username: c.credentials.username, realm: c.realm, nonce: c.nonce, key: c.key() };

type Phase = 'during' | 'after';
const tokens = (received: readonly { data: Buffer }[], prefix: string): number =>
  new Set(received.map((x) => x.data.toString()).filter((s) => s.startsWith(prefix))).size;

/** One relaying allocation: sends numbered tokens to the echo peer and collects them back. */
interface Relayer {
  readonly name: string;
  /** Tokens sent per phase ('during' the fuzz, 'after' it). */
  readonly sent: Record<Phase, number>;
  send(phase: Phase): void;
  back(phase: Phase): number;
  close(): void;
  readonly ports: number[];
}

async function udpRelayer(name: string, server: Endpoint, peer: Endpoint, indication: boolean): Promise<Relayer> {
  const c = await TestTurnClient.open(server, cred(name));
  const allocated = await c.allocate();
  if (allocated.response.code !== 200 || !allocated.relayed) throw new Error(`${name}: Allocate answered ${allocated.response.code}`);
  if (indication) {
    if ((await c.createPermission(peer)).code !== 200) throw new Error(`${name}: CreatePermission failed`);
  } else if ((await c.channelBind(0x4000, peer)).code !== 200) throw new Error(`${name}: ChannelBind failed`);
  const r: Relayer = {
    name,
    sent: { during: 0, after: 0 },
    send: (phase) => {
      const data = Buffer.from(`${name} ${phase} ${r.sent[phase]++}`);
      if (indication) c.sendIndication(peer, data);
      else c.sendChannelData(0x4000, data);
    },
    back: (phase) => tokens(c.received, `${name} ${phase} `),
    close: () => c.close(),
    ports: [c.localPort, allocated.relayed.port],
  };
  return r;
}

async function streamRelayer(name: string, server: Endpoint, peer: Endpoint, tls: boolean): Promise<Relayer> {
  const c = await StreamTurnClient.connect(server, cred(name), { tls });
  const allocated = await c.allocate();
  if (allocated.response.code !== 200 || !allocated.relayed) throw new Error(`${name}: Allocate answered ${allocated.response.code}`);
  if ((await c.channelBind(0x4000, peer)).code !== 200) throw new Error(`${name}: ChannelBind failed`);
  const r: Relayer = {
    name,
    sent: { during: 0, after: 0 },
    send: (phase) => c.write(c.channelDataBuffer(0x4000, Buffer.from(`${name} ${phase} ${r.sent[phase]++}`))),
    back: (phase) => tokens(c.received, `${name} ${phase} `),
    close: () => c.close(),
    ports: [allocated.relayed.port],
  };
  return r;
}

/** A fuzzing TCP or TLS connection with an allocation, signing its mutations; reopened when the server closes it. */
class StreamFuzzer {
  private client: StreamTurnClient | undefined;
  reconnects = 0;
  readonly fuzzer: PacketFuzzer;
  constructor(
    private readonly name: string,
    private readonly server: Endpoint,
    readonly tls: boolean,
    private readonly rng: SeededRandom,
    private readonly peer: Endpoint,
  ) {
    this.fuzzer = new PacketFuzzer(rng, seedMessages({ peer }), {
      signer: () => (this.client ? signerOf(this.client)() : undefined),
      boundChannels: [0x4001],
      stream: true,
    });
  }

  private async open(): Promise<StreamTurnClient> {
    const c = await StreamTurnClient.connect(this.server, cred(this.name), { tls: this.tls, localAddress: this.tls ? '127.0.0.4' : '127.0.0.3' });
    if (this.nonce === undefined) {
      await c.allocate();
      await c.channelBind(0x4001, this.peer).catch(() => undefined);
      this.nonce = c.nonce;
      return c;
    }
    // Nonces are stateless and not bound to a connection (src/turn/auth/nonce.ts): the first
    // one serves every reconnection, so no 401 round trip is needed, which the per-source
    // answer limit, spent by the fuzz, would hold back.
    c.nonce = this.nonce;
    c.write(c.build(Method.Allocate, (w) => w.add(Attr.RequestedTransport, encodeRequestedTransport(TRANSPORT_UDP))).buf);
    c.write(
      c.build(Method.ChannelBind, (w) => {
        w.add(Attr.ChannelNumber, encodeChannelNumber(0x4001));
        w.addXorAddress(Attr.XorPeerAddress, this.peer.address, this.peer.port);
      }).buf,
    );
    return c;
  }
  private nonce: string | undefined;

  /** Writes `packets` cut at random points; waits for the socket to drain. */
  async send(packets: Buffer[]): Promise<void> {
    if (!this.client || this.client.isClosed) {
      if (this.client) this.reconnects++;
      this.client = undefined;
      this.client = await this.open().catch(() => undefined);
      if (!this.client) return;
    }
    const socket = this.client.socket;
    for (const chunk of streamChunks(this.rng, packets)) {
      if (socket.destroyed) return;
      if (!socket.write(chunk))
        await new Promise<void>((resolve) => {
          const done = (): void => {
            socket.off('drain', done).off('close', done);
            resolve();
          };
          socket.on('drain', done).on('close', done);
        });
    }
  }

  close(): void {
    this.client?.close();
  }
}

/** Runs the campaign; throws only when the harness itself cannot start (the server refused the set-up). */
export async function runCampaign(o: CampaignOptions): Promise<CampaignResult> {
  const { rng } = o;
  const server: Endpoint = { address: o.server.address, port: o.server.port };
  const closers: (() => void)[] = [];
  try {
    const echo = await EchoPeer.open();
    closers.push(() => echo.close());
    const sink = await EchoPeer.open();
    closers.push(() => sink.close());

    const relayers = [
      await udpRelayer('live1', server, echo.endpoint, false),
      await udpRelayer('live2', server, echo.endpoint, true),
      await streamRelayer('live3', server, echo.endpoint, false),
    ];
    for (const r of relayers) closers.push(() => r.close());
    // Its own source address: the per-source answer limits (src/turn/auth/rate-limit.ts) that
    // the fuzzers on 127.0.0.1 run into must not slow the pace-keeping Binding down.
    const watch = await TestTurnClient.open(server, cred('watch'), { address: '127.0.0.2' });
    closers.push(() => watch.close());

    // Allocated UDP fuzzers: they sign their mutations, so these reach the method handlers.
    const udpFuzzers: { send: (b: Buffer) => void; fuzzer: PacketFuzzer; relayed?: Endpoint }[] = [];
    for (const name of ['f1', 'f2', 'f3', 'f4']) {
      const c = await TestTurnClient.open(server, cred(name));
      closers.push(() => c.close());
      const allocated = await c.allocate();
      await c.channelBind(0x4001, sink.endpoint);
      const relayedValue = allocated.response.message ? getAttribute(allocated.response.message, Attr.XorRelayedAddress) : undefined;
      const relayed = relayedValue ? decodeAddress(relayedValue, allocated.response.message.transactionId) : undefined;
      const fuzzer = new PacketFuzzer(rng, seedMessages({ peer: sink.endpoint, otherPeer: echo.endpoint }), { signer: signerOf(c), boundChannels: [0x4001] });
      udpFuzzers.push({ send: (b) => c.sendRaw(b), fuzzer, relayed });
    }
    // Bare UDP sources: no allocation, nothing signed.
    for (let i = 0; i < 2; i++) {
      const s = dgram.createSocket('udp4');
      await new Promise<void>((resolve) => s.bind(0, '127.0.0.1', () => resolve()));
      closers.push(() => s.close());
      udpFuzzers.push({ send: (b) => s.send(b, server.port, server.address), fuzzer: new PacketFuzzer(rng, seedMessages({ peer: sink.endpoint })) });
    }
    const relays = udpFuzzers.flatMap((f) => (f.relayed ? [f.relayed] : []));
    const streams = [new StreamFuzzer('s1', server, false, rng, sink.endpoint)];
    if (o.server.tlsPort !== undefined) streams.push(new StreamFuzzer('s2', { address: server.address, port: o.server.tlsPort }, true, rng, sink.endpoint));
    for (const s of streams) closers.push(() => s.close());

    const sent = { udp: 0, peer: 0, tcp: 0, tls: 0 };
    const mutations = new Map<string, number>();
    const count = (f: PacketFuzzer): void => {
      const [how, ops = '', signed] = f.lastKind.split(':');
      for (const op of ops.split('+')) mutations.set(`${how}:${op}`, (mutations.get(`${how}:${op}`) ?? 0) + 1);
      if (signed) mutations.set('signed', (mutations.get('signed') ?? 0) + 1);
    };
    let notStunSent = 0;
    let bindingFailures = 0;
    const batch = o.batch ?? 250;
    const streamShare = o.streamShare ?? 0.2;
    for (let total = 0; total < o.packets; ) {
      const end = Math.min(o.packets, total + batch);
      const streamPackets: Buffer[][] = streams.map(() => []);
      for (; total < end; total++) {
        if (total % 40 === 0) for (const r of relayers) r.send('during');
        if (rng.chance(streamShare)) {
          const i = rng.int(streams.length);
          streamPackets[i]!.push(streams[i]!.fuzzer.next());
          count(streams[i]!.fuzzer);
          if (streams[i]!.tls) sent.tls++;
          else sent.tcp++;
          continue;
        }
        const f = rng.pick(udpFuzzers);
        const packet = f.fuzzer.next();
        count(f.fuzzer);
        if (rng.int(10) === 0 && relays.length > 0) {
          // The peer side: anything, up to UDP's largest datagram, to a fuzzer's relayed address.
          sink.socket.send(rng.int(8) === 0 ? Buffer.alloc(65_507, 1) : packet, rng.pick(relays).port, rng.pick(relays).address);
          sent.peer++;
          continue;
        }
        if (countsAsNotStun(packet)) notStunSent++;
        f.send(packet);
        sent.udp++;
      }
      await Promise.all(streams.map((s, i) => s.send(streamPackets[i]!)));
      // The server keeps answering Binding (and has read this batch's datagrams before it answers).
      if (!(await watch.binding())) bindingFailures++;
      o.onBatch?.(total);
    }
    // Every token sent during the run comes back, but for what the kernel dropped on the way.
    const relayPorts = relayers.flatMap((r) => r.ports);
    const kernelDrops = (): number =>
      udpReceiveDrops(server.port) + udpReceiveDrops(echo.endpoint.port) + relayPorts.reduce((n, p) => n + udpReceiveDrops(p), 0);
    const settle = async (phase: Phase, slack: () => number): Promise<void> => {
      for (let i = 0; i < 500 && relayers.some((r) => r.back(phase) < r.sent[phase] - slack()); i++) await new Promise((resolve) => setTimeout(resolve, 20));
    };
    await settle('during', kernelDrops);
    const duringDrops = kernelDrops();
    // After the fuzz: every relaying allocation relays every packet, both ways, with no slack.
    const postPackets = o.postPackets ?? 200;
    for (let i = 0; i < postPackets; i++) {
      for (const r of relayers) r.send('after');
      if (i % 50 === 49) await settle('after', () => 0);
    }
    await settle('after', () => 0);
    return {
      sent,
      notStunSent,
      bindingFailures,
      reconnects: streams.reduce((n, s) => n + s.reconnects, 0),
      relaying: relayers.map((r) => ({ name: r.name, sent: r.sent.during, back: r.back('during') })),
      after: relayers.map((r) => ({ name: r.name, sent: r.sent.after, back: r.back('after') })),
      kernelDrops: duringDrops,
      listeningDrops: udpReceiveDrops(server.port),
      mutations,
    };
  } finally {
    for (const close of closers.reverse()) close();
  }
}

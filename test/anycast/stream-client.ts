// The client of the anycast tests, run inside the client namespace:
//   ip netns exec C node stream-client.js --server 198.18.100.1:3478 --bind 198.18.10.2
//     --peer 198.18.20.2:40000 --peer2 198.18.20.2:40001 --user alice:secret --realm anycast.test
//     --duration-ms 12000 --pps 50
//
// Two allocations from two sockets (two 5-tuples): A streams ChannelData on
// channel 0x4000 (so the peer's answers come back as ChannelData), B streams
// Send indications to a peer it has a permission for but no channel (so the
// answers come back as Data indications). Packets alternate A, B, A, B...
// at --pps in total, numbered by one sequence; each records its send time
// and the time its echo came back.
//
// Stdout, one JSON object a line:
//   {"event":"allocated","relayed":{"A":..,"B":..}}  once both allocations exist
//   {"event":"streaming"}                            after the first packet
//   {"event":"ops-done",...}                         after an "ops" command
//   {"event":"summary",...}                          at the end; then it exits
// With --release, both allocations are deleted (Refresh lifetime 0) after the
// stream, before the summary, and the summary says with what codes.
// Stdin commands (JSON lines):
//   {"cmd":"mark","name":"switch","atMs":<wall ms>}  records a named instant
//   {"cmd":"ops"}  Refresh, CreatePermission (peer) and ChannelBind of a new
//                  channel number (to --peer2) on both allocations, then 5
//                  probes over each new channel. The Refresh carries the nonce
//                  from the setup; then an unauthenticated Allocate from the
//                  allocation's own 5-tuple gets a 401 with a NONCE from the
//                  node that receives it now (an Allocate is never forwarded),
//                  and CreatePermission and ChannelBind carry that nonce. So
//                  after a route switch one request is checked with a nonce
//                  the other node issued, whichever node answers: in anycast
//                  relay mode the Refresh (issued by the old node, checked by
//                  the new), in forward mode the other two (issued by the new
//                  node, checked by the owner).

import type dgram from 'node:dgram';
import { encodeRequestedTransport } from '../../src/stun/attributes.js';
import { Attr, MessageClass, Method, TRANSPORT_UDP } from '../../src/stun/constants.js';
import { getAttribute } from '../../src/stun/message.js';
import { type Endpoint, TestTurnClient, codeOf, parseIncoming } from '../helpers/turn-client.js';
import { Stream, decodeProbe, encodeProbe, nowMs, onStdinCommands, parseEndpoint, parseFlags, requireFlags } from './wire.js';

const CHANNEL_A = 0x4000;
const NEW_CHANNEL_A = 0x4001;
const NEW_CHANNEL_B = 0x4002;
const DRAIN_MS = 1500;
const NEW_CHANNEL_PROBES = 5;

export interface OpResult {
  readonly code: number;
  readonly error?: string;
}

export interface StreamSummary {
  readonly event: 'summary';
  readonly relayed: { readonly A: Endpoint; readonly B: Endpoint };
  /** [seq, stream, sentAtMs, echoedAtMs or -1, arrival kind: 0 channel-data, 1 data-indication, -1 none] */
  readonly packets: [number, number, number, number, number][];
  readonly marks: Record<string, number>;
  /** Results of the "ops" command by allocation and method. */
  readonly ops: Record<string, Record<string, OpResult>>;
  readonly opsAtMs?: number;
  /** Echoes over the channels bound by "ops", by stream id. */
  readonly newChannelEchoes: Record<string, number>;
  /** Every STUN error response code received on either socket, with counts. */
  readonly errorCodes: Record<string, number>;
  readonly got437: number;
  /** 438 Stale Nonce answers received on either socket (each was retried with the fresh nonce). */
  readonly got438: number;
  /** Sources other than the server address that sent us anything ("ip:port" -> count). */
  readonly foreignSources: Record<string, number>;
  /** Echoes whose framing did not match the stream (ChannelData expected on A, Data indication on B). */
  readonly wrongKind: number;
  /** With --release: the codes of the Refresh (lifetime 0) of A and B. */
  readonly released?: { readonly A: OpResult; readonly B: OpResult };
}

function emit(record: Record<string, unknown>): void {
  process.stdout.write(`${JSON.stringify(record)}\n`);
}

async function op(fn: () => Promise<{ code: number }>): Promise<OpResult> {
  try {
    return { code: (await fn()).code };
  } catch (err) {
    return { code: 0, error: (err as Error).message };
  }
}

async function main(): Promise<void> {
  const flags = parseFlags(process.argv.slice(2));
  const needed = ['server', 'bind', 'peer', 'peer2', 'user', 'realm', 'duration-ms'];
  if (!requireFlags(flags, needed, `usage: stream-client ${needed.map((n) => `--${n} X`).join(' ')} [--pps 50] [--release]`)) return;
  const server = parseEndpoint(flags.get('server')!);
  const bind = flags.get('bind')!;
  const peer = parseEndpoint(flags.get('peer')!);
  const peer2 = parseEndpoint(flags.get('peer2')!);
  const [username, password] = flags.get('user')!.split(':') as [string, string];
  const credentials = { username, password, realm: flags.get('realm')! };
  const durationMs = Number(flags.get('duration-ms'));
  const pps = Number(flags.get('pps') ?? 50);

  const errorCodes: Record<string, number> = {};
  const foreignSources: Record<string, number> = {};
  let got437 = 0;
  let got438 = 0;
  let wrongKind = 0;
  const sentAt = new Map<number, { stream: number; at: number }>();
  const echoedAt = new Map<number, { at: number; kind: number }>();
  const newChannelEchoes: Record<string, number> = { [Stream.newChannelA]: 0, [Stream.newChannelB]: 0 };
  const marks: Record<string, number> = {};
  const serverKey = `${server.address}:${server.port}`;

  // A second listener on each client's socket: sees every datagram with its source.
  const watch = (socket: dgram.Socket): void => {
    socket.on('message', (buf, rinfo) => {
      const at = nowMs();
      const from = `${rinfo.address}:${rinfo.port}`;
      if (from !== serverKey) foreignSources[from] = (foreignSources[from] ?? 0) + 1;
      const incoming = parseIncoming(buf);
      if (!incoming) return;
      if (incoming.kind === 'message') {
        const m = incoming.message;
        if (m.cls !== MessageClass.ErrorResponse) return;
        const code = codeOf(m);
        errorCodes[code] = (errorCodes[code] ?? 0) + 1;
        if (code === 437) got437++;
        if (code === 438) got438++;
        return;
      }
      const kind = incoming.kind === 'channel-data' ? 0 : 1;
      const payload = incoming.data;
      const p = decodeProbe(payload);
      if (!p) return;
      if (p.stream === Stream.newChannelA || p.stream === Stream.newChannelB) {
        newChannelEchoes[p.stream] = (newChannelEchoes[p.stream] ?? 0) + 1;
        return;
      }
      if ((p.stream === Stream.channel && kind !== 0) || (p.stream === Stream.indication && kind !== 1)) wrongKind++;
      if (!echoedAt.has(p.seq)) echoedAt.set(p.seq, { at, kind });
    });
  };

  const a = await TestTurnClient.open(server, credentials, { address: bind });
  const b = await TestTurnClient.open(server, credentials, { address: bind });
  watch(a.socket);
  watch(b.socket);

  const allocA = await a.allocate();
  const allocB = await b.allocate();
  if (!allocA.relayed || !allocB.relayed) {
    emit({ event: 'error', stage: 'allocate', codes: [allocA.response.code, allocB.response.code] });
    a.close();
    b.close();
    process.exitCode = 1;
    return;
  }
  const setup = [await op(() => a.createPermission(peer)), await op(() => a.channelBind(CHANNEL_A, peer)), await op(() => b.createPermission(peer))];
  if (setup.some((r) => r.code !== 200)) {
    emit({ event: 'error', stage: 'setup', setup });
    a.close();
    b.close();
    process.exitCode = 1;
    return;
  }
  const relayed = { A: allocA.relayed, B: allocB.relayed };
  emit({ event: 'allocated', relayed });

  const ops: Record<string, Record<string, OpResult>> = {};
  let opsAtMs: number | undefined;
  let opsRunning: Promise<void> | undefined;
  /** An unauthenticated Allocate from the client's 5-tuple: the receiving node answers 401 with its own NONCE. */
  const challenge = async (c: TestTurnClient): Promise<OpResult> => {
    const before = c.nonce;
    const { buf, transactionId } = c.build(Method.Allocate, (w) => w.add(Attr.RequestedTransport, encodeRequestedTransport(TRANSPORT_UDP)), { auth: false });
    const m = await c.transact(buf, transactionId);
    if (!m) return { code: 0, error: 'no answer' };
    const code = codeOf(m);
    const nonce = getAttribute(m, Attr.Nonce)?.toString('utf8');
    if (code !== 401 || nonce === undefined) return { code, error: 'no 401 with a NONCE' };
    c.nonce = nonce;
    return nonce === before ? { code, error: 'the same NONCE as before' } : { code };
  };
  const runOps = async (): Promise<void> => {
    opsAtMs = nowMs();
    const [ra, rb] = await Promise.all([
      (async () => ({
        refresh: await op(() => a.refresh(600)),
        challenge: await challenge(a),
        createPermission: await op(() => a.createPermission(peer)),
        channelBind: await op(() => a.channelBind(NEW_CHANNEL_A, peer2)),
      }))(),
      (async () => ({
        refresh: await op(() => b.refresh(600)),
        challenge: await challenge(b),
        createPermission: await op(() => b.createPermission(peer)),
        channelBind: await op(() => b.channelBind(NEW_CHANNEL_B, peer2)),
      }))(),
    ]);
    ops.A = ra;
    ops.B = rb;
    for (let i = 0; i < NEW_CHANNEL_PROBES; i++) {
      a.sendChannelData(NEW_CHANNEL_A, encodeProbe(Stream.newChannelA, i));
      b.sendChannelData(NEW_CHANNEL_B, encodeProbe(Stream.newChannelB, i));
      await new Promise((r) => setTimeout(r, 20));
    }
    emit({ event: 'ops-done', ops });
  };
  onStdinCommands((cmd) => {
    if (cmd.cmd === 'mark' && typeof cmd.name === 'string') {
      marks[cmd.name] = typeof cmd.atMs === 'number' ? cmd.atMs : nowMs();
    } else if (cmd.cmd === 'ops') {
      opsRunning ??= runOps();
    }
  });

  // Paced by an absolute schedule so timer jitter does not accumulate.
  const periodMs = 1000 / pps;
  const start = nowMs();
  const total = Math.floor((durationMs / 1000) * pps);
  for (let seq = 0; seq < total; seq++) {
    const due = start + seq * periodMs;
    const wait = due - nowMs();
    if (wait > 0) await new Promise((r) => setTimeout(r, wait));
    const stream = seq % 2 === 0 ? Stream.channel : Stream.indication;
    const probe = encodeProbe(stream, seq);
    sentAt.set(seq, { stream, at: nowMs() });
    if (stream === Stream.channel) a.sendChannelData(CHANNEL_A, probe);
    else b.sendIndication(peer, probe);
    if (seq === 0) emit({ event: 'streaming', startMs: start });
  }
  await new Promise((r) => setTimeout(r, DRAIN_MS));
  if (opsRunning) await opsRunning;
  const released = flags.has('release') ? { A: await op(() => a.refresh(0)), B: await op(() => b.refresh(0)) } : undefined;

  const packets: StreamSummary['packets'] = [];
  for (const [seq, s] of sentAt) {
    const e = echoedAt.get(seq);
    packets.push([seq, s.stream, Math.round(s.at * 10) / 10, e ? Math.round(e.at * 10) / 10 : -1, e ? e.kind : -1]);
  }
  const summary: StreamSummary = {
    event: 'summary',
    relayed,
    packets,
    marks,
    ops,
    opsAtMs,
    newChannelEchoes,
    errorCodes,
    got437,
    got438,
    foreignSources,
    wrongKind,
    ...(released ? { released } : {}),
  };
  emit(summary as unknown as Record<string, unknown>);
  a.close();
  b.close();
  // Stdout is a pipe (synchronous on Linux): the summary is out; stdin would keep us alive.
  process.exit(0);
}

await main();

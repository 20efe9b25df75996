// One werift RTCPeerConnection for test/dataplane/interop-kernel.test.ts, run inside a
// namespace of the test's topology (test/helpers/netns.ts):
//   ip netns exec C node werift-peer.js --role offerer --turn 198.18.100.1:3478 --user alice:secret --messages 100
//   ip netns exec P node werift-peer.js --role answerer --stun 198.18.100.1:3478 --messages 100
// The offerer gathers relay candidates only (iceTransportPolicy 'relay' with a TURN URL,
// username and credential: werift then skips host and STUN gathering, see
// test/interop/werift.test.ts); the answerer gathers host candidates and asks --stun for
// its reflexive address (werift always asks a STUN server, stun.l.google.com unless one is
// given; in P the answer is the host address itself). The signalling goes through the
// test, one JSON object per line:
//   stdout {"event":"offer","sdp":...}    offerer, once gathering is complete
//   stdin  {"cmd":"offer","sdp":...}      answerer
//   stdout {"event":"answer","sdp":...}   answerer, once gathering is complete
//   stdin  {"cmd":"answer","sdp":...}     offerer
//   stdout {"event":"done",...}           both, once the channel is open, --messages sent and
//                                         as many received (the report below)
//   stdout {"event":"error",...}          the connection failed
//   stdin  {"cmd":"freeze"}               from now on every datagram werift sends is dropped
//   stdout {"event":"frozen"}
//   stdin  {"cmd":"report"}               what crossed werift's sockets (Traffic below)
//   stdout {"event":"traffic",...}
//   stdin  {"cmd":"close"}                closes the connection and exits
// Every datagram goes to an address in 198.18.0.0/15 (the test's namespaces): dgram's send
// is wrapped, and a send elsewhere is refused and reported (Traffic.refused).

import dgram from 'node:dgram';
import net from 'node:net';
import { type RTCDataChannel, RTCPeerConnection, type RTCPeerConnectionConfig } from 'werift';
import { onStdinCommands, parseFlags, requireFlags } from '../anycast/wire.js';

export interface WeriftPeerReport {
  readonly event: 'done';
  readonly role: string;
  readonly received: string[];
  /** The transport of each TURN client werift opened ('udp', 'tcp'...). */
  readonly turnTransports: string[];
  /** The selected candidate pair, as SDP candidate lines. */
  readonly selected?: { readonly local: string; readonly remote: string };
}

function emit(record: Record<string, unknown>): void {
  process.stdout.write(`${JSON.stringify(record)}\n`);
}

function inTestRange(address: string): boolean {
  if (!net.isIPv4(address)) return false;
  const [a, b] = address.split('.').map(Number);
  return a === 198 && (b === 18 || b === 19);
}

type SendFunction = (this: dgram.Socket, ...args: unknown[]) => void;
type EmitFunction = (this: dgram.Socket, event: string | symbol, ...args: unknown[]) => boolean;

/** Datagrams by kind: STUN (RFC 8489 §5: top bits 00 and the magic cookie), ChannelData (top bits 01, RFC 8656 §12.4), other (DTLS...). */
export interface DatagramCounts {
  stun: number;
  channel: number;
  other: number;
}

function kindOf(data: unknown): keyof DatagramCounts {
  if (!Buffer.isBuffer(data)) return 'other';
  if (data.length >= 20 && (data[0]! & 0xc0) === 0 && data.readUInt32BE(4) === 0x2112a442) return 'stun';
  return (data[0]! & 0xc0) === 0x40 ? 'channel' : 'other';
}

function count(into: Record<string, DatagramCounts>, address: string, data: unknown): void {
  const c = (into[address] ??= { stun: 0, channel: 0, other: 0 });
  c[kindOf(data)]++;
}

/** What crossed werift's UDP sockets, by remote address (every datagram: ICE, TURN, DTLS, SCTP). */
export interface Traffic {
  readonly sentTo: Record<string, DatagramCounts>;
  readonly receivedFrom: Record<string, DatagramCounts>;
  /** Destinations outside 198.18.0.0/15 werift tried to send to (refused). */
  readonly refused: string[];
}

/**
 * Wraps dgram.Socket#send and #emit('message'): counts every datagram by remote address and
 * kind; a send to anywhere but the test's namespaces is refused and recorded; after
 * freeze() every send is dropped (and not counted), so the counts can be compared with the
 * relay's once the datagrams in flight have arrived.
 */
function watchSockets(): { traffic: Traffic; freeze(): void } {
  const traffic: Traffic = { sentTo: {}, receivedFrom: {}, refused: [] };
  let frozen = false;
  const prototype = dgram.Socket.prototype as unknown as { send: SendFunction; emit: EmitFunction };
  const send = prototype.send;
  prototype.send = function countedSend(this: dgram.Socket, ...args: unknown[]): void {
    // send(msg, port, address?, cb?) or send(msg, offset, length, port, address?, cb?)
    const offsetForm = typeof args[2] === 'number';
    const address = offsetForm ? args[4] : args[2];
    const port = offsetForm ? args[3] : args[1];
    const callback = args[args.length - 1];
    const outside = typeof address === 'string' && !inTestRange(address);
    if (outside || frozen) {
      if (outside) traffic.refused.push(`${address}:${String(port)}`);
      const error = outside ? new Error('refused by the test guard') : null;
      if (typeof callback === 'function') process.nextTick(() => (callback as (e: Error | null) => void)(error));
      return;
    }
    if (typeof address === 'string') count(traffic.sentTo, address, args[0]);
    send.apply(this, args);
  };
  const emit = prototype.emit;
  prototype.emit = function countedEmit(this: dgram.Socket, event: string | symbol, ...args: unknown[]): boolean {
    if (event === 'message') count(traffic.receivedFrom, (args[1] as dgram.RemoteInfo).address, args[0]);
    return emit.call(this, event, ...args);
  };
  return {
    traffic,
    freeze: () => {
      frozen = true;
    },
  };
}

/** werift 0.24.4 internals (as in test/interop/werift.test.ts): IceTransport -> Connection.protocols -> turn.transport.type. */
function turnTransports(pc: RTCPeerConnection): string[] {
  const out: string[] = [];
  for (const iceTransport of pc.iceTransports) {
    const protocols = (iceTransport.connection as unknown as { protocols?: unknown[] }).protocols ?? [];
    for (const protocol of protocols) {
      const type = (protocol as { turn?: { transport?: { type?: unknown } } }).turn?.transport?.type;
      if (typeof type === 'string') out.push(type);
    }
  }
  return out;
}

function gathered(pc: RTCPeerConnection): Promise<void> {
  if (pc.iceGatheringState === 'complete') return Promise.resolve();
  return pc.iceGatheringStateChange.watch((state) => state === 'complete').then(() => undefined);
}

function opened(channel: RTCDataChannel): Promise<void> {
  if (channel.readyState === 'open') return Promise.resolve();
  return channel.stateChanged.watch((state) => state === 'open').then(() => undefined);
}

async function main(): Promise<void> {
  const flags = parseFlags(process.argv.slice(2));
  if (!requireFlags(flags, ['role', 'messages'], 'usage: werift-peer --role offerer|answerer --messages N [--turn ip:port --user u:p] [--stun ip:port]'))
    return;
  const role = flags.get('role')!;
  const messages = Number(flags.get('messages'));
  const sockets = watchSockets();

  let config: RTCPeerConnectionConfig;
  if (role === 'offerer') {
    const [username, credential] = (flags.get('user') ?? '').split(':');
    config = {
      iceServers: [{ urls: `turn:${flags.get('turn')}?transport=udp`, username, credential }],
      iceTransportPolicy: 'relay',
      iceUseIpv4: true,
      iceUseIpv6: false,
      iceUseTcp: false,
    };
  } else {
    config = {
      iceServers: [{ urls: `stun:${flags.get('stun')}` }],
      iceTransportPolicy: 'all',
      iceUseIpv4: true,
      iceUseIpv6: false,
      iceUseTcp: false,
    };
  }
  const pc = new RTCPeerConnection(config);
  pc.connectionStateChange.subscribe((state) => {
    if (state === 'failed') emit({ event: 'error', role, error: 'connectionState failed' });
  });

  const received: string[] = [];
  let finish: () => void = () => undefined;
  const allReceived = new Promise<void>((resolve) => (finish = resolve));
  const collect = (channel: RTCDataChannel): void => {
    channel.onMessage.subscribe((data) => {
      received.push(typeof data === 'string' ? data : data.toString('utf8'));
      if (received.length >= messages) finish();
    });
  };
  const sendAll = async (channel: RTCDataChannel): Promise<void> => {
    await opened(channel);
    for (let i = 0; i < messages; i++) channel.send(`${role} #${i}`);
    await allReceived;
    const pair = pc.iceTransports[0]?.getSelectedCandidatePair();
    const report: WeriftPeerReport = {
      event: 'done',
      role,
      received,
      turnTransports: turnTransports(pc),
      selected: pair ? { local: pair.local.candidate, remote: pair.remote.candidate } : undefined,
    };
    emit(report as unknown as Record<string, unknown>);
  };
  const fail = (err: unknown): void => emit({ event: 'error', role, error: String((err as Error)?.stack ?? err) });

  if (role === 'offerer') {
    const channel = pc.createDataChannel('interop');
    collect(channel);
    void sendAll(channel).catch(fail);
    await pc.setLocalDescription(await pc.createOffer());
    await gathered(pc);
    emit({ event: 'offer', sdp: pc.localDescription?.sdp });
  } else {
    pc.onDataChannel.subscribe((channel) => {
      collect(channel);
      void sendAll(channel).catch(fail);
    });
  }

  onStdinCommands((cmd) => {
    void (async () => {
      if (cmd.cmd === 'offer' && role === 'answerer') {
        await pc.setRemoteDescription({ type: 'offer', sdp: String(cmd.sdp) });
        await pc.setLocalDescription(await pc.createAnswer());
        await gathered(pc);
        emit({ event: 'answer', sdp: pc.localDescription?.sdp });
      } else if (cmd.cmd === 'answer' && role === 'offerer') {
        await pc.setRemoteDescription({ type: 'answer', sdp: String(cmd.sdp) });
      } else if (cmd.cmd === 'freeze') {
        sockets.freeze();
        emit({ event: 'frozen' });
      } else if (cmd.cmd === 'report') {
        emit({ event: 'traffic', ...sockets.traffic });
      } else if (cmd.cmd === 'close') {
        await pc.close().catch(() => undefined);
        // werift's TURN refresh loop holds an un-cancellable timer (test/interop/werift.test.ts).
        process.exit(0);
      }
    })().catch(fail);
  });
}

await main();

// The floor: the least a TURN relay written in plain Node.js (node:dgram) can
// spend per relayed packet. It is NOT a TURN server; it exists only so that the
// benchmark (bench/run.ts) can show how much of anyturn's cost per packet is
// anyturn's own and how much is Node's.
//
//   node dist/bench/floor-forwarder.js --listening-port P [--listening-ip 127.0.0.1]
//        [--relay-ip 127.0.0.1] [--user name:password] [--realm R]
//
// What it does, just enough for turnutils_uclient (UDP clients, IPv4 only):
//   - control plane (not the hot path, so it uses anyturn's src/stun codec):
//     Allocate, Refresh, CreatePermission, ChannelBind and Binding get minimal valid
//     success responses. Allocate opens one relay socket (an ephemeral port on
//     --relay-ip) per client 5-tuple; Refresh with LIFETIME 0 closes it.
//   - authentication is a sham, on purpose: an Allocate without MESSAGE-INTEGRITY
//     gets 401 + REALM + NONCE (so uclient goes through its usual long-term
//     credential dance), and every request that carries MESSAGE-INTEGRITY is
//     accepted WITHOUT checking the MAC. Responses to such requests are signed with
//     the key of --user/--realm, because uclient checks the integrity of responses
//     once it has a nonce. Never expose this to anything but 127.0.0.1.
//   - hot path, nothing else:
//       ChannelData from the client  -> payload sent from the relay socket to the peer
//       Send indication from client  -> DATA sent from the relay socket to the peer
//       datagram on a relay socket   -> ChannelData (header + payload) to the client if
//                                       the peer has a channel, else a Data indication
//     No permissions, no expiry, no metrics, no rate limits, no checks beyond what it
//     takes not to crash. Unknown packets are dropped silently.
//   - TCP clients: not supported (the benchmark prints n/a for the floor there).
//
// Node-level tricks that any Node server can use are used here too, so that this
// really is a floor: a dgram `lookup` that answers IP literals at once (dgram would
// otherwise defer every send by a tick through dns.lookup), and 4 MiB socket
// buffers on the client listener (as anyturn has).
//
// It logs "floor ready" on stdout when it listens and exits on SIGINT/SIGTERM.
import dgram from 'node:dgram';

import { decodeAddress } from '../src/stun/address.js';
import { decodeChannelNumber } from '../src/stun/attributes.js';
import { Attr, MessageClass, Method } from '../src/stun/constants.js';
import { longTermKey } from '../src/stun/integrity.js';
import { decodeMessage, getAttribute, type StunMessage } from '../src/stun/message.js';
import { MessageWriter } from '../src/stun/writer.js';

interface Options {
  listeningIp: string;
  listeningPort: number;
  relayIp: string;
  user: string;
  password: string;
  realm: string;
}

function parseOptions(argv: readonly string[]): Options {
  const o: Options = { listeningIp: '127.0.0.1', listeningPort: 3478, relayIp: '127.0.0.1', user: 'bench', password: 'bench-password', realm: 'bench.anyturn' };
  for (let i = 0; i < argv.length; i += 2) {
    const flag = argv[i];
    const value = argv[i + 1];
    if (value === undefined) throw new Error(`${flag ?? ''} needs a value`);
    switch (flag) {
      case '--listening-ip':
        o.listeningIp = value;
        break;
      case '--listening-port':
        o.listeningPort = Number(value);
        break;
      case '--relay-ip':
        o.relayIp = value;
        break;
      case '--realm':
        o.realm = value;
        break;
      case '--user': {
        const at = value.indexOf(':');
        if (at < 0) throw new Error('--user wants name:password');
        o.user = value.slice(0, at);
        o.password = value.slice(at + 1);
        break;
      }
      // Accepted and ignored, so that the same launch arguments work: relay ports are ephemeral.
      case '--min-port':
      case '--max-port':
        break;
      default:
        throw new Error(`unknown argument '${flag ?? ''}'`);
    }
  }
  if (!Number.isInteger(o.listeningPort) || o.listeningPort < 0 || o.listeningPort > 65535) throw new Error('bad --listening-port');
  return o;
}

/** dgram resolves every destination through dns.lookup, which defers an IP literal by a tick; these are all IPv4 literals. */
function ipv4Lookup(address: string, _options: unknown, callback: (err: NodeJS.ErrnoException | null, address: string, family: number) => void): void {
  callback(null, address, 4);
}

interface Peer {
  readonly address: string;
  readonly port: number;
}

interface Allocation {
  readonly clientAddress: string;
  readonly clientPort: number;
  readonly relay: dgram.Socket;
  relayPort: number;
  /** channel number -> peer */
  readonly channels: Map<number, Peer>;
  /** peer address -> peer port -> channel number */
  readonly peerChannels: Map<string, Map<number, number>>;
}

const options = parseOptions(process.argv.slice(2));
const key = longTermKey(options.user, options.realm, options.password);
const NONCE = 'floor-nonce-not-checked';

/** client address -> client port -> allocation (two levels: no string built per packet). */
const allocations = new Map<string, Map<number, Allocation>>();

const listener = dgram.createSocket({
  type: 'udp4',
  recvBufferSize: 4 * 1024 * 1024,
  sendBufferSize: 4 * 1024 * 1024,
  lookup: ipv4Lookup as never,
});

function findAllocation(address: string, port: number): Allocation | undefined {
  return allocations.get(address)?.get(port);
}

// Data indication: 20-byte header, XOR-PEER-ADDRESS (4 + 8), DATA (4 + n, padded to 4).
const MAGIC_COOKIE = 0x2112a442;
let transactionCounter = 0;

function sendDataIndication(a: Allocation, msg: Buffer, peerAddress: string, peerPort: number): void {
  const n = msg.length;
  const padded = (n + 3) & ~3;
  const out = Buffer.allocUnsafe(20 + 12 + 4 + padded);
  out.writeUInt16BE(0x0017, 0); // Data indication
  out.writeUInt16BE(12 + 4 + padded, 2);
  out.writeUInt32BE(MAGIC_COOKIE, 4);
  out.writeUInt32BE(++transactionCounter >>> 0, 8);
  out.writeUInt32BE(0, 12);
  out.writeUInt32BE(0, 16);
  out.writeUInt16BE(Attr.XorPeerAddress, 20);
  out.writeUInt16BE(8, 22);
  out.writeUInt16BE(0x0001, 24);
  out.writeUInt16BE(peerPort ^ (MAGIC_COOKIE >>> 16), 26);
  const p = peerAddress.split('.');
  out.writeUInt32BE((((Number(p[0]) << 24) | (Number(p[1]) << 16) | (Number(p[2]) << 8) | Number(p[3])) ^ MAGIC_COOKIE) >>> 0, 28);
  out.writeUInt16BE(Attr.Data, 32);
  out.writeUInt16BE(n, 34);
  msg.copy(out, 36);
  if (padded !== n) out.fill(0, 36 + n);
  listener.send(out, a.clientPort, a.clientAddress);
}

/** Hot path 2: a datagram from a peer on one allocation's relay socket. */
function onPeerPacket(a: Allocation, msg: Buffer, rinfo: dgram.RemoteInfo): void {
  const channel = a.peerChannels.get(rinfo.address)?.get(rinfo.port);
  if (channel === undefined) {
    sendDataIndication(a, msg, rinfo.address, rinfo.port);
    return;
  }
  const n = msg.length;
  const out = Buffer.allocUnsafe(4 + n);
  out[0] = channel >>> 8;
  out[1] = channel & 255;
  out[2] = n >>> 8;
  out[3] = n & 255;
  msg.copy(out, 4);
  listener.send(out, a.clientPort, a.clientAddress);
}

const ipv4Text = new Map<number, string>();
function ipv4String(value: number): string {
  let s = ipv4Text.get(value);
  if (s === undefined) {
    s = `${value >>> 24}.${(value >>> 16) & 255}.${(value >>> 8) & 255}.${value & 255}`;
    ipv4Text.set(value, s);
  }
  return s;
}

/** A Send indication: find XOR-PEER-ADDRESS (IPv4) and DATA, send DATA to the peer. */
function onSendIndication(msg: Buffer, rinfo: dgram.RemoteInfo): void {
  const a = findAllocation(rinfo.address, rinfo.port);
  if (a === undefined) return;
  const end = msg.length;
  let pos = 20;
  let peerPort = -1;
  let peerIp = 0;
  let dataAt = -1;
  let dataLength = 0;
  while (pos + 4 <= end) {
    const type = (msg[pos]! << 8) | msg[pos + 1]!;
    const length = (msg[pos + 2]! << 8) | msg[pos + 3]!;
    if (pos + 4 + length > end) return;
    if (type === Attr.XorPeerAddress && length === 8) {
      peerPort = ((msg[pos + 6]! << 8) | msg[pos + 7]!) ^ (MAGIC_COOKIE >>> 16);
      peerIp = (msg.readUInt32BE(pos + 8) ^ MAGIC_COOKIE) >>> 0;
    } else if (type === Attr.Data) {
      dataAt = pos + 4;
      dataLength = length;
    }
    pos += 4 + ((length + 3) & ~3);
  }
  if (peerPort < 0 || dataAt < 0) return;
  a.relay.send(msg, dataAt, dataLength, peerPort, ipv4String(peerIp));
}

/** Hot path 1: everything that arrives on the client listener. */
function onClientPacket(msg: Buffer, rinfo: dgram.RemoteInfo): void {
  if (msg.length < 4) return;
  const b0 = msg[0]!;
  if ((b0 & 0xc0) === 0x40) {
    // ChannelData
    const a = findAllocation(rinfo.address, rinfo.port);
    if (a === undefined) return;
    const peer = a.channels.get((b0 << 8) | msg[1]!);
    if (peer === undefined) return;
    const n = (msg[2]! << 8) | msg[3]!;
    if (4 + n > msg.length) return;
    a.relay.send(msg, 4, n, peer.port, peer.address);
    return;
  }
  if (b0 === 0x00 && msg[1] === 0x16 && msg.length >= 20) {
    onSendIndication(msg, rinfo);
    return;
  }
  onControl(msg, rinfo);
}

// ---- control plane (not the hot path) ----

function respond(req: StunMessage, cls: MessageClass, rinfo: dgram.RemoteInfo, decorate: (w: MessageWriter) => void): void {
  const w = new MessageWriter(req.method, cls, req.transactionId);
  decorate(w);
  if (req.integrityOffset >= 0) {
    w.addIntegrity(key);
    w.addFingerprint();
  }
  listener.send(w.toBuffer(), rinfo.port, rinfo.address);
}

function peerOf(req: StunMessage): Peer | undefined {
  const value = getAttribute(req, Attr.XorPeerAddress);
  const a = value === undefined ? undefined : decodeAddress(value, req.transactionId);
  return a === undefined ? undefined : { address: a.address, port: a.port };
}

function lifetime(seconds: number): Buffer {
  const b = Buffer.alloc(4);
  b.writeUInt32BE(seconds, 0);
  return b;
}

function closeAllocation(a: Allocation): void {
  allocations.get(a.clientAddress)?.delete(a.clientPort);
  try {
    a.relay.close();
  } catch {
    // closed already
  }
}

function allocate(req: StunMessage, rinfo: dgram.RemoteInfo): void {
  const existing = findAllocation(rinfo.address, rinfo.port);
  const answer = (a: Allocation): void =>
    respond(req, MessageClass.SuccessResponse, rinfo, (w) => {
      w.addXorAddress(Attr.XorRelayedAddress, options.relayIp, a.relayPort);
      w.add(Attr.Lifetime, lifetime(600));
      w.addXorAddress(Attr.XorMappedAddress, rinfo.address, rinfo.port);
    });
  if (existing !== undefined) {
    if (existing.relayPort !== 0) answer(existing); // a retransmission; else the bind is still under way
    return;
  }
  const relay = dgram.createSocket({ type: 'udp4', lookup: ipv4Lookup as never });
  const a: Allocation = { clientAddress: rinfo.address, clientPort: rinfo.port, relay, relayPort: 0, channels: new Map(), peerChannels: new Map() };
  let byPort = allocations.get(rinfo.address);
  if (byPort === undefined) allocations.set(rinfo.address, (byPort = new Map()));
  byPort.set(rinfo.port, a);
  relay.on('error', () => closeAllocation(a));
  relay.on('message', (msg, from) => onPeerPacket(a, msg, from));
  relay.bind(0, options.relayIp, () => {
    a.relayPort = relay.address().port;
    answer(a);
  });
}

function onControl(msg: Buffer, rinfo: dgram.RemoteInfo): void {
  const decoded = decodeMessage(msg);
  if (!decoded.ok) return;
  const req = decoded.message;
  if (req.cls !== MessageClass.Request) return;
  const ok = (decorate: (w: MessageWriter) => void = () => undefined): void => respond(req, MessageClass.SuccessResponse, rinfo, decorate);
  switch (req.method) {
    case Method.Binding:
      ok((w) => w.addXorAddress(Attr.XorMappedAddress, rinfo.address, rinfo.port));
      return;
    case Method.Allocate:
      if (req.integrityOffset < 0) {
        respond(req, MessageClass.ErrorResponse, rinfo, (w) => {
          w.addErrorCode(401, 'Unauthorized');
          w.addText(Attr.Realm, options.realm);
          w.addText(Attr.Nonce, NONCE);
        });
        return;
      }
      allocate(req, rinfo);
      return;
    case Method.Refresh: {
      const value = getAttribute(req, Attr.Lifetime);
      const seconds = value === undefined || value.length !== 4 ? 600 : value.readUInt32BE(0);
      const a = findAllocation(rinfo.address, rinfo.port);
      if (seconds === 0 && a !== undefined) closeAllocation(a);
      ok((w) => w.add(Attr.Lifetime, lifetime(seconds === 0 ? 0 : 600)));
      return;
    }
    case Method.CreatePermission:
      ok();
      return;
    case Method.ChannelBind: {
      const a = findAllocation(rinfo.address, rinfo.port);
      const value = getAttribute(req, Attr.ChannelNumber);
      const channel = value === undefined ? undefined : decodeChannelNumber(value);
      const peer = peerOf(req);
      if (a !== undefined && channel !== undefined && peer !== undefined) {
        a.channels.set(channel, peer);
        let ports = a.peerChannels.get(peer.address);
        if (ports === undefined) a.peerChannels.set(peer.address, (ports = new Map()));
        ports.set(peer.port, channel);
      }
      ok();
      return;
    }
    default:
      respond(req, MessageClass.ErrorResponse, rinfo, (w) => w.addErrorCode(400, 'Bad Request'));
  }
}

listener.on('message', onClientPacket);
listener.on('error', (err) => {
  console.error(`floor: listener error: ${err.message}`);
  process.exit(1);
});
listener.bind(options.listeningPort, options.listeningIp, () => {
  console.log(`floor ready on ${options.listeningIp}:${listener.address().port}`);
});

function shutdown(): void {
  for (const byPort of allocations.values()) for (const a of byPort.values()) a.relay.close();
  listener.close();
  process.exit(0);
}
process.on('SIGINT', shutdown);
process.on('SIGTERM', shutdown);

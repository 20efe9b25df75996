// The bytes of the kernel relay's map keys and values (native/dataplane/relay.bpf.c,
// struct c2p_key/c2p_value/p2c_key/p2c_value; docs/dataplane.md, "Maps"). Pure: no I/O.
// Addresses are 16 bytes, IPv4 as ::ffff:a.b.c.d; ports and the channel number in
// network order (as on the wire); stat ids and expiry times in the host's order (the
// kernel reads them as numbers).

import { endianness } from 'node:os';
import { parseIPv4, parseIPv6 } from '../../net/ip.js';

/** One bound channel, both directions (RFC 8656 §12). */
export interface KernelChannel {
  readonly clientAddress: string;
  readonly clientPort: number;
  /** The listening address:port the client sends to (never a wildcard). */
  readonly serverAddress: string;
  readonly serverPort: number;
  /** 0x4000-0x4FFF (RFC 8656 §12), or RFC 5766's 0x5000-0x7FFF, which the engine binds too (stun/channel-data.ts). */
  readonly channel: number;
  readonly relayAddress: string;
  readonly relayPort: number;
  readonly peerAddress: string;
  readonly peerPort: number;
  /** When the kernel must stop relaying it, on process.hrtime.bigint()'s clock (CLOCK_MONOTONIC ns, the same as bpf_ktime_get_ns). */
  readonly expiresAtNs: bigint;
}

export const C2P_KEY_SIZE = 40;
export const C2P_VALUE_SIZE = 48;
export const P2C_KEY_SIZE = 36;
export const P2C_VALUE_SIZE = 56;

export const MIN_CHANNEL = 0x4000;
// The engine's range, not RFC 8656's alone: it binds RFC 5766's 0x5000-0x7FFF too (stun/channel-data.ts).
export const MAX_CHANNEL = 0x7fff;

/** The helper's reason counters, in relay.bpf.c's order (the helper prints them by name). */
export const REASONS = [
  'relayed_to_peer',
  'relayed_to_client',
  'expired',
  'no_route',
  'no_neighbour',
  'too_big',
  'malformed',
  'no_checksum',
  'checksum_partial',
  'gso',
  'error',
  // Port steering (docs/dataplane.md §8).
  'steered_in',
  'steered_out',
  'steer_stray',
  'steer_gso',
  'steer_too_big',
  'steer_malformed',
] as const;

const LITTLE = endianness() === 'LE';

export type Family = 4 | 6;

/** The 16 map bytes of an address and its family (an IPv4-mapped IPv6 text is IPv4: so the packet is). */
export function addressBytes(text: string): { bytes: Buffer; family: Family } {
  const bytes = Buffer.alloc(16);
  const v4 = parseIPv4(text);
  if (v4 >= 0) {
    bytes[10] = 0xff;
    bytes[11] = 0xff;
    bytes.writeUInt32BE(v4, 12);
    return { bytes, family: 4 };
  }
  const v6 = parseIPv6(text);
  if (v6 === undefined) throw new Error(`not an IP address: ${text}`);
  bytes.set(v6);
  const mapped = bytes.subarray(0, 10).every((b) => b === 0) && bytes[10] === 0xff && bytes[11] === 0xff;
  return { bytes, family: mapped ? 4 : 6 };
}

function isWildcard(bytes: Buffer, family: Family): boolean {
  return family === 4 ? bytes.readUInt32BE(12) === 0 : bytes.every((b) => b === 0);
}

function checkPort(name: string, port: number): void {
  if (!Number.isInteger(port) || port < 1 || port > 0xffff) throw new Error(`${name} must be a port 1-65535, not ${port}`);
}

/** The four addresses of a channel as map bytes; throws unless all are one family (the kernel cannot change the IP header's size). */
export function channelAddresses(ch: KernelChannel): { client: Buffer; server: Buffer; relay: Buffer; peer: Buffer; family: Family } {
  const client = addressBytes(ch.clientAddress);
  const server = addressBytes(ch.serverAddress);
  const relay = addressBytes(ch.relayAddress);
  const peer = addressBytes(ch.peerAddress);
  if (new Set([client.family, server.family, relay.family, peer.family]).size !== 1) {
    throw new Error(
      `the kernel path relays within one family: client ${ch.clientAddress}, server ${ch.serverAddress}, relay ${ch.relayAddress}, peer ${ch.peerAddress}`,
    );
  }
  if (isWildcard(server.bytes, server.family)) throw new Error(`the server address must be the one the client sends to, not ${ch.serverAddress}`);
  if (isWildcard(relay.bytes, relay.family)) throw new Error(`the relay address must be a unicast address, not ${ch.relayAddress}`);
  for (const [name, port] of [
    ['clientPort', ch.clientPort],
    ['serverPort', ch.serverPort],
    ['relayPort', ch.relayPort],
    ['peerPort', ch.peerPort],
  ] as const) {
    checkPort(name, port);
  }
  if (!Number.isInteger(ch.channel) || ch.channel < MIN_CHANNEL || ch.channel > MAX_CHANNEL) {
    throw new Error(`channel must be 0x4000-0x7FFF, not ${ch.channel}`);
  }
  if (ch.expiresAtNs < 0n || ch.expiresAtNs >= 1n << 64n) throw new Error(`expiresAtNs out of range: ${ch.expiresAtNs}`);
  return { client: client.bytes, server: server.bytes, relay: relay.bytes, peer: peer.bytes, family: client.family };
}

function writeU32(buf: Buffer, value: number, offset: number): void {
  if (LITTLE) buf.writeUInt32LE(value, offset);
  else buf.writeUInt32BE(value, offset);
}

function writeU64(buf: Buffer, value: bigint, offset: number): void {
  if (LITTLE) buf.writeBigUInt64LE(value, offset);
  else buf.writeBigUInt64BE(value, offset);
}

/** A zero-filled Buffer from Node's pool: Buffer.alloc gives each its own ArrayBuffer, which the young GC sweeps one by one. */
function zeroed(size: number): Buffer {
  return Buffer.allocUnsafe(size).fill(0);
}

/** Keys and values of both maps for one channel; statId indexes the per-entry counters. */
export interface ChannelEntries {
  readonly c2pKey: Buffer;
  readonly c2pValue: Buffer;
  readonly p2cKey: Buffer;
  readonly p2cValue: Buffer;
}

/** struct c2p_key: client[16] server[16] client_port server_port channel zero(2). */
function c2pKey(a: ReturnType<typeof channelAddresses>, ch: KernelChannel): Buffer {
  const k = zeroed(C2P_KEY_SIZE);
  a.client.copy(k, 0);
  a.server.copy(k, 16);
  k.writeUInt16BE(ch.clientPort, 32);
  k.writeUInt16BE(ch.serverPort, 34);
  k.writeUInt16BE(ch.channel, 36);
  return k;
}

/** struct c2p_value: relay[16] peer[16] relay_port peer_port stat_id(u32) expires_ns(u64). */
function c2pValue(a: ReturnType<typeof channelAddresses>, ch: KernelChannel, statId: number): Buffer {
  const v = zeroed(C2P_VALUE_SIZE);
  a.relay.copy(v, 0);
  a.peer.copy(v, 16);
  v.writeUInt16BE(ch.relayPort, 32);
  v.writeUInt16BE(ch.peerPort, 34);
  writeU32(v, statId, 36);
  writeU64(v, ch.expiresAtNs, 40);
  return v;
}

/** struct p2c_key: peer[16] relay[16] peer_port relay_port. */
function p2cKey(a: ReturnType<typeof channelAddresses>, ch: KernelChannel): Buffer {
  const k = zeroed(P2C_KEY_SIZE);
  a.peer.copy(k, 0);
  a.relay.copy(k, 16);
  k.writeUInt16BE(ch.peerPort, 32);
  k.writeUInt16BE(ch.relayPort, 34);
  return k;
}

/** struct p2c_value: client[16] server[16] client_port server_port channel zero(2) stat_id(u32) zero(4) expires_ns(u64). */
function p2cValue(a: ReturnType<typeof channelAddresses>, ch: KernelChannel, statId: number): Buffer {
  const v = zeroed(P2C_VALUE_SIZE);
  a.client.copy(v, 0);
  a.server.copy(v, 16);
  v.writeUInt16BE(ch.clientPort, 32);
  v.writeUInt16BE(ch.serverPort, 34);
  v.writeUInt16BE(ch.channel, 36);
  writeU32(v, statId, 40);
  writeU64(v, ch.expiresAtNs, 48);
  return v;
}

/** The map entries of one channel (throws on a channel the kernel cannot relay: see channelAddresses). */
export function encodeChannel(ch: KernelChannel, statId: number): ChannelEntries {
  if (!Number.isInteger(statId) || statId < 0 || statId > 0xffffffff) throw new Error(`bad stat id ${statId}`);
  const a = channelAddresses(ch);
  return { c2pKey: c2pKey(a, ch), c2pValue: c2pValue(a, ch, statId), p2cKey: p2cKey(a, ch), p2cValue: p2cValue(a, ch, statId) };
}

/** Per-entry counters as the helper prints them: `<id>:<to peer pkts>,<bytes>,<to client pkts>,<bytes>`. */
export interface EntryCounters {
  readonly id: number;
  readonly toPeerPackets: number;
  readonly toPeerBytes: number;
  readonly toClientPackets: number;
  readonly toClientBytes: number;
}

/** Parses the fields of a `read` answer (after `ok`); throws on anything else. */
export function parseCounters(fields: readonly string[]): EntryCounters[] {
  return fields.map((field) => {
    const m = /^(\d+):(\d+),(\d+),(\d+),(\d+)$/.exec(field);
    if (!m) throw new Error(`bad counters from the dataplane helper: ${field}`);
    return { id: Number(m[1]), toPeerPackets: Number(m[2]), toPeerBytes: Number(m[3]), toClientPackets: Number(m[4]), toClientBytes: Number(m[5]) };
  });
}

/** Parses the fields of a `totals` answer (`name=count`). */
export function parseTotals(fields: readonly string[]): Record<string, number> {
  const out: Record<string, number> = {};
  for (const field of fields) {
    const m = /^([a-z_]+)=(\d+)$/.exec(field);
    if (!m) throw new Error(`bad totals from the dataplane helper: ${field}`);
    out[m[1]!] = Number(m[2]);
  }
  return out;
}

export const STEER_KEY_SIZE = 20;
export const STEER_VALUE_SIZE = 4;
/** struct steer_value.kind: a relayed port steered to the shared socket, or the shared socket's own port. */
export const STEER_RELAY = 1;
export const STEER_SHARED = 2;
/** The second half of the 4-byte trailer (relay.bpf.c TRAILER_MAGIC); the first is the relayed port. */
export const TRAILER_MAGIC = 0xa5c3;

/** struct steer_key: addr[16] port zero(2); the address as in the other maps (IPv4-mapped). */
export function steerKey(address: string, port: number): Buffer {
  checkPort('port', port);
  const { bytes, family } = addressBytes(address);
  if (isWildcard(bytes, family)) throw new Error(`a steered address must be a unicast address, not ${address}`);
  const k = Buffer.alloc(STEER_KEY_SIZE);
  bytes.copy(k, 0);
  k.writeUInt16BE(port, 16);
  return k;
}

/** struct steer_value: shared_port kind zero(1). */
export function steerValue(sharedPort: number, kind: typeof STEER_RELAY | typeof STEER_SHARED): Buffer {
  checkPort('sharedPort', sharedPort);
  const v = Buffer.alloc(STEER_VALUE_SIZE);
  v.writeUInt16BE(sharedPort, 0);
  v[2] = kind;
  return v;
}

// The kernel relay's map bytes (src/dataplane/kernel/entries.ts) against the C structs of
// native/dataplane/relay.bpf.c, written out byte by byte here, and the checks that keep
// channels the kernel cannot relay out of the maps.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { endianness } from 'node:os';
import {
  addressBytes,
  C2P_KEY_SIZE,
  C2P_VALUE_SIZE,
  encodeChannel,
  type KernelChannel,
  P2C_KEY_SIZE,
  P2C_VALUE_SIZE,
  parseCounters,
  parseTotals,
  STEER_KEY_SIZE,
  STEER_RELAY,
  STEER_SHARED,
  STEER_VALUE_SIZE,
  steerKey,
  steerValue,
  TRAILER_MAGIC,
} from '../../../src/dataplane/kernel/entries.js';
import { TRAILER_MAGIC as SHARED_TRAILER_MAGIC } from '../../../src/transport/udp/shared-relay.js';

const V4: KernelChannel = {
  clientAddress: '198.18.30.2',
  clientPort: 0x1234,
  serverAddress: '198.18.30.1',
  serverPort: 3478,
  channel: 0x4001,
  relayAddress: '198.18.31.1',
  relayPort: 50000,
  peerAddress: '198.18.31.2',
  peerPort: 0xabcd,
  expiresAtNs: 0x0102030405060708n,
};

const V6: KernelChannel = {
  ...V4,
  clientAddress: '2001:2:0:30::2',
  serverAddress: '2001:2:0:30::1',
  relayAddress: '2001:2:0:31::1',
  peerAddress: '2001:2:0:31::2',
};

const hex = (s: string): Buffer => Buffer.from(s.replace(/\s+/g, ''), 'hex');
const mapped = (a: string): string => `00000000000000000000ffff${a}`;
/** A u32 / u64 in the host's order, as the kernel reads them. */
const u32 = (v: number): string => {
  const b = Buffer.alloc(4);
  if (endianness() === 'LE') b.writeUInt32LE(v);
  else b.writeUInt32BE(v);
  return b.toString('hex');
};
const u64 = (v: bigint): string => {
  const b = Buffer.alloc(8);
  if (endianness() === 'LE') b.writeBigUInt64LE(v);
  else b.writeBigUInt64BE(v);
  return b.toString('hex');
};

test('IPv4: addresses mapped to ::ffff:a.b.c.d, ports and channel in network order, ids and times in host order', () => {
  const e = encodeChannel(V4, 7);
  // c2p_key: client[16] server[16] client_port server_port channel zero
  assert.deepEqual(e.c2pKey, hex(`${mapped('c612 1e02')} ${mapped('c612 1e01')} 1234 0d96 4001 0000`));
  // c2p_value: relay[16] peer[16] relay_port peer_port stat_id expires_ns
  assert.deepEqual(e.c2pValue, hex(`${mapped('c612 1f01')} ${mapped('c612 1f02')} c350 abcd ${u32(7)} ${u64(V4.expiresAtNs)}`));
  // p2c_key: peer[16] relay[16] peer_port relay_port
  assert.deepEqual(e.p2cKey, hex(`${mapped('c612 1f02')} ${mapped('c612 1f01')} abcd c350`));
  // p2c_value: client[16] server[16] client_port server_port channel zero stat_id zero expires_ns
  assert.deepEqual(e.p2cValue, hex(`${mapped('c612 1e02')} ${mapped('c612 1e01')} 1234 0d96 4001 0000 ${u32(7)} 00000000 ${u64(V4.expiresAtNs)}`));
  assert.deepEqual([e.c2pKey.length, e.c2pValue.length, e.p2cKey.length, e.p2cValue.length], [C2P_KEY_SIZE, C2P_VALUE_SIZE, P2C_KEY_SIZE, P2C_VALUE_SIZE]);
});

test('IPv6: the 16 address bytes as they are', () => {
  const e = encodeChannel(V6, 0x01020304);
  assert.deepEqual(e.c2pKey.subarray(0, 32), hex('2001 0002 0000 0030 0000 0000 0000 0002 2001 0002 0000 0030 0000 0000 0000 0001'));
  assert.deepEqual(e.p2cKey.subarray(0, 16), hex('2001 0002 0000 0031 0000 0000 0000 0002'));
  assert.deepEqual(e.c2pValue.subarray(36, 40), hex(u32(0x01020304)));
});

test('an IPv4-mapped IPv6 text (a dual-stack socket) is IPv4, as the packet is', () => {
  assert.deepEqual(addressBytes('::ffff:198.18.30.2'), addressBytes('198.18.30.2'));
  assert.equal(addressBytes('::ffff:198.18.30.2').family, 4);
  const e = encodeChannel({ ...V4, clientAddress: '::ffff:198.18.30.2' }, 1);
  assert.deepEqual(e.c2pKey, encodeChannel(V4, 1).c2pKey);
});

test('refused: mixed families, wildcards, bad channel numbers, ports and times', () => {
  assert.throws(() => encodeChannel({ ...V4, peerAddress: '2001:2:0:31::2' }, 1), /one family/);
  assert.throws(() => encodeChannel({ ...V6, clientAddress: '198.18.30.2' }, 1), /one family/);
  assert.throws(() => encodeChannel({ ...V4, serverAddress: '0.0.0.0' }, 1), /server address/);
  assert.throws(() => encodeChannel({ ...V6, serverAddress: '::' }, 1), /server address/);
  assert.throws(() => encodeChannel({ ...V4, relayAddress: '0.0.0.0' }, 1), /relay address/);
  // The engine's range (stun/channel-data.ts): RFC 8656's 0x4000-0x4FFF and RFC 5766's up to 0x7FFF.
  assert.throws(() => encodeChannel({ ...V4, channel: 0x3fff }, 1), /0x4000-0x7FFF/);
  assert.throws(() => encodeChannel({ ...V4, channel: 0x8000 }, 1), /0x4000-0x7FFF/);
  assert.throws(() => encodeChannel({ ...V4, peerPort: 0 }, 1), /peerPort/);
  assert.throws(() => encodeChannel({ ...V4, clientPort: 65536 }, 1), /clientPort/);
  assert.throws(() => encodeChannel({ ...V4, expiresAtNs: -1n }, 1), /expiresAtNs/);
  assert.throws(() => encodeChannel({ ...V4, peerAddress: 'peer.example' }, 1), /not an IP address/);
  assert.throws(() => encodeChannel(V4, -1), /stat id/);
  // The edges are accepted.
  encodeChannel({ ...V4, channel: 0x4000 }, 0);
  encodeChannel({ ...V4, channel: 0x4fff }, 0xffffffff);
  encodeChannel({ ...V4, channel: 0x7fff }, 1);
});

test("the helper's answers: counters and totals", () => {
  assert.deepEqual(parseCounters(['3:1,100,2,200', '9:0,0,0,0']), [
    { id: 3, toPeerPackets: 1, toPeerBytes: 100, toClientPackets: 2, toClientBytes: 200 },
    { id: 9, toPeerPackets: 0, toPeerBytes: 0, toClientPackets: 0, toClientBytes: 0 },
  ]);
  assert.throws(() => parseCounters(['3:1,100,2']), /bad counters/);
  assert.deepEqual(parseTotals(['relayed_to_peer=5', 'expired=0']), { relayed_to_peer: 5, expired: 0 });
  assert.throws(() => parseTotals(['relayed_to_peer']), /bad totals/);
});

test('steering entries: struct steer_key (address, port, 2 zero) and steer_value (shared port, kind, zero), the trailer magic as in relay.bpf.c', () => {
  assert.equal(steerKey('198.18.31.1', 50000).toString('hex'), `00000000000000000000ffffc6121f01${'c350'}0000`);
  assert.equal(steerKey('2001:2:0:31::1', 0x1234).toString('hex'), `20010002000000310000000000000001${'1234'}0000`);
  assert.equal(steerKey('198.18.31.1', 1).length, STEER_KEY_SIZE);
  assert.equal(steerValue(45000, STEER_RELAY).toString('hex'), 'afc80100');
  assert.equal(steerValue(45000, STEER_SHARED).toString('hex'), 'afc80200');
  assert.equal(steerValue(1, STEER_RELAY).length, STEER_VALUE_SIZE);
  assert.equal(TRAILER_MAGIC, SHARED_TRAILER_MAGIC, 'the transport writes the magic the program checks');
  assert.throws(() => steerKey('0.0.0.0', 50000), /unicast/);
  assert.throws(() => steerKey('198.18.31.1', 0), /port/);
  assert.throws(() => steerValue(70000, STEER_RELAY), /port/);
});

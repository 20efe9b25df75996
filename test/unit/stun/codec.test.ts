// Round trips for every attribute encoder/decoder (address text itself is
// tested in test/unit/net/ip.test.ts), the message type bit layout, the decoder's framing rules
// (RFC 8489 §5, §14.5-§14.7) and the ChannelData helpers (RFC 8656 §12.4).

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { addressValueLength, decodeAddress, familyOf, writeAddress } from '../../../src/stun/address.js';
import {
  MAX_NONCE_BYTES,
  MAX_USERNAME_BYTES,
  decodeAddressErrorCode,
  decodeAddressFamily,
  decodeChannelNumber,
  decodeErrorCode,
  decodeEvenPort,
  decodeIcmp,
  decodePasswordAlgorithm,
  decodePasswordAlgorithms,
  decodeRequestedTransport,
  decodeReservationToken,
  decodeText,
  decodeTextAt,
  decodeUint32,
  decodeUnknownAttributes,
  encodeAddressErrorCode,
  encodeAddressFamily,
  encodeChannelNumber,
  encodeErrorCode,
  encodeEvenPort,
  encodeIcmp,
  encodePasswordAlgorithm,
  encodePasswordAlgorithms,
  encodeRequestedTransport,
  encodeUint32,
  encodeUnknownAttributes,
  isKnownPasswordAlgorithm,
} from '../../../src/stun/attributes.js';
import {
  CHANNEL_DATA_HEADER_LENGTH,
  encodeChannelData,
  isValidChannelNumber,
  looksLikeChannelData,
  readChannelDataLength,
  readChannelNumber,
  streamChannelDataLength,
  writeChannelDataHeader,
} from '../../../src/stun/channel-data.js';
import {
  AddressFamily,
  Attr,
  CHANNEL_MAX,
  CHANNEL_MIN,
  ErrorCode,
  MAGIC_COOKIE,
  MessageClass,
  Method,
  PasswordAlgorithm,
  TRANSPORT_UDP,
  isComprehensionRequired,
  methodName,
  reasonPhrase,
} from '../../../src/stun/constants.js';
import { crc32 } from '../../../src/stun/crc32.js';
import { computeIntegrity, fingerprintOf, longTermKey, userhash, verifyIntegritySha1, verifyIntegritySha256 } from '../../../src/stun/integrity.js';
import {
  decodeClass,
  decodeMessage,
  decodeMethod,
  encodeMessageType,
  getAttribute,
  getAttributes,
  looksLikeStun,
  type StunMessage,
} from '../../../src/stun/message.js';
import { MessageWriter } from '../../../src/stun/writer.js';
import { isKnownAttribute } from '../../../src/stun/indication.js';

const TID = Buffer.from('0102030405060708090a0b0c', 'hex');
const KEY = Buffer.from('a shared key');

function decodeOk(buf: Buffer): StunMessage {
  const result = decodeMessage(buf);
  if (!result.ok) assert.fail(`decodeMessage failed: ${result.reason}`);
  return result.message;
}

// ---------------------------------------------------------------- message type

test('message type bit layout (RFC 8489 §5, Figure 3)', () => {
  const table: ReadonlyArray<readonly [number, MessageClass, number, string]> = [
    [Method.Binding, MessageClass.Request, 0x0001, 'Binding request'],
    [Method.Binding, MessageClass.Indication, 0x0011, 'Binding indication'],
    [Method.Binding, MessageClass.SuccessResponse, 0x0101, 'Binding success'],
    [Method.Binding, MessageClass.ErrorResponse, 0x0111, 'Binding error'],
    [Method.Allocate, MessageClass.Request, 0x0003, 'Allocate request'],
    [Method.Allocate, MessageClass.SuccessResponse, 0x0103, 'Allocate success'],
    [Method.Allocate, MessageClass.ErrorResponse, 0x0113, 'Allocate error'],
    [Method.Refresh, MessageClass.Request, 0x0004, 'Refresh request'],
    [Method.Refresh, MessageClass.SuccessResponse, 0x0104, 'Refresh success'],
    [Method.Send, MessageClass.Indication, 0x0016, 'Send indication'],
    [Method.Data, MessageClass.Indication, 0x0017, 'Data indication'],
    [Method.CreatePermission, MessageClass.Request, 0x0008, 'CreatePermission request'],
    [Method.CreatePermission, MessageClass.ErrorResponse, 0x0118, 'CreatePermission error'],
    [Method.ChannelBind, MessageClass.Request, 0x0009, 'ChannelBind request'],
    [Method.ChannelBind, MessageClass.SuccessResponse, 0x0109, 'ChannelBind success'],
    [0xfff, MessageClass.ErrorResponse, 0x3fff, 'largest method, error'],
    [0x010, MessageClass.Request, 0x0020, 'method bit M4 lands at bit 5'],
    [0x080, MessageClass.Request, 0x0200, 'method bit M7 lands at bit 9'],
  ];
  for (const [method, cls, type, name] of table) {
    assert.equal(encodeMessageType(method, cls), type, name);
    assert.equal(decodeMethod(type), method, name);
    assert.equal(decodeClass(type), cls, name);
    const buf = new MessageWriter(method, cls, TID).toBuffer();
    assert.equal(buf.readUInt16BE(0), type, name);
    const message = decodeOk(buf);
    assert.equal(message.method, method, name);
    assert.equal(message.cls, cls, name);
  }
});

test('message type: every method and class round-trips and keeps the top two bits zero', () => {
  const seen = new Set<number>();
  for (let method = 0; method < 0x1000; method++) {
    for (const cls of [0, 1, 2, 3] as const) {
      const type = encodeMessageType(method, cls);
      assert.equal(type & 0xc000, 0);
      assert.equal(decodeMethod(type), method);
      assert.equal(decodeClass(type), cls);
      seen.add(type);
    }
  }
  assert.equal(seen.size, 0x4000); // a bijection onto the 14-bit type space
});

test('method names and comprehension ranges', () => {
  assert.equal(methodName(Method.Allocate), 'allocate');
  assert.equal(methodName(Method.ChannelBind), 'channel_bind');
  assert.equal(methodName(Method.CreatePermission), 'create_permission');
  assert.equal(methodName(0x0ff), 'unknown');
  assert.equal(isComprehensionRequired(Attr.XorPeerAddress), true);
  assert.equal(isComprehensionRequired(0x7fff), true);
  assert.equal(isComprehensionRequired(Attr.Software), false);
  assert.equal(isComprehensionRequired(Attr.Fingerprint), false);
});

// ---------------------------------------------------------------- addresses

const ADDRESSES: ReadonlyArray<readonly [string, AddressFamily]> = [
  ['0.0.0.0', AddressFamily.IPv4],
  ['192.0.2.1', AddressFamily.IPv4],
  ['203.0.113.254', AddressFamily.IPv4],
  ['255.255.255.255', AddressFamily.IPv4],
  ['::', AddressFamily.IPv6],
  ['::1', AddressFamily.IPv6],
  ['2001:db8::', AddressFamily.IPv6],
  ['2001:db8::1', AddressFamily.IPv6],
  ['2001:db8:1234:5678:11:2233:4455:6677', AddressFamily.IPv6],
  ['fe80::1:2:3:4', AddressFamily.IPv6],
  ['ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff', AddressFamily.IPv6],
  ['::ffff:192.0.2.9', AddressFamily.IPv6],
  ['::192.0.2.9', AddressFamily.IPv6],
  ['1:0:0:2::3', AddressFamily.IPv6],
];

test('addresses: plain and XOR values round-trip for IPv4 and IPv6 (RFC 8489 §14.1, §14.2)', () => {
  for (const [address, family] of ADDRESSES) {
    for (const port of [0, 1, 3478, 32853, 65535]) {
      for (const transactionId of [undefined, TID]) {
        const out = new Uint8Array(24).fill(0xee);
        const n = writeAddress(out, 2, address, port, transactionId);
        assert.equal(n, addressValueLength(family), address);
        assert.equal(out[0], 0xee, 'writes nothing before the offset');
        assert.equal(out[2 + n], 0xee, 'writes nothing after the value');
        assert.equal(out[2], 0, 'reserved byte zero');
        assert.equal(out[3], family);
        const decoded = decodeAddress(out.subarray(2, 2 + n), transactionId);
        assert.deepEqual(decoded, { family, address, port }, `${address} port ${port} xor ${!!transactionId}`);
      }
    }
  }
});

test('addresses: XOR layout against hand-computed bytes', () => {
  // 192.0.2.1:32853 XOR 0x2112A442 (RFC 5769 §2.2).
  const v4 = new Uint8Array(8);
  writeAddress(v4, 0, '192.0.2.1', 32853, TID);
  assert.deepEqual(Buffer.from(v4), Buffer.from('0001a147e112a643', 'hex'));
  // IPv6 XORs with cookie || transaction id: ::  gives exactly that key.
  const v6 = new Uint8Array(20);
  writeAddress(v6, 0, '::', 0, TID);
  assert.deepEqual(Buffer.from(v6), Buffer.concat([Buffer.from([0, 2, 0x21, 0x12]), Buffer.from('2112a442', 'hex'), TID]));
  // Plain (not XOR) values carry the address as is.
  const plain = new Uint8Array(8);
  writeAddress(plain, 0, '10.1.2.3', 0x1234, undefined);
  assert.deepEqual(Buffer.from(plain), Buffer.from('000112340a010203', 'hex'));
});

test('addresses: malformed values and texts are refused', () => {
  assert.equal(decodeAddress(Buffer.from('0001a147e112a6', 'hex'), TID), undefined, 'IPv4 value too short');
  assert.equal(decodeAddress(Buffer.from('0001a147e112a64300000000', 'hex'), TID), undefined, 'IPv4 value too long');
  assert.equal(decodeAddress(Buffer.alloc(20, 0).fill(1, 1, 2), TID), undefined, 'IPv4 family with 20 bytes');
  assert.equal(decodeAddress(Buffer.from([0, 2, 0, 0, 1, 2, 3, 4]), TID), undefined, 'IPv6 family with 8 bytes');
  assert.equal(decodeAddress(Buffer.from([0, 3, 0, 0, 1, 2, 3, 4]), TID), undefined, 'unknown family');
  assert.equal(decodeAddress(Buffer.alloc(0)), undefined);
  assert.equal(writeAddress(new Uint8Array(20), 0, 'example.org', 1), -1);
  assert.equal(writeAddress(new Uint8Array(20), 0, '1.2.3.4::', 1), -1);
  assert.throws(() => new MessageWriter(Method.Binding, MessageClass.Request, TID).addAddress(Attr.XorPeerAddress, '1.2.3', 1), TypeError);
});

test('addresses in a message: several XOR-PEER-ADDRESS, XOR-RELAYED-ADDRESS, MAPPED-ADDRESS', () => {
  const peers = ['192.0.2.10', '2001:db8::10', '198.51.100.7'];
  const w = new MessageWriter(Method.CreatePermission, MessageClass.Request, TID);
  for (const [i, p] of peers.entries()) w.addXorAddress(Attr.XorPeerAddress, p, 1000 + i);
  w.addXorAddress(Attr.XorRelayedAddress, '2001:db8::99', 50000);
  w.addAddress(Attr.MappedAddress, '203.0.113.5', 4000);
  const message = decodeOk(w.toBuffer());
  const decoded = getAttributes(message, Attr.XorPeerAddress).map((v) => decodeAddress(v, message.transactionId));
  assert.deepEqual(
    decoded,
    peers.map((address, i) => ({ family: familyOf(address), address, port: 1000 + i })),
  );
  assert.deepEqual(decodeAddress(getAttribute(message, Attr.XorRelayedAddress)!, message.transactionId), {
    family: AddressFamily.IPv6,
    address: '2001:db8::99',
    port: 50000,
  });
  assert.deepEqual(decodeAddress(getAttribute(message, Attr.MappedAddress)!), { family: AddressFamily.IPv4, address: '203.0.113.5', port: 4000 });
  assert.equal(getAttribute(message, Attr.Data), undefined);
});

test('familyOf', () => {
  assert.equal(familyOf('192.0.2.1'), AddressFamily.IPv4);
  assert.equal(familyOf('2001:db8::1'), AddressFamily.IPv6);
  assert.equal(familyOf('::ffff:1.2.3.4'), AddressFamily.IPv6);
  assert.equal(familyOf('localhost'), undefined);
  assert.equal(familyOf(''), undefined);
});

// ---------------------------------------------------------------- attribute values

test('text: UTF-8 exactly as sent, limits in bytes, bad UTF-8 refused', () => {
  assert.equal(decodeText(Buffer.from('evtj:h6vY'), MAX_USERNAME_BYTES), 'evtj:h6vY');
  assert.equal(decodeText(Buffer.from('\u30DE\u30C8\u30EA\u30C3\u30AF\u30B9'), 18), '\u30DE\u30C8\u30EA\u30C3\u30AF\u30B9');
  assert.equal(decodeText(Buffer.from('\u30DE\u30C8\u30EA\u30C3\u30AF\u30B9'), 17), undefined, 'limit counts bytes');
  assert.equal(decodeText(Buffer.alloc(0), 0), '');
  assert.equal(decodeText(Buffer.alloc(MAX_NONCE_BYTES, 0x61), MAX_NONCE_BYTES)?.length, MAX_NONCE_BYTES);
  assert.equal(decodeText(Buffer.alloc(MAX_NONCE_BYTES + 1, 0x61), MAX_NONCE_BYTES), undefined);
  assert.equal(decodeText(Buffer.from([0x61, 0xff, 0x62]), 100), undefined);
  assert.equal(decodeText(Buffer.from([0xe3, 0x83]), 100), undefined, 'truncated sequence');
  assert.equal(decodeText(Buffer.from([0xc0, 0x80]), 100), undefined, 'overlong NUL');
  // A leading byte order mark is part of the text, not eaten by the decoder.
  assert.equal(decodeText(Buffer.from('\uFEFFbob', 'utf8'), 100), '\uFEFFbob');
  // Repeated use of the shared decoder stays independent.
  assert.equal(decodeText(Buffer.from('a'), 10), 'a');
});

test('text in place (decodeTextAt): what decodeText says of the same bytes, whatever surrounds them', () => {
  const values = [
    Buffer.from('evtj:h6vY'),
    Buffer.from('obMatJos2AAABabcdefghijklmnop'),
    Buffer.from('\u30DE\u30C8\u30EA\u30C3\u30AF\u30B9'),
    Buffer.from('caf\u00e9'),
    Buffer.from('\uFEFFbob', 'utf8'),
    Buffer.alloc(0),
    Buffer.from([0x61, 0xff, 0x62]),
    Buffer.from([0xe3, 0x83]),
    Buffer.from([0xc0, 0x80]),
    Buffer.from([0x7f, 0x00, 0x41]),
    Buffer.from([0x80]),
    Buffer.alloc(MAX_NONCE_BYTES, 0x61),
    Buffer.alloc(MAX_NONCE_BYTES + 1, 0x61),
  ];
  for (const value of values) {
    // Non-ASCII and ASCII neighbours: only the bytes start..end may count.
    for (const around of [Buffer.from([0xff, 0xe3]), Buffer.from('ab')]) {
      const raw = Buffer.concat([around, value, around]);
      for (const max of [MAX_NONCE_BYTES, MAX_USERNAME_BYTES, value.length, Math.max(0, value.length - 1)]) {
        assert.equal(decodeTextAt(raw, around.length, around.length + value.length, max), decodeText(value, max), `${value.toString('hex')} within ${max}`);
      }
    }
  }
});

test('uint32 (LIFETIME and friends)', () => {
  for (const v of [0, 1, 600, 3600, 0x7fffffff, 0x80000000, 0xffffffff]) {
    const encoded = encodeUint32(v);
    assert.equal(encoded.length, 4);
    assert.equal(encoded.readUInt32BE(0), v);
    assert.equal(decodeUint32(encoded), v);
  }
  assert.equal(encodeUint32(-1).readUInt32BE(0), 0xffffffff);
  assert.equal(decodeUint32(Buffer.alloc(3)), undefined);
  assert.equal(decodeUint32(Buffer.alloc(5)), undefined);
  const message = decodeOk(new MessageWriter(Method.Refresh, MessageClass.Request, TID).add(Attr.Lifetime, encodeUint32(600)).toBuffer());
  assert.equal(decodeUint32(getAttribute(message, Attr.Lifetime)!), 600);
});

test('ERROR-CODE round-trips for every class 3-6 and number 0-99 (RFC 8489 §14.8)', () => {
  for (let code = 300; code <= 699; code++) {
    const encoded = encodeErrorCode(code, reasonPhrase(code));
    assert.equal(encoded[0], 0);
    assert.equal(encoded[1], 0);
    assert.equal(encoded[2], Math.floor(code / 100));
    assert.equal(encoded[3], code % 100);
    assert.deepEqual(decodeErrorCode(encoded), { code, reason: reasonPhrase(code) });
  }
  for (const code of Object.values(ErrorCode)) assert.notEqual(reasonPhrase(code), 'Error', `reason for ${code}`);
  assert.deepEqual(decodeErrorCode(encodeErrorCode(438, 'Stale Nonce \u2014 retry')), { code: 438, reason: 'Stale Nonce \u2014 retry' });
  assert.deepEqual(decodeErrorCode(encodeErrorCode(401, '')), { code: 401, reason: '' });
  assert.deepEqual(decodeErrorCode(Buffer.from([0xff, 0xff, 0xfc, 20])), { code: 420, reason: '' }, 'reserved bits ignored');
  assert.equal(decodeErrorCode(Buffer.from([0, 0, 2, 0])), undefined, 'class 2');
  assert.equal(decodeErrorCode(Buffer.from([0, 0, 7, 0])), undefined, 'class 7');
  assert.equal(decodeErrorCode(Buffer.from([0, 0, 4, 100])), undefined, 'number 100');
  assert.equal(decodeErrorCode(Buffer.from([0, 0, 4])), undefined, 'too short');
  // In a message, via the writer.
  const message = decodeOk(new MessageWriter(Method.Allocate, MessageClass.ErrorResponse, TID).addErrorCode(437, 'Allocation Mismatch').toBuffer());
  assert.deepEqual(decodeErrorCode(getAttribute(message, Attr.ErrorCode)!), { code: 437, reason: 'Allocation Mismatch' });
});

test('UNKNOWN-ATTRIBUTES', () => {
  for (const types of [[], [0x0001], [0x0024, 0x7fff, 0x0003], [0xffff, 0]]) {
    const encoded = encodeUnknownAttributes(types);
    assert.equal(encoded.length, types.length * 2);
    assert.deepEqual(decodeUnknownAttributes(encoded), types);
  }
  assert.equal(decodeUnknownAttributes(Buffer.alloc(3)), undefined);
  // Odd counts are padded on the wire; the value length says how many there are.
  const message = decodeOk(
    new MessageWriter(Method.Allocate, MessageClass.ErrorResponse, TID)
      .add(Attr.UnknownAttributes, encodeUnknownAttributes([0x0031, 0x0032, 0x0033]))
      .toBuffer(),
  );
  assert.deepEqual(decodeUnknownAttributes(getAttribute(message, Attr.UnknownAttributes)!), [0x0031, 0x0032, 0x0033]);
});

test('CHANNEL-NUMBER (RFC 8656 §18.1)', () => {
  for (const channel of [CHANNEL_MIN, 0x4001, 0x4abc, CHANNEL_MAX, 0, 0xffff]) {
    const encoded = encodeChannelNumber(channel);
    assert.deepEqual(encoded, Buffer.from([channel >> 8, channel & 255, 0, 0]));
    assert.equal(decodeChannelNumber(encoded), channel);
  }
  assert.equal(decodeChannelNumber(Buffer.from([0x40, 0x01, 0xab, 0xcd])), 0x4001, 'RFFU ignored');
  assert.equal(decodeChannelNumber(Buffer.from([0x40, 0x01])), undefined);
  assert.equal(decodeChannelNumber(Buffer.alloc(8)), undefined);
});

test('REQUESTED-TRANSPORT (RFC 8656 §18.7)', () => {
  assert.deepEqual(encodeRequestedTransport(TRANSPORT_UDP), Buffer.from([17, 0, 0, 0]));
  assert.equal(decodeRequestedTransport(encodeRequestedTransport(TRANSPORT_UDP)), 17);
  assert.equal(decodeRequestedTransport(encodeRequestedTransport(6)), 6);
  assert.equal(decodeRequestedTransport(Buffer.from([17, 1, 2, 3])), 17, 'RFFU ignored');
  assert.equal(decodeRequestedTransport(Buffer.from([17])), undefined);
});

test('REQUESTED-/ADDITIONAL-ADDRESS-FAMILY', () => {
  for (const family of [AddressFamily.IPv4, AddressFamily.IPv6, 3]) {
    const encoded = encodeAddressFamily(family);
    assert.deepEqual(encoded, Buffer.from([family, 0, 0, 0]));
    assert.equal(decodeAddressFamily(encoded), family);
  }
  assert.equal(decodeAddressFamily(Buffer.from([1, 0])), undefined);
  const message = decodeOk(
    new MessageWriter(Method.Allocate, MessageClass.Request, TID)
      .add(Attr.RequestedAddressFamily, encodeAddressFamily(AddressFamily.IPv6))
      .add(Attr.AdditionalAddressFamily, encodeAddressFamily(AddressFamily.IPv6))
      .toBuffer(),
  );
  assert.equal(decodeAddressFamily(getAttribute(message, Attr.RequestedAddressFamily)!), AddressFamily.IPv6);
  assert.equal(decodeAddressFamily(getAttribute(message, Attr.AdditionalAddressFamily)!), AddressFamily.IPv6);
});

test('EVEN-PORT: the R bit (RFC 8656 §18.6)', () => {
  assert.deepEqual(encodeEvenPort(true), Buffer.from([0x80]));
  assert.deepEqual(encodeEvenPort(false), Buffer.from([0x00]));
  assert.deepEqual(decodeEvenPort(encodeEvenPort(true)), { reserveNext: true });
  assert.deepEqual(decodeEvenPort(encodeEvenPort(false)), { reserveNext: false });
  assert.deepEqual(decodeEvenPort(Buffer.from([0x7f])), { reserveNext: false }, 'only the top bit is R');
  assert.deepEqual(decodeEvenPort(Buffer.from([0x81])), { reserveNext: true });
  assert.equal(decodeEvenPort(Buffer.alloc(0)), undefined);
  // One byte plus three bytes of padding on the wire.
  const buf = new MessageWriter(Method.Allocate, MessageClass.Request, TID).add(Attr.EvenPort, encodeEvenPort(true)).toBuffer();
  assert.equal(buf.length, 20 + 8);
  assert.deepEqual(decodeEvenPort(getAttribute(decodeOk(buf), Attr.EvenPort)!), { reserveNext: true });
});

test('RESERVATION-TOKEN: 8 opaque bytes, copied out', () => {
  const token = Buffer.from('0123456789abcdef', 'hex');
  const message = decodeOk(new MessageWriter(Method.Allocate, MessageClass.SuccessResponse, TID).add(Attr.ReservationToken, token).toBuffer());
  const value = getAttribute(message, Attr.ReservationToken)!;
  const decoded = decodeReservationToken(value);
  assert.deepEqual(decoded, token);
  value[0] = 0xaa;
  assert.equal(decoded![0], 0x01, 'not a view into the message');
  assert.equal(decodeReservationToken(Buffer.alloc(7)), undefined);
  assert.equal(decodeReservationToken(Buffer.alloc(9)), undefined);
});

test('PASSWORD-ALGORITHM(S) (RFC 8489 §14.11, §14.12)', () => {
  assert.deepEqual(encodePasswordAlgorithm(PasswordAlgorithm.SHA256), Buffer.from([0, 2, 0, 0]));
  assert.deepEqual(decodePasswordAlgorithm(encodePasswordAlgorithm(PasswordAlgorithm.MD5)), { algorithm: 1, parameters: Buffer.alloc(0) });
  const list = encodePasswordAlgorithms([PasswordAlgorithm.SHA256, PasswordAlgorithm.MD5]);
  assert.deepEqual(list, Buffer.from([0, 2, 0, 0, 0, 1, 0, 0]));
  assert.deepEqual(
    decodePasswordAlgorithms(list)?.map((e) => e.algorithm),
    [2, 1],
  );
  assert.equal(decodePasswordAlgorithm(list), undefined, 'PASSWORD-ALGORITHM holds exactly one');
  assert.deepEqual(decodePasswordAlgorithms(Buffer.alloc(0)), []);
  // Parameters are padded to four bytes; the length field says how many count.
  const withParams = Buffer.from([0x00, 0x09, 0x00, 0x03, 0xaa, 0xbb, 0xcc, 0x00, 0x00, 0x02, 0x00, 0x00]);
  assert.deepEqual(decodePasswordAlgorithms(withParams), [
    { algorithm: 9, parameters: Buffer.from([0xaa, 0xbb, 0xcc]) },
    { algorithm: 2, parameters: Buffer.alloc(0) },
  ]);
  assert.equal(decodePasswordAlgorithms(Buffer.from([0, 1, 0])), undefined, 'truncated entry header');
  assert.equal(decodePasswordAlgorithms(Buffer.from([0, 1, 0, 8, 1, 2, 3, 4])), undefined, 'parameters overrun');
  assert.equal(isKnownPasswordAlgorithm(1), true);
  assert.equal(isKnownPasswordAlgorithm(2), true);
  assert.equal(isKnownPasswordAlgorithm(0), false);
  assert.equal(isKnownPasswordAlgorithm(3), false);
});

test('ICMP (RFC 8656 §18.14)', () => {
  for (const [type, code, data] of [
    [3, 4, 1280],
    [0, 0, 0],
    [255, 255, 0xffffffff],
    [11, 0, 0x80000000],
  ] as const) {
    const encoded = encodeIcmp(type, code, data);
    assert.equal(encoded.length, 8);
    assert.equal(encoded.readUInt16BE(0), 0, 'reserved');
    assert.deepEqual(decodeIcmp(encoded), { type, code, data });
  }
  assert.deepEqual(decodeIcmp(Buffer.from([0xff, 0xff, 3, 1, 0, 0, 5, 0xdc])), { type: 3, code: 1, data: 1500 }, 'reserved ignored');
  assert.equal(decodeIcmp(Buffer.alloc(7)), undefined);
  assert.equal(decodeIcmp(Buffer.alloc(12)), undefined);
});

test('ADDRESS-ERROR-CODE (RFC 8656 §18.13)', () => {
  const encoded = encodeAddressErrorCode(AddressFamily.IPv6, 440, 'Address Family not Supported');
  assert.equal(encoded[0], AddressFamily.IPv6);
  assert.equal(encoded[2], 4);
  assert.equal(encoded[3], 40);
  assert.deepEqual(decodeAddressErrorCode(encoded), { family: AddressFamily.IPv6, code: 440, reason: 'Address Family not Supported' });
  assert.deepEqual(decodeAddressErrorCode(encodeAddressErrorCode(AddressFamily.IPv4, 508, '')), { family: AddressFamily.IPv4, code: 508, reason: '' });
  assert.equal(decodeAddressErrorCode(Buffer.from([1, 0, 1, 0])), undefined);
  assert.equal(decodeAddressErrorCode(Buffer.from([1, 0])), undefined);
});

// ---------------------------------------------------------------- integrity, fingerprint

test('CRC-32 check value and FINGERPRINT XOR (RFC 8489 §14.7)', () => {
  assert.equal(crc32(Buffer.from('123456789')), 0xcbf43926);
  assert.equal(crc32(Buffer.alloc(0)), 0);
  const data = Buffer.from('The quick brown fox jumps over the lazy dog');
  assert.equal(crc32(data), 0x414fa339);
  assert.equal(crc32(data, 10), crc32(data.subarray(10)));
  assert.equal(crc32(data, 10, data.length, crc32(data, 0, 10)), crc32(data), 'continues across calls');
  const buf = new MessageWriter(Method.Binding, MessageClass.Request, TID).addFingerprint().toBuffer();
  assert.equal(buf.readUInt32BE(24), (crc32(buf, 0, 20) ^ 0x5354554e) >>> 0);
  assert.equal(fingerprintOf(buf, 20), buf.readUInt32BE(24));
});

test('long-term keys and USERHASH', () => {
  assert.deepEqual(longTermKey('user', 'realm', 'pass'), createHash('md5').update('user:realm:pass').digest());
  assert.deepEqual(longTermKey('user', 'realm', 'pass', PasswordAlgorithm.SHA256), createHash('sha256').update('user:realm:pass').digest());
  assert.deepEqual(userhash('user', 'realm'), createHash('sha256').update('user:realm').digest());
});

test('MESSAGE-INTEGRITY and -SHA256 written by the writer verify; truncated SHA-256 values too', () => {
  const buf = new MessageWriter(Method.Allocate, MessageClass.Request, TID)
    .add(Attr.RequestedTransport, encodeRequestedTransport(TRANSPORT_UDP))
    .addIntegrity(KEY)
    .addIntegritySha256(KEY)
    .addFingerprint()
    .toBuffer();
  const message = decodeOk(buf);
  assert.equal(verifyIntegritySha1(buf, message.integrityOffset, KEY), true);
  assert.equal(verifyIntegritySha256(buf, message.integritySha256Offset, KEY), true);
  assert.equal(verifyIntegritySha1(buf, message.integrityOffset, Buffer.from('another key')), false);
  assert.equal(verifyIntegritySha256(buf, message.integritySha256Offset, Buffer.from('another key')), false);
  assert.equal(verifyIntegritySha1(buf, -1, KEY), false);
  assert.equal(verifyIntegritySha1(buf, buf.length - 4, KEY), false);
  assert.equal(verifyIntegritySha256(buf, message.integrityOffset, KEY), false, 'a 20-byte value is not a SHA-256 one');

  // RFC 8489 §14.6: MESSAGE-INTEGRITY-SHA256 may be truncated to 16..32 bytes in steps of 4.
  const prefix = new MessageWriter(Method.Refresh, MessageClass.Request, TID).add(Attr.Lifetime, encodeUint32(0)).toBuffer();
  for (const length of [16, 20, 24, 28, 32, 12, 18, 36]) {
    const padded = (length + 3) & ~3;
    const out = Buffer.concat([prefix, Buffer.alloc(4 + padded)]);
    out.writeUInt16BE(out.length - 20, 2);
    out.writeUInt16BE(Attr.MessageIntegritySha256, prefix.length);
    out.writeUInt16BE(length, prefix.length + 2);
    computeIntegrity(out, prefix.length, KEY, 'sha256', length)
      .subarray(0, length)
      .copy(out, prefix.length + 4);
    const valid = length >= 16 && length <= 32 && length % 4 === 0;
    assert.equal(verifyIntegritySha256(out, prefix.length, KEY), valid, `length ${length}`);
  }
});

// ---------------------------------------------------------------- decoder rules

test('attributes after MESSAGE-INTEGRITY are ignored, except MESSAGE-INTEGRITY-SHA256 and FINGERPRINT (RFC 8489 §14.5)', () => {
  const buf = new MessageWriter(Method.Allocate, MessageClass.Request, TID)
    .addText(Attr.Software, 'before')
    .addIntegrity(KEY)
    .add(Attr.Lifetime, encodeUint32(1))
    .addText(Attr.Username, 'smuggled')
    .addIntegritySha256(KEY)
    .add(Attr.Data, Buffer.from('after sha256'))
    .addFingerprint()
    .toBuffer();
  const message = decodeOk(buf);
  assert.deepEqual(
    message.attributes.map((a) => a.type),
    [Attr.Software, Attr.MessageIntegrity, Attr.MessageIntegritySha256, Attr.Fingerprint],
  );
  assert.equal(getAttribute(message, Attr.Lifetime), undefined);
  assert.equal(getAttribute(message, Attr.Username), undefined);
  assert.equal(getAttribute(message, Attr.Data), undefined);
  assert.equal(decodeText(getAttribute(message, Attr.Software)!, 100), 'before');
  assert.equal(verifyIntegritySha1(buf, message.integrityOffset, KEY), true);
  assert.equal(verifyIntegritySha256(buf, message.integritySha256Offset, KEY), true);
  assert.equal(message.fingerprintOffset, buf.length - 8);

  // A second MESSAGE-INTEGRITY does not replace the first.
  const twice = new MessageWriter(Method.Binding, MessageClass.Request, TID).addIntegrity(KEY).addIntegrity(Buffer.from('x')).toBuffer();
  const m2 = decodeOk(twice);
  assert.equal(m2.integrityOffset, 20);
  assert.deepEqual(
    m2.attributes.map((a) => a.type),
    [Attr.MessageIntegrity],
  );
  assert.equal(verifyIntegritySha1(twice, m2.integrityOffset, KEY), true);

  // Only FINGERPRINT counts after MESSAGE-INTEGRITY-SHA256 (§14.6).
  const sha = new MessageWriter(Method.Binding, MessageClass.Request, TID)
    .addIntegritySha256(KEY)
    .addIntegrity(KEY)
    .add(Attr.Lifetime, encodeUint32(1))
    .toBuffer();
  const m3 = decodeOk(sha);
  assert.deepEqual(
    m3.attributes.map((a) => a.type),
    [Attr.MessageIntegritySha256],
  );
  assert.equal(m3.integrityOffset, -1);
});

test('FINGERPRINT must be last and must match', () => {
  const notLast = new MessageWriter(Method.Binding, MessageClass.Request, TID).addFingerprint().addText(Attr.Software, 'x').toBuffer();
  assert.deepEqual(decodeMessage(notLast), { ok: false, reason: 'fingerprint-not-last' });
  const twice = new MessageWriter(Method.Binding, MessageClass.Request, TID).addFingerprint().addFingerprint().toBuffer();
  assert.deepEqual(decodeMessage(twice), { ok: false, reason: 'fingerprint-not-last' });

  const good = new MessageWriter(Method.Binding, MessageClass.Request, TID).addText(Attr.Software, 'abc').addFingerprint().toBuffer();
  assert.equal(decodeMessage(good).ok, true);
  for (const at of [0, 1, 5, 9, 19, 24, 26, good.length - 1]) {
    const bad = Buffer.from(good);
    bad[at]! ^= 0x01;
    assert.deepEqual(decodeMessage(bad), { ok: false, reason: 'bad-fingerprint' }, `flip at ${at}`);
  }
  // Wrong FINGERPRINT value length.
  const short = Buffer.from(good.subarray(0, good.length - 8));
  const withShortFp = Buffer.concat([short, Buffer.from([0x80, 0x28, 0x00, 0x00])]);
  withShortFp.writeUInt16BE(withShortFp.length - 20, 2);
  assert.deepEqual(decodeMessage(withShortFp), { ok: false, reason: 'bad-fingerprint' });
});

test('framing: length, overflow, not STUN', () => {
  const good = new MessageWriter(Method.Binding, MessageClass.Request, TID).addText(Attr.Software, 'hello').toBuffer();
  assert.equal(good.length, 20 + 12);
  assert.equal(decodeMessage(good).ok, true);
  const edit = (f: (b: Buffer) => void): Buffer => {
    const b = Buffer.from(good);
    f(b);
    return b;
  };

  assert.deepEqual(decodeMessage(good.subarray(0, 19)), { ok: false, reason: 'too-short' });
  assert.deepEqual(decodeMessage(Buffer.alloc(0)), { ok: false, reason: 'too-short' });
  assert.deepEqual(
    decodeMessage(
      edit((b) => {
        b[0]! |= 0x80;
      }),
    ),
    { ok: false, reason: 'not-stun' },
  );
  assert.deepEqual(
    decodeMessage(
      edit((b) => {
        b[0]! |= 0x40;
      }),
    ),
    { ok: false, reason: 'not-stun' },
  );
  // Length not a multiple of 4.
  for (const length of [9, 10, 11, 13]) {
    const b = Buffer.concat([good.subarray(0, 20), Buffer.alloc(length)]);
    b.writeUInt16BE(length, 2);
    assert.deepEqual(decodeMessage(b), { ok: false, reason: 'bad-length' }, `length ${length}`);
  }
  // Length that disagrees with the datagram.
  assert.deepEqual(decodeMessage(edit((b) => b.writeUInt16BE(8, 2))), { ok: false, reason: 'bad-length' });
  assert.deepEqual(decodeMessage(edit((b) => b.writeUInt16BE(16, 2))), { ok: false, reason: 'bad-length' });
  assert.deepEqual(decodeMessage(good.subarray(0, good.length - 4)), { ok: false, reason: 'bad-length' });
  assert.deepEqual(decodeMessage(Buffer.concat([good, Buffer.alloc(4)])), { ok: false, reason: 'bad-length' });
  // Attribute length running past the end.
  assert.deepEqual(decodeMessage(edit((b) => b.writeUInt16BE(9, 22))), { ok: false, reason: 'attribute-overflow' });
  assert.deepEqual(decodeMessage(edit((b) => b.writeUInt16BE(0xffff, 22))), { ok: false, reason: 'attribute-overflow' });
  // A last attribute whose header promises a value that is not there.
  const tail = Buffer.concat([good, Buffer.from([0x80, 0x22, 0x00, 0x04])]);
  tail.writeUInt16BE(tail.length - 20, 2);
  assert.deepEqual(decodeMessage(tail), { ok: false, reason: 'attribute-overflow' });
  // Padding that is not zero is accepted (RFC 5769 pads with spaces).
  assert.equal(
    decodeMessage(
      edit((b) => {
        b[31] = 0x20;
      }),
    ).ok,
    true,
  );
  // A header with no attributes.
  assert.equal(decodeMessage(Buffer.from(good.subarray(0, 20)).fill(0, 2, 4)).ok, true);
});

test('classic RFC 3489 messages (no magic cookie) decode with hasMagicCookie false', () => {
  const buf = new MessageWriter(Method.Binding, MessageClass.Request, TID, 0xdeadbeef).addAddress(Attr.MappedAddress, '192.0.2.1', 1).toBuffer();
  assert.equal(buf.readUInt32BE(4), 0xdeadbeef);
  const message = decodeOk(buf);
  assert.equal(message.hasMagicCookie, false);
  assert.deepEqual(decodeAddress(getAttribute(message, Attr.MappedAddress)!), { family: AddressFamily.IPv4, address: '192.0.2.1', port: 1 });
  assert.equal(decodeOk(new MessageWriter(Method.Binding, MessageClass.Request, TID).toBuffer()).hasMagicCookie, true);
  assert.equal(MAGIC_COOKIE, 0x2112a442);
});

test('writer: padding, growth past its initial capacity, views', () => {
  const big = Buffer.alloc(3000, 0x5a);
  const buf = new MessageWriter(Method.Send, MessageClass.Indication, TID, MAGIC_COOKIE, 32)
    .addXorAddress(Attr.XorPeerAddress, '2001:db8::7', 9)
    .add(Attr.Data, big)
    .add(Attr.Data, Buffer.from([1, 2, 3]), 0xff)
    .addFingerprint()
    .toBuffer();
  assert.equal(buf.length, 20 + 24 + 3004 + 8 + 8);
  const message = decodeOk(buf);
  const data = getAttributes(message, Attr.Data);
  assert.deepEqual(data[0], big);
  assert.deepEqual(data[1], Buffer.from([1, 2, 3]));
  assert.equal(buf[20 + 24 + 3004 + 4 + 3], 0xff, 'padByte used');
  assert.deepEqual(message.transactionId, TID);
  assert.equal(message.raw, buf);
  assert.equal(looksLikeStun(buf), true);
  assert.equal(looksLikeStun(buf.subarray(0, 19)), false);
  // toBuffer returns a copy.
  const w = new MessageWriter(Method.Binding, MessageClass.Request, TID);
  const first = w.toBuffer();
  w.addText(Attr.Software, 'more');
  assert.equal(first.length, 20);
  assert.equal(first.readUInt16BE(2), 0);
});

// ---------------------------------------------------------------- ChannelData

test('ChannelData helpers (RFC 8656 §12.4)', () => {
  // RFC 8656's 0x4000-0x4FFF always; up to CHANNEL_MAX for RFC 5766 clients (see constants.ts).
  assert.equal(CHANNEL_MIN, 0x4000);
  assert.ok(CHANNEL_MAX >= 0x4fff && CHANNEL_MAX <= 0x7fff);
  assert.equal(isValidChannelNumber(0x3fff), false);
  assert.equal(isValidChannelNumber(CHANNEL_MIN), true);
  assert.equal(isValidChannelNumber(0x4abc), true);
  assert.equal(isValidChannelNumber(0x4fff), true);
  assert.equal(isValidChannelNumber(CHANNEL_MAX), true);
  assert.equal(isValidChannelNumber(0x7fff), true, 'coturn 4.6.1 clients pick up to 0x7FFF (RFC 5766 §11)');
  assert.equal(isValidChannelNumber(CHANNEL_MAX + 1), false);
  assert.equal(isValidChannelNumber(0x8000), false);
  assert.equal(isValidChannelNumber(0), false);

  const data = Buffer.from('hello');
  const udp = encodeChannelData(0x4001, data);
  assert.deepEqual(udp, Buffer.from([0x40, 0x01, 0x00, 0x05, ...data]));
  const stream = encodeChannelData(0x4fff, data, true);
  assert.deepEqual(stream, Buffer.from([0x4f, 0xff, 0x00, 0x05, ...data, 0, 0, 0]));
  for (const m of [udp, stream]) {
    assert.equal(looksLikeChannelData(m), true);
    assert.equal(looksLikeStun(m), false);
    assert.equal(readChannelDataLength(m), 5);
    assert.deepEqual(m.subarray(CHANNEL_DATA_HEADER_LENGTH, CHANNEL_DATA_HEADER_LENGTH + readChannelDataLength(m)), data);
  }
  assert.equal(readChannelNumber(udp), 0x4001);
  assert.equal(readChannelNumber(stream), 0x4fff);
  assert.deepEqual(encodeChannelData(0x4000, Buffer.alloc(0), true), Buffer.from([0x40, 0, 0, 0]));

  for (let n = 0; n <= 9; n++) assert.equal(streamChannelDataLength(n), 4 + Math.ceil(n / 4) * 4, `length ${n}`);

  const out = new Uint8Array(10).fill(0xee);
  writeChannelDataHeader(out, 3, 0x4123, 0x0456);
  assert.deepEqual(Buffer.from(out), Buffer.from([0xee, 0xee, 0xee, 0x41, 0x23, 0x04, 0x56, 0xee, 0xee, 0xee]));

  // Demultiplexing by the first two bits (RFC 8656 §12): 00 STUN, 01 ChannelData.
  const stun = new MessageWriter(Method.Binding, MessageClass.Request, TID).toBuffer();
  assert.equal(looksLikeChannelData(stun), false);
  assert.equal(looksLikeChannelData(Buffer.from([0x80, 0, 0, 0])), false);
  assert.equal(looksLikeChannelData(Buffer.from([0xc0, 0, 0, 0])), false);
  assert.equal(looksLikeChannelData(Buffer.from([0x7f, 0xff, 0, 0])), true);
  assert.equal(looksLikeChannelData(Buffer.from([0x40, 0, 0])), false, 'shorter than a header');
});

test('MOBILITY-TICKET (RFC 8016 §3.4): type 0x8030, comprehension-optional, empty or opaque bytes, padded to 4; 405 Mobility Forbidden', () => {
  assert.equal(Attr.MobilityTicket, 0x8030);
  assert.equal(isComprehensionRequired(Attr.MobilityTicket), false, 'a server without mobility may ignore it');
  assert.equal(isKnownAttribute(Attr.MobilityTicket), true);
  assert.equal(ErrorCode.MobilityForbidden, 405);
  assert.equal(reasonPhrase(405), 'Mobility Forbidden');
  for (const value of [Buffer.alloc(0), Buffer.from([1, 2, 3, 4, 5])]) {
    const w = new MessageWriter(Method.Refresh, MessageClass.Request, Buffer.alloc(12, 7));
    w.add(Attr.MobilityTicket, value);
    w.addFingerprint();
    const raw = w.toBuffer();
    // Header, then type 0x8030 and the unpadded length; the value padded to a multiple of 4.
    assert.equal(raw.readUInt16BE(20), 0x8030);
    assert.equal(raw.readUInt16BE(22), value.length);
    const decoded = decodeMessage(raw);
    assert.ok(decoded.ok);
    assert.deepEqual(getAttribute(decoded.message, Attr.MobilityTicket), value);
    assert.equal(raw.readUInt16BE(24 + ((value.length + 3) & ~3)), Attr.Fingerprint);
  }
});

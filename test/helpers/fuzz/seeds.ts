// The seeds the packet fuzzer mutates: valid messages of every STUN/TURN method and
// class with every attribute the codec names (src/stun/constants.ts), kept as a list of
// attributes rather than bytes so that a mutation can change the content and the
// message can be signed afterwards (test/helpers/fuzz/packets.ts), plus the published
// vectors (test/helpers/stun-vectors.ts) as raw bytes.

import {
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
} from '../../../src/stun/attributes.js';
import { AddressFamily, Attr, MessageClass, Method, PasswordAlgorithm, TRANSPORT_UDP } from '../../../src/stun/constants.js';
import {
  RFC5769_SAMPLE_IPV4_RESPONSE,
  RFC5769_SAMPLE_IPV6_RESPONSE,
  RFC5769_SAMPLE_LONG_TERM_REQUEST,
  RFC5769_SAMPLE_REQUEST,
  RFC8489_B1_ERRATUM_6268,
} from '../stun-vectors.js';

/** An XOR-*-ADDRESS value, encoded against each packet's own transaction id. */
export interface XorAddress {
  readonly xor: string;
  readonly port: number;
}

export type AttributeValue = Buffer | XorAddress;

export interface SeedAttribute {
  readonly type: number;
  readonly value: AttributeValue;
}

export interface SeedMessage {
  readonly method: number;
  readonly cls: number;
  readonly attributes: readonly SeedAttribute[];
  /** Requests that need the long-term credential get USERNAME, REALM, NONCE and MESSAGE-INTEGRITY when signed. */
  readonly auth: boolean;
}

/** Where the seeds point: the peer a permission, channel or Send indication names. */
export interface SeedTargets {
  readonly peer: { readonly address: string; readonly port: number };
  /** A second peer address (another IP of the same loopback block, or IPv6). */
  readonly otherPeer?: { readonly address: string; readonly port: number };
}

const a = (type: number, value: AttributeValue): SeedAttribute => ({ type, value });
const text = (s: string): Buffer => Buffer.from(s, 'utf8');

/** Every method and class the codec knows, each with the attributes it may carry (RFC 8656 §18, RFC 8489 §14, RFC 8016). */
export function seedMessages(t: SeedTargets): SeedMessage[] {
  const peer: XorAddress = { xor: t.peer.address, port: t.peer.port };
  const other: XorAddress = t.otherPeer ? { xor: t.otherPeer.address, port: t.otherPeer.port } : peer;
  const req = (method: number, attributes: SeedAttribute[], auth = true): SeedMessage => ({ method, cls: MessageClass.Request, attributes, auth });
  const lifetime = (s: number): SeedAttribute => a(Attr.Lifetime, encodeUint32(s));
  const udp = a(Attr.RequestedTransport, encodeRequestedTransport(TRANSPORT_UDP));
  return [
    req(Method.Binding, [], false),
    req(Method.Binding, [a(Attr.Software, text('fuzz client')), a(0x0024, Buffer.from([0x6e, 0, 1, 0xff])), a(0x8029, Buffer.alloc(8, 3))], false),
    req(Method.Allocate, [udp], false),
    req(Method.Allocate, [udp, lifetime(900)]),
    req(Method.Allocate, [udp, lifetime(600), a(Attr.EvenPort, encodeEvenPort(true)), a(Attr.DontFragment, Buffer.alloc(0))]),
    req(Method.Allocate, [udp, a(Attr.RequestedAddressFamily, encodeAddressFamily(AddressFamily.IPv4))]),
    req(Method.Allocate, [udp, a(Attr.AdditionalAddressFamily, encodeAddressFamily(AddressFamily.IPv6))]),
    req(Method.Allocate, [udp, a(Attr.ReservationToken, Buffer.from('0011223344556677', 'hex'))]),
    req(Method.Allocate, [udp, a(Attr.MobilityTicket, Buffer.alloc(0)), a(Attr.Software, text('fuzz'))]),
    req(Method.Allocate, [udp, a(Attr.PasswordAlgorithms, encodePasswordAlgorithms([PasswordAlgorithm.SHA256, PasswordAlgorithm.MD5]))]),
    req(Method.Allocate, [udp, a(Attr.PasswordAlgorithm, encodePasswordAlgorithm(PasswordAlgorithm.MD5))]),
    req(Method.Refresh, [lifetime(700)]),
    req(Method.Refresh, [lifetime(0)]),
    req(Method.Refresh, [lifetime(600), a(Attr.RequestedAddressFamily, encodeAddressFamily(AddressFamily.IPv6))]),
    req(Method.Refresh, [a(Attr.MobilityTicket, Buffer.alloc(48, 0x5a))]),
    req(Method.CreatePermission, [a(Attr.XorPeerAddress, peer)]),
    req(Method.CreatePermission, [a(Attr.XorPeerAddress, peer), a(Attr.XorPeerAddress, other), a(Attr.XorPeerAddress, { xor: '::1', port: 0 })]),
    req(Method.ChannelBind, [a(Attr.ChannelNumber, encodeChannelNumber(0x4001)), a(Attr.XorPeerAddress, peer)]),
    req(Method.ChannelBind, [a(Attr.ChannelNumber, encodeChannelNumber(0x7fff)), a(Attr.XorPeerAddress, other)]),
    req(Method.ChannelBind, [a(Attr.ChannelNumber, encodeChannelNumber(0x4002)), a(Attr.XorPeerAddress, { xor: peer.xor, port: 0 })]),
    { method: Method.Send, cls: MessageClass.Indication, auth: false, attributes: [a(Attr.XorPeerAddress, peer), a(Attr.Data, text('fuzz payload'))] },
    {
      method: Method.Send,
      cls: MessageClass.Indication,
      auth: false,
      attributes: [a(Attr.XorPeerAddress, other), a(Attr.DontFragment, Buffer.alloc(0)), a(Attr.Data, Buffer.alloc(301, 0x11))],
    },
    // The largest UDP payload over IPv4 is 65,507 bytes: a Send indication that fills it.
    {
      method: Method.Send,
      cls: MessageClass.Indication,
      auth: false,
      attributes: [a(Attr.XorPeerAddress, peer), a(Attr.Data, Buffer.alloc(65_507 - 20 - 12 - 4, 0x5a))],
    },
    {
      method: Method.Data,
      cls: MessageClass.Indication,
      auth: false,
      attributes: [a(Attr.XorPeerAddress, peer), a(Attr.Icmp, encodeIcmp(3, 4, 1280)), a(Attr.Data, text('data'))],
    },
    {
      method: Method.Allocate,
      cls: MessageClass.SuccessResponse,
      auth: false,
      attributes: [
        a(Attr.XorRelayedAddress, peer),
        a(Attr.XorMappedAddress, other),
        lifetime(600),
        a(Attr.ReservationToken, Buffer.alloc(8, 1)),
        a(Attr.MappedAddress, Buffer.from([0, 1, 0x0d, 0x96, 127, 0, 0, 1])),
      ],
    },
    {
      method: Method.Allocate,
      cls: MessageClass.ErrorResponse,
      auth: false,
      attributes: [
        a(Attr.ErrorCode, encodeErrorCode(420, 'Unknown Attribute')),
        a(Attr.UnknownAttributes, encodeUnknownAttributes([0x0031, 0x7ffe])),
        a(Attr.AddressErrorCode, encodeAddressErrorCode(AddressFamily.IPv6, 440, '')),
        a(Attr.AlternateServer, Buffer.from([0, 1, 0x0d, 0x96, 198, 51, 100, 1])),
        a(Attr.AlternateDomain, text('turn.example')),
        a(Attr.Realm, text('example.org')),
        a(Attr.Nonce, text('obMatJos2AAACabc')),
      ],
    },
    { method: Method.Binding, cls: MessageClass.SuccessResponse, auth: false, attributes: [a(Attr.XorMappedAddress, peer)] },
    { method: Method.Refresh, cls: MessageClass.Indication, auth: false, attributes: [lifetime(1)] },
    { method: 0x00b, cls: MessageClass.Request, auth: true, attributes: [a(Attr.Userhash, Buffer.alloc(32, 7))] },
  ];
}

/** The published vectors, as bytes: their integrity is over other keys (they test the 401/400/438 paths). */
export function vectorSeeds(): Buffer[] {
  return [RFC5769_SAMPLE_REQUEST, RFC5769_SAMPLE_IPV4_RESPONSE, RFC5769_SAMPLE_IPV6_RESPONSE, RFC5769_SAMPLE_LONG_TERM_REQUEST, RFC8489_B1_ERRATUM_6268].map(
    (b) => Buffer.from(b),
  );
}

/** Every attribute type the codec names: the pool of type swaps and insertions. */
export const KNOWN_ATTRIBUTE_TYPES: readonly number[] = Object.values(Attr);

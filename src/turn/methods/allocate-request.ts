// What an Allocate (and a Refresh) asks for, read from its attributes and checked
// against RFC 8656 §7.2 before any port is bound or any state changes. Pure: no
// sockets, no store, no clock; a bad request throws the TurnError it is answered with.

import { decodeAddressFamily, decodeEvenPort, decodeRequestedTransport, decodeReservationToken, decodeUint32 } from '../../stun/attributes.js';
import { AddressFamily, Attr, ErrorCode, TRANSPORT_TCP, TRANSPORT_UDP } from '../../stun/constants.js';
import { type StunMessage, getAttribute } from '../../stun/message.js';
import { TurnError } from '../errors.js';

/** RFC 8656 §3.2: an allocation lasts 600 s unless the client asks otherwise. */
export const DEFAULT_LIFETIME_SECONDS = 600;

export interface AllocateRequest {
  /** RESERVATION-TOKEN: take the port an earlier EVEN-PORT (R bit) reserved. */
  readonly token: Buffer | undefined;
  /** EVEN-PORT: an even relay port, and with reserveNext the next one held for a token. */
  readonly evenPort: { readonly reserveNext: boolean } | undefined;
  /** The family of the (first) relayed address: REQUESTED-ADDRESS-FAMILY, IPv4 without it. */
  readonly family: number;
  /** ADDITIONAL-ADDRESS-FAMILY IPv6 was asked for: a second, IPv6 relayed address. */
  readonly wantsDual: boolean;
  /** Why the IPv6 half cannot be had (answered in ADDRESS-ERROR-CODE; the IPv4 half still goes ahead). */
  readonly additionalError: number | undefined;
  /** Seconds granted (RFC 8656 §7.2); a requested 0 gets the default, as a new allocation cannot start expired. */
  readonly lifetimeSeconds: number;
  /** REQUESTED-TRANSPORT TCP: an RFC 6062 TCP allocation (absent: UDP). */
  readonly tcp?: true;
}

/** Whether a TCP allocation (RFC 6062) can be had: the server relays TCP, and the request came over TCP or TLS. */
export interface TcpAllocateContext {
  readonly relaysTcp: boolean;
  readonly overStream: boolean;
}

export interface RelayFamilies {
  readonly ipv4: boolean;
  readonly ipv6: boolean;
}

/**
 * LIFETIME of an Allocate or Refresh: absent gives the default, 0 stays 0 (a Refresh
 * deleting), otherwise min(requested, max) but never under the default (RFC 8656 §7.2).
 */
export function requestedLifetimeSeconds(message: StunMessage, maxLifetimeSeconds: number): number {
  const value = getAttribute(message, Attr.Lifetime);
  if (!value) return DEFAULT_LIFETIME_SECONDS;
  const requested = decodeUint32(value);
  if (requested === undefined) throw new TurnError(ErrorCode.BadRequest, 'Bad LIFETIME');
  if (requested === 0) return 0;
  return Math.max(DEFAULT_LIFETIME_SECONDS, Math.min(requested, maxLifetimeSeconds));
}

/** Reads and checks an Allocate request's attributes; `relays` says which relay families this server has. */
export function readAllocateRequest(
  message: StunMessage,
  relays: RelayFamilies,
  maxLifetimeSeconds: number,
  tcpContext: TcpAllocateContext = { relaysTcp: false, overStream: false },
): AllocateRequest {
  const transportValue = getAttribute(message, Attr.RequestedTransport);
  if (!transportValue) throw new TurnError(ErrorCode.BadRequest, 'REQUESTED-TRANSPORT missing');
  const transport = decodeRequestedTransport(transportValue);
  if (transport === undefined) throw new TurnError(ErrorCode.BadRequest, 'Bad REQUESTED-TRANSPORT');
  const tcp = transport === TRANSPORT_TCP && tcpContext.relaysTcp;
  if (transport !== TRANSPORT_UDP && !tcp) throw new TurnError(ErrorCode.UnsupportedTransportProtocol);
  if (tcp) checkTcpAllocate(message, tcpContext);

  // DONT-FRAGMENT (RFC 8656 §7.2) needs no action: relay sockets keep Linux's default
  // IP_PMTUDISC_WANT, which sets DF on every datagram that fits the path MTU.
  const tokenValue = getAttribute(message, Attr.ReservationToken);
  const evenPortValue = getAttribute(message, Attr.EvenPort);
  const familyValue = getAttribute(message, Attr.RequestedAddressFamily);
  const additionalValue = getAttribute(message, Attr.AdditionalAddressFamily);
  if (tokenValue && (evenPortValue || familyValue)) throw new TurnError(ErrorCode.BadRequest, 'RESERVATION-TOKEN with EVEN-PORT or REQUESTED-ADDRESS-FAMILY');
  if (familyValue && additionalValue) throw new TurnError(ErrorCode.BadRequest, 'REQUESTED- and ADDITIONAL-ADDRESS-FAMILY together');
  const token = tokenValue ? decodeReservationToken(tokenValue) : undefined;
  if (tokenValue && !token) throw new TurnError(ErrorCode.BadRequest, 'Bad RESERVATION-TOKEN');
  const evenPort = evenPortValue ? decodeEvenPort(evenPortValue) : undefined;
  if (evenPortValue && !evenPort) throw new TurnError(ErrorCode.BadRequest, 'Bad EVEN-PORT');

  let family: number = AddressFamily.IPv4;
  if (familyValue) {
    const requested = decodeAddressFamily(familyValue);
    if (requested === undefined) throw new TurnError(ErrorCode.BadRequest, 'Bad REQUESTED-ADDRESS-FAMILY');
    if (requested !== AddressFamily.IPv4 && requested !== AddressFamily.IPv6) throw new TurnError(ErrorCode.AddressFamilyNotSupported);
    family = requested;
  }
  // RFC 8656 §7.2: ADDITIONAL-ADDRESS-FAMILY may only ask for IPv6; when that half fails the
  // IPv4 allocation still succeeds, with ADDRESS-ERROR-CODE saying why.
  let additionalError: number | undefined;
  const wantsDual = additionalValue !== undefined;
  if (additionalValue) {
    if (decodeAddressFamily(additionalValue) !== AddressFamily.IPv6) throw new TurnError(ErrorCode.BadRequest, 'ADDITIONAL-ADDRESS-FAMILY must be IPv6');
    if (!relays.ipv6) additionalError = ErrorCode.AddressFamilyNotSupported;
  }
  if (!(family === AddressFamily.IPv4 ? relays.ipv4 : relays.ipv6)) throw new TurnError(ErrorCode.AddressFamilyNotSupported);

  let lifetimeSeconds = requestedLifetimeSeconds(message, maxLifetimeSeconds);
  if (lifetimeSeconds === 0) lifetimeSeconds = DEFAULT_LIFETIME_SECONDS;
  // The field only on a TCP request, as before; without a spread of an empty object on every other.
  return tcp
    ? { token, evenPort, family, wantsDual, additionalError, lifetimeSeconds, tcp: true }
    : { token, evenPort, family, wantsDual, additionalError, lifetimeSeconds };
}

/**
 * RFC 6062 §5.1: a TCP allocation is asked for over TCP or TLS (400 over UDP: its data
 * connections need a stream to the client), without DONT-FRAGMENT, EVEN-PORT or
 * RESERVATION-TOKEN (400: they mean nothing for TCP); and it has one relayed address
 * (ADDITIONAL-ADDRESS-FAMILY, RFC 8656 §7.2, is for UDP: 400).
 */
function checkTcpAllocate(message: StunMessage, tcpContext: TcpAllocateContext): void {
  if (!tcpContext.overStream) throw new TurnError(ErrorCode.BadRequest, 'A TCP allocation needs a TCP or TLS connection');
  for (const type of [Attr.DontFragment, Attr.EvenPort, Attr.ReservationToken, Attr.AdditionalAddressFamily]) {
    if (getAttribute(message, type)) throw new TurnError(ErrorCode.BadRequest, 'Not for a TCP allocation');
  }
}

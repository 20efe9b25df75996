// STUN (RFC 8489) and TURN (RFC 8656) protocol numbers. The codec is the only
// layer that knows these layouts; the engine refers to them by name.

export const MAGIC_COOKIE = 0x2112a442;
export const HEADER_LENGTH = 20;
export const TRANSACTION_ID_LENGTH = 12;
export const FINGERPRINT_XOR = 0x5354554e;

export const MessageClass = {
  Request: 0,
  Indication: 1,
  SuccessResponse: 2,
  ErrorResponse: 3,
} as const;
export type MessageClass = (typeof MessageClass)[keyof typeof MessageClass];

export const Method = {
  Binding: 0x001,
  Allocate: 0x003,
  Refresh: 0x004,
  Send: 0x006,
  Data: 0x007,
  CreatePermission: 0x008,
  ChannelBind: 0x009,
  /** RFC 6062 §6.1: TCP allocations. */
  Connect: 0x00a,
  ConnectionBind: 0x00b,
  ConnectionAttempt: 0x00c,
} as const;
export type Method = (typeof Method)[keyof typeof Method];

export function methodName(method: number): string {
  switch (method) {
    case Method.Binding:
      return 'binding';
    case Method.Allocate:
      return 'allocate';
    case Method.Refresh:
      return 'refresh';
    case Method.Send:
      return 'send';
    case Method.Data:
      return 'data';
    case Method.CreatePermission:
      return 'create_permission';
    case Method.ChannelBind:
      return 'channel_bind';
    case Method.Connect:
      return 'connect';
    case Method.ConnectionBind:
      return 'connection_bind';
    case Method.ConnectionAttempt:
      return 'connection_attempt';
    default:
      return 'unknown';
  }
}

/** Attribute types. 0x0000-0x7FFF are comprehension-required, 0x8000-0xFFFF optional (RFC 8489 §14). */
export const Attr = {
  MappedAddress: 0x0001,
  Username: 0x0006,
  MessageIntegrity: 0x0008,
  ErrorCode: 0x0009,
  UnknownAttributes: 0x000a,
  ChannelNumber: 0x000c,
  Lifetime: 0x000d,
  XorPeerAddress: 0x0012,
  Data: 0x0013,
  Realm: 0x0014,
  Nonce: 0x0015,
  XorRelayedAddress: 0x0016,
  RequestedAddressFamily: 0x0017,
  EvenPort: 0x0018,
  RequestedTransport: 0x0019,
  DontFragment: 0x001a,
  MessageIntegritySha256: 0x001c,
  PasswordAlgorithm: 0x001d,
  Userhash: 0x001e,
  XorMappedAddress: 0x0020,
  ReservationToken: 0x0022,
  /** RFC 6062 §6.2: names one peer data connection of a TCP allocation. */
  ConnectionId: 0x002a,
  AdditionalAddressFamily: 0x8000,
  AddressErrorCode: 0x8001,
  PasswordAlgorithms: 0x8002,
  AlternateDomain: 0x8003,
  Icmp: 0x8004,
  Software: 0x8022,
  AlternateServer: 0x8023,
  Fingerprint: 0x8028,
  /** RFC 8016 §3.4: empty in an Allocate (asks for mobility), the server's opaque ticket otherwise. */
  MobilityTicket: 0x8030,
} as const;

export function isComprehensionRequired(type: number): boolean {
  return type < 0x8000;
}

export const AddressFamily = { IPv4: 0x01, IPv6: 0x02 } as const;
export type AddressFamily = (typeof AddressFamily)[keyof typeof AddressFamily];

/** RFC 8489 §18.5: PASSWORD-ALGORITHM values. */
export const PasswordAlgorithm = { MD5: 0x0001, SHA256: 0x0002 } as const;
export type PasswordAlgorithm = (typeof PasswordAlgorithm)[keyof typeof PasswordAlgorithm];

/** IANA protocol number carried in REQUESTED-TRANSPORT (RFC 8656 §18.7). */
export const TRANSPORT_UDP = 17;
/** REQUESTED-TRANSPORT of a TCP allocation (RFC 6062 §6.1). */
export const TRANSPORT_TCP = 6;

/**
 * Channel numbers a client may bind. RFC 8656 §12 narrowed them to 0x4000-0x4FFF,
 * but RFC 5766 §11 allows 0x4000-0x7FFF, and its clients still pick from all of it:
 * coturn 4.6.1's turnutils_uclient draws uniformly up to 0x7FFF inclusive, and
 * coturn's server accepts the same range. So do we, or those clients break.
 * (RFC 5766 §11.2 says 0x7FFE, against its own §11; coturn follows §11.)
 */
export const CHANNEL_MIN = 0x4000;
export const CHANNEL_MAX = 0x7fff;

/** Error codes used by STUN and TURN, with the RFCs' reason phrases. */
export const ErrorCode = {
  TryAlternate: 300,
  BadRequest: 400,
  Unauthorized: 401,
  Forbidden: 403,
  /** RFC 8016 §3.5: mobility asked for but not allowed here. */
  MobilityForbidden: 405,
  UnknownAttribute: 420,
  AllocationMismatch: 437,
  StaleNonce: 438,
  AddressFamilyNotSupported: 440,
  WrongCredentials: 441,
  UnsupportedTransportProtocol: 442,
  PeerAddressFamilyMismatch: 443,
  /** RFC 6062 §6.3: a Connect to a peer the allocation already has (or is making) a connection to. */
  ConnectionAlreadyExists: 446,
  /** RFC 6062 §6.3: the connection to the peer was refused, failed or timed out. */
  ConnectionTimeoutOrFailure: 447,
  AllocationQuotaReached: 486,
  ServerError: 500,
  InsufficientCapacity: 508,
} as const;
export type ErrorCode = (typeof ErrorCode)[keyof typeof ErrorCode];

export function reasonPhrase(code: number): string {
  switch (code) {
    case 300:
      return 'Try Alternate';
    case 400:
      return 'Bad Request';
    case 401:
      return 'Unauthorized';
    case 403:
      return 'Forbidden';
    case 405:
      return 'Mobility Forbidden';
    case 420:
      return 'Unknown Attribute';
    case 437:
      return 'Allocation Mismatch';
    case 438:
      return 'Stale Nonce';
    case 440:
      return 'Address Family not Supported';
    case 441:
      return 'Wrong Credentials';
    case 442:
      return 'Unsupported Transport Protocol';
    case 443:
      return 'Peer Address Family Mismatch';
    case 446:
      return 'Connection Already Exists';
    case 447:
      return 'Connection Timeout or Failure';
    case 486:
      return 'Allocation Quota Reached';
    case 500:
      return 'Server Error';
    case 508:
      return 'Insufficient Capacity';
    default:
      return 'Error';
  }
}

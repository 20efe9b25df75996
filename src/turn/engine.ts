// The TURN engine (RFC 8656 over RFC 8489): decides what every client and peer
// packet means. It sees the transport only through ClientPath/RelaySocket and
// the store only through AllocationStore; time comes from the injected clock.

import { performance } from 'node:perf_hooks';
import { formatIPv6, parseIPv4 } from '../net/ip.js';
import { decodeAddress } from '../stun/address.js';
import {
  CHANNEL_DATA_HEADER_LENGTH,
  CHANNEL_DATA_MAX_LENGTH,
  isValidChannelNumber,
  looksLikeChannelData,
  readChannelDataLength,
  writeChannelDataHeader,
} from '../stun/channel-data.js';
import {
  AddressFamily,
  Attr,
  ErrorCode,
  MessageClass,
  Method,
  PasswordAlgorithm,
  isComprehensionRequired,
  methodName,
  reasonPhrase,
} from '../stun/constants.js';
import {
  DATA_INDICATION_MAX_DATA_IPV4,
  DATA_INDICATION_MAX_DATA_IPV6,
  DATA_INDICATION_MAX_HEAD,
  SendIndicationView,
  TransactionIdPool,
  isKnownAttribute,
  isSendIndication,
  readSendIndication,
  writeDataIndicationHeadIPv4,
  writeDataIndicationHeadIPv6,
} from '../stun/indication.js';
import {
  MAX_NONCE_BYTES,
  MAX_REALM_BYTES,
  MAX_USERNAME_BYTES,
  decodeAddressFamily,
  decodeChannelNumber,
  decodePasswordAlgorithm,
  decodeText,
  encodeAddressErrorCode,
  encodeUint32,
  encodeUnknownAttributes,
  isKnownPasswordAlgorithm,
} from '../stun/attributes.js';
import { verifyIntegritySha1, verifyIntegritySha256 } from '../stun/integrity.js';
import { type StunMessage, decodeMessage, getAttribute, getAttributes } from '../stun/message.js';
import { MessageWriter } from '../stun/writer.js';
import type { AllocationRecord, AllocationStore, StoreEvent } from '../store/types.js';
import { fiveTupleKey } from '../store/types.js';
import type { AllocateAdmission } from './admission.js';
import { readAllocateRequest, requestedLifetimeSeconds } from './allocate-request.js';
import { ALLOCATION_LIMIT_DEFAULTS, type AllocationLimits } from './limits.js';
import { Allocation, CHANNEL_LIFETIME_MS, CHANNEL_QUARANTINE_MS, PERMISSION_LIFETIME_MS, type Permission } from './allocation.js';
import type { CredentialStore } from './auth.js';
import type { AllocateRefusalReason, DropReason, EngineCounters } from './counters.js';
import { TurnError } from './errors.js';
import { type ClientPath, type RelaySocket, isBindFailure } from './io.js';
import type { NonceIssuer } from './nonce.js';
import type { PeerPolicy } from './peer-policy.js';
import { SourceRateLimiter, type SourceRateLimitOptions, bindingLimitFor } from './rate-limit.js';
import { RelayPorts, type RelayPortOptions, type RelayRefusal, isRelayRefusal, newBindBudget } from './relay-ports.js';

const MAX_PORT_ATTEMPTS = 64;
/** A dual allocation's IPv6 port taken elsewhere this often: the Allocate goes on with IPv4 only (RFC 8656 §7.2). */
const MAX_ADDITIONAL_PORT_ATTEMPTS = 8;
/** Capacity refusals are logged at most this often (with the count since), never per Allocate. */
const REFUSAL_LOG_INTERVAL_MS = 60_000;
/** Anycast relay mode, store unreachable: how long past its expiry an allocation is kept in case it was refreshed elsewhere. */
const EXPIRY_GRACE_WITHOUT_STORE_MS = 60_000;

/** The subset of pino's logger the engine uses. */
export interface EngineLogger {
  info(obj: object, msg: string): void;
  warn(obj: object, msg: string): void;
  error(obj: object, msg: string): void;
  debug(obj: object, msg: string): void;
}

/** With the relay addresses and port range of RelayPortOptions; a family without a relay address answers 440. */
export interface EngineOptions extends RelayPortOptions {
  readonly nodeId: string;
  readonly credentials: CredentialStore;
  readonly nonces: NonceIssuer;
  readonly peerPolicy: PeerPolicy;
  readonly store: AllocationStore;
  readonly logger: EngineLogger;
  readonly counters: EngineCounters;
  readonly maxLifetimeSeconds: number;
  readonly userQuota: number;
  readonly totalQuota: number;
  /** SOFTWARE attribute for responses; empty leaves it out. */
  readonly software: string;
  /** In a cluster: takes packets from 5-tuples this node holds no allocation for. */
  readonly foreign?: ForeignPacketHandler;
  /**
   * Per source IP, how many error answers (400/401/420/438) requests that are not yet
   * authenticated may get; over it they are dropped ('rate_limited'). Binding answers
   * get their own limit, derived from it (bindingLimitFor). Absent: no limit.
   */
  readonly unauthenticatedErrorLimit?: SourceRateLimitOptions;
  /** Asked before each new allocation: 300 to an alternate server, 403 while draining. */
  readonly admission?: AllocateAdmission;
  /**
   * 'unicast' (default): an allocation lives on the node that made it. 'anycast': the
   * relay address is shared by every node, and every node holds every allocation
   * (kept current from the store's event feed), so any node serves any packet and a
   * node's death loses nothing (ARCHITECTURE §4, anycast relay).
   */
  readonly relayMode?: 'unicast' | 'anycast';
  /** Caps on one allocation's state and one request's work; absent fields take ALLOCATION_LIMIT_DEFAULTS. */
  readonly limits?: Partial<AllocationLimits>;
}


/**
 * Where packets go that belong to no local allocation: in a cluster, the node that
 * owns the allocation may be elsewhere (an anycast reroute moved the client here).
 */
export interface ForeignPacketHandler {
  /**
   * Returns true when it takes the packet (forwards it, or decides later and then
   * hands it back through handleClientPacket with local = true); false lets the
   * engine treat it as belonging to no allocation (drop, or 437 for a request).
   */
  offer(listener: EngineListener, buf: Buffer, address: string, port: number): boolean;
}

/** One place client packets arrive (a UDP socket, or a TCP/TLS connection) with its allocations. */
export class EngineListener {
  /** client address -> client port -> allocation: no string building per packet. */
  readonly allocations = new Map<string, Map<number, Allocation>>();
  /** Set by closeListener: the connection is gone, an Allocate still in flight must not land here. */
  closed = false;
  constructor(readonly path: ClientPath) {}

  find(address: string, port: number): Allocation | undefined {
    return this.allocations.get(address)?.get(port);
  }

  get holdsAllocation(): boolean {
    return this.allocations.size > 0;
  }
}

interface Authenticated {
  readonly username: string;
  readonly key: Buffer;
}

export class TurnEngine {
  private readonly listeners = new Set<EngineListener>();
  private readonly pending = new Set<string>();
  /** Every local allocation by store key (replication and cleanup; never on the packet path). */
  private readonly byKey = new Map<string, { readonly listener: EngineListener; readonly allocation: Allocation }>();
  /** Keys whose replica is being set up (anycast relay mode). */
  private readonly materializing = new Set<string>();
  private unsubscribe: (() => void) | undefined;
  private readonly ports: RelayPorts;
  private readonly sendView = new SendIndicationView();
  private readonly ids = new TransactionIdPool();
  private readonly dataHead = Buffer.alloc(DATA_INDICATION_MAX_HEAD);
  private readonly channelHead = Buffer.alloc(CHANNEL_DATA_HEADER_LENGTH);
  /** When each request in progress arrived (performance.now()), for the handling-time histogram. */
  private readonly receivedAt = new WeakMap<StunMessage, number>();
  private allocationCount = 0;
  private stopped = false;
  private readonly unauthLimiter: SourceRateLimiter | undefined;
  /** Binding answers per source (see bindingLimitFor): ICE needs them, so a higher rate than errors. */
  private readonly bindingLimiter: SourceRateLimiter | undefined;
  /** The peer policy for permissions and channels that come from the store (Allocation.merge). */
  private readonly storePeerFilter = (address: string, port: number | undefined): boolean =>
    (port === undefined ? this.o.peerPolicy.check(address) : this.o.peerPolicy.checkPeer(address, port)).allowed;
  private readonly onStorePeerRefused = (): void => {
    this.o.counters.peerPolicyRefusals++;
    this.o.counters.storePeerRefusals++;
  };
  /** The clock for the expiry checks on every relayed packet: its coarse reading if it has one. */
  private readonly packetClock: () => number;
  private readonly limits: AllocationLimits;
  /** Capacity refusals since the last log line about them, and when that was. */
  private refusalsUnlogged = 0;
  private refusalLoggedAtMs = -Infinity;

  constructor(private readonly o: EngineOptions) {
    const clock = o.clock;
    this.packetClock = clock.nowCoarse !== undefined ? () => clock.nowCoarse!() : () => clock.now();
    const limit = o.unauthenticatedErrorLimit;
    this.unauthLimiter = limit && limit.perSecond > 0 ? new SourceRateLimiter(limit) : undefined;
    this.bindingLimiter = limit && limit.perSecond > 0 ? new SourceRateLimiter(bindingLimitFor(limit)) : undefined;
    this.ports = new RelayPorts(o);
    this.limits = { ...ALLOCATION_LIMIT_DEFAULTS, ...o.limits };
    if (o.relayMode === 'anycast') this.unsubscribe = o.store.subscribe((event) => this.onStoreEvent(event));
  }

  private get anycastRelay(): boolean {
    return this.o.relayMode === 'anycast';
  }

  private register(listener: EngineListener, allocation: Allocation): void {
    let byPort = listener.allocations.get(allocation.clientAddress);
    if (!byPort) listener.allocations.set(allocation.clientAddress, (byPort = new Map()));
    byPort.set(allocation.clientPort, allocation);
    this.byKey.set(allocation.key, { listener, allocation });
    this.allocationCount++;
  }

  get allocations(): number {
    return this.allocationCount;
  }

  /**
   * Why this node cannot take new allocations for want of its own resources, or
   * undefined: no relay socket can be opened (out of descriptors: EMFILE/ENFILE, or
   * another bind error), or, unicast relay mode, every relay port is in use here. In
   * anycast relay mode the range is the cluster's, full on every node at once: not this
   * node's capacity. For /readyz; never per packet.
   */
  capacityProblem(): string | undefined {
    const code = this.ports.unavailable;
    if (code !== undefined) {
      return code === 'EMFILE' || code === 'ENFILE'
        ? `out of file descriptors (${code}): raise the open-file limit (ulimit -n / LimitNOFILE) or lower --total-quota`
        : `relay sockets cannot be bound (${code})`;
    }
    if (!this.anycastRelay && this.ports.rangeFull()) return 'every relay port is in use (--min-port to --max-port on each --relay-ip)';
    return undefined;
  }

  /** Counts a capacity refusal and logs about it at most once per interval (never per Allocate). */
  private refuse(reason: AllocateRefusalReason): void {
    this.o.counters.allocateRefusals[reason]++;
    this.refusalsUnlogged++;
    const now = this.o.clock.now();
    if (now - this.refusalLoggedAtMs < REFUSAL_LOG_INTERVAL_MS) return;
    this.o.logger.warn({ refused: this.refusalsUnlogged, reason, allocations: this.allocationCount, sinceMs: Number.isFinite(this.refusalLoggedAtMs) ? now - this.refusalLoggedAtMs : undefined }, 'Allocates refused for capacity');
    this.refusalLoggedAtMs = now;
    this.refusalsUnlogged = 0;
  }

  private refusalReason(refusal: RelayRefusal): AllocateRefusalReason {
    if (refusal.refused === 'ports') return 'relay_ports_full';
    return refusal.code === 'EMFILE' || refusal.code === 'ENFILE' ? 'no_descriptors' : 'bind_error';
  }

  addListener(path: ClientPath): EngineListener {
    const listener = new EngineListener(path);
    this.listeners.add(listener);
    return listener;
  }

  /** Every live allocation (tests, metrics, shutdown). */
  *allAllocations(): IterableIterator<Allocation> {
    for (const listener of this.listeners) for (const byPort of listener.allocations.values()) yield* byPort.values();
  }

  private drop(reason: DropReason): void {
    this.o.counters.drops[reason]++;
  }

  // ---------------------------------------------------------------- client packets

  /**
   * Entry point for every packet a client sends. Never throws. `local` says the
   * cluster already looked for another owner: decide here, whatever the outcome.
   */
  handleClientPacket(listener: EngineListener, buf: Buffer, address: string, port: number, local = false): void {
    if (this.stopped) return;
    // Nothing can be answered or relayed to port 0 (every receive path lands here).
    if (port === 0) return this.drop('source_port_zero');
    const first = buf.length > 0 ? buf[0]! & 0xc0 : 0xff;
    if (first === 0x40) return this.onClientChannelData(listener, buf, address, port, local);
    if (first !== 0 || buf.length < 20) return this.drop('not_stun');
    if (isSendIndication(buf)) return this.onSendIndication(listener, buf, address, port, local);
    const receivedAt = performance.now();
    const decoded = decodeMessage(buf);
    if (!decoded.ok) return this.drop(decoded.reason === 'bad-fingerprint' ? 'bad_fingerprint' : 'malformed');
    const message = decoded.message;
    if (message.cls !== MessageClass.Request) return this.drop('unexpected_class');
    this.receivedAt.set(message, receivedAt);
    // RFC 8489 §11: only Binding exists for RFC 3489 clients; anything else without the cookie is not ours.
    if (!message.hasMagicCookie && message.method !== Method.Binding) return this.drop('malformed');
    if (
      !local &&
      message.method !== Method.Binding &&
      message.method !== Method.Allocate &&
      this.o.foreign !== undefined &&
      listener.find(address, port) === undefined &&
      this.o.foreign.offer(listener, buf, address, port)
    ) {
      return;
    }
    this.handleRequest(listener, message, address, port, local).catch((err: unknown) => {
      this.o.logger.error({ err, client: `${address}:${port}` }, 'request handler failed');
    });
  }

  private onClientChannelData(listener: EngineListener, buf: Buffer, address: string, port: number, local: boolean): void {
    const allocation = listener.find(address, port);
    if (!allocation) return this.noAllocation(listener, buf, address, port, local);
    if (!looksLikeChannelData(buf)) return this.drop('bad_channel_data');
    const number = (buf[0]! << 8) | buf[1]!;
    const length = readChannelDataLength(buf);
    if (!isValidChannelNumber(number) || CHANNEL_DATA_HEADER_LENGTH + length > buf.length) return this.drop('bad_channel_data');
    const binding = allocation.channel(number);
    const now = this.packetClock();
    if (!binding || binding.expiresAtMs <= now) return this.drop('no_channel');
    if (binding.permission.expiresAtMs <= now) return this.drop('no_permission');
    if (this.o.peerPolicy.isServicePort(binding.peerPort) && this.isServerPeer(binding.permission)) return this.drop('peer_service_port');
    binding.permission.relay.send(buf, CHANNEL_DATA_HEADER_LENGTH, length, binding.peerPort, binding.peerAddress);
    this.o.counters.packetsClientToPeer++;
    this.o.counters.bytesClientToPeer += length;
  }

  /**
   * Whether a permission's IP is one of the server's or its cluster's addresses. Asked only
   * for a service port (rare), and cached on the permission until the policy learns more.
   */
  private isServerPeer(permission: Permission): boolean {
    const policy = this.o.peerPolicy;
    if (permission.policyGeneration !== policy.generation) {
      permission.serverAddress = policy.isServerAddress(permission.peerAddress);
      permission.policyGeneration = policy.generation;
    }
    return permission.serverAddress;
  }

  private noAllocation(listener: EngineListener, buf: Buffer, address: string, port: number, local: boolean): void {
    if (!local && this.o.foreign?.offer(listener, buf, address, port)) return;
    this.drop('no_allocation');
  }

  private onSendIndication(listener: EngineListener, buf: Buffer, address: string, port: number, local: boolean): void {
    const allocation = listener.find(address, port);
    if (!allocation) return this.noAllocation(listener, buf, address, port, local);
    const view = this.sendView;
    if (!readSendIndication(buf, view)) return this.drop('bad_send_indication');
    // RFC 8656 §10.2 gives no error for an indication: a datagram to port 0 cannot leave, so drop it.
    if (view.peerPort === 0) return this.drop('bad_peer_port');
    const permission =
      view.peerFamily === AddressFamily.IPv4
        ? allocation.permissionsByIPv4.get(view.peerIPv4)
        : allocation.permissionsByAddress.get(formatIPv6(view.peerIPv6));
    if (!permission || permission.expiresAtMs <= this.packetClock()) return this.drop('no_permission');
    // A permission is per IP (RFC 8656 §9); the port is known only here: never a server's service port.
    if (this.o.peerPolicy.isServicePort(view.peerPort) && this.isServerPeer(permission)) return this.drop('peer_service_port');
    permission.relay.send(buf, view.dataOffset, view.dataLength, view.peerPort, permission.peerAddress);
    this.o.counters.packetsClientToPeer++;
    this.o.counters.bytesClientToPeer += view.dataLength;
  }

  // ---------------------------------------------------------------- peer packets

  private onPeerPacket(allocation: Allocation, payload: Buffer, address: string, port: number): void {
    if (allocation.deleted) return;
    if (port === 0) return this.drop('source_port_zero');
    const permission = allocation.permissionsByAddress.get(address);
    const now = this.packetClock();
    // RFC 8656 §10.3: no permission for the peer's IP, no delivery.
    if (!permission || permission.expiresAtMs <= now) return this.drop('no_permission');
    const length = payload.length;
    const binding = permission.channelsByPort?.get(port);
    const path = allocation.path;
    if (binding !== undefined && binding.expiresAtMs > now) {
      if (length > CHANNEL_DATA_MAX_LENGTH) return this.drop('too_large');
      writeChannelDataHeader(this.channelHead, 0, binding.number, length);
      path.sendFramed(this.channelHead, CHANNEL_DATA_HEADER_LENGTH, payload, 0, length, path.transport !== 'udp', allocation.clientPort, allocation.clientAddress);
    } else {
      // RFC 8489 §5: the message length is 16 bits; a datagram close to 64 KiB does not fit
      // once the head and padding are added (an IPv6 peer can send up to 65,527 bytes).
      if (length > (permission.peerIPv4 >= 0 ? DATA_INDICATION_MAX_DATA_IPV4 : DATA_INDICATION_MAX_DATA_IPV6)) return this.drop('too_large');
      const headLength =
        permission.peerIPv4 >= 0
          ? writeDataIndicationHeadIPv4(this.dataHead, this.ids, permission.peerIPv4, port, length)
          : writeDataIndicationHeadIPv6(this.dataHead, this.ids, permission.peerIPv6, port, length);
      path.sendFramed(this.dataHead, headLength, payload, 0, length, true, allocation.clientPort, allocation.clientAddress);
    }
    this.o.counters.packetsPeerToClient++;
    this.o.counters.bytesPeerToClient += length;
  }

  // ---------------------------------------------------------------- requests

  private async handleRequest(listener: EngineListener, message: StunMessage, address: string, port: number, local: boolean): Promise<void> {
    const label = methodName(message.method);
    let auth: Authenticated | undefined;
    try {
      if (message.method !== Method.Binding) {
        auth = this.authenticate(listener, message, address, port);
        if (!auth) return;
      }
      // RFC 8489 §6.3.1: unknown comprehension-required attributes get 420 listing them.
      const unknown = message.attributes.filter((a) => isComprehensionRequired(a.type) && !isKnownAttribute(a.type)).map((a) => a.type);
      if (unknown.length > 0 && message.hasMagicCookie) {
        // Only a Binding gets here unauthenticated: limited and without a reason phrase, as the other errors.
        if (!auth && this.unauthenticatedLimited(this.unauthLimiter, address)) return;
        const w = this.errorWriter(message, ErrorCode.UnknownAttribute, auth ? undefined : '');
        w.add(Attr.UnknownAttributes, encodeUnknownAttributes(unknown));
        this.send(listener, message, w, auth?.key, address, port, label, ErrorCode.UnknownAttribute);
        return;
      }
      if (message.method === Method.Binding) return this.respondBinding(listener, message, address, port);
      if (!auth) return;
      switch (message.method) {
        case Method.Allocate:
          return await this.allocate(listener, message, auth, address, port, local);
        case Method.Refresh:
          return await this.refresh(listener, message, auth, address, port);
        case Method.CreatePermission:
          return await this.createPermission(listener, message, auth, address, port);
        case Method.ChannelBind:
          return await this.channelBind(listener, message, auth, address, port);
        default:
          throw new TurnError(ErrorCode.BadRequest, 'Unknown method');
      }
    } catch (err) {
      const code = err instanceof TurnError ? err.code : ErrorCode.ServerError;
      if (!(err instanceof TurnError)) this.o.logger.error({ err, client: `${address}:${port}`, method: label }, 'request failed');
      const w = this.errorWriter(message, code, err instanceof TurnError ? err.reason : undefined);
      this.send(listener, message, w, auth?.key, address, port, label, code);
    }
  }

  /**
   * Not an amplifier: over UDP the source of an unauthenticated request may be spoofed,
   * so each source IP (an IPv6 /64) gets a bounded rate of answers (turn/rate-limit.ts).
   * True when this answer is over it (dropped and counted).
   */
  private unauthenticatedLimited(limiter: SourceRateLimiter | undefined, address: string): boolean {
    if (limiter === undefined || limiter.take(address, this.o.clock.now())) return false;
    this.drop('rate_limited');
    return true;
  }

  /**
   * An error response. `reason` '' leaves the reason phrase out (RFC 8489 §14.8 allows an
   * empty one): answers to unauthenticated requests carry none, they would only add bytes
   * towards a possibly spoofed source (a 401 went from 4.2x to 3.6x the request's size).
   */
  private errorWriter(message: StunMessage, code: number, reason?: string): MessageWriter {
    const w = new MessageWriter(message.method, MessageClass.ErrorResponse, message.transactionId);
    w.addErrorCode(code, reason ?? reasonPhrase(code));
    return w;
  }

  /**
   * Seals (integrity when authenticated; FINGERPRINT when the request had one) and sends.
   * RFC 8489 §9.2.4: the response is signed with the algorithm that authenticated the
   * request. authenticate() checks MESSAGE-INTEGRITY-SHA256 whenever the request has
   * it, so its presence says which one that was; the full 32 bytes (§14.6).
   */
  private send(listener: EngineListener, request: StunMessage, w: MessageWriter, key: Buffer | undefined, address: string, port: number, label: string, code: number): Buffer {
    if (this.o.software) w.addText(Attr.Software, this.o.software);
    if (key) {
      if (request.integritySha256Offset >= 0) w.addIntegritySha256(key);
      else w.addIntegrity(key);
    }
    if (request.fingerprintOffset >= 0) w.addFingerprint();
    const out = w.toBuffer();
    listener.path.sendMessage(out, port, address);
    this.answered(request, label, code);
    return out;
  }

  /** Counts an answered request and how long it took from receipt to response. */
  private answered(request: StunMessage, label: string, code: number): void {
    this.o.counters.countRequest(label, code);
    const receivedAt = this.receivedAt.get(request);
    if (receivedAt !== undefined) this.o.counters.observeRequestSeconds(label, (performance.now() - receivedAt) / 1000);
  }

  private respondBinding(listener: EngineListener, message: StunMessage, address: string, port: number): void {
    if (this.unauthenticatedLimited(this.bindingLimiter, address)) return;
    if (message.hasMagicCookie) {
      const w = new MessageWriter(Method.Binding, MessageClass.SuccessResponse, message.transactionId);
      w.addXorAddress(Attr.XorMappedAddress, address, port);
      this.send(listener, message, w, undefined, address, port, 'binding', 200);
      return;
    }
    // RFC 8489 §11: an RFC 3489 client gets MAPPED-ADDRESS, and its 128-bit transaction id back.
    const w = new MessageWriter(Method.Binding, MessageClass.SuccessResponse, message.transactionId, message.raw.readUInt32BE(4));
    w.addAddress(Attr.MappedAddress, address, port);
    listener.path.sendMessage(w.toBuffer(), port, address);
    this.answered(message, 'binding', 200);
  }

  /**
   * RFC 8489 §9.2.4. Returns the user, or undefined after answering 400/401/438.
   * An unknown user and a wrong password get the very same 401.
   */
  private authenticate(listener: EngineListener, message: StunMessage, address: string, port: number): Authenticated | undefined {
    const label = methodName(message.method);
    const now = this.o.clock.now();
    const limited = (): boolean => this.unauthenticatedLimited(this.unauthLimiter, address);
    const challenge = (code: number): undefined => {
      if (limited()) return undefined;
      if (code === ErrorCode.Unauthorized) this.o.counters.authFailures++;
      const w = this.errorWriter(message, code, '');
      w.addText(Attr.Realm, this.o.credentials.realm);
      w.addText(Attr.Nonce, this.o.nonces.issue(address, now));
      this.send(listener, message, w, undefined, address, port, label, code);
      return undefined;
    };
    const badRequest = (): undefined => {
      if (limited()) return undefined;
      this.send(listener, message, this.errorWriter(message, ErrorCode.BadRequest, ''), undefined, address, port, label, ErrorCode.BadRequest);
      return undefined;
    };
    const hasSha256 = message.integritySha256Offset >= 0;
    if (message.integrityOffset < 0 && !hasSha256) return challenge(ErrorCode.Unauthorized);

    const usernameValue = getAttribute(message, Attr.Username);
    const userhashValue = getAttribute(message, Attr.Userhash);
    const realmValue = getAttribute(message, Attr.Realm);
    const nonceValue = getAttribute(message, Attr.Nonce);
    if ((!usernameValue && !userhashValue) || !realmValue || !nonceValue) return badRequest();
    const realm = decodeText(realmValue, MAX_REALM_BYTES);
    const nonce = decodeText(nonceValue, MAX_NONCE_BYTES);
    let username = usernameValue ? decodeText(usernameValue, MAX_USERNAME_BYTES) : undefined;
    if (!username && userhashValue) username = userhashValue.length === 32 ? this.o.credentials.usernameForUserhash(userhashValue) : undefined;
    if (realm === undefined || nonce === undefined || (usernameValue && username === undefined)) return badRequest();

    let algorithm: PasswordAlgorithm = PasswordAlgorithm.MD5;
    const algorithmValue = getAttribute(message, Attr.PasswordAlgorithm);
    if (algorithmValue) {
      const entry = decodePasswordAlgorithm(algorithmValue);
      if (!entry || !isKnownPasswordAlgorithm(entry.algorithm)) return badRequest();
      algorithm = entry.algorithm;
    }
    if (this.o.nonces.check(nonce, address, now) !== 'valid') return challenge(ErrorCode.StaleNonce);

    const lookup = username !== undefined && realm === this.o.credentials.realm ? this.o.credentials.keysFor(username, now, algorithm) : undefined;
    const keys = lookup?.ok ? lookup.keys : [this.o.credentials.decoyKey];
    const raw = message.raw;
    for (const key of keys) {
      const ok = hasSha256 ? verifyIntegritySha256(raw, message.integritySha256Offset, key) : verifyIntegritySha1(raw, message.integrityOffset, key);
      if (ok && lookup?.ok && username !== undefined) return { username, key };
    }
    return challenge(ErrorCode.Unauthorized);
  }

  private requireAllocation(listener: EngineListener, auth: Authenticated, address: string, port: number): Allocation {
    const allocation = listener.find(address, port);
    if (!allocation) throw new TurnError(ErrorCode.AllocationMismatch);
    // RFC 8656 §5: requests on an allocation must use the username that created it.
    if (allocation.username !== auth.username) throw new TurnError(ErrorCode.WrongCredentials);
    return allocation;
  }

  private async allocate(listener: EngineListener, message: StunMessage, auth: Authenticated, address: string, port: number, local: boolean): Promise<void> {
    const existing = listener.find(address, port);
    if (existing) {
      // RFC 8656 §7.2: a retransmitted Allocate gets the original success response again.
      if (existing.allocateResponse && existing.allocateTransactionId === message.transactionId.toString('hex') && existing.username === auth.username) {
        listener.path.sendMessage(existing.allocateResponse, port, address);
        return;
      }
      throw new TurnError(ErrorCode.AllocationMismatch);
    }
    // After authentication, as coturn does: a redirect (RFC 8489 §10) or a draining node's 403.
    const refusal = this.o.admission?.(address);
    if (refusal?.code === ErrorCode.TryAlternate) {
      const w = this.errorWriter(message, ErrorCode.TryAlternate);
      w.addAddress(Attr.AlternateServer, refusal.alternateServer.address, refusal.alternateServer.port);
      this.send(listener, message, w, auth.key, address, port, 'allocate', ErrorCode.TryAlternate);
      return;
    }
    if (refusal) throw new TurnError(refusal.code, refusal.reason);
    const key = fiveTupleKey(listener.path.transport, address, port, listener.path.localAddress, listener.path.localPort);
    if (this.pending.has(key)) return this.drop('request_in_flight');

    const relays = { ipv4: this.o.relayAddressIPv4 !== undefined, ipv6: this.o.relayAddressIPv6 !== undefined };
    const request = readAllocateRequest(message, relays, this.o.maxLifetimeSeconds);
    const { token, evenPort, family, wantsDual } = request;
    const lifetime = request.lifetimeSeconds;
    // The IPv6 half may still fail below, for want of a port.
    let additionalError = request.additionalError;
    if (this.o.totalQuota > 0 && this.allocationCount + this.pending.size >= this.o.totalQuota) {
      this.o.counters.quotaRefusals++;
      this.refuse('total_quota');
      throw new TurnError(ErrorCode.InsufficientCapacity);
    }

    this.pending.add(key);
    let relay: RelaySocket | undefined;
    let additionalRelay: RelaySocket | undefined;
    let reservedToken: Buffer | undefined;
    let additionalClashes = 0;
    // Binds that may fail on ports held elsewhere, for this whole Allocate (both families, store retries).
    const budget = newBindBudget();
    let relayRefusal: RelayRefusal | undefined;
    try {
      const now = this.o.clock.now();
      let allocation: Allocation | undefined;
      const onPacket = (payload: Buffer, peerAddress: string, peerPort: number): void => {
        if (allocation) this.onPeerPacket(allocation, payload, peerAddress, peerPort);
      };
      if (wantsDual && additionalError === undefined && this.o.relayAddressIPv6 !== undefined) {
        const extra = await this.ports.bindInFamily(true, false, false, onPacket, budget);
        if (isRelayRefusal(extra)) additionalError = ErrorCode.InsufficientCapacity;
        else additionalRelay = extra.socket;
      }
      if (token) {
        relay = await this.ports.redeem(token, onPacket);
        if (!relay) throw new TurnError(ErrorCode.InsufficientCapacity, 'Unknown RESERVATION-TOKEN');
      }
      for (let attempt = 0; attempt < MAX_PORT_ATTEMPTS && !allocation; attempt++) {
        if (!relay) {
          const bound = await this.ports.bindInFamily(family === AddressFamily.IPv6, evenPort !== undefined, evenPort?.reserveNext ?? false, onPacket, budget);
          if (isRelayRefusal(bound)) {
            relayRefusal = bound;
            break;
          }
          relay = bound.socket;
          reservedToken = bound.token;
        }
        const candidate = new Allocation(
          {
            key,
            path: listener.path,
            clientAddress: address,
            clientPort: port,
            username: auth.username,
            realm: this.o.credentials.realm,
            relay,
            additionalRelay,
            createdAtMs: now,
            allocateTransactionId: message.transactionId.toString('hex'),
          },
          now + lifetime * 1000,
        );
        let outcome;
        try {
          outcome = await this.o.store.create(candidate.toRecord(this.o.nodeId), { userQuota: this.o.userQuota });
        } catch (err) {
          this.o.counters.storeErrors++;
          this.o.logger.warn({ err }, 'store unavailable: refusing Allocate');
          this.refuse('store_unavailable');
          throw new TurnError(ErrorCode.InsufficientCapacity, 'Store unavailable');
        }
        if (outcome.ok) {
          candidate.version = outcome.record.version;
          allocation = candidate;
        } else if (outcome.reason === 'port-taken' && outcome.additional === true) {
          // The IPv6 relayed port is held elsewhere (anycast relay mode: another node bound the
          // same shared address): take another one; none left is a 508 for that family only (RFC 8656 §7.2).
          additionalRelay?.close();
          const extra = ++additionalClashes < MAX_ADDITIONAL_PORT_ATTEMPTS ? await this.ports.bindInFamily(true, false, false, onPacket, budget) : undefined;
          additionalRelay = extra === undefined || isRelayRefusal(extra) ? undefined : extra.socket;
          if (!additionalRelay) additionalError = ErrorCode.InsufficientCapacity;
        } else if (outcome.reason === 'port-taken' && !token) {
          // Another node holds it (anycast relay mode): a collision like EADDRINUSE.
          relay.close();
          relay = undefined;
          if (--budget.collisions <= 0) break;
        } else if (outcome.reason === 'user-quota') {
          this.o.counters.quotaRefusals++;
          this.refuse('user_quota');
          throw new TurnError(ErrorCode.AllocationQuotaReached);
        } else if (!local && this.o.foreign?.offer(listener, message.raw, address, port)) {
          // Another node holds this 5-tuple's allocation (a retransmitted Allocate after a reroute):
          // its owner answers, with the original response.
          relay.close();
          additionalRelay?.close();
          if (reservedToken) this.ports.release(reservedToken);
          return;
        } else {
          throw new TurnError(ErrorCode.AllocationMismatch);
        }
      }
      if (!allocation || !relay) {
        const reason = relayRefusal ? this.refusalReason(relayRefusal) : 'relay_ports_full';
        this.refuse(reason);
        throw new TurnError(ErrorCode.InsufficientCapacity, reason === 'relay_ports_full' ? 'No relay port available' : 'No relay socket available');
      }
      if (this.stopped || listener.closed) {
        await this.o.store.delete(key, this.stopped ? 'shutdown' : 'connection-closed').catch(() => undefined);
        throw new TurnError(ErrorCode.InsufficientCapacity, this.stopped ? 'Shutting down' : 'Connection closed');
      }
      this.register(listener, allocation);
      this.o.counters.allocationsCreated++;
      relay = undefined; // owned by the allocation now
      additionalRelay = undefined;

      const w = new MessageWriter(Method.Allocate, MessageClass.SuccessResponse, message.transactionId);
      w.addXorAddress(Attr.XorRelayedAddress, allocation.relay.address, allocation.relay.port);
      if (allocation.additionalRelay) w.addXorAddress(Attr.XorRelayedAddress, allocation.additionalRelay.address, allocation.additionalRelay.port);
      if (additionalError !== undefined) w.add(Attr.AddressErrorCode, encodeAddressErrorCode(AddressFamily.IPv6, additionalError, reasonPhrase(additionalError)));
      w.add(Attr.Lifetime, encodeUint32(lifetime));
      if (reservedToken) w.add(Attr.ReservationToken, reservedToken);
      w.addXorAddress(Attr.XorMappedAddress, address, port);
      allocation.allocateResponse = this.send(listener, message, w, auth.key, address, port, 'allocate', 200);
      this.o.logger.info(
        { event: 'allocation_created', client: `${address}:${port}`, transport: listener.path.transport, relayed: `${allocation.relay.address}:${allocation.relay.port}`, relayedIPv6: allocation.additionalRelay ? `[${allocation.additionalRelay.address}]:${allocation.additionalRelay.port}` : undefined, user: auth.username, lifetimeSeconds: lifetime },
        'allocation created',
      );
    } catch (err) {
      relay?.close();
      additionalRelay?.close();
      if (reservedToken) this.ports.release(reservedToken);
      throw err;
    } finally {
      this.pending.delete(key);
    }
  }

  private async refresh(listener: EngineListener, message: StunMessage, auth: Authenticated, address: string, port: number): Promise<void> {
    const allocation = this.requireAllocation(listener, auth, address, port);
    const familyValue = getAttribute(message, Attr.RequestedAddressFamily);
    if (familyValue) {
      const family = decodeAddressFamily(familyValue);
      if (family !== AddressFamily.IPv4 && family !== AddressFamily.IPv6) throw new TurnError(ErrorCode.BadRequest, 'Bad REQUESTED-ADDRESS-FAMILY');
      if (!allocation.relayFor(family === AddressFamily.IPv6)) throw new TurnError(ErrorCode.PeerAddressFamilyMismatch);
    }
    const lifetime = requestedLifetimeSeconds(message, this.o.maxLifetimeSeconds);
    if (lifetime === 0) {
      await this.deleteAllocation(listener, allocation, 'refresh-zero');
    } else {
      allocation.expiresAtMs = this.o.clock.now() + lifetime * 1000;
      await this.persist(allocation);
    }
    const w = new MessageWriter(Method.Refresh, MessageClass.SuccessResponse, message.transactionId);
    w.add(Attr.Lifetime, encodeUint32(lifetime));
    this.send(listener, message, w, auth.key, address, port, 'refresh', 200);
  }

  /**
   * Decodes and vets one XOR-PEER-ADDRESS: 400 malformed, 443 wrong family, 403 by policy.
   * `withPort`: the port matters too (ChannelBind; a CreatePermission's port is ignored, RFC 8656 §9.1).
   */
  private checkPeer(allocation: Allocation, value: Buffer, transactionId: Buffer, withPort = false): { address: string; port: number } {
    const peer = decodeAddress(value, transactionId);
    if (!peer) throw new TurnError(ErrorCode.BadRequest, 'Bad XOR-PEER-ADDRESS');
    // RFC 8656 §9.1/§11.1: a peer of a family the allocation has no relayed address for is 443.
    if (!allocation.relayFor(peer.family === AddressFamily.IPv6)) throw new TurnError(ErrorCode.PeerAddressFamilyMismatch);
    const verdict = withPort ? this.o.peerPolicy.checkPeer(peer.address, peer.port) : this.o.peerPolicy.check(peer.address);
    if (!verdict.allowed) {
      this.o.counters.peerPolicyRefusals++;
      this.o.logger.debug({ peer: peer.address, reason: verdict.reason, user: allocation.username }, 'peer refused by policy');
      throw new TurnError(ErrorCode.Forbidden);
    }
    return peer;
  }

  private async createPermission(listener: EngineListener, message: StunMessage, auth: Authenticated, address: string, port: number): Promise<void> {
    const allocation = this.requireAllocation(listener, auth, address, port);
    const values = getAttributes(message, Attr.XorPeerAddress);
    if (values.length === 0) throw new TurnError(ErrorCode.BadRequest, 'XOR-PEER-ADDRESS missing');
    if (values.length > this.limits.peersPerRequest) return this.overLimit('Too many peers in one request');
    // RFC 8656 §9.2: all or nothing.
    const peers = values.map((v) => this.checkPeer(allocation, v, message.transactionId));
    const added = new Set<string>();
    for (const peer of peers) if (!allocation.permissionsByAddress.has(peer.address)) added.add(peer.address);
    if (allocation.permissionsByAddress.size + added.size > this.limits.permissionsPerAllocation) return this.overLimit('Too many permissions');
    const expiresAtMs = this.o.clock.now() + PERMISSION_LIFETIME_MS;
    for (const peer of peers) allocation.permit(peer.address, parseIPv4(peer.address), expiresAtMs);
    await this.persist(allocation);
    const w = new MessageWriter(Method.CreatePermission, MessageClass.SuccessResponse, message.transactionId);
    this.send(listener, message, w, auth.key, address, port, 'create_permission', 200);
  }

  private async channelBind(listener: EngineListener, message: StunMessage, auth: Authenticated, address: string, port: number): Promise<void> {
    const allocation = this.requireAllocation(listener, auth, address, port);
    const numberValue = getAttribute(message, Attr.ChannelNumber);
    const peerValue = getAttribute(message, Attr.XorPeerAddress);
    if (!numberValue || !peerValue) throw new TurnError(ErrorCode.BadRequest, 'CHANNEL-NUMBER or XOR-PEER-ADDRESS missing');
    const number = decodeChannelNumber(numberValue);
    if (number === undefined || !isValidChannelNumber(number)) throw new TurnError(ErrorCode.BadRequest, 'Channel number out of range');
    const peer = this.checkPeer(allocation, peerValue, message.transactionId, true);
    // A channel carries datagrams to one transport address (RFC 8656 §11): port 0 is none.
    if (peer.port === 0) throw new TurnError(ErrorCode.BadRequest, 'Peer port 0');
    const now = this.o.clock.now();
    // Forget bindings whose quarantine is over before judging this one: the checks below (and
    // bindChannel) must see the state the clock says, not what the last tick() left behind.
    if (allocation.prune(now)) allocation.dirty = true;
    // RFC 8656 §11.2: a number stays with its peer, and a peer with its number (also during quarantine).
    const existing = allocation.channel(number);
    if (existing && (existing.peerAddress !== peer.address || existing.peerPort !== peer.port)) {
      throw new TurnError(ErrorCode.BadRequest, 'Channel bound to another peer');
    }
    const peerBinding = allocation.permissionsByAddress.get(peer.address)?.channelsByPort?.get(peer.port);
    if (peerBinding && peerBinding.number !== number && peerBinding.expiresAtMs + CHANNEL_QUARANTINE_MS > now) {
      throw new TurnError(ErrorCode.BadRequest, 'Peer bound to another channel');
    }
    if (!existing) {
      if (allocation.channelCount >= this.limits.channelsPerAllocation) return this.overLimit('Too many channels');
      if (!allocation.permissionsByAddress.has(peer.address) && allocation.permissionsByAddress.size >= this.limits.permissionsPerAllocation) {
        return this.overLimit('Too many permissions');
      }
    }
    const permission = allocation.permit(peer.address, parseIPv4(peer.address), now + PERMISSION_LIFETIME_MS);
    allocation.bindChannel(number, permission, peer.port, now + CHANNEL_LIFETIME_MS);
    await this.persist(allocation);
    const w = new MessageWriter(Method.ChannelBind, MessageClass.SuccessResponse, message.transactionId);
    this.send(listener, message, w, auth.key, address, port, 'channel_bind', 200);
  }

  /** A request over one of the AllocationLimits: 508, counted. */
  private overLimit(reason: string): never {
    this.o.counters.limitRefusals++;
    throw new TurnError(ErrorCode.InsufficientCapacity, reason);
  }

  // ---------------------------------------------------------------- state upkeep

  /** Writes the allocation through to the store, one write at a time per allocation. */
  private persist(allocation: Allocation): Promise<void> {
    const run = async (): Promise<void> => {
      if (allocation.deleted) return;
      try {
        let outcome = await this.o.store.update(allocation.toRecord(this.o.nodeId));
        // Another writer got there first (anycast relay mode: any node may change any
        // allocation): fold its record into ours and write the union. Never a lost update.
        for (let attempt = 0; attempt < 5 && !outcome.ok && outcome.reason === 'conflict' && outcome.current; attempt++) {
          allocation.merge(outcome.current, this.storePeerFilter, this.onStorePeerRefused);
          allocation.version = outcome.current.version;
          outcome = await this.o.store.update(allocation.toRecord(this.o.nodeId));
        }
        if (!outcome.ok && outcome.reason === 'missing') {
          // The store lost the record (a Redis restart without persistence): write it
          // again. A live allocation is never refused for quota here.
          const created = await this.o.store.create(allocation.toRecord(this.o.nodeId), { userQuota: 0 });
          if (created.ok) outcome = created;
        }
        if (outcome.ok) {
          allocation.version = outcome.record.version;
          allocation.dirty = false;
        } else {
          allocation.dirty = true;
          this.o.logger.warn({ allocation: allocation.key, reason: outcome.reason }, 'store update refused');
        }
      } catch (err) {
        // RFC-level state stays live locally; the store catches up on a later tick.
        allocation.dirty = true;
        this.o.counters.storeErrors++;
        this.o.logger.warn({ err, allocation: allocation.key }, 'store write failed; will retry');
      }
    };
    allocation.persisting = allocation.persisting.then(run);
    return allocation.persisting;
  }

  /** Deletes a local allocation; with writeStore false only this node's copy goes (a replica). */
  private async deleteAllocation(listener: EngineListener, allocation: Allocation, reason: string, writeStore = true): Promise<void> {
    if (allocation.deleted) return;
    allocation.deleted = true;
    const byPort = listener.allocations.get(allocation.clientAddress);
    if (byPort?.get(allocation.clientPort) === allocation) {
      byPort.delete(allocation.clientPort);
      if (byPort.size === 0) listener.allocations.delete(allocation.clientAddress);
    }
    if (this.byKey.get(allocation.key)?.allocation === allocation) this.byKey.delete(allocation.key);
    this.allocationCount--;
    this.o.counters.allocationsDeleted++;
    allocation.closeRelays();
    this.o.logger.info(
      { event: 'allocation_deleted', client: `${allocation.clientAddress}:${allocation.clientPort}`, relayed: `${allocation.relay.address}:${allocation.relay.port}`, user: allocation.username, reason },
      'allocation deleted',
    );
    if (!writeStore) return;
    try {
      await allocation.persisting;
      await this.o.store.delete(allocation.key, reason);
    } catch (err) {
      this.o.counters.storeErrors++;
      this.o.logger.warn({ err, allocation: allocation.key }, 'store delete failed');
    }
  }

  /** Marks every allocation for a write on the next tick: after the store comes back, it may have lost them. */
  resyncAll(): void {
    for (const allocation of this.allAllocations()) allocation.dirty = true;
  }

  /** Removes an allocation whose client transport went away (a closed TCP/TLS connection). */
  async closeListener(listener: EngineListener, reason: string): Promise<void> {
    const all = [...listener.allocations.values()].flatMap((m) => [...m.values()]);
    listener.closed = true;
    this.listeners.delete(listener);
    await Promise.all(all.map((a) => this.deleteAllocation(listener, a, reason)));
  }

  /** Expires allocations, permissions, channels and reservations; retries store writes. Call about once a second. */
  async tick(): Promise<void> {
    const now = this.o.clock.now();
    const work: Promise<void>[] = [];
    for (const listener of this.listeners) {
      for (const byPort of listener.allocations.values()) {
        for (const allocation of byPort.values()) {
          if (allocation.expiresAtMs <= now) work.push(this.anycastRelay ? this.expireShared(listener, allocation, now) : this.deleteAllocation(listener, allocation, 'expired'));
          else if (allocation.prune(now) || allocation.dirty) work.push(this.persist(allocation));
        }
      }
    }
    this.ports.expire(now);
    await Promise.all(work);
  }

  // ---------------------------------------------------------------- anycast relay mode

  /**
   * An allocation whose lifetime ran out here: another node may have refreshed it
   * (an event we missed or haven't seen yet), so ask the store before deleting.
   */
  private async expireShared(listener: EngineListener, allocation: Allocation, now: number): Promise<void> {
    try {
      const current = await this.o.store.get(allocation.key);
      if (current && current.expiresAtMs > now) {
        allocation.merge(current, this.storePeerFilter, this.onStorePeerRefused);
        return;
      }
    } catch {
      // Store unreachable: keep relaying a while rather than cut a call another node may have refreshed.
      if (now < allocation.expiresAtMs + EXPIRY_GRACE_WITHOUT_STORE_MS) return;
    }
    await this.deleteAllocation(listener, allocation, 'expired');
  }

  private onStoreEvent(event: StoreEvent): void {
    if (this.stopped) return;
    if (event.type === 'deleted') {
      const local = this.byKey.get(event.key);
      if (local) void this.deleteAllocation(local.listener, local.allocation, event.reason, false);
      return;
    }
    const local = this.byKey.get(event.record.key);
    if (local) local.allocation.merge(event.record, this.storePeerFilter, this.onStorePeerRefused);
    else if (!this.pending.has(event.record.key)) void this.adopt(event.record);
  }

  private findListener(transport: string, address: string, port: number): EngineListener | undefined {
    for (const listener of this.listeners) {
      const p = listener.path;
      if (p.transport === transport && p.localAddress === address && p.localPort === port) return listener;
    }
    return undefined;
  }

  /**
   * Takes on an allocation made by another node: binds its relayed address (shared by
   * every node in anycast relay mode) and serves it from here. Returns true when the
   * allocation is (now) held locally. `fresh`: the record was just read from the
   * store (no need to read it again).
   */
  async adopt(record: AllocationRecord, fresh = false): Promise<boolean> {
    if (this.byKey.has(record.key)) return true;
    if (this.materializing.has(record.key) || this.stopped || record.transport !== 'udp') return false;
    const listener = this.findListener(record.transport, record.serverAddress, record.serverPort);
    if (!listener || record.expiresAtMs <= this.o.clock.now()) return false;
    this.materializing.add(record.key);
    let relay: RelaySocket | undefined;
    let additionalRelay: RelaySocket | undefined;
    try {
      let allocation: Allocation | undefined;
      const onPacket = (payload: Buffer, peerAddress: string, peerPort: number): void => {
        if (allocation) this.onPeerPacket(allocation, payload, peerAddress, peerPort);
      };
      const bound = await this.o.relays.bind(record.relayedAddress, record.relayedPort, onPacket);
      relay = isBindFailure(bound) ? undefined : bound;
      if (record.additionalRelayedAddress !== undefined && record.additionalRelayedPort !== undefined) {
        const extra = await this.o.relays.bind(record.additionalRelayedAddress, record.additionalRelayedPort, onPacket);
        additionalRelay = isBindFailure(extra) ? undefined : extra;
      }
      if (!relay) {
        this.o.counters.replicaFailures++;
        this.o.logger.warn({ allocation: record.key, relayed: `${record.relayedAddress}:${record.relayedPort}` }, 'cannot bind a shared relayed address here');
        return false;
      }
      // An event may be old by now: read the record again (a start-up listing was just read).
      const current = fresh ? record : await this.o.store.get(record.key);
      if (!current || this.byKey.has(record.key) || this.stopped) return this.byKey.has(record.key);
      allocation = new Allocation(
        {
          key: current.key,
          path: listener.path,
          clientAddress: current.clientAddress,
          clientPort: current.clientPort,
          username: current.username,
          realm: current.realm,
          relay,
          additionalRelay,
          createdAtMs: current.createdAtMs,
          allocateTransactionId: '',
        },
        current.expiresAtMs,
      );
      allocation.merge(current, this.storePeerFilter, this.onStorePeerRefused);
      relay = undefined;
      additionalRelay = undefined;
      this.register(listener, allocation);
      this.o.counters.allocationsAdopted++;
      this.o.logger.debug({ event: 'allocation_adopted', allocation: current.key, relayed: `${current.relayedAddress}:${current.relayedPort}`, user: current.username }, 'allocation adopted');
      return true;
    } catch (err) {
      this.o.counters.replicaFailures++;
      this.o.logger.warn({ err, allocation: record.key }, 'adopting an allocation failed');
      return false;
    } finally {
      relay?.close();
      additionalRelay?.close();
      this.materializing.delete(record.key);
    }
  }

  /** Takes on every allocation in the store (anycast relay mode: at start, and after a store outage). */
  async syncFromStore(): Promise<number> {
    const records = await this.o.store.listAllocations();
    let held = 0;
    for (const record of records) {
      const local = this.byKey.get(record.key);
      if (local) local.allocation.merge(record, this.storePeerFilter, this.onStorePeerRefused);
      else if (await this.adopt(record, true)) held++;
    }
    return held;
  }

  /** Deletes every allocation (graceful shutdown) and stops taking packets. */
  async stop(): Promise<void> {
    this.stopped = true;
    this.unsubscribe?.();
    const work: Promise<void>[] = [];
    for (const listener of this.listeners) {
      // With a shared relay address the other nodes keep serving these: only our copies go.
      for (const byPort of listener.allocations.values()) for (const a of byPort.values()) work.push(this.deleteAllocation(listener, a, 'shutdown', !this.anycastRelay));
    }
    this.ports.releaseAll();
    await Promise.all(work);
  }
}

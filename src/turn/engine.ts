// The TURN engine (RFC 8656 over RFC 8489): takes every client packet, decides
// which path it belongs to, and hands it on: ChannelData and Send indications to
// the client data path (methods/send.ts), requests to authentication and then to
// their method's handler (methods/), peer datagrams arrive at methods/data.ts by
// way of each relay socket. Also keeps time (tick) and shuts down (stop). It sees
// the transport only through the ports (ports.ts) and the store only through
// AllocationStore; time comes from the injected clock.

import { performance } from 'node:perf_hooks';
import { encodeUnknownAttributes } from '../stun/attributes.js';
import { Attr, ErrorCode, MessageClass, Method, isComprehensionRequired, methodName } from '../stun/constants.js';
import { isKnownAttribute, isSendIndication } from '../stun/indication.js';
import { type StunMessage, countedAfter, decodeMessage, firstCounted } from '../stun/message.js';
import type { AllocationRecord } from '../store/types.js';
import type { Allocation } from './allocation/allocation.js';
import { Replication, type SyncResult } from './allocation/replication.js';
import { AllocationTable, type EngineListener } from './allocation/table.js';
import { TcpConnectionIds } from './allocation/tcp-connections.js';
import { WriteThrough } from './allocation/write-through.js';
import { type Authenticated, Authenticator } from './auth/authenticate.js';
import { BandwidthLimits, NO_BANDWIDTH_LIMITS } from './bandwidth.js';
import type { TurnContext } from './context.js';
import type { DropReason } from './counters.js';
import { TurnError } from './errors.js';
import { ALLOCATION_LIMIT_DEFAULTS } from './limits.js';
import { CapacityRefusals, allocate } from './methods/allocate.js';
import { binding } from './methods/binding.js';
import { channelBind } from './methods/channel-bind.js';
import { connect } from './methods/connect.js';
import { connectionBind } from './methods/connection-bind.js';
import { createPermission } from './methods/create-permission.js';
import { PeerData } from './methods/data.js';
import { refresh } from './methods/refresh.js';
import type { MethodRequest } from './methods/request.js';
import { ClientData } from './methods/send.js';
import type { EngineOptions } from './options.js';
import type { ClientPacketSink, ClientPath, EngineSnapshot, EngineStats } from './ports.js';
import { RelayAllocator } from './relay/relay-allocator.js';
import { Replies } from './reply.js';

/** A method's handler (methods/), given an authenticated request: undefined when it answered within the call (Allocate may). */
type MethodHandler = (ctx: TurnContext, r: MethodRequest) => Promise<void> | undefined;

/** The handler of each method after authentication (Binding has none: it needs no credentials); undefined: 400. */
function methodHandler(method: number): MethodHandler | undefined {
  switch (method) {
    case Method.Allocate:
      return allocate;
    case Method.Refresh:
      return refresh;
    case Method.CreatePermission:
      return createPermission;
    case Method.ChannelBind:
      return channelBind;
    case Method.Connect:
      return connect;
    case Method.ConnectionBind:
      return connectionBind;
    default:
      return undefined;
  }
}

/** Allocations a tick visits between two turns of the event loop. */
const TICK_SLICE = 1024;

/** Lets the packets queued meanwhile through (setImmediate: after pending I/O). */
function yieldToPackets(): Promise<void> {
  return new Promise((resolve) => setImmediate(resolve));
}

/** The comprehension-required attributes the server does not know (RFC 8489 §6.3.1), or undefined: no array for a request without any. */
function unknownComprehensionRequired(message: StunMessage): number[] | undefined {
  let unknown: number[] | undefined;
  // A walk over the message's attributes that count (no list of them: docs/scaling.md, part 1).
  const raw = message.raw;
  for (let pos = firstCounted(message); pos >= 0; pos = countedAfter(message, pos)) {
    const type = raw.readUInt16BE(pos);
    if (isComprehensionRequired(type) && !isKnownAttribute(type)) (unknown ??= []).push(type);
  }
  return unknown;
}

export class TurnEngine implements ClientPacketSink, EngineStats {
  private readonly table: AllocationTable;
  private readonly ctx: TurnContext;
  private readonly clientData: ClientData;
  private readonly replication: Replication;
  private readonly unsubscribe: (() => void) | undefined;
  private stopped = false;

  constructor(private readonly o: EngineOptions) {
    const clock = o.clock;
    const packetClock = clock.nowCoarse !== undefined ? () => clock.nowCoarse!() : () => clock.now();
    const drop = (reason: DropReason): void => {
      o.counters.drops[reason]++;
    };
    const replies = new Replies(o.counters, o.software);
    const bandwidth = new BandwidthLimits(o.bandwidth ?? NO_BANDWIDTH_LIMITS, o.store, o.nodeId, () => {
      o.counters.storeErrors++;
    });
    const table = new AllocationTable(bandwidth);
    this.table = table;
    const engine = this;
    this.ctx = {
      o,
      limits: { ...ALLOCATION_LIMIT_DEFAULTS, ...o.limits },
      table,
      replies,
      auth: new Authenticator(o, replies, drop),
      writer: new WriteThrough(o, table),
      // No TCP allocations in anycast relay mode: every node serves a relayed address there, while
      // a TCP relay's connections live on the one node that holds them (docs/architecture.md §4).
      relays: new RelayAllocator(o.relayMode === 'anycast' ? { ...o, tcpRelays: undefined } : o, (username) => table.userCount(username)),
      refusals: new CapacityRefusals(o, () => table.size),
      peerData: new PeerData(o.counters, packetClock, drop),
      tcpConnections: new TcpConnectionIds(),
      bandwidth,
      packetClock,
      get stopped() {
        return engine.stopped;
      },
      anycastRelay: o.relayMode === 'anycast',
      drop,
    };
    this.clientData = new ClientData(this.ctx);
    this.replication = new Replication(this.ctx);
    if (this.ctx.anycastRelay) this.unsubscribe = o.store.subscribe((event) => this.replication.onStoreEvent(event));
  }

  /** Live allocations on this node. */
  get allocations(): number {
    return this.table.size;
  }

  /** Why this node cannot take new allocations for want of its own resources (RelayAllocator.capacityProblem), or undefined. For /readyz; never per packet. */
  capacityProblem(): string | undefined {
    return this.ctx.relays.capacityProblem(this.ctx.anycastRelay);
  }

  addListener(path: ClientPath): EngineListener {
    return this.table.addListener(path);
  }

  /** Every live allocation (tests, shutdown). */
  allAllocations(): IterableIterator<Allocation> {
    return this.table.all();
  }

  /** Counts of allocations, permissions and channels (metrics). */
  snapshot(): EngineSnapshot {
    return this.table.snapshot();
  }

  // ---------------------------------------------------------------- client packets

  /**
   * Entry point for every packet a client sends. Never throws. `local` says the
   * cluster already looked for another owner: decide here, whatever the outcome.
   */
  handleClientPacket(listener: EngineListener, buf: Buffer, address: string, port: number, local = false): void {
    if (this.stopped) return;
    // Nothing can be answered or relayed to port 0 (every receive path lands here).
    if (port === 0) return this.ctx.drop('source_port_zero');
    // RFC 8656 §12.4 / RFC 8489 §6.2: the first two bits tell ChannelData (01) from STUN (00).
    const first = buf.length > 0 ? buf[0]! & 0xc0 : 0xff;
    if (first === 0x40) return this.clientData.onChannelData(listener, buf, address, port, local);
    if (first !== 0 || buf.length < 20) return this.ctx.drop('not_stun');
    if (isSendIndication(buf)) return this.clientData.onSendIndication(listener, buf, address, port, local);
    const receivedAt = performance.now();
    const decoded = decodeMessage(buf);
    if (!decoded.ok) return this.ctx.drop(decoded.reason === 'bad-fingerprint' ? 'bad_fingerprint' : 'malformed');
    const message = decoded.message;
    if (message.cls !== MessageClass.Request) return this.ctx.drop('unexpected_class');
    this.ctx.replies.received(message, receivedAt);
    // RFC 8489 §11: only Binding exists for RFC 3489 clients; anything else without the cookie is not ours.
    if (!message.hasMagicCookie && message.method !== Method.Binding) return this.ctx.drop('malformed');
    if (
      !local &&
      message.method !== Method.Binding &&
      message.method !== Method.Allocate &&
      // RFC 6062 §5.4: a ConnectionBind comes on a new connection, which never has an allocation.
      message.method !== Method.ConnectionBind &&
      this.o.foreign !== undefined &&
      listener.find(address, port) === undefined &&
      this.o.foreign.offer(listener, buf, address, port)
    ) {
      return;
    }
    this.handleRequest(listener, message, address, port, local);
  }

  /**
   * Authenticates (all but Binding), then hands the request to its method; a TurnError becomes
   * the error answer. Synchronous up to the method's handler: a 401, a Binding or a request
   * refused before its handler costs no async frame, and a handler's promise is waited for in a
   * small one (settle), where this function's own was several hundred bytes of garbage per request
   * (docs/scaling.md, part 1).
   */
  private handleRequest(listener: EngineListener, message: StunMessage, address: string, port: number, local: boolean): void {
    let auth: Authenticated | undefined;
    try {
      if (message.method !== Method.Binding) {
        auth = this.ctx.auth.authenticate(listener, message, address, port);
        if (!auth) return;
      }
      // RFC 8489 §6.3.1: unknown comprehension-required attributes get 420 listing them.
      const unknown = unknownComprehensionRequired(message);
      if (unknown !== undefined && message.hasMagicCookie) {
        // Only a Binding gets here unauthenticated: limited and without a reason phrase, as the other errors.
        if (!auth && this.ctx.auth.errorLimited(address)) return;
        const replies = this.ctx.replies;
        const w = replies.error(message, ErrorCode.UnknownAttribute, auth ? undefined : '');
        w.add(Attr.UnknownAttributes, encodeUnknownAttributes(unknown));
        replies.send(listener, message, w, auth?.key, address, port, methodName(message.method), ErrorCode.UnknownAttribute);
        return;
      }
      if (message.method === Method.Binding) return binding(this.ctx, listener, message, address, port);
      if (!auth) return;
      const handler = methodHandler(message.method);
      if (handler === undefined) throw new TurnError(ErrorCode.BadRequest, 'Unknown method');
      // A handler that answered within the call costs no async frame (an Allocate on the
      // memory store with a relay socket bound at once: docs/scaling.md, part 1); one that
      // throws is answered by the catch below.
      const r: MethodRequest = { listener, message, auth, address, port, local };
      const pending = handler(this.ctx, r);
      // Never rejects (its catch answers or logs): no .catch with its promise and closure per request.
      if (pending !== undefined) void this.settle(pending, r);
    } catch (err) {
      this.answerFailure(listener, message, auth, address, port, err);
    }
  }

  /** Waits for an authenticated request's handler; never rejects. */
  private async settle(pending: Promise<void>, r: MethodRequest): Promise<void> {
    try {
      await pending;
    } catch (err) {
      this.answerFailure(r.listener, r.message, r.auth, r.address, r.port, err);
    }
  }

  /** The error answer to a failed request: a TurnError's code, else 500 (and logged); a failure to send it is logged. */
  private answerFailure(listener: EngineListener, message: StunMessage, auth: Authenticated | undefined, address: string, port: number, err: unknown): void {
    const label = methodName(message.method);
    try {
      const code = err instanceof TurnError ? err.code : ErrorCode.ServerError;
      if (!(err instanceof TurnError)) this.o.logger.error({ err, client: `${address}:${port}`, method: label }, 'request failed');
      const replies = this.ctx.replies;
      const w = replies.error(message, code, err instanceof TurnError ? err.reason : undefined);
      replies.send(listener, message, w, auth?.key, address, port, label, code);
    } catch (failed) {
      this.o.logger.error({ err: failed, client: `${address}:${port}` }, 'request handler failed');
    }
  }

  // ---------------------------------------------------------------- state upkeep

  /** Marks every allocation for a write on the next tick: after the store comes back, it may have lost them. */
  resyncAll(): void {
    for (const allocation of this.table.all()) {
      allocation.dirty = true;
      allocation.throughOutage = true;
    }
  }

  /** Removes the allocations of a client transport that went away (a closed TCP/TLS connection). */
  async closeListener(listener: EngineListener, reason: string): Promise<void> {
    const all = [...listener.values()];
    listener.closed = true;
    this.table.listeners.delete(listener);
    await Promise.all(all.map((a) => this.ctx.writer.delete(listener, a, reason)));
  }

  /** Expires allocations, permissions, channels and reservations; retries store writes. Call about once a second. */
  async tick(): Promise<void> {
    const now = this.o.clock.now();
    const { writer } = this.ctx;
    const work: Promise<void>[] = [];
    // The walk visits every allocation once a tick: at 100,000 that is milliseconds of
    // work, which in one piece delayed every packet behind it (docs/scaling.md, "At
    // scale"). In slices, packets wait at most one slice. A Map iterated across the
    // yield sees what was added meanwhile and skips what was deleted.
    const walk = this.table.values();
    while (this.tickSlice(walk, now, work)) await yieldToPackets();
    this.ctx.relays.expire(now);
    // RFC 6062 §5.2, §5.3: peer data connections no ConnectionBind claimed within 30 s.
    for (let n = this.ctx.tcpConnections.expire(now); n > 0; n--) this.ctx.drop('tcp_bind_timeout');
    writer.offload.syncAllIfPolicyChanged(this.table.all(), now);
    // Not awaited: a slow store must not hold up expiry (turn/bandwidth.ts keeps one exchange in flight).
    void this.ctx.bandwidth.exchange(now);
    await Promise.all(work);
  }

  /**
   * Up to TICK_SLICE allocations of the tick's walk; false when the walk is done. A plain
   * function, not the loop inside tick(): an iteration that spans an await made an
   * iterator result per allocation, ~40 B of garbage per allocation per second.
   */
  private tickSlice(walk: IterableIterator<Allocation>, now: number, work: Promise<void>[]): boolean {
    const { writer } = this.ctx;
    for (let n = 0; n < TICK_SLICE; n++) {
      const next = walk.next();
      if (next.done === true) return false;
      const allocation = next.value;
      const listener = allocation.listener;
      if (listener === undefined) continue; // not held (the table sets it on every allocation it holds)
      if (allocation.expiresAtMs <= now)
        work.push(this.ctx.anycastRelay ? this.replication.expire(listener, allocation, now) : writer.delete(listener, allocation, 'expired'));
      else if (allocation.prune(now) || allocation.dirty) work.push(writer.persist(allocation));
    }
    return true;
  }

  // ---------------------------------------------------------------- anycast relay mode (allocation/replication.ts)

  /** Takes on an allocation another node made; true when it is (now) held here. */
  adopt(record: AllocationRecord, fresh = false): Promise<boolean> {
    return this.replication.adopt(record, fresh);
  }

  /** Takes on every allocation in the store (at start, and after a store outage); resolves how many were newly held. */
  async syncFromStore(): Promise<number> {
    return (await this.replication.syncFromStore()).adopted;
  }

  /** The same, saying how many records the store listed too (the start-up sync's log line and metrics). */
  syncFromStoreCounted(): Promise<SyncResult> {
    return this.replication.syncFromStore();
  }

  /** Deletes every allocation (graceful shutdown) and stops taking packets. */
  async stop(): Promise<void> {
    this.stopped = true;
    this.unsubscribe?.();
    const work: Promise<void>[] = [];
    // With a shared relay address the other nodes keep serving these: only our copies go.
    const writeStore = !this.ctx.anycastRelay;
    for (const listener of this.table.listeners) {
      for (const a of [...listener.values()]) work.push(this.ctx.writer.delete(listener, a, 'shutdown', writeStore));
    }
    this.ctx.relays.releaseAll();
    await Promise.all(work);
  }
}

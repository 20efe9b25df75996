// The in-process node of the heap bench (bench/allocation-heap.ts) and of its test
// (test/unit/bench/allocation-heap.test.ts): a TurnEngine configured as the scale
// benchmark's node (anycast relay mode, one user, relay sockets shared per relay address
// with the kernel's steering replaced by a no-op, a store that keeps nothing here, as Redis
// keeps the records in redis-server), and a driver that makes allocations through the real
// request path (401, then an authenticated Allocate with LIFETIME 3600 and a
// CreatePermission to one peer).

import { randomBytes } from 'node:crypto';

import { createLogger } from '../../src/ops/log.js';
import type { AllocationRecord, AllocationStore, CreateOutcome, MoveOutcome, NewAllocationRecord, ReservedPort, UpdateOutcome } from '../../src/store/types.js';
import { decodeErrorCode, encodeChannelNumber, encodeRequestedTransport, encodeUint32 } from '../../src/stun/attributes.js';
import { KernelOffload, type KernelEntries } from '../../src/dataplane/offload.js';
import { Attr, MessageClass, Method, TRANSPORT_UDP } from '../../src/stun/constants.js';
import { longTermKey } from '../../src/stun/integrity.js';
import { decodeMessage, getAttribute } from '../../src/stun/message.js';
import { MessageWriter } from '../../src/stun/writer.js';
import { UdpRelayFactory } from '../../src/transport/udp/relay.js';
import { SharedRelayFactory } from '../../src/transport/udp/shared-relay.js';
import { CredentialStore } from '../../src/turn/auth/credentials.js';
import { NonceIssuer } from '../../src/turn/auth/nonce.js';
import { ManualClock } from '../../src/turn/clock.js';
import { EngineCounters } from '../../src/turn/counters.js';
import { TurnEngine } from '../../src/turn/engine.js';
import { createPeerPolicy } from '../../src/turn/peer-policy.js';
import type { ClientPath, RelaySocketFactory } from '../../src/turn/ports.js';

const REALM = 'anyturn.bench';
const USER = 'bench';
const PASSWORD = 'bench-password';
const LISTENING = '198.18.10.1';
const LISTENING_PORT = 3478;
const PEER = '198.18.30.2';
const PEER_PORT = 40000;
const CHANNEL = 0x4000;
/** The relay addresses: loopback, where the shared sockets really bind (nothing is sent). */
const RELAY_IPS = ['127.0.0.1', '127.0.0.2', '127.0.0.3'];
const MIN_PORT = 10000;
const MAX_PORT = 65535;
/** As the scale benchmark's ramp: 5,000 client ports per client address (bench/allocations/scale-plan.ts). */
const PORTS_PER_ADDRESS = 5000;
/** Allocations in flight while ramping. */
const IN_FLIGHT = 64;

/** A store that answers like Redis and keeps nothing here (the records live in redis-server). */
export class RemoteLikeStore implements AllocationStore {
  readonly kind = 'bench';
  isAvailable(): boolean {
    return true;
  }
  async create(record: NewAllocationRecord): Promise<CreateOutcome> {
    return { ok: true, record: { ...record, version: 1 } };
  }
  async get(): Promise<AllocationRecord | undefined> {
    return undefined;
  }
  async update(record: AllocationRecord): Promise<UpdateOutcome> {
    return { ok: true, record: { ...record, version: record.version + 1 } };
  }
  async delete(): Promise<boolean> {
    return true;
  }
  async move(): Promise<MoveOutcome> {
    return { ok: false, reason: 'missing' };
  }
  async countUserAllocations(): Promise<number> {
    return 0;
  }
  async listAllocations(): Promise<AllocationRecord[]> {
    return [];
  }
  async reservePort(_token: string, _port: ReservedPort): Promise<boolean> {
    return true;
  }
  async takeReservation(): Promise<ReservedPort | undefined> {
    return undefined;
  }
  subscribe(): () => void {
    return () => undefined;
  }
  async close(): Promise<void> {}
}

/** The kernel's maps as KernelOffload sees them, keeping nothing here (their entries live in the kernel). */
class KernelKeepingNothing implements KernelEntries {
  private next = 0;
  install(): number {
    return this.next++;
  }
  update(): void {}
  remove(): void {}
  async retire(): Promise<undefined> {
    return undefined;
  }
  async flush(): Promise<void> {}
}

/** The listening socket as the engine sees it: hands each answer to the request waiting for it, keeps nothing. */
class AnswerPath implements ClientPath {
  readonly transport = 'udp';
  readonly localAddress = LISTENING;
  readonly localPort = LISTENING_PORT;
  readonly waiting = new Map<string, (answer: Buffer) => void>();

  sendMessage(message: Buffer): void {
    const id = message.subarray(8, 20).toString('hex');
    const resolve = this.waiting.get(id);
    this.waiting.delete(id);
    resolve?.(Buffer.from(message));
  }

  sendFramed(): void {}
}

export class Driver {
  private readonly key = longTermKey(USER, REALM, PASSWORD);
  private readonly nonces = new Map<string, string>();

  constructor(
    private readonly engine: TurnEngine,
    private readonly path: AnswerPath,
    private readonly listener: ReturnType<TurnEngine['addListener']>,
    /** Client ports per client address: the scale bench's 5,000, or 1 as most clients come (one allocation per address). */
    private readonly portsPerAddress = PORTS_PER_ADDRESS,
    /** A ChannelBind to the peer after the CreatePermission, as WebRTC clients do. */
    private readonly channels = false,
  ) {}

  private request(method: number, address: string, port: number, decorate: (w: MessageWriter) => void, nonce: string | undefined): Promise<Buffer> {
    const transactionId = randomBytes(12);
    const w = new MessageWriter(method, MessageClass.Request, transactionId);
    decorate(w);
    if (nonce !== undefined) {
      w.addText(Attr.Username, USER);
      w.addText(Attr.Realm, REALM);
      w.addText(Attr.Nonce, nonce);
      w.addIntegrity(this.key);
    }
    const answer = new Promise<Buffer>((resolve) => this.path.waiting.set(transactionId.toString('hex'), resolve));
    this.engine.handleClientPacket(this.listener, w.toBuffer(), address, port);
    return answer;
  }

  /** The client address's nonce: one 401 per address, as a client keeps its nonce for later requests. */
  private async nonceFor(address: string, port: number): Promise<string> {
    const known = this.nonces.get(address);
    if (known !== undefined) return known;
    const answer = decodeMessage(await this.request(Method.Allocate, address, port, allocateAttributes, undefined));
    const nonce = answer.ok ? getAttribute(answer.message, Attr.Nonce)?.toString('utf8') : undefined;
    if (nonce === undefined) throw new Error('no NONCE in the answer to an unauthenticated Allocate');
    this.nonces.set(address, nonce);
    return nonce;
  }

  /** Makes allocations first..first+count-1, IN_FLIGHT at a time. */
  async ramp(first: number, count: number): Promise<void> {
    let next = first;
    const worker = async (): Promise<void> => {
      while (next < first + count) await this.allocation(next++);
    };
    await Promise.all(Array.from({ length: Math.min(IN_FLIGHT, count) }, worker));
  }

  /** Allocate and CreatePermission for one client; throws unless both succeed. */
  async allocation(index: number): Promise<void> {
    const per = this.portsPerAddress;
    const address = `198.18.${12 + Math.floor(index / per / 250)}.${1 + (Math.floor(index / per) % 250)}`;
    const port = 10000 + (index % per);
    const nonce = await this.nonceFor(address, port);
    const allocated = decodeMessage(await this.request(Method.Allocate, address, port, allocateAttributes, nonce));
    if (!allocated.ok || allocated.message.cls !== MessageClass.SuccessResponse) throw new Error(`Allocate ${index} failed: ${describe(allocated)}`);
    const permitted = decodeMessage(await this.request(Method.CreatePermission, address, port, (w) => w.addXorAddress(Attr.XorPeerAddress, PEER, 0), nonce));
    if (!permitted.ok || permitted.message.cls !== MessageClass.SuccessResponse) throw new Error(`CreatePermission ${index} failed: ${describe(permitted)}`);
    if (!this.channels) return;
    const bound = decodeMessage(
      await this.request(
        Method.ChannelBind,
        address,
        port,
        (w) => {
          w.add(Attr.ChannelNumber, encodeChannelNumber(CHANNEL));
          w.addXorAddress(Attr.XorPeerAddress, PEER, PEER_PORT);
        },
        nonce,
      ),
    );
    if (!bound.ok || bound.message.cls !== MessageClass.SuccessResponse) throw new Error(`ChannelBind ${index} failed: ${describe(bound)}`);
  }
}

function describe(answer: ReturnType<typeof decodeMessage>): string {
  if (!answer.ok) return 'malformed answer';
  const error = decodeErrorCode(getAttribute(answer.message, Attr.ErrorCode) ?? Buffer.alloc(0));
  return error ? `${error.code} ${error.reason}` : `class ${answer.message.cls}`;
}

function allocateAttributes(w: MessageWriter): void {
  w.add(Attr.RequestedTransport, encodeRequestedTransport(TRANSPORT_UDP));
  w.add(Attr.Lifetime, encodeUint32(3600));
}

export interface HeapNode {
  readonly engine: TurnEngine;
  readonly clock: ManualClock;
  readonly driver: Driver;
  /** Stops the engine and closes the shared relay sockets. */
  close(): Promise<void>;
}

/**
 * The relay sockets: 'shared' (the scale bench's node), or one real socket per allocation
 * as a node without the kernel path has, bare UDP handles ('per-allocation') or dgram
 * sockets ('per-allocation-dgram'): src/transport/udp/relay.ts. A socket each needs a
 * descriptor each: keep --allocations under the open-file limit.
 */
export type HeapRelaySockets = 'shared' | 'per-allocation' | 'per-allocation-dgram';

async function relayFactory(kind: HeapRelaySockets, counters: EngineCounters): Promise<RelaySocketFactory & { close(): unknown }> {
  const onError = (err: Error): void => console.error(err);
  if (kind !== 'shared') return new UdpRelayFactory(onError, 0, kind === 'per-allocation');
  return SharedRelayFactory.open({
    addresses: RELAY_IPS,
    minPort: MIN_PORT,
    maxPort: MAX_PORT,
    steering: { shareSocket: async () => undefined, steer: async () => undefined, unsteer: () => undefined, steering: true },
    drops: counters.drops,
    onError,
  });
}

/** The engine and its driver; the relay sockets are bound on 127.0.0.1-3 (nothing is sent). */
export async function startHeapNode(
  options: { readonly portsPerAddress?: number; readonly channels?: boolean; readonly relaySockets?: HeapRelaySockets } = {},
): Promise<HeapNode> {
  const clock = new ManualClock(Date.now());
  const counters = new EngineCounters();
  const credentials = new CredentialStore({ realm: REALM, users: new Map([[USER, PASSWORD]]), authSecrets: [] });
  const relays = await relayFactory(options.relaySockets ?? 'shared', counters);
  const engine = new TurnEngine({
    nodeId: 'heap-bench',
    credentials,
    nonces: new NonceIssuer(randomBytes(32), 86_400_000, credentials.securityFeatures),
    peerPolicy: createPeerPolicy({
      allowLoopbackPeers: false,
      allowedPeerRanges: ['198.18.0.0/15'],
      deniedPeerRanges: [],
      serverAddresses: [LISTENING, ...RELAY_IPS],
      servicePorts: [LISTENING_PORT],
    }),
    store: new RemoteLikeStore(),
    relays,
    clock,
    logger: createLogger('silent'),
    counters,
    relayAddressIPv4: RELAY_IPS[0],
    relayPoolIPv4: RELAY_IPS.slice(1),
    minPort: MIN_PORT,
    maxPort: MAX_PORT,
    maxLifetimeSeconds: 3600,
    userQuota: 0,
    totalQuota: 0,
    software: '',
    relayMode: 'anycast',
    // With channels: the kernel path's bookkeeping in JavaScript (src/dataplane/offload.ts).
    ...(options.channels === true ? { offload: new KernelOffload(new KernelKeepingNothing(), counters, createLogger('silent')) } : {}),
  });
  const path = new AnswerPath();
  const driver = new Driver(engine, path, engine.addListener(path), options.portsPerAddress, options.channels === true);
  return {
    engine,
    clock,
    driver,
    close: async () => {
      await engine.stop();
      await relays.close();
    },
  };
}

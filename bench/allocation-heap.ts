// The V8 heap one live allocation costs, measured in one process (docs/scaling.md, "At
// scale"): a TurnEngine configured as the scale benchmark's node (anycast relay mode, one
// user, relay sockets shared per relay address, the kernel's steering replaced by a
// no-op), N allocations made through the real request path (401, then an authenticated
// Allocate with LIFETIME 3600 and a CreatePermission to one peer), then gc() and the heap
// against the empty engine's. The store keeps nothing per allocation, as Redis does for
// the node (its records live in redis-server): what is measured is the node's own state.
// Twice: right after the ramp (every allocation still keeps its Allocate response for
// retransmissions) and 41 s later, after a tick let those go.
//
//   node --expose-gc dist/bench/allocation-heap.js [--allocations 100000] [--snapshot]
//
// --snapshot writes heap snapshots of the empty engine and of each measurement to
// bench/results/ and prints what grew, per allocation, by kind of object
// (bench/allocation-heap/breakdown.ts). Snapshots of 100,000 allocations take a few GB of
// memory to read: --allocations 20000 gives the same per-allocation rows.

import { mkdirSync, readFileSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { randomBytes } from 'node:crypto';
import v8 from 'node:v8';

import { createLogger } from '../src/ops/log.js';
import type { AllocationRecord, AllocationStore, CreateOutcome, MoveOutcome, NewAllocationRecord, ReservedPort, UpdateOutcome } from '../src/store/types.js';
import { decodeErrorCode, encodeRequestedTransport, encodeUint32 } from '../src/stun/attributes.js';
import { Attr, MessageClass, Method, TRANSPORT_UDP } from '../src/stun/constants.js';
import { longTermKey } from '../src/stun/integrity.js';
import { decodeMessage, getAttribute } from '../src/stun/message.js';
import { MessageWriter } from '../src/stun/writer.js';
import { SharedRelayFactory } from '../src/transport/udp/shared-relay.js';
import { CredentialStore } from '../src/turn/auth/credentials.js';
import { NonceIssuer } from '../src/turn/auth/nonce.js';
import { ManualClock } from '../src/turn/clock.js';
import { EngineCounters } from '../src/turn/counters.js';
import { TurnEngine } from '../src/turn/engine.js';
import { createPeerPolicy } from '../src/turn/peer-policy.js';
import type { ClientPath } from '../src/turn/ports.js';
import { type HeapGroup, type HeapSnapshotJson, breakdown, formatBreakdown, summarize } from './allocation-heap/breakdown.js';
import { findRepoRoot, runMain } from './host.js';

const REALM = 'anyturn.bench';
const USER = 'bench';
const PASSWORD = 'bench-password';
const LISTENING = '198.18.10.1';
const LISTENING_PORT = 3478;
const PEER = '198.18.30.2';
/** The relay addresses: loopback, where the shared sockets really bind (nothing is sent). */
const RELAY_IPS = ['127.0.0.1', '127.0.0.2', '127.0.0.3'];
const MIN_PORT = 10000;
const MAX_PORT = 65535;
/** As the scale benchmark's ramp: 5,000 client ports per client address (bench/allocations/scale-plan.ts). */
const PORTS_PER_ADDRESS = 5000;
const IN_FLIGHT = 64;
const GC_ROUNDS = 4;

/** A store that answers like Redis and keeps nothing here (the records live in redis-server). */
class RemoteLikeStore implements AllocationStore {
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

interface Options {
  readonly allocations: number;
  readonly snapshot: boolean;
}

function parseOptions(argv: readonly string[]): Options {
  let allocations = 100_000;
  let snapshot = false;
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i];
    if (arg === '--snapshot') snapshot = true;
    else if (arg === '--allocations') {
      allocations = Number(argv[++i]);
      if (!Number.isInteger(allocations) || allocations < 1 || allocations > 150_000) {
        throw new Error(`--allocations must be an integer from 1 to 150000, not ${argv[i]}`);
      }
    } else throw new Error(`unknown argument ${arg}; usage: node --expose-gc dist/bench/allocation-heap.js [--allocations 100000] [--snapshot]`);
  }
  return { allocations, snapshot };
}

function collect(): void {
  const gc = (globalThis as { gc?: () => void }).gc;
  if (!gc) throw new Error('run with node --expose-gc');
  for (let i = 0; i < GC_ROUNDS; i++) gc();
}

interface Sample {
  readonly heapUsed: number;
  readonly external: number;
  readonly rss: number;
  readonly snapshot: Map<string, HeapGroup> | undefined;
}

function sample(o: Options, label: string): Sample {
  collect();
  // Read before the snapshot: reading one leaves garbage and grows the heap's spaces.
  const m = process.memoryUsage();
  const heapUsed = v8.getHeapStatistics().used_heap_size;
  let snapshot: Map<string, HeapGroup> | undefined;
  if (o.snapshot) {
    const dir = join(findRepoRoot(), 'bench', 'results');
    mkdirSync(dir, { recursive: true });
    const file = v8.writeHeapSnapshot(join(dir, `allocation-heap-${label}.heapsnapshot`));
    snapshot = summarize(JSON.parse(readFileSync(file, 'utf8')) as HeapSnapshotJson);
    rmSync(file);
    collect();
  }
  return { heapUsed, external: m.external, rss: m.rss, snapshot };
}

class Driver {
  private readonly key = longTermKey(USER, REALM, PASSWORD);
  private readonly nonces = new Map<string, string>();

  constructor(
    private readonly engine: TurnEngine,
    private readonly path: AnswerPath,
    private readonly listener: ReturnType<TurnEngine['addListener']>,
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

  /** Allocate and CreatePermission for one client; throws unless both succeed. */
  async allocation(index: number): Promise<void> {
    const address = `198.18.${12 + Math.floor(index / PORTS_PER_ADDRESS / 250)}.${1 + (Math.floor(index / PORTS_PER_ADDRESS) % 250)}`;
    const port = 10000 + (index % PORTS_PER_ADDRESS);
    const nonce = await this.nonceFor(address, port);
    const allocated = decodeMessage(await this.request(Method.Allocate, address, port, allocateAttributes, nonce));
    if (!allocated.ok || allocated.message.cls !== MessageClass.SuccessResponse) throw new Error(`Allocate ${index} failed: ${describe(allocated)}`);
    const permitted = decodeMessage(await this.request(Method.CreatePermission, address, port, (w) => w.addXorAddress(Attr.XorPeerAddress, PEER, 0), nonce));
    if (!permitted.ok || permitted.message.cls !== MessageClass.SuccessResponse) throw new Error(`CreatePermission ${index} failed: ${describe(permitted)}`);
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

function report(label: string, n: number, empty: Sample, at: Sample): void {
  const per = (a: number, b: number): string => ((a - b) / n).toFixed(0);
  console.log(
    `${label}: ${n} allocations: V8 heap ${per(at.heapUsed, empty.heapUsed)} B/alloc, external ${per(at.external, empty.external)} B/alloc, RSS ${per(at.rss, empty.rss)} B/alloc (RSS of one process after gc(): indicative)`,
  );
  if (empty.snapshot && at.snapshot) console.log(formatBreakdown(breakdown(empty.snapshot, at.snapshot, n, 1)));
}

async function main(): Promise<number> {
  const o = parseOptions(process.argv.slice(2));
  const clock = new ManualClock(Date.now());
  const counters = new EngineCounters();
  const credentials = new CredentialStore({ realm: REALM, users: new Map([[USER, PASSWORD]]), authSecrets: [] });
  const relays = await SharedRelayFactory.open({
    addresses: RELAY_IPS,
    minPort: MIN_PORT,
    maxPort: MAX_PORT,
    steering: { shareSocket: async () => undefined, steer: async () => undefined, unsteer: () => undefined, steering: true },
    drops: counters.drops,
    onError: (err) => console.error(err),
  });
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
  });
  const path = new AnswerPath();
  const driver = new Driver(engine, path, engine.addListener(path));
  // One allocation made and deleted first: code and one-off pools are in the empty figure.
  await driver.allocation(o.allocations);
  clock.advance(3_601_000);
  await engine.tick();
  clock.advance(1_000);
  const empty = sample(o, 'empty');
  let next = 0;
  const worker = async (): Promise<void> => {
    while (next < o.allocations) await driver.allocation(next++);
  };
  await Promise.all(Array.from({ length: IN_FLIGHT }, worker));
  if (engine.allocations !== o.allocations) throw new Error(`${engine.allocations} allocations live, not ${o.allocations}`);
  await engine.tick();
  report('after the ramp', o.allocations, empty, sample(o, 'ramp'));
  clock.advance(41_000);
  await engine.tick();
  report('41 s later (Allocate responses let go)', o.allocations, empty, sample(o, 'later'));
  await engine.stop();
  await relays.close();
  return 0;
}

runMain(main);

// A lean UDP TURN client for the allocation benchmark (npm run bench:allocations):
// one socket per allocation, one transaction in flight per socket, built on
// anyturn's own STUN codec. Every socket binds 127.0.0.1 and talks to 127.0.0.1, except
// in the scale part (bench/allocations/scale.ts), whose drivers bind addresses of its own
// client namespace and talk to the server in its server namespace (198.18.0.0/15).
//
// Each request is retransmitted (RTO 500 ms, doubling, as RFC 8489 §6.2.1 starts)
// and given up after RETRANSMIT_SCHEDULE_MS; retransmissions are counted so that a
// slow server shows up as such, not as a mysteriously high p99.
import dgram from 'node:dgram';
import { randomBytes } from 'node:crypto';
import { performance } from 'node:perf_hooks';

import { decodeAddress } from '../src/stun/address.js';
import { decodeErrorCode, encodeChannelNumber, encodeRequestedTransport } from '../src/stun/attributes.js';
import { Attr, MessageClass, Method, TRANSPORT_UDP } from '../src/stun/constants.js';
import { longTermKey } from '../src/stun/integrity.js';
import { decodeMessage, getAttribute, type StunMessage } from '../src/stun/message.js';
import { MessageWriter } from '../src/stun/writer.js';

export const LOOPBACK = '127.0.0.1';

/** Send times of one request, from its first transmission; the last entry is the give-up time. */
const RETRANSMIT_SCHEDULE_MS = [0, 500, 1500, 3500];
const GIVE_UP_MS = 7500;

export interface Endpoint {
  readonly address: string;
  readonly port: number;
}

export interface Credentials {
  readonly username: string;
  readonly password: string;
}

/** Counters shared by every client of one run. */
export class DriverStats {
  requests = 0;
  retransmits = 0;
  /** 401 answers to the first, unauthenticated Allocate (the expected challenge). */
  challenges = 0;
  /** 401/438 answers to authenticated requests (re-challenges: stale nonce and the like). */
  rechallenges = 0;
}

const keys = new Map<string, Buffer>();
function keyFor(c: Credentials, realm: string): Buffer {
  const id = `${c.username}\0${realm}\0${c.password}`;
  let k = keys.get(id);
  if (k === undefined) keys.set(id, (k = longTermKey(c.username, realm, c.password)));
  return k;
}

function codeOf(m: StunMessage): number {
  if (m.cls === MessageClass.SuccessResponse) return 200;
  return decodeErrorCode(getAttribute(m, Attr.ErrorCode) ?? Buffer.alloc(0))?.code ?? 0;
}

export class TurnRequestError extends Error {
  constructor(
    message: string,
    readonly code: number | undefined,
  ) {
    super(message);
  }
}

type Decorate = (w: MessageWriter) => void;

function uint32(n: number): Buffer {
  const v = Buffer.alloc(4);
  v.writeUInt32BE(n, 0);
  return v;
}

export class AllocationClient {
  private pending: { readonly id: string; readonly resolve: (m: StunMessage) => void } | undefined;
  private nonce: string | undefined;
  private realm: string | undefined;
  relayed: Endpoint | undefined;
  /** Data indications received (for the relay probe after a node restart). */
  dataIndications = 0;
  /** Called with every Data indication (bench/allocations/scale-probe.ts times its round trips). */
  onDataIndication: ((m: StunMessage) => void) | undefined;

  private constructor(
    readonly socket: dgram.Socket,
    private readonly server: Endpoint,
    private readonly credentials: Credentials,
    private readonly stats: DriverStats,
  ) {
    socket.on('message', (buf) => this.onMessage(buf));
    socket.on('error', () => undefined);
  }

  /**
   * A client socket bound to `bind` (default: an ephemeral port on 127.0.0.1). The scale
   * benchmark binds explicit (address, port) pairs in its client namespace, so that a pair it
   * closed is never handed out again while that pair's allocation lives.
   */
  static open(server: Endpoint, credentials: Credentials, stats: DriverStats, bind: Endpoint = { address: LOOPBACK, port: 0 }): Promise<AllocationClient> {
    return new Promise((resolve, reject) => {
      const socket = dgram.createSocket('udp4');
      socket.once('error', reject);
      socket.bind(bind.port, bind.address, () => {
        socket.off('error', reject);
        resolve(new AllocationClient(socket, server, credentials, stats));
      });
    });
  }

  get localPort(): number {
    return this.socket.address().port;
  }

  private onMessage(buf: Buffer): void {
    const decoded = decodeMessage(buf);
    if (!decoded.ok) return;
    const m = decoded.message;
    if (m.cls === MessageClass.Indication) {
      if (m.method === Method.Data) {
        this.dataIndications++;
        this.onDataIndication?.(m);
      }
      return;
    }
    const p = this.pending;
    if (p !== undefined && m.transactionId.toString('hex') === p.id) {
      this.pending = undefined;
      p.resolve(m);
    }
  }

  private transact(buf: Buffer, transactionId: Buffer): Promise<StunMessage> {
    return new Promise((resolve, reject) => {
      const timers: NodeJS.Timeout[] = [];
      const finish = (m: StunMessage | undefined): void => {
        for (const t of timers) clearTimeout(t);
        if (m === undefined) {
          this.pending = undefined;
          reject(new TurnRequestError(`no answer within ${GIVE_UP_MS} ms`, undefined));
        } else resolve(m);
      };
      this.pending = { id: transactionId.toString('hex'), resolve: finish };
      this.stats.requests++;
      for (const at of RETRANSMIT_SCHEDULE_MS) {
        if (at === 0) continue;
        timers.push(
          setTimeout(() => {
            this.stats.retransmits++;
            this.socket.send(buf, this.server.port, this.server.address);
          }, at),
        );
      }
      timers.push(setTimeout(() => finish(undefined), GIVE_UP_MS));
      this.socket.send(buf, this.server.port, this.server.address);
    });
  }

  private build(method: number, decorate: Decorate): { buf: Buffer; transactionId: Buffer } {
    const transactionId = randomBytes(12);
    const w = new MessageWriter(method, MessageClass.Request, transactionId);
    decorate(w);
    if (this.nonce !== undefined && this.realm !== undefined) {
      w.addText(Attr.Username, this.credentials.username);
      w.addText(Attr.Realm, this.realm);
      w.addText(Attr.Nonce, this.nonce);
      w.addIntegrity(keyFor(this.credentials, this.realm));
    }
    return { buf: w.toBuffer(), transactionId };
  }

  /**
   * A request with long-term credentials, as a real client does it: without a
   * nonce the first attempt goes unauthenticated and the 401 brings REALM and NONCE.
   */
  private async request(method: number, decorate: Decorate, what: string): Promise<StunMessage> {
    for (let attempt = 0; attempt < 3; attempt++) {
      const hadNonce = this.nonce !== undefined;
      const { buf, transactionId } = this.build(method, decorate);
      const m = await this.transact(buf, transactionId);
      const code = codeOf(m);
      if (code === 200) return m;
      if (code === 401 || code === 438) {
        const nonce = getAttribute(m, Attr.Nonce);
        const realm = getAttribute(m, Attr.Realm);
        if (nonce !== undefined) this.nonce = nonce.toString('utf8');
        if (realm !== undefined) this.realm = realm.toString('utf8');
        if (hadNonce) this.stats.rechallenges++;
        else this.stats.challenges++;
        if (nonce !== undefined && (code === 438 || !hadNonce)) continue;
      }
      throw new TurnRequestError(`${what}: error ${code}`, code);
    }
    throw new TurnRequestError(`${what}: authentication did not converge`, undefined);
  }

  /** `lifetimeSeconds`: a LIFETIME attribute (RFC 8656 §7.1); without it the server's default (600 s). */
  async allocate(lifetimeSeconds?: number): Promise<Endpoint> {
    const m = await this.request(
      Method.Allocate,
      (w) => {
        w.add(Attr.RequestedTransport, encodeRequestedTransport(TRANSPORT_UDP));
        if (lifetimeSeconds !== undefined) w.add(Attr.Lifetime, uint32(lifetimeSeconds));
      },
      'Allocate',
    );
    const value = getAttribute(m, Attr.XorRelayedAddress);
    const relayed = value === undefined ? undefined : decodeAddress(value, m.transactionId);
    if (relayed === undefined) throw new TurnRequestError('Allocate: no XOR-RELAYED-ADDRESS', 200);
    this.relayed = { address: relayed.address, port: relayed.port };
    return this.relayed;
  }

  async createPermission(peer: Endpoint): Promise<void> {
    await this.request(Method.CreatePermission, (w) => w.addXorAddress(Attr.XorPeerAddress, peer.address, peer.port), 'CreatePermission');
  }

  async channelBind(channel: number, peer: Endpoint): Promise<void> {
    await this.request(
      Method.ChannelBind,
      (w) => {
        w.add(Attr.ChannelNumber, encodeChannelNumber(channel));
        w.addXorAddress(Attr.XorPeerAddress, peer.address, peer.port);
      },
      'ChannelBind',
    );
  }

  async refresh(lifetimeSeconds: number): Promise<void> {
    const v = Buffer.alloc(4);
    v.writeUInt32BE(lifetimeSeconds, 0);
    await this.request(Method.Refresh, (w) => w.add(Attr.Lifetime, v), `Refresh ${lifetimeSeconds}`);
  }

  sendIndication(peer: Endpoint, data: Buffer): void {
    const w = new MessageWriter(Method.Send, MessageClass.Indication, randomBytes(12));
    w.addXorAddress(Attr.XorPeerAddress, peer.address, peer.port);
    w.add(Attr.Data, data);
    this.socket.send(w.toBuffer(), this.server.port, this.server.address);
  }

  close(): Promise<void> {
    return new Promise((resolve) => {
      try {
        this.socket.close(() => resolve());
      } catch {
        resolve();
      }
    });
  }
}

/** A UDP peer on 127.0.0.1 that counts datagrams by source port. */
export class CountingPeer {
  readonly bySourcePort = new Map<number, number>();
  total = 0;
  private constructor(readonly socket: dgram.Socket) {
    socket.on('message', (_msg, rinfo) => {
      this.total++;
      this.bySourcePort.set(rinfo.port, (this.bySourcePort.get(rinfo.port) ?? 0) + 1);
    });
  }

  static open(): Promise<CountingPeer> {
    return new Promise((resolve) => {
      const socket = dgram.createSocket('udp4');
      socket.bind(0, LOOPBACK, () => resolve(new CountingPeer(socket)));
    });
  }

  get endpoint(): Endpoint {
    return { address: LOOPBACK, port: this.socket.address().port };
  }

  close(): void {
    try {
      this.socket.close();
    } catch {
      // closed already
    }
  }
}

export interface PoolResult<T> {
  readonly results: T[];
  readonly errors: string[];
  readonly wallMs: number;
}

/**
 * Runs job(0..total-1) on `concurrency` workers, each taking the next index when
 * its last job is done. Stops handing out jobs once `stop()` says so.
 */
export async function runPool<T>(
  total: number,
  concurrency: number,
  job: (i: number) => Promise<T>,
  stop: () => boolean = () => false,
): Promise<PoolResult<T>> {
  const results: T[] = [];
  const errors: string[] = [];
  let next = 0;
  const t0 = performance.now();
  const worker = async (): Promise<void> => {
    while (next < total && !stop()) {
      const i = next++;
      try {
        results.push(await job(i));
      } catch (err) {
        errors.push(err instanceof Error ? err.message : String(err));
      }
    }
  };
  await Promise.all(Array.from({ length: Math.max(1, concurrency) }, () => worker()));
  return { results, errors, wallMs: performance.now() - t0 };
}

export interface LatencySummary {
  readonly count: number;
  readonly p50: number | undefined;
  readonly p99: number | undefined;
  readonly max: number | undefined;
  readonly mean: number | undefined;
}

export function summarize(samples: readonly number[]): LatencySummary {
  if (samples.length === 0) return { count: 0, p50: undefined, p99: undefined, max: undefined, mean: undefined };
  const s = [...samples].sort((a, b) => a - b);
  const at = (q: number): number => s[Math.min(s.length - 1, Math.max(0, Math.ceil(q * s.length) - 1))]!;
  return { count: s.length, p50: at(0.5), p99: at(0.99), max: s[s.length - 1], mean: s.reduce((a, b) => a + b, 0) / s.length };
}

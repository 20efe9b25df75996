// The load generator of the soak and of the Redis failover run (docs/reliability.md),
// a program of its own so its sockets, timers and garbage stay out of the servers'
// figures and it can be spread over several processes:
//   node load-client.js --servers 198.18.100.1:3478 --bind 198.18.10.2 --peer 198.18.20.2:40000
//     --user alice:secret --realm anycast.test --mode churn --concurrent 10 --lifetime-ms 20000
//     --pps 100 --duration-ms 60000
//
// Every allocation has its own client socket (its own 5-tuple) and lives through
// Allocate, CreatePermission and ChannelBind to the peer, then a warm-up (uncounted
// probes until one comes back: in anycast relay mode the peer's answer may reach a
// node that learns of the permission from the store's events, docs/architecture.md §4),
// then counted probes, alternately ChannelData and Send indications, each echoed by
// the peer (./echo.ts) and matched by sequence number.
//
// --mode churn: --concurrent allocations at a time, each living --lifetime-ms with a
//   Refresh at a third of it and a CreatePermission + ChannelBind (refreshes, RFC 8656
//   §9, §12) at two thirds; then no more probes, the echoes in flight are awaited
//   (DRAIN_MS at most) and a Refresh with LIFETIME 0 deletes it; a new one takes its
//   place. New ones stop after --duration-ms; the summary follows the last deletion.
// --mode hold: --allocations set up (SETUP_PARALLEL at a time), {"event":"ready"}, then
//   each refreshes (Refresh, then CreatePermission) every --refresh-ms, staggered,
//   for --duration-ms; then the same drain and deletion.
// --servers lists one or more ip:port: allocation i goes to server i mod n.
// Probes go at --pps in total, spread over the ready allocations.
//
// SIGUSR2 ends either mode early, as --duration-ms would.
// Stdout, one JSON object a line: {"event":"stats",...} every --stats-ms (default
// 1000), {"event":"ready",...} (hold), and {"event":"summary",...} at the end, then
// it exits. Run without flags (as node --test may), it does nothing.

import { type Endpoint, TestTurnClient, parseIncoming } from '../helpers/turn-client.js';
import { nowMs, parseEndpoint, parseFlags, requireFlags } from '../anycast/wire.js';

const CHANNEL = 0x4000;
const PROBE_LENGTH = 16;
const MAGIC = 0x534f414b; // "SOAK"
const KIND_WARM = 0;
const KIND_COUNTED = 1;
const WARM_EVERY_MS = 100;
/** A path that never carried a warm-up probe back in this long is a failed allocation. */
const WARM_DEADLINE_MS = 15_000;
/** Echoes awaited before a deletion; one veth or loopback hop each way takes far less. */
const DRAIN_MS = 2_000;
const SETUP_PARALLEL = 25;
const TICK_MS = 10;
const REFRESH_LIFETIME_S = 600;

export interface LoadStats {
  readonly event: 'stats' | 'summary';
  readonly atMs: number;
  /** Allocations set up and not yet deleted. */
  readonly live: number;
  readonly ready: number;
  readonly allocated: number;
  readonly deleted: number;
  /** Counted probes sent, and of those echoed back. */
  readonly sent: number;
  readonly echoed: number;
  /** Probes of deleted allocations never echoed (in-flight ones of live allocations are not loss yet). */
  readonly lost: number;
  /** Requests answered other than 200 or not at all, "method code" -> count. */
  readonly failures: Record<string, number>;
  /** Allocations that failed at setup, warm-up, a refresh or the deletion. */
  readonly failedAllocations: number;
  readonly requests: number;
  readonly errors: string[];
}

interface Options {
  readonly servers: Endpoint[];
  readonly bind: string;
  readonly peer: Endpoint;
  readonly credentials: { username: string; password: string; realm: string };
  readonly mode: 'churn' | 'hold';
  readonly concurrent: number;
  readonly lifetimeMs: number;
  readonly allocations: number;
  readonly refreshMs: number;
  readonly pps: number;
  readonly durationMs: number;
  readonly statsMs: number;
}

function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

// SIGUSR2: end early (no new allocation, refreshes stop; the drain and deletions follow).
let stopRequested = false;
const stopped = new Promise<void>((resolve) =>
  process.on('SIGUSR2', () => {
    stopRequested = true;
    resolve();
  }),
);

function emit(record: object): void {
  process.stdout.write(`${JSON.stringify(record)}\n`);
}

class Flow {
  client!: TestTurnClient;
  ready = false;
  closing = false;
  private seq = 0;
  private useChannel = true;
  private readonly outstanding = new Set<number>();
  private warmed: (() => void) | undefined;
  private relayed: Endpoint | undefined;

  constructor(
    readonly id: number,
    private readonly load: Load,
    readonly server: Endpoint,
  ) {}

  /** Allocate, CreatePermission, ChannelBind, warm-up; false (counted) on any failure. */
  async setUp(): Promise<boolean> {
    const o = this.load.o;
    this.client = await TestTurnClient.open(this.server, o.credentials, { address: o.bind });
    this.client.socket.on('message', (buf) => this.onMessage(buf));
    const a = await this.load.request('Allocate', () => this.client.allocate());
    if (a === undefined) return false;
    this.relayed = a.relayed;
    this.load.allocated++;
    if ((await this.load.request('CreatePermission', () => this.client.createPermission(o.peer))) === undefined) return false;
    if ((await this.load.request('ChannelBind', () => this.client.channelBind(CHANNEL, o.peer))) === undefined) return false;
    return this.warmUp();
  }

  private async warmUp(): Promise<boolean> {
    const came = new Promise<void>((r) => (this.warmed = r));
    let done = false;
    void came.then(() => (done = true));
    const end = Date.now() + WARM_DEADLINE_MS;
    while (!done && Date.now() < end) {
      this.client.sendChannelData(CHANNEL, this.probe(KIND_WARM, 0));
      await Promise.race([came, sleep(WARM_EVERY_MS)]);
    }
    if (!done) {
      const relayed = this.relayed ? `${this.relayed.address}:${this.relayed.port}` : '?';
      this.load.error(`allocation ${this.id} (client port ${this.client.localPort}, relayed ${relayed}): no warm-up probe came back in ${WARM_DEADLINE_MS} ms`);
    }
    this.ready = done;
    return done;
  }

  private probe(kind: number, seq: number): Buffer {
    const b = Buffer.alloc(PROBE_LENGTH);
    b.writeUInt32BE(MAGIC, 0);
    b.writeUInt32BE(this.id, 4);
    b.writeUInt32BE(seq, 8);
    b.writeUInt8(kind, 12);
    return b;
  }

  sendProbe(): void {
    const seq = ++this.seq;
    this.outstanding.add(seq);
    this.load.sent++;
    const data = this.probe(KIND_COUNTED, seq);
    if (this.useChannel) this.client.sendChannelData(CHANNEL, data);
    else this.client.sendIndication(this.load.o.peer, data);
    this.useChannel = !this.useChannel;
  }

  private onMessage(buf: Buffer): void {
    const incoming = parseIncoming(buf);
    // The client keeps what it receives for tests that read it; this one never does.
    this.client.received.length = 0;
    if (!incoming || incoming.kind === 'message') return;
    const d = incoming.data;
    if (d.length !== PROBE_LENGTH || d.readUInt32BE(0) !== MAGIC || d.readUInt32BE(4) !== this.id) return;
    if (d.readUInt8(12) === KIND_WARM) {
      this.warmed?.();
      return;
    }
    if (this.outstanding.delete(d.readUInt32BE(8))) this.load.echoed++;
  }

  /** Refresh (and, with `channel`, ChannelBind) besides CreatePermission: the refreshes of a live allocation. */
  async refresh(withChannel: boolean): Promise<boolean> {
    const o = this.load.o;
    if ((await this.load.request('Refresh', () => this.client.refresh(REFRESH_LIFETIME_S))) === undefined) return false;
    if ((await this.load.request('CreatePermission', () => this.client.createPermission(o.peer))) === undefined) return false;
    if (withChannel && (await this.load.request('ChannelBind', () => this.client.channelBind(CHANNEL, o.peer))) === undefined) return false;
    return true;
  }

  /** No more probes; the echoes in flight are awaited, then Refresh 0. */
  async close(): Promise<boolean> {
    this.closing = true;
    this.ready = false;
    const end = Date.now() + DRAIN_MS;
    while (this.outstanding.size > 0 && Date.now() < end) await sleep(20);
    this.load.lost += this.outstanding.size;
    this.outstanding.clear();
    const ok = (await this.load.request('Refresh0', () => this.client.refresh(0))) !== undefined;
    if (ok) this.load.deleted++;
    return ok;
  }

  dispose(): void {
    this.client?.close();
  }
}

class Load {
  allocated = 0;
  deleted = 0;
  sent = 0;
  echoed = 0;
  lost = 0;
  requests = 0;
  failedAllocations = 0;
  readonly failures: Record<string, number> = {};
  readonly errors: string[] = [];
  readonly flows = new Set<Flow>();
  private nextId = 1;
  private credit = 0;
  private cursor: Flow[] = [];

  constructor(readonly o: Options) {}

  error(text: string): void {
    if (this.errors.length < 20) this.errors.push(text);
  }

  /** One request; its answer's code unless 200 (or the exception) counted in failures; undefined unless 200. */
  async request<T extends { code?: number; response?: { code: number } }>(method: string, run: () => Promise<T>): Promise<T | undefined> {
    this.requests++;
    try {
      const r = await run();
      const code = r.code ?? r.response?.code ?? 0;
      if (code === 200) return r;
      this.failures[`${method} ${code}`] = (this.failures[`${method} ${code}`] ?? 0) + 1;
      this.error(`${method}: ${code}`);
    } catch (err) {
      this.failures[`${method} none`] = (this.failures[`${method} none`] ?? 0) + 1;
      this.error(`${method}: ${(err as Error).message}`);
    }
    return undefined;
  }

  newFlow(): Flow {
    const id = this.nextId++;
    const f = new Flow(id, this, this.o.servers[(id - 1) % this.o.servers.length]!);
    this.flows.add(f);
    return f;
  }

  endFlow(f: Flow, ok: boolean): void {
    if (!ok) this.failedAllocations++;
    f.dispose();
    this.flows.delete(f);
  }

  /** Spreads --pps over the ready allocations, TICK_MS at a time. */
  tick(): void {
    this.credit += (this.o.pps * TICK_MS) / 1000;
    while (this.credit >= 1) {
      if (this.cursor.length === 0) this.cursor = [...this.flows].filter((f) => f.ready);
      const f = this.cursor.pop();
      if (f === undefined) {
        this.credit = 0;
        return;
      }
      this.credit--;
      if (f.ready) f.sendProbe();
    }
  }

  stats(event: 'stats' | 'summary'): LoadStats {
    let ready = 0;
    for (const f of this.flows) if (f.ready) ready++;
    return {
      event,
      atMs: Math.round(nowMs()),
      live: this.allocated - this.deleted - this.failedAllocations,
      ready,
      allocated: this.allocated,
      deleted: this.deleted,
      sent: this.sent,
      echoed: this.echoed,
      lost: this.lost,
      failures: this.failures,
      failedAllocations: this.failedAllocations,
      requests: this.requests,
      errors: this.errors,
    };
  }
}

/** One churned allocation: set up, live, refreshed twice, deleted. */
async function churnOne(load: Load): Promise<void> {
  const f = load.newFlow();
  const life = load.o.lifetimeMs;
  try {
    if (!(await f.setUp())) return load.endFlow(f, false);
    await sleep(life / 3);
    if (!(await f.refresh(false))) return load.endFlow(f, false);
    await sleep(life / 3);
    if (!(await f.refresh(true))) return load.endFlow(f, false);
    await sleep(life / 3);
    load.endFlow(f, await f.close());
  } catch (err) {
    load.error(`allocation ${f.id}: ${(err as Error).message}`);
    load.endFlow(f, false);
  }
}

async function runChurn(load: Load, until: number): Promise<void> {
  const o = load.o;
  const lanes: Promise<void>[] = [];
  for (let i = 0; i < o.concurrent; i++) {
    // Staggered starts: one new allocation every lifetime/concurrent, a steady rate.
    lanes.push(
      (async () => {
        await sleep((o.lifetimeMs / o.concurrent) * i);
        while (Date.now() < until && !stopRequested) await churnOne(load);
      })(),
    );
  }
  await Promise.all(lanes);
}

async function runHold(load: Load, durationMs: number): Promise<void> {
  const o = load.o;
  const flows: Flow[] = [];
  const pending = Array.from({ length: o.allocations }, () => load.newFlow());
  const setUp = async (): Promise<void> => {
    for (let f = pending.shift(); f !== undefined; f = pending.shift()) {
      const ok = await f.setUp().catch((err: Error) => {
        load.error(err.message);
        return false;
      });
      if (ok) flows.push(f);
      else load.endFlow(f, false);
    }
  };
  await Promise.all(Array.from({ length: SETUP_PARALLEL }, setUp));
  emit({ event: 'ready', atMs: Math.round(nowMs()), allocations: flows.length, relayed: flows.length });
  const until = Date.now() + durationMs;
  const step = o.refreshMs / Math.max(flows.length, 1);
  await Promise.all(
    flows.map(async (f, i) => {
      await Promise.race([sleep(step * i), stopped]);
      while (!stopRequested && Date.now() + o.refreshMs <= until) {
        if (!(await f.refresh(false))) {
          f.ready = false;
          load.error(`allocation ${f.id}: a refresh failed`);
          break;
        }
        await Promise.race([sleep(o.refreshMs), stopped]);
      }
    }),
  );
  const remaining = until - Date.now();
  if (remaining > 0) await Promise.race([sleep(remaining), stopped]);
  await Promise.all(flows.map(async (f) => (load.flows.has(f) ? load.endFlow(f, await f.close()) : undefined)));
}

function parseOptions(flags: Map<string, string>): Options {
  const [username, password] = flags.get('user')!.split(':') as [string, string];
  const num = (name: string, fallback: number): number => {
    const v = Number(flags.get(name) ?? fallback);
    if (!Number.isFinite(v) || v < 0) throw new Error(`--${name}: not a number: ${flags.get(name)}`);
    return v;
  };
  const mode = flags.get('mode') ?? 'churn';
  if (mode !== 'churn' && mode !== 'hold') throw new Error(`--mode: churn or hold, not ${mode}`);
  return {
    servers: flags.get('servers')!.split(',').map(parseEndpoint),
    bind: flags.get('bind')!,
    peer: parseEndpoint(flags.get('peer')!),
    credentials: { username, password, realm: flags.get('realm')! },
    mode,
    concurrent: num('concurrent', 10),
    lifetimeMs: num('lifetime-ms', 20_000),
    allocations: num('allocations', 100),
    refreshMs: num('refresh-ms', 5_000),
    pps: num('pps', 100),
    durationMs: num('duration-ms', 60_000),
    statsMs: num('stats-ms', 1_000),
  };
}

async function main(): Promise<void> {
  const flags = parseFlags(process.argv.slice(2));
  const needed = ['servers', 'bind', 'peer', 'user', 'realm'];
  if (!requireFlags(flags, needed, `usage: load-client ${needed.map((n) => `--${n} X`).join(' ')} [--mode churn|hold] ...`)) return;
  const load = new Load(parseOptions(flags));
  const ticker = setInterval(() => load.tick(), TICK_MS);
  const stats = setInterval(() => emit(load.stats('stats')), load.o.statsMs);
  if (load.o.mode === 'churn') await runChurn(load, Date.now() + load.o.durationMs);
  else await runHold(load, load.o.durationMs);
  clearInterval(ticker);
  clearInterval(stats);
  emit(load.stats('summary'));
  process.exit(0);
}

await main();

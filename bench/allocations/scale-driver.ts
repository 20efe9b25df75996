// The scale part's TURN drivers, run as their own processes in the client namespace
// (bench/allocations/scale.ts starts them): node scale-driver.js <mode> '<json config>'.
//
//   create     Allocate (401, then authenticated) + CreatePermission (+ ChannelBind, as a
//              WebRTC client does, unless `channel` is false) for ramp allocations
//              [from, to), each from its own (address, port) pair (scale-plan.ts), closing
//              the socket once both succeeded: the allocation lives on at the server until
//              its lifetime ends, and the driver holds only `concurrency` sockets at a time.
//   churn      keeps a ring of allocations and, once it is full ("ready"), deletes the oldest
//              (Refresh 0) and creates a new one `rate` times a second, until "stop" on stdin;
//              then deletes its ring.
//   lifecycle  `count` lifecycles: Allocate, CreatePermission, ChannelBind, Refresh 600,
//              Refresh 0 (part 4's sequence, for the Redis commands per lifecycle).
//
// Each prints one JSON line {"type":"done",...} when it is over (churn also {"type":"ready"}).
import { performance } from 'node:perf_hooks';
import { createInterface } from 'node:readline';

import { AllocationClient, DriverStats, runPool, summarize, type Endpoint } from '../turn-driver.js';
import { PASSWORD, USER } from '../servers.js';
import { sleep } from '../host.js';
import { CHANNEL, distinct } from './context.js';
import { rampPair } from './scale-plan.js';

export interface DriverBase {
  readonly server: Endpoint;
  readonly peer: Endpoint;
  /** LIFETIME asked for each allocation (s); undefined: the server's default. */
  readonly lifetime?: number;
  /** A ChannelBind to the peer after the CreatePermission (ramp and churn allocations). */
  readonly channel?: boolean;
}

export interface CreateConfig extends DriverBase {
  readonly from: number;
  readonly to: number;
  readonly portsPerAddress: number;
  readonly concurrency: number;
}

export interface ChurnConfig extends DriverBase {
  readonly address: string;
  readonly firstPort: number;
  readonly ports: number;
  readonly rate: number;
  readonly ring: number;
}

export interface LifecycleConfig extends DriverBase {
  readonly address: string;
  readonly firstPort: number;
  readonly count: number;
  readonly concurrency: number;
}

const CREDENTIALS = { username: USER, password: PASSWORD };
/** Requests in flight above which the churn skips a tick (and counts it) instead of piling up. */
const CHURN_MAX_IN_FLIGHT = 64;

function out(record: Record<string, unknown>): void {
  process.stdout.write(`${JSON.stringify(record)}\n`);
}

function message(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}

async function create(c: CreateConfig): Promise<void> {
  const stats = new DriverStats();
  const pool = await runPool(c.to - c.from, c.concurrency, async (i) => {
    const client = await AllocationClient.open(c.server, CREDENTIALS, stats, rampPair(c.from + i, c.portsPerAddress));
    try {
      await client.allocate(c.lifetime);
      await client.createPermission(c.peer);
      if (c.channel === true) await client.channelBind(CHANNEL, c.peer);
      return 1;
    } finally {
      await client.close();
    }
  });
  out({ type: 'done', ok: pool.results.length, errors: distinct(pool.errors), retransmits: stats.retransmits, ms: pool.wallMs });
}

/** The churn's state: a ring of live allocations, oldest first, and the ports it may not reuse yet. */
class Churn {
  readonly ring: AllocationClient[] = [];
  readonly inUse = new Set<number>();
  readonly stats = new DriverStats();
  readonly errors: string[] = [];
  readonly createMs: number[] = [];
  created = 0;
  deleted = 0;
  skipped = 0;
  inFlight = 0;
  private next = 0;

  constructor(private readonly c: ChurnConfig) {}

  /** The next port whose allocation (if it had one) is known to be gone. */
  private port(): number | undefined {
    for (let k = 0; k < this.c.ports; k++) {
      const p = this.c.firstPort + (this.next++ % this.c.ports);
      if (!this.inUse.has(p)) {
        this.inUse.add(p);
        return p;
      }
    }
    return undefined;
  }

  async createOne(): Promise<void> {
    const port = this.port();
    if (port === undefined) {
      this.skipped++;
      return;
    }
    this.inFlight++;
    const t0 = performance.now();
    let client: AllocationClient | undefined;
    try {
      client = await AllocationClient.open(this.c.server, CREDENTIALS, this.stats, { address: this.c.address, port });
      await client.allocate(this.c.lifetime);
      await client.createPermission(this.c.peer);
      if (this.c.channel === true) await client.channelBind(CHANNEL, this.c.peer);
      this.createMs.push(performance.now() - t0);
      this.created++;
      this.ring.push(client);
    } catch (err) {
      // The port stays marked: an Allocate that failed after the server took it may have left an allocation there.
      this.errors.push(`create: ${message(err)}`);
      await client?.close();
    } finally {
      this.inFlight--;
    }
  }

  async deleteOne(): Promise<void> {
    const client = this.ring.shift();
    if (client === undefined) return;
    this.inFlight++;
    const port = client.localPort;
    try {
      await client.refresh(0);
      this.deleted++;
      this.inUse.delete(port);
    } catch (err) {
      this.errors.push(`delete: ${message(err)}`);
    } finally {
      await client.close();
      this.inFlight--;
    }
  }
}

async function churn(c: ChurnConfig): Promise<void> {
  const ch = new Churn(c);
  const period = 1000 / Math.max(1, c.rate);
  // Fill the ring at the churn's own rate, so the server sees the same request rate throughout.
  for (let attempts = 0; ch.ring.length + ch.inFlight < c.ring && attempts < 2 * c.ring; attempts++) {
    void ch.createOne();
    await sleep(period);
  }
  while (ch.inFlight > 0) await sleep(10);
  out({ type: 'ready', ring: ch.ring.length, errors: distinct(ch.errors) });
  ch.created = 0;
  ch.errors.length = 0;
  ch.createMs.length = 0;
  let stopping = false;
  const rl = createInterface({ input: process.stdin });
  rl.on('line', (l) => {
    if (l.trim() === 'stop') stopping = true;
  });
  rl.on('close', () => {
    stopping = true;
  });
  const t0 = performance.now();
  let ticks = 0;
  while (!stopping) {
    const due = Math.floor((performance.now() - t0) / period);
    for (; ticks < due; ticks++) {
      if (ch.inFlight >= CHURN_MAX_IN_FLIGHT) {
        ch.skipped++;
        continue;
      }
      void ch.deleteOne();
      void ch.createOne();
    }
    await sleep(Math.max(1, Math.min(10, period / 2)));
  }
  const seconds = (performance.now() - t0) / 1000;
  while (ch.inFlight > 0) await sleep(10);
  const steady = { created: ch.created, deleted: ch.deleted, skipped: ch.skipped, errors: distinct(ch.errors), createMs: summarize(ch.createMs) };
  await runPool(ch.ring.length, 16, () => ch.deleteOne());
  out({ type: 'done', seconds, ...steady, retransmits: ch.stats.retransmits, left: ch.ring.length });
  rl.close();
}

async function lifecycle(c: LifecycleConfig): Promise<void> {
  const stats = new DriverStats();
  const pool = await runPool(c.count, c.concurrency, async (i) => {
    const client = await AllocationClient.open(c.server, CREDENTIALS, stats, { address: c.address, port: c.firstPort + i });
    try {
      const t0 = performance.now();
      await client.allocate(c.lifetime);
      await client.createPermission(c.peer);
      await client.channelBind(CHANNEL, c.peer);
      await client.refresh(600);
      await client.refresh(0);
      return performance.now() - t0;
    } finally {
      await client.close();
    }
  });
  out({ type: 'done', ok: pool.results.length, errors: distinct(pool.errors), latencyMs: summarize(pool.results), ms: pool.wallMs });
}

async function main(): Promise<void> {
  const [mode, json] = process.argv.slice(2);
  const config = JSON.parse(json ?? '{}') as unknown;
  if (mode === 'create') await create(config as CreateConfig);
  else if (mode === 'churn') await churn(config as ChurnConfig);
  else if (mode === 'lifecycle') await lifecycle(config as LifecycleConfig);
  else throw new Error(`scale-driver: unknown mode '${mode ?? ''}' (create, churn, lifecycle)`);
}

main().then(
  () => process.exit(0),
  (err: unknown) => {
    console.error(message(err));
    process.exit(1);
  },
);

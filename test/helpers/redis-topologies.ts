// Throwaway Redis high-availability topologies for integration tests, all on
// 127.0.0.1: a Sentinel group (a master, a replica, three sentinels) and a Redis
// Cluster (three masters, optionally one replica each). Every process and temp
// dir is removed by stop(), also when starting failed half way; processes still
// running when the test process exits are killed synchronously.
//
// Ports: redis-server refuses --port 0, so ports are picked at random and tried;
// a cluster node also needs port + 10000 free (its cluster bus), so cluster ports
// stay below 55536.

import { spawn, spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import net from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

import { Redis } from 'ioredis';

import { ephemeralLowBound } from './ports.js';
import { REDIS_SERVER_PATH, isLive, killOnExit, ping, redisServerArgs, sleep } from './redis-server.js';

export const REDIS_CLI_PATH = process.env.REDIS_CLI_PATH ?? '/usr/bin/redis-cli';
export const LOCALHOST = '127.0.0.1';

// Deadlines only bound how long a broken topology can hang a test.
const READY_DEADLINE_MS = 20_000;
const STOP_GRACE_MS = 5_000;

export interface HostPort {
  readonly host: string;
  readonly port: number;
}

export interface RedisNodeProcess {
  readonly name: string;
  readonly port: number;
  readonly address: HostPort;
  /** SIGKILL (a crash: no goodbye to clients or peers); resolves once the process is gone. */
  kill(): Promise<void>;
  isRunning(): boolean;
  /** Last lines the process printed, for assertion messages. */
  output(): string;
}

// ---------------------------------------------------------------------------
// Processes

/** Fails with a clear message when a binary the topologies need is missing. */
export function checkRedisBinaries(): void {
  for (const [path, what] of [
    [REDIS_SERVER_PATH, 'redis-server (package redis-server; set REDIS_SERVER_PATH)'],
    [REDIS_CLI_PATH, 'redis-cli (package redis-tools; set REDIS_CLI_PATH)'],
  ] as const) {
    if (!existsSync(path)) throw new Error(`${path} not found: the Redis HA tests need ${what}`);
  }
}

function canListen(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const server = net.createServer();
    server.unref();
    server.once('error', () => resolve(false));
    server.listen(port, LOCALHOST, () => server.close(() => resolve(true)));
  });
}

const handedOut = new Set<number>();

/**
 * A free TCP port from 10000 up to the ephemeral range (and port + 10000, the cluster bus,
 * free and below it too when `withBus`): no connection's local port can take it between
 * this check and redis-server's bind.
 */
export async function pickPort(withBus = false): Promise<number> {
  const ceiling = ephemeralLowBound();
  const span = ceiling - (withBus ? 10_000 : 0) - 10_000;
  if (span < 1000) throw new Error(`too few ports below the ephemeral range (${ceiling}) for redis-server`);
  for (let attempt = 0; attempt < 200; attempt++) {
    const port = 10_000 + Math.floor(Math.random() * span);
    if (handedOut.has(port) || (withBus && handedOut.has(port + 10_000))) continue;
    if (!(await canListen(port))) continue;
    if (withBus && !(await canListen(port + 10_000))) continue;
    handedOut.add(port);
    if (withBus) handedOut.add(port + 10_000);
    return port;
  }
  throw new Error('no free port found for redis-server');
}

/** Starts redis-server with `args` and waits until it answers PING on `port`. */
async function startProcess(name: string, port: number, args: string[]): Promise<RedisNodeProcess> {
  const proc = killOnExit(spawn(REDIS_SERVER_PATH, args, { stdio: ['ignore', 'pipe', 'pipe'] }));
  let tail = '';
  const keep = (chunk: Buffer): void => {
    tail = (tail + chunk.toString('utf8')).slice(-4_000);
  };
  proc.stdout?.on('data', keep);
  proc.stderr?.on('data', keep);
  const exited = new Promise<void>((resolve) => {
    proc.once('exit', () => resolve());
    proc.once('error', (err) => {
      tail += `\nspawn error: ${err.message}`;
      resolve();
    });
  });
  const kill = async (): Promise<void> => {
    if (!isLive(proc)) return;
    proc.kill('SIGKILL');
    // SIGKILL can't be ignored; the grace only bounds a zombie that never reports.
    await Promise.race([exited, sleep(STOP_GRACE_MS)]);
  };
  const deadline = Date.now() + READY_DEADLINE_MS;
  while (!(await ping(port))) {
    if (!isLive(proc)) throw new Error(`${name} exited before answering PING on ${port}:\n${tail}`);
    if (Date.now() > deadline) {
      await kill();
      throw new Error(`${name} did not answer PING on ${port} within ${READY_DEADLINE_MS} ms:\n${tail}`);
    }
    await sleep(20);
  }
  return { name, port, address: { host: LOCALHOST, port }, kill, isRunning: () => isLive(proc), output: () => tail };
}

/** A plain connection for the test's own inspection; always disconnected afterwards. */
export async function withAdmin<T>(port: number, use: (admin: Redis) => Promise<T>): Promise<T> {
  const admin = new Redis({
    host: LOCALHOST,
    port,
    lazyConnect: true,
    maxRetriesPerRequest: 0,
    retryStrategy: () => null,
    connectTimeout: 1_000,
    commandTimeout: 5_000,
  });
  admin.on('error', () => undefined);
  try {
    await admin.connect();
    return await use(admin);
  } finally {
    admin.disconnect();
  }
}

/** Polls `check` until it returns true; fails with `what` (and `details()`) after the deadline. */
export async function waitUntil(check: () => Promise<boolean>, what: string, timeoutMs = READY_DEADLINE_MS, details: () => string = () => ''): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  let lastError = '';
  for (;;) {
    try {
      if (await check()) return;
    } catch (err) {
      lastError = err instanceof Error ? err.message : String(err);
    }
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}${lastError ? ` (last error: ${lastError})` : ''}\n${details()}`);
    await sleep(100);
  }
}

function infoField(info: string, field: string): string | undefined {
  return new RegExp(`^${field}:(.*)$`, 'm').exec(info)?.[1]?.trim();
}

class Processes {
  readonly list: RedisNodeProcess[] = [];
  readonly dir: string;
  constructor(label: string) {
    this.dir = mkdtempSync(join(tmpdir(), `anyturn-${label}-`));
  }
  add(p: RedisNodeProcess): RedisNodeProcess {
    this.list.push(p);
    return p;
  }
  async stop(): Promise<void> {
    await Promise.all(this.list.map((p) => p.kill()));
    rmSync(this.dir, { recursive: true, force: true });
  }
  describe(): string {
    return this.list.map((p) => `--- ${p.name} :${p.port} ${p.isRunning() ? 'running' : 'stopped'}\n${p.output().split('\n').slice(-8).join('\n')}`).join('\n');
  }
}

// ---------------------------------------------------------------------------
// Sentinel

export interface SentinelTopology {
  /** The master group name ("mymaster"). */
  readonly name: string;
  readonly master: RedisNodeProcess;
  readonly replica: RedisNodeProcess;
  readonly sentinels: readonly RedisNodeProcess[];
  readonly sentinelAddresses: readonly HostPort[];
  /** The master as the first reachable sentinel reports it. */
  masterAddress(): Promise<HostPort | undefined>;
  /** Waits until the sentinels name another master than `old` and it answers as a master. */
  waitForFailover(old: HostPort, timeoutMs?: number): Promise<HostPort>;
  stop(): Promise<void>;
  describe(): string;
}

/**
 * A master, one replica (--replicaof), and three sentinels monitoring them with
 * quorum 2, down-after `downAfterMs` (1 s: the failover tests want it fast; suites
 * that kill nothing pass more, so a busy machine's stall is not taken for a death)
 * and failover-timeout 5 s. Resolves once the replica is in sync and every sentinel
 * knows the replica and the other sentinels (so a failover can be authorised at once).
 */
export async function startSentinelTopology(name = 'mymaster', downAfterMs = 1000): Promise<SentinelTopology> {
  checkRedisBinaries();
  const procs = new Processes('sentinel');
  try {
    const masterPort = await pickPort();
    const replicaPort = await pickPort();
    const master = procs.add(await startProcess('master', masterPort, redisServerArgs(masterPort, procs.dir, ['--dbfilename', `dump-${masterPort}.rdb`])));
    const replica = procs.add(
      await startProcess(
        'replica',
        replicaPort,
        redisServerArgs(replicaPort, procs.dir, ['--dbfilename', `dump-${replicaPort}.rdb`, '--replicaof', LOCALHOST, String(masterPort)]),
      ),
    );
    await waitUntil(
      () => withAdmin(replicaPort, async (r) => infoField(await r.info('replication'), 'master_link_status') === 'up'),
      'the replica to sync with the master',
      READY_DEADLINE_MS,
      () => procs.describe(),
    );
    // Sentinels start after the replica is attached: their first INFO of the master lists it.
    const sentinels: RedisNodeProcess[] = [];
    for (let i = 0; i < 3; i++) {
      const port = await pickPort();
      const file = join(procs.dir, `sentinel-${port}.conf`);
      writeFileSync(
        file,
        [
          `port ${port}`,
          `bind ${LOCALHOST}`,
          'protected-mode no',
          'daemonize no',
          `dir ${procs.dir}`,
          'loglevel warning',
          'sentinel resolve-hostnames no',
          `sentinel monitor ${name} ${LOCALHOST} ${masterPort} 2`,
          `sentinel down-after-milliseconds ${name} ${downAfterMs}`,
          `sentinel failover-timeout ${name} 5000`,
          `sentinel parallel-syncs ${name} 1`,
          '',
        ].join('\n'),
      );
      sentinels.push(procs.add(await startProcess(`sentinel-${i + 1}`, port, [file, '--sentinel'])));
    }
    for (const s of sentinels) {
      await waitUntil(
        () =>
          withAdmin(s.port, async (r) => {
            const replicas = (await r.call('SENTINEL', 'REPLICAS', name)) as unknown[];
            const others = (await r.call('SENTINEL', 'SENTINELS', name)) as unknown[];
            const quorum = String(await r.call('SENTINEL', 'CKQUORUM', name));
            const replicaKnown = replicas.some(
              (entry) => Array.isArray(entry) && entry.map(String).includes(String(replicaPort)) && !/s_down|disconnected/.test(entry.map(String).join(' ')),
            );
            return replicaKnown && others.length >= 2 && quorum.startsWith('OK');
          }),
        `${s.name} to know the replica and the other sentinels`,
        READY_DEADLINE_MS,
        () => procs.describe(),
      );
    }
    const sentinelAddresses = sentinels.map((s) => s.address);
    const masterAddress = async (): Promise<HostPort | undefined> => {
      for (const s of sentinels) {
        if (!s.isRunning()) continue;
        try {
          const reply = await withAdmin(s.port, (r) => r.call('SENTINEL', 'GET-MASTER-ADDR-BY-NAME', name));
          if (Array.isArray(reply) && reply.length === 2) return { host: String(reply[0]), port: Number(reply[1]) };
        } catch {
          // try the next sentinel
        }
      }
      return undefined;
    };
    return {
      name,
      master,
      replica,
      sentinels,
      sentinelAddresses,
      masterAddress,
      async waitForFailover(old, timeoutMs = 30_000) {
        let found: HostPort | undefined;
        await waitUntil(
          async () => {
            const now = await masterAddress();
            if (!now || (now.host === old.host && now.port === old.port)) return false;
            const role = await withAdmin(now.port, async (r) => infoField(await r.info('replication'), 'role'));
            found = now;
            return role === 'master';
          },
          'the sentinels to promote the replica',
          timeoutMs,
          () => procs.describe(),
        );
        return found!;
      },
      stop: () => procs.stop(),
      describe: () => procs.describe(),
    };
  } catch (err) {
    await procs.stop();
    throw err;
  }
}

// ---------------------------------------------------------------------------
// Redis Cluster

export interface ClusterNodeView {
  readonly process: RedisNodeProcess;
  readonly role: 'master' | 'replica';
}

export interface ClusterTopology {
  readonly nodes: readonly RedisNodeProcess[];
  readonly startupNodes: readonly HostPort[];
  /** The node serving `key`'s slot as a master now (asked of a live node). */
  masterForKey(key: string): Promise<RedisNodeProcess>;
  /** Every live node with its current role. */
  roles(): Promise<ClusterNodeView[]>;
  /** Waits until every live node says cluster_state:ok. */
  waitForClusterOk(timeoutMs?: number): Promise<void>;
  stop(): Promise<void>;
  describe(): string;
}

/**
 * `masters` masters (at least 3) with `replicasPerMaster` replicas each, made into
 * one cluster with redis-cli --cluster create, node timeout `nodeTimeoutMs` (1 s by
 * default, for the failover tests). Resolves once every node sees cluster_state:ok
 * and every replica is in sync.
 */
export async function startRedisCluster(options: { masters?: number; replicasPerMaster?: 0 | 1; nodeTimeoutMs?: number } = {}): Promise<ClusterTopology> {
  checkRedisBinaries();
  const masters = options.masters ?? 3;
  const replicasPerMaster = options.replicasPerMaster ?? 0;
  const total = masters * (1 + replicasPerMaster);
  const procs = new Processes('cluster');
  try {
    const nodes: RedisNodeProcess[] = [];
    for (let i = 0; i < total; i++) {
      const port = await pickPort(true);
      nodes.push(
        procs.add(
          await startProcess(
            `node-${port}`,
            port,
            redisServerArgs(port, procs.dir, [
              '--dbfilename',
              `dump-${port}.rdb`,
              '--cluster-enabled',
              'yes',
              '--cluster-config-file',
              join(procs.dir, `nodes-${port}.conf`),
              '--cluster-node-timeout',
              String(options.nodeTimeoutMs ?? 1000),
              // A replica may take over whatever the age of its data (the tests wait for sync first).
              '--cluster-replica-validity-factor',
              '0',
            ]),
          ),
        ),
      );
    }
    const create = spawnSync(
      REDIS_CLI_PATH,
      ['--cluster', 'create', ...nodes.map((n) => `${LOCALHOST}:${n.port}`), '--cluster-replicas', String(replicasPerMaster), '--cluster-yes'],
      { encoding: 'utf8', timeout: READY_DEADLINE_MS },
    );
    if (create.status !== 0) throw new Error(`redis-cli --cluster create failed (${create.status ?? create.signal}):\n${create.stdout}\n${create.stderr}`);

    const byPort = new Map(nodes.map((n) => [n.port, n]));
    const roles = async (): Promise<ClusterNodeView[]> => {
      const out: ClusterNodeView[] = [];
      for (const n of nodes) {
        if (!n.isRunning()) continue;
        const role = await withAdmin(n.port, async (r) => infoField(await r.info('replication'), 'role'));
        out.push({ process: n, role: role === 'master' ? 'master' : 'replica' });
      }
      return out;
    };
    const waitForClusterOk = (timeoutMs = READY_DEADLINE_MS): Promise<void> =>
      waitUntil(
        async () => {
          for (const n of nodes) {
            if (!n.isRunning()) continue;
            const ok = await withAdmin(n.port, async (r) => {
              const info = String(await r.cluster('INFO'));
              if (infoField(info, 'cluster_state') !== 'ok') return false;
              const replication = await r.info('replication');
              return infoField(replication, 'role') === 'master' || infoField(replication, 'master_link_status') === 'up';
            });
            if (!ok) return false;
          }
          return true;
        },
        'every cluster node to say cluster_state:ok (replicas in sync)',
        timeoutMs,
        () => procs.describe(),
      );
    await waitForClusterOk();
    // Every node knows every other (gossip settles after create).
    await waitUntil(
      async () => {
        for (const n of nodes) {
          const known = await withAdmin(n.port, async (r) => Number(infoField(String(await r.cluster('INFO')), 'cluster_known_nodes')));
          if (known !== total) return false;
        }
        return true;
      },
      'every node to know the whole cluster',
      READY_DEADLINE_MS,
      () => procs.describe(),
    );
    return {
      nodes,
      startupNodes: nodes.map((n) => n.address),
      async masterForKey(key) {
        for (const n of nodes) {
          if (!n.isRunning()) continue;
          try {
            const port = await withAdmin(n.port, async (r) => {
              const slot = Number(await r.cluster('KEYSLOT', key));
              const slots = (await r.cluster('SLOTS')) as unknown as [number, number, [string, number, ...unknown[]], ...unknown[]][];
              const range = slots.find(([from, to]) => slot >= from && slot <= to);
              return range ? Number(range[2][1]) : undefined;
            });
            const owner = port === undefined ? undefined : byPort.get(port);
            if (owner) return owner;
          } catch {
            // ask the next node
          }
        }
        throw new Error(`no live node knows the master of ${key}\n${procs.describe()}`);
      },
      roles,
      waitForClusterOk,
      stop: () => procs.stop(),
      describe: () => procs.describe(),
    };
  } catch (err) {
    await procs.stop();
    throw err;
  }
}

// What every part of npm run bench:allocations shares: the servers under test, the
// processes and directories of the run, and the TURN clients' common sequences.
import { performance } from 'node:perf_hooks';

import type { ProcessGroup } from '../processes.js';
import { AllocationClient, type CountingPeer, type DriverStats, type Endpoint } from '../turn-driver.js';
import { AUTH_SECRET, PASSWORD, USER } from '../servers.js';
import { restApiPassword } from '../../src/turn/auth/credentials.js';
import type { Options } from './options.js';

/** redis-server runs with the driver, on the client core. */
export const REDIS_CPU = 0;
/** How long a server or redis-server may take to answer after its start. */
export const READY_TIMEOUT_MS = 20_000;
/** The channel every ChannelBind of the benchmark binds (RFC 8656 §12: 0x4000-0x4FFF). */
export const CHANNEL = 0x4000;
/** How long a server and its memory settle before and after a measurement. */
export const SETTLE_MS = 2_000;

export type ServerKind = 'anyturn-memory' | 'anyturn-redis' | 'anyturn-redis-anycast' | 'coturn' | 'floor' | 'floor-shared' | 'anyturn-memory-baseline';

export const LABELS: Record<ServerKind, { server: string; store: string }> = {
  'anyturn-memory': { server: 'anyturn', store: 'memory' },
  'anyturn-redis': { server: 'anyturn', store: 'redis (unicast relay)' },
  'anyturn-redis-anycast': { server: 'anyturn', store: 'redis, --relay-mode anycast' },
  coturn: { server: 'coturn', store: 'memory (its own)' },
  // floor-allocate.ts: the least a Node server spends on the lifecycle (part 1 only).
  floor: { server: 'node floor', store: 'relay socket per allocation' },
  'floor-shared': { server: 'node floor', store: 'no relay socket (shared)' },
  // --rate-baseline DIR: another build of anyturn, memory store, measured beside this one.
  'anyturn-memory-baseline': { server: 'anyturn (baseline)', store: 'memory' },
};

/** The anyturn kinds on the Redis store need a redis-server of their own. */
export function needsRedis(kind: ServerKind): boolean {
  return kind === 'anyturn-redis' || kind === 'anyturn-redis-anycast';
}

export interface Context {
  readonly group: ProcessGroup;
  readonly scratchDir: string;
  readonly logDir: string;
  readonly repoRoot: string;
  readonly anyturnCli: string;
  readonly peer: CountingPeer;
  readonly options: Options;
  readonly stop: () => boolean;
  /** Open-file limit (soft = hard) every server runs with (prlimit). */
  readonly serverNofile: number;
}

/** A client's long-term credential. */
export interface Credential {
  readonly username: string;
  readonly password: string;
}

const STATIC_CREDENTIAL: Credential = { username: USER, password: PASSWORD };

/** The static user, for every allocation. */
export function staticCredential(): Credential {
  return STATIC_CREDENTIAL;
}

/**
 * Time-limited credentials (coturn's --use-auth-secret scheme), a new username per call, as
 * a WebRTC app hands one to each visitor: "<expiry>:visitor<n>", a day from now.
 */
export function restCredentials(): () => Credential {
  const expiry = Math.floor(Date.now() / 1000) + 86_400;
  let n = 0;
  return () => {
    const username = `${expiry}:visitor${n++}`;
    return { username, password: restApiPassword(AUTH_SECRET, username) };
  };
}

/** Allocate (401, then authenticated) + CreatePermission + ChannelBind on a fresh socket; returns ms. */
export async function fullSequence(
  server: Endpoint,
  peer: Endpoint,
  stats: DriverStats,
  keep: AllocationClient[],
  channel: boolean,
  credential: () => Credential = staticCredential,
): Promise<number> {
  const c = await AllocationClient.open(server, credential(), stats);
  keep.push(c); // kept open: a closed socket's port could come back as a new client with a live 5-tuple
  const t0 = performance.now();
  await c.allocate();
  await c.createPermission(peer);
  if (channel) await c.channelBind(CHANNEL, peer);
  return performance.now() - t0;
}

export async function closeAll(clients: readonly AllocationClient[]): Promise<void> {
  await Promise.all(clients.map((c) => c.close()));
}

/** Errors counted by message, the first `max` of them: "N x message". */
export function distinct(errors: readonly string[], max = 5): string[] {
  const counts = new Map<string, number>();
  for (const e of errors) counts.set(e, (counts.get(e) ?? 0) + 1);
  return [...counts].slice(0, max).map(([e, n]) => `${n} x ${e}`);
}

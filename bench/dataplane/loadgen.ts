// bench/dataplane/loadgen.c from Node: built from source with the system C compiler
// (the same for every run and every machine; commit no binaries), and driven in the
// client and peer namespaces.
import { spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, statSync } from 'node:fs';
import { dirname, join } from 'node:path';

import type { ProcessGroup, TrackedProcess } from '../processes.js';
import { sleep } from '../host.js';
import { CLIENT_ADDRESS, PEER_ADDRESS, type BenchTopology } from './topology.js';

/** The echo peer's port on PEER_ADDRESS. */
export const PEER_PORT = 5000;

/** Compiles loadgen.c into dist/bench/dataplane/loadgen when the binary is missing or older; its path. */
export function buildLoadgen(repoRoot: string): string {
  const source = join(repoRoot, 'bench', 'dataplane', 'loadgen.c');
  const binary = join(repoRoot, 'dist', 'bench', 'dataplane', 'loadgen');
  if (existsSync(binary) && statSync(binary).mtimeMs >= statSync(source).mtimeMs) return binary;
  mkdirSync(dirname(binary), { recursive: true });
  const cc = process.env.CC ?? 'cc';
  const r = spawnSync(cc, ['-O2', '-Wall', '-Wno-deprecated-declarations', '-o', binary, source, '-lcrypto'], { encoding: 'utf8' });
  if (r.status !== 0) {
    throw new Error(`building the load generator failed (${cc} ... -lcrypto; needs a C compiler and libssl-dev):\n${r.stderr ?? r.error?.message ?? ''}`);
  }
  return binary;
}

export interface LoadSpec {
  readonly sessions: number;
  /** Messages per second, all sessions together. */
  readonly rate: number;
  readonly count: number;
  /** Payload bytes (the ChannelData header comes on top in relay runs). */
  readonly size: number;
  /** Leading messages left out of the RTT percentiles. */
  readonly warmup: number;
}

/** What loadgen load prints when the load is over. RTTs in us. */
export interface LoadOutput {
  readonly sent: number;
  readonly received: number;
  readonly sendErrors: number;
  readonly malformed: number;
  readonly sendSeconds: number;
  /** Messages per second actually sent; below the offered rate = the generator was the limit. */
  readonly achievedRate: number;
  /** The furthest behind schedule a send went. */
  readonly maxLagUs: number;
  readonly rtt: { readonly count: number; readonly p50?: number; readonly p90?: number; readonly p99?: number; readonly max?: number };
}

export interface Credentials {
  readonly user: string;
  readonly password: string;
}

/** The echo peer in P, for the whole benchmark. */
export async function startEcho(group: ProcessGroup, topo: BenchTopology, binary: string): Promise<TrackedProcess> {
  const a = topo.argv('P', binary, ['echo', '--bind', PEER_ADDRESS, '--port', String(PEER_PORT)]);
  const echo = group.start('peer', undefined, a.command, a.args);
  if (!(await echo.waitForLine(/^ready$/, 5000))) throw new Error(`the echo peer did not start: ${echo.tail().join('\n')}`);
  return echo;
}

/** Until a STUN Binding to the server is answered from C, or the deadline; whether it was. */
export async function waitForServer(topo: BenchTopology, binary: string, server: string, deadlineMs: number, gone: () => boolean): Promise<boolean> {
  const deadline = Date.now() + deadlineMs;
  while (Date.now() < deadline && !gone()) {
    if ((await topo.exec('C', binary, ['probe', '--server', server])) === 0) return true;
    await sleep(100);
  }
  return false;
}

/** A load generator in C, set up (allocations and channels bound) and waiting for "go". */
export async function startLoad(
  group: ProcessGroup,
  topo: BenchTopology,
  binary: string,
  spec: LoadSpec,
  turn: { readonly server: string; readonly credentials: Credentials } | undefined,
): Promise<TrackedProcess> {
  const peer = `${PEER_ADDRESS}:${PEER_PORT}`;
  const args = [
    'load',
    '--mode',
    turn === undefined ? 'direct' : 'turn',
    '--peer',
    peer,
    '--bind',
    CLIENT_ADDRESS,
    '--sessions',
    String(spec.sessions),
    '--rate',
    String(spec.rate),
    '--count',
    String(spec.count),
    '--size',
    String(spec.size),
    '--warmup',
    String(spec.warmup),
    ...(turn === undefined ? [] : ['--server', turn.server, '--user', turn.credentials.user, '--password', turn.credentials.password]),
  ];
  const a = topo.argv('C', binary, args);
  const gen = group.start('loadgen', undefined, a.command, a.args, true);
  if (!(await gen.waitForLine(/^ready$/, 30_000))) {
    await group.stop(gen);
    throw new Error(`load generator setup failed: ${gen.tail().slice(-5).join(' | ')}`);
  }
  return gen;
}

/** Starts the load; resolves with the generator's result line, or undefined after `timeoutMs`. */
export async function go(gen: TrackedProcess, timeoutMs: number): Promise<LoadOutput | undefined> {
  gen.child.stdin?.write('go\n');
  if (!(await gen.waitForLine(/^\{"sent"/, timeoutMs))) return undefined;
  const line = gen.tail().find((l) => l.startsWith('{"sent"'));
  return line === undefined ? undefined : (JSON.parse(line) as LoadOutput);
}

/** Lets the generator exit (it waits for EOF so that it is alive at the second CPU sample). */
export async function finish(group: ProcessGroup, gen: TrackedProcess): Promise<void> {
  gen.child.stdin?.end();
  const timer = setTimeout(() => void group.stop(gen), 2000);
  await gen.exited;
  clearTimeout(timer);
}

// Process harness for interop and integration tests: spawns the anyturn CLI
// (and, to validate the harness itself, coturn's turnserver and
// turnutils_peer) on loopback, waits until each is ready and kills the whole
// process group afterwards, also when a test fails.
//
// Every address used here is 127.0.0.1 (or ::1): tests never send traffic
// anywhere else.

import { spawn, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import dgram from 'node:dgram';
import { mkdtempSync, rmSync } from 'node:fs';
import net from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { ephemeralLowBound } from './ports.js';

export const LOOPBACK_V4 = '127.0.0.1';

/** dist/test/helpers/anyturn-process.js -> dist/src/cli.js */
export const ANYTURN_CLI_PATH = fileURLToPath(new URL('../../src/cli.js', import.meta.url));

// Deadlines below only bound how long a broken process can hang a test; no
// assertion depends on how fast anything is.
const READY_DEADLINE_MS = 20_000;
const STOP_GRACE_MS = 10_000;
const OUTPUT_TAIL_CHARS = 4_000;

// ---------------------------------------------------------------------------
// Spawned processes

export interface ProcessExit {
  readonly code: number | null;
  readonly signal: NodeJS.Signals | null;
}

export interface SpawnedProcess {
  readonly name: string;
  readonly pid: number;
  readonly child: ChildProcess;
  /** Resolves when the process has exited (never rejects). */
  readonly exited: Promise<ProcessExit>;
  /** Everything the process wrote to stdout so far. */
  stdout(): string;
  /** Everything the process wrote to stderr so far. */
  stderr(): string;
  /** Last few KB of stdout+stderr, for assertion messages. */
  outputTail(): string;
  isRunning(): boolean;
  /**
   * SIGTERM the process group, wait, then SIGKILL the group if it is still
   * alive after a grace period. Idempotent; resolves with the exit status.
   */
  stop(signal?: NodeJS.Signals): Promise<ProcessExit>;
}

// Process groups still alive, killed synchronously if the test process exits
// without having stopped them (crash, uncaught error, forgotten stop()).
const liveGroups = new Set<number>();
let exitHookInstalled = false;

function installExitHook(): void {
  if (exitHookInstalled) return;
  exitHookInstalled = true;
  const killAll = (): void => {
    for (const pgid of liveGroups) killGroup(pgid, 'SIGKILL');
  };
  process.on('exit', killAll);
  // Death by signal skips 'exit': clean up, then die of the same signal.
  for (const signal of ['SIGINT', 'SIGTERM'] as const) {
    process.once(signal, () => {
      killAll();
      process.kill(process.pid, signal);
    });
  }
}

function killGroup(pgid: number, signal: NodeJS.Signals): void {
  try {
    // Negative pid: the whole process group (the child was spawned detached,
    // so it leads its own group and nothing else of ours is in it).
    process.kill(-pgid, signal);
  } catch {
    // ESRCH: already gone.
  }
}

export interface SpawnOptions {
  readonly name?: string;
  readonly env?: NodeJS.ProcessEnv;
  readonly cwd?: string;
}

/** Spawns `command args` in its own process group and records its output. */
export function spawnProcess(command: string, args: readonly string[], options: SpawnOptions = {}): SpawnedProcess {
  installExitHook();
  const child = spawn(command, [...args], {
    detached: true,
    stdio: ['ignore', 'pipe', 'pipe'],
    env: options.env ?? process.env,
    cwd: options.cwd,
  });
  const name = options.name ?? command;
  let out = '';
  let err = '';
  child.stdout?.setEncoding('utf8').on('data', (chunk: string) => {
    out += chunk;
  });
  child.stderr?.setEncoding('utf8').on('data', (chunk: string) => {
    err += chunk;
  });

  let running = true;
  const exited = new Promise<ProcessExit>((resolve) => {
    child.once('error', (error) => {
      // spawn failure (ENOENT...): no 'exit' event follows.
      err += `\n[spawn error] ${error.message}\n`;
      running = false;
      if (child.pid !== undefined) liveGroups.delete(child.pid);
      resolve({ code: null, signal: null });
    });
    // 'close' rather than 'exit': all output has been read by then.
    child.once('close', (code, signal) => {
      running = false;
      if (child.pid !== undefined) liveGroups.delete(child.pid);
      resolve({ code, signal });
    });
  });
  const pid = child.pid ?? -1;
  if (pid > 0) liveGroups.add(pid);

  let stopping: Promise<ProcessExit> | undefined;
  const stop = (signal: NodeJS.Signals = 'SIGTERM'): Promise<ProcessExit> => {
    if (stopping) return stopping;
    if (!running || pid <= 0) return (stopping = exited);
    killGroup(pid, signal);
    stopping = (async () => {
      let timer: NodeJS.Timeout | undefined;
      const grace = new Promise<'timeout'>((resolve) => {
        timer = setTimeout(() => resolve('timeout'), STOP_GRACE_MS);
      });
      const first = await Promise.race([exited, grace]);
      clearTimeout(timer);
      if (first === 'timeout') killGroup(pid, 'SIGKILL');
      return exited;
    })();
    return stopping;
  };

  return {
    name,
    pid,
    child,
    exited,
    stdout: () => out,
    stderr: () => err,
    outputTail: () => {
      const both = `--- ${name} stdout ---\n${out}\n--- ${name} stderr ---\n${err}`;
      return both.length > OUTPUT_TAIL_CHARS ? `...${both.slice(-OUTPUT_TAIL_CHARS)}` : both;
    },
    isRunning: () => running,
    stop,
  };
}

/** Minimal view of node:test's TestContext, so helpers can register cleanup. */
export interface CleanupRegistrar {
  after(fn: () => unknown): void;
}

/** Registers `proc.stop()` as an after-hook of the test (or suite). */
export function stopAfter<P extends { stop(): Promise<unknown> }>(t: CleanupRegistrar, proc: P): P {
  t.after(async () => {
    await proc.stop();
  });
  return proc;
}

export interface RunResult extends ProcessExit {
  readonly stdout: string;
  readonly stderr: string;
  /** True if the deadline passed and the process group was killed. */
  readonly timedOut: boolean;
}

/**
 * Runs a command to completion (e.g. turnutils_uclient). The deadline only
 * stops a hung tool; callers assert on the output, not on elapsed time.
 */
export async function runToCompletion(command: string, args: readonly string[], deadlineMs: number, t?: CleanupRegistrar): Promise<RunResult> {
  const proc = spawnProcess(command, args);
  if (t) stopAfter(t, proc);
  let timedOut = false;
  const timer = setTimeout(() => {
    timedOut = true;
    void proc.stop('SIGKILL');
  }, deadlineMs);
  const exit = await proc.exited;
  clearTimeout(timer);
  return { ...exit, stdout: proc.stdout(), stderr: proc.stderr(), timedOut };
}

// ---------------------------------------------------------------------------
// Ports

function closeUdp(socket: dgram.Socket): Promise<void> {
  return new Promise((resolve) => socket.close(() => resolve()));
}

function bindUdp(port: number, host: string): Promise<dgram.Socket> {
  return new Promise((resolve, reject) => {
    const socket = dgram.createSocket(net.isIPv6(host) ? 'udp6' : 'udp4');
    socket.once('error', (error) => {
      socket.close();
      reject(error);
    });
    socket.bind(port, host, () => {
      socket.removeAllListeners('error');
      resolve(socket);
    });
  });
}

function listenTcp(port: number, host: string): Promise<net.Server> {
  return new Promise((resolve, reject) => {
    const server = net.createServer();
    server.once('error', reject);
    server.listen({ port, host, exclusive: true }, () => {
      server.removeListener('error', reject);
      resolve(server);
    });
  });
}

function closeTcp(server: net.Server): Promise<void> {
  return new Promise((resolve) => server.close(() => resolve()));
}

/** A UDP port that was free on `host` a moment ago (bind port 0, read, close). */
export async function findFreeUdpPort(host: string = LOOPBACK_V4): Promise<number> {
  const socket = await bindUdp(0, host);
  const { port } = socket.address();
  await closeUdp(socket);
  return port;
}

/** A TCP port that was free on `host` a moment ago. */
export async function findFreeTcpPort(host: string = LOOPBACK_V4): Promise<number> {
  const server = await listenTcp(0, host);
  const address = server.address();
  await closeTcp(server);
  if (address === null || typeof address === 'string') throw new Error('no TCP port');
  return address.port;
}

/**
 * A port number free for both UDP and TCP on `host`: a TURN server listens on
 * both with the same number (RFC 8656 §4: 3478 for UDP and TCP).
 */
export async function findFreePort(host: string = LOOPBACK_V4): Promise<number> {
  for (let attempt = 0; attempt < 50; attempt++) {
    const socket = await bindUdp(0, host);
    const { port } = socket.address();
    try {
      const server = await listenTcp(port, host);
      await closeTcp(server);
      return port;
    } catch {
      // TCP side taken: try another number.
    } finally {
      await closeUdp(socket);
    }
  }
  throw new Error(`no port free for both UDP and TCP on ${host}`);
}

export interface PortRange {
  readonly min: number;
  readonly max: number;
}

const handedOutRanges: PortRange[] = [];

/**
 * A relay port range of `size` ports, distinct from every range handed out
 * earlier in this process, all free on UDP `host` right now. It lies below
 * the kernel's ephemeral range, so client sockets bound to port 0 (ours,
 * uclient's, werift's) never land in it; the start is random so that test
 * processes running side by side rarely pick the same range.
 */
export async function reserveRelayPortRange(size = 200, host: string = LOOPBACK_V4): Promise<PortRange> {
  const ceiling = Math.min(ephemeralLowBound(), 65536);
  const floor = ceiling > 20000 + size * 4 ? 20000 : 10000;
  for (let attempt = 0; attempt < 100; attempt++) {
    const span = ceiling - floor - size;
    const min = floor + (randomBytes(4).readUInt32BE(0) % Math.max(span, 1));
    const max = min + size - 1;
    if (handedOutRanges.some((r) => min <= r.max && r.min <= max)) continue;
    if (await allUdpPortsFree(min, max, host)) {
      const range = { min, max };
      handedOutRanges.push(range);
      return range;
    }
  }
  throw new Error(`no free relay port range of ${size} ports on ${host}`);
}

async function allUdpPortsFree(min: number, max: number, host: string): Promise<boolean> {
  for (let port = min; port <= max; port++) {
    try {
      await closeUdp(await bindUdp(port, host));
    } catch {
      return false;
    }
  }
  return true;
}

// ---------------------------------------------------------------------------
// STUN probe (harness-level readiness check; deliberately not using src/)

const MAGIC_COOKIE = 0x2112a442;

/**
 * Sends RFC 8489 Binding requests to host:port until a Binding success
 * response with the same transaction ID comes back.
 */
export async function waitForStunBinding(
  host: string,
  port: number,
  deadlineMs: number = READY_DEADLINE_MS,
  isAlive: () => boolean = () => true,
): Promise<void> {
  const socket = await bindUdp(0, net.isIPv6(host) ? '::1' : LOOPBACK_V4);
  const request = Buffer.alloc(20);
  request.writeUInt16BE(0x0001, 0);
  request.writeUInt16BE(0, 2);
  request.writeUInt32BE(MAGIC_COOKIE, 4);
  randomBytes(12).copy(request, 8);
  try {
    await new Promise<void>((resolve, reject) => {
      const started = Date.now();
      const onMessage = (msg: Buffer): void => {
        if (msg.length >= 20 && msg.readUInt16BE(0) === 0x0101 && msg.subarray(8, 20).equals(request.subarray(8, 20))) {
          clearInterval(timer);
          resolve();
        }
      };
      socket.on('message', onMessage);
      const tick = (): void => {
        if (!isAlive()) {
          clearInterval(timer);
          reject(new Error(`server on ${host}:${port} exited before answering a Binding request`));
        } else if (Date.now() - started > deadlineMs) {
          clearInterval(timer);
          reject(new Error(`no Binding response from ${host}:${port}`));
        } else {
          socket.send(request, port, host);
        }
      };
      const timer = setInterval(tick, 100);
      tick();
    });
  } finally {
    await closeUdp(socket);
  }
}

// ---------------------------------------------------------------------------
// anyturn

export interface TurnServerOptions {
  /** --listening-ip, repeatable. Default [127.0.0.1]. */
  readonly listeningIps?: readonly string[];
  /** --listening-port. Default: a free port. */
  readonly listeningPort?: number;
  /** --relay-ip. Default 127.0.0.1. */
  readonly relayIp?: string;
  /** --min-port/--max-port. Default: a fresh range from reserveRelayPortRange(). */
  readonly relayPorts?: PortRange;
  readonly realm?: string;
  /** --user name:password, repeatable. */
  readonly users?: readonly { readonly name: string; readonly password: string }[];
  /** --use-auth-secret --static-auth-secret S */
  readonly staticAuthSecret?: string;
  /** --allow-loopback-peers: needed whenever the peer is on 127.0.0.1. */
  readonly allowLoopbackPeers?: boolean;
  readonly allowedPeerIps?: readonly string[];
  readonly deniedPeerIps?: readonly string[];
  readonly userQuota?: number;
  readonly totalQuota?: number;
  readonly logLevel?: 'debug' | 'info' | 'warn';
  /** false: --no-tcp (TCP listens on --listening-port by default). */
  readonly tcp?: boolean;
  /** TURN over TLS: --cert/--pkey, and --tls-listening-port (default: a free TCP port). */
  readonly tls?: { readonly certFile: string; readonly keyFile: string; readonly port?: number };
  /** More flags, appended as given. */
  readonly extraArgs?: readonly string[];
  /** anyturn only: a command to run it under, e.g. ['prlimit', '--nofile=200:200'] (it must exec, so the pid stays node's). */
  readonly runUnder?: readonly string[];
}

export interface RunningTurnServer {
  readonly kind: 'anyturn' | 'coturn';
  readonly process: SpawnedProcess;
  /** The first listening IP. */
  readonly host: string;
  readonly port: number;
  /** The TLS port when options.tls was given. */
  readonly tlsPort?: number;
  readonly relayPorts: PortRange;
  stop(): Promise<ProcessExit>;
}

export function anyturnArgs(options: TurnServerOptions, port: number, relayPorts: PortRange, tlsPort?: number): string[] {
  const args: string[] = [];
  for (const ip of options.listeningIps ?? [LOOPBACK_V4]) args.push('--listening-ip', ip);
  args.push('--listening-port', String(port));
  args.push('--relay-ip', options.relayIp ?? LOOPBACK_V4);
  args.push('--min-port', String(relayPorts.min), '--max-port', String(relayPorts.max));
  if (options.realm !== undefined) args.push('--realm', options.realm);
  for (const user of options.users ?? []) args.push('--user', `${user.name}:${user.password}`);
  if (options.staticAuthSecret !== undefined) {
    args.push('--use-auth-secret', '--static-auth-secret', options.staticAuthSecret);
  }
  if (options.allowLoopbackPeers === true) args.push('--allow-loopback-peers');
  for (const range of options.allowedPeerIps ?? []) args.push('--allowed-peer-ip', range);
  for (const range of options.deniedPeerIps ?? []) args.push('--denied-peer-ip', range);
  if (options.userQuota !== undefined) args.push('--user-quota', String(options.userQuota));
  if (options.totalQuota !== undefined) args.push('--total-quota', String(options.totalQuota));
  if (options.tcp === false) args.push('--no-tcp');
  if (options.tls)
    args.push('--cert', options.tls.certFile, '--pkey', options.tls.keyFile, '--tls-listening-port', String(tlsPort ?? options.tls.port ?? 5349));
  args.push('--log-level', options.logLevel ?? 'info');
  // No ops endpoint on the default 9641 unless a test asks: servers in tests must not collide.
  if (!(options.extraArgs ?? []).includes('--metrics-port')) args.push('--metrics-port', '0');
  args.push(...(options.extraArgs ?? []));
  return args;
}

/** Parses pino JSON lines; non-JSON lines are skipped. */
export function parseLogLines(text: string): Record<string, unknown>[] {
  const records: Record<string, unknown>[] = [];
  for (const line of text.split('\n')) {
    const trimmed = line.trim();
    if (!trimmed.startsWith('{')) continue;
    try {
      const value: unknown = JSON.parse(trimmed);
      if (typeof value === 'object' && value !== null && !Array.isArray(value)) {
        records.push(value as Record<string, unknown>);
      }
    } catch {
      // Partial or foreign line.
    }
  }
  return records;
}

function waitForLogMessage(proc: SpawnedProcess, message: string, deadlineMs: number): Promise<void> {
  return new Promise((resolve, reject) => {
    let buffered = '';
    let settled = false;
    const finish = (error?: Error): void => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      proc.child.stdout?.off('data', onData);
      if (error) reject(error);
      else resolve();
    };
    const scan = (): boolean => parseLogLines(buffered).some((record) => record.msg === message);
    const onData = (chunk: string): void => {
      buffered += chunk;
      if (scan()) finish();
    };
    const timer = setTimeout(() => finish(new Error(`${proc.name}: no "${message}" log line\n${proc.outputTail()}`)), deadlineMs);
    proc.child.stdout?.on('data', onData);
    // Output that arrived before we subscribed.
    buffered = proc.stdout();
    if (scan()) finish();
    void proc.exited.then((exit) =>
      finish(new Error(`${proc.name} exited (code ${String(exit.code)}, signal ${String(exit.signal)}) before "${message}"\n${proc.outputTail()}`)),
    );
  });
}

const ADDRESS_IN_USE = /EADDRINUSE|address already in use/i;

/**
 * Starts `node dist/src/cli.js <flags>` and resolves once it has logged
 * `"anyturn ready"`. Retries with fresh ports if a port was taken between
 * probing and binding.
 */
export async function startAnyturn(options: TurnServerOptions = {}): Promise<RunningTurnServer> {
  const host = options.listeningIps?.[0] ?? LOOPBACK_V4;
  for (let attempt = 0; ; attempt++) {
    const port = options.listeningPort ?? (await findFreePort(host));
    const relayPorts = options.relayPorts ?? (await reserveRelayPortRange());
    const tlsPort = options.tls ? (options.tls.port ?? (await findFreeTcpPort(host))) : undefined;
    const args = [ANYTURN_CLI_PATH, ...anyturnArgs(options, port, relayPorts, tlsPort)];
    const [command, ...prefix] = [...(options.runUnder ?? []), process.execPath];
    const proc = spawnProcess(command!, [...prefix, ...args], { name: 'anyturn' });
    try {
      await waitForLogMessage(proc, 'anyturn ready', READY_DEADLINE_MS);
    } catch (error) {
      await proc.stop('SIGKILL');
      const retryable = ADDRESS_IN_USE.test(proc.stdout() + proc.stderr());
      if (retryable && attempt < 3 && options.listeningPort === undefined) continue;
      throw error;
    }
    return { kind: 'anyturn', process: proc, host, port, tlsPort, relayPorts, stop: () => proc.stop() };
  }
}

// ---------------------------------------------------------------------------
// coturn (reference server for validating the harness and the tests)

/**
 * Starts coturn's turnserver with the same meaning as the anyturn options
 * (long-term credentials, UDP+TCP, no TLS/DTLS, no CLI) and waits until it
 * answers a Binding request.
 */
export async function startCoturn(options: TurnServerOptions = {}): Promise<RunningTurnServer> {
  const host = options.listeningIps?.[0] ?? LOOPBACK_V4;
  for (let attempt = 0; ; attempt++) {
    const port = options.listeningPort ?? (await findFreePort(host));
    const relayPorts = options.relayPorts ?? (await reserveRelayPortRange());
    const tlsPort = options.tls ? (options.tls.port ?? (await findFreeTcpPort(host))) : undefined;
    // coturn writes a pid file (default /var/run/turnserver.pid); give each
    // instance its own so parallel instances don't clobber each other.
    const workDir = mkdtempSync(join(tmpdir(), 'anyturn-coturn-'));
    const args = ['-n'];
    for (const ip of options.listeningIps ?? [LOOPBACK_V4]) args.push('--listening-ip', ip);
    args.push('--listening-port', String(port));
    args.push('--relay-ip', options.relayIp ?? LOOPBACK_V4);
    args.push('--min-port', String(relayPorts.min), '--max-port', String(relayPorts.max));
    if (options.staticAuthSecret !== undefined) {
      args.push('--use-auth-secret', '--static-auth-secret', options.staticAuthSecret);
    } else {
      args.push('--lt-cred-mech');
    }
    for (const user of options.users ?? []) args.push('--user', `${user.name}:${user.password}`);
    if (options.realm !== undefined) args.push('--realm', options.realm);
    if (options.allowLoopbackPeers === true) args.push('--allow-loopback-peers');
    for (const range of options.allowedPeerIps ?? []) args.push('--allowed-peer-ip', range);
    for (const range of options.deniedPeerIps ?? []) args.push('--denied-peer-ip', range);
    if (options.userQuota !== undefined) args.push('--user-quota', String(options.userQuota));
    if (options.totalQuota !== undefined) args.push('--total-quota', String(options.totalQuota));
    if (options.tcp === false) args.push('--no-tcp');
    if (options.tls) args.push('--cert', options.tls.certFile, '--pkey', options.tls.keyFile, '--tls-listening-port', String(tlsPort));
    else args.push('--no-tls');
    args.push('--no-dtls', '--cli-password=x', '--no-cli');
    args.push('--log-file', 'stdout', '--simple-log', '--pidfile', join(workDir, 'turnserver.pid'));
    args.push(...(options.extraArgs ?? []));
    const proc = spawnProcess('turnserver', args, { name: 'coturn', cwd: workDir });
    void proc.exited.then(() => rmSync(workDir, { recursive: true, force: true }));
    try {
      await waitForStunBinding(host, port, READY_DEADLINE_MS, () => proc.isRunning());
    } catch (error) {
      await proc.stop('SIGKILL');
      const retryable = /Address already in use|Cannot bind/i.test(proc.stdout() + proc.stderr());
      if (retryable && attempt < 3 && options.listeningPort === undefined) continue;
      throw new Error(`${(error as Error).message}\n${proc.outputTail()}`);
    }
    return { kind: 'coturn', process: proc, host, port, tlsPort, relayPorts, stop: () => proc.stop() };
  }
}

/**
 * The server under test: anyturn, or coturn when ANYTURN_INTEROP_TARGET=coturn
 * (used to check that a test and its output parsing are right before blaming
 * anyturn for a failure).
 */
export function startTurnServerUnderTest(options: TurnServerOptions = {}): Promise<RunningTurnServer> {
  return process.env.ANYTURN_INTEROP_TARGET === 'coturn' ? startCoturn(options) : startAnyturn(options);
}

// ---------------------------------------------------------------------------
// turnutils_peer (UDP echo peer from coturn)

export interface RunningPeer {
  readonly process: SpawnedProcess;
  readonly host: string;
  readonly port: number;
  stop(): Promise<ProcessExit>;
}

/** `turnutils_peer -L host -p port`; resolves once it echoes a datagram. */
export async function startTurnutilsPeer(host: string = LOOPBACK_V4): Promise<RunningPeer> {
  for (let attempt = 0; ; attempt++) {
    const port = await findFreeUdpPort(host);
    const proc = spawnProcess('turnutils_peer', ['-L', host, '-p', String(port)], { name: 'turnutils_peer' });
    try {
      await waitForUdpEcho(host, port, () => proc.isRunning());
      return { process: proc, host, port, stop: () => proc.stop() };
    } catch (error) {
      await proc.stop('SIGKILL');
      if (attempt < 3) continue;
      throw new Error(`${(error as Error).message}\n${proc.outputTail()}`);
    }
  }
}

async function waitForUdpEcho(host: string, port: number, isAlive: () => boolean): Promise<void> {
  const socket = await bindUdp(0, host);
  const probe = randomBytes(16);
  try {
    await new Promise<void>((resolve, reject) => {
      const started = Date.now();
      socket.on('message', (msg) => {
        if (msg.equals(probe)) {
          clearInterval(timer);
          resolve();
        }
      });
      const tick = (): void => {
        if (!isAlive()) {
          clearInterval(timer);
          reject(new Error(`echo peer on ${host}:${port} exited`));
        } else if (Date.now() - started > READY_DEADLINE_MS) {
          clearInterval(timer);
          reject(new Error(`echo peer on ${host}:${port} never echoed`));
        } else {
          socket.send(probe, port, host);
        }
      };
      const timer = setInterval(tick, 100);
      tick();
    });
  } finally {
    await closeUdp(socket);
  }
}

// A throwaway redis-server for integration tests: loopback only, a free port,
// no persistence. stop() kills it; restart() starts it again on the same port
// (for outage tests). Servers still running when the test process exits are
// killed synchronously.

import { spawn, type ChildProcess } from 'node:child_process';
import { mkdirSync, mkdtempSync, rmSync } from 'node:fs';
import net from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

export const REDIS_SERVER_PATH = process.env.REDIS_SERVER_PATH ?? '/usr/bin/redis-server';

// Deadlines only bound how long a broken server can hang a test.
const READY_DEADLINE_MS = 10_000;
const STOP_GRACE_MS = 5_000;

export interface RedisServerHandle {
  readonly port: number;
  /** redis://127.0.0.1:<port> */
  readonly url: string;
  /** Kills the server (idempotent); the port stays this handle's for restart(). */
  stop(): Promise<void>;
  /** Starts the server again on the same port (empty: there is no persistence). */
  restart(): Promise<void>;
  /** Freezes the server (SIGSTOP): connections stay open, nothing answers. */
  pause(): void;
  /** Undoes pause() (SIGCONT). */
  resume(): void;
  isRunning(): boolean;
  /** Last lines the server printed, for assertion messages. */
  output(): string;
}

const live = new Set<ChildProcess>();
let exitHookInstalled = false;

/** Kills `child` with SIGKILL if this test process exits while it still runs; returns it. */
export function killOnExit(child: ChildProcess): ChildProcess {
  if (!exitHookInstalled) {
    exitHookInstalled = true;
    process.on('exit', () => {
      for (const c of live) {
        try {
          c.kill('SIGKILL');
        } catch {
          // already gone
        }
      }
    });
  }
  live.add(child);
  child.once('exit', () => live.delete(child));
  child.once('error', () => live.delete(child)); // never started
  return child;
}

/** True while a child registered with killOnExit has not exited. */
export function isLive(child: ChildProcess): boolean {
  return live.has(child);
}

/** A port nobody listens on right now: bind port 0, read it, close. (redis-server refuses --port 0.) */
export function findFreePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = net.createServer();
    server.unref();
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => {
      const address = server.address();
      if (address === null || typeof address === 'string') {
        server.close();
        reject(new Error('no port from listen(0)'));
        return;
      }
      const { port } = address;
      server.close(() => resolve(port));
    });
  });
}

/** One PING over a raw socket: true when the server answers +PONG. */
export function ping(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const socket = net.connect({ host: '127.0.0.1', port });
    let answer = '';
    const done = (ok: boolean): void => {
      socket.destroy();
      resolve(ok);
    };
    socket.setTimeout(500, () => done(false));
    socket.once('error', () => done(false));
    socket.once('connect', () => socket.write('PING\r\n'));
    socket.on('data', (chunk: Buffer) => {
      answer += chunk.toString('latin1');
      if (answer.includes('\r\n')) done(answer.startsWith('+PONG'));
    });
  });
}

export function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

/** A throwaway redis-server on 127.0.0.1:`port`: no persistence, quiet, in the foreground. */
export function redisServerArgs(port: number, dir: string, extra: string[] = []): string[] {
  return [
    '--port',
    String(port),
    '--bind',
    '127.0.0.1',
    '--save',
    '',
    '--appendonly',
    'no',
    '--daemonize',
    'no',
    '--protected-mode',
    'no',
    '--dir',
    dir,
    '--loglevel',
    'warning',
    ...extra,
  ];
}

export async function startRedisServer(): Promise<RedisServerHandle> {
  const port = await findFreePort();
  const dir = mkdtempSync(join(tmpdir(), 'anyturn-redis-'));
  let child: ChildProcess | undefined;
  let exited: Promise<void> = Promise.resolve();
  let tail = '';

  const launch = async (): Promise<void> => {
    mkdirSync(dir, { recursive: true }); // stop() removes it; restart() comes back here
    const proc = spawn(REDIS_SERVER_PATH, redisServerArgs(port, dir), { stdio: ['ignore', 'pipe', 'pipe'] });
    child = killOnExit(proc);
    const keep = (chunk: Buffer): void => {
      tail = (tail + chunk.toString('utf8')).slice(-4_000);
    };
    proc.stdout?.on('data', keep);
    proc.stderr?.on('data', keep);
    exited = new Promise<void>((resolve) => {
      proc.once('exit', () => {
        live.delete(proc);
        resolve();
      });
      proc.once('error', (err) => {
        tail += `\nspawn error: ${err.message}`;
        live.delete(proc);
        resolve();
      });
    });
    const deadline = Date.now() + READY_DEADLINE_MS;
    while (!(await ping(port))) {
      if (!live.has(proc)) throw new Error(`redis-server exited before answering PING on ${port}:\n${tail}`);
      if (Date.now() > deadline) {
        await stop();
        throw new Error(`redis-server did not answer PING on ${port} within ${READY_DEADLINE_MS} ms:\n${tail}`);
      }
      await sleep(20);
    }
  };

  const stop = async (): Promise<void> => {
    const proc = child;
    child = undefined;
    if (!proc || !live.has(proc)) return;
    proc.kill('SIGTERM');
    proc.kill('SIGCONT'); // a paused server only sees the SIGTERM once it runs again
    const timer = setTimeout(() => proc.kill('SIGKILL'), STOP_GRACE_MS);
    await exited;
    clearTimeout(timer);
  };

  await launch();
  return {
    port,
    url: `redis://127.0.0.1:${port}`,
    async stop() {
      await stop();
      rmSync(dir, { recursive: true, force: true });
    },
    async restart() {
      await stop();
      await launch();
    },
    pause: () => {
      child?.kill('SIGSTOP');
    },
    resume: () => {
      child?.kill('SIGCONT');
    },
    isRunning: () => child !== undefined && live.has(child),
    output: () => tail,
  };
}

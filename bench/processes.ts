// Child processes of the benchmark: every one is tracked so that it is stopped
// on success, on failure and on Ctrl-C. Nothing here kills by name.
import { spawn, execFileSync, type ChildProcess } from 'node:child_process';
import { readFileSync, readdirSync, rmSync } from 'node:fs';

export interface TrackedProcess {
  readonly name: string;
  readonly child: ChildProcess;
  readonly pid: number;
  /** Last lines of stdout+stderr, for evidence when something fails. */
  readonly tail: () => string[];
  /** Full stdout+stderr so far. */
  readonly output: () => string;
  /** Resolves with the exit code (or signal name) once the process has exited. */
  readonly exited: Promise<number | string>;
  readonly hasExited: () => boolean;
  /** Resolves true when a line matching `re` appears, false on exit or timeout. */
  readonly waitForLine: (re: RegExp, timeoutMs: number) => Promise<boolean>;
}

const TAIL_LINES = 200;
const STOP_GRACE_MS = 3000;

export class ProcessGroup {
  readonly #alive = new Set<TrackedProcess>();

  /**
   * Starts `command args` pinned to `cpus` (a core, or a list like '0,1') with taskset (taskset execs, so the pid is the
   * command's); `cpus` undefined: not pinned. `stdin` true: a pipe the caller writes (TrackedProcess.child.stdin).
   */
  start(name: string, cpus: number | string | undefined, command: string, args: readonly string[], stdin = false): TrackedProcess {
    const argv = cpus === undefined ? [command, ...args] : ['taskset', '-c', String(cpus), command, ...args];
    const child = spawn(argv[0]!, argv.slice(1), {
      stdio: [stdin ? 'pipe' : 'ignore', 'pipe', 'pipe'],
    });
    // EPIPE on a write after the child died is reported by the exit, not as an uncaught error.
    child.stdin?.on('error', () => undefined);
    if (child.pid === undefined) {
      throw new Error(`${name}: spawn of ${command} failed`);
    }
    const pid = child.pid;
    const lines: string[] = [];
    const chunks: string[] = [];
    const listeners = new Set<(line: string) => void>();
    let partial = '';
    let done = false;
    const onData = (buf: Buffer): void => {
      const text = buf.toString('utf8');
      chunks.push(text);
      const parts = (partial + text).split('\n');
      partial = parts.pop() ?? '';
      for (const line of parts) {
        lines.push(line);
        if (lines.length > TAIL_LINES) lines.shift();
        for (const l of listeners) l(line);
      }
    };
    child.stdout?.on('data', onData);
    child.stderr?.on('data', onData);
    const exited = new Promise<number | string>((resolve) => {
      child.on('error', (err) => {
        done = true;
        chunks.push(`\n[spawn error] ${err.message}\n`);
        resolve(`error: ${err.message}`);
      });
      child.on('exit', (code, signal) => {
        done = true;
        resolve(code ?? signal ?? 'unknown');
      });
    });
    const tracked: TrackedProcess = {
      name,
      child,
      pid,
      tail: () => (partial === '' ? [...lines] : [...lines, partial]),
      output: () => chunks.join(''),
      exited,
      hasExited: () => done,
      waitForLine: (re, timeoutMs) =>
        new Promise<boolean>((resolve) => {
          if (lines.some((l) => re.test(l))) {
            resolve(true);
            return;
          }
          const finish = (ok: boolean): void => {
            listeners.delete(onLine);
            clearTimeout(timer);
            resolve(ok);
          };
          const onLine = (line: string): void => {
            if (re.test(line)) finish(true);
          };
          const timer = setTimeout(() => finish(false), timeoutMs);
          listeners.add(onLine);
          void exited.then(() => finish(false));
        }),
    };
    this.#alive.add(tracked);
    void exited.then(() => this.#alive.delete(tracked));
    return tracked;
  }

  /** SIGTERM, then SIGKILL after a grace period. */
  async stop(p: TrackedProcess): Promise<void> {
    if (p.hasExited()) return;
    p.child.kill('SIGTERM');
    const timer = setTimeout(() => {
      if (!p.hasExited()) p.child.kill('SIGKILL');
    }, STOP_GRACE_MS);
    await p.exited;
    clearTimeout(timer);
  }

  async stopAll(): Promise<void> {
    await Promise.all([...this.#alive].map((p) => this.stop(p)));
  }

  /** Last resort from a synchronous 'exit' handler. */
  killAllNow(): void {
    for (const p of this.#alive) {
      if (!p.hasExited()) p.child.kill('SIGKILL');
    }
  }
}

let clockTicksPerSecond: number | undefined;

export function clkTck(): number {
  if (clockTicksPerSecond === undefined) {
    const out = execFileSync('getconf', ['CLK_TCK'], { encoding: 'utf8' }).trim();
    const n = Number(out);
    if (!Number.isInteger(n) || n <= 0) throw new Error(`getconf CLK_TCK returned '${out}'`);
    clockTicksPerSecond = n;
  }
  return clockTicksPerSecond;
}

/** utime+stime of the whole process (all threads) in µs, from /proc/PID/stat. */
export function cpuMicros(pid: number): number {
  const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
  // comm (field 2) may contain spaces or ')': split after the last ')'.
  const rest = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  // rest[0] is field 3 (state), so utime (field 14) is rest[11] and stime (15) is rest[12].
  const utime = Number(rest[11]);
  const stime = Number(rest[12]);
  if (!Number.isFinite(utime) || !Number.isFinite(stime)) {
    throw new Error(`cannot parse /proc/${pid}/stat`);
  }
  return ((utime + stime) * 1_000_000) / clkTck();
}

/** The pid and all its descendants (anyturn --workers: the primary's forked workers). */
export function processTree(pid: number): number[] {
  const children = new Map<number, number[]>();
  for (const entry of readdirSync('/proc')) {
    if (!/^\d+$/.test(entry)) continue;
    let stat: string;
    try {
      stat = readFileSync(`/proc/${entry}/stat`, 'utf8');
    } catch {
      continue; // gone meanwhile
    }
    const ppid = Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[1]);
    const list = children.get(ppid) ?? [];
    list.push(Number(entry));
    children.set(ppid, list);
  }
  const out: number[] = [];
  const todo = [pid];
  while (todo.length > 0) {
    const p = todo.pop()!;
    out.push(p);
    todo.push(...(children.get(p) ?? []));
  }
  return out;
}

/** utime+stime in µs of a process and every live descendant. */
export function treeCpuMicros(pid: number): number {
  let sum = 0;
  for (const p of processTree(pid)) {
    try {
      sum += cpuMicros(p);
    } catch (err) {
      if (p === pid) throw err;
    }
  }
  return sum;
}

/** Like cpuUserSystemMicros, over a process and every live descendant. */
export function treeCpuUserSystemMicros(pid: number): { readonly user: number; readonly system: number } {
  let user = 0;
  let system = 0;
  for (const p of processTree(pid)) {
    try {
      const one = cpuUserSystemMicros(p);
      user += one.user;
      system += one.system;
    } catch (err) {
      if (p === pid) throw err;
    }
  }
  return { user, system };
}

/** Cpus_allowed_list from /proc/PID/status, to record that pinning took effect. */
export function cpusAllowed(pid: number): string {
  const status = readFileSync(`/proc/${pid}/status`, 'utf8');
  const m = /^Cpus_allowed_list:\s*(\S+)/m.exec(status);
  return m?.[1] ?? 'unknown';
}

/** Number of threads of the process. */
export function threadCount(pid: number): number {
  const status = readFileSync(`/proc/${pid}/status`, 'utf8');
  const m = /^Threads:\s*(\d+)/m.exec(status);
  return m?.[1] === undefined ? 0 : Number(m[1]);
}

/** cpuMicros, or undefined if the process is gone or /proc cannot be read. */
export function safeCpuMicros(pid: number): number | undefined {
  try {
    return cpuMicros(pid);
  } catch {
    return undefined;
  }
}

/** A "NAME: N kB" field of /proc/PID/status (VmRSS, ...). */
export function statusKb(pid: number, field: string): number | undefined {
  try {
    const m = new RegExp(`^${field}:\\s*(\\d+)\\s*kB`, 'm').exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
    return m?.[1] === undefined ? undefined : Number(m[1]);
  } catch {
    return undefined;
  }
}

/** Open file descriptors: entries in /proc/PID/fd. */
export function fdCount(pid: number): number | undefined {
  try {
    return readdirSync(`/proc/${pid}/fd`).length;
  } catch {
    return undefined;
  }
}

/** "soft/hard" of Max open files from /proc/PID/limits. */
export function nofileLimit(pid: number): string | undefined {
  try {
    const m = /^Max open files\s+(\S+)\s+(\S+)/m.exec(readFileSync(`/proc/${pid}/limits`, 'utf8'));
    return m ? `${m[1]}/${m[2]}` : undefined;
  } catch {
    return undefined;
  }
}

/**
 * UDP RcvbufErrors from /proc/net/snmp: datagrams dropped because a socket's receive
 * buffer was full. Counted for the whole network namespace, not per process.
 */
export function udpReceiveBufferErrors(): number | undefined {
  const lines = readFileSync('/proc/net/snmp', 'utf8')
    .split('\n')
    .filter((l) => l.startsWith('Udp: '));
  const names = lines[0]?.split(/\s+/);
  const values = lines[1]?.split(/\s+/);
  if (names === undefined || values === undefined) return undefined;
  const i = names.indexOf('RcvbufErrors');
  const v = i < 0 ? undefined : values[i];
  return v === undefined ? undefined : Number(v);
}

/** utime and stime of the whole process (all threads) in µs: user space and kernel (syscalls, loopback delivery). */
export function cpuUserSystemMicros(pid: number): { readonly user: number; readonly system: number } {
  const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
  const rest = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  const user = Number(rest[11]);
  const system = Number(rest[12]);
  if (!Number.isFinite(user) || !Number.isFinite(system)) throw new Error(`cannot parse /proc/${pid}/stat`);
  const tick = 1_000_000 / clkTck();
  return { user: user * tick, system: system * tick };
}

/**
 * On SIGINT/SIGTERM stops every process of the group, removes the scratch
 * directory and exits 130; on any exit kills what is left at once.
 */
export function stopOnSignals(group: ProcessGroup, scratchDir: string): { readonly interrupted: boolean } {
  let interrupted = false;
  const onSignal = (signal: NodeJS.Signals): void => {
    if (interrupted) return;
    interrupted = true;
    console.error(`\n${signal}: stopping all benchmark processes`);
    void group.stopAll().finally(() => {
      rmSync(scratchDir, { recursive: true, force: true });
      process.exit(130);
    });
  };
  process.on('SIGINT', onSignal);
  process.on('SIGTERM', onSignal);
  process.on('exit', () => group.killAllNow());
  return {
    get interrupted() {
      return interrupted;
    },
  };
}

// The anyturn-dataplane helper process (native/dataplane/loader.c): spawned with the
// object file, the map size and the interfaces; one command per stdin line, one answer
// per command on stdout, in order (docs/dataplane.md, "The helper's protocol").

import { type ChildProcessWithoutNullStreams, spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

/** Why the kernel path cannot be used; `reason` is one line an operator can act on. */
export class DataplaneUnavailableError extends Error {
  readonly reason: string;
  constructor(reason: string) {
    super(`kernel dataplane unavailable: ${reason}`);
    this.name = 'DataplaneUnavailableError';
    this.reason = reason;
  }
}

/** build/dataplane of this checkout or package (dist/src/dataplane/kernel -> the root). */
export function defaultBuildDir(): string {
  return path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../../../build/dataplane');
}

export interface HelperOptions {
  readonly interfaces: readonly string[];
  readonly maxEntries: number;
  readonly buildDir: string;
  /** Run the helper in this network namespace (`ip netns exec`); for tests. */
  readonly namespace?: string;
}

type Answer = (error: string | undefined, fields: string[]) => void;

const READY_DEADLINE_MS = 30_000;

/** One running helper. Commands are answered in the order they were written. */
export class Helper {
  private readonly pending: Answer[] = [];
  private partial = '';
  private stderrTail = '';
  private exited = false;
  private readonly exitWaiters: (() => void)[] = [];
  /** Called once when the helper exits (whatever the cause), with a reason. */
  onExit: ((reason: string) => void) | undefined;

  private constructor(private readonly child: ChildProcessWithoutNullStreams) {}

  get pid(): number {
    return this.child.pid ?? -1;
  }

  get running(): boolean {
    return !this.exited;
  }

  /** Starts the helper and waits for its ready line; rejects with DataplaneUnavailableError. */
  static start(options: HelperOptions): Promise<Helper> {
    const object = path.join(options.buildDir, 'relay.bpf.o');
    const binary = path.join(options.buildDir, 'anyturn-dataplane');
    for (const file of [object, binary]) {
      if (!existsSync(file)) {
        return Promise.reject(new DataplaneUnavailableError(`${file} is not built: run \`npm run build:dataplane\` with clang and libbpf-dev installed`));
      }
    }
    if (options.interfaces.length === 0) return Promise.reject(new DataplaneUnavailableError('no interface to attach to'));
    const args = [object, String(options.maxEntries), ...options.interfaces];
    const child =
      options.namespace === undefined
        ? spawn(binary, args, { stdio: ['pipe', 'pipe', 'pipe'] })
        : spawn('ip', ['netns', 'exec', options.namespace, binary, ...args], { stdio: ['pipe', 'pipe', 'pipe'] });
    const helper = new Helper(child);
    return helper.waitReady();
  }

  private waitReady(): Promise<Helper> {
    return new Promise((resolve, reject) => {
      let settled = false;
      const timer = setTimeout(() => {
        settle(new DataplaneUnavailableError(`the helper did not start within ${READY_DEADLINE_MS} ms`));
        this.child.kill('SIGKILL');
      }, READY_DEADLINE_MS);
      const settle = (err?: Error): void => {
        if (settled) return;
        settled = true;
        clearTimeout(timer);
        if (err) reject(err);
        else resolve(this);
      };
      // The first line is "ready ..." or "error <reason>"; later lines answer commands.
      this.pending.push((error) => settle(error === undefined ? undefined : new DataplaneUnavailableError(error)));
      this.child.stdout.setEncoding('utf8').on('data', (chunk: string) => this.onData(chunk));
      this.child.stderr.setEncoding('utf8').on('data', (chunk: string) => {
        this.stderrTail = (this.stderrTail + chunk).slice(-2000);
      });
      this.child.stdin.on('error', () => undefined); // EPIPE after an exit: reported by 'exit'
      this.child.once('error', (err) => this.finish(`cannot run the helper: ${err.message}`));
      // 'close', not 'exit': the last stdout line (an error) is read by then.
      this.child.once('close', (code, signal) => this.finish(`the helper exited (${String(code ?? signal)})`));
    });
  }

  private lastWords(fallback: string): string {
    const line = this.stderrTail.trim().split('\n').pop();
    return line ? `${fallback}: ${line}` : fallback;
  }

  private onData(chunk: string): void {
    this.partial += chunk;
    let nl = this.partial.indexOf('\n');
    while (nl >= 0) {
      const line = this.partial.slice(0, nl);
      this.partial = this.partial.slice(nl + 1);
      const answer = this.pending.shift();
      const [head = '', ...fields] = line.split(' ');
      if (answer) answer(head === 'ok' || head === 'ready' ? undefined : line.replace(/^(err|error) /, ''), fields);
      nl = this.partial.indexOf('\n');
    }
  }

  private finish(reason: string): void {
    if (this.exited) return;
    this.exited = true;
    reason = this.lastWords(reason);
    for (const answer of this.pending.splice(0)) answer(reason, []);
    for (const waiter of this.exitWaiters.splice(0)) waiter();
    this.onExit?.(reason);
  }

  /** Writes one command; `answer` gets its answer (or the exit reason). */
  send(line: string, answer: Answer): void {
    if (this.exited) {
      answer('the helper is not running', []);
      return;
    }
    this.pending.push(answer);
    this.child.stdin.write(`${line}\n`);
  }

  /** Sends one command and resolves with its fields; rejects with the helper's error. */
  request(line: string): Promise<string[]> {
    return new Promise((resolve, reject) => this.send(line, (error, fields) => (error === undefined ? resolve(fields) : reject(new Error(error)))));
  }

  /** Asks the helper to detach and exit; resolves when it has (SIGKILL after a grace period). */
  stop(graceMs = 5000): Promise<void> {
    if (this.exited) return Promise.resolve();
    const gone = new Promise<void>((resolve) => this.exitWaiters.push(resolve));
    this.child.stdin.end('quit\n');
    const timer = setTimeout(() => this.child.kill('SIGKILL'), graceMs);
    return gone.then(() => clearTimeout(timer));
  }
}

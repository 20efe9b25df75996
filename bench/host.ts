// The bench process itself and the machine it runs on: where the repository is,
// which tools are on PATH, which core the bench and the servers get, the watchdog
// that bounds a whole run, and how an entry point exits. Shared by bench/run.ts
// and bench/allocations.ts.
import { existsSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { spawnSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';

import type { ProcessGroup } from './processes.js';

/** The server under test runs on this core (taskset -c). */
export const SERVER_CPU = 1;
/** The load generators, the peer and the bench process itself run on this one. */
export const CLIENT_CPU = 0;

export function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

export function findRepoRoot(): string {
  let dir = dirname(fileURLToPath(import.meta.url));
  for (let i = 0; i < 5; i++) {
    if (existsSync(join(dir, 'package.json'))) return dir;
    dir = dirname(dir);
  }
  throw new Error('cannot find package.json above the bench script');
}

function haveCommand(name: string): boolean {
  return spawnSync('sh', ['-c', `command -v ${name}`], { stdio: 'ignore' }).status === 0;
}

/** Throws naming the first tool that is not on PATH. */
export function requireCommands(tools: readonly string[]): void {
  for (const tool of tools) {
    if (!haveCommand(tool)) throw new Error(`'${tool}' is not on PATH`);
  }
}

/** The bench process (all its threads) belongs with the load generators, on CLIENT_CPU. */
export function pinSelfToClientCpu(): void {
  spawnSync('taskset', ['-a', '-p', '-c', String(CLIENT_CPU), String(process.pid)], { stdio: 'ignore' });
}

/** `command args` stdout, trimmed: a tool's version for the JSON. */
export function commandOutput(command: string, args: readonly string[] = []): string {
  return spawnSync(command, args, { encoding: 'utf8' }).stdout.trim();
}

/** Hard bound on a whole run, whatever happens inside: kills the group and exits 124. */
export function startWatchdog(group: ProcessGroup, budgetMs: number, message: string): NodeJS.Timeout {
  const watchdog = setTimeout(() => {
    console.error(message);
    group.killAllNow();
    process.exit(124);
  }, budgetMs);
  watchdog.unref();
  return watchdog;
}

/** Runs an entry point's main and exits with its status; an error is printed as its message, status 1. */
export function runMain(main: () => Promise<number>): void {
  main().then(
    (code) => process.exit(code),
    (err: unknown) => {
      console.error(err instanceof Error ? err.message : err);
      process.exit(1);
    },
  );
}

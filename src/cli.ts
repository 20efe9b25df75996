#!/usr/bin/env node
// The command line: turns flags and ANYTURN_* environment variables (the flag table,
// src/config/flags.ts) into a ServerConfig, starts the server, and stops it on
// SIGTERM/SIGINT. SIGUSR1 drains (new Allocates get 403, live allocations go on), as in coturn.

import { hideBin } from 'yargs/helpers';
import cluster from 'node:cluster';
import { parseArgs } from './config/args.js';
import { type ServerConfig, buildConfig } from './config/index.js';
import { openFileLimitWarning, readOpenFileLimit } from './ops/fd-limit.js';
import { createSyncLogger } from './ops/log.js';
import { type RunningServer, startServer } from './server.js';
import { type RunningPrimary, startPrimary } from './workers/primary.js';
import { runWorker } from './workers/worker.js';

async function main(): Promise<void> {
  // Installed first: without a listener, SIGUSR1 makes Node open its inspector. A drain
  // asked for while starting up takes effect once the server runs.
  let drainNow: (() => void) | undefined;
  let drainAsked = false;
  process.on('SIGUSR1', () => {
    drainAsked = true;
    drainNow?.();
  });
  let config: ServerConfig;
  try {
    config = buildConfig(parseArgs(hideBin(process.argv)));
  } catch (err) {
    process.stderr.write(`anyturn: ${(err as Error).message}\nRun anyturn --help for the list of flags.\n`);
    process.exit(2);
  }
  if (config.workers > 1 && cluster.isWorker) {
    // Forked by the primary with the same flags: it sends what else this worker needs, and stops it.
    await runWorker(config, createSyncLogger(config.logLevel));
    return;
  }
  // Once per node (not per worker): what the configuration may open against RLIMIT_NOFILE.
  const limit = readOpenFileLimit();
  const short = limit && openFileLimitWarning(config, limit);
  if (limit && short) createSyncLogger(config.logLevel).warn({ openFileLimit: limit.soft, hardLimit: limit.hard, ...short.needs }, short.message);
  let server: RunningServer | RunningPrimary;
  try {
    server = config.workers > 1 ? await startPrimary(config, createSyncLogger(config.logLevel).child({ role: 'primary' })) : await startServer(config);
  } catch (err) {
    const e = err as NodeJS.ErrnoException & { address?: string; port?: number };
    const where = e.address !== undefined ? ` on ${e.address}:${e.port}` : '';
    process.stderr.write(`anyturn: cannot start: ${e.code ?? ''} ${e.message}${where}\n`);
    process.exit(1);
  }
  const running = server;
  let shuttingDown = false;
  const shutdown = (why: string): void => {
    if (shuttingDown) return;
    shuttingDown = true;
    // Bounded: a store that hangs on the way out must not keep the process (and its ports) alive.
    const force = setTimeout(() => {
      process.stderr.write(`anyturn: graceful stop (${why}) took over --shutdown-timeout ${config.shutdownTimeoutSeconds} s; exiting\n`);
      process.exit(1);
    }, config.shutdownTimeoutSeconds * 1000);
    force.unref();
    running
      .stop()
      .then(() => process.exit(0))
      .catch(() => process.exit(1));
  };
  process.once('SIGTERM', () => shutdown('SIGTERM'));
  process.once('SIGINT', () => shutdown('SIGINT'));
  drainNow = () => running.drain('SIGUSR1');
  if (drainAsked) drainNow();
  // --drain-exit: however the drain began (SIGUSR1, POST /drain), leave once the last allocation is gone.
  if (config.drainExit) void running.drained().then(() => shutdown('drained'));
}

await main();

// The one place pino is imported: everything else receives a logger.

import { pino, type DestinationStream, type Logger } from 'pino';

export type { Logger };

export const LOG_LEVELS = ['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent'] as const;
export type LogLevel = (typeof LOG_LEVELS)[number];

export function createLogger(level: LogLevel, destination?: DestinationStream): Logger {
  const options = { level, base: { service: 'anyturn' }, timestamp: pino.stdTimeFunctions.isoTime };
  return destination ? pino(options, destination) : pino(options);
}

/**
 * A logger that has written each line to stdout before the call returns. `--workers`
 * processes share one stdout: with pino's default asynchronous writes, a worker's
 * 'anyturn worker ready' could land after the primary's 'anyturn ready', which it
 * precedes. Their lines are few (no per-packet logging), so the cost does not show.
 */
export function createSyncLogger(level: LogLevel): Logger {
  return createLogger(level, pino.destination({ dest: 1, sync: true }));
}

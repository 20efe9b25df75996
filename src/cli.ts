#!/usr/bin/env node
// The command line: turns flags and ANYTURN_* environment variables into a
// ServerConfig, starts the server, and stops it on SIGTERM/SIGINT.

import yargs from 'yargs';
import { hideBin } from 'yargs/helpers';
import { ConfigError, buildConfig, type RawOptions } from './config.js';
import { LOG_LEVELS } from './ops/log.js';
import { startServer } from './server.js';

const SHUTDOWN_GRACE_MS = 5000;

export function parseArgs(argv: string[]): RawOptions {
  const parsed = yargs(argv)
    .scriptName('anyturn')
    .usage('$0 [options]\n\nA TURN relay server (RFC 8656) for one relay per PoP behind an anycast IP.')
    .epilogue(
      'Every flag is also an environment variable: --listening-port -> ANYTURN_LISTENING_PORT.\n' +
        'From the environment, repeatable address flags take a comma-separated list.',
    )
    .env('ANYTURN')
    .strict()
    // Numeric flags carry no yargs type: `type: 'number'` turns 'abc' into NaN and loses the
    // text; untyped, yargs still converts numerals, and buildConfig names anything else as given.
    .group(['listening-ip', 'listening-port', 'relay-ip', 'min-port', 'max-port'], 'Network:')
    .option('listening-ip', { type: 'string', array: true, describe: 'Address to listen on (repeatable). Default: every local IPv4 address, each bound on its own so answers leave from the address the client used' })
    .option('listening-port', { describe: 'UDP port for STUN/TURN', default: 3478 })
    .option('relay-ip', { type: 'string', array: true, describe: 'Address relayed transport addresses are allocated on (one IPv4, optionally one IPv6). Default: the first non-loopback listening IPv4' })
    .option('min-port', { describe: 'Lowest relay port', default: 49152 })
    .option('max-port', { describe: 'Highest relay port', default: 65535 })
    .group(['realm', 'user', 'userdb', 'use-auth-secret', 'static-auth-secret', 'nonce-secret', 'nonce-lifetime'], 'Authentication (long-term credentials):')
    .option('realm', { type: 'string', describe: 'Realm of the long-term credentials', default: 'anyturn' })
    .option('user', { type: 'string', array: true, describe: 'Static user name:password (repeatable); a password written 0x<32 hex> is the MD5 key itself' })
    .option('userdb', { type: 'string', describe: 'File of name:password lines (# comments allowed)' })
    .option('use-auth-secret', { type: 'boolean', describe: 'Accept time-limited credentials (TURN REST API): username "expiry[:id]", password base64(HMAC-SHA1(secret, username))' })
    .option('static-auth-secret', { type: 'string', array: true, describe: 'Shared secret for --use-auth-secret (repeatable, for rotation)' })
    .option('nonce-secret', { type: 'string', describe: 'Secret for stateless nonces; give every node the same one so nonces survive a reroute. Default: random at start' })
    .option('nonce-lifetime', { describe: 'Seconds a nonce stays valid before 438 Stale Nonce', default: 600 })
    .group(['allow-loopback-peers', 'allowed-peer-ip', 'denied-peer-ip', 'user-quota', 'total-quota', 'max-allocate-lifetime'], 'Peer policy and quotas:')
    .option('allow-loopback-peers', { type: 'boolean', describe: 'Allow relaying to 127.0.0.0/8 and ::1 (tests, development)', default: false })
    .option('allowed-peer-ip', { type: 'string', array: true, describe: 'Peer range to allow even if denied by default: IP, CIDR or first-last (repeatable)' })
    .option('denied-peer-ip', { type: 'string', array: true, describe: 'Extra peer range to refuse with 403 (repeatable)' })
    .option('user-quota', { describe: 'Allocations per username (0 = unlimited); more get 486', default: 0 })
    .option('total-quota', { describe: 'Allocations on this node (0 = unlimited); more get 508', default: 0 })
    .option('max-allocate-lifetime', { describe: 'Longest allocation lifetime granted, in seconds', default: 3600 })
    .group(['redis-url', 'mesh-address', 'cluster-secret', 'cluster-lookup-rate'], 'Cluster (anycast; forward mode):')
    .option('redis-url', { type: 'string', describe: 'Shared allocation store (redis:// or rediss://). Without it: the in-memory store, one node' })
    .option('mesh-address', { type: 'string', describe: 'This node\'s unicast ip:port for node-to-node forwarding (required with --redis-url)' })
    .option('cluster-secret', { type: 'string', describe: 'Secret shared by every node: authenticates mesh frames, and keys nonces unless --nonce-secret is given' })
    .option('cluster-lookup-rate', { describe: 'Store lookups per second for packets from unknown 5-tuples (junk can\'t hammer Redis)', default: 500 })
    .group(['node-id', 'metrics-ip', 'metrics-port', 'log-level', 'software'], 'Operations:')
    .option('metrics-ip', { type: 'string', describe: 'Address of the ops endpoint: /metrics, /healthz, /readyz', default: '0.0.0.0' })
    .option('metrics-port', { describe: 'Port of the ops endpoint (0: off)', default: 9641 })
    .option('node-id', { type: 'string', describe: 'This node\'s name in logs and in a shared store. Default: the hostname' })
    .option('log-level', { type: 'string', choices: LOG_LEVELS as unknown as string[], describe: 'Log level (JSON lines on stdout)', default: 'info' })
    .option('software', { type: 'string', describe: 'SOFTWARE attribute to put in responses (empty: none)', default: '' })
    .help()
    .alias('help', 'h')
    .version()
    .wrap(Math.min(100, process.stdout.columns || 100))
    .fail((msg, err) => {
      throw err ?? new Error(msg);
    })
    .parseSync();
  return parsed as unknown as RawOptions;
}

async function main(): Promise<void> {
  let config;
  try {
    config = buildConfig(parseArgs(hideBin(process.argv)));
  } catch (err) {
    process.stderr.write(`anyturn: ${(err as Error).message}\nRun anyturn --help for the list of flags.\n`);
    process.exit(2);
  }
  let server;
  try {
    server = await startServer(config);
  } catch (err) {
    const e = err as NodeJS.ErrnoException & { address?: string; port?: number };
    const where = e.address !== undefined ? ` on ${e.address}:${e.port}` : '';
    process.stderr.write(`anyturn: cannot start: ${e.code ?? ''} ${e.message}${where}\n`);
    process.exit(1);
  }
  const shutdown = (signal: string): void => {
    const force = setTimeout(() => process.exit(1), SHUTDOWN_GRACE_MS);
    force.unref();
    server
      .stop()
      .then(() => process.exit(0))
      .catch(() => process.exit(1));
    void signal;
  };
  process.once('SIGTERM', () => shutdown('SIGTERM'));
  process.once('SIGINT', () => shutdown('SIGINT'));
}

void ConfigError;
await main();

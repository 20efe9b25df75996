#!/usr/bin/env node
// The command line: turns flags and ANYTURN_* environment variables into a
// ServerConfig, starts the server, and stops it on SIGTERM/SIGINT. SIGUSR1
// drains (new Allocates get 403, live allocations go on), as in coturn.

import yargs from 'yargs';
import { hideBin } from 'yargs/helpers';
import { ConfigError, buildConfig, type RawOptions } from './config.js';
import { openFileLimitWarning, readOpenFileLimit } from './ops/fd-limit.js';
import { LOG_LEVELS } from './ops/log.js';
import cluster from 'node:cluster';
import { createLogger, createSyncLogger } from './ops/log.js';
import { startServer } from './server.js';
import { startPrimary } from './workers/primary.js';
import { runWorker } from './workers/worker.js';

export function parseArgs(argv: string[]): RawOptions {
  const parsed = yargs(argv)
    .scriptName('anyturn')
    .usage('$0 [options]\n\nA TURN relay server (RFC 8656) for one relay per PoP behind an anycast IP.')
    .epilogue(
      'Every flag is also an environment variable: --listening-port -> ANYTURN_LISTENING_PORT.\n' +
        'From the environment, repeatable address flags take a comma-separated list.\n' +
        'Signals: SIGTERM/SIGINT stop gracefully (allocations deleted, exit 0); SIGUSR1 drains (new Allocates get 403).',
    )
    .env('ANYTURN')
    .strict()
    // Numeric flags carry no yargs type: `type: 'number'` turns 'abc' into NaN and loses the
    // text; untyped, yargs still converts numerals, and buildConfig names anything else as given.
    .group(['listening-ip', 'listening-port', 'relay-ip', 'min-port', 'max-port'], 'Network:')
    .option('listening-ip', { type: 'string', array: true, describe: 'Address to listen on (repeatable). Default: every local IPv4 address, each bound on its own so answers leave from the address the client used' })
    .option('listening-port', { describe: 'UDP and TCP port for STUN/TURN', default: 3478 })
    .option('relay-ip', { type: 'string', array: true, describe: 'Address relayed transport addresses are allocated on (repeatable, IPv4 and IPv6; each adds a port range of capacity). Default: the first non-loopback listening IPv4' })
    .option('min-port', { describe: 'Lowest relay port', default: 49152 })
    .option('max-port', { describe: 'Highest relay port', default: 65535 })
    .group(['udp', 'tcp', 'tls', 'tls-listening-port', 'cert', 'pkey', 'max-tcp-connections', 'tcp-idle-timeout', 'tcp-unallocated-timeout', 'unauth-error-rate', 'unauth-error-burst'], 'Client transports:')
    // --no-udp/--no-tcp/--no-tls (coturn's names) arrive as udp/tcp/tls = false; the hidden
    // no-* options take ANYTURN_NO_UDP=true and the like from the environment.
    .option('udp', { type: 'boolean', describe: 'Listen for UDP clients on --listening-port; --no-udp (ANYTURN_NO_UDP=true) turns it off' })
    .option('tcp', { type: 'boolean', describe: 'Listen for TCP clients on --listening-port (RFC 8656 §3.1); --no-tcp turns it off' })
    .option('tls', { type: 'boolean', describe: 'Listen for TLS clients on --tls-listening-port when --cert and --pkey are given; --no-tls turns it off' })
    .option('no-udp', { type: 'boolean', hidden: true })
    .option('no-tcp', { type: 'boolean', hidden: true })
    .option('no-tls', { type: 'boolean', hidden: true })
    .option('tls-listening-port', { describe: 'TCP port for TURN over TLS', default: 5349 })
    .option('cert', { type: 'string', describe: 'Certificate chain for TLS (PEM file); with --pkey turns TLS on' })
    .option('pkey', { type: 'string', describe: 'Private key for TLS (PEM file, no passphrase)' })
    .option('max-tcp-connections', { describe: 'Open TCP+TLS client connections at most; more are closed at once and counted (0 = no cap)', default: 10000 })
    .option('tcp-idle-timeout', { describe: 'Seconds a TCP/TLS connection may go without a valid STUN message after accept (TLS handshake included) before it is closed', default: 10 })
    .option('tcp-unallocated-timeout', { describe: 'After its first STUN message, a TCP/TLS connection is checked this often (seconds) and closed when it holds no allocation; 0: never', default: 60 })
    .option('unauth-error-rate', { describe: 'Error answers (400/401/438) to unauthenticated requests per second per source IPv4 address or IPv6 /64, over 10,000 tracked sources; more are dropped, so the server is no amplifier (0 = no limit)', default: 20 })
    .option('unauth-error-burst', { describe: 'Burst of such answers a quiet source IP may get back to back', default: 40 })
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
    .group(['redis-url', 'redis-sentinel', 'redis-sentinel-name', 'redis-cluster', 'redis-password', 'mesh-address', 'cluster-secret', 'cluster-lookup-rate', 'relay-mode'], 'Cluster (anycast):')
    .option('redis-url', { type: 'string', describe: 'Shared allocation store (redis:// or rediss://). Without it (or --redis-sentinel, --redis-cluster): the in-memory store, one node' })
    .option('redis-sentinel', { type: 'string', array: true, describe: 'Shared store through Redis Sentinel: a sentinel\'s host:port (repeatable); needs --redis-sentinel-name' })
    .option('redis-sentinel-name', { type: 'string', describe: 'The master group the sentinels monitor ("sentinel monitor <name> ..."), e.g. mymaster' })
    .option('redis-cluster', { type: 'string', array: true, describe: 'Shared store on Redis Cluster: a node\'s host:port (repeatable; the others are discovered)' })
    .option('redis-password', { type: 'string', describe: 'Password of the Redis nodes (AUTH) with --redis-sentinel or --redis-cluster (--redis-url carries its own). Prefer ANYTURN_REDIS_PASSWORD: flags show in ps' })
    .option('mesh-address', { type: 'string', describe: 'This node\'s unicast ip:port for node-to-node forwarding (required with a shared store)' })
    .option('cluster-secret', { type: 'string', describe: 'Secret shared by every node: authenticates mesh frames, and keys nonces unless --nonce-secret is given' })
    .option('relay-mode', { type: 'string', choices: ['unicast', 'anycast'], describe: "unicast: relayed addresses on each node's own --relay-ip, a rerouted client's packets are forwarded to the owner. anycast: --relay-ip is carried by every node, every node serves every allocation, and a node's death loses nothing", default: 'unicast' })
    .option('cluster-lookup-rate', { describe: 'Store lookups per second for packets from unknown 5-tuples (junk can\'t hammer Redis)', default: 500 })
    .group(['node-id', 'metrics-ip', 'metrics-port', 'log-level', 'software', 'prometheus-username-labels', 'admin-token', 'drain-exit', 'shutdown-timeout', 'alternate-server', 'workers'], 'Operations:')
    .option('metrics-ip', { type: 'string', describe: 'Address of the ops endpoint: /metrics, /healthz, /readyz', default: '0.0.0.0' })
    .option('metrics-port', { describe: 'Port of the ops endpoint (0: off)', default: 9641 })
    .option('node-id', { type: 'string', describe: 'This node\'s name in logs and in a shared store. Default: the hostname' })
    .option('log-level', { type: 'string', choices: LOG_LEVELS as unknown as string[], describe: 'Log level (JSON lines on stdout)', default: 'info' })
    .option('software', { type: 'string', describe: 'SOFTWARE attribute to put in responses (empty: none)', default: '' })
    .option('prometheus-username-labels', { type: 'boolean', describe: 'Export anyturn_user_allocations{user}, one series per username (off: many users make many series)', default: false })
    .option('admin-token', { type: 'string', describe: 'Bearer token (at least 16 bytes) that POST /drain and POST /undrain on the ops endpoint require; without it they are refused. Prefer ANYTURN_ADMIN_TOKEN: flags show in ps' })
    .option('drain-exit', { type: 'boolean', describe: 'Once draining (SIGUSR1 or POST /drain), exit 0 when no allocation is left', default: false })
    .option('shutdown-timeout', { describe: 'Seconds SIGTERM/SIGINT may take to stop gracefully before the process exits anyway (1-3600)', default: 5 })
    .option('alternate-server', { type: 'string', array: true, describe: 'Answer every Allocate with 300 Try Alternate and this ip:port or [ipv6]:port (repeatable: round robin within the client\'s address family)' })
    .option('workers', { describe: "Worker processes, one per core: 'auto' = one per core this process may use. Each relays its own slice of the port range; UDP clients stick to one worker through a connected socket, TCP/TLS connections are shared out by the primary", default: 1 })
    .help()
    .alias('help', 'h')
    .version()
    // yargs' ESM build wraps by character count, cutting flag names in two ("--no-tc" / "p"):
    // wrap for a terminal only, and leave each description on one line for pipes and grep.
    .wrap(process.stdout.isTTY ? Math.min(100, process.stdout.columns || 100) : null)
    .fail((msg, err) => {
      throw err ?? new Error(msg);
    })
    .parseSync();
  return parsed as unknown as RawOptions;
}

async function main(): Promise<void> {
  // Installed first: without a listener, SIGUSR1 makes Node open its inspector. A drain
  // asked for while starting up takes effect once the server runs.
  let drainNow: (() => void) | undefined;
  let drainAsked = false;
  process.on('SIGUSR1', () => {
    drainAsked = true;
    drainNow?.();
  });
  let config;
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
  let server;
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

void ConfigError;
await main();

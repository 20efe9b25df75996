// The validated configuration the composition root builds from. Everything a
// user can get wrong is checked here, once, with a message that names the flag,
// the value, and what is allowed.

import { randomBytes } from 'node:crypto';
import { X509Certificate, createPrivateKey } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { createSecureContext } from 'node:tls';
import { availableParallelism, hostname, networkInterfaces } from 'node:os';
import { parseIPv4, parseIPv6 } from './net/ip.js';
import { LOG_LEVELS, type LogLevel } from './ops/log.js';
import { PeerRangeError, parseIpRange } from './net/range.js';
import { DEFAULT_MAX_CONNECTIONS_PER_SOURCE } from './transport/counters.js';
import type { RedisHostPort, RedisTarget, RedisTls } from './store/shared.js';
import type { AlternateServer } from './turn/admission.js';
import { ALLOCATION_LIMIT_DEFAULTS, type AllocationLimits } from './turn/limits.js';

export class ConfigError extends Error {
  readonly code = 'ERR_ANYTURN_CONFIG';
  constructor(readonly flag: string, readonly value: unknown, readonly allowed: string, message?: string) {
    super(message ?? `invalid --${flag} ${typeof value === 'number' ? String(value) : JSON.stringify(value)}: ${allowed}`);
    this.name = 'ConfigError';
  }
}

export interface ServerConfig {
  readonly nodeId: string;
  readonly listeningIps: readonly string[];
  readonly listeningPort: number;
  readonly relayIps: readonly string[];
  readonly minPort: number;
  readonly maxPort: number;
  readonly realm: string;
  readonly users: ReadonlyMap<string, string>;
  /** Secrets for time-limited credentials; empty when --use-auth-secret is off. */
  readonly authSecrets: readonly string[];
  readonly nonceSecret: Buffer;
  readonly nonceLifetimeSeconds: number;
  readonly maxAllocateLifetimeSeconds: number;
  readonly allowLoopbackPeers: boolean;
  readonly allowedPeerIps: readonly string[];
  readonly deniedPeerIps: readonly string[];
  readonly userQuota: number;
  readonly totalQuota: number;
  /** Per-allocation and per-request caps (--max-permissions-per-allocation and friends). */
  readonly allocationLimits: AllocationLimits;
  readonly logLevel: LogLevel;
  readonly software: string;
  /** The ops HTTP endpoint (/metrics, /healthz, /readyz); port 0 turns it off. */
  readonly metricsIp: string;
  readonly metricsPort: number;
  /** /metrics is rendered at most once per this many milliseconds (0: every scrape). */
  readonly metricsCacheMs: number;
  /** Present when a shared store is configured (--redis-url, --redis-sentinel or --redis-cluster): the node runs in a cluster. */
  readonly cluster?: ClusterConfig;
  /** UDP and TCP client listeners on --listening-port (--no-udp, --no-tcp turn them off). */
  readonly udp: boolean;
  readonly tcp: boolean;
  /** TLS client listeners: present when --cert and --pkey are given and not --no-tls. */
  readonly tls?: TlsConfig;
  /** Open TCP+TLS client connections at most; more are closed at once (0: no cap). */
  readonly maxTcpConnections: number;
  /** Of those, at most this many from one source IPv4 address or IPv6 /64 (0: no per-source limit). */
  readonly maxTcpConnectionsPerIp: number;
  /** A TCP/TLS connection without a valid STUN message this long after accept is closed. */
  readonly tcpIdleTimeoutSeconds: number;
  /** A TCP/TLS connection found holding no allocation at a check this often is closed (0: never). */
  readonly tcpUnallocatedTimeoutSeconds: number;
  /** Per source IP: error answers (400/401/438) to unauthenticated requests per second (0: no limit), and the burst. */
  readonly unauthErrorRate: number;
  readonly unauthErrorBurst: number;
  /** Bearer token for POST /drain and /undrain; undefined refuses them. */
  readonly adminToken?: string;
  /** Exit (0) once draining and no allocation is left. */
  readonly drainExit: boolean;
  /** SIGTERM/SIGINT: how long a graceful stop may take before the process exits anyway. */
  readonly shutdownTimeoutSeconds: number;
  /** Every Allocate is answered 300 with the next of these (round robin per address family). */
  readonly alternateServers: readonly AlternateServer[];
  /** anyturn_user_allocations{user}: off by default (one series per user). */
  readonly prometheusUsernameLabels: boolean;
  /** Worker processes (one per core): 1 runs everything in this process; more forks them (src/workers/). */
  readonly workers: number;
}

export interface TlsConfig {
  readonly port: number;
  /** PEM certificate chain and private key, read and checked at startup. */
  readonly cert: Buffer;
  readonly key: Buffer;
  readonly certFile: string;
  readonly keyFile: string;
}

export interface ClusterConfig {
  /** The shared store: one Redis by URL, a Sentinel-managed master, or a Redis Cluster. */
  readonly redis: RedisTarget;
  /** @deprecated Read `redis` instead: the URL when redis.kind is 'url', else ''. Kept while older callers move over. */
  readonly redisUrl: string;
  readonly meshAddress: string;
  readonly meshPort: number;
  readonly clusterSecret: Buffer;
  /** Store lookups per second for 5-tuples with no local allocation. */
  readonly lookupsPerSecond: number;
  /** 'anycast': --relay-ip is shared by every node, and every node serves every allocation. */
  readonly relayMode: 'unicast' | 'anycast';
}

/** Flags as the CLI (or a test) hands them over, before validation. */
export interface RawOptions {
  readonly 'node-id'?: string;
  readonly 'listening-ip'?: readonly string[];
  readonly 'listening-port'?: number;
  readonly 'relay-ip'?: readonly string[];
  readonly 'min-port'?: number;
  readonly 'max-port'?: number;
  readonly realm?: string;
  readonly user?: readonly string[];
  readonly userdb?: string;
  readonly 'use-auth-secret'?: boolean;
  readonly 'static-auth-secret'?: readonly string[];
  readonly 'nonce-secret'?: string;
  readonly 'nonce-lifetime'?: number;
  readonly 'max-allocate-lifetime'?: number;
  readonly 'allow-loopback-peers'?: boolean;
  readonly 'allowed-peer-ip'?: readonly string[];
  readonly 'denied-peer-ip'?: readonly string[];
  readonly 'user-quota'?: number;
  readonly 'total-quota'?: number;
  readonly 'max-permissions-per-allocation'?: number;
  readonly 'max-channels-per-allocation'?: number;
  readonly 'max-peers-per-request'?: number;
  readonly 'log-level'?: string;
  readonly software?: string;
  readonly 'metrics-ip'?: string;
  readonly 'metrics-port'?: number;
  readonly 'metrics-cache-ms'?: number;
  readonly 'redis-url'?: string;
  readonly 'redis-sentinel'?: readonly string[];
  readonly 'redis-sentinel-name'?: string;
  readonly 'redis-cluster'?: readonly string[];
  readonly 'redis-password'?: string;
  readonly 'redis-tls'?: boolean;
  readonly 'redis-ca'?: string;
  readonly 'mesh-address'?: string;
  readonly 'cluster-secret'?: string;
  readonly 'cluster-lookup-rate'?: number;
  readonly 'relay-mode'?: string;
  readonly 'tls-listening-port'?: number;
  readonly cert?: string;
  readonly pkey?: string;
  /** false from --no-udp (yargs' negation); 'no-udp' true from ANYTURN_NO_UDP=true. Same for tcp, tls. */
  readonly udp?: boolean;
  readonly tcp?: boolean;
  readonly tls?: boolean;
  readonly 'no-udp'?: boolean;
  readonly 'no-tcp'?: boolean;
  readonly 'no-tls'?: boolean;
  readonly 'max-tcp-connections'?: number;
  readonly 'max-tcp-connections-per-ip'?: number;
  readonly 'tcp-idle-timeout'?: number;
  readonly 'tcp-unallocated-timeout'?: number;
  readonly 'unauth-error-rate'?: number;
  readonly 'unauth-error-burst'?: number;
  readonly 'admin-token'?: string;
  readonly 'drain-exit'?: boolean;
  readonly 'shutdown-timeout'?: number;
  readonly 'alternate-server'?: readonly string[];
  readonly 'prometheus-username-labels'?: boolean;
  readonly workers?: number | string;
}

function integer(flag: string, value: unknown, min: number, max: number, fallback: number, allowed = `a whole number from ${min} to ${max}`): number {
  if (value === undefined) return fallback;
  if (typeof value !== 'number' || Number.isNaN(value)) {
    // Name the value as given ('abc' from ANYTURN_LISTENING_PORT, or [1,2] for a flag given twice).
    const shown = typeof value === 'number' ? String(value) : JSON.stringify(value);
    throw new ConfigError(flag, value, allowed, `invalid --${flag} ${shown}: not a number (allowed: ${allowed})`);
  }
  if (!Number.isInteger(value) || value < min || value > max) {
    throw new ConfigError(flag, value, allowed);
  }
  return value;
}

function isIp(text: string): boolean {
  return parseIPv4(text) >= 0 || parseIPv6(text) !== undefined;
}

function ipList(flag: string, values: readonly string[] | undefined): string[] {
  const out: string[] = [];
  for (const value of values ?? []) {
    // From an environment variable a list arrives as one comma-separated string.
    for (const part of String(value).split(',').map((s) => s.trim()).filter(Boolean)) {
      if (!isIp(part)) throw new ConfigError(flag, part, 'an IPv4 or IPv6 address, e.g. 192.0.2.10 or 2001:db8::10');
      out.push(part);
    }
  }
  return out;
}

function rangeList(flag: string, values: readonly string[] | undefined): string[] {
  const out: string[] = [];
  for (const value of values ?? []) {
    for (const part of String(value).split(',').map((s) => s.trim()).filter(Boolean)) {
      try {
        parseIpRange(part);
      } catch (err) {
        if (err instanceof PeerRangeError) throw new ConfigError(flag, part, err.message);
        throw err;
      }
      out.push(part);
    }
  }
  return out;
}

/** Parses "name:password" (the password may itself contain ':'). */
function parseUser(flag: string, entry: string, users: Map<string, string>): void {
  const colon = entry.indexOf(':');
  if (colon <= 0 || colon === entry.length - 1) throw new ConfigError(flag, entry.replace(/:.*/, ':***'), 'name:password, with a non-empty name and password');
  users.set(entry.slice(0, colon), entry.slice(colon + 1));
}

/** The machine's own IPv4 addresses, loopback included: the default listening set. */
export function localIPv4Addresses(): string[] {
  const out: string[] = [];
  for (const list of Object.values(networkInterfaces())) for (const a of list ?? []) if (a.family === 'IPv4') out.push(a.address);
  return out.length > 0 ? out : ['127.0.0.1'];
}

export function buildConfig(raw: RawOptions): ServerConfig {
  const listeningIps = ipList('listening-ip', raw['listening-ip']);
  if (listeningIps.length === 0) listeningIps.push(...localIPv4Addresses());
  const listeningPort = integer('listening-port', raw['listening-port'], 0, 65535, 3478);

  const relayIps = ipList('relay-ip', raw['relay-ip']);
  for (const ip of relayIps) {
    if (ip === '0.0.0.0' || ip === '::') throw new ConfigError('relay-ip', ip, 'a concrete address that peers can reach, not a wildcard');
  }
  if (relayIps.length === 0) {
    const concrete = listeningIps.filter((ip) => ip !== '0.0.0.0' && ip !== '::' && !ip.includes(':'));
    const pick = concrete.find((ip) => !ip.startsWith('127.')) ?? concrete[0];
    if (!pick) throw new ConfigError('relay-ip', '', 'an IPv4 relay address; give --relay-ip when listening only on wildcard or IPv6 addresses');
    relayIps.push(pick);
  }
  if (new Set(relayIps).size !== relayIps.length) throw new ConfigError('relay-ip', relayIps.join(','), 'each relay address once');

  const minPort = integer('min-port', raw['min-port'], 1024, 65535, 49152);
  const maxPort = integer('max-port', raw['max-port'], 1024, 65535, 65535);
  if (minPort > maxPort) throw new ConfigError('min-port', minPort, `at most --max-port (${maxPort})`);

  const realm = raw.realm ?? 'anyturn';
  if (realm.length === 0 || Buffer.byteLength(realm) > 762) throw new ConfigError('realm', realm, 'a non-empty realm of at most 762 bytes');

  const users = new Map<string, string>();
  for (const entry of raw.user ?? []) parseUser('user', String(entry), users);
  if (raw.userdb !== undefined) {
    let text: string;
    try {
      text = readFileSync(raw.userdb, 'utf8');
    } catch (err) {
      throw new ConfigError('userdb', raw.userdb, `a readable file of name:password lines (${(err as Error).message})`);
    }
    text.split(/\r?\n/).forEach((line, i) => {
      const trimmed = line.trim();
      if (trimmed === '' || trimmed.startsWith('#')) return;
      try {
        parseUser('userdb', trimmed, users);
      } catch {
        throw new ConfigError('userdb', `${raw.userdb}:${i + 1}`, 'each line name:password (blank lines and # comments allowed)');
      }
    });
  }

  const secrets = (raw['static-auth-secret'] ?? []).map(String).filter((s) => s.length > 0);
  const useAuthSecret = raw['use-auth-secret'] ?? false;
  if (useAuthSecret && secrets.length === 0) throw new ConfigError('static-auth-secret', '', 'at least one secret when --use-auth-secret is on');
  if (!useAuthSecret && secrets.length > 0) throw new ConfigError('use-auth-secret', false, 'true when --static-auth-secret is given (as coturn requires)');
  if (users.size === 0 && !useAuthSecret) {
    throw new ConfigError('user', '', 'a credential', 'no credentials configured: give --user name:password, --userdb FILE, or --use-auth-secret with --static-auth-secret (anyturn is never an open relay)');
  }

  const cluster = buildClusterConfig(raw);
  // RFC 8489 §9.2 nonces are stateless HMACs: every node with the same secret accepts the others'.
  // This is the secret, not the key: NonceIssuer derives its key from it (keys.ts), as MeshSocket
  // derives the mesh key from the cluster secret, so the two never share a key.
  const nonceSecret =
    raw['nonce-secret'] !== undefined ? Buffer.from(raw['nonce-secret'], 'utf8') : cluster ? cluster.clusterSecret : randomBytes(32);
  if (nonceSecret.length < 16) throw new ConfigError('nonce-secret', '***', 'at least 16 bytes, the same on every node that shares clients');

  const logLevel = (raw['log-level'] ?? 'info') as LogLevel;
  if (!LOG_LEVELS.includes(logLevel)) throw new ConfigError('log-level', raw['log-level'], `one of ${LOG_LEVELS.join(', ')}`);

  return {
    nodeId: raw['node-id'] ?? hostname(),
    listeningIps,
    listeningPort,
    relayIps,
    minPort,
    maxPort,
    realm,
    users,
    authSecrets: useAuthSecret ? secrets : [],
    nonceSecret,
    nonceLifetimeSeconds: integer('nonce-lifetime', raw['nonce-lifetime'], 10, 86400, 600),
    maxAllocateLifetimeSeconds: integer('max-allocate-lifetime', raw['max-allocate-lifetime'], 600, 86400, 3600),
    allowLoopbackPeers: raw['allow-loopback-peers'] ?? false,
    allowedPeerIps: rangeList('allowed-peer-ip', raw['allowed-peer-ip']),
    deniedPeerIps: rangeList('denied-peer-ip', raw['denied-peer-ip']),
    userQuota: integer('user-quota', raw['user-quota'], 0, 1_000_000_000, 0),
    totalQuota: integer('total-quota', raw['total-quota'], 0, 1_000_000_000, 0),
    allocationLimits: {
      permissionsPerAllocation: integer('max-permissions-per-allocation', raw['max-permissions-per-allocation'], 1, 100_000, ALLOCATION_LIMIT_DEFAULTS.permissionsPerAllocation),
      // RFC 8656 §12: channel numbers 0x4000-0x7FFF, so no allocation holds more than 16,384.
      channelsPerAllocation: integer('max-channels-per-allocation', raw['max-channels-per-allocation'], 1, 16_384, ALLOCATION_LIMIT_DEFAULTS.channelsPerAllocation),
      peersPerRequest: integer('max-peers-per-request', raw['max-peers-per-request'], 1, 10_000, ALLOCATION_LIMIT_DEFAULTS.peersPerRequest),
    },
    logLevel,
    software: raw.software ?? '',
    metricsIp: metricsIp(raw['metrics-ip']),
    // The CLI defaults this to 9641 (as coturn); a config built in code has no endpoint unless asked.
    metricsPort: integer('metrics-port', raw['metrics-port'], 0, 65535, 0),
    metricsCacheMs: integer('metrics-cache-ms', raw['metrics-cache-ms'], 0, 60_000, 1000, 'a whole number of milliseconds from 1 to 60000, or 0 to render every scrape'),
    cluster,
    ...transportConfig(raw, listeningPort),
    adminToken: adminToken(raw['admin-token']),
    drainExit: raw['drain-exit'] ?? false,
    shutdownTimeoutSeconds: integer('shutdown-timeout', raw['shutdown-timeout'], 1, 3600, 5),
    alternateServers: alternateServers(raw['alternate-server']),
    prometheusUsernameLabels: raw['prometheus-username-labels'] ?? false,
    workers: workerCount(raw.workers, minPort, maxPort, cluster),
  };
}

/** --workers: a count or 'auto' (one per core this process may run on). */
function workerCount(value: number | string | undefined, minPort: number, maxPort: number, cluster: ClusterConfig | undefined): number {
  const n = value === 'auto' ? availableParallelism() : integer('workers', value, 1, 64, 1, "a count from 1 to 64, or 'auto' (one per core)");
  if (n === 1) return 1;
  // Each worker relays on its own slice of the port range, so no two bind the same port.
  if (maxPort - minPort + 1 < n) throw new ConfigError('workers', n, `at most the number of relay ports (--min-port ${minPort} to --max-port ${maxPort}): each worker gets its own slice`);
  if (cluster?.relayMode === 'anycast') {
    throw new ConfigError('workers', n, "1 with --relay-mode anycast: there every node binds every allocation's relayed port, which workers on one host cannot share");
  }
  if (cluster && cluster.meshPort !== 0 && cluster.meshPort + n - 1 > 65535) throw new ConfigError('workers', n, `a count that leaves --mesh-address port ${cluster.meshPort} + one port per worker under 65536`);
  return n;
}

function adminToken(value: string | undefined): string | undefined {
  if (value === undefined) return undefined;
  // A short token could be guessed over HTTP; the value itself never goes into a message.
  if (Buffer.byteLength(value) < 16 || /\s/.test(value)) throw new ConfigError('admin-token', '***', 'at least 16 bytes without spaces, e.g. $(openssl rand -hex 16)');
  return value;
}

/** "ip:port", "[ipv6]:port", or an address alone for port 3478 (as coturn). */
function alternateServers(values: readonly string[] | undefined): AlternateServer[] {
  const out: AlternateServer[] = [];
  for (const value of values ?? []) {
    // From ANYTURN_ALTERNATE_SERVER a list arrives as one comma-separated string.
    for (const part of String(value).split(',').map((s) => s.trim()).filter(Boolean)) {
      const m = /^\[([^\]]+)\](?::(\d{1,5}))?$/.exec(part) ?? /^([^:]+)(?::(\d{1,5}))?$/.exec(part) ?? /^([0-9a-fA-F:.]+)()$/.exec(part);
      const address = m?.[1];
      const port = m?.[2] ? Number(m[2]) : 3478;
      if (!address || !isIp(address) || address === '0.0.0.0' || address === '::' || !(port >= 1 && port <= 65535)) {
        throw new ConfigError('alternate-server', part, 'ip:port or [ipv6]:port of another TURN server (port 1-65535, 3478 when left out), e.g. 192.0.2.20:3478 or [2001:db8::20]:3478');
      }
      out.push({ address, port });
    }
  }
  return out;
}

/** Client transports and their protections (--no-udp/--no-tcp/--no-tls, --cert/--pkey, caps, rate limit). */
function transportConfig(raw: RawOptions, listeningPort: number): Pick<ServerConfig, 'udp' | 'tcp' | 'tls' | 'maxTcpConnections' | 'maxTcpConnectionsPerIp' | 'tcpIdleTimeoutSeconds' | 'tcpUnallocatedTimeoutSeconds' | 'unauthErrorRate' | 'unauthErrorBurst'> {
  const udp = raw.udp !== false && raw['no-udp'] !== true;
  const tcp = raw.tcp !== false && raw['no-tcp'] !== true;
  const tlsOn = raw.tls !== false && raw['no-tls'] !== true;
  const port = integer('tls-listening-port', raw['tls-listening-port'], 0, 65535, 5349);
  let tls: TlsConfig | undefined;
  const certFile = raw.cert;
  const keyFile = raw.pkey;
  if ((certFile === undefined) !== (keyFile === undefined)) {
    const [flag, other] = certFile === undefined ? ['cert', 'pkey'] : ['pkey', 'cert'];
    throw new ConfigError(flag, '', `a PEM file when --${other} is given`, `missing --${flag}: TLS needs both --cert FILE (certificate chain, PEM) and --pkey FILE (private key, PEM)`);
  }
  if (certFile !== undefined && keyFile !== undefined && tlsOn) {
    const read = (flag: string, file: string, what: string): Buffer => {
      try {
        return readFileSync(file);
      } catch (err) {
        throw new ConfigError(flag, file, `a readable ${what} file (${(err as Error).message})`);
      }
    };
    const cert = read('cert', certFile, 'PEM certificate');
    const key = read('pkey', keyFile, 'PEM private key');
    try {
      new X509Certificate(cert);
    } catch (err) {
      throw new ConfigError('cert', certFile, `a PEM certificate (${(err as Error).message})`);
    }
    try {
      createPrivateKey(key);
    } catch (err) {
      throw new ConfigError('pkey', keyFile, `a PEM private key without a passphrase (${(err as Error).message})`);
    }
    try {
      createSecureContext({ cert, key });
    } catch (err) {
      throw new ConfigError('pkey', keyFile, `the private key of the --cert certificate ${certFile} (${(err as Error).message})`);
    }
    if (tcp && port !== 0 && port === listeningPort) throw new ConfigError('tls-listening-port', port, `a port other than --listening-port ${listeningPort}, where plain TCP listens (or --no-tcp)`);
    tls = { port, cert, key, certFile, keyFile };
  }
  if (!udp && !tcp && !tls) {
    throw new ConfigError('no-udp', true, 'at least one transport', 'nothing to listen on: --no-udp and --no-tcp leave only TLS, which needs --cert and --pkey (and no --no-tls)');
  }
  return {
    udp,
    tcp,
    tls,
    maxTcpConnections: integer('max-tcp-connections', raw['max-tcp-connections'], 0, 10_000_000, 10_000),
    maxTcpConnectionsPerIp: integer('max-tcp-connections-per-ip', raw['max-tcp-connections-per-ip'], 0, 10_000_000, DEFAULT_MAX_CONNECTIONS_PER_SOURCE, 'a whole number from 1 to 10000000, or 0 for no per-source limit'),
    tcpIdleTimeoutSeconds: integer('tcp-idle-timeout', raw['tcp-idle-timeout'], 1, 3600, 10),
    tcpUnallocatedTimeoutSeconds: integer('tcp-unallocated-timeout', raw['tcp-unallocated-timeout'], 0, 86_400, 60, 'a whole number of seconds from 1 to 86400, or 0 for never'),
    unauthErrorRate: integer('unauth-error-rate', raw['unauth-error-rate'], 0, 1_000_000, 20),
    unauthErrorBurst: integer('unauth-error-burst', raw['unauth-error-burst'], 1, 1_000_000, 40),
  };
}

/**
 * The ops endpoint answers without authentication (only its POSTs need the token) and
 * tells the Node version, memory, descriptors and traffic: loopback unless the operator
 * chooses an address (a management network, or 0.0.0.0 inside a container).
 */
export const DEFAULT_METRICS_IP = '127.0.0.1';

function metricsIp(value: string | undefined): string {
  if (value === undefined) return DEFAULT_METRICS_IP;
  if (!isIp(value)) throw new ConfigError('metrics-ip', value, 'an IPv4 or IPv6 address to serve /metrics, /healthz and /readyz on');
  return value;
}

/** "ip:port" or "[ipv6]:port". */
function parseHostPort(flag: string, text: string): { address: string; port: number } {
  const m = /^\[([^\]]+)\]:(\d{1,5})$/.exec(text) ?? /^([^:]+):(\d{1,5})$/.exec(text);
  const address = m?.[1];
  const port = m ? Number(m[2]) : NaN;
  if (!address || !isIp(address) || address === '0.0.0.0' || address === '::' || !(port >= 1 && port <= 65535)) {
    throw new ConfigError(flag, text, 'ip:port (or [ipv6]:port) with this node\'s unicast address, reachable from the other nodes, e.g. 192.0.2.10:7000');
  }
  return { address, port };
}

function buildClusterConfig(raw: RawOptions): ClusterConfig | undefined {
  const redis = redisTarget(raw);
  if (redis === undefined) {
    for (const flag of ['mesh-address', 'cluster-secret'] as const) {
      if (raw[flag] !== undefined) throw new ConfigError(flag, flag === 'cluster-secret' ? '***' : raw[flag], 'only with a shared store: --redis-url, --redis-sentinel or --redis-cluster');
    }
    if (raw['relay-mode'] === 'anycast') throw new ConfigError('relay-mode', 'anycast', 'only with a shared store (--redis-url, --redis-sentinel or --redis-cluster): every node must see every allocation');
    return undefined;
  }
  if (raw['mesh-address'] === undefined) throw new ConfigError('mesh-address', '', 'ip:port of this node for node-to-node forwarding', `missing --mesh-address: with --${redis.flag} each node needs its unicast ip:port for the mesh, e.g. --mesh-address 192.0.2.10:7000`);
  const mesh = parseHostPort('mesh-address', raw['mesh-address']);
  const secret = raw['cluster-secret'];
  if (secret === undefined || Buffer.byteLength(secret) < 16) {
    throw new ConfigError('cluster-secret', secret === undefined ? '' : '***', 'at least 16 bytes, the same on every node (the mesh key, and the nonce key unless --nonce-secret is given, are derived from it)', `${secret === undefined ? 'missing' : 'too short'} --cluster-secret: with --${redis.flag} give every node the same secret of at least 16 bytes (the mesh key, and the nonce key unless --nonce-secret is given, are derived from it)`);
  }
  return {
    redis: redis.target,
    redisUrl: redis.target.kind === 'url' ? redis.target.url : '',
    meshAddress: mesh.address,
    meshPort: mesh.port,
    clusterSecret: Buffer.from(secret, 'utf8'),
    lookupsPerSecond: integer('cluster-lookup-rate', raw['cluster-lookup-rate'], 1, 1_000_000, 500),
    relayMode: relayMode(raw['relay-mode']),
  };
}

/** The flags that select the shared store: exactly one may be given. */
const STORE_FLAGS = ['redis-url', 'redis-sentinel', 'redis-cluster'] as const;
const ONE_STORE = 'exactly one of --redis-url, --redis-sentinel (with --redis-sentinel-name) or --redis-cluster selects the shared store';

/** host:port or [ipv6]:port of a Redis node or sentinel (host may be a name); repeatable or comma-separated. */
function redisNodes(flag: string, values: readonly string[]): RedisHostPort[] {
  const out: RedisHostPort[] = [];
  for (const value of values) {
    for (const part of String(value).split(',').map((s) => s.trim()).filter(Boolean)) {
      const m = /^\[([^\]]+)\]:(\d{1,5})$/.exec(part) ?? /^([A-Za-z0-9._-]+):(\d{1,5})$/.exec(part);
      const host = m?.[1];
      const port = m ? Number(m[2]) : NaN;
      if (!host || (part.startsWith('[') && parseIPv6(host) === undefined) || !(port >= 1 && port <= 65535)) {
        throw new ConfigError(flag, part, 'host:port or [ipv6]:port (repeatable, or comma-separated), e.g. 10.0.0.5:26379');
      }
      out.push({ host, port });
    }
  }
  if (out.length === 0) throw new ConfigError(flag, '', 'at least one host:port, e.g. 10.0.0.5:26379');
  return out;
}

function given(value: string | readonly string[] | undefined): boolean {
  return value !== undefined && !(Array.isArray(value) && value.length === 0);
}

/** --redis-url, --redis-sentinel + --redis-sentinel-name, or --redis-cluster (+ --redis-password): the shared store, if any. */
function redisTarget(raw: RawOptions): { readonly target: RedisTarget; readonly flag: (typeof STORE_FLAGS)[number] } | undefined {
  const chosen = STORE_FLAGS.filter((f) => given(raw[f]));
  if (chosen.length > 1) {
    throw new ConfigError(chosen[1]!, chosen.map((f) => `--${f}`).join(' '), ONE_STORE, `--${chosen.join(' and --')} are ${chosen.length === 2 ? 'both' : 'all'} given: ${ONE_STORE}`);
  }
  const password = raw['redis-password'];
  if (password !== undefined && password === '') throw new ConfigError('redis-password', '', 'a non-empty password (or leave the flag out)');
  const name = raw['redis-sentinel-name'];
  const flag = chosen[0];
  if (flag !== 'redis-sentinel' && name !== undefined) throw new ConfigError('redis-sentinel-name', name, 'only with --redis-sentinel (the master group the sentinels monitor)');
  if (flag === undefined) {
    if (password !== undefined) throw new ConfigError('redis-password', '***', 'only with --redis-url, --redis-sentinel or --redis-cluster');
    if (raw['redis-tls'] === true) throw new ConfigError('redis-tls', true, 'only with --redis-sentinel or --redis-cluster');
    if (raw['redis-ca'] !== undefined) throw new ConfigError('redis-ca', raw['redis-ca'], 'only with --redis-tls (or a rediss:// --redis-url)');
    return undefined;
  }
  const withPassword = password !== undefined ? { password } : {};
  const tls = redisTls(raw, flag);
  const withTls = tls !== undefined ? { tls } : {};
  switch (flag) {
    case 'redis-url': {
      const url = String(raw['redis-url']);
      let parsed: URL | undefined;
      try {
        parsed = new URL(url);
      } catch {
        parsed = undefined;
      }
      if (!parsed || (parsed.protocol !== 'redis:' && parsed.protocol !== 'rediss:') || !parsed.hostname) {
        throw new ConfigError('redis-url', url.replace(/\/\/[^@]*@/, '//***@'), 'redis://[user:password@]host:port[/db] or rediss:// for TLS');
      }
      if (password !== undefined && parsed.password !== '') throw new ConfigError('redis-password', '***', 'not together with a password in --redis-url: give it once');
      if (raw['redis-ca'] !== undefined && parsed.protocol !== 'rediss:') throw new ConfigError('redis-ca', raw['redis-ca'], 'only with TLS: a rediss:// --redis-url, or --redis-tls with --redis-sentinel or --redis-cluster');
      return { flag, target: { kind: 'url', url, ...withPassword, ...withTls } };
    }
    case 'redis-sentinel': {
      const sentinels = redisNodes('redis-sentinel', raw['redis-sentinel'] ?? []);
      if (name === undefined || !/^[A-Za-z0-9._:-]{1,128}$/.test(name)) {
        throw new ConfigError(
          'redis-sentinel-name',
          name ?? '',
          'the master group name the sentinels monitor (letters, digits, ._:-), e.g. mymaster',
          name === undefined ? 'missing --redis-sentinel-name: with --redis-sentinel give the master group the sentinels monitor ("sentinel monitor <name> ..."), e.g. --redis-sentinel-name mymaster' : undefined,
        );
      }
      return { flag, target: { kind: 'sentinel', sentinels, name, ...withPassword, ...withTls } };
    }
    case 'redis-cluster':
      return { flag, target: { kind: 'cluster', nodes: redisNodes('redis-cluster', raw['redis-cluster'] ?? []), ...withPassword, ...withTls } };
  }
}

/**
 * --redis-tls (Sentinel, Cluster; a URL says rediss:// instead) and --redis-ca FILE
 * (PEM CA certificates that sign the Redis certificates; without it, the system's).
 */
function redisTls(raw: RawOptions, flag: (typeof STORE_FLAGS)[number]): RedisTls | undefined {
  const on = raw['redis-tls'] === true;
  const caFile = raw['redis-ca'];
  if (on && flag === 'redis-url') throw new ConfigError('redis-tls', true, 'only with --redis-sentinel or --redis-cluster: for --redis-url write rediss:// instead of redis://');
  if (caFile !== undefined && flag !== 'redis-url' && !on) throw new ConfigError('redis-ca', caFile, 'only with --redis-tls (or a rediss:// --redis-url)');
  if (!on && caFile === undefined) return undefined;
  if (caFile === undefined) return {};
  let ca: string;
  try {
    ca = readFileSync(caFile, 'utf8');
  } catch (err) {
    throw new ConfigError('redis-ca', caFile, `a readable PEM file of CA certificates (${(err as Error).message})`);
  }
  try {
    if (!ca.includes('-----BEGIN CERTIFICATE-----')) throw new Error('no PEM certificate in it');
    new X509Certificate(ca);
  } catch (err) {
    throw new ConfigError('redis-ca', caFile, `a PEM file of CA certificates (${(err as Error).message})`);
  }
  return { ca };
}

function relayMode(value: string | undefined): 'unicast' | 'anycast' {
  if (value === undefined || value === 'unicast' || value === 'anycast') return value ?? 'unicast';
  throw new ConfigError('relay-mode', value, "'unicast' (relayed addresses on each node's own --relay-ip) or 'anycast' (--relay-ip is an address every node carries)");
}

// The validated configuration the composition root builds from. Everything a
// user can get wrong is checked here, once, with a message that names the flag,
// the value, and what is allowed.

import { randomBytes } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { hostname, networkInterfaces } from 'node:os';
import { parseIPv4, parseIPv6 } from './stun/address.js';
import { LOG_LEVELS, type LogLevel } from './ops/log.js';
import { PeerRangeError, parseIpRange } from './turn/peer-policy.js';

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
  readonly logLevel: LogLevel;
  readonly software: string;
  /** The ops HTTP endpoint (/metrics, /healthz, /readyz); port 0 turns it off. */
  readonly metricsIp: string;
  readonly metricsPort: number;
  /** Present when a shared store is configured (--redis-url): the node runs in a cluster. */
  readonly cluster?: ClusterConfig;
}

export interface ClusterConfig {
  readonly redisUrl: string;
  readonly meshAddress: string;
  readonly meshPort: number;
  readonly clusterSecret: Buffer;
  /** Store lookups per second for 5-tuples with no local allocation. */
  readonly lookupsPerSecond: number;
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
  readonly 'log-level'?: string;
  readonly software?: string;
  readonly 'metrics-ip'?: string;
  readonly 'metrics-port'?: number;
  readonly 'redis-url'?: string;
  readonly 'mesh-address'?: string;
  readonly 'cluster-secret'?: string;
  readonly 'cluster-lookup-rate'?: number;
}

function integer(flag: string, value: unknown, min: number, max: number, fallback: number): number {
  if (value === undefined) return fallback;
  if (typeof value !== 'number' || Number.isNaN(value)) {
    // Name the value as given ('abc' from ANYTURN_LISTENING_PORT, or [1,2] for a flag given twice).
    const shown = typeof value === 'number' ? String(value) : JSON.stringify(value);
    throw new ConfigError(flag, value, `a whole number from ${min} to ${max}`, `invalid --${flag} ${shown}: not a number (allowed: a whole number from ${min} to ${max})`);
  }
  if (!Number.isInteger(value) || value < min || value > max) {
    throw new ConfigError(flag, value, `a whole number from ${min} to ${max}`);
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
  if (relayIps.filter((ip) => !ip.includes(':')).length > 1 || relayIps.filter((ip) => ip.includes(':')).length > 1) {
    throw new ConfigError('relay-ip', relayIps.join(','), 'at most one IPv4 and one IPv6 relay address');
  }

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
    logLevel,
    software: raw.software ?? '',
    metricsIp: metricsIp(raw['metrics-ip']),
    // The CLI defaults this to 9641 (as coturn); a config built in code has no endpoint unless asked.
    metricsPort: integer('metrics-port', raw['metrics-port'], 0, 65535, 0),
    cluster,
  };
}

function metricsIp(value: string | undefined): string {
  if (value === undefined) return '0.0.0.0';
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
  const url = raw['redis-url'];
  if (url === undefined) {
    for (const flag of ['mesh-address', 'cluster-secret'] as const) {
      if (raw[flag] !== undefined) throw new ConfigError(flag, flag === 'cluster-secret' ? '***' : raw[flag], 'only with --redis-url (a cluster needs a shared store)');
    }
    return undefined;
  }
  let parsed: URL | undefined;
  try {
    parsed = new URL(url);
  } catch {
    parsed = undefined;
  }
  if (!parsed || (parsed.protocol !== 'redis:' && parsed.protocol !== 'rediss:') || !parsed.hostname) {
    throw new ConfigError('redis-url', url.replace(/\/\/[^@]*@/, '//***@'), 'redis://[user:password@]host:port[/db] or rediss:// for TLS');
  }
  if (raw['mesh-address'] === undefined) throw new ConfigError('mesh-address', '', 'ip:port of this node for node-to-node forwarding', 'missing --mesh-address: with --redis-url each node needs its unicast ip:port for the mesh, e.g. --mesh-address 192.0.2.10:7000');
  const mesh = parseHostPort('mesh-address', raw['mesh-address']);
  const secret = raw['cluster-secret'];
  if (secret === undefined || Buffer.byteLength(secret) < 16) {
    throw new ConfigError('cluster-secret', secret === undefined ? '' : '***', 'at least 16 bytes, the same on every node (it authenticates mesh frames and keys the nonces)', `${secret === undefined ? 'missing' : 'too short'} --cluster-secret: with --redis-url give every node the same secret of at least 16 bytes (it authenticates mesh frames and keys the nonces)`);
  }
  return {
    redisUrl: url,
    meshAddress: mesh.address,
    meshPort: mesh.port,
    clusterSecret: Buffer.from(secret, 'utf8'),
    lookupsPerSecond: integer('cluster-lookup-rate', raw['cluster-lookup-rate'], 1, 1_000_000, 500),
  };
}

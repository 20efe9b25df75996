// buildConfig: the flags (from the CLI, or a config built in code) into the ServerConfig
// the composition root builds from. Each flag's value comes from the table (flags.ts:
// default, check, conversion); here, the checks across flags and the computed defaults.
// Everything a user can get wrong is checked once, with a message that names the flag,
// the value, and what is allowed.

import { randomBytes } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { hostname, networkInterfaces } from 'node:os';
import { buildClusterConfig } from './cluster.js';
import { ConfigError } from './errors.js';
import { type RawOptions, read } from './flags.js';
import { transportConfig } from './transport.js';
import type { ClusterConfig, DataplaneConfig, ServerConfig } from './types.js';

/** The machine's own IPv4 addresses, loopback included: the default listening set. */
export function localIPv4Addresses(): string[] {
  const out: string[] = [];
  for (const list of Object.values(networkInterfaces())) for (const a of list ?? []) if (a.family === 'IPv4') out.push(a.address);
  return out.length > 0 ? out : ['127.0.0.1'];
}

export function buildConfig(raw: RawOptions): ServerConfig {
  const { listeningIps, listeningPort, relayIps, minPort, maxPort } = network(raw);
  const realm = read(raw, 'realm');
  if (realm.length === 0 || Buffer.byteLength(realm) > 762) throw new ConfigError('realm', realm, 'a non-empty realm of at most 762 bytes');
  const { users, authSecrets } = credentials(raw);

  const cluster = buildClusterConfig(raw);
  // RFC 8489 §9.2 nonces are stateless HMACs: every node with the same secret accepts the others'.
  // This is the secret, not the key: NonceIssuer derives its key from it (keys.ts), as MeshSocket
  // derives the mesh key from the cluster secret, so the two never share a key.
  const nonceSecretText = read(raw, 'nonce-secret');
  const nonceSecret = nonceSecretText !== undefined ? Buffer.from(nonceSecretText, 'utf8') : cluster ? cluster.clusterSecret : randomBytes(32);
  if (nonceSecret.length < 16) throw new ConfigError('nonce-secret', '***', 'at least 16 bytes, the same on every node that shares clients');

  const logLevel = read(raw, 'log-level');

  return {
    nodeId: read(raw, 'node-id') ?? hostname(),
    listeningIps,
    listeningPort,
    relayIps,
    minPort,
    maxPort,
    realm,
    users,
    authSecrets,
    nonceSecret,
    nonceLifetimeSeconds: read(raw, 'nonce-lifetime'),
    maxAllocateLifetimeSeconds: read(raw, 'max-allocate-lifetime'),
    mobility: mobility(raw),
    allowLoopbackPeers: read(raw, 'allow-loopback-peers'),
    allowedPeerIps: read(raw, 'allowed-peer-ip'),
    deniedPeerIps: read(raw, 'denied-peer-ip'),
    userQuota: read(raw, 'user-quota'),
    totalQuota: read(raw, 'total-quota'),
    bandwidth: { maxBps: bandwidthLimit(raw, 'max-bps'), userMaxBps: bandwidthLimit(raw, 'user-max-bps'), bpsCapacity: bandwidthLimit(raw, 'bps-capacity') },
    allocationLimits: {
      permissionsPerAllocation: read(raw, 'max-permissions-per-allocation'),
      channelsPerAllocation: read(raw, 'max-channels-per-allocation'),
      peersPerRequest: read(raw, 'max-peers-per-request'),
    },
    logLevel,
    software: read(raw, 'software'),
    metricsIp: read(raw, 'metrics-ip'),
    metricsPort: read(raw, 'metrics-port'),
    metricsCacheMs: read(raw, 'metrics-cache-ms'),
    cluster,
    ...transportConfig(raw, listeningPort),
    adminToken: read(raw, 'admin-token'),
    drainExit: read(raw, 'drain-exit'),
    shutdownTimeoutSeconds: read(raw, 'shutdown-timeout'),
    alternateServers: read(raw, 'alternate-server'),
    prometheusUsernameLabels: read(raw, 'prometheus-username-labels'),
    ...processModel(raw, minPort, maxPort, cluster),
  };
}

/** Listening addresses and port, relay addresses (by default one of the listening ones) and the relay port range. */
function network(raw: RawOptions): Pick<ServerConfig, 'listeningIps' | 'listeningPort' | 'relayIps' | 'minPort' | 'maxPort'> {
  const listeningIps = read(raw, 'listening-ip');
  if (listeningIps.length === 0) listeningIps.push(...localIPv4Addresses());
  const listeningPort = read(raw, 'listening-port');

  const relayIps = read(raw, 'relay-ip');
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

  const minPort = read(raw, 'min-port');
  const maxPort = read(raw, 'max-port');
  if (minPort > maxPort) throw new ConfigError('min-port', minPort, `at most --max-port (${maxPort})`);
  return { listeningIps, listeningPort, relayIps, minPort, maxPort };
}

/** --user, --userdb, --use-auth-secret with --static-auth-secret: at least one credential (never an open relay). */
function credentials(raw: RawOptions): Pick<ServerConfig, 'users' | 'authSecrets'> {
  const users = new Map<string, string>();
  for (const entry of read(raw, 'user')) parseUser('user', String(entry), users);
  const userdb = read(raw, 'userdb');
  if (userdb !== undefined) {
    let text: string;
    try {
      text = readFileSync(userdb, 'utf8');
    } catch (err) {
      throw new ConfigError('userdb', userdb, `a readable file of name:password lines (${(err as Error).message})`);
    }
    text.split(/\r?\n/).forEach((line, i) => {
      const trimmed = line.trim();
      if (trimmed === '' || trimmed.startsWith('#')) return;
      try {
        parseUser('userdb', trimmed, users);
      } catch {
        throw new ConfigError('userdb', `${userdb}:${i + 1}`, 'each line name:password (blank lines and # comments allowed)');
      }
    });
  }

  const secrets = read(raw, 'static-auth-secret')
    .map(String)
    .filter((s) => s.length > 0);
  const useAuthSecret = read(raw, 'use-auth-secret');
  if (useAuthSecret && secrets.length === 0) throw new ConfigError('static-auth-secret', '', 'at least one secret when --use-auth-secret is on');
  if (!useAuthSecret && secrets.length > 0) throw new ConfigError('use-auth-secret', false, 'true when --static-auth-secret is given (as coturn requires)');
  if (users.size === 0 && !useAuthSecret) {
    throw new ConfigError(
      'user',
      '',
      'a credential',
      'no credentials configured: give --user name:password, --userdb FILE, or --use-auth-secret with --static-auth-secret (anyturn is never an open relay)',
    );
  }
  return { users, authSecrets: useAuthSecret ? secrets : [] };
}

/** Parses "name:password" (the password may itself contain ':'). */
function parseUser(flag: string, entry: string, users: Map<string, string>): void {
  const colon = entry.indexOf(':');
  if (colon <= 0 || colon === entry.length - 1) throw new ConfigError(flag, entry.replace(/:.*/, ':***'), 'name:password, with a non-empty name and password');
  users.set(entry.slice(0, colon), entry.slice(colon + 1));
}

/** --mobility: a client that moves to another address hashes to another worker, which does not hold its allocation. */
function mobility(raw: RawOptions): boolean {
  const on = read(raw, 'mobility');
  const n = read(raw, 'workers');
  if (on && n !== 1) throw new ConfigError('mobility', on, `off with --workers ${n}: a moved client's packets reach another worker (or give --workers 1)`);
  return on;
}

/** --workers and --dataplane: the kernel data plane serves one process; with workers only the JavaScript path relays. */
function processModel(raw: RawOptions, minPort: number, maxPort: number, cluster: ClusterConfig | undefined): Pick<ServerConfig, 'workers' | 'dataplane'> {
  const n = workers(raw, minPort, maxPort, cluster);
  const mode = read(raw, 'dataplane');
  if (mode === 'kernel' && n !== 1) {
    throw new ConfigError('dataplane', mode, `'auto' or 'js' with --workers ${n}: the kernel data plane serves one process (or give --workers 1)`);
  }
  const relaySockets = read(raw, 'relay-sockets');
  if (relaySockets === 'shared' && (mode === 'js' || n !== 1)) {
    const why = mode === 'js' ? '--dataplane js' : `--workers ${n}`;
    throw new ConfigError(
      'relay-sockets',
      relaySockets,
      `'auto' or 'per-allocation' with ${why}: shared relay sockets need the kernel data plane, which serves one process`,
    );
  }
  const dataplane: DataplaneConfig = { mode, interfaces: read(raw, 'dataplane-interface'), maxChannels: read(raw, 'dataplane-channels'), relaySockets };
  return { workers: n, dataplane };
}

/** --workers: each worker relays on its own slice of the port range, so no two bind the same port. */
function workers(raw: RawOptions, minPort: number, maxPort: number, cluster: ClusterConfig | undefined): number {
  const n = read(raw, 'workers');
  if (n === 1) return 1;
  if (maxPort - minPort + 1 < n)
    throw new ConfigError('workers', n, `at most the number of relay ports (--min-port ${minPort} to --max-port ${maxPort}): each worker gets its own slice`);
  if (cluster?.relayMode === 'anycast') {
    throw new ConfigError(
      'workers',
      n,
      "1 with --relay-mode anycast: there every node binds every allocation's relayed port, which workers on one host cannot share",
    );
  }
  if (cluster && cluster.meshPort !== 0 && cluster.meshPort + n - 1 > 65535)
    throw new ConfigError('workers', n, `a count that leaves --mesh-address port ${cluster.meshPort} + one port per worker under 65536`);
  return n;
}

/** A bandwidth limit: 0 (none) or enough for a full-size datagram, since a token bucket holds one second of it (turn/bandwidth.ts). */
function bandwidthLimit(raw: RawOptions, flag: 'max-bps' | 'user-max-bps' | 'bps-capacity'): number {
  const value = read(raw, flag);
  if (value > 0 && value < 1500)
    throw new ConfigError(flag, value, '0 (no limit), or at least 1500 bytes per second (below it no full-size datagram ever passes)');
  return value;
}

// The cluster flags: the shared store (--redis-url, --redis-sentinel, --redis-cluster and
// their password and TLS), the mesh address and secret, and the relay mode. Each flag's
// value is checked by its kind in the table; here, the checks across flags.

import { X509Certificate } from 'node:crypto';
import { readFileSync } from 'node:fs';
import type { RedisTarget, RedisTls } from '../store/shared.js';
import { ConfigError } from './errors.js';
import { type RawOptions, read } from './flags.js';
import type { ClusterConfig } from './types.js';

export function buildClusterConfig(raw: RawOptions): ClusterConfig | undefined {
  const redis = redisTarget(raw);
  if (redis === undefined) {
    for (const flag of ['mesh-address', 'cluster-secret', 'region'] as const) {
      if (raw[flag] !== undefined)
        throw new ConfigError(
          flag,
          flag === 'cluster-secret' ? '***' : raw[flag],
          'only with a shared store: --redis-url, --redis-sentinel or --redis-cluster',
        );
    }
    // Read as given: without a store, the relay mode is not otherwise checked (yargs' choices are, from the CLI).
    if (raw['relay-mode'] === 'anycast')
      throw new ConfigError(
        'relay-mode',
        'anycast',
        'only with a shared store (--redis-url, --redis-sentinel or --redis-cluster): every node must see every allocation',
      );
    return undefined;
  }
  const mesh = read(raw, 'mesh-address');
  if (mesh === undefined)
    throw new ConfigError(
      'mesh-address',
      '',
      'ip:port of this node for node-to-node forwarding',
      `missing --mesh-address: with --${redis.flag} each node needs its unicast ip:port for the mesh, e.g. --mesh-address 192.0.2.10:7000`,
    );
  const secret = read(raw, 'cluster-secret');
  if (secret === undefined || Buffer.byteLength(secret) < 16) {
    throw new ConfigError(
      'cluster-secret',
      secret === undefined ? '' : '***',
      'at least 16 bytes, the same on every node (the mesh key, and the nonce key unless --nonce-secret is given, are derived from it)',
      `${secret === undefined ? 'missing' : 'too short'} --cluster-secret: with --${redis.flag} give every node the same secret of at least 16 bytes (the mesh key, and the nonce key unless --nonce-secret is given, are derived from it)`,
    );
  }
  return {
    redis: redis.target,
    redisUrl: redis.target.kind === 'url' ? redis.target.url : '',
    meshAddress: mesh.address,
    meshPort: mesh.port,
    clusterSecret: Buffer.from(secret, 'utf8'),
    lookupsPerSecond: read(raw, 'cluster-lookup-rate'),
    relayMode: read(raw, 'relay-mode'),
    ...regionOf(raw),
  };
}

/** --region, checked by its kind; absent when not given (a config without it compares equal to one of old). */
function regionOf(raw: RawOptions): { readonly region?: string } {
  const region = read(raw, 'region');
  return region === undefined ? {} : { region };
}

/** The flags that select the shared store: exactly one may be given. */
const STORE_FLAGS = ['redis-url', 'redis-sentinel', 'redis-cluster'] as const;
type StoreFlag = (typeof STORE_FLAGS)[number];
const ONE_STORE = 'exactly one of --redis-url, --redis-sentinel (with --redis-sentinel-name) or --redis-cluster selects the shared store';

function given(value: string | readonly string[] | undefined): boolean {
  return value !== undefined && !(Array.isArray(value) && value.length === 0);
}

/** --redis-url, --redis-sentinel + --redis-sentinel-name, or --redis-cluster (+ --redis-password): the shared store, if any. */
function redisTarget(raw: RawOptions): { readonly target: RedisTarget; readonly flag: StoreFlag } | undefined {
  const chosen = STORE_FLAGS.filter((f) => given(raw[f]));
  if (chosen.length > 1) {
    throw new ConfigError(
      chosen[1]!,
      chosen.map((f) => `--${f}`).join(' '),
      ONE_STORE,
      `--${chosen.join(' and --')} are ${chosen.length === 2 ? 'both' : 'all'} given: ${ONE_STORE}`,
    );
  }
  const password = read(raw, 'redis-password');
  if (password !== undefined && password === '') throw new ConfigError('redis-password', '', 'a non-empty password (or leave the flag out)');
  const name = read(raw, 'redis-sentinel-name');
  const flag = chosen[0];
  if (flag !== 'redis-sentinel' && name !== undefined)
    throw new ConfigError('redis-sentinel-name', name, 'only with --redis-sentinel (the master group the sentinels monitor)');
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
    case 'redis-url':
      return { flag, target: { kind: 'url', url: redisUrl(raw, password), ...withPassword, ...withTls } };
    case 'redis-sentinel': {
      const sentinels = read(raw, 'redis-sentinel');
      if (name === undefined || !/^[A-Za-z0-9._:-]{1,128}$/.test(name)) {
        throw new ConfigError(
          'redis-sentinel-name',
          name ?? '',
          'the master group name the sentinels monitor (letters, digits, ._:-), e.g. mymaster',
          name === undefined
            ? 'missing --redis-sentinel-name: with --redis-sentinel give the master group the sentinels monitor ("sentinel monitor <name> ..."), e.g. --redis-sentinel-name mymaster'
            : undefined,
        );
      }
      return { flag, target: { kind: 'sentinel', sentinels, name, ...withPassword, ...withTls } };
    }
    case 'redis-cluster':
      return { flag, target: { kind: 'cluster', nodes: read(raw, 'redis-cluster'), ...withPassword, ...withTls } };
  }
}

/** --redis-url: redis:// or rediss://, its password given once, --redis-ca only with TLS. */
function redisUrl(raw: RawOptions, password: string | undefined): string {
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
  if (password !== undefined && parsed.password !== '')
    throw new ConfigError('redis-password', '***', 'not together with a password in --redis-url: give it once');
  if (raw['redis-ca'] !== undefined && parsed.protocol !== 'rediss:')
    throw new ConfigError('redis-ca', raw['redis-ca'], 'only with TLS: a rediss:// --redis-url, or --redis-tls with --redis-sentinel or --redis-cluster');
  return url;
}

/**
 * --redis-tls (Sentinel, Cluster; a URL says rediss:// instead) and --redis-ca FILE
 * (PEM CA certificates that sign the Redis certificates; without it, the system's).
 */
function redisTls(raw: RawOptions, flag: StoreFlag): RedisTls | undefined {
  const on = raw['redis-tls'] === true;
  const caFile = raw['redis-ca'];
  if (on && flag === 'redis-url')
    throw new ConfigError('redis-tls', true, 'only with --redis-sentinel or --redis-cluster: for --redis-url write rediss:// instead of redis://');
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

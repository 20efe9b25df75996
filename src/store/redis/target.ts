// Where the shared store lives (--redis-url, --redis-sentinel, --redis-cluster):
// the target's type, its check at startup, and its description for logs.

export interface RedisHostPort {
  readonly host: string;
  readonly port: number;
}

/** TLS to Redis (--redis-tls, or a rediss:// URL): the server certificate is always verified. */
export interface RedisTls {
  /** --redis-ca: the CA certificate(s), PEM, that sign the Redis certificates; absent: the system's CAs. */
  readonly ca?: string;
}

/**
 * Where the shared store lives: one Redis by URL (--redis-url), a master found
 * through Sentinel (--redis-sentinel, --redis-sentinel-name), or Redis Cluster
 * (--redis-cluster). `password` is --redis-password (a URL carries its own).
 * `tls`: rediss:// says it for a URL; --redis-tls for Sentinel (the sentinels
 * and the master) and Cluster (every node). Cluster data and credentials cross
 * the network between PoPs: never in clear text there.
 */
export type RedisTarget =
  | { readonly kind: 'url'; readonly url: string; readonly password?: string; readonly tls?: RedisTls }
  | { readonly kind: 'sentinel'; readonly sentinels: readonly RedisHostPort[]; readonly name: string; readonly password?: string; readonly tls?: RedisTls }
  | { readonly kind: 'cluster'; readonly nodes: readonly RedisHostPort[]; readonly password?: string; readonly tls?: RedisTls };

/** Strips credentials from a Redis URL before it is logged. */
function redactUrl(url: string): string {
  try {
    const u = new URL(url);
    if (u.password) u.password = '***';
    return u.toString();
  } catch {
    return '<unparseable redis url>';
  }
}

/** The target for logs (never a password). */
export function describeRedisTarget(target: RedisTarget): string {
  const list = (nodes: readonly RedisHostPort[]): string => nodes.map((n) => `${n.host.includes(':') ? `[${n.host}]` : n.host}:${n.port}`).join(',');
  switch (target.kind) {
    case 'url':
      return redactUrl(target.url);
    case 'sentinel':
      return `sentinel ${target.name} via ${list(target.sentinels)}${target.tls ? ' (tls)' : ''}`;
    case 'cluster':
      return `cluster ${list(target.nodes)}${target.tls ? ' (tls)' : ''}`;
  }
}

/** The target as configured (a string is a redis:// URL), checked: a bad one names its flag. */
export function toTarget(target: string | RedisTarget): RedisTarget {
  const t: RedisTarget = typeof target === 'string' ? { kind: 'url', url: target } : target;
  if (t.kind === 'url' && !/^rediss?:\/\//i.test(t.url)) {
    throw new Error(`--redis-url must start with redis:// or rediss:// (got ${JSON.stringify(redactUrl(t.url))})`);
  }
  if (t.kind === 'sentinel' && (t.sentinels.length === 0 || t.name === ''))
    throw new Error('--redis-sentinel needs at least one host:port and --redis-sentinel-name');
  if (t.kind === 'cluster' && t.nodes.length === 0) throw new Error('--redis-cluster needs at least one host:port');
  return t;
}

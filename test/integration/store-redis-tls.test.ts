// TLS to Redis behind Sentinel and Cluster (--redis-tls, --redis-ca): the flags'
// validation, and a real Sentinel and master that speak only TLS (no plain
// port): the store works over TLS with the CA given, and does not without TLS
// or with a CA that did not sign the certificate.
//
// Safety: redis-server processes on 127.0.0.1 only, removed after the test.

import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { type ChildProcess, spawn, spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import tls from 'node:tls';

import { buildConfig, ConfigError, type RawOptions } from '../../src/config/index.js';
import { sentinelRedisOptions, clusterRedisOptions } from '../../src/store/redis/client-options.js';
import { createRedisClients } from '../../src/store/redis/clients.js';
import { fiveTupleKey } from '../../src/store/types.js';
import { findFreePort, killOnExit, redisServerArgs } from '../helpers/redis-server.js';

const REDIS_SERVER = process.env.REDIS_SERVER_PATH ?? '/usr/bin/redis-server';
const CLUSTER: RawOptions = { 'listening-ip': ['127.0.0.1'], user: ['u:p'], 'mesh-address': '127.0.0.1:7000', 'cluster-secret': 'a-cluster-secret-of-16+' };

/** A self-signed certificate for 127.0.0.1 (its own CA), in `dir`. */
function makeCertificate(dir: string, name: string): { cert: string; key: string } {
  const cert = join(dir, `${name}.crt`);
  const key = join(dir, `${name}.key`);
  const run = spawnSync(
    'openssl',
    [
      'req',
      '-x509',
      '-newkey',
      'rsa:2048',
      '-nodes',
      '-keyout',
      key,
      '-out',
      cert,
      '-days',
      '1',
      '-subj',
      '/CN=localhost',
      '-addext',
      'subjectAltName=IP:127.0.0.1,DNS:localhost',
    ],
    { encoding: 'utf8' },
  );
  if (run.error || run.status !== 0) throw new Error(`openssl failed (install openssl; .ci/run does): ${run.error?.message ?? run.stderr}`);
  return { cert, key };
}

function refusal(raw: RawOptions): ConfigError {
  try {
    buildConfig(raw);
  } catch (err) {
    if (err instanceof ConfigError) return err;
    throw err;
  }
  assert.fail(`accepted ${JSON.stringify(raw)}`);
}

describe('--redis-tls and --redis-ca: validation', () => {
  const dir = mkdtempSync(join(tmpdir(), 'anyturn-redis-tls-cfg-'));
  const { cert } = makeCertificate(dir, 'ca');
  const notPem = join(dir, 'not.pem');
  writeFileSync(notPem, 'hello\n');
  after(() => rmSync(dir, { recursive: true, force: true }));
  const sentinel: RawOptions = { ...CLUSTER, 'redis-sentinel': ['127.0.0.1:26379'], 'redis-sentinel-name': 'mymaster' };
  const cluster: RawOptions = { ...CLUSTER, 'redis-cluster': ['127.0.0.1:7001'] };

  it('puts TLS (with the CA) on a Sentinel or Cluster target', () => {
    const s = buildConfig({ ...sentinel, 'redis-tls': true, 'redis-ca': cert }).cluster!.redis;
    assert.equal(s.kind, 'sentinel');
    assert.equal(s.tls?.ca, readFileSync(cert, 'utf8'));
    const c = buildConfig({ ...cluster, 'redis-tls': true }).cluster!.redis;
    assert.deepEqual(c.kind === 'cluster' ? c.tls : undefined, {});
    assert.equal(buildConfig(cluster).cluster!.redis.tls, undefined, 'off unless asked');
    const u = buildConfig({ ...CLUSTER, 'redis-url': 'rediss://127.0.0.1:6380', 'redis-ca': cert }).cluster!.redis;
    assert.equal(u.tls?.ca, readFileSync(cert, 'utf8'));
  });

  it('hands the TLS options to ioredis for the sentinels, the master and every cluster node', () => {
    const s = buildConfig({ ...sentinel, 'redis-tls': true, 'redis-ca': cert }).cluster!.redis;
    assert.equal(s.kind, 'sentinel');
    if (s.kind !== 'sentinel') return;
    const so = sentinelRedisOptions(s);
    assert.equal(so.enableTLSForSentinelMode, true);
    assert.equal(so.sentinelTLS?.ca, s.tls?.ca);
    assert.equal(so.tls?.ca, s.tls?.ca);
    assert.equal(so.tls?.rejectUnauthorized, true);
    const c = buildConfig({ ...cluster, 'redis-tls': true }).cluster!.redis;
    if (c.kind !== 'cluster') return assert.fail('not a cluster target');
    assert.equal(clusterRedisOptions(c).redisOptions?.tls?.rejectUnauthorized, true);
    assert.equal(clusterRedisOptions({ ...c, tls: undefined }).redisOptions?.tls, undefined);
  });

  it('refuses what cannot mean anything, naming the flag and the value', () => {
    const cases: [RawOptions, string, string][] = [
      [{ ...CLUSTER, 'redis-url': 'redis://127.0.0.1:6379', 'redis-tls': true }, 'redis-tls', 'rediss://'],
      [{ ...CLUSTER, 'redis-url': 'redis://127.0.0.1:6379', 'redis-ca': cert }, 'redis-ca', 'rediss://'],
      [{ ...sentinel, 'redis-ca': cert }, 'redis-ca', '--redis-tls'],
      [{ ...cluster, 'redis-tls': true, 'redis-ca': join(dir, 'missing.pem') }, 'redis-ca', 'readable'],
      [{ ...cluster, 'redis-tls': true, 'redis-ca': notPem }, 'redis-ca', 'PEM'],
      [{ 'listening-ip': ['127.0.0.1'], user: ['u:p'], 'redis-tls': true }, 'redis-tls', '--redis-sentinel or --redis-cluster'],
    ];
    for (const [raw, flag, says] of cases) {
      const err = refusal(raw);
      assert.equal(err.flag, flag, err.message);
      assert.ok(err.message.includes(`--${flag}`), err.message);
      assert.ok(err.message.includes(says), err.message);
    }
  });
});

describe('--redis-tls with a real Sentinel and master that speak only TLS', () => {
  let dir: string;
  let ca: string;
  let otherCa: string;
  let sentinelPort: number;
  const children: ChildProcess[] = [];

  const start = (args: string[]): void => {
    const child = killOnExit(spawn(REDIS_SERVER, args, { stdio: 'ignore' }));
    children.push(child);
  };
  /** True once a TLS handshake (verified with the CA) and a PING succeed on port. */
  const tlsPing = (port: number): Promise<boolean> =>
    new Promise((resolve) => {
      const socket = tls.connect({ host: '127.0.0.1', port, ca, servername: 'localhost' }, () => socket.write('PING\r\n'));
      socket.setTimeout(500, () => {
        socket.destroy();
        resolve(false);
      });
      socket.once('error', () => resolve(false));
      socket.once('data', (d) => {
        socket.destroy();
        resolve(d.toString().startsWith('+PONG'));
      });
    });
  const waitReady = async (port: number): Promise<void> => {
    for (let i = 0; i < 100; i++) {
      if (await tlsPing(port)) return;
      await new Promise((r) => setTimeout(r, 100));
    }
    throw new Error(`redis on TLS port ${port} did not answer`);
  };

  before(async () => {
    dir = mkdtempSync(join(tmpdir(), 'anyturn-redis-tls-'));
    const own = makeCertificate(dir, 'server');
    ca = readFileSync(own.cert, 'utf8');
    otherCa = readFileSync(makeCertificate(dir, 'other').cert, 'utf8');
    const tlsArgs = ['--tls-cert-file', own.cert, '--tls-key-file', own.key, '--tls-ca-cert-file', own.cert, '--tls-auth-clients', 'no'];
    const masterPort = await findFreePort();
    // --port 0: no plain port, TLS only.
    start(redisServerArgs(0, dir, ['--tls-port', String(masterPort), ...tlsArgs]));
    await waitReady(masterPort);
    sentinelPort = await findFreePort();
    const conf = join(dir, 'sentinel.conf');
    writeFileSync(
      conf,
      [
        'port 0',
        `tls-port ${sentinelPort}`,
        `tls-cert-file ${own.cert}`,
        `tls-key-file ${own.key}`,
        `tls-ca-cert-file ${own.cert}`,
        'tls-auth-clients no',
        'tls-replication yes', // the sentinel reaches the master over TLS too
        'bind 127.0.0.1',
        'protected-mode no',
        `dir ${dir}`,
        'sentinel resolve-hostnames no',
        `sentinel monitor mymaster 127.0.0.1 ${masterPort} 1`,
        '',
      ].join('\n'),
    );
    start([conf, '--sentinel']);
    await waitReady(sentinelPort);
  });
  after(() => {
    for (const c of children) c.kill('SIGKILL');
    rmSync(dir, { recursive: true, force: true });
  });

  const target = (tlsOptions?: { ca?: string }) => ({
    kind: 'sentinel' as const,
    sentinels: [{ host: '127.0.0.1', port: sentinelPort }],
    name: 'mymaster',
    ...(tlsOptions ? { tls: tlsOptions } : {}),
  });

  it('stores and reads a record over TLS, certificates verified against --redis-ca', async () => {
    const clients = createRedisClients(target({ ca }), { connectTimeoutMs: 2000 });
    try {
      await clients.store.waitUntilReady(10_000);
      const key = fiveTupleKey('udp', '192.0.2.7', 5000, '192.0.2.1', 3478);
      const created = await clients.store.create(
        {
          key,
          transport: 'udp',
          clientAddress: '192.0.2.7',
          clientPort: 5000,
          serverAddress: '192.0.2.1',
          serverPort: 3478,
          relayedAddress: '192.0.2.1',
          relayedPort: 50000,
          ownerNodeId: 'tls-node',
          username: 'tls-user',
          realm: 'tls.test',
          createdAtMs: 1,
          expiresAtMs: Date.now() + 60_000,
          permissions: {},
          channels: {},
        },
        { userQuota: 0 },
      );
      assert.ok(created.ok);
      assert.equal((await clients.store.get(key))?.ownerNodeId, 'tls-node');
    } finally {
      await clients.close();
    }
  });

  it('does not connect without TLS, nor with a CA that did not sign the certificate', async () => {
    for (const t of [target(), target({ ca: otherCa })]) {
      const clients = createRedisClients(t, { connectTimeoutMs: 500 });
      try {
        await assert.rejects(clients.store.waitUntilReady(1500));
      } finally {
        await clients.close();
      }
    }
  });
});

// The ops endpoint's exposure and cost, over real sockets on loopback: it binds to
// 127.0.0.1 unless --metrics-ip says otherwise (checked on the spawned CLI, where
// another loopback address is refused), caps its connections, closes a client
// that never finishes its headers (slowloris) or goes silent, serves only its
// paths and methods, and renders /metrics at most once per --metrics-cache-ms.

import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import net from 'node:net';
import { buildConfig } from '../../src/config/index.js';
import { OpsHttpServer, type OpsHttpLimits } from '../../src/ops/http.js';
import { findFreeTcpPort, startAnyturn, stopAfter } from '../helpers/anyturn-process.js';
import { BASE } from '../helpers/config.js';
import { get, post, until } from '../helpers/ops-endpoint.js';

const TOKEN = 'ops-http-test-token-0123456789';

/** A registry stand-in that counts its renderings. */
class CountingRegistry {
  renders = 0;
  readonly contentType = 'text/plain; version=0.0.4; charset=utf-8';
  metrics(): Promise<string> {
    this.renders++;
    return Promise.resolve(`anyturn_test_renders ${this.renders}\n`);
  }
}

async function startOps(
  t: { after(fn: () => unknown): void },
  limits: OpsHttpLimits = {},
): Promise<{ ops: OpsHttpServer; registry: CountingRegistry; url: string }> {
  const registry = new CountingRegistry();
  let draining = false;
  const ops = new OpsHttpServer(
    '127.0.0.1',
    0,
    registry,
    { notReadyReason: () => (draining ? 'draining' : undefined) },
    {
      token: TOKEN,
      drain: () => (draining = true),
      undrain: () => (draining = false),
      state: () => ({ draining, allocations: 0 }),
    },
    limits,
  );
  await ops.start();
  t.after(() => ops.close());
  return { ops, registry, url: `http://127.0.0.1:${ops.port}` };
}

function connect(port: number, host = '127.0.0.1'): Promise<net.Socket> {
  return new Promise((resolve, reject) => {
    const s = net.connect({ host, port }, () => resolve(s));
    s.once('error', reject);
  });
}

/** Resolves with what the server sent once it closes the connection; false if it is still open after `ms` (a broken run). */
function closedBy(socket: net.Socket, ms: number): Promise<string | false> {
  return new Promise((resolve) => {
    let received = '';
    socket.on('data', (d: Buffer) => (received += d.toString('latin1')));
    socket.on('error', () => undefined);
    if (socket.destroyed) return resolve(received);
    const timer = setTimeout(() => resolve(false), ms);
    socket.once('close', () => {
      clearTimeout(timer);
      resolve(received);
    });
  });
}

/** GET /healthz on a kept-alive connection: the whole response. */
function healthz(socket: net.Socket): Promise<string> {
  return new Promise((resolve, reject) => {
    let received = '';
    const onData = (d: Buffer): void => {
      received += d.toString('latin1');
      // Chunked: the body, then the last (empty) chunk.
      if (received.includes('{"status":"ok"}\n') && received.endsWith('0\r\n\r\n')) {
        socket.off('data', onData);
        resolve(received);
      }
    };
    socket.on('data', onData);
    socket.once('close', () => reject(new Error(`closed after ${JSON.stringify(received)}`)));
    socket.write('GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n');
  });
}

/** One raw HTTP/1.1 exchange: the response's status line and headers. */
async function rawRequest(port: number, request: string): Promise<string> {
  const s = await connect(port);
  const done = closedBy(s, 10_000);
  s.end(request);
  const text = await done;
  assert.notEqual(text, false, 'the server answered and closed');
  return text as string;
}

describe('ops endpoint: bound to loopback by default', () => {
  it('--metrics-ip defaults to 127.0.0.1', () => {
    assert.equal(buildConfig(BASE).metricsIp, '127.0.0.1');
    assert.equal(buildConfig({ ...BASE, 'metrics-ip': '0.0.0.0' }).metricsIp, '0.0.0.0');
  });

  it('the CLI without --metrics-ip serves on 127.0.0.1 only: another loopback address (127.0.0.2) is refused', async (t) => {
    const metricsPort = await findFreeTcpPort();
    const server = stopAfter(t, await startAnyturn({ users: [{ name: 'u', password: 'p' }], extraArgs: ['--metrics-port', String(metricsPort)] }));
    assert.equal((await get(`http://127.0.0.1:${metricsPort}/healthz`)).status, 200);
    // Bound to 0.0.0.0, 127.0.0.2 would answer too (all of 127/8 is local on Linux).
    const err = await connect(metricsPort, '127.0.0.2').then(
      (s) => {
        s.destroy();
        return undefined;
      },
      (e: NodeJS.ErrnoException) => e,
    );
    assert.equal(err?.code, 'ECONNREFUSED', 'nothing listens on 127.0.0.2');
    const ready = server.process.stdout();
    assert.match(ready, new RegExp(`"metrics":"127\\.0\\.0\\.1:${metricsPort}"`));
  });

  it('OpsHttpServer reports the address it is bound to', async (t) => {
    const { ops } = await startOps(t);
    assert.equal(ops.boundAddress, '127.0.0.1');
  });
});

describe('ops endpoint: bounded cost', () => {
  it('closes connections over maxConnections at accept; those within keep being served', async (t) => {
    const { ops, url } = await startOps(t, { maxConnections: 2 });
    const a = await connect(ops.port);
    const b = await connect(ops.port);
    t.after(() => {
      a.destroy();
      b.destroy();
    });
    // An answer on each: the server has accepted both (and they stay open: keep-alive).
    assert.match(await healthz(a), /^HTTP\/1\.1 200 /);
    assert.match(await healthz(b), /^HTTP\/1\.1 200 /);
    const third = await connect(ops.port);
    assert.equal(typeof (await closedBy(third, 5000)), 'string', 'the third connection is closed at once');
    assert.equal(ops.refusedConnections, 1);
    // The two held connections still get answers.
    assert.match(await healthz(a), /^HTTP\/1\.1 200 /);
    b.destroy();
    // Below the cap again: served.
    await until(async () => ((await get(`${url}/healthz`).catch(() => ({ status: 0 }))).status === 200 ? true : undefined), 'an answer below the cap');
  });

  it('closes a connection that never finishes its headers (slowloris), though it keeps sending, with 408', async (t) => {
    const { ops } = await startOps(t, { headersTimeoutMs: 300, requestTimeoutMs: 600, idleTimeoutMs: 60_000 });
    const s = await connect(ops.port);
    t.after(() => s.destroy());
    const closed = closedBy(s, 15_000);
    s.write('GET /metrics HTTP/1.1\r\nHost: x\r\nX-Slow: ');
    // One byte now and then: never idle, never done.
    const drip = setInterval(() => s.writable && s.write('a'), 50);
    t.after(() => clearInterval(drip));
    const text = await closed;
    clearInterval(drip);
    assert.notEqual(text, false, 'the slow connection was closed');
    assert.match(text as string, /^HTTP\/1\.1 408 /);
  });

  it('closes a connection that sends nothing', async (t) => {
    const { ops } = await startOps(t, { headersTimeoutMs: 300, requestTimeoutMs: 600, idleTimeoutMs: 500 });
    const s = await connect(ops.port);
    t.after(() => s.destroy());
    assert.notEqual(await closedBy(s, 15_000), false, 'the silent connection was closed');
  });

  it('serves only GET (and HEAD) on /metrics, /healthz, /readyz and POST on /drain, /undrain; small headers', async (t) => {
    const { ops, url } = await startOps(t);
    assert.equal((await get(`${url}/nothing-here`)).status, 404);
    assert.equal((await post(`${url}/nothing-here`)).status, 404);
    assert.equal((await post(`${url}/metrics`)).status, 405);
    assert.equal((await fetch(`${url}/healthz`, { method: 'DELETE' })).status, 405);
    assert.equal((await fetch(`${url}/metrics`, { method: 'HEAD' })).status, 200);
    assert.equal((await get(`${url}/drain`)).status, 405);
    assert.equal((await get(`${url}/readyz`)).status, 200);
    // Request line and headers over 4 KiB: 431, the connection closed.
    const big = await rawRequest(ops.port, `GET /metrics HTTP/1.1\r\nHost: x\r\nX-Big: ${'a'.repeat(5000)}\r\n\r\n`);
    assert.match(big, /^HTTP\/1\.1 431 /);
    // Garbage: 400, not a crash.
    assert.match(await rawRequest(ops.port, 'NOT HTTP AT ALL\r\n\r\n'), /^HTTP\/1\.1 400 /);
    assert.equal((await get(`${url}/healthz`)).status, 200);
  });

  it('ends a kept-alive connection after maxRequestsPerSocket requests', async (t) => {
    // Deadlines far off: what ends the connection is the request count.
    const { ops } = await startOps(t, { maxRequestsPerSocket: 2, keepAliveTimeoutMs: 60_000, headersTimeoutMs: 60_000, requestTimeoutMs: 60_000 });
    const s = await connect(ops.port);
    t.after(() => s.destroy());
    assert.match(await healthz(s), /^connection: keep-alive\r$/im);
    const closed = closedBy(s, 15_000);
    s.write('GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n');
    const text = await closed;
    assert.notEqual(text, false, 'the connection was ended after its second request');
    const statuses = [...(text as string).matchAll(/^HTTP\/1\.1 (\d+)/gm)].map((m) => m[1]);
    assert.deepEqual(statuses, ['200']);
    assert.match(text as string, /^connection: close\r$/im, 'the last answer says Connection: close');
  });

  it('renders /metrics once per metricsCacheMs however many scrapes come, and afresh after POST /drain', async (t) => {
    const { registry, url } = await startOps(t, { metricsCacheMs: 60_000 });
    const bodies = await Promise.all(Array.from({ length: 20 }, () => get(`${url}/metrics`)));
    for (let i = 0; i < 5; i++) bodies.push(await get(`${url}/metrics`));
    assert.ok(bodies.every((b) => b.status === 200 && b.body === 'anyturn_test_renders 1\n'));
    assert.equal(registry.renders, 1, '25 scrapes, one rendering');
    // A drain changes anyturn_draining: the next scrape must show it.
    assert.equal((await post(`${url}/drain`, TOKEN)).status, 200);
    assert.equal((await get(`${url}/metrics`)).body, 'anyturn_test_renders 2\n');
    assert.equal(registry.renders, 2);
  });

  it('with metricsCacheMs 0 every scrape renders', async (t) => {
    const { registry, url } = await startOps(t, { metricsCacheMs: 0 });
    for (let i = 1; i <= 3; i++) assert.equal((await get(`${url}/metrics`)).body, `anyturn_test_renders ${i}\n`);
    assert.equal(registry.renders, 3);
  });

  it('--metrics-cache-ms: default 1000, 0 to 60000', () => {
    assert.equal(buildConfig(BASE).metricsCacheMs, 1000);
    assert.equal(buildConfig({ ...BASE, 'metrics-cache-ms': 0 }).metricsCacheMs, 0);
    for (const bad of [-1, 60_001, 1.5]) {
      assert.throws(
        () => buildConfig({ ...BASE, 'metrics-cache-ms': bad }),
        (e: Error) => /--metrics-cache-ms/.test(e.message) && e.message.includes(String(bad)) && /0 to render every scrape/.test(e.message),
      );
    }
  });
});

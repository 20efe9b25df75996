// Drain and shutdown, as an operator drives them: the CLI spawned for real.
// SIGTERM stops gracefully (exit 0) with live allocations; SIGUSR1 or an
// authenticated POST /drain makes new Allocates get 403 while live
// allocations keep relaying and /readyz says 503 "draining"; --drain-exit
// leaves once the last allocation is gone. POST /drain needs --admin-token.

import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { buildConfig } from '../../src/config/index.js';
import { createLogger } from '../../src/ops/log.js';
import { startServer } from '../../src/server.js';
import { type RunningTurnServer, type SpawnedProcess, findFreeTcpPort, parseLogLines, startAnyturn, stopAfter } from '../helpers/anyturn-process.js';
import { get, post, until } from '../helpers/ops-endpoint.js';
import { TestPeer, TestTurnClient } from '../helpers/turn-client.js';

const USER = 'drainer';
const PASSWORD = 'drain-password';
const REALM = 'drain.test';
const TOKEN = 'drain-test-token-0123456789abcdef';

interface Node {
  readonly server: RunningTurnServer;
  readonly ops: string;
}

async function startNode(t: { after(fn: () => unknown): void }, extra: readonly string[] = []): Promise<Node> {
  const metricsPort = await findFreeTcpPort();
  const server = await startAnyturn({
    users: [{ name: USER, password: PASSWORD }],
    realm: REALM,
    allowLoopbackPeers: true,
    extraArgs: ['--metrics-ip', '127.0.0.1', '--metrics-port', String(metricsPort), '--shutdown-timeout', '5', ...extra],
  });
  stopAfter(t, server);
  return { server, ops: `http://127.0.0.1:${metricsPort}` };
}

async function client(node: Node, t: { after(fn: () => unknown): void }): Promise<TestTurnClient> {
  const c = await TestTurnClient.open({ address: node.server.host, port: node.server.port }, { username: USER, password: PASSWORD, realm: REALM });
  t.after(() => c.close());
  return c;
}

function metric(text: string, name: string): number | undefined {
  const m = new RegExp(`^${name} (\\S+)$`, 'm').exec(text);
  return m ? Number(m[1]) : undefined;
}

function logs(p: SpawnedProcess): Record<string, unknown>[] {
  return parseLogLines(p.stdout());
}

describe('drain and graceful shutdown (CLI)', () => {
  it('SIGTERM with live allocations: every allocation deleted, exit 0 within --shutdown-timeout', async (t) => {
    const node = await startNode(t);
    const clients = await Promise.all([1, 2, 3].map(() => client(node, t)));
    for (const c of clients) assert.equal((await c.allocate()).response.code, 200);
    const exit = await node.server.process.stop('SIGTERM');
    // Past --shutdown-timeout the CLI exits 1: 0 means the graceful stop finished in time.
    assert.deepEqual(exit, { code: 0, signal: null }, node.server.process.outputTail());
    const deleted = logs(node.server.process).filter((l) => l.event === 'allocation_deleted' && l.reason === 'shutdown');
    assert.equal(deleted.length, 3);
    assert.ok(logs(node.server.process).some((l) => l.msg === 'anyturn stopped'));
    assert.equal(node.server.process.stderr(), '');
  });

  it('POST /drain without --admin-token is refused with 403 saying how to allow it', async () => {
    const port = await findFreeTcpPort();
    const withOps = await startServer(
      buildConfig({ 'listening-ip': ['127.0.0.1'], 'listening-port': 0, 'metrics-ip': '127.0.0.1', 'metrics-port': port, user: [`${USER}:${PASSWORD}`] }),
      { logger: createLogger('silent') },
    );
    try {
      const base = `http://127.0.0.1:${withOps.metricsPort}`;
      for (const token of [undefined, TOKEN]) {
        const r = await post(`${base}/drain`, token);
        assert.equal(r.status, 403);
        assert.match(r.body, /--admin-token/);
        assert.match(r.body, /SIGUSR1/);
      }
      assert.equal(withOps.isDraining(), false);
      assert.equal((await get(`${base}/readyz`)).status, 200);
    } finally {
      await withOps.stop();
    }
  });

  it('SIGUSR1 drains: Allocate gets 403, a live allocation keeps relaying, /readyz 503 draining; POST /undrain and /drain with the token', async (t) => {
    const node = await startNode(t, ['--admin-token', TOKEN]);
    const peer = await TestPeer.open();
    t.after(() => peer.close());
    const live = await client(node, t);
    const allocated = await live.allocate();
    assert.equal(allocated.response.code, 200);
    const relayed = allocated.relayed!;
    assert.equal((await live.channelBind(0x4001, peer.endpoint)).code, 200);
    assert.equal((await get(`${node.ops}/readyz`)).status, 200);
    assert.equal(metric((await get(`${node.ops}/metrics`)).body, 'anyturn_draining'), 0);

    process.kill(node.server.process.pid, 'SIGUSR1');
    const readyz = await until(async () => {
      const r = await get(`${node.ops}/readyz`);
      return r.status === 503 ? r : undefined;
    }, '/readyz 503 after SIGUSR1');
    assert.deepEqual(JSON.parse(readyz.body), { ready: false, reason: 'draining' });
    assert.ok(node.server.process.isRunning(), 'SIGUSR1 does not stop the process');
    // The log line travels through a pipe and may land after /readyz already says 503.
    await until(
      async () => (logs(node.server.process).some((l) => l.event === 'drain' && l.source === 'SIGUSR1') ? true : undefined),
      'the drain log line naming SIGUSR1',
    );
    assert.equal(metric((await get(`${node.ops}/metrics`)).body, 'anyturn_draining'), 1);

    const late = await client(node, t);
    const refused = await late.allocate();
    assert.equal(refused.response.code, 403, 'a new Allocate is refused while draining');

    // The live allocation goes on: ChannelData both ways, Refresh, a new permission.
    live.sendChannelData(0x4001, Buffer.from('still relaying'));
    const [out] = await peer.waitFor(1);
    assert.equal(out?.data.toString(), 'still relaying');
    assert.deepEqual(out?.from, relayed);
    peer.send(Buffer.from('still answering'), relayed);
    const [back] = await live.waitForReceived(1);
    assert.equal(back?.data.toString(), 'still answering');
    assert.equal((await live.refresh(600)).code, 200);
    assert.equal((await live.createPermission({ address: '127.0.0.1', port: 9 })).code, 200);

    // The ops endpoint: no token or a wrong one is refused; the right one works.
    assert.equal((await post(`${node.ops}/undrain`)).status, 401);
    assert.equal((await post(`${node.ops}/undrain`, `${TOKEN}x`)).status, 401);
    assert.equal((await post(`${node.ops}/undrain`, TOKEN.slice(0, -1))).status, 401);
    assert.equal((await get(`${node.ops}/drain`)).status, 405);
    assert.equal((await get(`${node.ops}/readyz`)).status, 503, 'refused POSTs changed nothing');
    const undrained = await post(`${node.ops}/undrain`, TOKEN);
    assert.equal(undrained.status, 200);
    assert.deepEqual(JSON.parse(undrained.body), { draining: false, allocations: 1 });
    assert.equal((await get(`${node.ops}/readyz`)).status, 200);
    assert.equal((await late.allocate()).response.code, 200, 'Allocates are taken again');

    assert.equal((await post(`${node.ops}/drain`)).status, 401);
    assert.equal((await post(`${node.ops}/drain`, 'wrong-token-wrong-token-wrong')).status, 401);
    assert.equal((await get(`${node.ops}/readyz`)).status, 200);
    const drained = await post(`${node.ops}/drain`, TOKEN);
    assert.equal(drained.status, 200);
    assert.deepEqual(JSON.parse(drained.body), { draining: true, allocations: 2 });
    assert.deepEqual(JSON.parse((await get(`${node.ops}/readyz`)).body), { ready: false, reason: 'draining' });
    const third = await client(node, t);
    assert.equal((await third.allocate()).response.code, 403);
    await until(
      async () => (logs(node.server.process).some((l) => l.event === 'drain' && l.source === 'POST /drain') ? true : undefined),
      'the drain log line naming POST /drain',
    );

    const text = (await get(`${node.ops}/metrics`)).body;
    assert.match(text, /^anyturn_requests_total\{method="allocate",code="403"\} 2$/m);
    assert.equal(node.server.process.isRunning(), true, 'without --drain-exit a drained node stays up');
  });

  it('--drain-exit: after SIGUSR1 the process exits 0 once the last allocation is deleted (Refresh lifetime 0)', async (t) => {
    const node = await startNode(t, ['--drain-exit']);
    const a = await client(node, t);
    const b = await client(node, t);
    assert.equal((await a.allocate()).response.code, 200);
    assert.equal((await b.allocate()).response.code, 200);
    process.kill(node.server.process.pid, 'SIGUSR1');
    await until(async () => ((await get(`${node.ops}/readyz`)).status === 503 ? true : undefined), 'draining');
    assert.equal((await a.refresh(0)).code, 200);
    // One allocation left: still running, still answering the remaining client.
    assert.equal((await b.refresh(600)).code, 200);
    assert.ok(node.server.process.isRunning(), 'one allocation is still live');
    assert.equal((await b.refresh(0)).code, 200);
    const exit = await node.server.process.exited;
    assert.deepEqual(exit, { code: 0, signal: null }, node.server.process.outputTail());
    const lines = logs(node.server.process);
    assert.equal(lines.filter((l) => l.event === 'allocation_deleted').length, 2);
    assert.ok(lines.some((l) => l.msg === 'anyturn stopped'));
  });

  it('--drain-exit with no allocations: POST /drain with the token, and the process exits 0 right away', async (t) => {
    const node = await startNode(t, ['--drain-exit', '--admin-token', TOKEN]);
    const r = await post(`${node.ops}/drain`, TOKEN);
    assert.equal(r.status, 200);
    assert.deepEqual(JSON.parse(r.body), { draining: true, allocations: 0 });
    const exit = await node.server.process.exited;
    assert.deepEqual(exit, { code: 0, signal: null }, node.server.process.outputTail());
  });
});

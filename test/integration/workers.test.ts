// `anyturn --workers 2` spawned for real, as an operator runs it, all on 127.0.0.1.
// The primary holds the UDP listening socket and hands a client's first packets to
// the worker the client hashes to (workerFor); an authenticated Allocate opens a
// socket in that worker connected to the client, and from then on the kernel
// delivers the client straight to the worker. So: relayed traffic never crosses the
// primary (its handoff counter stays a small constant per client while thousands of
// packets are relayed), stateless answers (Binding, 401) come back through it, each
// worker relays on its own slice of the port range, TCP connections are shared out,
// and drain, readiness, a worker's death and SIGTERM behave as with one process.

import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';

import { encodeRequestedTransport } from '../../src/stun/attributes.js';
import { Attr, Method, TRANSPORT_UDP } from '../../src/stun/constants.js';
import { getAttribute } from '../../src/stun/message.js';
import { portSlice, workerFor } from '../../src/workers/protocol.js';
import {
  LOOPBACK_V4,
  type CleanupRegistrar,
  type RunningPeer,
  type RunningTurnServer,
  findFreeTcpPort,
  parseLogLines,
  startAnyturn,
  startTurnutilsPeer,
  stopAfter,
} from '../helpers/anyturn-process.js';
import { type Sample, get, parseMetrics, post, sum, until } from '../helpers/ops-endpoint.js';
import { TestPeer, TestTurnClient, codeOf } from '../helpers/turn-client.js';
import { describeRun, parseUclientStats, runUclient } from '../helpers/uclient.js';

const USER = 'worker-user';
const PASSWORD = 'worker-password';
const REALM = 'workers.test';
const TOKEN = 'workers-test-token-0123456789abcdef';
const WORKERS = 2;

// Only stops a hung uclient or run; nothing asserts on duration.
const UCLIENT_DEADLINE_MS = 120_000;
const UCLIENT_TEST_TIMEOUT_MS = 180_000;
const TEST_TIMEOUT_MS = 60_000;

interface Node {
  readonly server: RunningTurnServer;
  /** http://127.0.0.1:<metrics port> */
  readonly ops: string;
  /** The workers' pids, by index, from the primary's 'anyturn ready' line. */
  readonly pids: readonly number[];
}

async function startNode(t: CleanupRegistrar, extra: readonly string[] = []): Promise<Node> {
  const metricsPort = await findFreeTcpPort();
  const server = stopAfter(
    t,
    await startAnyturn({
      users: [{ name: USER, password: PASSWORD }],
      realm: REALM,
      allowLoopbackPeers: true,
      // --metrics-cache-ms 0: the tests compare scrapes taken before and after one packet.
      extraArgs: [
        '--workers',
        String(WORKERS),
        '--metrics-ip',
        LOOPBACK_V4,
        '--metrics-port',
        String(metricsPort),
        '--metrics-cache-ms',
        '0',
        '--admin-token',
        TOKEN,
        ...extra,
      ],
    }),
  );
  const ready = parseLogLines(server.process.stdout()).find((l) => l.msg === 'anyturn ready');
  assert.ok(ready, `the primary logged 'anyturn ready'\n${server.process.outputTail()}`);
  assert.equal(ready.role, 'primary');
  assert.equal(ready.workers, WORKERS);
  const pids = ready.pids as number[];
  assert.ok(
    Array.isArray(pids) && pids.length === WORKERS && pids.every((p) => Number.isInteger(p) && p > 0),
    `pids in the ready line: ${JSON.stringify(ready.pids)}`,
  );
  assert.ok(!pids.includes(server.process.pid), 'workers are processes of their own');
  // Each worker said it was ready before the primary did.
  const workerReady = parseLogLines(server.process.stdout()).filter((l) => l.msg === 'anyturn worker ready');
  assert.deepEqual(workerReady.map((l) => l.worker).sort(), [0, 1]);
  return { server, ops: `http://${LOOPBACK_V4}:${metricsPort}`, pids };
}

async function scrape(node: Node): Promise<Sample[]> {
  const r = await get(`${node.ops}/metrics`);
  assert.equal(r.status, 200, r.body);
  return parseMetrics(r.body);
}

function perWorker(samples: readonly Sample[], name: string): number[] {
  return Array.from({ length: WORKERS }, (_, i) => sum(samples, name, { worker: String(i) }));
}

/** The worker's own relay ports: its slice of the node's range. */
function sliceOf(node: Node, worker: number): { minPort: number; maxPort: number } {
  return portSlice(node.server.relayPorts.min, node.server.relayPorts.max, worker, WORKERS);
}

/** A client on 127.0.0.1 whose source port hashes to `worker` (ephemeral ports tried until one does). */
async function clientOn(node: Node, worker: number, t: CleanupRegistrar): Promise<TestTurnClient> {
  const server = { address: node.server.host, port: node.server.port };
  for (let attempt = 0; attempt < 200; attempt++) {
    const c = await TestTurnClient.open(server, { username: USER, password: PASSWORD, realm: REALM });
    if (workerFor(LOOPBACK_V4, c.localPort, WORKERS) === worker) {
      t.after(() => c.close());
      return c;
    }
    c.close();
  }
  throw new Error(`no ephemeral port hashing to worker ${worker}`);
}

function isAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code !== 'ESRCH';
  }
}

/** Allocates (200), checks the relayed port is in the worker's slice, permits the peer. */
async function allocateOn(node: Node, c: TestTurnClient, worker: number, peer: TestPeer): Promise<{ address: string; port: number }> {
  const allocated = await c.allocate();
  assert.equal(allocated.response.code, 200, `Allocate on worker ${worker}\n${node.server.process.outputTail()}`);
  const relayed = allocated.relayed!;
  assert.equal(relayed.address, LOOPBACK_V4);
  const slice = sliceOf(node, worker);
  assert.ok(
    relayed.port >= slice.minPort && relayed.port <= slice.maxPort,
    `relayed port ${relayed.port} is in worker ${worker}'s slice ${slice.minPort}-${slice.maxPort}`,
  );
  assert.equal((await c.createPermission(peer.endpoint)).code, 200);
  return relayed;
}

/** Send indication out, Data indication back: the allocation relays both ways. */
async function roundTrip(c: TestTurnClient, peer: TestPeer, relayed: { address: string; port: number }, text: string): Promise<void> {
  const seenAtPeer = peer.received.length;
  const seenAtClient = c.received.length;
  c.sendIndication(peer.endpoint, Buffer.from(`${text} out`));
  const atPeer = (await peer.waitFor(seenAtPeer + 1, 5000)).slice(seenAtPeer);
  assert.equal(atPeer[0]?.data.toString(), `${text} out`, `the peer got the client's data (${text})`);
  assert.deepEqual(atPeer[0]?.from, relayed, 'from the relayed address');
  peer.send(Buffer.from(`${text} back`), relayed);
  const atClient = (await c.waitForReceived(seenAtClient + 1, 5000)).slice(seenAtClient);
  assert.equal(atClient[0]?.kind, 'data-indication');
  assert.equal(atClient[0]?.data.toString(), `${text} back`, `the client got the peer's answer (${text})`);
  assert.deepEqual(atClient[0]?.peer, peer.endpoint);
}

function logsOf(node: Node): Record<string, unknown>[] {
  return parseLogLines(node.server.process.stdout());
}

describe('anyturn --workers 2 (CLI, loopback)', () => {
  let echo: RunningPeer | undefined;
  before(async () => {
    echo = await startTurnutilsPeer(LOOPBACK_V4);
  });
  after(async () => {
    await echo?.stop();
  });

  async function uclient(
    t: CleanupRegistrar & { diagnostic(message: string): void },
    node: Node,
    extraArgs: readonly string[],
    clients: number,
    messages: number,
  ): Promise<void> {
    assert.ok(echo, 'turnutils_peer did not start');
    const args = [
      '-v', // setup logging only (UDP, TCP): shows a failed ChannelBind's place in the sequence
      '-u',
      USER,
      '-w',
      PASSWORD,
      ...extraArgs,
      '-e',
      echo.host,
      '-r',
      String(echo.port),
      '-c',
      '-m',
      String(clients),
      '-n',
      String(messages),
      '-l',
      '100',
      '-z',
      '1',
      '-L',
      LOOPBACK_V4,
      '-p',
      String(node.server.port),
      node.server.host,
    ];
    const result = await runUclient(args, UCLIENT_DEADLINE_MS, t);
    const context = describeRun('turnutils_uclient', args, result, node.server);
    assert.equal(result.timedOut, false, `uclient did not finish\n${context}`);
    assert.equal(result.code, 0, `uclient failed\n${context}`);
    const stats = parseUclientStats(result.stdout + result.stderr);
    assert.ok(stats, `no final statistics in uclient output\n${context}`);
    assert.equal(stats.lostPackets, 0, `lost packets\n${context}`);
    assert.equal(stats.sendDropped, 0, `send dropped\n${context}`);
    assert.equal(stats.sentMessages, clients * messages, `messages sent\n${context}`);
    assert.equal(stats.receivedMessages, clients * messages, `messages received\n${context}`);
  }

  it('turnutils_uclient over UDP: nothing lost, both workers serve clients, relayed packets bypass the primary', {
    timeout: UCLIENT_TEST_TIMEOUT_MS,
  }, async (t) => {
    const node = await startNode(t);
    const CLIENTS = 16;
    const MESSAGES = 500;
    await uclient(t, node, [], CLIENTS, MESSAGES);

    const created = logsOf(node).filter((l) => l.event === 'allocation_created');
    assert.ok(created.length >= CLIENTS, `at least one allocation per client: ${created.length}`);
    assert.ok(created.every((l) => l.transport === 'udp'));
    for (let w = 0; w < WORKERS; w++) {
      const mine = created.filter((l) => l.worker === w);
      assert.ok(mine.length > 0, `worker ${w} created allocations (${created.map((l) => l.worker).join(',')})`);
      // Each client's allocation is on the worker its address:port hashes to, with a relayed port of that worker's slice.
      const slice = sliceOf(node, w);
      for (const l of mine) {
        const [address, port] = String(l.client).split(':');
        assert.equal(workerFor(address!, Number(port), WORKERS), w, `client ${String(l.client)} is served by the worker it hashes to`);
        const relayedPort = Number(String(l.relayed).split(':')[1]);
        assert.ok(relayedPort >= slice.minPort && relayedPort <= slice.maxPort, `worker ${w} relays on ${relayedPort}, in ${slice.minPort}-${slice.maxPort}`);
      }
    }

    // uclient leaves half its allocations to expire: each worker still holds some, on sessions of its own.
    // (Workers report their state once a second: poll.)
    const samples = await until(async () => {
      const s = await scrape(node);
      return perWorker(s, 'anyturn_worker_allocations').every((n) => n > 0) && perWorker(s, 'anyturn_worker_udp_sessions').every((n) => n > 0) ? s : undefined;
    }, 'allocations and UDP sessions on both workers');
    const live = sum(samples, 'anyturn_allocations');
    assert.equal(
      perWorker(samples, 'anyturn_worker_allocations').reduce((a, b) => a + b, 0),
      live,
      'the per-worker gauges add up to the summed anyturn_allocations',
    );
    assert.equal(sum(samples, 'anyturn_allocations_created_total'), created.length, 'the summed counter agrees with the logs');
    assert.equal(sum(samples, 'anyturn_workers'), WORKERS);

    const c2p = sum(samples, 'anyturn_relayed_packets_total', { direction: 'client_to_peer' });
    const p2c = sum(samples, 'anyturn_relayed_packets_total', { direction: 'peer_to_client' });
    assert.equal(c2p, CLIENTS * MESSAGES, 'every message was relayed to the peer');
    assert.equal(p2c, CLIENTS * MESSAGES, 'every echo was relayed back');
    const handoffs = perWorker(samples, 'anyturn_worker_handoffs_total');
    const totalHandoffs = handoffs.reduce((a, b) => a + b, 0);
    assert.ok(
      handoffs.every((n) => n > 0),
      `both workers got first packets from the primary: ${JSON.stringify(handoffs)}`,
    );
    // A client's first packets (the unauthenticated Allocate, the authenticated one) cross the
    // primary; everything after goes to the worker's connected socket. Were relayed packets
    // handed over too, this would be in the thousands.
    assert.ok(
      totalHandoffs <= 4 * created.length,
      `handoffs ${totalHandoffs} <= 4 x ${created.length} client sockets, while ${c2p + p2c} packets were relayed`,
    );
    assert.equal(sum(samples, 'anyturn_primary_datagrams_total', { kind: 'unavailable' }), 0, 'no datagram was dropped for want of a worker');
  });

  it('turnutils_uclient over TCP: nothing lost, connections reach both workers', { timeout: UCLIENT_TEST_TIMEOUT_MS }, async (t) => {
    const node = await startNode(t);
    const CLIENTS = 10;
    await uclient(t, node, ['-t'], CLIENTS, 500);
    const created = logsOf(node).filter((l) => l.event === 'allocation_created');
    assert.ok(created.length >= CLIENTS, `at least one allocation per client: ${created.length}`);
    assert.ok(
      created.every((l) => l.transport === 'tcp'),
      'over TCP',
    );
    for (let w = 0; w < WORKERS; w++)
      assert.ok(
        created.some((l) => l.worker === w),
        `worker ${w} got connections (${created.map((l) => l.worker).join(',')})`,
      );
    const samples = await scrape(node);
    assert.equal(sum(samples, 'anyturn_relayed_packets_total', { direction: 'client_to_peer' }), CLIENTS * 500);
    assert.equal(sum(samples, 'anyturn_relayed_packets_total', { direction: 'peer_to_client' }), CLIENTS * 500);
    // TCP is node:cluster's business: no UDP datagram needed a handoff.
    assert.equal(sum(samples, 'anyturn_worker_handoffs_total'), 0);
  });

  it('Binding and the 401 come back through the primary; a full allocation on each worker relays without crossing it', {
    timeout: TEST_TIMEOUT_MS,
  }, async (t) => {
    const node = await startNode(t);
    const peer = await TestPeer.open();
    t.after(() => peer.close());
    for (let w = 0; w < WORKERS; w++) {
      const c = await clientOn(node, w, t);
      const before = await scrape(node);

      // A Binding request from a fresh socket: the primary hands it to worker w, which answers through the primary.
      assert.deepEqual(await c.binding(), { address: LOOPBACK_V4, port: c.localPort }, "XOR-MAPPED-ADDRESS is the client's own address");

      // An Allocate without credentials: 401 with REALM and NONCE, also through the primary.
      const { buf, transactionId } = c.build(Method.Allocate, (m) => m.add(Attr.RequestedTransport, encodeRequestedTransport(TRANSPORT_UDP)), { auth: false });
      const challenge = await c.transact(buf, transactionId);
      assert.ok(challenge, 'an answer to the unauthenticated Allocate');
      assert.equal(codeOf(challenge), 401);
      assert.equal(getAttribute(challenge, Attr.Realm)?.toString('utf8'), REALM);
      assert.ok((getAttribute(challenge, Attr.Nonce)?.length ?? 0) > 0, 'a NONCE');

      const afterStateless = await scrape(node);
      const handed = (s: Sample[]): number => sum(s, 'anyturn_worker_handoffs_total', { worker: String(w) });
      assert.ok(handed(afterStateless) - handed(before) >= 2, `worker ${w} got the Binding and the Allocate from the primary`);
      assert.equal(
        sum(afterStateless, 'anyturn_worker_handoffs_total', { worker: String(1 - w) }),
        sum(before, 'anyturn_worker_handoffs_total', { worker: String(1 - w) }),
        'and the other worker got nothing',
      );
      const answers = (s: Sample[]): number => sum(s, 'anyturn_primary_datagrams_total', { kind: 'answers' });
      assert.ok(answers(afterStateless) - answers(before) >= 2, "both answers left through the primary's socket");

      // Authenticated: the worker opens its session; from here the client bypasses the primary.
      const relayed = await allocateOn(node, c, w, peer);
      const allocated = await scrape(node);
      for (let i = 0; i < 3; i++) await roundTrip(c, peer, relayed, `worker ${w} #${i}`);
      assert.equal((await c.refresh(600)).code, 200);
      const relayedAfter = await scrape(node);
      assert.equal(handed(relayedAfter), handed(allocated), `no packet of worker ${w}'s client crossed the primary after the Allocate`);
      assert.equal(answers(relayedAfter), answers(allocated), 'and no answer left through it');
      assert.equal(
        sum(relayedAfter, 'anyturn_relayed_packets_total') - sum(allocated, 'anyturn_relayed_packets_total'),
        6,
        'three packets each way were relayed',
      );
    }
  });

  it('SIGUSR1 drains every worker: /readyz 503, new Allocates 403 on both, live allocations relay; POST /undrain makes it ready again', {
    timeout: TEST_TIMEOUT_MS,
  }, async (t) => {
    const node = await startNode(t);
    const peer = await TestPeer.open();
    t.after(() => peer.close());
    const live: { c: TestTurnClient; relayed: { address: string; port: number } }[] = [];
    for (let w = 0; w < WORKERS; w++) {
      const c = await clientOn(node, w, t);
      live.push({ c, relayed: await allocateOn(node, c, w, peer) });
    }
    assert.deepEqual(JSON.parse((await get(`${node.ops}/readyz`)).body), { ready: true });

    process.kill(node.server.process.pid, 'SIGUSR1');
    const readyz = await until(async () => {
      const r = await get(`${node.ops}/readyz`);
      return r.status === 503 ? r : undefined;
    }, '/readyz 503 after SIGUSR1');
    assert.deepEqual(JSON.parse(readyz.body), { ready: false, reason: 'draining' });
    assert.ok(node.server.process.isRunning(), 'SIGUSR1 does not stop the process');
    assert.equal(sum(await scrape(node), 'anyturn_draining'), 1, 'the workers drain (anyturn_draining, max over workers)');

    for (let w = 0; w < WORKERS; w++) {
      const late = await clientOn(node, w, t);
      assert.equal((await late.allocate()).response.code, 403, `a new Allocate on worker ${w} is refused while draining`);
    }
    for (const [w, { c, relayed }] of live.entries()) {
      await roundTrip(c, peer, relayed, `draining, worker ${w}`);
      assert.equal((await c.refresh(600)).code, 200);
    }
    await until(
      () => (logsOf(node).some((l) => l.role === 'primary' && l.source === 'SIGUSR1') ? true : undefined),
      'the primary logs the drain, naming SIGUSR1',
    );

    assert.equal((await post(`${node.ops}/undrain`)).status, 401, 'no token, no undrain');
    assert.equal((await get(`${node.ops}/readyz`)).status, 503);
    const undrained = await post(`${node.ops}/undrain`, TOKEN);
    assert.equal(undrained.status, 200, undrained.body);
    assert.equal(JSON.parse(undrained.body).draining, false);
    const ready = await get(`${node.ops}/readyz`);
    assert.deepEqual(
      { status: ready.status, body: JSON.parse(ready.body) },
      { status: 200, body: { ready: true } },
      'ready again as soon as POST /undrain answered',
    );
    for (let w = 0; w < WORKERS; w++) {
      const again = await clientOn(node, w, t);
      assert.equal((await again.allocate()).response.code, 200, `worker ${w} takes Allocates again`);
    }
    assert.equal(sum(await scrape(node), 'anyturn_draining'), 0);
  });

  it('a worker killed with SIGKILL is restarted: restarts_total 1, /readyz back to 200, new allocations on it work, the other worker is untouched', {
    timeout: TEST_TIMEOUT_MS,
  }, async (t) => {
    const node = await startNode(t);
    const peer = await TestPeer.open();
    t.after(() => peer.close());
    const survivor = await clientOn(node, 1, t);
    const survivorRelayed = await allocateOn(node, survivor, 1, peer);
    assert.equal(sum(await scrape(node), 'anyturn_worker_restarts_total'), 0);

    const victim = node.pids[0]!;
    process.kill(victim, 'SIGKILL');
    const down = await until(async () => {
      const r = await get(`${node.ops}/readyz`);
      return r.status === 503 ? r : undefined;
    }, '/readyz 503 while worker 0 is down');
    assert.deepEqual(JSON.parse(down.body), { ready: false, reason: 'worker 0 not running' });
    await until(async () => ((await get(`${node.ops}/readyz`)).status === 200 ? true : undefined), '/readyz 200 once worker 0 is back');
    const samples = await scrape(node);
    assert.equal(sum(samples, 'anyturn_worker_restarts_total'), 1);
    assert.equal(sum(samples, 'anyturn_workers'), WORKERS);
    assert.equal(isAlive(victim), false, 'the killed worker is gone (reaped by the primary)');
    const died = logsOf(node).filter((l) => String(l.msg).startsWith('worker died'));
    assert.equal(died.length, 1);
    assert.equal(died[0]!.worker, 0);
    assert.equal(died[0]!.signal, 'SIGKILL');
    assert.equal(logsOf(node).filter((l) => l.msg === 'anyturn worker ready' && l.worker === 0).length, 2, 'worker 0 started twice');

    // The new worker 0 serves its clients on its own slice, and the other worker's allocation lives on.
    const fresh = await clientOn(node, 0, t);
    const freshRelayed = await allocateOn(node, fresh, 0, peer);
    await roundTrip(fresh, peer, freshRelayed, 'restarted worker 0');
    await roundTrip(survivor, peer, survivorRelayed, 'worker 1, unaffected');
    assert.ok(node.server.process.isRunning());
  });

  it('--drain-exit: after SIGUSR1 the primary exits 0 once the last allocation on any worker is gone', { timeout: TEST_TIMEOUT_MS }, async (t) => {
    const node = await startNode(t, ['--drain-exit']);
    const peer = await TestPeer.open();
    t.after(() => peer.close());
    const clients: TestTurnClient[] = [];
    for (let w = 0; w < WORKERS; w++) {
      const c = await clientOn(node, w, t);
      await allocateOn(node, c, w, peer);
      clients.push(c);
    }
    process.kill(node.server.process.pid, 'SIGUSR1');
    await until(async () => ((await get(`${node.ops}/readyz`)).status === 503 ? true : undefined), 'draining');
    assert.equal((await clients[0]!.refresh(0)).code, 200);
    // Worker 1 still holds an allocation: the node stays up and keeps serving it.
    assert.equal((await clients[1]!.refresh(600)).code, 200);
    assert.ok(node.server.process.isRunning(), 'one allocation is still live');
    assert.equal((await clients[1]!.refresh(0)).code, 200);
    const exit = await node.server.process.exited;
    assert.deepEqual(exit, { code: 0, signal: null }, node.server.process.outputTail());
    for (const pid of node.pids) assert.equal(isAlive(pid), false, `worker ${pid} is gone`);
    const deleted = logsOf(node).filter((l) => l.event === 'allocation_deleted');
    assert.deepEqual(deleted.map((l) => l.worker).sort(), [0, 1]);
  });

  it('SIGTERM to the primary stops the workers gracefully and exits 0; no worker is left', { timeout: TEST_TIMEOUT_MS }, async (t) => {
    const node = await startNode(t);
    const peer = await TestPeer.open();
    t.after(() => peer.close());
    for (let w = 0; w < WORKERS; w++) await allocateOn(node, await clientOn(node, w, t), w, peer);
    assert.ok(node.pids.every(isAlive));

    // The primary alone (the helper's stop() would signal the whole process group).
    process.kill(node.server.process.pid, 'SIGTERM');
    const exit = await node.server.process.exited;
    assert.deepEqual(exit, { code: 0, signal: null }, node.server.process.outputTail());
    for (const pid of node.pids) assert.equal(isAlive(pid), false, `worker ${pid} is gone`);
    const lines = logsOf(node);
    const deleted = lines.filter((l) => l.event === 'allocation_deleted' && l.reason === 'shutdown');
    assert.deepEqual(deleted.map((l) => l.worker).sort(), [0, 1], 'each worker deleted its live allocation on the way out');
    assert.equal(lines.filter((l) => l.msg === 'anyturn stopped').length, WORKERS + 1, 'every worker and the primary logged "anyturn stopped"');
    assert.equal(node.server.process.stderr(), '');
  });
});

// /metrics as Prometheus sees it while coturn's turnutils_uclient relays
// through anyturn: a scrape in the middle of the run already shows the run's
// traffic (the counters are read at scrape time), anyturn_allocations equals
// the allocations live at that moment (as the server's own allocation log
// lines count them), and after the run every counter agrees with the others
// and with uclient's own statistics.

import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';

import {
  LOOPBACK_V4,
  findFreeTcpPort,
  parseLogLines,
  spawnProcess,
  startAnyturn,
  startTurnutilsPeer,
  stopAfter,
  type RunningPeer,
} from '../helpers/anyturn-process.js';
import { type Sample, parseMetrics, sum } from '../helpers/ops-endpoint.js';
import { parseUclientStats, uclientChannelCollision } from '../helpers/uclient.js';

const USER = 'metricsuser';
const PASSWORD = 'metrics-password';
const REALM = 'metrics.test';
const CLIENTS = 5;
const MESSAGES = 2000;
const MESSAGE_BYTES = 100;
const SCRAPE_EVERY_MS = 20;
/** Log times and this process's clock are both ms: a scrape this close to an event is not compared. */
const EVENT_MARGIN_MS = 2;
// Only stops a hung uclient; nothing asserts on duration.
const UCLIENT_DEADLINE_MS = 120_000;

interface AllocationEvent {
  readonly atMs: number;
  readonly delta: 1 | -1;
}

/** Allocations created and deleted, at the time the server logged each (pino's `time`). */
function allocationEvents(stdout: string): AllocationEvent[] {
  const events: AllocationEvent[] = [];
  for (const l of parseLogLines(stdout)) {
    if (l.event !== 'allocation_created' && l.event !== 'allocation_deleted') continue;
    const atMs = Date.parse(String(l.time));
    assert.ok(Number.isFinite(atMs), `a log line with a time: ${JSON.stringify(l)}`);
    events.push({ atMs, delta: l.event === 'allocation_created' ? 1 : -1 });
  }
  return events;
}

function liveAt(events: readonly AllocationEvent[], ms: number): number {
  let live = 0;
  for (const e of events) if (e.atMs <= ms) live += e.delta;
  return live;
}

describe('/metrics during a turnutils_uclient run', () => {
  let peer: RunningPeer | undefined;
  before(async () => {
    peer = await startTurnutilsPeer(LOOPBACK_V4);
  });
  after(async () => {
    await peer?.stop();
  });

  test('a scrape mid-run shows the traffic and the live allocations; counters agree after', { timeout: 180_000 }, async (t) => {
    assert.ok(peer, 'turnutils_peer did not start');
    const metricsPort = await findFreeTcpPort();
    const server = stopAfter(
      t,
      await startAnyturn({
        users: [{ name: USER, password: PASSWORD }],
        realm: REALM,
        allowLoopbackPeers: true,
        // --metrics-cache-ms 0: each scrape is compared with the allocations live at its moment.
        extraArgs: ['--metrics-ip', LOOPBACK_V4, '--metrics-port', String(metricsPort), '--metrics-cache-ms', '0', '--prometheus-username-labels'],
      }),
    );
    const url = `http://${LOOPBACK_V4}:${metricsPort}/metrics`;
    const scrape = async (): Promise<Sample[]> => parseMetrics(await (await fetch(url)).text());

    const before = await scrape();
    assert.equal(sum(before, 'anyturn_relayed_packets_total'), 0);
    assert.equal(sum(before, 'anyturn_allocations'), 0);
    assert.equal(sum(before, 'anyturn_draining'), 0);

    const args = [
      '-v', // setup logging only over UDP: shows a failed ChannelBind's place in the sequence
      '-u',
      USER,
      '-w',
      PASSWORD,
      '-e',
      peer.host,
      '-r',
      String(peer.port),
      '-c',
      '-m',
      String(CLIENTS),
      '-n',
      String(MESSAGES),
      '-l',
      String(MESSAGE_BYTES),
      '-z',
      '1',
      '-L',
      LOOPBACK_V4,
      '-p',
      String(server.port),
      server.host,
    ];
    interface Scrape {
      readonly samples: Sample[];
      readonly startMs: number;
      readonly endMs: number;
    }
    let scrapes: Scrape[] = [];
    let exit: { code: number | null };
    let output: string;
    // A second run only after uclient's own channel-number collision (which relays nothing).
    for (let attempt = 1; ; attempt++) {
      const uclient = stopAfter(t, spawnProcess('turnutils_uclient', args, { name: 'turnutils_uclient' }));
      const killer = setTimeout(() => void uclient.stop('SIGKILL'), UCLIENT_DEADLINE_MS);
      scrapes = [];
      while (uclient.isRunning()) {
        const startMs = Date.now();
        const samples = await scrape();
        const endMs = Date.now();
        // Only scrapes that finished while uclient was still sending count as mid-run.
        if (uclient.isRunning()) scrapes.push({ samples, startMs, endMs });
        await new Promise((r) => setTimeout(r, SCRAPE_EVERY_MS));
      }
      clearTimeout(killer);
      exit = await uclient.exited;
      output = uclient.stdout() + uclient.stderr();
      const collision = attempt === 1 ? uclientChannelCollision(output) : undefined;
      if (collision === undefined) break;
      t.diagnostic(`${collision}; running uclient once more`);
    }
    const context = `${output.slice(-2000)}\n${server.process.outputTail()}`;
    assert.equal(exit.code, 0, `uclient failed\n${context}`);

    const finalAtMs = Date.now();
    const final = await scrape();
    // Log lines reach this process through a pipe, some time after the server wrote them:
    // read them once the server has exited and all its output is in, and place each
    // allocation event by the time the server logged it rather than by when it arrived.
    // (Shutdown deletes the rest; those lines come after finalAtMs.)
    assert.deepEqual(await server.stop(), { code: 0, signal: null }, server.process.outputTail());
    const events = allocationEvents(server.process.stdout());
    // A scrape with no allocation created or deleted while it ran compares with the log's count.
    const midRun = scrapes
      .filter((s) => !events.some((e) => e.atMs >= s.startMs - EVENT_MARGIN_MS && e.atMs <= s.endMs + EVENT_MARGIN_MS))
      .map((s) => ({ samples: s.samples, live: liveAt(events, s.startMs) }));
    for (const { samples, live } of midRun) {
      assert.equal(sum(samples, 'anyturn_allocations'), live, 'anyturn_allocations equals the allocations live at the scrape');
      assert.equal(sum(samples, 'anyturn_user_allocations', { user: USER }), live, 'the per-user gauge agrees');
      assert.equal(sum(samples, 'anyturn_allocations_created_total') - sum(samples, 'anyturn_allocations_deleted_total'), live, 'created - deleted = live');
    }
    const during = midRun.filter((s) => sum(s.samples, 'anyturn_relayed_packets_total', { direction: 'client_to_peer' }) > 0 && s.live > 0);
    assert.ok(during.length > 0, `a scrape while uclient still ran showed relayed packets (${midRun.length} mid-run scrapes)\n${context}`);

    const stats = parseUclientStats(output);
    assert.ok(stats, `uclient printed its totals\n${context}`);
    const sent = stats.sentMessages;
    const received = stats.receivedMessages;
    assert.equal(sent, CLIENTS * MESSAGES);
    // Every echo came back (loopback, as the interop runs: 0 loss). Without this,
    // peer->client relaying could be broken and p2c === received would still hold at 0.
    assert.equal(received, sent, `uclient received every echo\n${context}`);
    assert.equal(stats.lostPackets, 0, `uclient lost packets\n${context}`);
    assert.equal(stats.sendDropped, 0, `uclient send dropped\n${context}`);
    const midPackets = Math.max(...during.map((s) => sum(s.samples, 'anyturn_relayed_packets_total', { direction: 'client_to_peer' })));
    assert.ok(midPackets < sent || during.length > 1, 'mid-run scrapes came before the end of the traffic');

    const c2p = sum(final, 'anyturn_relayed_packets_total', { direction: 'client_to_peer' });
    const p2c = sum(final, 'anyturn_relayed_packets_total', { direction: 'peer_to_client' });
    assert.equal(c2p, sent, 'every message uclient sent was relayed to the peer');
    assert.equal(p2c, received, 'every echo uclient received was relayed to it');
    assert.equal(sum(final, 'anyturn_relayed_bytes_total', { direction: 'client_to_peer' }), c2p * MESSAGE_BYTES);
    assert.equal(sum(final, 'anyturn_relayed_bytes_total', { direction: 'peer_to_client' }), p2c * MESSAGE_BYTES);
    const created = sum(final, 'anyturn_allocations_created_total');
    // uclient -m 5 -e makes two allocations per client even with -c, and refreshes half of
    // them to 0 at the end (coturn shows the same: 10 ALLOCATE and 5 extra REFRESH successes).
    assert.ok(created >= CLIENTS, `at least one allocation per client, got ${created}`);
    assert.equal(created, events.filter((e) => e.delta === 1 && e.atMs <= finalAtMs).length);
    assert.equal(sum(final, 'anyturn_requests_total', { method: 'allocate', code: '200' }), created);
    const live = sum(final, 'anyturn_allocations');
    assert.equal(live, created - sum(final, 'anyturn_allocations_deleted_total'));
    assert.equal(live, liveAt(events, finalAtMs));
    assert.equal(sum(final, 'anyturn_user_allocations'), live);
    assert.ok(sum(final, 'anyturn_requests_total', { method: 'channel_bind', code: '200' }) >= CLIENTS);
    // Every answered request was timed: the histogram's count per method is requests_total's sum over codes.
    for (const method of ['allocate', 'channel_bind', 'refresh', 'create_permission', 'binding']) {
      assert.equal(
        sum(final, 'anyturn_request_duration_seconds_count', { method }),
        sum(final, 'anyturn_requests_total', { method }),
        `anyturn_request_duration_seconds_count{method="${method}"}`,
      );
    }
    assert.ok(sum(final, 'anyturn_request_duration_seconds_sum') > 0);
    assert.equal(sum(final, 'anyturn_dropped_packets_total', { reason: 'no_channel' }), 0);
    assert.equal(sum(final, 'anyturn_dropped_packets_total', { reason: 'no_permission' }), 0);
  });
});

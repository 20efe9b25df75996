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

const USER = 'metricsuser';
const PASSWORD = 'metrics-password';
const REALM = 'metrics.test';
const CLIENTS = 5;
const MESSAGES = 2000;
const MESSAGE_BYTES = 100;
const SCRAPE_EVERY_MS = 20;
const LOG_SETTLE_MS = 150;
// Only stops a hung uclient; nothing asserts on duration.
const UCLIENT_DEADLINE_MS = 120_000;

function liveFromLogs(stdout: string): number {
  const lines = parseLogLines(stdout);
  return lines.filter((l) => l.event === 'allocation_created').length - lines.filter((l) => l.event === 'allocation_deleted').length;
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
        extraArgs: ['--metrics-ip', LOOPBACK_V4, '--metrics-port', String(metricsPort), '--prometheus-username-labels'],
      }),
    );
    const url = `http://${LOOPBACK_V4}:${metricsPort}/metrics`;
    const scrape = async (): Promise<Sample[]> => parseMetrics(await (await fetch(url)).text());

    const before = await scrape();
    assert.equal(sum(before, 'anyturn_relayed_packets_total'), 0);
    assert.equal(sum(before, 'anyturn_allocations'), 0);
    assert.equal(sum(before, 'anyturn_draining'), 0);

    const args = [
      '-u', USER, '-w', PASSWORD,
      '-e', peer.host, '-r', String(peer.port),
      '-c', '-m', String(CLIENTS), '-n', String(MESSAGES), '-l', String(MESSAGE_BYTES), '-z', '1',
      '-L', LOOPBACK_V4, '-p', String(server.port), server.host,
    ];
    const uclient = stopAfter(t, spawnProcess('turnutils_uclient', args, { name: 'turnutils_uclient' }));
    const killer = setTimeout(() => void uclient.stop('SIGKILL'), UCLIENT_DEADLINE_MS);

    interface MidRun {
      readonly samples: Sample[];
      readonly live: number;
    }
    const midRun: MidRun[] = [];
    while (uclient.isRunning()) {
      const liveBefore = liveFromLogs(server.process.stdout());
      const samples = await scrape();
      const stillRunning = uclient.isRunning();
      // Log lines reach this process through a pipe, a little after the server wrote them:
      // let the ones written before the scrape arrive before counting again.
      await new Promise((r) => setTimeout(r, LOG_SETTLE_MS));
      const liveAfter = liveFromLogs(server.process.stdout());
      // Only scrapes that finished while uclient was still sending, with no allocation
      // created or deleted around them, compare against the log's count.
      if (stillRunning && liveBefore === liveAfter) midRun.push({ samples, live: liveBefore });
      await new Promise((r) => setTimeout(r, SCRAPE_EVERY_MS));
    }
    clearTimeout(killer);
    const exit = await uclient.exited;
    const output = uclient.stdout() + uclient.stderr();
    const context = `${output.slice(-2000)}\n${server.process.outputTail()}`;
    assert.equal(exit.code, 0, `uclient failed\n${context}`);

    for (const { samples, live } of midRun) {
      assert.equal(sum(samples, 'anyturn_allocations'), live, 'anyturn_allocations equals the allocations live at the scrape');
      assert.equal(sum(samples, 'anyturn_user_allocations', { user: USER }), live, 'the per-user gauge agrees');
      assert.equal(
        sum(samples, 'anyturn_allocations_created_total') - sum(samples, 'anyturn_allocations_deleted_total'),
        live,
        'created - deleted = live',
      );
    }
    const during = midRun.filter((s) => sum(s.samples, 'anyturn_relayed_packets_total', { direction: 'client_to_peer' }) > 0 && s.live > 0);
    assert.ok(during.length > 0, `a scrape while uclient still ran showed relayed packets (${midRun.length} mid-run scrapes)\n${context}`);

    const totals = /start_mclient: tot_send_msgs=(\d+), tot_recv_msgs=(\d+)\s*$/m.exec(output.split('\n').filter((l) => !l.includes('msz=')).join('\n'));
    assert.ok(totals, `uclient printed its totals\n${context}`);
    const sent = Number(totals[1]);
    const received = Number(totals[2]);
    assert.equal(sent, CLIENTS * MESSAGES);
    const midPackets = Math.max(...during.map((s) => sum(s.samples, 'anyturn_relayed_packets_total', { direction: 'client_to_peer' })));
    assert.ok(midPackets < sent || during.length > 1, 'mid-run scrapes came before the end of the traffic');

    const final = await scrape();
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
    assert.equal(created, parseLogLines(server.process.stdout()).filter((l) => l.event === 'allocation_created').length);
    assert.equal(sum(final, 'anyturn_requests_total', { method: 'allocate', code: '200' }), created);
    const live = sum(final, 'anyturn_allocations');
    assert.equal(live, created - sum(final, 'anyturn_allocations_deleted_total'));
    assert.equal(live, liveFromLogs(server.process.stdout()));
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

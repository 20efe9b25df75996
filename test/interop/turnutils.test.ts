// Interop with coturn's test clients (turnutils_uclient, turnutils_stunclient)
// and its UDP echo peer (turnutils_peer), all on 127.0.0.1.
//
// Each uclient message is one round trip client -> relay -> peer -> relay ->
// client, so "sent == received == clients * messages, 0 lost" means every
// datagram made it through the relay in both directions.
//
// Run against coturn instead (to check the test itself):
//   ANYTURN_INTEROP_TARGET=coturn node --test dist/test/interop/turnutils.test.js
//
// turnutils_uclient quirks, learned from running it against coturn 4.6.1:
// - `-h` means "hang on after the last packet", not help (running it with no
//   arguments prints usage).
// - `-c` turns off the second (RTCP-like) allocation: one allocation per
//   session. Sessions start at random offsets within the first few seconds.
// - `-y` (client-to-client) ignores -e/-r: clients are paired and each relays
//   to its partner's relayed address; an odd -m is rounded up to even.
// - Statistics go to stdout; the final totals are the
//   `start_mclient: tot_send_msgs=N, tot_recv_msgs=M` line without `msz=`
//   (the lines with `msz=` are per-second progress) and
//   `Total lost packets L (P%), total send dropped D (P%)`.
// - On failure (e.g. 401 forever) it prints `ERROR: Cannot complete
//   Allocation` and exits 255; on success it exits 0.
// - In channel mode 1 session in 16,384 fails on its own: the random channel
//   number it draws for the peer's port may be the one it just bound to the
//   peer's port+1, and the 400 that follows is what RFC 8656 §12.2 requires
//   (coturn answers it too). runUclient (helpers/uclient.ts) recognizes exactly
//   that in the -v output and runs uclient once more.

import assert from 'node:assert/strict';
import { describe, test, before, after } from 'node:test';

import {
  LOOPBACK_V4,
  runToCompletion,
  startTurnServerUnderTest,
  startTurnutilsPeer,
  stopAfter,
  type RunningPeer,
  type RunningTurnServer,
} from '../helpers/anyturn-process.js';
import { assertEveryMessageBack, describeRun, runUclient as runUclientProcess, uclientLoadArgs } from '../helpers/uclient.js';

const USER = 'U';
const PASSWORD = 'P';
const REALM = 'R';

const CLIENTS = 20;
const MESSAGES_PER_CLIENT = 5000;
const MESSAGE_BYTES = 100;
const INTERVAL_MS = 1;

// Only stops a hung uclient; nothing asserts on duration.
const UCLIENT_DEADLINE_MS = 180_000;
const TEST_TIMEOUT_MS = 240_000;

async function startServer(t: { after(fn: () => unknown): void }): Promise<RunningTurnServer> {
  const server = await startTurnServerUnderTest({
    listeningIps: [LOOPBACK_V4],
    relayIp: LOOPBACK_V4,
    allowLoopbackPeers: true,
    users: [{ name: USER, password: PASSWORD }],
    realm: REALM,
  });
  return stopAfter(t, server);
}

async function runUclient(
  t: { after(fn: () => unknown): void; diagnostic(message: string): void },
  server: RunningTurnServer,
  modeArgs: readonly string[],
): Promise<void> {
  const args = [
    // -v: setup logging only over UDP; it shows a failed ChannelBind's place in the sequence.
    '-v',
    '-u',
    USER,
    '-w',
    PASSWORD,
    ...modeArgs,
    ...uclientLoadArgs({
      clients: CLIENTS,
      messages: MESSAGES_PER_CLIENT,
      bytes: MESSAGE_BYTES,
      intervalMs: INTERVAL_MS,
      port: server.port,
      host: server.host,
    }),
  ];
  const result = await runUclientProcess(args, UCLIENT_DEADLINE_MS, t);
  assertEveryMessageBack(args, result, server, CLIENTS * MESSAGES_PER_CLIENT);
}

describe('coturn turnutils against the server under test (UDP, loopback)', () => {
  let peer: RunningPeer | undefined;

  before(async () => {
    peer = await startTurnutilsPeer(LOOPBACK_V4);
  });
  after(async () => {
    await peer?.stop();
  });

  function requirePeer(): RunningPeer {
    assert.ok(peer, 'turnutils_peer did not start');
    return peer;
  }

  test('uclient, channel mode (ChannelBind + ChannelData): every message comes back', { timeout: TEST_TIMEOUT_MS }, async (t) => {
    const echo = requirePeer();
    const server = await startServer(t);
    await runUclient(t, server, ['-e', echo.host, '-r', String(echo.port)]);
  });

  test('uclient, -s (Send/Data indications): every message comes back', { timeout: TEST_TIMEOUT_MS }, async (t) => {
    const echo = requirePeer();
    const server = await startServer(t);
    await runUclient(t, server, ['-s', '-e', echo.host, '-r', String(echo.port)]);
  });

  test('uclient, -y (client to client through two relayed addresses): every message arrives', { timeout: TEST_TIMEOUT_MS }, async (t) => {
    const server = await startServer(t);
    // -y pairs the clients with each other; no echo peer is involved.
    await runUclient(t, server, ['-y']);
  });

  test('stunclient gets 127.0.0.1 as its reflexive address', { timeout: 60_000 }, async (t) => {
    const server = await startServer(t);
    const args = ['-p', String(server.port), '-L', LOOPBACK_V4, server.host];
    const result = await runToCompletion('turnutils_stunclient', args, 20_000, t);
    const context = describeRun('turnutils_stunclient', args, result, server);
    assert.equal(result.timedOut, false, `stunclient got no answer\n${context}`);
    assert.equal(result.code, 0, `stunclient failed\n${context}`);
    // e.g. "0: : IPv4. UDP reflexive addr: 127.0.0.1:46945" (printed twice)
    const found = [...result.stdout.matchAll(/UDP reflexive addr: (\S+):(\d+)/g)];
    assert.ok(found.length > 0, `no reflexive address in output\n${context}`);
    const ports = new Set<number>();
    for (const match of found) {
      assert.equal(match[1], LOOPBACK_V4, `reflexive address\n${context}`);
      const port = Number(match[2]);
      assert.ok(Number.isInteger(port) && port > 0 && port < 65536, `reflexive port ${String(match[2])}\n${context}`);
      ports.add(port);
    }
    // One socket, one mapping: every line shows the same port.
    assert.equal(ports.size, 1, `reflexive ports differ\n${context}`);
    // The stunclient's own source port is not printed, so it is checked in
    // node-stun.test.ts (where the test owns the socket) instead.

    if (server.kind === 'anyturn') {
      const exit = await server.stop();
      assert.deepEqual(exit, { code: 0, signal: null }, `anyturn must exit 0 on SIGTERM\n${server.process.outputTail()}`);
    }
  });
});

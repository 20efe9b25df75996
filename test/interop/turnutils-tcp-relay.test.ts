// Interop of RFC 6062 TCP allocations with coturn's turnutils_uclient (a client nobody here
// wrote), all on 127.0.0.1. `-T` is uclient's TCP relay mode; it implies `-y`: the clients
// go in pairs, each pair's peer is the other client's TCP relayed address on this server
// (turnutils_peer, the echo peer of the other interop tests, speaks UDP only). So every pair
// exercises both directions of RFC 6062: one side's Connect (§5.2) to the other's relayed
// address, the other side's ConnectionAttempt (§5.3), a ConnectionBind (§5.4) on each side,
// and data both ways through two relays. Not here: uclient's `-P` (its "active peer" mode)
// loses half its messages against this server and was not run against coturn; see the README.

import assert from 'node:assert/strict';
import { describe, test } from 'node:test';

import { LOOPBACK_V4, startTurnServerUnderTest, stopAfter } from '../helpers/anyturn-process.js';
import { assertEveryMessageBack, runUclient, uclientLoadArgs } from '../helpers/uclient.js';

const USER = 'U';
const PASSWORD = 'P';
const REALM = 'R';

const CLIENTS = 10;
const MESSAGES_PER_CLIENT = 1000;
const MESSAGE_BYTES = 100;
const INTERVAL_MS = 1;

// Only stops a hung uclient; nothing asserts on duration.
const UCLIENT_DEADLINE_MS = 180_000;
const TEST_TIMEOUT_MS = 240_000;

describe('coturn turnutils_uclient -T (RFC 6062 TCP relays) against the server under test (loopback)', () => {
  test('TCP relay (-T): every message of every pair comes back, nothing lost', { timeout: TEST_TIMEOUT_MS }, async (t) => {
    const server = stopAfter(
      t,
      await startTurnServerUnderTest({
        listeningIps: [LOOPBACK_V4],
        relayIp: LOOPBACK_V4,
        // The peers are the server's own relayed addresses on 127.0.0.1.
        allowLoopbackPeers: true,
        users: [{ name: USER, password: PASSWORD }],
        realm: REALM,
        // Every control and data connection of every client comes from 127.0.0.1 (anyturn's
        // per-source cap; coturn, with ANYTURN_INTEROP_TARGET=coturn, has none).
        extraArgs: process.env.ANYTURN_INTEROP_TARGET === 'coturn' ? [] : ['--max-tcp-connections-per-ip', '0'],
      }),
    );
    const args = [
      '-u',
      USER,
      '-w',
      PASSWORD,
      '-T',
      ...uclientLoadArgs({
        clients: CLIENTS,
        messages: MESSAGES_PER_CLIENT,
        bytes: MESSAGE_BYTES,
        intervalMs: INTERVAL_MS,
        port: server.port,
        host: server.host,
      }),
    ];
    const result = await runUclient(args, UCLIENT_DEADLINE_MS, t);
    assertEveryMessageBack(args, result, server, CLIENTS * MESSAGES_PER_CLIENT);
    if (server.kind === 'anyturn') {
      const exit = await server.stop();
      assert.deepEqual(exit, { code: 0, signal: null }, `anyturn must exit 0 on SIGTERM\n${server.process.outputTail()}`);
    }
  });
});

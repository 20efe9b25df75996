// A worker's UDP sessions (src/workers/udp-frontend.ts) in one process: a socket
// bound with SO_REUSEADDR stands in for the primary's listening socket and hands
// every datagram to the frontend, as the primary does over IPC. An authenticated
// Allocate opens a session connected to the client; a session left without an
// allocation is closed after its idle time (the frontend's clock is the test's), so
// an fd is not kept per client that came and went; one with an allocation is kept.

import assert from 'node:assert/strict';
import dgram from 'node:dgram';
import { after, before, describe, it } from 'node:test';

import { buildConfig } from '../../src/config/index.js';
import { startServer, type RunningServer } from '../../src/server.js';
import { EngineCounters } from '../../src/turn/counters.js';
import { WorkerUdpFrontend } from '../../src/workers/udp-frontend.js';
import { TestTurnClient } from '../helpers/turn-client.js';

const USER = 'session-user';
const PASSWORD = 'session-password';
const REALM = 'sessions.test';
const IDLE_MS = 10_000;

describe("UDP sessions (a worker's connected client sockets)", () => {
  let now = 1_700_000_000_000;
  let primary: dgram.Socket;
  let frontend: WorkerUdpFrontend;
  let server: RunningServer;
  /** Datagrams that reached the stand-in primary rather than a session. */
  let handedOver = 0;
  let port = 0;
  const clients: TestTurnClient[] = [];

  before(async () => {
    primary = dgram.createSocket({ type: 'udp4', reuseAddr: true });
    await new Promise<void>((resolve) => primary.bind({ address: '127.0.0.1', port: 0, exclusive: true }, () => resolve()));
    port = primary.address().port;
    const counters = new EngineCounters();
    frontend = new WorkerUdpFrontend(
      {
        send: (_l, a, p, d) => primary.send(d, p, a),
        stray: (l, a, p, d) => frontend.onPacket(l, a, p, d),
      },
      counters,
      () => now,
    );
    primary.on('message', (msg, rinfo) => {
      handedOver++;
      frontend.onPacket(0, rinfo.address, rinfo.port, msg);
    });
    server = await startServer(
      buildConfig({
        'listening-ip': ['127.0.0.1'],
        'listening-port': port,
        'relay-ip': ['127.0.0.1'],
        user: [`${USER}:${PASSWORD}`],
        realm: REALM,
        'no-tcp': true,
        tcp: false,
      }),
      { udpFrontend: frontend, counters },
    );
  });

  after(async () => {
    for (const c of clients) c.close();
    await server?.stop();
    primary?.close();
  });

  async function client(): Promise<TestTurnClient> {
    const c = await TestTurnClient.open({ address: '127.0.0.1', port }, { username: USER, password: PASSWORD, realm: REALM });
    clients.push(c);
    return c;
  }

  it('opens a session on an authenticated Allocate: later packets bypass the primary', async () => {
    const c = await client();
    const before = frontend.sessions;
    const allocated = await c.allocate();
    assert.equal(allocated.response.code, 200);
    assert.equal(frontend.sessions, before + 1);
    const handedBefore = handedOver;
    for (let i = 0; i < 5; i++) assert.equal((await c.refresh(600)).code, 200);
    assert.deepEqual(await c.binding(), { address: '127.0.0.1', port: c.localPort });
    assert.equal(handedOver, handedBefore, 'requests after the session opened reached the primary');
  });

  it('closes a session once its allocation is gone and it was idle for 10 s, and the client is handed over again', async () => {
    const c = await client();
    assert.equal((await c.allocate()).response.code, 200);
    const open = frontend.sessions;
    assert.equal((await c.refresh(0)).code, 200);
    frontend.sweep(); // the sweep that sees the session's last packets
    now += IDLE_MS - 1;
    frontend.sweep();
    assert.equal(frontend.sessions, open, 'closed before its idle time');
    now += 1;
    frontend.sweep();
    assert.equal(frontend.sessions, open - 1);
    const handedBefore = handedOver;
    assert.deepEqual(await c.binding(), { address: '127.0.0.1', port: c.localPort });
    assert.equal(handedOver, handedBefore + 1, 'the closed session still took the packet');
  });

  it('keeps a session that holds an allocation, however long it is quiet', async () => {
    const c = await client();
    assert.equal((await c.allocate()).response.code, 200);
    const open = frontend.sessions;
    now += 10 * IDLE_MS;
    frontend.sweep();
    assert.equal(frontend.sessions, open);
    assert.equal((await c.refresh(600)).code, 200);
  });

  it('closes the session of an Allocate that failed authentication', async () => {
    const c = await TestTurnClient.open({ address: '127.0.0.1', port }, { username: USER, password: 'wrong', realm: REALM });
    clients.push(c);
    const open = frontend.sessions;
    assert.equal((await c.allocate()).response.code, 401);
    assert.equal(frontend.sessions, open + 1, 'an Allocate with MESSAGE-INTEGRITY opens a session');
    frontend.sweep();
    now += IDLE_MS;
    frontend.sweep();
    assert.equal(frontend.sessions, open);
  });
});

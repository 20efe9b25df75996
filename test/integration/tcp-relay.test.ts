// RFC 6062 TCP allocations over real sockets on 127.0.0.1: a TCP client allocates a TCP
// relay, Connects to a TCP echo peer (the connection comes from the relayed address and
// port) and exchanges data both ways over a client data connection; a peer connecting to
// the relayed address produces a ConnectionAttempt and works after ConnectionBind; the
// peer policy refuses loopback without --allow-loopback-peers, private and metadata
// addresses and the server's own service ports (403); 446, 447; the end of the allocation
// ends its connections. Every peer is on loopback.

import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import net from 'node:net';
import { buildConfig, type RawOptions } from '../../src/config/index.js';
import { createLogger } from '../../src/ops/log.js';
import { type RunningServer, startServer } from '../../src/server.js';
import { encodeRequestedTransport } from '../../src/stun/attributes.js';
import { Attr, Method, TRANSPORT_TCP } from '../../src/stun/constants.js';
import { reserveRelayPortRange } from '../helpers/anyturn-process.js';
import { DataConnection, TcpPeer, allocateTcp, connectTo, connectionAttempts, eventually, pattern } from '../helpers/tcp-relay.js';
import { type Endpoint, StreamTurnClient, TestTurnClient } from '../helpers/turn-client.js';

const credentials = { username: 'alice', password: 'wonderland', realm: 'anyturn.tcp-relay.test' };

async function start(extra: RawOptions = {}): Promise<RunningServer> {
  const range = await reserveRelayPortRange(50);
  return startServer(
    buildConfig({
      'listening-ip': ['127.0.0.1'],
      'listening-port': 0,
      'min-port': range.min,
      'max-port': range.max,
      realm: credentials.realm,
      user: [`${credentials.username}:${credentials.password}`],
      ...extra,
    }),
    { logger: createLogger('silent') },
  );
}

function endpointOf(server: RunningServer, transport: 'udp' | 'tcp'): Endpoint {
  const entry = server.listening.find((l) => l.transport === transport);
  assert.ok(entry, `a ${transport} listener`);
  return { address: entry.address, port: entry.port };
}

/** A TCP control connection with a TCP allocation and a permission for 127.0.0.1. */
async function tcpAllocation(server: RunningServer): Promise<{ control: StreamTurnClient; relayed: Endpoint }> {
  const control = await StreamTurnClient.connect(endpointOf(server, 'tcp'), credentials);
  const { response, relayed } = await allocateTcp(control);
  assert.equal(response.code, 200);
  assert.ok(relayed);
  assert.equal((await control.createPermission({ address: '127.0.0.1', port: 1 })).code, 200);
  return { control, relayed };
}

function connectToRelay(relayed: Endpoint): Promise<net.Socket> {
  return new Promise((resolve, reject) => {
    const s = net.connect({ host: relayed.address, port: relayed.port }, () => resolve(s));
    s.once('error', reject);
  });
}

describe('RFC 6062 TCP allocations over TCP (loopback peers allowed)', () => {
  let server: RunningServer;
  let echo: TcpPeer;
  const open: { close(): void }[] = [];

  before(async () => {
    server = await start({ 'allow-loopback-peers': true });
    echo = await TcpPeer.listen(true);
  });
  after(async () => {
    for (const o of open) o.close();
    await echo.close();
    await server.stop();
  });

  it('Connects to a TCP echo peer from the relay IP and carries data both ways, unchanged', async () => {
    const { control, relayed } = await tcpAllocation(server);
    open.push(control);
    const connect = await connectTo(control, echo.endpoint);
    assert.equal(connect.code, 200);
    assert.ok(connect.connectionId !== undefined);
    // RFC 6062 §5.2: from the relayed address (its IP: the port is the kernel's, src/transport/tcp-relay/relay.ts).
    await eventually('the peer connection', () => echo.connections.length === 1);
    assert.equal(echo.connections[0]!.socket.remoteAddress, relayed.address);
    const { code, connection } = await DataConnection.open(endpointOf(server, 'tcp'), control, connect.connectionId!);
    open.push(connection);
    assert.equal(code, 200);
    const payload = pattern(256 * 1024);
    connection.write(payload);
    await eventually('the echo', () => connection.data.length >= payload.length);
    assert.ok(connection.data.equals(payload));
    assert.ok(echo.connections[0]!.data.equals(payload));
    assert.ok(server.counters.tcpPeerConnections.bound >= 1);
  });

  it('relays raw bytes that follow the ConnectionBind in the same segment', async () => {
    const { control } = await tcpAllocation(server);
    open.push(control);
    const before = echo.connections.length;
    const connect = await connectTo(control, echo.endpoint);
    assert.equal(connect.code, 200);
    const early = pattern(5000, 11);
    const { code, connection } = await DataConnection.open(endpointOf(server, 'tcp'), control, connect.connectionId!, early);
    open.push(connection);
    assert.equal(code, 200);
    await eventually('the echo', () => connection.data.length >= early.length);
    assert.ok(connection.data.equals(early));
    assert.ok(echo.connections[before]!.data.equals(early));
  });

  it('announces a peer connecting to the relayed address (ConnectionAttempt) and relays it after ConnectionBind', async () => {
    const { control, relayed } = await tcpAllocation(server);
    open.push(control);
    const peer = await connectToRelay(relayed);
    open.push({ close: () => peer.destroy() });
    let fromClient = Buffer.alloc(0);
    peer.on('data', (chunk: Buffer) => {
      fromClient = Buffer.concat([fromClient, chunk]);
    });
    // The peer speaks first: its bytes wait until the bind.
    const early = pattern(1000, 7);
    peer.write(early);
    await control.waitUntil(() => connectionAttempts(control).length === 1, 'a ConnectionAttempt');
    const attempt = connectionAttempts(control)[0]!;
    assert.deepEqual(attempt.peer, { address: '127.0.0.1', port: peer.localPort });
    const { code, connection } = await DataConnection.open(endpointOf(server, 'tcp'), control, attempt.connectionId);
    open.push(connection);
    assert.equal(code, 200);
    await eventually("the peer's early bytes", () => connection.data.length >= early.length);
    assert.ok(connection.data.equals(early));
    const reply = pattern(70_000, 3);
    connection.write(reply);
    await eventually('the reply at the peer', () => fromClient.length >= reply.length);
    assert.ok(fromClient.equals(reply));
    // The client closes its data connection: the peer's connection ends too (RFC 6062 §5.5).
    connection.close();
    await new Promise<void>((resolve) => (peer.destroyed ? resolve() : peer.once('close', () => resolve())));
  });

  it('closes a peer connection that has no permission, and announces nothing', async () => {
    const control = await StreamTurnClient.connect(endpointOf(server, 'tcp'), credentials);
    open.push(control);
    const { relayed } = await allocateTcp(control);
    const peer = await connectToRelay(relayed!);
    peer.on('error', () => undefined);
    peer.resume();
    await new Promise<void>((resolve) => (peer.destroyed ? resolve() : peer.once('close', () => resolve())));
    // A Binding answered: everything the server sent before it has arrived.
    await control.binding();
    assert.equal(connectionAttempts(control).length, 0);
  });

  it('answers 446 to a second Connect to the same peer, and 447 when the peer refuses', async () => {
    const { control } = await tcpAllocation(server);
    open.push(control);
    assert.equal((await connectTo(control, echo.endpoint)).code, 200);
    assert.equal((await connectTo(control, echo.endpoint)).code, 446);
    const closedPort = await new Promise<number>((resolve) => {
      const s = net.createServer();
      s.listen(0, '127.0.0.1', () => {
        const port = (s.address() as net.AddressInfo).port;
        s.close(() => resolve(port));
      });
    });
    assert.equal((await connectTo(control, { address: '127.0.0.1', port: closedPort })).code, 447);
  });

  it('refuses a Connect without a permission (403), a ConnectionBind for an unknown CONNECTION-ID (400), and ChannelBind (400)', async () => {
    const control = await StreamTurnClient.connect(endpointOf(server, 'tcp'), credentials);
    open.push(control);
    assert.equal((await allocateTcp(control)).response.code, 200);
    assert.equal((await connectTo(control, echo.endpoint)).code, 403);
    const { code } = await DataConnection.open(endpointOf(server, 'tcp'), control, 12345);
    assert.equal(code, 400);
    assert.equal((await control.channelBind(0x4000, echo.endpoint)).code, 400);
  });

  it("refuses the server's own service ports as peers (403)", async () => {
    const { control } = await tcpAllocation(server);
    open.push(control);
    assert.equal((await connectTo(control, endpointOf(server, 'tcp'))).code, 403);
  });

  it('ends the peer and data connections when the allocation is deleted (Refresh 0)', async () => {
    const { control } = await tcpAllocation(server);
    open.push(control);
    const before = echo.connections.length;
    const connect = await connectTo(control, echo.endpoint);
    assert.equal(connect.code, 200);
    const { connection } = await DataConnection.open(endpointOf(server, 'tcp'), control, connect.connectionId!);
    open.push(connection);
    await eventually('the peer connection', () => echo.connections.length === before + 1);
    assert.equal((await control.refresh(0)).code, 200);
    await eventually('both connections closed', () => connection.closed && echo.connections[before]!.closed);
  });

  it('answers 400 to REQUESTED-TRANSPORT TCP over UDP', async () => {
    const client = await TestTurnClient.open(endpointOf(server, 'udp'), credentials);
    try {
      const response = await client.request(Method.Allocate, (w) => w.add(Attr.RequestedTransport, encodeRequestedTransport(TRANSPORT_TCP)));
      assert.equal(response.code, 400);
    } finally {
      client.close();
    }
  });
});

describe('RFC 6062 and the peer policy (default policy)', () => {
  let server: RunningServer;
  let echo: TcpPeer;
  before(async () => {
    server = await start();
    echo = await TcpPeer.listen(true);
  });
  after(async () => {
    await echo.close();
    await server.stop();
  });

  for (const [what, peer] of [
    ['loopback without --allow-loopback-peers', '127.0.0.1'],
    ['a private address', '10.1.2.3'],
    ['the cloud metadata address', '169.254.169.254'],
  ] as const) {
    it(`refuses a Connect to ${what} (403), whatever the permission`, async () => {
      const control = await StreamTurnClient.connect(endpointOf(server, 'tcp'), credentials);
      try {
        assert.equal((await allocateTcp(control)).response.code, 200);
        assert.equal((await control.createPermission({ address: peer, port: 1 })).code, 403);
        assert.equal((await connectTo(control, { address: peer, port: echo.port })).code, 403);
        assert.equal(echo.connections.length, 0);
      } finally {
        control.close();
      }
    });
  }
});

describe('--no-tcp-relay', () => {
  it('answers 442 to REQUESTED-TRANSPORT TCP', async () => {
    const server = await start({ 'tcp-relay': false });
    const control = await StreamTurnClient.connect(endpointOf(server, 'tcp'), credentials);
    try {
      assert.equal((await allocateTcp(control)).response.code, 442);
    } finally {
      control.close();
      await server.stop();
    }
  });
});

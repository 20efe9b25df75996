// TURN over TCP and TLS on 127.0.0.1 with our own stream client: framing both
// ways (several messages per write, one message byte by byte, ChannelData
// padding), what closes a connection (garbage, too long a frame, the idle
// deadline, holding no allocation, the connection cap) and that the allocation goes with its
// connection. Every socket here is on loopback.

import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import dgram from 'node:dgram';
import net from 'node:net';
import { ConfigError, type RawOptions, buildConfig } from '../../src/config/index.js';
import { createLogger } from '../../src/ops/log.js';
import { type RunningServer, startServer } from '../../src/server.js';
import { COARSE_CLOCK_MS } from '../../src/turn/clock.js';
import { encodeUint32 } from '../../src/stun/attributes.js';
import { Attr, Method } from '../../src/stun/constants.js';
import { reserveRelayPortRange } from '../helpers/anyturn-process.js';
import { makeSelfSignedCertificate, type SelfSignedCertificate } from '../helpers/tls-cert.js';
import { type Endpoint, StreamTurnClient, TestPeer } from '../helpers/turn-client.js';

const credentials = { username: 'alice', password: 'wonderland', realm: 'anyturn.tcp.test' };

async function start(extra: RawOptions = {}): Promise<RunningServer> {
  const range = await reserveRelayPortRange(100);
  return startServer(
    buildConfig({
      'listening-ip': ['127.0.0.1'],
      'listening-port': 0,
      'min-port': range.min,
      'max-port': range.max,
      realm: credentials.realm,
      user: [`${credentials.username}:${credentials.password}`],
      'allow-loopback-peers': true,
      ...extra,
    }),
    { logger: createLogger('silent') },
  );
}

function endpointOf(server: RunningServer, transport: 'udp' | 'tcp' | 'tls'): Endpoint {
  const entry = server.listening.find((l) => l.transport === transport);
  assert.ok(entry, `a ${transport} listener`);
  return { address: entry.address, port: entry.port };
}

async function until(what: string, predicate: () => boolean, timeoutMs = 3000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!predicate()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 10));
  }
}

function udpPortFree(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const s = dgram.createSocket('udp4');
    s.once('error', () => resolve(false));
    s.bind(port, '127.0.0.1', () => s.close(() => resolve(true)));
  });
}

/** A raw TCP connection (from `localAddress` when given); resolves with it once connected. */
function rawConnect(endpoint: Endpoint, localAddress?: string): Promise<net.Socket> {
  return new Promise((resolve, reject) => {
    const s = net.connect({ host: endpoint.address, port: endpoint.port, localAddress }, () => resolve(s));
    s.once('error', reject);
  });
}

/** Turns the event loop (no timers: they may be mocked) until `predicate` holds, or 10,000 turns. */
async function settled(predicate: () => boolean): Promise<void> {
  for (let i = 0; i < 10_000 && !predicate(); i++) await new Promise<void>((r) => setImmediate(r));
}

/** Resolves when the socket has closed (event-driven; the test's timeout bounds a hang). */
function closed(socket: net.Socket): Promise<void> {
  return new Promise((resolve) => {
    socket.on('error', () => undefined);
    socket.resume();
    if (socket.destroyed) return resolve();
    socket.once('close', () => resolve());
  });
}

function closedWithin(socket: net.Socket, ms: number): Promise<boolean> {
  return new Promise((resolve) => {
    if (socket.destroyed) return resolve(true);
    const timer = setTimeout(() => resolve(false), ms);
    socket.once('close', () => {
      clearTimeout(timer);
      resolve(true);
    });
    socket.on('error', () => undefined);
    socket.resume();
  });
}

for (const transport of ['tcp', 'tls'] as const) {
  describe(`relaying over ${transport.toUpperCase()} on 127.0.0.1`, () => {
    let server: RunningServer;
    let endpoint: Endpoint;
    let cert: SelfSignedCertificate | undefined;
    const open: { close(): void }[] = [];
    const connect = async (): Promise<StreamTurnClient> => {
      const c = await StreamTurnClient.connect(endpoint, credentials, { tls: transport === 'tls' });
      open.push(c);
      return c;
    };
    const peer = async (): Promise<TestPeer> => {
      const p = await TestPeer.open();
      open.push(p);
      return p;
    };

    before(async () => {
      if (transport === 'tls') cert = makeSelfSignedCertificate();
      server = await start(cert ? { cert: cert.certFile, pkey: cert.keyFile, 'tls-listening-port': 0 } : {});
      endpoint = endpointOf(server, transport);
    });
    after(async () => {
      for (const c of open) c.close();
      await server.stop();
      cert?.remove();
    });

    it('listens on UDP and TCP with the same port number, TLS on its own', () => {
      const udp = endpointOf(server, 'udp');
      assert.equal(endpointOf(server, 'tcp').port, udp.port);
      if (transport === 'tls') assert.notEqual(endpointOf(server, 'tls').port, udp.port);
      else
        assert.equal(
          server.listening.some((l) => l.transport === 'tls'),
          false,
          'no TLS without --cert/--pkey',
        );
    });

    it('relays ChannelData both ways, padded to 4 bytes on the stream in both directions', async () => {
      const client = await connect();
      const p = await peer();
      const { response, relayed } = await client.allocate();
      assert.equal(response.code, 200);
      assert.ok(relayed);
      assert.equal((await client.channelBind(0x4001, p.endpoint)).code, 200);
      // 5 bytes of data: 3 bytes of padding on the stream, none towards the peer.
      client.write(client.channelDataBuffer(0x4001, Buffer.from('hello')));
      const [got] = await p.waitFor(1);
      assert.equal(got?.data.toString(), 'hello');
      assert.deepEqual(got?.from, relayed);

      for (const size of [0, 1, 2, 3, 4, 5, 1000, 1001]) {
        const before = client.received.length;
        p.send(Buffer.alloc(size, 0x61 + (size % 26)), relayed);
        const [back] = (await client.waitForReceived(before + 1)).slice(before);
        assert.equal(back?.kind, 'channel-data');
        assert.equal(back?.channel, 0x4001);
        assert.equal(back?.data.length, size);
        assert.equal(back?.wire.length, 4 + Math.ceil(size / 4) * 4, `${size} bytes of data padded to a multiple of 4`);
        assert.ok(
          back?.wire.subarray(4 + size).every((b) => b === 0),
          'zero padding',
        );
      }
      assert.equal(client.garbage, 0);
    });

    it('relays Send and Data indications both ways', async () => {
      const client = await connect();
      const p = await peer();
      const { relayed } = await client.allocate();
      assert.ok(relayed);
      assert.equal((await client.createPermission(p.endpoint)).code, 200);
      client.write(client.sendIndicationBuffer(p.endpoint, Buffer.from('over a stream')));
      const [got] = await p.waitFor(1);
      assert.equal(got?.data.toString(), 'over a stream');
      p.send(Buffer.from('back, 7'), relayed);
      const [back] = await client.waitForReceived(1);
      assert.equal(back?.kind, 'data-indication');
      assert.equal(back?.data.toString(), 'back, 7');
      assert.deepEqual(back?.peer, p.endpoint);
      assert.equal(back!.wire.length % 4, 0, 'a STUN message: attributes padded');
    });

    it('reads several messages from one write, and a message sent byte by byte', async () => {
      const client = await connect();
      const p = await peer();
      const { relayed } = await client.allocate();
      assert.ok(relayed);
      assert.equal((await client.channelBind(0x4002, p.endpoint)).code, 200);
      // Binding + ChannelData(3) + Send indication + ChannelData(8) + Binding in one write.
      const b1 = client.build(Method.Binding, () => undefined, { auth: false });
      const b2 = client.build(Method.Binding, () => undefined, { auth: false });
      client.write(
        Buffer.concat([
          b1.buf,
          client.channelDataBuffer(0x4002, Buffer.from('one')),
          client.sendIndicationBuffer(p.endpoint, Buffer.from('two')),
          client.channelDataBuffer(0x4002, Buffer.from('three...')),
          b2.buf,
        ]),
      );
      assert.equal((await client.response(b1.transactionId)).code, 200);
      assert.equal((await client.response(b2.transactionId)).code, 200);
      const got = await p.waitFor(3);
      assert.deepEqual(
        got.map((g) => g.data.toString()),
        ['one', 'two', 'three...'],
      );

      // An authenticated Refresh, one byte per write.
      const refresh = client.build(Method.Refresh);
      await client.writeByteByByte(refresh.buf);
      assert.equal((await client.response(refresh.transactionId)).code, 200);
      // ChannelData byte by byte, padding included.
      await client.writeByteByByte(client.channelDataBuffer(0x4002, Buffer.from('slow')));
      await p.waitFor(4);
      assert.equal(p.received[3]?.data.toString(), 'slow');
    });

    it('closing the connection deletes its allocation and frees the relay port', async () => {
      const client = await connect();
      const allocationsBefore = server.engine.allocations;
      const { relayed } = await client.allocate();
      assert.ok(relayed);
      assert.equal(server.engine.allocations, allocationsBefore + 1);
      assert.equal(await udpPortFree(relayed.port), false, 'the relay port is held');
      client.close();
      await until('the allocation to go', () => server.engine.allocations === allocationsBefore);
      assert.equal(await udpPortFree(relayed.port), true, 'the relay port is free again');
      assert.ok(server.streamCounters.closed[transport].client >= 1);
    });

    it('closes the connection on bytes that are neither STUN nor ChannelData, and counts it', async () => {
      const client = await connect();
      assert.equal((await client.binding()).code, 200);
      const before = server.streamCounters.framingErrors[transport].not_turn;
      client.write(Buffer.from([0xff, 0xfe, 0x00, 0x04, 1, 2, 3, 4]));
      await client.waitUntil(() => client.isClosed, 'the server to close the connection');
      assert.equal(server.streamCounters.framingErrors[transport].not_turn, before + 1);
      await until('the close to be counted', () => server.streamCounters.closed[transport].framing_error >= 1);
    });

    it('closes the connection on a frame longer than 64 KiB, and counts it', async () => {
      const client = await connect();
      const before = server.streamCounters.framingErrors[transport].too_long;
      // A STUN header announcing 65532 bytes (65552 with the header), then some of them.
      const head = Buffer.from([0x00, 0x01, 0xff, 0xfc, 0x21, 0x12, 0xa4, 0x42, ...Buffer.alloc(12)]);
      client.write(Buffer.concat([head, Buffer.alloc(1000)]));
      await client.waitUntil(() => client.isClosed, 'the server to close the connection');
      assert.equal(server.streamCounters.framingErrors[transport].too_long, before + 1);
    });
  });
}

describe('TCP connection protections', () => {
  const servers: RunningServer[] = [];
  const sockets: net.Socket[] = [];
  after(async () => {
    for (const s of sockets) s.destroy();
    await Promise.all(servers.map((s) => s.stop()));
  });

  // setTimeout is mocked (the idle deadline is the server's only setTimeout; its other
  // timers are intervals), so the deadline is checked to the millisecond without sleeping.
  it('closes a connection that sends no valid STUN message within --tcp-idle-timeout, and keeps one that did', async (t) => {
    const server = await start({ 'tcp-idle-timeout': 1 });
    servers.push(server);
    const endpoint = endpointOf(server, 'tcp');
    t.mock.timers.enable({ apis: ['setTimeout'] });
    const silent = await rawConnect(endpoint);
    sockets.push(silent);
    // ChannelData is framed fine but is not STUN: it does not count as a client speaking.
    const channelOnly = await rawConnect(endpoint);
    sockets.push(channelOnly);
    channelOnly.write(Buffer.from([0x40, 0x00, 0x00, 0x00]));
    const speaking = await StreamTurnClient.connect(endpoint, credentials);
    sockets.push(speaking.socket);
    // Answered: the server has accepted all three (in order) and read what they sent.
    assert.equal((await speaking.binding()).code, 200);
    const silentClosed = closed(silent);
    const channelOnlyClosed = closed(channelOnly);

    t.mock.timers.tick(999);
    assert.equal((await speaking.binding()).code, 200); // a round trip through the server's loop
    assert.equal(server.streamCounters.closed.tcp.idle_timeout, 0, 'nothing closed before the 1 s deadline');
    assert.equal(silent.destroyed || channelOnly.destroyed, false);
    t.mock.timers.tick(1);
    await silentClosed;
    await channelOnlyClosed;
    await settled(() => server.streamCounters.closed.tcp.idle_timeout === 2);
    assert.equal(server.streamCounters.closed.tcp.idle_timeout, 2, 'both closes counted as idle_timeout');
    // Far past the deadline: the connection that spoke STUN is still open and served.
    t.mock.timers.tick(60_000);
    assert.equal((await speaking.binding()).code, 200);
    assert.equal(speaking.isClosed, false, 'a connection that sent a valid STUN message stays open');
    assert.equal(server.streamCounters.closed.tcp.idle_timeout, 2);
  });

  // setInterval is mocked: the checks run when the test says, without sleeping.
  it('closes a connection holding no allocation at a --tcp-unallocated-timeout check: never allocated, or after Refresh 0', async (t) => {
    const server = await start({ 'tcp-unallocated-timeout': 1 });
    servers.push(server);
    const endpoint = endpointOf(server, 'tcp');
    t.mock.timers.enable({ apis: ['setInterval'] });
    // The system clock's coarse reading refreshes on an interval too, mocked now: leave it
    // stopped (unread for two periods) before the mock is reset, so it restarts for real.
    t.after(() => t.mock.timers.tick(2 * COARSE_CLOCK_MS));
    // Kept a connection slot with one Binding request and nothing else.
    const bindingOnly = await StreamTurnClient.connect(endpoint, credentials);
    sockets.push(bindingOnly.socket);
    assert.equal((await bindingOnly.binding()).code, 200);
    const allocated = await StreamTurnClient.connect(endpoint, credentials);
    sockets.push(allocated.socket);
    const { response, relayed } = await allocated.allocate();
    assert.equal(response.code, 200);
    assert.ok(relayed);

    t.mock.timers.tick(999);
    assert.equal((await allocated.binding()).code, 200); // a round trip through the server's loop
    assert.equal(bindingOnly.isClosed, false, 'not before the first check');
    t.mock.timers.tick(1); // the first check
    await bindingOnly.waitUntil(() => bindingOnly.isClosed, 'the Binding-only connection to be closed', 10_000);
    await until('the close to be counted', () => server.streamCounters.closed.tcp.no_allocation === 1);
    // Two more checks later, the allocated connection is still open and served.
    t.mock.timers.tick(2000);
    assert.equal(allocated.isClosed, false, 'a connection holding an allocation stays open');
    const peer = await TestPeer.open();
    try {
      assert.equal((await allocated.createPermission(peer.endpoint)).code, 200);
      allocated.write(allocated.sendIndicationBuffer(peer.endpoint, Buffer.from('still here')));
      const [got] = await peer.waitFor(1);
      assert.equal(got?.data.toString(), 'still here');
      assert.deepEqual(got?.from, relayed);
    } finally {
      peer.close();
    }
    assert.equal(server.streamCounters.closed.tcp.no_allocation, 1);

    // Refresh 0 deletes the allocation; the next check closes the connection.
    assert.equal((await allocated.request(Method.Refresh, (w) => w.add(Attr.Lifetime, encodeUint32(0)))).code, 200);
    assert.equal(allocated.isClosed, false);
    t.mock.timers.tick(1000);
    await allocated.waitUntil(() => allocated.isClosed, 'the connection whose allocation was deleted to be closed', 10_000);
    await until('both closes to be counted', () => server.streamCounters.closed.tcp.no_allocation === 2);
    assert.equal(server.streamCounters.closed.tcp.idle_timeout, 0);
  });

  it('keeps a connection without an allocation with --tcp-unallocated-timeout 0', async (t) => {
    const server = await start({ 'tcp-unallocated-timeout': 0, 'tcp-idle-timeout': 1 });
    servers.push(server);
    // Both server timers a connection may get are mocked: the idle deadline and the check.
    t.mock.timers.enable({ apis: ['setTimeout', 'setInterval'] });
    const client = await StreamTurnClient.connect(endpointOf(server, 'tcp'), credentials);
    sockets.push(client.socket);
    assert.equal((await client.binding()).code, 200);
    t.after(() => t.mock.timers.tick(2 * COARSE_CLOCK_MS)); // as above: the coarse clock's timer
    // Past the idle deadline and past what a 1-second check period would allow.
    t.mock.timers.tick(10_000);
    assert.equal((await client.binding()).code, 200);
    assert.equal(client.isClosed, false);
    assert.equal((await client.binding()).code, 200);
    assert.equal(server.streamCounters.closed.tcp.no_allocation, 0);
  });

  it('refuses connections beyond --max-tcp-connections at once, and counts them', async () => {
    const server = await start({ 'max-tcp-connections': 2 });
    servers.push(server);
    const endpoint = endpointOf(server, 'tcp');
    const a = await StreamTurnClient.connect(endpoint, credentials);
    const b = await StreamTurnClient.connect(endpoint, credentials);
    sockets.push(a.socket, b.socket);
    assert.equal((await a.binding()).code, 200);
    assert.equal((await b.binding()).code, 200);
    assert.equal(server.streamCounters.open.tcp, 2);

    const extra = await rawConnect(endpoint);
    sockets.push(extra);
    assert.equal(await closedWithin(extra, 3000), true, 'the third connection is closed at once');
    assert.equal(server.streamCounters.refused.tcp.max_connections, 1);

    // Below the cap again: accepted.
    a.close();
    await until('the close to be seen', () => server.streamCounters.open.tcp === 1);
    const c = await StreamTurnClient.connect(endpoint, credentials);
    sockets.push(c.socket);
    assert.equal((await c.binding()).code, 200);
    assert.equal(server.streamCounters.refused.tcp.max_connections, 1);
    assert.equal(server.streamCounters.accepted.tcp, 3);
  });

  it('gives one source IP at most --max-tcp-connections-per-ip of the cap (TCP and TLS together); another source still connects', async (t) => {
    const cert = makeSelfSignedCertificate();
    t.after(() => cert.remove());
    const server = await start({
      'max-tcp-connections': 10,
      'max-tcp-connections-per-ip': 2,
      cert: cert.certFile,
      pkey: cert.keyFile,
      'tls-listening-port': 0,
    });
    servers.push(server);
    const tcp = endpointOf(server, 'tcp');
    const tlsEndpoint = endpointOf(server, 'tls');
    const a = await StreamTurnClient.connect(tcp, credentials, { localAddress: '127.0.0.1' });
    const b = await StreamTurnClient.connect(tlsEndpoint, credentials, { tls: true, localAddress: '127.0.0.1' });
    sockets.push(a.socket, b.socket);
    assert.equal((await a.binding()).code, 200);
    assert.equal((await b.binding()).code, 200);

    // 127.0.0.1 has its share: a third connection from it is closed at once, over TCP or TLS,
    // though the node-wide cap is far off.
    const extra = await rawConnect(tcp, '127.0.0.1');
    sockets.push(extra);
    assert.equal(await closedWithin(extra, 3000), true, 'a third TCP connection from 127.0.0.1 is closed at once');
    const extraTls = await rawConnect(tlsEndpoint, '127.0.0.1');
    sockets.push(extraTls);
    assert.equal(await closedWithin(extraTls, 3000), true, 'a third (TLS) connection from 127.0.0.1 is closed at once');
    assert.equal(server.streamCounters.refused.tcp.per_source, 1);
    assert.equal(server.streamCounters.refused.tls.per_source, 1);
    assert.equal(server.streamCounters.refused.tcp.max_connections, 0);

    // Another source is not held back by the first one's connections.
    const other = await StreamTurnClient.connect(tcp, credentials, { localAddress: '127.0.0.2' });
    sockets.push(other.socket);
    assert.equal((await other.binding()).code, 200);
    const otherTls = await StreamTurnClient.connect(tlsEndpoint, credentials, { tls: true, localAddress: '127.0.0.2' });
    sockets.push(otherTls.socket);
    assert.equal((await otherTls.binding()).code, 200);
    assert.equal(server.streamCounters.openTotal, 4);

    // A connection of 127.0.0.1 closes: its share has room again.
    a.close();
    await until('the close to be seen', () => server.streamCounters.openTotal === 3);
    const again = await StreamTurnClient.connect(tcp, credentials, { localAddress: '127.0.0.1' });
    sockets.push(again.socket);
    assert.equal((await again.binding()).code, 200);
    assert.equal(server.streamCounters.refused.tcp.per_source + server.streamCounters.refused.tls.per_source, 2);

    // Every connection gone: no source is held any more (refused ones were never counted).
    for (const c of [b, other, otherTls, again]) c.close();
    await until('every close to be seen', () => server.streamCounters.openTotal === 0);
    assert.equal(server.streamCounters.sourceCount, 0);
  });

  it('--no-udp and --no-tcp leave those listeners out', async () => {
    const tcpOnly = await start({ 'no-udp': true });
    servers.push(tcpOnly);
    assert.deepEqual(
      tcpOnly.listening.map((l) => l.transport),
      ['tcp'],
    );
    const client = await StreamTurnClient.connect(endpointOf(tcpOnly, 'tcp'), credentials);
    sockets.push(client.socket);
    assert.equal((await client.allocate()).response.code, 200);

    const udpOnly = await start({ tcp: false });
    servers.push(udpOnly);
    assert.deepEqual(
      udpOnly.listening.map((l) => l.transport),
      ['udp'],
    );
  });
});

describe('TLS configuration', () => {
  let cert: SelfSignedCertificate;
  let other: SelfSignedCertificate;
  before(() => {
    cert = makeSelfSignedCertificate();
    other = makeSelfSignedCertificate();
  });
  after(() => {
    cert.remove();
    other.remove();
  });
  const base: RawOptions = { user: ['a:b'], 'listening-ip': ['127.0.0.1'] };
  const configError = (raw: RawOptions): ConfigError => {
    try {
      buildConfig({ ...base, ...raw });
    } catch (err) {
      assert.ok(err instanceof ConfigError, String(err));
      return err;
    }
    assert.fail('no ConfigError');
  };

  it('turns TLS on with --cert and --pkey, off with --no-tls or without them', () => {
    const on = buildConfig({ ...base, cert: cert.certFile, pkey: cert.keyFile });
    assert.equal(on.tls?.port, 5349);
    assert.ok(on.tls?.cert.equals(cert.cert));
    assert.equal(buildConfig({ ...base, cert: cert.certFile, pkey: cert.keyFile, 'no-tls': true }).tls, undefined);
    assert.equal(buildConfig({ ...base, cert: cert.certFile, pkey: cert.keyFile, tls: false }).tls, undefined);
    assert.equal(buildConfig(base).tls, undefined);
  });

  it('names the flag when only one of --cert/--pkey is given, a file is unreadable, or they do not match', () => {
    let e = configError({ cert: cert.certFile });
    assert.equal(e.flag, 'pkey');
    assert.match(e.message, /--pkey/);
    e = configError({ pkey: cert.keyFile });
    assert.equal(e.flag, 'cert');
    e = configError({ cert: '/nonexistent/c.pem', pkey: cert.keyFile });
    assert.equal(e.flag, 'cert');
    assert.match(e.message, /\/nonexistent\/c\.pem/);
    assert.match(e.message, /ENOENT/);
    e = configError({ cert: cert.certFile, pkey: '/nonexistent/k.pem' });
    assert.equal(e.flag, 'pkey');
    e = configError({ cert: cert.keyFile, pkey: cert.keyFile });
    assert.equal(e.flag, 'cert', 'a key is not a certificate');
    e = configError({ cert: cert.certFile, pkey: cert.certFile });
    assert.equal(e.flag, 'pkey', 'a certificate is not a key');
    e = configError({ cert: cert.certFile, pkey: other.keyFile });
    assert.equal(e.flag, 'pkey');
    assert.match(e.message, /private key of the --cert certificate/);
  });

  it('checks the transport flags', () => {
    assert.equal(configError({ 'no-udp': true, 'no-tcp': true }).flag, 'no-udp');
    assert.equal(configError({ 'max-tcp-connections': -1 }).flag, 'max-tcp-connections');
    assert.equal(configError({ 'tcp-idle-timeout': 0 }).flag, 'tcp-idle-timeout');
    for (const bad of [-1, 1.5, 86_401]) {
      const e = configError({ 'tcp-unallocated-timeout': bad });
      assert.equal(e.flag, 'tcp-unallocated-timeout');
      assert.match(e.message, /--tcp-unallocated-timeout/);
      assert.match(e.message, /0 for never/);
    }
    assert.equal(buildConfig({ ...base, 'tcp-unallocated-timeout': 0 }).tcpUnallocatedTimeoutSeconds, 0);
    for (const bad of [-1, 2.5, 'many']) {
      const e = configError({ 'max-tcp-connections-per-ip': bad as number });
      assert.equal(e.flag, 'max-tcp-connections-per-ip');
      assert.match(e.message, /--max-tcp-connections-per-ip/);
      assert.match(e.message, /0 for no per-source limit/);
    }
    assert.equal(buildConfig({ ...base, 'max-tcp-connections-per-ip': 0 }).maxTcpConnectionsPerIp, 0);
    assert.equal(buildConfig(base).maxTcpConnectionsPerIp, 64);
    assert.equal(configError({ 'unauth-error-rate': 1.5 }).flag, 'unauth-error-rate');
    assert.equal(configError({ 'unauth-error-burst': 0 }).flag, 'unauth-error-burst');
    assert.equal(configError({ cert: cert.certFile, pkey: cert.keyFile, 'listening-port': 5349 }).flag, 'tls-listening-port');
    const c = buildConfig(base);
    assert.deepEqual(
      [c.udp, c.tcp, c.maxTcpConnections, c.tcpIdleTimeoutSeconds, c.tcpUnallocatedTimeoutSeconds, c.unauthErrorRate, c.unauthErrorBurst],
      [true, true, 10_000, 10, 60, 20, 40],
    );
  });
});

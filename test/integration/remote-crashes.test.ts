// The security review's remote crashes, over real sockets against the real CLI: each
// packet below once ended the process (and every allocation on it). Each test sends
// it, then checks the server is alive, the drop was counted, no error was logged,
// and another allocation kept relaying.

import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { encodeAddressFamily, encodeRequestedTransport } from '../../src/stun/attributes.js';
import { AddressFamily, Attr, MessageClass, Method, TRANSPORT_UDP } from '../../src/stun/constants.js';
import { MessageWriter } from '../../src/stun/writer.js';
import { LOOPBACK_V4, type RunningTurnServer, findFreeTcpPort, parseLogLines, startAnyturn } from '../helpers/anyturn-process.js';
import { get, parseMetrics, sum, until } from '../helpers/ops-endpoint.js';
import { canSendRaw, sendRawUdpV4 } from '../helpers/raw-udp.js';
import { type Endpoint, TestPeer, TestTurnClient } from '../helpers/turn-client.js';

const REALM = 'crashes.test';
const cred = (name: string): { username: string; password: string; realm: string } => ({ username: name, password: `pw-${name}`, realm: REALM });
const USERS = ['alice', 'bob', 'carol'].map((name) => ({ name, password: `pw-${name}` }));

async function scrape(metricsPort: number): Promise<ReturnType<typeof parseMetrics>> {
  return parseMetrics((await get(`http://${LOOPBACK_V4}:${metricsPort}/metrics`)).body);
}

function errorLines(server: RunningTurnServer): Record<string, unknown>[] {
  // pino level 50 is error, 60 fatal.
  return parseLogLines(server.process.stdout()).filter((l) => typeof l.level === 'number' && l.level >= 50);
}

/**
 * What the review sent from source port 0: a Binding (the --workers primary died answering
 * it) and an Allocate with junk MESSAGE-INTEGRITY (a worker connect()ed a session to port 0).
 */
function portZeroProbes(): [Buffer, Buffer] {
  const binding = new MessageWriter(Method.Binding, MessageClass.Request, randomBytes(12));
  const allocate = new MessageWriter(Method.Allocate, MessageClass.Request, randomBytes(12));
  allocate.add(Attr.RequestedTransport, encodeRequestedTransport(TRANSPORT_UDP));
  allocate.addText(Attr.Username, 'alice');
  allocate.addText(Attr.Realm, REALM);
  allocate.addText(Attr.Nonce, 'junk');
  allocate.add(Attr.MessageIntegrity, randomBytes(20));
  return [binding.toBuffer(), allocate.toBuffer()];
}

/** A client with an allocation, a permission and channel 0x4000 to `peer`, that checks it still relays both ways. */
async function relayingPair(
  server: Endpoint,
  user: string,
  peer: TestPeer,
): Promise<{ client: TestTurnClient; relayed: Endpoint; check: (tag: string) => Promise<void> }> {
  const client = await TestTurnClient.open(server, cred(user));
  const a = await client.allocate();
  assert.equal(a.response.code, 200);
  assert.equal((await client.channelBind(0x4000, peer.endpoint)).code, 200);
  const relayed = a.relayed!;
  const check = async (tag: string): Promise<void> => {
    const seen = peer.received.length;
    client.sendChannelData(0x4000, Buffer.from(`to-peer ${tag}`));
    const got = await peer.waitFor(seen + 1);
    assert.equal(got[seen]?.data.toString(), `to-peer ${tag}`, `${user}'s allocation still relays to its peer (${tag})`);
    const before = client.received.length;
    peer.send(Buffer.from(`to-client ${tag}`), relayed);
    const back = await client.waitForReceived(before + 1);
    assert.equal(back[before]?.data.toString(), `to-client ${tag}`, `and back (${tag})`);
  };
  await check('before');
  return { client, relayed, check };
}

describe('remote crashes, single process (CLI, loopback)', () => {
  let server: RunningTurnServer;
  let metricsPort: number;
  let endpoint: Endpoint;
  let peer: TestPeer;
  let bystander: Awaited<ReturnType<typeof relayingPair>>;

  before(async () => {
    metricsPort = await findFreeTcpPort();
    server = await startAnyturn({
      users: USERS,
      realm: REALM,
      allowLoopbackPeers: true,
      listeningIps: [LOOPBACK_V4, '::1'],
      extraArgs: ['--relay-ip', '::1', '--metrics-ip', LOOPBACK_V4, '--metrics-port', String(metricsPort)],
    });
    endpoint = { address: server.host, port: server.port };
    peer = await TestPeer.open();
    bystander = await relayingPair(endpoint, 'carol', peer);
  });
  after(async () => {
    bystander?.client.close();
    peer?.close();
    await server?.stop();
  });

  it('survives a Send indication to peer port 0 (dropped and counted)', async () => {
    const c = await TestTurnClient.open(endpoint, cred('alice'));
    try {
      assert.equal((await c.allocate()).response.code, 200);
      assert.equal((await c.createPermission({ address: LOOPBACK_V4, port: 0 })).code, 200, 'CreatePermission ignores the port (RFC 8656 §9.1)');
      c.sendIndication({ address: LOOPBACK_V4, port: 0 }, Buffer.from('to port zero'));
      await until(
        async () => (sum(await scrape(metricsPort), 'anyturn_dropped_packets_total', { reason: 'bad_peer_port' }) >= 1 ? true : undefined),
        'the drop counted',
      );
      assert.ok(server.process.isRunning(), server.process.outputTail());
      await bystander.check('after send to port 0');
      assert.equal((await c.refresh(0)).code, 200);
    } finally {
      c.close();
    }
  });

  it('answers ChannelBind to peer port 0 with 400; ChannelData on that number is dropped', async () => {
    const c = await TestTurnClient.open(endpoint, cred('bob'));
    try {
      assert.equal((await c.allocate()).response.code, 200);
      assert.equal((await c.channelBind(0x4001, { address: LOOPBACK_V4, port: 0 })).code, 400);
      c.sendChannelData(0x4001, Buffer.from('on the refused channel'));
      await until(
        async () => (sum(await scrape(metricsPort), 'anyturn_dropped_packets_total', { reason: 'no_channel' }) >= 1 ? true : undefined),
        'the drop counted',
      );
      assert.ok(server.process.isRunning(), server.process.outputTail());
      await bystander.check('after channel to port 0');
      assert.equal((await c.refresh(0)).code, 200);
    } finally {
      c.close();
    }
  });

  it('survives a 65,520-byte datagram from an IPv6 peer (too large for a Data indication: dropped and counted)', async () => {
    const c = await TestTurnClient.open({ address: '::1', port: server.port }, cred('alice'), { address: '::1' });
    const peer6 = await TestPeer.open('::1');
    try {
      const a = await c.allocate((w) => w.add(Attr.RequestedAddressFamily, encodeAddressFamily(AddressFamily.IPv6)));
      assert.equal(a.response.code, 200);
      assert.equal((await c.createPermission(peer6.endpoint)).code, 200);
      peer6.send(Buffer.alloc(65_520, 7), a.relayed!);
      await until(
        async () => (sum(await scrape(metricsPort), 'anyturn_dropped_packets_total', { reason: 'too_large' }) >= 1 ? true : undefined),
        'the drop counted',
      );
      // A large datagram that fits a UDP Data indication still arrives whole.
      peer6.send(Buffer.alloc(60_000, 8), a.relayed!);
      const got = await c.waitForReceived(1, 5000);
      assert.equal(got[0]?.data.length, 60_000);
      assert.ok(server.process.isRunning(), server.process.outputTail());
      await bystander.check('after 65,520 bytes');
      assert.equal((await c.refresh(0)).code, 200);
    } finally {
      c.close();
      peer6.close();
    }
  });

  it('drops and counts datagrams from UDP source port 0, logging no error', async (t) => {
    if (!(await canSendRaw())) return t.skip('needs root and python3 for a raw socket');
    const [binding, junk] = portZeroProbes();
    await sendRawUdpV4(
      server.port,
      0,
      Array.from({ length: 40 }, (_, i) => (i % 2 === 0 ? binding : junk)),
    );
    await until(
      async () => (sum(await scrape(metricsPort), 'anyturn_dropped_packets_total', { reason: 'source_port_zero' }) >= 40 ? true : undefined),
      'the drops counted',
    );
    assert.ok(server.process.isRunning(), server.process.outputTail());
    assert.deepEqual(errorLines(server), [], 'no error logged');
    await bystander.check('after source port 0');
  });
});

describe('remote crashes, --workers 2 (CLI, loopback)', () => {
  it('one datagram from UDP source port 0 stops nothing: dropped and counted by the primary', async (t) => {
    if (!(await canSendRaw())) return t.skip('needs root and python3 for a raw socket');
    const metricsPort = await findFreeTcpPort();
    const server = await startAnyturn({
      users: USERS,
      realm: REALM,
      allowLoopbackPeers: true,
      extraArgs: ['--workers', '2', '--metrics-ip', LOOPBACK_V4, '--metrics-port', String(metricsPort)],
    });
    const peer = await TestPeer.open();
    let pair: Awaited<ReturnType<typeof relayingPair>> | undefined;
    try {
      pair = await relayingPair({ address: server.host, port: server.port }, 'carol', peer);
      await sendRawUdpV4(server.port, 0, portZeroProbes());
      await until(
        async () => (sum(await scrape(metricsPort), 'anyturn_primary_datagrams_total', { kind: 'source_port_zero' }) >= 2 ? true : undefined),
        'the drops counted',
      );
      assert.ok(server.process.isRunning(), server.process.outputTail());
      assert.deepEqual(errorLines(server), [], 'no error logged');
      await pair.check('after source port 0');
      // A fresh client still gets its Binding answered.
      const fresh = await TestTurnClient.open({ address: server.host, port: server.port }, cred('alice'));
      try {
        assert.ok(await fresh.binding(), 'Binding answered');
      } finally {
        fresh.close();
      }
    } finally {
      pair?.client.close();
      peer.close();
      await server.stop();
    }
  });
});

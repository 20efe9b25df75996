// The peer policy over the wire: which peers CreatePermission and ChannelBind
// accept (RFC 8656 §9.2, §11.2: 403 for a peer the server will not relay to).
//
// Safety: the only packets sent here go to 127.0.0.1 and ::1. Every other
// address appears only as XOR-PEER-ADDRESS data in a request; a granted
// permission sends nothing, and no Send indication or ChannelData ever goes
// toward a non-loopback peer.

import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { buildConfig, type RawOptions } from '../../src/config/index.js';
import { createLogger } from '../../src/ops/log.js';
import { type RunningServer, startServer } from '../../src/server.js';
import { encodeAddressFamily } from '../../src/stun/attributes.js';
import { AddressFamily, Attr } from '../../src/stun/constants.js';
import { createPeerPolicy } from '../../src/turn/peer-policy.js';
import { type Endpoint, TestPeer, TestTurnClient } from '../helpers/turn-client.js';

const REALM = 'anyturn.policy.test';
const credentials = { username: 'pat', password: 'policy-pw', realm: REALM };
const PORT = 9; // discard; never reached

const DENIED_V4 = [
  '127.0.0.1',
  '10.1.2.3',
  '172.16.0.1',
  '192.168.1.1',
  '100.64.0.1',
  '169.254.169.254',
  '0.0.0.0',
  '224.0.0.1',
  '255.255.255.255',
  '192.0.2.1',
  '198.18.0.1',
  '240.0.0.1',
  '203.0.113.7',
  '198.51.100.7',
];

// Every written form of a special-purpose IPv4 address, and IPv6's own special blocks.
const DENIED_V6 = [
  '::1',
  '::',
  '::ffff:127.0.0.1',
  '::ffff:10.1.2.3',
  '::ffff:169.254.169.254',
  '::ffff:0:a01:203', // SIIT ::ffff:0:0:0/96 form of 10.1.2.3
  '::a01:203', // deprecated IPv4-compatible
  '64:ff9b::a9fe:a9fe', // NAT64 of 169.254.169.254
  '64:ff9b::7f00:1', // NAT64 of 127.0.0.1
  '64:ff9b:1::1', // local-use NAT64
  '2002:a9fe:a9fe::1', // 6to4 of 169.254.169.254
  '2002:7f00:1::1', // 6to4 of 127.0.0.1
  'fe80::1',
  'fc00::1',
  'fd00::2',
  'ff02::1',
  '2001:db8::1',
  '2001::1', // Teredo
  '100::1', // discard-only
  '4000::1', // outside 2000::/3
];

async function startWith(extra: RawOptions): Promise<{ server: RunningServer; endpoint: Endpoint }> {
  const server = await startServer(
    buildConfig({
      'listening-ip': ['127.0.0.1'],
      'listening-port': 0,
      // An IPv4 and an IPv6 relay address, so IPv6 peers are reachable through an IPv6 allocation.
      'relay-ip': ['127.0.0.1', '::1'],
      realm: REALM,
      user: [`${credentials.username}:${credentials.password}`],
      ...extra,
    }),
    { logger: createLogger('silent') },
  );
  return { server, endpoint: { address: '127.0.0.1', port: server.listening[0]!.port } };
}

interface Allocated {
  readonly v4: TestTurnClient;
  readonly v6: TestTurnClient;
  readonly relayedV4: Endpoint;
  readonly relayedV6: Endpoint;
}

async function allocateBoth(endpoint: Endpoint): Promise<Allocated> {
  const v4 = await TestTurnClient.open(endpoint, credentials);
  const v6 = await TestTurnClient.open(endpoint, credentials);
  const a = await v4.allocate();
  const b = await v6.allocate((w) => w.add(Attr.RequestedAddressFamily, encodeAddressFamily(AddressFamily.IPv6)));
  assert.equal(a.response.code, 200);
  assert.equal(b.response.code, 200);
  assert.equal(a.relayed?.address, '127.0.0.1');
  assert.equal(b.relayed?.address, '::1');
  return { v4, v6, relayedV4: a.relayed!, relayedV6: b.relayed! };
}

function closeBoth(a: Allocated | undefined): void {
  a?.v4.close();
  a?.v6.close();
}

async function permissionCode(c: TestTurnClient, address: string): Promise<number> {
  return (await c.createPermission({ address, port: PORT })).code;
}

async function channelCode(c: TestTurnClient, channel: number, address: string): Promise<number> {
  return (await c.channelBind(channel, { address, port: PORT })).code;
}

describe('peer policy over the wire, default flags', () => {
  let server: RunningServer;
  let endpoint: Endpoint;
  let allocated: Allocated | undefined;
  before(async () => {
    ({ server, endpoint } = await startWith({ 'min-port': 44000, 'max-port': 44199 }));
    allocated = await allocateBoth(endpoint);
  });
  after(async () => {
    closeBoth(allocated);
    await server.stop();
  });

  it('refuses CreatePermission to special-purpose IPv4 peers with 403', async () => {
    const refusals = server.counters.peerPolicyRefusals;
    for (const ip of DENIED_V4) assert.equal(await permissionCode(allocated!.v4, ip), 403, ip);
    assert.equal(server.counters.peerPolicyRefusals, refusals + DENIED_V4.length);
  });

  it('refuses ChannelBind to the same peers with 403', async () => {
    let channel = 0x4000;
    for (const ip of DENIED_V4) assert.equal(await channelCode(allocated!.v4, channel++, ip), 403, ip);
  });

  it("refuses the server's own listening and relayed addresses", async () => {
    const c = allocated!.v4;
    assert.equal((await c.createPermission(endpoint)).code, 403);
    assert.equal((await c.createPermission(allocated!.relayedV4)).code, 403);
    assert.equal((await c.channelBind(0x4100, endpoint)).code, 403);
    assert.equal((await allocated!.v6.createPermission(allocated!.relayedV6)).code, 403);
  });

  it('grants a permission for a public IPv4 peer (nothing is sent to it)', async () => {
    const sent = server.counters.packetsClientToPeer;
    assert.equal(await permissionCode(allocated!.v4, '8.8.8.8'), 200);
    assert.equal(server.counters.packetsClientToPeer, sent);
  });

  it('refuses every written form of special-purpose addresses on an IPv6 allocation', async () => {
    for (const ip of DENIED_V6) assert.equal(await permissionCode(allocated!.v6, ip), 403, ip);
    let channel = 0x4200;
    for (const ip of DENIED_V6) assert.equal(await channelCode(allocated!.v6, channel++, ip), 403, ip);
  });

  it('grants a permission for a public IPv6 peer and its IPv4-mapped public form; IPv4 text is a family mismatch', async () => {
    assert.equal(await permissionCode(allocated!.v6, '2001:4860:4860::8888'), 200);
    assert.equal(await permissionCode(allocated!.v6, '::ffff:8.8.8.8'), 200);
    assert.equal(await permissionCode(allocated!.v6, '8.8.8.8'), 443);
  });
});

describe('peer policy over the wire, --allowed-peer-ip 198.18.0.0/15', () => {
  let server: RunningServer;
  let allocated: Allocated | undefined;
  before(async () => {
    let endpoint: Endpoint;
    ({ server, endpoint } = await startWith({ 'min-port': 44200, 'max-port': 44399, 'allowed-peer-ip': ['198.18.0.0/15'] }));
    allocated = await allocateBoth(endpoint);
  });
  after(async () => {
    closeBoth(allocated);
    await server.stop();
  });

  it('allows peers inside the range in every form, and nothing else that was denied', async () => {
    assert.equal(await permissionCode(allocated!.v4, '198.18.0.1'), 200);
    assert.equal(await permissionCode(allocated!.v4, '198.19.255.254'), 200);
    assert.equal(await permissionCode(allocated!.v6, '::ffff:198.18.0.1'), 200);
    assert.equal(await channelCode(allocated!.v4, 0x4000, '198.18.0.1'), 200);
    for (const ip of DENIED_V4.filter((ip) => !ip.startsWith('198.18.'))) assert.equal(await permissionCode(allocated!.v4, ip), 403, ip);
  });
});

describe('peer policy over the wire, --denied-peer-ip 8.8.8.0/24', () => {
  let server: RunningServer;
  let allocated: Allocated | undefined;
  before(async () => {
    let endpoint: Endpoint;
    ({ server, endpoint } = await startWith({ 'min-port': 44400, 'max-port': 44599, 'denied-peer-ip': ['8.8.8.0/24'] }));
    allocated = await allocateBoth(endpoint);
  });
  after(async () => {
    closeBoth(allocated);
    await server.stop();
  });

  it("refuses peers in the operator's range in every form, and still grants others", async () => {
    assert.equal(await permissionCode(allocated!.v4, '8.8.8.8'), 403);
    assert.equal(await permissionCode(allocated!.v4, '8.8.8.255'), 403);
    assert.equal(await channelCode(allocated!.v4, 0x4000, '8.8.8.8'), 403);
    assert.equal(await permissionCode(allocated!.v6, '::ffff:8.8.8.8'), 403);
    assert.equal(await permissionCode(allocated!.v6, '64:ff9b::808:808'), 403);
    assert.equal(await permissionCode(allocated!.v6, '2002:808:808::1'), 403);
    assert.equal(await permissionCode(allocated!.v4, '8.8.4.4'), 200);
  });
});

describe('peer policy over the wire, --allow-loopback-peers', () => {
  let server: RunningServer;
  let allocated: Allocated | undefined;
  const peers: TestPeer[] = [];
  before(async () => {
    let endpoint: Endpoint;
    ({ server, endpoint } = await startWith({ 'min-port': 44600, 'max-port': 44799, 'allow-loopback-peers': true }));
    allocated = await allocateBoth(endpoint);
  });
  after(async () => {
    closeBoth(allocated);
    for (const p of peers) p.close();
    await server.stop();
  });

  it('allows 127.0.0.1 and relays to it, by Send indication and by channel', async () => {
    const peer = await TestPeer.open();
    peers.push(peer);
    const c = allocated!.v4;
    assert.equal((await c.createPermission(peer.endpoint)).code, 200);
    c.sendIndication(peer.endpoint, Buffer.from('loopback ok'));
    assert.equal((await peer.waitFor(1))[0]?.data.toString(), 'loopback ok');
    assert.equal((await c.channelBind(0x4000, peer.endpoint)).code, 200);
    c.sendChannelData(0x4000, Buffer.from('loopback channel'));
    assert.equal((await peer.waitFor(2))[1]?.data.toString(), 'loopback channel');
  });

  it('allows ::1 on an IPv6 allocation and relays to it both ways', async () => {
    const peer = await TestPeer.open('::1');
    peers.push(peer);
    const c = allocated!.v6;
    assert.equal((await c.createPermission(peer.endpoint)).code, 200);
    c.sendIndication(peer.endpoint, Buffer.from('to ::1'));
    const [got] = await peer.waitFor(1);
    assert.equal(got?.data.toString(), 'to ::1');
    assert.deepEqual(got?.from, allocated!.relayedV6);
    peer.send(Buffer.from('from ::1'), allocated!.relayedV6);
    const [back] = await c.waitForReceived(1);
    assert.equal(back?.data.toString(), 'from ::1');
    assert.deepEqual(back?.peer, peer.endpoint);
    assert.equal(await permissionCode(c, '::ffff:127.0.0.1'), 200);
  });

  it('still refuses every other special-purpose peer', async () => {
    for (const ip of DENIED_V4.filter((ip) => !ip.startsWith('127.'))) assert.equal(await permissionCode(allocated!.v4, ip), 403, ip);
    const loopbackForms = new Set(['::1', '::ffff:127.0.0.1', '64:ff9b::7f00:1', '2002:7f00:1::1']);
    for (const ip of DENIED_V6.filter((ip) => !loopbackForms.has(ip))) assert.equal(await permissionCode(allocated!.v6, ip), 403, ip);
  });
});

describe('peer policy: the server-address rule (not reachable over loopback, checked directly)', () => {
  // Over loopback the server's own addresses are loopback too, so the wire tests above
  // cannot tell 'server-address' from 'loopback'. A public own address can.
  const policy = createPeerPolicy({
    allowLoopbackPeers: false,
    allowedPeerRanges: [],
    deniedPeerRanges: [],
    serverAddresses: ['8.8.4.4', '2001:4860:4860::8844'],
  });
  const table: [string, string][] = [
    ['8.8.4.4', 'server-address'],
    ['::ffff:8.8.4.4', 'server-address'],
    ['64:ff9b::808:404', 'server-address'],
    ['2001:4860:4860::8844', 'server-address'],
  ];
  for (const [ip, reason] of table) {
    it(`${ip} -> ${reason}`, () => {
      assert.deepEqual(policy.check(ip), { allowed: false, reason });
    });
  }
  it('a neighbouring public address is allowed', () => {
    assert.deepEqual(policy.check('8.8.4.5'), { allowed: true });
  });
});

// The server's own service ports are never peers, whatever --allowed-peer-ip
// allows (RFC 8656 §21): with 127.0.0.0/8 allowed, a client must not make the
// server relay to its own listening port (TURN-to-self), its ops port, or the
// service ports of another cluster node; two allocations on the same server
// still relay to each other through their relayed addresses.
//
// Safety: every packet goes to 127.0.0.1.

import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { buildConfig } from '../../src/config/index.js';
import { createLogger } from '../../src/ops/log.js';
import { type RunningServer, startServer } from '../../src/server.js';
import { MemoryAllocationStore, MemoryNodeRegistry } from '../../src/store/memory.js';
import { Method, MessageClass } from '../../src/stun/constants.js';
import { MessageWriter } from '../../src/stun/writer.js';
import { findFreeTcpPort, findFreeUdpPort, reserveRelayPortRange } from '../helpers/anyturn-process.js';
import { type Endpoint, TestPeer, TestTurnClient } from '../helpers/turn-client.js';

const REALM = 'anyturn.self.test';
const cred = (name: string): { username: string; password: string; realm: string } => ({ username: name, password: `pw-${name}`, realm: REALM });
const USERS = ['ann', 'ben', 'cid'].map((u) => `${u}:pw-${u}`);

/** A STUN Binding request: what a TURN-to-self loop would make the server answer to its own relay. */
function bindingRequest(): Buffer {
  return new MessageWriter(Method.Binding, MessageClass.Request, Buffer.alloc(12, 7)).toBuffer();
}

describe('TURN-to-self: the server refuses its own service ports with --allowed-peer-ip 127.0.0.0/8', () => {
  let server: RunningServer;
  let listening: Endpoint;
  let ops: Endpoint;
  let a: TestTurnClient;
  let b: TestTurnClient;
  let peer: TestPeer;
  let relayB: Endpoint;

  before(async () => {
    const relayPorts = await reserveRelayPortRange(50);
    const metricsPort = await findFreeTcpPort();
    server = await startServer(
      buildConfig({
        'listening-ip': ['127.0.0.1'],
        'listening-port': 0,
        'min-port': relayPorts.min,
        'max-port': relayPorts.max,
        'metrics-ip': '127.0.0.1',
        'metrics-port': metricsPort,
        realm: REALM,
        user: USERS,
        'allowed-peer-ip': ['127.0.0.0/8'],
      }),
      { logger: createLogger('silent') },
    );
    listening = { address: '127.0.0.1', port: server.listening[0]!.port };
    ops = { address: '127.0.0.1', port: server.metricsPort };
    a = await TestTurnClient.open(listening, cred('ann'));
    b = await TestTurnClient.open(listening, cred('ben'));
    peer = await TestPeer.open();
    assert.equal((await a.allocate()).response.code, 200);
    const rb = await b.allocate();
    assert.equal(rb.response.code, 200);
    relayB = rb.relayed!;
  });
  after(async () => {
    a.close();
    b.close();
    peer.close();
    await server.stop();
  });

  it('a permission for the server’s own IP is granted (a permission is per IP)', async () => {
    assert.equal((await a.createPermission({ address: '127.0.0.1', port: 0 })).code, 200);
  });

  it('ChannelBind to the listening port or the ops port is 403', async () => {
    const before = server.counters.peerPolicyRefusals;
    assert.equal((await a.channelBind(0x4001, listening)).code, 403);
    assert.equal((await a.channelBind(0x4002, ops)).code, 403);
    assert.equal(server.counters.peerPolicyRefusals, before + 2);
  });

  it('a Send indication to the listening port is dropped and counted, not relayed to the server itself', async () => {
    const dropped = server.counters.drops.peer_service_port;
    const bindingsAnswered = server.counters.requests.get('binding 200') ?? 0;
    a.sendIndication(listening, bindingRequest());
    a.sendIndication(ops, Buffer.from('GET /metrics HTTP/1.0\r\n\r\n'));
    // A packet to an ordinary peer after them: once it has arrived, the two above were handled.
    a.sendIndication(peer.endpoint, Buffer.from('after'));
    const got = await peer.waitFor(1);
    assert.equal(got[0]?.data.toString(), 'after');
    assert.equal(server.counters.drops.peer_service_port, dropped + 2);
    assert.equal(server.counters.requests.get('binding 200') ?? 0, bindingsAnswered, 'the server answered a Binding its own relay sent');
    assert.equal(a.received.length, 0, 'nothing came back from the server’s own port');
  });

  it('two allocations on the same server still relay to each other', async () => {
    assert.equal((await b.createPermission({ address: '127.0.0.1', port: 0 })).code, 200);
    a.sendIndication(relayB, Buffer.from('a to b'));
    const [got] = await b.waitForReceived(1);
    assert.equal(got?.data.toString(), 'a to b');
    assert.equal(got?.kind, 'data-indication');
    // A channel to the other relayed address too.
    assert.equal((await a.channelBind(0x4003, relayB)).code, 200);
    a.sendChannelData(0x4003, Buffer.from('by channel'));
    const all = await b.waitForReceived(2);
    assert.equal(all[1]?.data.toString(), 'by channel');
  });
});

describe('TURN-to-self in a cluster: another node’s mesh and listening ports are refused too', () => {
  const clock = { now: () => Date.now() };
  const store = new MemoryAllocationStore();
  const registry = new MemoryNodeRegistry(() => clock.now());
  const servers: RunningServer[] = [];
  let client: TestTurnClient | undefined;

  const node = async (nodeId: string): Promise<RunningServer> => {
    const relayPorts = await reserveRelayPortRange(20);
    const meshPort = await findFreeUdpPort();
    const s = await startServer(
      buildConfig({
        'listening-ip': ['127.0.0.1'],
        'listening-port': 0,
        'min-port': relayPorts.min,
        'max-port': relayPorts.max,
        realm: REALM,
        user: USERS,
        'allowed-peer-ip': ['127.0.0.0/8'],
        'node-id': nodeId,
        // Never connected: the nodes share the in-memory store and registry below.
        'redis-url': 'redis://127.0.0.1:1',
        'mesh-address': `127.0.0.1:${meshPort}`,
        'cluster-secret': 'turn-to-self-cluster-secret',
      }),
      { logger: createLogger('silent'), store, registry },
    );
    servers.push(s);
    return s;
  };

  after(async () => {
    client?.close();
    await Promise.all(servers.map((s) => s.stop()));
  });

  it('learns the other node from membership and refuses its service ports', async () => {
    const first = await node('self-a');
    // The second node lists the first on its first heartbeat.
    const second = await node('self-b');
    client = await TestTurnClient.open({ address: '127.0.0.1', port: second.listening[0]!.port }, cred('cid'));
    assert.equal((await client.allocate()).response.code, 200);
    assert.equal((await client.channelBind(0x4001, { address: '127.0.0.1', port: first.meshPort })).code, 403, 'the other node’s mesh port');
    assert.equal((await client.channelBind(0x4002, { address: '127.0.0.1', port: first.listening[0]!.port })).code, 403, 'the other node’s listening port');
    assert.equal((await client.channelBind(0x4003, { address: '127.0.0.1', port: second.meshPort })).code, 403, 'its own mesh port');
  });
});

describe('TURN-to-self with the listening socket on a wildcard: every local address is the server’s', () => {
  let server: RunningServer | undefined;
  let client: TestTurnClient | undefined;
  after(async () => {
    client?.close();
    await server?.stop();
  });

  it('refuses 127.0.0.2 at the listening port: a 0.0.0.0 socket answers there too', async () => {
    const relayPorts = await reserveRelayPortRange(20);
    server = await startServer(
      buildConfig({
        'listening-ip': ['0.0.0.0'],
        'listening-port': 0,
        'relay-ip': ['127.0.0.1'],
        'min-port': relayPorts.min,
        'max-port': relayPorts.max,
        realm: REALM,
        user: USERS,
        'allowed-peer-ip': ['127.0.0.0/8'],
      }),
      { logger: createLogger('silent') },
    );
    const port = server.listening[0]!.port;
    client = await TestTurnClient.open({ address: '127.0.0.1', port }, cred('ann'));
    assert.equal((await client.allocate()).response.code, 200);
    assert.equal((await client.channelBind(0x4001, { address: '127.0.0.2', port })).code, 403);
    assert.equal((await client.channelBind(0x4002, { address: '127.0.0.2', port: relayPorts.min })).code, 200, 'another port of 127.0.0.2 is allowed');
  });
});

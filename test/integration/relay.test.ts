import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { buildConfig } from '../../src/config.js';
import { createLogger } from '../../src/ops/log.js';
import { type RunningServer, startServer } from '../../src/server.js';
import { type Endpoint, TestPeer, TestTurnClient } from '../helpers/turn-client.js';

const credentials = { username: 'alice', password: 'wonderland', realm: 'anyturn.test' };

describe('relaying over real UDP on 127.0.0.1', () => {
  let server: RunningServer;
  let endpoint: Endpoint;
  before(async () => {
    const config = buildConfig({
      'listening-ip': ['127.0.0.1'],
      'listening-port': 0,
      'min-port': 42000,
      'max-port': 42999,
      realm: credentials.realm,
      user: [`${credentials.username}:${credentials.password}`],
      'allow-loopback-peers': true,
    });
    server = await startServer(config, { logger: createLogger('silent') });
    endpoint = { address: '127.0.0.1', port: server.listening[0]!.port };
  });
  after(() => server.stop());

  it('relays by Send/Data indications both ways', async () => {
    const client = await TestTurnClient.open(endpoint, credentials);
    const peer = await TestPeer.open();
    try {
      const { response, relayed } = await client.allocate();
      assert.equal(response.code, 200);
      assert.ok(relayed && relayed.address === '127.0.0.1' && relayed.port >= 42000 && relayed.port <= 42999);
      assert.equal((await client.createPermission(peer.endpoint)).code, 200);
      client.sendIndication(peer.endpoint, Buffer.from('hello peer'));
      const [got] = await peer.waitFor(1);
      assert.equal(got?.data.toString(), 'hello peer');
      assert.deepEqual(got?.from, relayed);
      peer.send(Buffer.from('hello client'), relayed);
      const [back] = await client.waitForReceived(1);
      assert.equal(back?.kind, 'data-indication');
      assert.equal(back?.data.toString(), 'hello client');
      assert.deepEqual(back?.peer, peer.endpoint);
    } finally {
      client.close();
      peer.close();
    }
  });

  it('relays by ChannelData both ways', async () => {
    const client = await TestTurnClient.open(endpoint, credentials);
    const peer = await TestPeer.open();
    try {
      const { relayed } = await client.allocate();
      assert.ok(relayed);
      assert.equal((await client.channelBind(0x4001, peer.endpoint)).code, 200);
      client.sendChannelData(0x4001, Buffer.from('over a channel'));
      const [got] = await peer.waitFor(1);
      assert.equal(got?.data.toString(), 'over a channel');
      peer.send(Buffer.from('and back'), relayed);
      const [back] = await client.waitForReceived(1);
      assert.equal(back?.kind, 'channel-data');
      assert.equal(back?.channel, 0x4001);
      assert.equal(back?.data.toString(), 'and back');
    } finally {
      client.close();
      peer.close();
    }
  });
});

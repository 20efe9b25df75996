// The namespace topology itself (test/helpers/netns.ts): the anycast address
// answers from N1, a reroute makes N2 answer, a reply from the anycast
// address crosses the router on the asymmetric path, and teardown leaves no
// namespace behind. Runs before reroute.test.ts (alphabetical order does not
// matter: each file builds its own topology).

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { ANYCAST_ADDRESS, REDIS_ADDRESS, Topology, listOurNamespaces, netnsUnavailableReason, type NodeName } from '../helpers/netns.js';

const skip = netnsUnavailableReason();

// A UDP echo that answers with its node name (argv[1]), on the anycast address.
const NAMED_ECHO = `
const dgram = require('node:dgram');
const s = dgram.createSocket('udp4');
s.on('message', (m, r) => s.send(Buffer.from(process.argv[1] + ':' + m.toString()), r.port, r.address));
s.bind(9999, ${JSON.stringify(ANYCAST_ADDRESS)}, () => console.log(JSON.stringify({ event: 'listening' })));
`;

// From C: send one datagram to the anycast address, print the answer (or 'timeout').
const ASK = `
const dgram = require('node:dgram');
const s = dgram.createSocket('udp4');
const t = setTimeout(() => { console.log('timeout'); process.exit(0); }, 2000);
s.on('message', (m, r) => { console.log(m.toString() + ' from ' + r.address + ':' + r.port); clearTimeout(t); s.close(); });
s.bind(0, ${JSON.stringify(Topology.clientAddress)}, () => s.send(Buffer.from('hi'), 9999, ${JSON.stringify(ANYCAST_ADDRESS)}));
`;

// TCP to port 9 of argv[1]: 'reachable' on connect or ECONNREFUSED (no ping on these machines).
const REACH = `
const net = require('node:net');
const c = net.connect({ host: process.argv[1], port: 9, timeout: 2000 });
c.on('connect', () => { console.log('reachable'); c.destroy(); });
c.on('error', (e) => console.log(e.code === 'ECONNREFUSED' ? 'reachable' : e.code));
c.on('timeout', () => { console.log('timeout'); c.destroy(); });
`;

test('namespace topology: anycast answers from the routed node, reroute moves it, teardown leaves nothing', { skip, timeout: 60_000 }, async (t) => {
  const topo = await Topology.build({ nodes: 3 });
  let prefix = topo.prefix;
  t.after(() => topo.teardown());
  for (const node of topo.nodeNames) {
    const p = topo.spawnIn(node, process.execPath, ['-e', NAMED_ECHO, node], { name: `echo-${node}` });
    await p.waitForJsonLine((r) => r.event === 'listening', 10_000);
  }
  const ask = async (): Promise<string> => (await topo.exec('C', process.execPath, ['-e', ASK])).stdout.trim();

  assert.equal(await ask(), `N1:hi from ${ANYCAST_ADDRESS}:9999`);
  for (const node of ['N2', 'N3', 'N1'] as NodeName[]) {
    await topo.reroute(node);
    assert.equal(await ask(), `${node}:hi from ${ANYCAST_ADDRESS}:9999`);
  }
  // Every node reaches the router's loopback (where redis-server listens) and the peer:
  // a TCP connect to a closed port answered by a RST (ECONNREFUSED) proves the route both ways.
  for (const node of topo.nodeNames) {
    for (const target of [REDIS_ADDRESS, Topology.peerAddress]) {
      const r = await topo.exec(node, process.execPath, ['-e', REACH, target]);
      assert.equal(r.stdout.trim(), 'reachable', `${node} -> ${target}: ${r.stdout}${r.stderr}`);
    }
  }

  await topo.teardown();
  assert.deepEqual(listOurNamespaces(prefix), []);
  prefix = '';
});

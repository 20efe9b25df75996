// Two allocations of one server relay to each other with the default peer policy, as two
// browsers on one TURN service do (both on relay candidates): coturn's turnutils_uclient -y
// ("client-to-client") in namespace C makes pairs of allocations on node N1, each sending to
// the other's relayed address, which is N1's own address (198.18.0.0/15, a block the default
// policy denies for any other peer). N1 runs without --allowed-peer-ip: its own addresses are
// peers at its relayed ports only (src/turn/peer-policy.ts, step 5).
//
// Safety: every packet stays in the namespaces the test builds (test/helpers/netns.ts).

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { ANYCAST_ADDRESS, Topology, netnsUnavailableReason } from '../helpers/netns.js';
import { parseUclientStats } from '../helpers/uclient.js';
import { TURN_PORT, USER, dumpAll, nodeArgs } from './cluster.js';

const skip = netnsUnavailableReason();
const MESSAGES = 20;
const CLIENTS = 2;

test('two allocations of one server relay to each other under the default peer policy (turnutils_uclient -y)', { skip, timeout: 120_000 }, async (t) => {
  const topo = await Topology.build();
  t.after(() => topo.teardown());
  try {
    const args = nodeArgs('N1', { cluster: false });
    const allow = args.indexOf('--allowed-peer-ip');
    assert.ok(allow > 0, 'nodeArgs names --allowed-peer-ip');
    args.splice(allow, 2); // the default policy: 198.18.0.0/15 is denied as a peer, but for N1's own address
    const node = topo.spawnIn('N1', process.execPath, args, { name: 'anyturn-N1-default-policy' });
    await node.waitForJsonLine((r) => r.msg === 'anyturn ready', 20_000);

    const [user, password] = USER.split(':') as [string, string];
    const uclient = ['-y', '-n', String(MESSAGES), '-m', String(CLIENTS), '-l', '120', '-u', user, '-w', password, '-p', String(TURN_PORT), ANYCAST_ADDRESS];
    const run = await topo.exec('C', 'turnutils_uclient', uclient, 60_000);
    const output = `${run.stdout}\n${run.stderr}`;
    assert.doesNotMatch(output, /error 403/, `a peer refused:\n${output.slice(-2000)}`);
    const stats = parseUclientStats(output);
    assert.ok(stats !== undefined, `no totals in uclient's output:\n${output.slice(-2000)}`);
    assert.ok(stats.sentMessages >= MESSAGES * CLIENTS, `sent ${stats.sentMessages}`);
    assert.equal(stats.receivedMessages, stats.sentMessages, 'every message reached the other allocation');
    assert.equal(stats.lostPackets, 0);
    await node.stop();
  } catch (err) {
    console.error(dumpAll(topo));
    throw err;
  }
});

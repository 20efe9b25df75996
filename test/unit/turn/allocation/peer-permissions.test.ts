// PeerPermissions (allocation/peer-permissions.ts): an allocation's permissions by peer IP,
// held in a field while there is one and in two maps from the second on. Both states must
// answer every lookup alike: by text, by IPv4 number (the packet paths), and while a
// prune deletes during iteration.

import { describe, it } from 'node:test';
import assert from 'node:assert/strict';

import { Permission } from '../../../../src/turn/allocation/allocation.js';
import { PeerPermissions } from '../../../../src/turn/allocation/peer-permissions.js';
import { FakeRelaySocket } from '../../../helpers/fake-io.js';

const relay = new FakeRelaySocket(
  '192.0.2.10',
  50000,
  () => undefined,
  () => undefined,
);
const relay6 = new FakeRelaySocket(
  '2001:db8::10',
  50000,
  () => undefined,
  () => undefined,
);

function v4(last: number): Permission {
  return new Permission(`203.0.113.${last}`, 0xcb007100 + last, relay, 1000);
}

describe('PeerPermissions', () => {
  it('is empty at first', () => {
    const p = new PeerPermissions();
    assert.equal(p.size, 0);
    assert.equal(p.get('203.0.113.1'), undefined);
    assert.equal(p.getIPv4(0xcb007101), undefined);
    assert.deepEqual([...p], []);
  });

  it('holds one permission without maps, found by text and by number, and nothing else', () => {
    const p = new PeerPermissions();
    const one = v4(1);
    p.add(one);
    assert.equal(p.size, 1);
    assert.equal(p.get('203.0.113.1'), one);
    assert.equal(p.has('203.0.113.2'), false);
    assert.equal(p.getIPv4(0xcb007101), one);
    assert.equal(p.getIPv4(0xcb007102), undefined);
    assert.deepEqual([...p.keys()], ['203.0.113.1']);
    assert.deepEqual([...p], [['203.0.113.1', one]]);
    p.delete(v4(1)); // another object for the same peer: not the one held
    assert.equal(p.get('203.0.113.1'), one);
    p.delete(one);
    assert.equal(p.size, 0);
    assert.equal(p.getIPv4(0xcb007101), undefined);
  });

  it('never finds an IPv6 permission by an IPv4 number (-1 included)', () => {
    const p = new PeerPermissions();
    const six = new Permission('2001:db8::99', -1, relay6, 1000);
    p.add(six);
    assert.equal(p.getIPv4(-1), undefined);
    assert.equal(p.get('2001:db8::99'), six);
    p.add(v4(1));
    assert.equal(p.getIPv4(-1), undefined, 'nor with the maps');
    assert.equal(p.get('2001:db8::99'), six);
  });

  it('moves to maps at the second permission, keeping the first, and answers the same', () => {
    const p = new PeerPermissions();
    const [a, b, c] = [v4(1), v4(2), v4(3)];
    p.add(a);
    p.add(b);
    p.add(c);
    assert.equal(p.size, 3);
    for (const x of [a, b, c]) {
      assert.equal(p.get(x.peerAddress), x);
      assert.equal(p.getIPv4(x.peerIPv4), x);
    }
    assert.deepEqual([...p.keys()], ['203.0.113.1', '203.0.113.2', '203.0.113.3']);
    p.delete(b);
    assert.equal(p.size, 2);
    assert.equal(p.get('203.0.113.2'), undefined);
    assert.equal(p.getIPv4(b.peerIPv4), undefined);
    assert.equal(p.getIPv4(a.peerIPv4), a);
  });

  it('lets a walk delete what it visits, in either state', () => {
    for (const count of [1, 3]) {
      const p = new PeerPermissions();
      for (let i = 1; i <= count; i++) p.add(v4(i));
      const seen: string[] = [];
      for (const permission of p.values()) {
        seen.push(permission.peerAddress);
        p.delete(permission);
      }
      assert.equal(seen.length, count);
      assert.equal(p.size, 0);
      assert.deepEqual([...p], []);
    }
  });
});

// CreatePermission's cap check (RFC 8656 §10.2 step 3, methods/create-permission.ts): the
// number of distinct peer IPs a request would add, counted without a set per request for a
// few peers, with one for many; held to a set's answer on random requests.

import assert from 'node:assert/strict';
import { describe, it } from 'node:test';

import { Allocation } from '../../../../src/turn/allocation/allocation.js';
import { newPeerAddresses } from '../../../../src/turn/methods/create-permission.js';
import { FakeClientPath, FakeRelaySocket } from '../../../helpers/fake-io.js';

function allocation(): Allocation {
  const relay = new FakeRelaySocket(
    '192.0.2.10',
    50000,
    () => undefined,
    () => undefined,
  );
  const seed = { key: 'k', clientAddress: '198.51.100.7', clientPort: 40000, username: 'u', realm: 'r', createdAtMs: 0, expiresAtMs: 600_000 };
  return new Allocation(seed, new FakeClientPath(), { relay, additional: undefined }, true);
}

/** The answer a set of the new addresses gives. */
function bySet(a: Allocation, peers: readonly { address: string }[]): number {
  return new Set(peers.map((p) => p.address).filter((address) => !a.permissionsByAddress.has(address))).size;
}

describe('newPeerAddresses', () => {
  it('counts each new peer IP once, whatever the repeats and the permissions held', () => {
    const a = allocation();
    a.permit('203.0.113.1', 0xcb007101, 1000);
    a.permit('203.0.113.2', 0xcb007102, 1000);
    const peer = (n: number): { address: string } => ({ address: `203.0.113.${n}` });
    assert.equal(newPeerAddresses(a, []), 0);
    assert.equal(newPeerAddresses(a, [peer(1)]), 0);
    assert.equal(newPeerAddresses(a, [peer(3)]), 1);
    assert.equal(newPeerAddresses(a, [peer(3), peer(3), peer(1), peer(4), peer(3)]), 2);
    let seed = 7;
    const random = (n: number): number => {
      seed = (seed * 1103515245 + 12345) % 2 ** 31;
      return seed % n;
    };
    for (let round = 0; round < 500; round++) {
      // Up to 20 peers (past the pairwise walk's 8) among 6 addresses: repeats and held ones.
      const peers = Array.from({ length: random(21) }, () => peer(1 + random(6)));
      assert.equal(newPeerAddresses(a, peers), bySet(a, peers), JSON.stringify(peers));
    }
  });
});

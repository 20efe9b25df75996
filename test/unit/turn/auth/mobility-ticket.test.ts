// RFC 8016 mobility tickets (src/turn/auth/mobility-ticket.ts): sealed with AES-256-GCM
// under a key derived from the cluster secret: every node with the secret opens them,
// nobody else makes or alters one.

import { describe, it } from 'node:test';
import assert from 'node:assert/strict';

import { MAX_TICKET_BYTES, MobilityTickets } from '../../../../src/turn/auth/mobility-ticket.js';

const SECRET = Buffer.from('a cluster secret of enough bytes');
const CLAIMS = { key: 'udp|198.51.100.10|40000|192.0.2.1|3478', createdAtMs: 1_760_000_000_123, relayedPort: 50_001, generation: 3 };

describe('MobilityTickets', () => {
  it('opens on another node with the same secret what one node sealed', () => {
    const ticket = new MobilityTickets(SECRET).seal(CLAIMS);
    assert.deepEqual(new MobilityTickets(Buffer.from(SECRET)).open(ticket), CLAIMS);
  });

  it('never seals the same claims to the same bytes, and hides the 5-tuple', () => {
    const tickets = new MobilityTickets(SECRET);
    const a = tickets.seal(CLAIMS);
    const b = tickets.seal(CLAIMS);
    assert.notDeepEqual(a, b);
    assert.equal(a.includes(Buffer.from('198.51.100.10')), false);
  });

  it('refuses a ticket with any byte changed, one sealed under another secret, and junk of any length', () => {
    const tickets = new MobilityTickets(SECRET);
    const ticket = tickets.seal(CLAIMS);
    for (let i = 0; i < ticket.length; i++) {
      const bad = Buffer.from(ticket);
      bad[i]! ^= 0x01;
      assert.equal(tickets.open(bad), undefined, `byte ${i}`);
    }
    assert.equal(new MobilityTickets(Buffer.from('another cluster secret, as long')).open(ticket), undefined);
    for (const length of [0, 1, 28, 41, 64, MAX_TICKET_BYTES + 1]) assert.equal(tickets.open(Buffer.alloc(length, 0xab)), undefined, `${length} bytes`);
  });
});

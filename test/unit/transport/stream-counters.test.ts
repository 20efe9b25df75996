// StreamCounters' per-source accounting, what --max-tcp-connections-per-ip limits: an
// IPv4 source by its address, an IPv6 source by its /64 (one subscriber's prefix, whose
// addresses it may rotate through freely), an IPv4-mapped IPv6 address as its IPv4.

import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { StreamCounters } from '../../../src/transport/counters.js';

describe('StreamCounters per source', () => {
  it('counts an IPv6 source by its /64 and an IPv4-mapped one as the IPv4 address', () => {
    const key = StreamCounters.sourceKey;
    assert.equal(key('2001:db8:1:2::1'), key('2001:db8:1:2:ffff:ffff:ffff:fffe'));
    assert.notEqual(key('2001:db8:1:2::1'), key('2001:db8:1:3::1'));
    assert.equal(key('::ffff:192.0.2.7'), key('192.0.2.7'));
    assert.notEqual(key('192.0.2.7'), key('192.0.2.8'));
  });

  it('adds and removes connections; a source with none left is forgotten', () => {
    const c = new StreamCounters();
    const a = StreamCounters.sourceKey('2001:db8::1');
    const b = StreamCounters.sourceKey('2001:db8::2');
    c.sourceOpened(a);
    c.sourceOpened(b);
    assert.equal(c.openFrom(a), 2, 'two addresses of one /64 are one source');
    assert.equal(c.sourceCount, 1);
    c.sourceOpened(StreamCounters.sourceKey('198.51.100.1'));
    assert.equal(c.sourceCount, 2);
    c.sourceClosed(a);
    assert.equal(c.openFrom(b), 1);
    c.sourceClosed(b);
    assert.equal(c.openFrom(a), 0);
    assert.equal(c.sourceCount, 1, 'the /64 with no connection left is no longer held');
  });
});

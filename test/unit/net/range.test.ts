// IP ranges and address values (src/net/range.ts) and the IPv4-in-IPv6 forms
// (src/net/embedded-ipv4.ts). Addresses here are data only.
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';

import { embeddedIPv4, IPV4_MAPPED_FIRST, IPV4_MAPPED_LAST, ipv4EmbeddingOf } from '../../../src/net/embedded-ipv4.js';
import { parseIPv6 } from '../../../src/net/ip.js';
import { ipv6ToBigInt, parseIpRange, parseIpValue, PeerRangeError } from '../../../src/net/range.js';

describe('parseIpRange', () => {
  it('parses single addresses, CIDR blocks and first-last ranges', () => {
    assert.deepEqual(parseIpRange('10.0.0.0/8'), { family: 4, first: 0x0a000000, last: 0x0affffff });
    assert.deepEqual(parseIpRange('1.2.3.4'), { family: 4, first: 0x01020304, last: 0x01020304 });
    assert.deepEqual(parseIpRange('1.2.3.4/32'), { family: 4, first: 0x01020304, last: 0x01020304 });
    assert.deepEqual(parseIpRange('0.0.0.0/0'), { family: 4, first: 0, last: 0xffffffff });
    assert.deepEqual(parseIpRange('128.0.0.0/1'), { family: 4, first: 0x80000000, last: 0xffffffff });
    assert.deepEqual(parseIpRange('10.0.0.1-10.0.0.9'), { family: 4, first: 0x0a000001, last: 0x0a000009 });
    assert.deepEqual(parseIpRange(' 10.0.0.1 - 10.0.0.9 '), { family: 4, first: 0x0a000001, last: 0x0a000009 });
    assert.deepEqual(parseIpRange('10.0.0.1-10.0.0.1'), { family: 4, first: 0x0a000001, last: 0x0a000001 });
    assert.deepEqual(parseIpRange('2001:db8::/32'), {
      family: 6,
      first: 0x20010db8n << 96n,
      last: (0x20010db8n << 96n) | ((1n << 96n) - 1n),
    });
    assert.deepEqual(parseIpRange('::1'), { family: 6, first: 1n, last: 1n });
    assert.deepEqual(parseIpRange('::/0'), { family: 6, first: 0n, last: (1n << 128n) - 1n });
    assert.deepEqual(parseIpRange('::ffff:10.0.0.0/104'), {
      family: 6,
      first: (0xffffn << 32n) | 0x0a000000n,
      last: (0xffffn << 32n) | 0x0affffffn,
    });
    assert.deepEqual(parseIpRange('fe80::1-fe80::ff'), {
      family: 6,
      first: (0xfe80n << 112n) | 1n,
      last: (0xfe80n << 112n) | 0xffn,
    });
    assert.deepEqual(parseIpRange('1:2:3:4:5:6:7:8'), {
      family: 6,
      first: 0x00010002000300040005000600070008n,
      last: 0x00010002000300040005000600070008n,
    });
    assert.deepEqual(parseIpRange('1::'), { family: 6, first: 1n << 112n, last: 1n << 112n });
  });

  const bad: ReadonlyArray<string> = [
    '',
    '   ',
    '10.0.0.0/33',
    '10.0.0.1/8',
    '10.0.0.0/',
    '/8',
    '10.0.0.0/08',
    '10.0.0.0/-1',
    '10.0.0.0/8/8',
    '10.0.0.9-10.0.0.1',
    '10.0.0.1-::1',
    '1.2.3.4-5.6.7.8-9.9.9.9',
    '10.0.0.0/8-10.0.0.9',
    '10.0.0.1-',
    '1.2.3',
    '256.1.1.1',
    '01.2.3.4',
    '127.1',
    '2130706433',
    'fe80::1%eth0',
    '[::1]',
    '2001:db8::/129',
    '2001:db8::1/32',
    '1:2:3:4:5:6:7:8:9',
    ':::',
    'abc',
    'localhost',
    'x'.repeat(1000),
  ];
  for (const text of bad) {
    it(`rejects ${JSON.stringify(text.length > 30 ? `${text.slice(0, 30)}…` : text)} with a PeerRangeError naming it`, () => {
      assert.throws(
        () => parseIpRange(text),
        (err: unknown) => {
          assert.ok(err instanceof PeerRangeError, 'is a PeerRangeError');
          assert.equal(err.range, text);
          assert.equal(err.code, 'ERR_PEER_RANGE');
          assert.ok(err.message.includes(`'${text.slice(0, 80)}`), err.message);
          assert.ok(err.message.includes('a.b.c.d/nn'), err.message);
          assert.ok(err.message.includes('first-last'), err.message);
          return true;
        },
      );
    });
  }

  it('suggests the network address when host bits are set', () => {
    assert.throws(() => parseIpRange('10.0.0.1/8'), /did you mean 10\.0\.0\.0\/8/);
    assert.throws(() => parseIpRange('2001:db8::1/32'), /did you mean 2001:db8::\/32/);
  });
});

describe('parseIpRange: the suggestion keeps every IPv6 group in hex', () => {
  it('prints an IPv4-mapped network address without a dotted tail', () => {
    assert.throws(() => parseIpRange('::ffff:10.0.0.1/104'), /did you mean ::ffff:a00:0\/104\?/);
  });
});

describe('parseIpValue', () => {
  it('gives IPv4 as a number and IPv6 as a 128-bit bigint', () => {
    assert.deepEqual(parseIpValue('192.0.2.1'), { family: 4, value: 0xc0000201 });
    assert.deepEqual(parseIpValue('255.255.255.255'), { family: 4, value: 0xffffffff });
    assert.deepEqual(parseIpValue('::1'), { family: 6, value: 1n });
    assert.deepEqual(parseIpValue('2001:db8::1'), { family: 6, value: (0x20010db8n << 96n) | 1n });
    assert.deepEqual(parseIpValue('ffff:ffff:ffff:ffff:ffff:ffff:255.255.255.255'), { family: 6, value: (1n << 128n) - 1n });
  });

  it('refuses what is not an address, zone IDs included', () => {
    for (const text of ['', '1.2.3', '01.2.3.4', '127.1', 'fe80::1%eth0', '[::1]', ':::', 'x'.repeat(46)]) {
      assert.equal(parseIpValue(text), undefined, text);
    }
  });

  it('agrees with ipv6ToBigInt over parseIPv6', () => {
    for (const text of ['::', '::ffff:10.0.0.1', '64:ff9b::8.8.8.8', '2002:c000:201::1', 'fe80::1:2:3:4']) {
      assert.deepEqual(parseIpValue(text), { family: 6, value: ipv6ToBigInt(parseIPv6(text)!) }, text);
    }
  });
});

describe('IPv4 embedded in IPv6', () => {
  const v = (text: string): bigint => ipv6ToBigInt(parseIPv6(text)!);
  const cases: ReadonlyArray<readonly [string, string, number]> = [
    ['::ffff:192.0.2.1', 'mapped', 0xc0000201],
    ['::ffff:0:192.0.2.1', 'translated', 0xc0000201],
    ['64:ff9b::192.0.2.1', 'nat64', 0xc0000201],
    ['::192.0.2.1', 'compatible', 0xc0000201],
    ['::2', 'compatible', 2],
    ['2002:c000:201::1', '6to4', 0xc0000201],
    ['2002:c000:201:ffff:ffff:ffff:ffff:ffff', '6to4', 0xc0000201],
  ];
  for (const [text, form, ipv4] of cases) {
    it(`finds ${form} in ${text}`, () => {
      assert.equal(ipv4EmbeddingOf(v(text)), form);
      assert.equal(embeddedIPv4(v(text), ipv4EmbeddingOf(v(text))), ipv4);
    });
  }

  it('finds none in ::, ::1 and ordinary IPv6 addresses', () => {
    for (const text of ['::', '::1', '2001:db8::1', '64:ff9b:1::1', 'fe80::1', '2003::1']) assert.equal(ipv4EmbeddingOf(v(text)), 'none', text);
  });

  it('bounds the IPv4-mapped block', () => {
    assert.equal(IPV4_MAPPED_FIRST, v('::ffff:0.0.0.0'));
    assert.equal(IPV4_MAPPED_LAST, v('::ffff:255.255.255.255'));
  });
});

// Peer policy: which peer IPs a TURN relay may reach (RFC 8656 §21.2).
// Addresses here are data only; nothing in this file sends packets.
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { isIP } from 'node:net';

import { PeerRangeError } from '../../../src/net/range.js';
import { createPeerPolicy, type PeerPolicyOptions, type PeerVerdict } from '../../../src/turn/peer-policy.js';

function policy(overrides: Partial<PeerPolicyOptions> = {}) {
  return createPeerPolicy({
    allowLoopbackPeers: false,
    allowedPeerRanges: [],
    deniedPeerRanges: [],
    serverAddresses: [],
    ...overrides,
  });
}

function reasonOf(v: PeerVerdict): string {
  return v.allowed ? 'allowed' : v.reason;
}

function expectVerdicts(p: ReturnType<typeof policy>, cases: ReadonlyArray<readonly [string, string]>): void {
  for (const [ip, expected] of cases) {
    assert.equal(reasonOf(p.check(ip)), expected, `check('${ip}')`);
  }
}

// [block, reason, first, middle, last]
const DEFAULT_DENIED: ReadonlyArray<readonly [string, string, string, string, string]> = [
  ['0.0.0.0/8', 'unspecified', '0.0.0.0', '0.1.2.3', '0.255.255.255'],
  ['10.0.0.0/8', 'private', '10.0.0.0', '10.20.30.40', '10.255.255.255'],
  ['100.64.0.0/10', 'cgnat', '100.64.0.0', '100.100.100.200', '100.127.255.255'],
  ['127.0.0.0/8', 'loopback', '127.0.0.0', '127.0.0.1', '127.255.255.255'],
  ['169.254.0.0/16', 'link-local', '169.254.0.0', '169.254.169.254', '169.254.255.255'],
  ['172.16.0.0/12', 'private', '172.16.0.0', '172.20.1.1', '172.31.255.255'],
  ['192.0.0.0/24', 'reserved', '192.0.0.0', '192.0.0.10', '192.0.0.255'],
  ['192.0.2.0/24', 'documentation', '192.0.2.0', '192.0.2.77', '192.0.2.255'],
  ['192.88.99.0/24', 'reserved', '192.88.99.0', '192.88.99.1', '192.88.99.255'],
  ['192.168.0.0/16', 'private', '192.168.0.0', '192.168.1.1', '192.168.255.255'],
  ['198.18.0.0/15', 'reserved', '198.18.0.0', '198.18.200.1', '198.19.255.255'],
  ['198.51.100.0/24', 'documentation', '198.51.100.0', '198.51.100.42', '198.51.100.255'],
  ['203.0.113.0/24', 'documentation', '203.0.113.0', '203.0.113.5', '203.0.113.255'],
  ['224.0.0.0/4', 'multicast', '224.0.0.0', '232.1.2.3', '239.255.255.255'],
  ['240.0.0.0/4', 'reserved', '240.0.0.0', '250.1.2.3', '255.255.255.254'],
  ['255.255.255.255/32', 'broadcast', '255.255.255.255', '255.255.255.255', '255.255.255.255'],
  ['::/128', 'unspecified', '::', '0:0:0:0:0:0:0:0', '0000:0000:0000:0000:0000:0000:0000:0000'],
  ['::1/128', 'loopback', '::1', '0:0:0:0:0:0:0:1', '0000:0000:0000:0000:0000:0000:0000:0001'],
  ['64:ff9b:1::/48', 'private', '64:ff9b:1::', '64:ff9b:1:abcd::1', '64:ff9b:1:ffff:ffff:ffff:ffff:ffff'],
  ['100::/64', 'reserved', '100::', '100::1234', '100::ffff:ffff:ffff:ffff'],
  ['2001::/23', 'reserved', '2001::', '2001:100::1', '2001:1ff:ffff:ffff:ffff:ffff:ffff:ffff'],
  ['2001::/32 Teredo', 'reserved', '2001::1', '2001:0:4136:e378:8000:63bf:3fff:fdd2', '2001:0:ffff:ffff:ffff:ffff:ffff:ffff'],
  ['2001:10::/28 ORCHID', 'reserved', '2001:10::', '2001:10::1', '2001:1f:ffff:ffff:ffff:ffff:ffff:ffff'],
  ['2001:20::/28 ORCHIDv2', 'reserved', '2001:20::', '2001:20::1', '2001:2f:ffff:ffff:ffff:ffff:ffff:ffff'],
  ['2001:db8::/32', 'documentation', '2001:db8::', '2001:db8:1234::1', '2001:db8:ffff:ffff:ffff:ffff:ffff:ffff'],
  ['3fff::/20', 'documentation', '3fff::', '3fff:abc::1', '3fff:fff:ffff:ffff:ffff:ffff:ffff:ffff'],
  ['5f00::/16', 'reserved', '5f00::', '5f00:1::1', '5f00:ffff:ffff:ffff:ffff:ffff:ffff:ffff'],
  ['fc00::/7', 'unique-local', 'fc00::', 'fd12:3456:789a::1', 'fdff:ffff:ffff:ffff:ffff:ffff:ffff:ffff'],
  ['fe80::/10', 'link-local', 'fe80::', 'fe80::1', 'febf:ffff:ffff:ffff:ffff:ffff:ffff:ffff'],
  ['fec0::/10', 'reserved', 'fec0::', 'fed0::1', 'feff:ffff:ffff:ffff:ffff:ffff:ffff:ffff'],
  ['ff00::/8', 'multicast', 'ff00::', 'ff02::1', 'ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff'],
];

describe('peer policy: default deny', () => {
  const p = policy();

  for (const [block, reason, first, middle, last] of DEFAULT_DENIED) {
    it(`denies ${block} as ${reason}`, () => {
      expectVerdicts(p, [
        [first, reason],
        [middle, reason],
        [last, reason],
      ]);
    });
  }

  it('allows the addresses just outside the blocks', () => {
    expectVerdicts(p, [
      ['1.0.0.0', 'allowed'],
      ['9.255.255.255', 'allowed'],
      ['11.0.0.0', 'allowed'],
      ['100.63.255.255', 'allowed'],
      ['100.128.0.0', 'allowed'],
      ['126.255.255.255', 'allowed'],
      ['128.0.0.0', 'allowed'],
      ['169.253.255.255', 'allowed'],
      ['169.255.0.0', 'allowed'],
      ['172.15.255.255', 'allowed'],
      ['172.32.0.0', 'allowed'],
      ['192.0.1.0', 'allowed'],
      ['192.0.3.0', 'allowed'],
      ['192.167.255.255', 'allowed'],
      ['192.169.0.0', 'allowed'],
      ['198.17.255.255', 'allowed'],
      ['198.20.0.0', 'allowed'],
      ['223.255.255.255', 'allowed'],
      ['2001:200::1', 'allowed'],
      ['2001:db7:ffff:ffff:ffff:ffff:ffff:ffff', 'allowed'],
      ['2001:db9::', 'allowed'],
      ['3ffe:ffff::1', 'allowed'],
      ['3fff:1000::', 'allowed'],
    ]);
  });

  it('allows public unicast addresses', () => {
    expectVerdicts(p, [
      ['8.8.8.8', 'allowed'],
      ['1.1.1.1', 'allowed'],
      ['2606:4700::1111', 'allowed'],
      ['2606:4700:0:0:0:0:0:1111', 'allowed'],
      ['2606:4700::1111'.toUpperCase(), 'allowed'],
      ['2002:808:808::1', 'allowed'], // 6to4 of a public IPv4
    ]);
  });

  it('denies IPv6 outside 2000::/3 that is not an IPv4 embedding as reserved', () => {
    expectVerdicts(p, [
      ['4000::1', 'reserved'],
      ['e000::1', 'reserved'],
      ['200::1', 'reserved'],
      ['64:ff9b:2::1', 'reserved'],
    ]);
  });
});

// Every written form of an IPv4 address in IPv6.
function forms(v4: string): ReadonlyArray<readonly [string, string]> {
  const parts = v4.split('.').map(Number);
  const hi = (((parts[0] ?? 0) << 8) | (parts[1] ?? 0)).toString(16);
  const lo = (((parts[2] ?? 0) << 8) | (parts[3] ?? 0)).toString(16);
  return [
    ['v4', v4],
    ['mapped dotted', `::ffff:${v4}`],
    ['mapped hex', `::ffff:${hi}:${lo}`],
    ['mapped upper-case', `::FFFF:${hi.toUpperCase()}:${lo.toUpperCase()}`],
    ['mapped expanded', `0000:0000:0000:0000:0000:ffff:${hi.padStart(4, '0')}:${lo.padStart(4, '0')}`],
    ['compatible', `::${v4}`],
    ['SIIT', `::ffff:0:${v4}`],
    ['NAT64 dotted', `64:ff9b::${v4}`],
    ['NAT64 hex', `64:ff9b::${hi}:${lo}`],
    ['6to4', `2002:${hi}:${lo}::1`],
  ];
}

describe('peer policy: IPv4 embedded in IPv6', () => {
  const p = policy();
  const cases: ReadonlyArray<readonly [string, string]> = [
    ['127.0.0.1', 'loopback'],
    ['127.1.2.3', 'loopback'],
    ['10.0.0.1', 'private'],
    ['192.168.1.1', 'private'],
    ['172.16.5.4', 'private'],
    ['169.254.169.254', 'link-local'],
    ['100.64.0.1', 'cgnat'],
    ['0.0.0.0', 'unspecified'],
  ];
  for (const [v4, reason] of cases) {
    it(`denies every form of ${v4} as ${reason}`, () => {
      for (const [form, ip] of forms(v4)) {
        assert.equal(reasonOf(p.check(ip)), reason, `${form}: check('${ip}')`);
      }
    });
  }

  it('names the examples from the brief', () => {
    expectVerdicts(p, [
      ['64:ff9b::a9fe:a9fe', 'link-local'],
      ['2002:7f00:1::1', 'loopback'],
      ['::ffff:10.0.0.1', 'private'],
      ['::ffff:0:127.0.0.1', 'loopback'],
      ['::127.0.0.1', 'loopback'],
    ]);
  });

  it('allows a public IPv4 in mapped, SIIT, NAT64 and 6to4 form', () => {
    for (const [form, ip] of forms('8.8.8.8')) {
      const expected = form === 'compatible' ? 'reserved' : 'allowed';
      assert.equal(reasonOf(p.check(ip)), expected, `${form}: check('${ip}')`);
    }
  });

  it('denies the deprecated IPv4-compatible form even for a public IPv4', () => {
    expectVerdicts(p, [
      ['::8.8.8.8', 'reserved'],
      ['::808:808', 'reserved'],
      ['::102:304', 'reserved'],
    ]);
  });

  it('gives a mapped address the same verdict as the IPv4 address (sampled)', () => {
    let seed = 0x12345678;
    const next = (): number => {
      seed = (Math.imul(seed, 1103515245) + 12345) >>> 0;
      return seed;
    };
    for (let i = 0; i < 2000; i++) {
      const n = next();
      const v4 = `${n >>> 24}.${(n >>> 16) & 255}.${(n >>> 8) & 255}.${n & 255}`;
      const plain = reasonOf(p.check(v4));
      assert.equal(reasonOf(p.check(`::ffff:${v4}`)), plain, v4);
      assert.equal(reasonOf(p.check(`64:ff9b::${v4}`)), plain, v4);
    }
  });
});

describe('peer policy: --allow-loopback-peers', () => {
  it('is off by default: loopback denied in every form', () => {
    const p = policy();
    expectVerdicts(p, [['::1', 'loopback']]);
    for (const [form, ip] of forms('127.0.0.1')) assert.equal(reasonOf(p.check(ip)), 'loopback', form);
  });

  it('when on, allows 127.0.0.0/8 and ::1 in every form', () => {
    const p = policy({ allowLoopbackPeers: true });
    expectVerdicts(p, [
      ['::1', 'allowed'],
      ['0:0:0:0:0:0:0:1', 'allowed'],
      ['127.255.255.255', 'allowed'],
    ]);
    for (const v4 of ['127.0.0.1', '127.0.0.0', '127.9.8.7']) {
      for (const [form, ip] of forms(v4)) assert.equal(reasonOf(p.check(ip)), 'allowed', `${form}: ${ip}`);
    }
  });

  it('when on, still denies everything else', () => {
    const p = policy({ allowLoopbackPeers: true });
    expectVerdicts(p, [
      ['::', 'unspecified'],
      ['0.0.0.0', 'unspecified'],
      ['10.0.0.1', 'private'],
      ['169.254.169.254', 'link-local'],
      ['::ffff:169.254.169.254', 'link-local'],
      ['fe80::1', 'link-local'],
      ['::102:304', 'reserved'],
      ['128.0.0.1', 'allowed'],
    ]);
  });

  it('when on, allows loopback server addresses but not the other server addresses', () => {
    const p = policy({ allowLoopbackPeers: true, serverAddresses: ['127.0.0.1', '::1', '8.8.8.8'] });
    expectVerdicts(p, [
      ['127.0.0.1', 'allowed'],
      ['::1', 'allowed'],
      ['8.8.8.8', 'server-address'],
      ['::ffff:8.8.8.8', 'server-address'],
    ]);
  });
});

describe('peer policy: --allowed-peer-ip', () => {
  it('beats the default deny, in IPv4 and every embedded form', () => {
    const p = policy({ allowedPeerRanges: ['198.18.0.0/15'] });
    expectVerdicts(p, [
      ['198.18.0.0', 'allowed'],
      ['198.18.0.1', 'allowed'],
      ['198.19.255.255', 'allowed'],
      ['::ffff:198.18.0.1', 'allowed'],
      ['64:ff9b::c612:1', 'allowed'],
      ['2002:c612:1::1', 'allowed'],
      ['::198.18.0.1', 'allowed'],
      ['10.0.0.1', 'private'],
      ['192.0.2.1', 'documentation'],
    ]);
  });

  it('accepts IPv6 ranges and matches them as written', () => {
    const p = policy({ allowedPeerRanges: ['fd00::/8', '2001:db8::1-2001:db8::ff'] });
    expectVerdicts(p, [
      ['fd00::1', 'allowed'],
      ['fdff::1', 'allowed'],
      ['fc00::1', 'unique-local'],
      ['2001:db8::1', 'allowed'],
      ['2001:db8::ff', 'allowed'],
      ['2001:db8::100', 'documentation'],
    ]);
  });

  it('treats an IPv4-mapped range as the IPv4 addresses', () => {
    const p = policy({ allowedPeerRanges: ['::ffff:10.1.0.0/112'] });
    expectVerdicts(p, [
      ['10.1.2.3', 'allowed'],
      ['::ffff:10.1.2.3', 'allowed'],
      ['10.2.0.1', 'private'],
    ]);
  });

  it('beats --denied-peer-ip and the server address list', () => {
    const p = policy({
      allowedPeerRanges: ['8.8.8.8', '1.1.1.1'],
      deniedPeerRanges: ['8.8.0.0/16'],
      serverAddresses: ['1.1.1.1'],
    });
    expectVerdicts(p, [
      ['8.8.8.8', 'allowed'],
      ['8.8.4.4', 'denied-by-operator'],
      ['1.1.1.1', 'allowed'],
    ]);
  });

  it('accepts coturn-style first-last ranges', () => {
    const p = policy({ allowedPeerRanges: ['10.0.0.10-10.0.0.20'] });
    expectVerdicts(p, [
      ['10.0.0.9', 'private'],
      ['10.0.0.10', 'allowed'],
      ['10.0.0.15', 'allowed'],
      ['10.0.0.20', 'allowed'],
      ['10.0.0.21', 'private'],
    ]);
  });
});

describe('peer policy: --denied-peer-ip', () => {
  it('adds operator denies in IPv4 and IPv6, matching embedded forms too', () => {
    const p = policy({ deniedPeerRanges: ['8.8.4.0/24', '2606:4700::/32'] });
    expectVerdicts(p, [
      ['8.8.4.4', 'denied-by-operator'],
      ['::ffff:8.8.4.4', 'denied-by-operator'],
      ['64:ff9b::808:404', 'denied-by-operator'],
      ['2606:4700::1111', 'denied-by-operator'],
      ['2606:4701::1', 'allowed'],
      ['8.8.8.8', 'allowed'],
    ]);
  });

  it('wins over --allow-loopback-peers', () => {
    const p = policy({ allowLoopbackPeers: true, deniedPeerRanges: ['127.0.0.2'] });
    expectVerdicts(p, [
      ['127.0.0.1', 'allowed'],
      ['127.0.0.2', 'denied-by-operator'],
      ['::ffff:127.0.0.2', 'denied-by-operator'],
    ]);
  });
});

describe('peer policy: the server’s service ports (checkPeer), whatever is allowed', () => {
  it('refuses a server address at a service port, in every written form, even when allowed', () => {
    const p = policy({ allowLoopbackPeers: true, allowedPeerRanges: ['10.0.0.0/8'], serverAddresses: ['10.1.1.1', '127.0.0.1'], servicePorts: [3478, 9641] });
    for (const ip of ['10.1.1.1', '::ffff:10.1.1.1', '64:ff9b::a01:101', '127.0.0.1']) {
      assert.deepEqual(p.check(ip), { allowed: true }, `${ip}: a permission is per IP`);
      assert.deepEqual(p.checkPeer(ip, 3478), { allowed: false, reason: 'server-address' }, ip);
      assert.deepEqual(p.checkPeer(ip, 9641), { allowed: false, reason: 'server-address' }, ip);
      assert.deepEqual(p.checkPeer(ip, 50000), { allowed: true }, `${ip}: a relayed port of the same server`);
    }
    assert.deepEqual(p.checkPeer('10.1.1.2', 3478), { allowed: true }, 'another host’s port 3478');
    assert.deepEqual(p.checkPeer('192.168.0.1', 50000), { allowed: false, reason: 'private' }, 'the IP verdict first');
  });

  it('learns addresses and ports at run time, and says so through generation', () => {
    const p = policy({ allowedPeerRanges: ['198.18.0.0/15'], serverAddresses: [] });
    const g = p.generation;
    assert.equal(p.isServerAddress('198.18.0.9'), false);
    assert.equal(p.isServicePort(7000), false);
    p.addServer(['198.18.0.9'], [7000]);
    assert.ok(p.generation > g);
    assert.equal(p.isServerAddress('198.18.0.9'), true);
    assert.equal(p.isServerAddress('::ffff:198.18.0.9'), true);
    assert.equal(p.isServicePort(7000), true);
    assert.deepEqual(p.checkPeer('198.18.0.9', 7000), { allowed: false, reason: 'server-address' });
    const again = p.generation;
    p.addServer(['198.18.0.9'], [7000, 0, 70000]);
    assert.equal(p.generation, again, 'nothing new, no new generation; port 0 and out of range are no ports');
    assert.equal(p.isServicePort(0), false);
    assert.throws(() => p.addServer(['not an ip'], []), /server address/);
  });
});

describe('peer policy: server addresses', () => {
  it('denies the server’s own addresses in every form', () => {
    const p = policy({ serverAddresses: ['8.8.8.8', '2606:4700::1111'] });
    expectVerdicts(p, [
      ['8.8.8.8', 'server-address'],
      ['::ffff:8.8.8.8', 'server-address'],
      ['64:ff9b::808:808', 'server-address'],
      ['2606:4700::1111', 'server-address'],
      ['2606:4700::1112', 'allowed'],
      ['8.8.4.4', 'allowed'],
    ]);
  });

  it('normalises a server address given in IPv4-mapped form', () => {
    const p = policy({ serverAddresses: ['::ffff:8.8.8.8'] });
    expectVerdicts(p, [
      ['8.8.8.8', 'server-address'],
      ['::ffff:8.8.8.8', 'server-address'],
    ]);
  });

  it('denies a loopback server address when loopback peers are not allowed', () => {
    const p = policy({ serverAddresses: ['127.0.0.1'] });
    expectVerdicts(p, [['127.0.0.1', 'server-address']]);
  });
});

describe('createPeerPolicy: config validation', () => {
  const cases: ReadonlyArray<readonly [Partial<PeerPolicyOptions>, string, string]> = [
    [{ allowedPeerRanges: ['10.0.0.0/8', '10.0.0.0/99'] }, '--allowed-peer-ip', '10.0.0.0/99'],
    [{ deniedPeerRanges: ['nope'] }, '--denied-peer-ip', 'nope'],
    [{ serverAddresses: ['1.2.3'] }, 'server address', '1.2.3'],
  ];
  for (const [opts, option, range] of cases) {
    it(`throws PeerRangeError naming ${option} and '${range}'`, () => {
      assert.throws(
        () => policy(opts),
        (err: unknown) => {
          assert.ok(err instanceof PeerRangeError);
          assert.equal(err.range, range);
          assert.equal(err.option, option);
          assert.ok(err.message.startsWith(`${option}: `), err.message);
          assert.ok(err.message.includes(`'${range}'`), err.message);
          return true;
        },
      );
    });
  }

  it('keeps two policies independent', () => {
    const a = policy({ allowLoopbackPeers: true });
    const b = policy();
    assert.equal(reasonOf(a.check('127.0.0.1')), 'allowed');
    assert.equal(reasonOf(b.check('127.0.0.1')), 'loopback');
  });
});

describe('peer policy: check never throws', () => {
  const p = policy({ allowLoopbackPeers: true, allowedPeerRanges: ['0.0.0.0/0'] });
  const garbage: ReadonlyArray<string> = [
    '',
    ' ',
    'abc',
    '1.2.3',
    '1.2.3.4.5',
    '1.2.3.4 ',
    ' 1.2.3.4',
    '1.2.3.',
    '.1.2.3',
    '1..2.3',
    '256.0.0.1',
    '1.2.3.04',
    '0177.0.0.1',
    '0x7f.0.0.1',
    '2130706433',
    '127.1',
    '١٢٧.0.0.1',
    '::ffff:999.1.1.1',
    '::ffff:1.2.3',
    '::ffff:1.2.3.4:1',
    '1.2.3.4::',
    '::1::',
    ':::',
    ':',
    ':1',
    '1:',
    '::1:',
    ':1::',
    '12345::',
    'g::1',
    '1:2:3:4:5:6:7:8:9',
    '1:2:3:4:5:6:7',
    '1:2:3:4:5:6:7::8',
    '1:2:3:4:5:6::1.2.3.4',
    'fe80::1%eth0',
    '[::1]',
    '::1/128',
    '10.0.0.0-10.0.0.1',
    'x'.repeat(100_000),
    '1.'.repeat(10_000),
    ':'.repeat(10_000),
    '1:'.repeat(10_000),
    '\u0000',
    '127.0.0.1\u0000',
  ];

  it('returns invalid for garbage, even with a policy that allows everything', () => {
    for (const ip of garbage) {
      assert.deepEqual(p.check(ip), { allowed: false, reason: 'invalid' }, JSON.stringify(ip.slice(0, 40)));
    }
  });

  it('returns invalid for a non-string at runtime', () => {
    for (const v of [undefined, null, 42, {}, ['127.0.0.1']]) {
      assert.deepEqual(p.check(v as unknown as string), { allowed: false, reason: 'invalid' });
    }
  });

  it('accepts exactly what net.isIP accepts, on address-like random strings', () => {
    // Zone IDs are left out: net.isIP accepts 'fe80::1%eth0', this policy refuses it.
    const tokens = ['0', '1', 'ff', 'ffff', 'FFFF', '7f00', 'a', '12345', ':', '::', ':', '.', '255', '256', '01', '00', '1.2.3.4', '10.0.0.1'];
    let seed = 0x9e3779b9;
    const next = (): number => {
      seed ^= seed << 13;
      seed ^= seed >>> 17;
      seed ^= seed << 5;
      return seed >>> 0;
    };
    const strict = policy();
    let valid = 0;
    for (let i = 0; i < 50_000; i++) {
      const count = 1 + (next() % 12);
      let s = '';
      for (let j = 0; j < count; j++) s += tokens[next() % tokens.length];
      const v = strict.check(s);
      const parsed = !(v.allowed === false && v.reason === 'invalid');
      assert.equal(parsed, isIP(s) !== 0, JSON.stringify(s));
      if (parsed) valid++;
    }
    assert.ok(valid > 100, `the generator produced only ${valid} valid addresses`);
  });

  it('parses every address net.isIP accepts in canonical forms', () => {
    for (const ip of ['8.8.8.8', '2606:4700::1111', '::', '::1', '::ffff:1.2.3.4', '1:2:3:4:5:6:7:8', '1::8', '1:2:3:4:5:6:1.2.3.4']) {
      assert.notEqual(isIP(ip), 0);
      assert.notEqual(reasonOf(p.check(ip)), 'invalid', ip);
    }
  });
});

describe('peer policy: the server’s own addresses with its relayed ports (relayPorts)', () => {
  const relayPorts = { min: 49152, max: 65535 };

  it('allows a server address as a peer IP, and at a relayed port only: two allocations of one server relay to each other', () => {
    // 198.18.0.9 is denied by default as any other peer (benchmarking); as the server's own it is a peer.
    const p = policy({ serverAddresses: ['198.18.0.9', '2001:2::9'], servicePorts: [3478], relayPorts });
    for (const ip of ['198.18.0.9', '::ffff:198.18.0.9', '2001:2::9']) {
      assert.equal(reasonOf(p.check(ip)), 'allowed', ip);
      assert.equal(p.isServerPeer(ip), true, ip);
      assert.equal(reasonOf(p.checkPeer(ip, 49152)), 'allowed', `${ip} at the first relayed port`);
      assert.equal(reasonOf(p.checkPeer(ip, 65535)), 'allowed', `${ip} at the last relayed port`);
      for (const port of [22, 3478, 5432, 49151]) assert.equal(reasonOf(p.checkPeer(ip, port)), 'server-address', `${ip}:${port}`);
    }
    // Any other address of the block keeps its default verdict.
    assert.equal(reasonOf(p.check('198.18.0.10')), 'reserved');
    assert.equal(p.isServerPeer('198.18.0.10'), false);
    assert.equal(p.isServerPeer('8.8.8.8'), false);
    assert.equal(p.isOutsideRelayPorts(49151), true);
    assert.equal(p.isOutsideRelayPorts(49152), false);
  });

  it('still refuses a service port inside the relayed range, and a loopback server address unless loopback is allowed', () => {
    const p = policy({ serverAddresses: ['198.18.0.9', '127.0.0.1'], servicePorts: [50000], relayPorts });
    assert.equal(reasonOf(p.checkPeer('198.18.0.9', 50000)), 'server-address');
    assert.equal(reasonOf(p.checkPeer('198.18.0.9', 50001)), 'allowed');
    assert.equal(reasonOf(p.check('127.0.0.1')), 'server-address');
    assert.equal(p.isServerPeer('127.0.0.1'), false);
  });

  it('leaves an operator’s allow as it was: every port but the service ports, not the relayed ones only', () => {
    const p = policy({ serverAddresses: ['198.18.0.9'], servicePorts: [3478], relayPorts, allowedPeerRanges: ['198.18.0.0/15'] });
    assert.equal(p.isServerPeer('198.18.0.9'), false);
    assert.equal(reasonOf(p.checkPeer('198.18.0.9', 40000)), 'allowed');
    assert.equal(reasonOf(p.checkPeer('198.18.0.9', 3478)), 'server-address');
  });

  it('without relayPorts denies the server’s addresses as before', () => {
    const p = policy({ serverAddresses: ['198.18.0.9'] });
    assert.equal(reasonOf(p.check('198.18.0.9')), 'server-address');
    assert.equal(p.isOutsideRelayPorts(22), false);
  });
});

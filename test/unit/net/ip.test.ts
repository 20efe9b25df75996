// IP address text <-> numbers and bytes (src/net/ip.ts), checked against Node
// itself (net.isIPv4/isIPv6, inet_ntop through net.SocketAddress), plus a
// seeded fuzz: the parsers are total and what they print parses back.
// To replay a fuzz failure, run with STUN_FUZZ_SEED=<seed>.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import net from 'node:net';
import { formatIPv4, formatIPv6, parseIPv4, parseIPv6, parseIPv6Into } from '../../../src/net/ip.js';
import { mulberry32, SeededRandom } from '../../helpers/random.js';

const ITERATIONS = 20_000;
const SEED = process.env.STUN_FUZZ_SEED !== undefined ? Number(process.env.STUN_FUZZ_SEED) >>> 0 : 0x5eed5eed;
const seedText = `0x${SEED.toString(16)}`;
const Random = SeededRandom;

test('IPv4 text: parse/format agree with net.isIPv4', () => {
  const table = [
    '0.0.0.0',
    '1.2.3.4',
    '10.0.0.1',
    '192.168.100.200',
    '255.255.255.255',
    '256.0.0.1',
    '1.2.3',
    '1.2.3.4.5',
    '01.2.3.4',
    '1.2.3.04',
    '1..2.3',
    '.1.2.3',
    '1.2.3.',
    '',
    'a.b.c.d',
    '1.2.3.4 ',
    '1000.1.1.1',
    '0.0.0.00',
    '1.2.3.-4',
  ];
  for (const text of table) {
    const parsed = parseIPv4(text);
    assert.equal(parsed >= 0, net.isIPv4(text), JSON.stringify(text));
    if (parsed >= 0) assert.equal(formatIPv4(parsed), text);
  }
  assert.equal(parseIPv4('192.0.2.1'), 0xc0000201);
  assert.equal(formatIPv4(0xffffffff), '255.255.255.255');
});

test('IPv6 text: parseIPv6 accepts exactly what net.isIPv6 accepts', () => {
  const table = [
    '::',
    '::1',
    '1::',
    '1:2:3:4:5:6:7:8',
    '1:2:3:4:5:6:7::',
    '::2:3:4:5:6:7:8',
    '1:2:3:4:5:6:7:8:9',
    '1::2::3',
    ':::',
    ':',
    '1:',
    ':1',
    '::ffff:1.2.3.4',
    '::1.2.3.4',
    '1:2:3:4:5:6:1.2.3.4',
    '1:2:3:4:5:6:7:1.2.3.4',
    '1.2.3.4::',
    '1.2.3.4::1',
    'ab:1.2.3.4::',
    '::1.2.3',
    '::1.2.3.04',
    '::ffff:256.1.1.1',
    '12345::',
    '::g',
    'fe80::1%eth0',
    '2001:DB8::A',
    '0:0:0:0:0:0:0:0',
    '::0:0',
    ' ::1',
    '1:2:3:4:5:6:7:8%1',
  ];
  for (const text of table) assert.equal(parseIPv6(text) !== undefined, net.isIPv6(text), JSON.stringify(text));
  // Structured random texts: groups, '::' and dotted parts in random places.
  const rand = mulberry32(0x1b6);
  const pieces = ['0', '1', 'ffff', 'ABCD', '0db8', '00001', '', '1.2.3.4', '255.0.0.1', '12345', 'g1'];
  for (let i = 0; i < 20000; i++) {
    const parts: string[] = [];
    const n = Math.floor(rand() * 10);
    for (let j = 0; j < n; j++) parts.push(pieces[Math.floor(rand() * pieces.length)]!);
    let text = parts.join(':');
    if (rand() < 0.5) {
      const at = Math.floor(rand() * (text.length + 1));
      text = `${text.slice(0, at)}::${text.slice(at)}`;
    }
    const ours = parseIPv6(text);
    assert.equal(ours !== undefined, net.isIPv6(text), JSON.stringify(text));
    if (ours) assert.equal(formatIPv6(ours), new net.SocketAddress({ address: text, family: 'ipv6' }).address, JSON.stringify(text));
  }
});

test('IPv6 text: formatIPv6 prints what Node prints (inet_ntop, as in rinfo.address)', () => {
  const table: ReadonlyArray<readonly [string, string]> = [
    ['0:0:0:0:0:0:0:0', '::'],
    ['0:0:0:0:0:0:0:1', '::1'],
    ['2001:0db8:0000:0000:0001:0000:0000:0001', '2001:db8::1:0:0:1'], // leftmost of equal runs
    ['1:0:0:2:0:0:0:3', '1:0:0:2::3'], // longest run
    ['1:0:2:0:3:0:4:0', '1:0:2:0:3:0:4:0'], // a single zero group is not compressed
    ['2001:DB8:0:0:0:0:0:A', '2001:db8::a'],
    ['0:0:1::', '0:0:1::'],
    ['::ffff:c000:0201', '::ffff:192.0.2.1'], // IPv4-mapped
    ['::ffff:0:0', '::ffff:0.0.0.0'],
    ['::c000:0201', '::192.0.2.1'], // IPv4-compatible (deprecated, but inet_ntop prints it dotted)
    ['::1:0', '::0.1.0.0'],
    ['::ffff:0:1.2.3.4', '::ffff:0:102:304'], // not mapped: stays hex
    ['64:ff9b::192.0.2.1', '64:ff9b::c000:201'],
  ];
  for (const [input, expected] of table) {
    const bytes = parseIPv6(input);
    assert.ok(bytes, input);
    const node = new net.SocketAddress({ address: input, family: 'ipv6' }).address;
    assert.equal(node, expected, `table entry ${input} is what Node prints`);
    assert.equal(formatIPv6(bytes), expected, input);
    // WHATWG URL serialisation agrees too, except that it never prints a dotted tail.
    if (!expected.includes('.')) assert.equal(new URL(`http://[${input}]/`).hostname, `[${expected}]`);
  }
  // Random addresses, biased towards zero runs and IPv4 tails.
  const rand = mulberry32(0x5eed);
  const bytes = new Uint8Array(18);
  for (let i = 0; i < 20000; i++) {
    for (let j = 0; j < 16; j++) bytes[1 + j] = rand() < 0.55 ? 0 : Math.floor(rand() * 256);
    const shape = rand();
    if (shape < 0.1) {
      bytes.fill(0, 1, 11);
      bytes[11] = 0xff;
      bytes[12] = 0xff;
    } else if (shape < 0.2) bytes.fill(0, 1, 13);
    const text = formatIPv6(bytes, 1);
    const groups: string[] = [];
    for (let j = 0; j < 8; j++) groups.push(((bytes[1 + j * 2]! << 8) | bytes[2 + j * 2]!).toString(16));
    assert.equal(text, new net.SocketAddress({ address: groups.join(':'), family: 'ipv6' }).address, groups.join(':'));
    assert.deepEqual(parseIPv6(text), bytes.subarray(1, 17), `re-parses: ${text}`);
  }
});

test(`fuzz: address text parsers are total and canonical (seed ${seedText})`, () => {
  const rnd = new Random(SEED ^ 0x27d4eb2f);
  const alphabet = '0123456789abcdefABCDEF:.%g ';
  for (let i = 0; i < ITERATIONS; i++) {
    let text = '';
    for (let n = rnd.int(24); n > 0; n--) text += alphabet[rnd.int(alphabet.length)];
    const v4 = parseIPv4(text);
    assert.ok(v4 === -1 || (v4 >= 0 && v4 <= 0xffffffff));
    const v6 = parseIPv6(text);
    if (v6) {
      assert.equal(v6.length, 16);
      const canonical = formatIPv6(v6);
      assert.deepEqual(parseIPv6(canonical), v6, `${text} -> ${canonical}`);
      assert.equal(formatIPv6(parseIPv6(canonical)!), canonical);
    }
  }
  // Random bytes always format to something that parses back to them.
  for (let i = 0; i < ITERATIONS; i++) {
    const bytes = rnd.bytes(16);
    for (let j = 0; j < 16; j++) if (rnd.chance(0.5)) bytes[j] = 0;
    assert.deepEqual(Buffer.from(parseIPv6(formatIPv6(bytes))!), bytes);
  }
});

test('parseIPv6Into: the parseIPv6 grammar into a caller buffer, without a zone ID', () => {
  const out = new Uint8Array(16);
  for (const text of ['::', '::1', '2001:db8::a', '::ffff:192.0.2.1', '1:2:3:4:5:6:7:8', '1::', '64:ff9b::1.2.3.4', '1:0:0:2::3']) {
    out.fill(0xaa); // stale bytes from an earlier parse must not survive
    assert.equal(parseIPv6Into(text, out), true, text);
    assert.deepEqual(out, parseIPv6(text), text);
  }
  for (const text of ['', ':', ':::', '1::2::3', '1.2.3.4', '1.2.3.4::', '1:2:3:4:5:6:7:8:9', '12345::', 'fe80::1%eth0', '[::1]', ' ::1']) {
    assert.equal(parseIPv6Into(text, out), false, text);
  }
  // parseIPv6 ignores a zone ID (Node's rinfo.address may carry one).
  assert.deepEqual(parseIPv6('fe80::1%eth0'), parseIPv6('fe80::1'));
});

test('formatIPv6 without dottedIPv4 prints every group in hex', () => {
  const table: ReadonlyArray<readonly [string, string]> = [
    ['::ffff:192.0.2.1', '::ffff:c000:201'],
    ['::192.0.2.1', '::c000:201'],
    ['::1:0', '::1:0'],
    ['::1', '::1'],
    ['2001:db8::1', '2001:db8::1'],
  ];
  for (const [input, expected] of table) assert.equal(formatIPv6(parseIPv6(input)!, 0, false), expected, input);
});

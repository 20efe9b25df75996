// The scale benchmark's address plan and command line (bench/allocations/scale-plan.ts,
// scale-options.ts): a driver closes its client socket once its allocation is made, so the
// plan must never hand out one (address, port) pair twice in a run, every address must lie in
// the prefixes the topology routes (198.18.0.0/15 only), and the relay addresses must hold
// the largest size asked for.

import assert from 'node:assert/strict';
import { describe, it } from 'node:test';

import {
  LISTENING_ADDRESS,
  MAX_RAMP_ADDRESSES,
  PEER_ADDRESS,
  RAMP_FIRST_PORT,
  RELAY_MAX_PORT,
  RELAY_MIN_PORT,
  rampAddress,
  rampAddressCount,
  rampPair,
  relayAddress,
  relayAddressCount,
  slices,
} from '../../../bench/allocations/scale-plan.js';
import { isScaleRun, parseScaleOptions } from '../../../bench/allocations/scale-options.js';

function inRampPrefix(address: string): boolean {
  const [a, b, c, d] = address.split('.').map(Number);
  return a === 198 && b === 18 && c! >= 12 && c! <= 15 && d! >= 1 && d! <= 254;
}

describe('scale benchmark: client pairs', () => {
  it('gives 100,000 ramp allocations 100,000 distinct pairs inside 198.18.12.0/22, never port 0', () => {
    const seen = new Set<string>();
    for (let i = 0; i < 100_000; i++) {
      const p = rampPair(i, 5000);
      assert.ok(inRampPrefix(p.address), `#${i}: ${p.address}`);
      assert.ok(p.port >= RAMP_FIRST_PORT && p.port <= 65535, `#${i}: port ${p.port}`);
      const key = `${p.address}:${p.port}`;
      assert.ok(!seen.has(key), `#${i}: ${key} handed out twice`);
      seen.add(key);
    }
    assert.equal(rampAddressCount(100_000, 5000), 20);
    assert.equal(new Set([...seen].map((k) => k.split(':')[0])).size, 20);
  });

  it('keeps every ramp address distinct up to the last one, and refuses one past it', () => {
    const all = Array.from({ length: MAX_RAMP_ADDRESSES }, (_, n) => rampAddress(n));
    assert.equal(new Set(all).size, MAX_RAMP_ADDRESSES);
    assert.ok(all.every(inRampPrefix));
    assert.throws(() => rampAddress(MAX_RAMP_ADDRESSES), /ramp address/);
  });

  it('splits a ramp into disjoint slices that cover it exactly, none empty', () => {
    for (const [from, to, parts] of [
      [0, 1000, 2],
      [1000, 10_000, 3],
      [0, 5, 8],
      [10_000, 100_000, 7],
    ] as const) {
      const s = slices(from, to, parts);
      assert.ok(s.length >= 1 && s.length <= parts);
      assert.equal(s[0]!.from, from);
      assert.equal(s[s.length - 1]!.to, to);
      for (let i = 0; i < s.length; i++) {
        assert.ok(s[i]!.to > s[i]!.from, 'empty slice');
        if (i > 0) assert.equal(s[i]!.from, s[i - 1]!.to, 'gap or overlap');
      }
    }
    assert.deepEqual(slices(5, 5, 2), []);
  });
});

describe('scale benchmark: relay addresses', () => {
  it('has room for the largest size at 80 % of each range, on addresses of their own', () => {
    const ports = RELAY_MAX_PORT - RELAY_MIN_PORT + 1;
    for (const live of [1000, 10_000, 64_000, 100_000, 1_000_000]) {
      const n = relayAddressCount(live);
      assert.ok(n * ports * 0.8 >= live, `${live}: ${n} addresses`);
      const addresses = Array.from({ length: n }, (_, m) => relayAddress(m));
      assert.equal(new Set(addresses).size, n);
      assert.ok(!addresses.includes(LISTENING_ADDRESS) && !addresses.includes(PEER_ADDRESS));
      assert.ok(addresses.every((a) => a.startsWith('198.18.')));
    }
    assert.equal(relayAddressCount(1000), 1);
  });
});

describe('scale benchmark: command line', () => {
  it('is recognised by --parts scale only', () => {
    assert.equal(isScaleRun(['--parts', 'scale', '--live-sizes', '200']), true);
    assert.equal(isScaleRun(['--parts', '1,2']), false);
    assert.equal(isScaleRun([]), false);
  });

  it('takes ascending sizes, and says which flag and value are wrong otherwise', () => {
    const o = parseScaleOptions(['--parts', 'scale', '--live-sizes', '200,2000']);
    assert.deepEqual(o.sizes, [200, 2000]);
    assert.equal(o.kernel, false);
    assert.equal(o.relaySockets, undefined);
    assert.throws(() => parseScaleOptions(['--live-sizes', '2000,200']), /--live-sizes '2000,200': sizes must be ascending/);
    assert.throws(() => parseScaleOptions(['--live-sizes', '0']), /--live-sizes '0': an integer from 1/);
    assert.throws(() => parseScaleOptions(['--relay-sockets', 'some']), /--relay-sockets 'some': one of auto, shared, per-allocation/);
    assert.throws(() => parseScaleOptions(['--drivers']), /--drivers needs a value/);
    assert.throws(() => parseScaleOptions(['--frobnicate', '1']), /unknown argument '--frobnicate'/);
  });

  it('loads the kernel data plane for shared relay sockets, and passes other server flags through', () => {
    const o = parseScaleOptions(['--relay-sockets', 'shared', '--server-arg', '--max-bps', '--server-arg', '1000000']);
    assert.equal(o.relaySockets, 'shared');
    assert.equal(o.kernel, true);
    assert.deepEqual(o.serverArgs, ['--max-bps', '1000000']);
  });

  it('refuses a size the client addresses cannot hold, and sizes the relay addresses for the largest', () => {
    assert.throws(() => parseScaleOptions(['--live-sizes', '1000000', '--ports-per-address', '100']), /needs 10000 client addresses, at most 1000/);
    assert.ok(parseScaleOptions(['--live-sizes', '1000,100000']).relayIps >= 2);
  });
});

// The pure parts of `anyturn --workers N` (src/workers/): how the relay port
// range is cut into one slice per worker, which worker a UDP client hashes to,
// which packet opens a session socket, the config each worker runs with, and
// how --workers is validated.

import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import dgram from 'node:dgram';

import { buildConfig, type RawOptions } from '../../../src/config/index.js';
import { BASE, refused } from '../../helpers/config.js';
import { encodeRequestedTransport } from '../../../src/stun/attributes.js';
import { MessageClass, Method, Attr, TRANSPORT_UDP } from '../../../src/stun/constants.js';
import { longTermKey } from '../../../src/stun/integrity.js';
import { MessageWriter } from '../../../src/stun/writer.js';
import { portSlice, workerFor, type ToWorker } from '../../../src/workers/protocol.js';
import { isAuthenticatedAllocate } from '../../../src/workers/udp-frontend.js';
import { workerConfig } from '../../../src/workers/worker.js';
import { IpcWindow, MAX_IPC_IN_FLIGHT } from '../../../src/workers/ipc-window.js';
import { detectPortSharing, sharedPortOptions } from '../../../src/transport/udp/port-sharing.js';
import { SeededRandom } from '../../helpers/random.js';

/** Every slice of [min, max] for `count` workers, checked to be disjoint, in order, covering, and even. */
function checkSlices(min: number, max: number, count: number): void {
  const slices = Array.from({ length: count }, (_, i) => portSlice(min, max, i, count));
  const size = max - min + 1;
  assert.equal(slices[0]!.minPort, min, `${min}-${max} / ${count}: the first slice starts at --min-port`);
  assert.equal(slices[count - 1]!.maxPort, max, `${min}-${max} / ${count}: the last slice ends at --max-port`);
  for (let i = 0; i < count; i++) {
    const s = slices[i]!;
    const ports = s.maxPort - s.minPort + 1;
    // Not empty, and as even as the range allows: floor or ceil of size/count.
    assert.ok(ports >= 1, `${min}-${max} / ${count}: slice ${i} ${s.minPort}-${s.maxPort} is empty`);
    assert.ok(ports === Math.floor(size / count) || ports === Math.ceil(size / count), `${min}-${max} / ${count}: slice ${i} has ${ports} ports`);
    // Disjoint and covering: each slice starts right after the previous one ends.
    if (i > 0) assert.equal(s.minPort, slices[i - 1]!.maxPort + 1, `${min}-${max} / ${count}: slice ${i} follows slice ${i - 1}`);
  }
}

function allocateRequest(options: { integrity?: 'sha1' | 'sha256'; method?: number; cls?: MessageClass } = {}): Buffer {
  const w = new MessageWriter(options.method ?? Method.Allocate, options.cls ?? MessageClass.Request, randomBytes(12));
  w.add(Attr.RequestedTransport, encodeRequestedTransport(TRANSPORT_UDP));
  if (options.integrity) {
    w.addText(Attr.Username, 'u');
    w.addText(Attr.Realm, 'anyturn');
    w.addText(Attr.Nonce, 'nonce-0123456789');
    const key = longTermKey('u', 'anyturn', 'p');
    if (options.integrity === 'sha1') w.addIntegrity(key);
    else w.addIntegritySha256(key);
  }
  return w.toBuffer();
}

describe('workers: portSlice', () => {
  it('cuts a range into disjoint, covering, even slices for every count from 1 to 64', () => {
    for (const [min, max] of [
      [49152, 65535],
      [1024, 1024 + 99],
      [40000, 40009],
      [50000, 50063],
      [60000, 60001],
    ] as const) {
      for (let count = 1; count <= Math.min(64, max - min + 1); count++) checkSlices(min, max, count);
    }
  });

  it('a range of exactly N ports gives each worker one port', () => {
    for (const count of [2, 3, 7, 64]) {
      const min = 30000;
      const max = min + count - 1;
      checkSlices(min, max, count);
      for (let i = 0; i < count; i++) assert.deepEqual(portSlice(min, max, i, count), { minPort: min + i, maxPort: min + i });
    }
  });

  it('the default range 49152-65535 over 2 workers splits in the middle', () => {
    assert.deepEqual(portSlice(49152, 65535, 0, 2), { minPort: 49152, maxPort: 57343 });
    assert.deepEqual(portSlice(49152, 65535, 1, 2), { minPort: 57344, maxPort: 65535 });
  });
});

describe('workers: workerFor', () => {
  it('is deterministic and in range', () => {
    const rng = new SeededRandom(0x5eed);
    for (let i = 0; i < 2000; i++) {
      const address = i % 3 === 0 ? `2001:db8::${rng.int(65536).toString(16)}` : `${rng.int(256)}.${rng.int(256)}.${rng.int(256)}.${rng.int(256)}`;
      const port = rng.int(65536);
      const count = 1 + rng.int(64);
      const w = workerFor(address, port, count);
      assert.ok(Number.isInteger(w) && w >= 0 && w < count, `workerFor(${address}, ${port}, ${count}) = ${w}`);
      assert.equal(workerFor(address, port, count), w, 'same input, same worker');
    }
    assert.equal(workerFor('127.0.0.1', 5000, 1), 0);
  });

  // Loose bounds (each worker gets at least 60% of an even share): this is about a
  // hash that spreads clients, not about exact counts.
  const spread = (name: string, clients: readonly { a: string; p: number }[]): void => {
    for (const count of [2, 4]) {
      it(`spreads ${clients.length} clients over ${count} workers: ${name}`, () => {
        const perWorker = new Array<number>(count).fill(0);
        for (const { a, p } of clients) perWorker[workerFor(a, p, count)]!++;
        const fair = clients.length / count;
        for (const n of perWorker) assert.ok(n >= fair * 0.6, `every worker gets a fair share: ${JSON.stringify(perWorker)}`);
      });
    }
  };
  spread(
    'one address, 1000 consecutive ports',
    Array.from({ length: 1000 }, (_, i) => ({ a: '127.0.0.1', p: 40000 + i })),
  );
  spread(
    'one address, 1000 random ports',
    (() => {
      const rng = new SeededRandom(42);
      return Array.from({ length: 1000 }, () => ({ a: '203.0.113.7', p: 1024 + rng.int(64512) }));
    })(),
  );
  // A NAT that preserves port parity (RFC 4787 §4.2.2) hands out even ports only.
  spread(
    'one address, 128 even ports of one 256-port block',
    Array.from({ length: 128 }, (_, i) => ({ a: '198.51.100.9', p: 0x9c00 + 2 * i })),
  );
  spread(
    'one address, ports spaced by 4',
    Array.from({ length: 1000 }, (_, i) => ({ a: '198.51.100.9', p: 20000 + 4 * i })),
  );
  spread(
    '1000 addresses, one port',
    Array.from({ length: 1000 }, (_, i) => ({ a: `10.${(i >> 8) & 255}.${i & 255}.1`, p: 3478 })),
  );
});

describe('workers: isAuthenticatedAllocate', () => {
  it('an Allocate request with MESSAGE-INTEGRITY or MESSAGE-INTEGRITY-SHA256 opens a session', () => {
    assert.equal(isAuthenticatedAllocate(allocateRequest({ integrity: 'sha1' })), true);
    assert.equal(isAuthenticatedAllocate(allocateRequest({ integrity: 'sha256' })), true);
  });

  it('the unauthenticated first Allocate, other methods and other classes do not', () => {
    assert.equal(isAuthenticatedAllocate(allocateRequest()), false, 'Allocate without integrity');
    for (const method of [Method.Binding, Method.Refresh, Method.CreatePermission, Method.ChannelBind]) {
      assert.equal(isAuthenticatedAllocate(allocateRequest({ integrity: 'sha1', method })), false, `method 0x${method.toString(16)}`);
    }
    for (const cls of [MessageClass.Indication, MessageClass.SuccessResponse, MessageClass.ErrorResponse]) {
      assert.equal(isAuthenticatedAllocate(allocateRequest({ integrity: 'sha1', cls })), false, `class ${cls}`);
    }
    // ChannelData on channel 0x4000 and a Send indication.
    const channelData = Buffer.alloc(24);
    channelData.writeUInt16BE(0x4000, 0);
    channelData.writeUInt16BE(20, 2);
    assert.equal(isAuthenticatedAllocate(channelData), false);
  });

  it('truncated, mis-sized and random buffers never throw and never open a session', () => {
    const good = allocateRequest({ integrity: 'sha1' });
    for (let n = 0; n < good.length; n++) assert.equal(isAuthenticatedAllocate(good.subarray(0, n)), false, `first ${n} bytes`);
    // A header length longer or shorter than the datagram.
    const longer = Buffer.from(good);
    longer.writeUInt16BE(longer.readUInt16BE(2) + 4, 2);
    assert.equal(isAuthenticatedAllocate(longer), false);
    assert.equal(isAuthenticatedAllocate(Buffer.concat([good, Buffer.alloc(4)])), false);
    // An attribute whose length runs past the end.
    const overflow = Buffer.from(good);
    overflow.writeUInt16BE(0xfff0, 22);
    assert.equal(isAuthenticatedAllocate(overflow), false);
    // Random bytes (a fixed seed): none is a well-formed authenticated Allocate, so every
    // answer must be false, not merely come back without throwing.
    const rng = new SeededRandom(7);
    for (let i = 0; i < 5000; i++) {
      const junk = rng.bytes(rng.int(120));
      // Half of them look like an Allocate request header: the decoder has to cope.
      if (junk.length >= 2 && rng.chance(0.5)) junk.writeUInt16BE(0x0003, 0);
      assert.equal(isAuthenticatedAllocate(junk), false, `junk #${i}: ${junk.toString('hex')}`);
    }
  });

  it('a flipped byte: in the type or length, no session; in the cookie, transaction id or an attribute value, still one', () => {
    // The frontend only routes: the engine checks the cookie and the MAC, so a message
    // that is still an Allocate request with an integrity attribute must open a session.
    for (const integrity of ['sha1', 'sha256'] as const) {
      const good = allocateRequest({ integrity });
      const valueBytes = new Set<number>();
      for (let pos = 20; pos < good.length; ) {
        const length = good.readUInt16BE(pos + 2);
        for (let i = 0; i < length; i++) valueBytes.add(pos + 4 + i);
        pos += 4 + ((length + 3) & ~3);
      }
      for (let offset = 0; offset < good.length; offset++) {
        const expected = offset < 4 ? false : offset < 20 || valueBytes.has(offset) ? true : undefined;
        if (expected === undefined) continue; // an attribute header: either outcome is a fair reading
        for (const mask of [0x01, 0x80, 0xff]) {
          const flipped = Buffer.from(good);
          flipped[offset]! ^= mask;
          assert.equal(isAuthenticatedAllocate(flipped), expected, `${integrity}: byte ${offset} ^ 0x${mask.toString(16)}`);
        }
      }
    }
  });
});

describe('workers: workerConfig', () => {
  const init = (index: number, count: number): Extract<ToWorker, { type: 'init' }> => ({
    type: 'init',
    index,
    count,
    listeningPort: 34567,
    nonceSecret: 'ab'.repeat(16),
  });

  it("a worker gets its port slice, a share of --total-quota, its node id, the primary's port and nonce secret, and no ops endpoint", () => {
    const config = buildConfig({
      ...BASE,
      'listening-port': 0,
      'min-port': 40000,
      'max-port': 40099,
      'total-quota': 101,
      'node-id': 'pop1',
      'metrics-port': 9641,
      'drain-exit': true,
      workers: 3,
    });
    assert.equal(config.workers, 3);
    const configs = [0, 1, 2].map((i) => workerConfig(config, init(i, 3)));
    configs.forEach((c, i) => {
      assert.deepEqual({ minPort: c.minPort, maxPort: c.maxPort }, portSlice(40000, 40099, i, 3));
      assert.equal(c.nodeId, `pop1/w${i}`);
      assert.equal(c.totalQuota, 34, 'ceil(101 / 3)');
      assert.equal(c.listeningPort, 34567, 'the port the primary bound (--listening-port 0)');
      assert.deepEqual(c.nonceSecret, Buffer.from('ab'.repeat(16), 'hex'), "every worker checks the others' nonces");
      assert.equal(c.metricsPort, 0, 'the primary serves /metrics');
      assert.equal(c.drainExit, false, 'the primary decides when to exit');
      assert.equal(c.cluster, undefined);
      assert.equal(c.realm, config.realm);
    });
    // Together the workers admit at least --total-quota allocations.
    assert.ok(configs.reduce((n, c) => n + c.totalQuota, 0) >= 101);
    // No quota stays no quota.
    assert.equal(workerConfig(buildConfig({ ...BASE, workers: 2 }), init(1, 2)).totalQuota, 0);
  });

  it('each worker meshes on --mesh-address port + its index (port 0 stays 0)', () => {
    const cluster: RawOptions = { 'redis-url': 'redis://127.0.0.1:6379', 'cluster-secret': 'cluster-secret-0123456789' };
    const config = buildConfig({ ...BASE, ...cluster, 'mesh-address': '127.0.0.1:7000', workers: 4 });
    assert.deepEqual(
      [0, 1, 2, 3].map((i) => workerConfig(config, init(i, 4)).cluster?.meshPort),
      [7000, 7001, 7002, 7003],
    );
    assert.equal(workerConfig(config, init(2, 4)).cluster?.meshAddress, '127.0.0.1');
    assert.equal(config.cluster?.meshPort, 7000, "the primary's config is not changed");
    // Mesh port 65534 + 4 workers would run past 65535.
    const high = refused({ ...cluster, 'mesh-address': '127.0.0.1:65534', workers: 4 });
    assert.match(high.message, /--workers 4/);
    assert.match(high.message, /65534/);
  });
});

describe('config: --workers', () => {
  it('defaults to 1; takes 1 to 64 and "auto"', () => {
    assert.equal(buildConfig(BASE).workers, 1);
    assert.equal(buildConfig({ ...BASE, workers: 64 }).workers, 64);
    assert.equal(buildConfig({ ...BASE, workers: 2 }).workers, 2);
    const auto = buildConfig({ ...BASE, workers: 'auto', 'min-port': 1024, 'max-port': 65535 }).workers;
    assert.ok(Number.isInteger(auto) && auto >= 1, `auto: ${auto}`);
  });

  for (const bad of [0, 65, 2.5, -1]) {
    it(`--workers ${bad} is refused naming the flag, the value and what is allowed`, () => {
      const e = refused({ workers: bad });
      assert.equal(e.flag, 'workers');
      assert.ok(e.message.includes(`--workers ${bad}`), e.message);
      assert.match(e.message, /1 to 64/);
      assert.match(e.message, /'auto'/);
    });
  }

  it('--workers abc (e.g. from ANYTURN_WORKERS) is refused as not a number, with what is allowed', () => {
    const e = refused({ workers: 'abc' });
    assert.equal(e.flag, 'workers');
    assert.match(e.message, /--workers "abc": not a number/);
    assert.match(e.message, /1 to 64, or 'auto'/);
  });

  it('--workers with --relay-mode anycast is refused', () => {
    const e = refused({
      'redis-url': 'redis://127.0.0.1:6379',
      'mesh-address': '127.0.0.1:7000',
      'cluster-secret': 'cluster-secret-0123456789',
      'relay-mode': 'anycast',
      workers: 2,
    });
    assert.equal(e.flag, 'workers');
    assert.match(e.message, /--workers 2/);
    assert.match(e.message, /1 with --relay-mode anycast/);
  });

  it('more workers than relay ports is refused, naming the range', () => {
    const e = refused({ 'min-port': 50000, 'max-port': 50003, workers: 5 });
    assert.equal(e.flag, 'workers');
    assert.match(e.message, /--workers 5/);
    assert.match(e.message, /--min-port 50000 to --max-port 50003/);
    assert.match(e.message, /at most the number of relay ports/);
    // Exactly as many workers as ports is fine.
    assert.equal(buildConfig({ ...BASE, 'min-port': 50000, 'max-port': 50003, workers: 4 }).workers, 4);
  });
});

describe('workers: the shared UDP port and IPC backpressure (shared-port.ts)', () => {
  it('uses SO_REUSEPORT exactly where this Node can set it, and then a SO_REUSEADDR socket cannot join the port', async () => {
    const [major, minor] = process.versions.node.split('.').map(Number) as [number, number];
    const canReusePort = major > 22 || (major === 22 && minor >= 12);
    const sharing = await detectPortSharing();
    assert.equal(sharing, canReusePort ? 'reuseport' : 'reuseaddr');
    assert.deepEqual(sharedPortOptions(), canReusePort ? { reuseAddr: false, reusePort: true } : { reuseAddr: true });
    if (!canReusePort) return;
    const listener = dgram.createSocket({ type: 'udp4', ...sharedPortOptions() } as dgram.SocketOptions);
    await new Promise<void>((resolve) => listener.bind({ address: '127.0.0.1', port: 0, exclusive: true }, () => resolve()));
    try {
      const intruder = dgram.createSocket({ type: 'udp4', reuseAddr: true });
      const code = await new Promise<string>((resolve) => {
        intruder.once('error', (err: NodeJS.ErrnoException) => resolve(err.code ?? ''));
        intruder.bind({ address: '127.0.0.1', port: listener.address().port, exclusive: true }, () => resolve('bound'));
      });
      intruder.close();
      assert.equal(code, 'EADDRINUSE');
    } finally {
      listener.close();
    }
  });

  it('IpcWindow: lets `max` messages be in flight, drops and counts the rest, and takes more once some are written', () => {
    const window = new IpcWindow(3);
    assert.deepEqual([window.acquire(), window.acquire(), window.acquire(), window.acquire(), window.acquire()], [true, true, true, false, false]);
    assert.equal(window.inFlight, 3);
    assert.equal(window.dropped, 2);
    window.release();
    assert.equal(window.acquire(), true);
    assert.equal(window.acquire(), false);
    assert.equal(window.dropped, 3);
    assert.equal(MAX_IPC_IN_FLIGHT, 10_000);
  });
});

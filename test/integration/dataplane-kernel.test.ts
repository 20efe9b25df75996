// The kernel data plane (docs/dataplane.md; RFC 8656 §12) in three namespaces, client C,
// server S, peer P (test/helpers/dataplane-topology.ts), with KernelDataplane attached on
// S's two veths and python3 endpoints in C, S and P. S's endpoint binds the "listening"
// and "relay" sockets a server would, so whatever the kernel passes to user space shows
// up there; C and P capture what arrives on eth0 and check its UDP checksum themselves.
//
// A datagram that must NOT reach S's sockets is proven absent with a marker: a STUN-like
// datagram sent right after it on the same path, which S's socket receives in order; when
// the marker is there and the datagram is not, the kernel took it.

import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { fileURLToPath } from 'node:url';
import { type KernelChannel, KernelDataplane } from '../../src/dataplane/kernel/kernel-dataplane.js';
import { DataplaneUnavailableError } from '../../src/dataplane/kernel/loader.js';
import { kernelDataplaneUnavailableReason } from '../helpers/dataplane.js';
import { ADDR, type Captured, DataplaneTopology, type Endpoint, type EndpointEvent, type Received, SERVER_INTERFACES } from '../helpers/dataplane-topology.js';

const LISTEN_PORT = 3478;
const RELAY_PORT = 50000;
const CLIENT_PORT = 40000;
const PEER_PORT = 60000;
const OTHER_PEER_PORT = 60001;
const HOUR_NS = 3_600_000_000_000n;

const SKIP = kernelDataplaneUnavailableReason();

type Family = 4 | 6;
const A = (f: Family) =>
  f === 4
    ? { client: ADDR.client4, listen: ADDR.listen4, relay: ADDR.relay4, peer: ADDR.peer4 }
    : { client: ADDR.client6, listen: ADDR.listen6, relay: ADDR.relay6, peer: ADDR.peer6 };

function channel(f: Family, number: number, expiresAtNs = process.hrtime.bigint() + HOUR_NS): KernelChannel {
  const a = A(f);
  return {
    clientAddress: a.client,
    clientPort: CLIENT_PORT,
    serverAddress: a.listen,
    serverPort: LISTEN_PORT,
    channel: number,
    relayAddress: a.relay,
    relayPort: RELAY_PORT,
    peerAddress: a.peer,
    peerPort: PEER_PORT,
    expiresAtNs,
  };
}

/** ChannelData (RFC 8656 §12.4): channel, length, data, then `pad` bytes (non-zero, so that they weigh in the checksum). */
function channelData(number: number, data: Buffer, pad = 0, length = data.length): Buffer {
  const head = Buffer.alloc(4);
  head.writeUInt16BE(number, 0);
  head.writeUInt16BE(length, 2);
  return Buffer.concat([head, data, Buffer.alloc(pad, 0xa5)]);
}

let counter = 0;
/** A payload nobody else sends. */
function unique(tag: string): Buffer {
  return Buffer.from(`${tag}-${process.pid}-${++counter}-${'x'.repeat(counter % 7)}`);
}

/** A STUN-looking datagram (first two bits 00): never ChannelData. */
function stunMarker(): Buffer {
  const b = Buffer.alloc(20);
  b.writeUInt16BE(0x0001, 0);
  b.writeUInt32BE(0x2112a442, 4);
  unique('m').copy(b, 8, 0, 12);
  return b;
}

const isCap = (e: EndpointEvent): e is Captured => e.ev === 'cap';
const isSock = (e: EndpointEvent): e is Received => e.ev === 'sock';

describe('kernel data plane (tc eBPF ChannelData relay)', { skip: SKIP }, () => {
  let topo: DataplaneTopology;
  let dp: KernelDataplane;
  let c: Endpoint;
  let s: Endpoint;
  let p: Endpoint;
  const errors: string[] = [];

  before(async () => {
    topo = await DataplaneTopology.build();
    c = await topo.endpoint('C', [`${ADDR.client4}/${CLIENT_PORT}`, `${ADDR.client6}/${CLIENT_PORT}`]);
    s = await topo.endpoint('S', [
      `${ADDR.listen4}/${LISTEN_PORT}`,
      `${ADDR.listen6}/${LISTEN_PORT}`,
      `${ADDR.relay4}/${RELAY_PORT}`,
      `${ADDR.relay6}/${RELAY_PORT}`,
    ]);
    p = await topo.endpoint('P', [
      `${ADDR.peer4}/${PEER_PORT}`,
      `${ADDR.peer6}/${PEER_PORT}`,
      `${ADDR.peer4}/${OTHER_PEER_PORT}`,
      `${ADDR.peer6}/${OTHER_PEER_PORT}`,
    ]);
    dp = await KernelDataplane.open({ interfaces: SERVER_INTERFACES, namespace: topo.ns.S });
    dp.onError = (m) => errors.push(m);
  });

  after(async () => {
    await dp?.close();
    await topo?.teardown();
  });

  /** Sends a datagram from the client (to the listening socket) or the peer (to the relay socket). */
  function send(from: 'C' | 'P', f: Family, datagram: Buffer, peerPort = PEER_PORT): void {
    const a = A(f);
    if (from === 'C') c.send(a.client, CLIENT_PORT, a.listen, LISTEN_PORT, datagram);
    else p.send(a.peer, peerPort, a.relay, RELAY_PORT, datagram);
  }

  /** Sends, and resolves when S's user space received the datagram as sent. */
  function toUserSpace(from: 'C' | 'P', f: Family, datagram: Buffer, peerPort = PEER_PORT): Promise<Received> {
    const start = s.events.length;
    send(from, f, datagram, peerPort);
    return s.waitFor((e): e is Received => isSock(e) && e.payload === datagram.toString('hex'), start);
  }

  /**
   * Sends, waits until `arrived` (the far end's capture) and then until a marker sent
   * after it through user space (a STUN message to the listening socket, or a datagram
   * from a peer port without an entry) reached S: S's user space must not have got it.
   */
  async function throughKernel<T>(from: 'C' | 'P', f: Family, datagram: Buffer, arrived: () => Promise<T>): Promise<T> {
    const start = s.events.length;
    send(from, f, datagram);
    const got = await arrived();
    await toUserSpace(from, f, stunMarker(), OTHER_PEER_PORT);
    assert.equal(
      s.events.slice(start).find((e) => isSock(e) && e.payload === datagram.toString('hex')),
      undefined,
      'the datagram reached user space as well',
    );
    return got;
  }

  function relaysToPeer(f: Family, number: number, data: Buffer, pad = 0): Promise<Captured> {
    const start = p.events.length;
    return throughKernel('C', f, channelData(number, data, pad), () => p.waitFor((e): e is Captured => isCap(e) && e.payload === data.toString('hex'), start));
  }

  for (const f of [4, 6] as const) {
    it(`IPv${f}: ChannelData from the client reaches the peer as the bare data from the relayed address, checksum valid`, async () => {
      const handle = dp.install(channel(f, 0x4001));
      await dp.flush();
      try {
        const data = unique(`c2p${f}`);
        const got = await relaysToPeer(f, 0x4001, data);
        const a = A(f);
        assert.deepEqual(
          { src: got.src, sport: got.sport, dst: got.dst, dport: got.dport, ulen: got.ulen, csumOk: got.csumOk, ipOk: got.ipOk, ttl: got.ttl },
          { src: a.relay, sport: RELAY_PORT, dst: a.peer, dport: PEER_PORT, ulen: 8 + data.length, csumOk: true, ipOk: true, ttl: 64 },
        );
        const traffic = await dp.readTraffic();
        assert.deepEqual(traffic, [{ handle, toPeerPackets: 1, toPeerBytes: data.length, toClientPackets: 0, toClientBytes: 0 }]);
      } finally {
        dp.remove(handle, channel(f, 0x4001));
        await dp.readTraffic();
      }
    });

    it(`IPv${f}: the peer's datagram reaches the client as ChannelData from the listening address, checksum valid`, async () => {
      const handle = dp.install(channel(f, 0x4002));
      await dp.flush();
      try {
        const data = unique(`p2c${f}`);
        const start = c.events.length;
        const expected = channelData(0x4002, data).toString('hex');
        const got = await throughKernel('P', f, data, () => c.waitFor((e): e is Captured => isCap(e) && e.payload === expected, start));
        const a = A(f);
        assert.deepEqual(
          { src: got.src, sport: got.sport, dst: got.dst, dport: got.dport, csumOk: got.csumOk, ipOk: got.ipOk, ttl: got.ttl },
          { src: a.listen, sport: LISTEN_PORT, dst: a.client, dport: CLIENT_PORT, csumOk: true, ipOk: true, ttl: 64 },
        );
        // The client's socket got it too (its kernel accepted the checksum).
        await c.waitFor((e): e is Received => isSock(e) && e.payload === expected && e.from === a.listen, start);
        assert.deepEqual(await dp.readTraffic(), [{ handle, toPeerPackets: 0, toPeerBytes: 0, toClientPackets: 1, toClientBytes: data.length }]);
      } finally {
        dp.remove(handle, channel(f, 0x4002));
        await dp.readTraffic();
      }
    });

    it(`IPv${f}: 1-3 bytes of ChannelData padding are trimmed`, async () => {
      const handle = dp.install(channel(f, 0x4003));
      await dp.flush();
      try {
        for (const pad of [1, 2, 3]) {
          const data = unique(`pad${f}${pad}`).subarray(0, 9 + pad); // odd and even lengths
          const got = await relaysToPeer(f, 0x4003, data, pad);
          assert.equal(got.ulen, 8 + data.length);
          assert.ok(got.csumOk, `checksum with ${pad} padding bytes`);
        }
      } finally {
        dp.remove(handle, channel(f, 0x4003));
        await dp.readTraffic();
      }
    });

    it(`IPv${f}: STUN, a bad ChannelData length, an unknown channel and a peer without an entry reach user space untouched`, async () => {
      const handle = dp.install(channel(f, 0x4004));
      await dp.flush();
      try {
        const before = await dp.readTotals();
        await toUserSpace('C', f, stunMarker());
        // Length beyond the datagram; more than 3 bytes after the length.
        await toUserSpace('C', f, channelData(0x4004, unique('long'), 0, 200));
        await toUserSpace('C', f, channelData(0x4004, unique('short-by-more-than-three'), 0, 4));
        await toUserSpace('C', f, channelData(0x4005, unique('unknown-channel')));
        await toUserSpace('P', f, unique('stranger'), OTHER_PEER_PORT);
        const totals = await dp.readTotals();
        assert.equal(totals.malformed! - before.malformed!, 2);
        assert.equal(totals.relayed_to_peer, before.relayed_to_peer);
        assert.equal(totals.relayed_to_client, before.relayed_to_client);
        assert.deepEqual(await dp.readTraffic(), []);
      } finally {
        dp.remove(handle, channel(f, 0x4004));
        await dp.readTraffic();
      }
    });

    it(`IPv${f}: after expiry and after remove() the packets reach user space; update() resumes with the counters kept`, async () => {
      const expiresAtNs = process.hrtime.bigint() + 300_000_000n;
      const handle = dp.install(channel(f, 0x4006, expiresAtNs));
      await dp.flush();
      const before = await dp.readTotals();
      while (process.hrtime.bigint() <= expiresAtNs) await sleep(50);
      await toUserSpace('C', f, channelData(0x4006, unique('late')));
      await toUserSpace('P', f, unique('late-peer'));
      assert.equal((await dp.readTotals()).expired! - before.expired!, 2);

      dp.update(handle, channel(f, 0x4006));
      await dp.flush();
      const data = unique('again');
      await relaysToPeer(f, 0x4006, data);
      assert.deepEqual(await dp.readTraffic(), [{ handle, toPeerPackets: 1, toPeerBytes: data.length, toClientPackets: 0, toClientBytes: 0 }]);
      const last = unique('last');
      await relaysToPeer(f, 0x4006, last);

      dp.remove(handle, channel(f, 0x4006, expiresAtNs));
      await dp.flush();
      await toUserSpace('C', f, channelData(0x4006, unique('removed')));
      await toUserSpace('P', f, unique('removed-peer'));
      // The removed handle reports its last traffic once.
      assert.deepEqual(await dp.readTraffic(), [{ handle, toPeerPackets: 1, toPeerBytes: last.length, toClientPackets: 0, toClientBytes: 0 }]);
      assert.deepEqual(await dp.readTraffic(), []);
    });
  }

  it('a client datagram that crosses veth as CHECKSUM_PARTIAL (tx offload on) goes to user space', async () => {
    const handle = dp.install(channel(4, 0x4007));
    await dp.flush();
    await topo.setTxChecksumOffload(true);
    try {
      const before = await dp.readTotals();
      await toUserSpace('C', 4, channelData(0x4007, unique('partial')));
      assert.equal((await dp.readTotals()).checksum_partial! - before.checksum_partial!, 1);
    } finally {
      await topo.setTxChecksumOffload(false);
      dp.remove(handle, channel(4, 0x4007));
      await dp.readTraffic();
    }
  });

  it('install() refuses mixed families; no helper error so far', () => {
    assert.throws(() => dp.install({ ...channel(4, 0x4008), peerAddress: ADDR.peer6 }), /one family/);
    assert.deepEqual(errors, []);
  });

  it('close() detaches from every interface and the helper exits', async () => {
    const pid = dp.helperPid;
    for (const dev of SERVER_INTERFACES) assert.match(await topo.filters(dev), /bpf/);
    let exitReported = false;
    dp.onExit = () => (exitReported = true);
    await dp.close();
    await dp.close();
    for (const dev of SERVER_INTERFACES) assert.equal((await topo.filters(dev)).trim(), '');
    assert.equal(alive(pid), false);
    assert.equal(exitReported, false, 'onExit is for unexpected exits only');
    assert.throws(() => dp.install(channel(4, 0x4009)), /closed/);
  });

  it('when the process that opened it is killed, the helper detaches and exits (PR_SET_PDEATHSIG)', async () => {
    const module = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../src/dataplane/kernel/kernel-dataplane.js');
    const script = `const { KernelDataplane } = await import(${JSON.stringify(module)});
const dp = await KernelDataplane.open({ interfaces: ${JSON.stringify(SERVER_INTERFACES)}, namespace: ${JSON.stringify(topo.ns.S)} });
console.log(dp.helperPid); setInterval(() => {}, 1000);`;
    const child = spawn(process.execPath, ['--input-type=module', '-e', script], { stdio: ['ignore', 'pipe', 'inherit'] });
    const helperPid = await new Promise<number>((resolve, reject) => {
      child.stdout.setEncoding('utf8').once('data', (line: string) => resolve(Number(line.trim())));
      child.once('exit', (code) => reject(new Error(`the opener exited (${code})`)));
    });
    assert.ok(alive(helperPid));
    assert.match(await topo.filters('s-c'), /bpf/);
    child.kill('SIGKILL');
    while (alive(helperPid)) await sleep(50);
    for (const dev of SERVER_INTERFACES) assert.equal((await topo.filters(dev)).trim(), '');
  });
});

/** Running (a zombie nobody reaped yet counts as gone). */
function alive(pid: number): boolean {
  try {
    return !/^\d+ \(.*\) Z/.test(readFileSync(`/proc/${pid}/stat`, 'utf8'));
  } catch {
    return false;
  }
}

describe('KernelDataplane.open refuses with a reason', () => {
  it('when the object is not built', async () => {
    await assert.rejects(
      KernelDataplane.open({ interfaces: ['lo'], buildDir: '/nonexistent/anyturn-build' }),
      (err: unknown) => err instanceof DataplaneUnavailableError && /not built: run `npm run build:dataplane`/.test(err.reason),
    );
  });

  it('for an interface that does not exist', { skip: SKIP }, async () => {
    await assert.rejects(
      KernelDataplane.open({ interfaces: ['lo', 'nosuchif0'] }),
      (err: unknown) => err instanceof DataplaneUnavailableError && /no such interface: nosuchif0/.test(err.reason),
    );
  });
});

// Feeds the running server 20,000 mutated packets (test/helpers/fuzz: seeds of every
// method with every attribute, mutated structurally and then signed so they pass
// authentication, or damaged byte by byte; ChannelData at the channel edges; noise)
// over real UDP from several sources and over TCP and TLS cut at random points, while
// three allocations relay ChannelData and Send indications to an echo peer; checks
// that it never stops answering, never fails internally, loses nothing it relays,
// and still relays every packet afterwards. bench/fuzz.ts runs the same campaign with
// a million packets against the CLI (docs/reliability.md).
//
// Safety: every socket here is on loopback. Signed mutated requests can name any
// peer address, so the server allows only PEER_ADDRESS (127.0.0.77) as a peer and
// denies every other address (FUZZ_PEER_FLAGS).

import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { Writable } from 'node:stream';
import { buildConfig } from '../../src/config/index.js';
import { createLogger } from '../../src/ops/log.js';
import { type RunningServer, startServer } from '../../src/server.js';
import { FUZZ_PEER_FLAGS, FUZZ_REALM, FUZZ_USERS, PEER_ADDRESS, countsAsNotStun, passwordOf, runCampaign } from '../helpers/fuzz/campaign.js';
import { PacketFuzzer } from '../helpers/fuzz/packets.js';
import { seedMessages } from '../helpers/fuzz/seeds.js';
import { SeededRandom } from '../helpers/random.js';
import { canSendRaw, sendRawUdpV4 } from '../helpers/raw-udp.js';
import { type SelfSignedCertificate, makeSelfSignedCertificate } from '../helpers/tls-cert.js';
import { type Endpoint, TestTurnClient } from '../helpers/turn-client.js';

// ANYTURN_FUZZ_SEED replays or explores another sequence; the default is fixed.
const SEED = process.env.ANYTURN_FUZZ_SEED !== undefined ? Number(process.env.ANYTURN_FUZZ_SEED) >>> 0 : 0x5eed2024;
const TOTAL_PACKETS = 20_000;

describe(`fuzzing the server over UDP, TCP and TLS (seed 0x${SEED.toString(16)})`, () => {
  let server: RunningServer;
  let endpoint: Endpoint;
  let cert: SelfSignedCertificate;
  const errorLogs: string[] = [];
  const unhandled: unknown[] = [];
  const onUnhandled = (reason: unknown): void => {
    unhandled.push(reason);
  };

  before(async () => {
    process.on('unhandledRejection', onUnhandled);
    cert = makeSelfSignedCertificate();
    // Capture error-level log lines: an internal error is a bug even if answered with 500.
    const sink = new Writable({
      write(chunk: Buffer, _enc, done) {
        errorLogs.push(chunk.toString('utf8'));
        done();
      },
    });
    server = await startServer(
      buildConfig({
        'listening-ip': ['127.0.0.1'],
        'listening-port': 0,
        'tls-listening-port': 0,
        cert: cert.certFile,
        pkey: cert.keyFile,
        'min-port': 46000,
        'max-port': 46999,
        realm: FUZZ_REALM,
        user: FUZZ_USERS.map((u) => `${u}:${passwordOf(u)}`),
        ...FUZZ_PEER_FLAGS,
      }),
      { logger: createLogger('error', sink) },
    );
    endpoint = { address: '127.0.0.1', port: server.listening.find((l) => l.transport === 'udp')!.port };
  });
  after(async () => {
    process.off('unhandledRejection', onUnhandled);
    await server.stop();
    cert.remove();
  });

  // The timeout only stops a hung run; nothing asserts on time.
  it('keeps answering, keeps relaying, and never fails internally', { timeout: 300_000 }, async (t) => {
    const rng = new SeededRandom(SEED);
    const tlsPort = server.listening.find((l) => l.transport === 'tls')!.port;
    const result = await runCampaign({ server: { ...endpoint, tlsPort }, rng, packets: TOTAL_PACKETS, postPackets: 400 });
    t.diagnostic(`sent: ${JSON.stringify(result.sent)}; TCP/TLS reconnects ${result.reconnects}`);
    t.diagnostic(`mutations: ${[...result.mutations].map(([k, n]) => `${k}=${n}`).join(' ')}`);

    // From UDP source port 0, which no socket can bind: mutated packets through a raw socket.
    const rawZero = (await canSendRaw()) ? 60 : 0;
    if (rawZero > 0) {
      const fuzzer = new PacketFuzzer(rng, seedMessages({ peer: { address: PEER_ADDRESS, port: 9 } }));
      const packets: Buffer[] = [];
      while (packets.length < rawZero) {
        const p = fuzzer.next();
        if (p.length < 2000) packets.push(p);
      }
      await sendRawUdpV4(endpoint.port, 0, packets);
      t.diagnostic(`${rawZero} mutated packets sent from source port 0`);
    }
    assert.equal(result.bindingFailures, 0, 'every Binding request during the run was answered');
    // The relaying allocations are not touched by the fuzz (other 5-tuples, other
    // allocations), so every packet they sent during the fuzz came back from the echo
    // peer. The only slack: datagrams the kernel dropped on the way because a receive
    // buffer was full (the server's listening and relay sockets, the peer's, the
    // clients'), which the server never saw.
    t.diagnostic(
      `relayed during the fuzz: ${JSON.stringify(result.relaying)}; kernel receive drops ${result.kernelDrops} (listening socket ${result.listeningDrops})`,
    );
    for (const r of result.relaying) {
      assert.ok(r.sent > 0);
      assert.ok(r.back >= r.sent - result.kernelDrops, `${r.name}: ${r.back} of ${r.sent} came back, kernel drops ${result.kernelDrops}`);
    }
    // After: every relaying allocation relays every packet, both ways.
    for (const r of result.after) assert.deepEqual(r, { name: r.name, sent: 400, back: 400 });

    // Binding still answered, and a new client can still allocate.
    const fresh = await TestTurnClient.open(endpoint, { username: 'watch', password: passwordOf('watch'), realm: FUZZ_REALM });
    try {
      assert.deepEqual(await fresh.binding(), { address: '127.0.0.1', port: fresh.localPort });
      assert.equal((await fresh.allocate()).response.code, 200);
    } finally {
      fresh.close();
    }

    // The process is alive and counted its drops; no internal errors, no unhandled rejections.
    const drops = Object.entries(server.counters.drops).filter(([, n]) => n > 0);
    t.diagnostic(`drops: ${drops.map(([k, n]) => `${k}=${n}`).join(' ')}`);
    t.diagnostic(`requests: ${[...server.counters.requests].map(([k, n]) => `${k}=${n}`).join(' ')}`);
    // Every drop of a kind this test can predict was counted: all packets from source port
    // 0, and every client-side UDP packet that is not STUN (less any the kernel dropped
    // before the server read them, and none more). TCP and TLS never hand such a packet
    // on: their framer closes the connection first (src/transport/stream/framer.ts).
    assert.equal(server.counters.drops.source_port_zero, rawZero, 'packets from source port 0 counted');
    const notStun = server.counters.drops.not_stun;
    assert.ok(
      notStun <= result.notStunSent && notStun >= result.notStunSent - result.listeningDrops,
      `not_stun counted ${notStun} of ${result.notStunSent} sent (kernel drops ${result.listeningDrops})`,
    );
    assert.ok(countsAsNotStun(Buffer.alloc(0)) && !countsAsNotStun(Buffer.alloc(20)));
    // Signed mutations reached the method handlers: answers only a handler gives (success,
    // 437, 442, 443, 403, 508, 405...), far more than the two dozen requests of the set-up.
    const handled = [...server.counters.requests].filter(([k]) => !k.startsWith('binding') && !/ (400|401|420|438)$/.test(k)).reduce((n, [, v]) => n + v, 0);
    assert.ok(handled > 200, `requests answered by a method handler: ${handled}`);
    const internal = [...server.counters.requests].filter(([k]) => k.endsWith(' 500'));
    assert.deepEqual(internal, [], 'no request ended in 500 Server Error');
    assert.deepEqual(errorLogs, [], 'nothing logged at error level');
    assert.deepEqual(unhandled, [], 'no unhandled rejections');
  });
});

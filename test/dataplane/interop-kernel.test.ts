// The interop clients through the kernel data plane (docs/dataplane.md; issue 12, "Tests"),
// in network namespaces (test/helpers/netns.ts): client C, node N1, peer P behind the
// router R. N1 runs `--dataplane kernel --dataplane-interface eth0` (test/anycast/cluster.ts)
// and serves the anycast address 198.18.100.1:3478. C and P compute UDP checksums in
// software (softwareChecksums): the program passes the CHECKSUM_PARTIAL datagrams a veth
// sender leaves to user space, which would hide the kernel path (docs/dataplane.md §3).
//
// What proves the kernel path: anyturn_dataplane_kernel_packets_total{event="relayed_to_*"}
// is what the program relayed, anyturn_relayed_packets_total{direction} everything relayed
// (the kernel's part read back once a second), so their difference is what JavaScript
// relayed. Both are read as deltas around each load.

import assert from 'node:assert/strict';
import { fileURLToPath } from 'node:url';
import { after, before, describe, it } from 'node:test';
import { dumpAll, metrics, startNode, TURN_PORT, USER } from '../anycast/cluster.js';
import { kernelDataplaneUnavailableReason } from '../helpers/dataplane.js';
import { ANYCAST_ADDRESS, type NsProcess, Topology, netnsUnavailableReason } from '../helpers/netns.js';
import { assertEveryMessageBack, runUclient, uclientLoadArgs } from '../helpers/uclient.js';
import type { Traffic, WeriftPeerReport } from './werift-peer.js';

const skip = netnsUnavailableReason() ?? kernelDataplaneUnavailableReason();

const WERIFT_PEER_PATH = fileURLToPath(new URL('./werift-peer.js', import.meta.url));

const TO_PEER = 'anyturn_dataplane_kernel_packets_total{event="relayed_to_peer"}';
const TO_CLIENT = 'anyturn_dataplane_kernel_packets_total{event="relayed_to_client"}';
const RELAYED_TO_PEER = 'anyturn_relayed_packets_total{direction="client_to_peer"}';
const RELAYED_TO_CLIENT = 'anyturn_relayed_packets_total{direction="peer_to_client"}';
const DROPPED_NO_PERMISSION = 'anyturn_dropped_packets_total{reason="no_permission"}';
/** N1's relay address (--relay-ip, test/anycast/cluster.ts). */
const RELAY_ADDRESS = Topology.nodeAddress('N1');

/** turnutils_peer's port in P (its default). */
const UCLIENT_PEER_PORT = 3480;
const UCLIENT_SESSIONS = 5;
const UCLIENT_MESSAGES = 400;
/** Only stops a hung uclient or werift; nothing asserts on time. */
const DEADLINE_MS = 60_000;
const WERIFT_MESSAGES = 100;
/** Datagrams whose real checksum looks like a veth's CHECKSUM_PARTIAL that a test tolerates (checksumLookalikes). */
const MAX_LOOKALIKES = 2;
/** The kernel's counters reach /metrics on the next once-a-second read: wait past it. */
const READBACK_MS = 2500;

interface Relayed {
  /** Relayed by the kernel program, client to peer and peer to client. */
  readonly kernelToPeer: number;
  readonly kernelToClient: number;
  /** Relayed by JavaScript (everything relayed minus the kernel's part). */
  readonly jsToPeer: number;
  readonly jsToClient: number;
  /** Peer datagrams the engine dropped for lack of a permission (RFC 8656 §11.3). */
  readonly droppedNoPermission: number;
  /** The program's other counters (packets it matched and passed to user space, by reason). */
  readonly passed: Record<string, number>;
}

async function relayedSince(topo: Topology, base: Map<string, number> | undefined): Promise<{ now: Map<string, number>; delta: Relayed }> {
  const now = await metrics(topo, 'N1');
  const d = (name: string): number => (now.get(name) ?? 0) - (base?.get(name) ?? 0);
  const passed: Record<string, number> = {};
  for (const name of now.keys()) {
    const m = /^anyturn_dataplane_kernel_packets_total\{event="(\w+)"\}$/.exec(name);
    // relayed_*: the program relayed; steered_*: the socket path of a shared relay socket
    // (--relay-sockets auto, docs/dataplane.md §8), which indications take.
    if (m && !/^(relayed|steered)_/.test(m[1]!) && d(name) !== 0) passed[m[1]!] = d(name);
  }
  return {
    now,
    delta: {
      kernelToPeer: d(TO_PEER),
      kernelToClient: d(TO_CLIENT),
      jsToPeer: d(RELAYED_TO_PEER) - d(TO_PEER),
      jsToClient: d(RELAYED_TO_CLIENT) - d(TO_CLIENT),
      droppedNoPermission: d(DROPPED_NO_PERMISSION),
      passed,
    },
  };
}

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

/** Polls `ss` in the namespace until a UDP socket listens on address:port. */
async function udpListening(topo: Topology, role: 'P', address: string, port: number, proc: NsProcess): Promise<void> {
  const deadline = Date.now() + 20_000;
  for (;;) {
    const r = await topo.exec(role, 'ss', ['-Hlun', 'src', `${address}:${port}`]);
    if (r.stdout.trim() !== '') return;
    if (!proc.isRunning()) throw new Error(`${proc.name} exited\n${proc.dump()}`);
    if (Date.now() > deadline) throw new Error(`nothing listens on ${address}:${port} in ${role}\n${proc.dump()}`);
    await sleep(100);
  }
}

/**
 * The packets of a bound channel the program passed to user space, which relays them as it
 * always did. C and P compute full checksums (softwareChecksums), so the one reason expected
 * is checksum_partial for a datagram whose real checksum happens to equal the
 * pseudo-header sum: the program cannot tell it from a veth's CHECKSUM_PARTIAL
 * (docs/dataplane.md §3). For random data that is one datagram in 65536 (a run of 4000
 * meets one once in 17 runs, three once in 26,000); uclient's payloads met one about once
 * in ten runs of the uclient test here. More than MAX_LOOKALIKES means
 * the kernel path did not carry the load (e.g. a sender with checksum offload on), and any
 * other reason fails.
 */
function checksumLookalikes(delta: Relayed, context: string): number {
  const { checksum_partial: lookalikes = 0, ...other } = delta.passed;
  assert.deepEqual(other, {}, `the program passed no packet of a bound channel to user space for another reason\n${context}`);
  assert.ok(
    lookalikes <= MAX_LOOKALIKES,
    `at most ${MAX_LOOKALIKES} checksum look-alikes, not ${lookalikes}: the kernel path did not carry the load\n${context}`,
  );
  return lookalikes;
}

/** The namespace's UDP counters (/proc/net/snmp: InDatagrams, InErrors, RcvbufErrors, InCsumErrors...). */
async function udpCounters(topo: Topology, role: 'C' | 'P'): Promise<Record<string, number>> {
  const lines = (await topo.exec(role, 'cat', ['/proc/net/snmp'])).stdout.split('\n').filter((l) => l.startsWith('Udp:'));
  const [names, values] = lines.map((l) => l.split(/\s+/).slice(1));
  return Object.fromEntries((names ?? []).map((n, i) => [n, Number(values?.[i])]));
}

/** Asks a werift peer (once) what crossed its sockets. */
async function trafficOf(p: NsProcess): Promise<Traffic> {
  p.writeLine(JSON.stringify({ cmd: 'report' }));
  return (await p.waitForJsonLine((r) => r.event === 'traffic', DEADLINE_MS)) as unknown as Traffic;
}

describe('kernel data plane: coturn uclient and werift relay through the kernel', { skip, timeout: 150_000 }, () => {
  let topo: Topology;
  before(async () => {
    topo = await Topology.build({ softwareChecksums: true });
    await startNode(topo, 'N1', { cluster: false, dataplane: 'kernel' });
  });
  after(async () => {
    await topo?.teardown();
  });

  it('turnutils_uclient, channel mode: every message comes back, all relayed by the kernel', async (t) => {
    // turnutils_peer: -L is the address it listens on (without it, every address), -p its port.
    const peer = topo.spawnIn('P', 'turnutils_peer', ['-L', Topology.peerAddress, '-p', String(UCLIENT_PEER_PORT)], { name: 'turnutils_peer' });
    await udpListening(topo, 'P', Topology.peerAddress, UCLIENT_PEER_PORT, peer);
    const { now: base } = await relayedSince(topo, undefined);
    const checksumErrorsBefore = (await udpCounters(topo, 'C')).InCsumErrors! + (await udpCounters(topo, 'P')).InCsumErrors!;

    const [user, password] = USER.split(':') as [string, string];
    const args = [
      // -v: setup logging only over UDP; runUclient reads a channel-number collision from it.
      '-v',
      '-u',
      user,
      '-w',
      password,
      '-e',
      Topology.peerAddress,
      '-r',
      String(UCLIENT_PEER_PORT),
      ...uclientLoadArgs({
        clients: UCLIENT_SESSIONS,
        messages: UCLIENT_MESSAGES,
        bytes: 100,
        intervalMs: 5,
        port: TURN_PORT,
        host: ANYCAST_ADDRESS,
        localAddress: Topology.clientAddress,
      }),
    ];
    const result = await runUclient(args, DEADLINE_MS, t, { runUnder: ['ip', 'netns', 'exec', topo.nsOf('C')] });
    const server = { process: { outputTail: () => dumpAll(topo) } };
    const messages = UCLIENT_SESSIONS * UCLIENT_MESSAGES;
    assertEveryMessageBack(args, result, server, messages);

    await sleep(READBACK_MS);
    const { delta } = await relayedSince(topo, base);
    // Per session (coturn 4.6.1, start_connection): a probe allocation that is never used
    // again, then the session's allocation binds one channel to the peer's port+1 (twice)
    // and another to the peer's port (twice), and sends every message as ChannelData on
    // the latter only; nothing goes to port+1 and -c leaves out the second (RTCP)
    // allocation. turnutils_peer echoes each datagram once to the relayed address. So each
    // message crosses the relay once each way, on a channel the kernel holds from before
    // the ChannelBind success (docs/dataplane.md §5: flush): `messages` relayed each way, all
    // by the kernel except the checksum look-alikes it passes (checksumLookalikes), which
    // JavaScript relays; almost always none.
    t.diagnostic(`relayed: ${JSON.stringify(delta)}`);
    const context = `${JSON.stringify(delta)}\n${dumpAll(topo)}`;
    const lookalikes = checksumLookalikes(delta, context);
    // The relayed datagrams carry valid checksums (docs/dataplane.md §3): C's and P's stacks
    // verify them in software and count the bad ones.
    const checksumErrors = (await udpCounters(topo, 'C')).InCsumErrors! + (await udpCounters(topo, 'P')).InCsumErrors! - checksumErrorsBefore;
    assert.equal(checksumErrors, 0, `no UDP checksum errors in C or P\n${context}`);
    assert.equal(delta.kernelToPeer + delta.jsToPeer, messages, `every ChannelData relayed to the peer once (client_to_peer)\n${context}`);
    assert.equal(delta.kernelToClient + delta.jsToClient, messages, `every echo relayed to the client once (peer_to_client)\n${context}`);
    assert.equal(
      delta.jsToPeer + delta.jsToClient,
      lookalikes,
      `JavaScript relayed exactly the datagrams the kernel passed as checksum look-alikes, nothing else\n${context}`,
    );
    await peer.stop();
  });

  it('werift: a relay-only peer in C and a host-candidate peer in P exchange data-channel messages through the kernel', async (t) => {
    const { now: base } = await relayedSince(topo, undefined);
    const udpBase = { C: await udpCounters(topo, 'C'), P: await udpCounters(topo, 'P') };
    const common = ['--messages', String(WERIFT_MESSAGES)];
    const offerer = topo.spawnIn(
      'C',
      process.execPath,
      [WERIFT_PEER_PATH, '--role', 'offerer', '--turn', `${ANYCAST_ADDRESS}:${TURN_PORT}`, '--user', USER, ...common],
      {
        name: 'werift-offerer',
        stdin: true,
      },
    );
    // The answerer's STUN server is anyturn (a Binding answered in user space, no relaying):
    // werift asks one whatever the configuration, and the default is outside the topology.
    const answerer = topo.spawnIn('P', process.execPath, [WERIFT_PEER_PATH, '--role', 'answerer', '--stun', `${ANYCAST_ADDRESS}:${TURN_PORT}`, ...common], {
      name: 'werift-answerer',
      stdin: true,
    });
    try {
      const failed = (p: NsProcess): Promise<never> =>
        p
          .waitForJsonLine((r) => r.event === 'error', DEADLINE_MS * 2)
          .then(
            (r) => Promise.reject(new Error(`${p.name}: ${JSON.stringify(r)}`)),
            () => new Promise<never>(() => undefined),
          );
      const failure = Promise.race([failed(offerer), failed(answerer)]);
      const step = <T>(p: Promise<T>): Promise<T> => Promise.race([p, failure]);

      const offer = await step(offerer.waitForJsonLine((r) => r.event === 'offer', DEADLINE_MS));
      answerer.writeLine(JSON.stringify({ cmd: 'offer', sdp: offer.sdp }));
      const answer = await step(answerer.waitForJsonLine((r) => r.event === 'answer', DEADLINE_MS));
      offerer.writeLine(JSON.stringify({ cmd: 'answer', sdp: answer.sdp }));
      const [atOfferer, atAnswerer] = (await step(
        Promise.all([offerer.waitForJsonLine((r) => r.event === 'done', DEADLINE_MS), answerer.waitForJsonLine((r) => r.event === 'done', DEADLINE_MS)]),
      )) as unknown as [WeriftPeerReport, WeriftPeerReport];
      const literal = (a: string): string => a.replaceAll('.', '\\.');
      const sdpCandidates = (sdp: unknown): string[] =>
        String(sdp)
          .split(/\r?\n/)
          .filter((l) => l.startsWith('a=candidate:'));
      const context = `offer candidates: ${sdpCandidates(offer.sdp).join(' | ')}\nanswer candidates: ${sdpCandidates(answer.sdp).join(' | ')}`;

      const expected = (role: string): string[] => Array.from({ length: WERIFT_MESSAGES }, (_, i) => `${role} #${i}`);
      assert.deepEqual(atAnswerer.received, expected('offerer'), 'every message from C, in order');
      assert.deepEqual(atOfferer.received, expected('answerer'), 'every message from P, in order');
      // TURN over UDP (werift retries over TCP when the UDP Allocate fails), from relay to host.
      assert.deepEqual(atOfferer.turnTransports, ['udp'], `the offerer's TURN client\n${context}`);
      assert.match(atOfferer.selected?.local ?? '', new RegExp(` ${literal(RELAY_ADDRESS)} \\d+ typ relay`), context);
      assert.match(atOfferer.selected?.remote ?? '', new RegExp(` ${literal(Topology.peerAddress)} \\d+ typ host`), context);

      // Both stop sending; then the datagrams in flight arrive, the kernel's counters are read
      // back, and what each side counted on its sockets is compared with the relay's counters.
      for (const p of [offerer, answerer]) p.writeLine(JSON.stringify({ cmd: 'freeze' }));
      await step(Promise.all([offerer, answerer].map((p) => p.waitForJsonLine((r) => r.event === 'frozen', DEADLINE_MS))));
      await sleep(READBACK_MS);
      const { delta } = await relayedSince(topo, base);
      const [c, p] = await step(Promise.all([trafficOf(offerer), trafficOf(answerer)]));
      const none = { stun: 0, channel: 0, other: 0 };
      const cToServer = c.sentTo[ANYCAST_ADDRESS] ?? none;
      const cFromServer = c.receivedFrom[ANYCAST_ADDRESS] ?? none;
      const pToRelay = p.sentTo[RELAY_ADDRESS] ?? none;
      const pFromRelay = p.receivedFrom[RELAY_ADDRESS] ?? none;
      const udpNow = { C: await udpCounters(topo, 'C'), P: await udpCounters(topo, 'P') };
      const udpDelta = (role: 'C' | 'P', name: string): number => (udpNow[role][name] ?? 0) - (udpBase[role][name] ?? 0);
      const udp = `UDP in C ${JSON.stringify(udpNow.C)}, in P ${JSON.stringify(udpNow.P)} (before: ${JSON.stringify(udpBase)})`;
      const detail = `relay ${JSON.stringify(delta)}\nC ${JSON.stringify(c)}\nP ${JSON.stringify(p)}\n${udp}\n${context}\n${dumpAll(topo)}`;
      t.diagnostic(
        `relayed: ${JSON.stringify(delta)}; P sent to the relayed address ${JSON.stringify(pToRelay)}; C sent to the server ${JSON.stringify(cToServer)}; socket overflows C ${udpDelta('C', 'RcvbufErrors')} P ${udpDelta('P', 'RcvbufErrors')}`,
      );
      assert.deepEqual([...c.refused, ...p.refused], [], `werift sent nothing outside the topology\n${detail}`);
      const lookalikes = checksumLookalikes(delta, detail);
      // The relayed datagrams carry valid checksums (docs/dataplane.md §3): C's and P's
      // stacks verify them in software and count the bad ones.
      assert.equal(udpDelta('C', 'InCsumErrors') + udpDelta('P', 'InCsumErrors'), 0, `no UDP checksum errors in C or P\n${detail}`);
      // Datagrams the receiving socket had no room for (werift answers a burst of messages
      // more slowly than they arrive; SCTP retransmits what counts) never reach its counts.
      const overflowC = udpDelta('C', 'RcvbufErrors');
      const overflowP = udpDelta('P', 'RcvbufErrors');

      // What werift sends (werift 0.24.4, TurnProtocol.sendData): every datagram for a peer,
      // its ICE checks included, waits for the ChannelBind of that peer's address and goes as
      // ChannelData on it (Send indications only if the ChannelBind failed). The kernel holds
      // the entry before the server answers the ChannelBind (docs/dataplane.md §5), so every
      // ChannelData C sent was relayed by the kernel, but for checksum look-alikes, and P got
      // what was relayed.
      assert.equal(delta.kernelToPeer + delta.jsToPeer, cToServer.channel, `each ChannelData C sent relayed once\n${detail}`);
      assert.ok(delta.jsToPeer <= lookalikes, `JavaScript relayed client_to_peer only what the kernel passed\n${detail}`);
      const atP = pFromRelay.stun + pFromRelay.channel + pFromRelay.other;
      assert.ok(
        atP <= delta.kernelToPeer + delta.jsToPeer && delta.kernelToPeer + delta.jsToPeer <= atP + overflowP,
        `P got every relayed datagram, but for those its socket had no room for\n${detail}`,
      );
      // P, the ICE-controlled side, starts its connectivity checks to C's relayed address as
      // soon as it has the offer, before C has bound a channel to P: those arrive without a
      // permission and are dropped (RFC 8656 §11.3). The engine binds the channel, with its
      // permission, before the kernel holds the entry (the ChannelBind answer waits for the
      // kernel, the binding does not), so a check that lands in between is relayed by
      // JavaScript. Only checks can: P's first DTLS datagram follows a check that succeeded
      // (which needs C's answer, sent after the ChannelBind success) or C's own DTLS (later
      // still). So every datagram P sent to the
      // relayed address was dropped for lack of a permission or relayed, C got each relayed
      // one as ChannelData, and JavaScript relayed the look-alikes and at most P's checks
      // (almost always nothing).
      assert.equal(
        delta.kernelToClient + delta.jsToClient + delta.droppedNoPermission,
        pToRelay.stun + pToRelay.channel + pToRelay.other,
        `every datagram P sent to the relayed address was relayed or dropped without a permission\n${detail}`,
      );
      const atC = cFromServer.channel;
      assert.ok(
        atC <= delta.kernelToClient + delta.jsToClient && delta.kernelToClient + delta.jsToClient <= atC + overflowC,
        `C got every relayed datagram as ChannelData, but for those its socket had no room for\n${detail}`,
      );
      assert.ok(delta.jsToPeer + delta.jsToClient >= lookalikes, `JavaScript relayed what the kernel passed\n${detail}`);
      assert.ok(
        delta.jsToPeer + delta.jsToClient <= lookalikes + pToRelay.stun,
        `JavaScript relayed only the look-alikes and checks that raced the ChannelBind\n${detail}`,
      );
      // Each data-channel message is at least one DTLS datagram each way.
      assert.ok(delta.kernelToPeer >= WERIFT_MESSAGES && delta.kernelToClient >= WERIFT_MESSAGES, `the kernel carried the messages\n${detail}`);
    } finally {
      for (const p of [offerer, answerer]) p.writeLine(JSON.stringify({ cmd: 'close' }));
      await Promise.all([offerer, answerer].map((p) => Promise.race([p.exited, sleep(3000).then(() => p.stop())])));
    }
  });
});

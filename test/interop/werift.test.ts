// Interop with werift 0.24.4 (a WebRTC stack in TypeScript): two
// RTCPeerConnections in this process, relay-only, both allocating on the
// server under test over UDP; a data channel carries messages both ways, so
// DTLS and SCTP ride through TURN (ChannelData or Send/Data, werift decides).
// Both relayed addresses are 127.0.0.1:port, so the server runs with
// --allow-loopback-peers.
//
// werift quirks (read from node_modules/werift/lib):
// - Its default iceServers is stun:stun.l.google.com:19302, and the ICE
//   connection falls back to that STUN server whenever none is configured.
//   It is only skipped when relay-only gathering is on, which requires
//   iceTransportPolicy 'relay' AND a turn: URL AND username AND credential;
//   missing any one of them, werift gathers host candidates on every
//   non-loopback interface and queries Google's STUN server. So always pass
//   all of them (and no stun: URL).
// - iceInterfaceAddresses filters host addresses, but getHostAddresses()
//   never returns loopback, so { udp4: '127.0.0.1' } filters to nothing and
//   werift falls back to all interfaces; it does however make the TURN
//   client's socket bind to 127.0.0.1, which is what we use it for.
// - If the UDP Allocate fails, werift silently retries TURN over TCP to the
//   same server address.
// As a guard, this file wraps dgram's send() for the whole process: a
// datagram to any destination other than loopback is dropped, recorded, and
// fails the test.

import assert from 'node:assert/strict';
import dgram from 'node:dgram';
import net from 'node:net';
import { type TestContext, after, test } from 'node:test';

import { RTCPeerConnection, type RTCDataChannel } from 'werift';

import { LOOPBACK_V4, startTurnServerUnderTest, stopAfter } from '../helpers/anyturn-process.js';

const USER = 'werift';
const PASSWORD = 'werift-secret';
const REALM = 'R';
const MESSAGES_EACH_WAY = 5;

// Only bounds a broken negotiation; nothing asserts on time.
const CONNECT_DEADLINE_MS = 30_000;

// --- loopback guard ----------------------------------------------------------

function isLoopback(address: string): boolean {
  if (address === 'localhost') return true;
  if (net.isIPv4(address)) return address.startsWith('127.');
  if (net.isIPv6(address)) return address === '::1' || address.toLowerCase().startsWith('::ffff:127.');
  return false;
}

type SendFunction = (this: dgram.Socket, ...args: unknown[]) => void;

/** Wraps dgram.Socket#send; returns the list of refused destinations and an uninstall function. */
function guardUdpToLoopback(): { refused: string[]; uninstall: () => void } {
  const refused: string[] = [];
  const prototype = dgram.Socket.prototype as unknown as { send: SendFunction };
  const original = prototype.send;
  prototype.send = function guardedSend(this: dgram.Socket, ...args: unknown[]): void {
    // send(msg, port, address?, cb?) or send(msg, offset, length, port, address?, cb?)
    const offsetForm = typeof args[2] === 'number';
    const address = offsetForm ? args[4] : args[2];
    const port = offsetForm ? args[3] : args[1];
    if (typeof address === 'string' && !isLoopback(address)) {
      refused.push(`${address}:${String(port)}`);
      const callback = args[args.length - 1];
      if (typeof callback === 'function') {
        process.nextTick(() => (callback as (error: Error) => void)(new Error('non-loopback send refused by test guard')));
      }
      return;
    }
    original.apply(this, args);
  };
  return {
    refused,
    uninstall: () => {
      prototype.send = original;
    },
  };
}

// --- helpers -----------------------------------------------------------------

function candidatesIn(sdp: string): string[] {
  return sdp
    .split(/\r?\n/)
    .filter((line) => line.startsWith('a=candidate:'))
    .map((line) => line.slice('a='.length));
}

/** "candidate:F 1 udp P 127.0.0.1 40001 typ relay raddr ..." -> parts */
function parseCandidate(line: string): { ip: string; port: number; type: string } {
  const parts = line.split(' ');
  const typIndex = parts.indexOf('typ');
  return { ip: parts[4] ?? '', port: Number(parts[5]), type: typIndex >= 0 ? (parts[typIndex + 1] ?? '') : '' };
}

/**
 * The transport ('udp', 'tcp', 'tls') of each TURN client werift opened for
 * this peer connection. Reads werift 0.24.4 internals (IceTransport ->
 * Connection.protocols -> StunOverTurnProtocol.turn.transport.type); if they
 * move, the caller's "found" assertion fails rather than passing silently.
 */
function turnClientTransports(pc: RTCPeerConnection): string[] {
  const out: string[] = [];
  for (const iceTransport of pc.iceTransports) {
    const protocols = (iceTransport.connection as unknown as { protocols?: unknown[] }).protocols ?? [];
    for (const protocol of protocols) {
      const type = (protocol as { turn?: { transport?: { type?: unknown } } }).turn?.transport?.type;
      if (typeof type === 'string') out.push(type);
    }
  }
  return out;
}

function withDeadline<T>(promise: Promise<T>, what: string, diagnostics: () => string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const deadline = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${what}: did not happen\n${diagnostics()}`)), CONNECT_DEADLINE_MS);
  });
  return Promise.race([promise, deadline]).finally(() => clearTimeout(timer));
}

function waitForGatheringComplete(pc: RTCPeerConnection): Promise<void> {
  if (pc.iceGatheringState === 'complete') return Promise.resolve();
  return pc.iceGatheringStateChange.watch((state) => state === 'complete').then(() => undefined);
}

function waitForOpen(channel: RTCDataChannel): Promise<void> {
  if (channel.readyState === 'open') return Promise.resolve();
  return channel.stateChanged.watch((state) => state === 'open').then(() => undefined);
}

function failureOf(pc: RTCPeerConnection, name: string): Promise<never> {
  return pc.connectionStateChange
    .watch((state) => state === 'failed')
    .then(() => {
      throw new Error(`${name}: connectionState failed`);
    });
}

// werift's TURN client refreshes its allocation in a loop that sleeps
// 5/6 of the lifetime with an un-cancellable, ref'd timer (500 s for the
// default 600 s), and RTCPeerConnection.close() neither stops that sleep nor
// deletes the allocation. The timer would hold this test process open for
// minutes after every test has finished, so end the process once the
// file's tests are done. (Stock Node 20 has no in-file way to unref it, and
// --test-force-exit is not in npm test's command line.)
after(() => {
  setTimeout(() => process.exit(), 100).unref();
});

// --- the test ------------------------------------------------------------------

async function dataChannelThroughServer(t: TestContext, extraArgs: readonly string[]): Promise<void> {
  const guard = guardUdpToLoopback();
  t.after(() => guard.uninstall());

  const server = stopAfter(
    t,
    await startTurnServerUnderTest({
      listeningIps: [LOOPBACK_V4],
      relayIp: LOOPBACK_V4,
      allowLoopbackPeers: true,
      users: [{ name: USER, password: PASSWORD }],
      realm: REALM,
      extraArgs,
    }),
  );

  const rejectedPairs: string[] = [];
  const config = {
    iceServers: [{ urls: `turn:${LOOPBACK_V4}:${server.port}?transport=udp`, username: USER, credential: PASSWORD }],
    iceTransportPolicy: 'relay' as const,
    iceUseIpv4: true,
    iceUseIpv6: false,
    iceUseTcp: false,
    // Binds werift's TURN client socket to loopback (see the quirks above).
    iceInterfaceAddresses: { udp4: LOOPBACK_V4 },
    // Belt and braces: only ever check relay <-> relay pairs on loopback.
    iceFilterCandidatePair: (pair: { localCandidate: { type: string; host: string }; remoteCandidate: { type: string; host: string } }) => {
      const ok =
        pair.localCandidate.type === 'relay' &&
        pair.remoteCandidate.type === 'relay' &&
        isLoopback(pair.localCandidate.host) &&
        isLoopback(pair.remoteCandidate.host);
      if (!ok) {
        rejectedPairs.push(`${pair.localCandidate.type} ${pair.localCandidate.host} -> ${pair.remoteCandidate.type} ${pair.remoteCandidate.host}`);
      }
      return ok;
    },
  };

  const offerer = new RTCPeerConnection(config);
  const answerer = new RTCPeerConnection(config);
  const diagnostics = (): string =>
    [
      `offerer: connection ${offerer.connectionState}, ice ${offerer.iceConnectionState}, gathering ${offerer.iceGatheringState}`,
      `answerer: connection ${answerer.connectionState}, ice ${answerer.iceConnectionState}, gathering ${answerer.iceGatheringState}`,
      `offer candidates: ${candidatesIn(offerer.localDescription?.sdp ?? '').join(' | ') || '(none)'}`,
      `answer candidates: ${candidatesIn(answerer.localDescription?.sdp ?? '').join(' | ') || '(none)'}`,
      `refused non-loopback sends: ${guard.refused.join(', ') || '(none)'}`,
      server.process.outputTail(),
    ].join('\n');

  try {
    const failed = Promise.race([failureOf(offerer, 'offerer'), failureOf(answerer, 'answerer')]);
    failed.catch(() => undefined); // raced below; keep it from going unhandled

    const toAnswerer = offerer.createDataChannel('interop');
    const answererChannel = new Promise<RTCDataChannel>((resolve) => {
      answerer.onDataChannel.subscribe((channel) => resolve(channel));
    });

    // Non-trickle exchange: wait for gathering so the SDP carries the
    // (relay) candidates, then hand it over in-process.
    await offerer.setLocalDescription(await offerer.createOffer());
    await withDeadline(waitForGatheringComplete(offerer), 'offerer gathering complete', diagnostics);
    const offer = offerer.localDescription;
    assert.ok(offer, 'offerer has a local description');
    await answerer.setRemoteDescription(offer);
    await answerer.setLocalDescription(await answerer.createAnswer());
    await withDeadline(waitForGatheringComplete(answerer), 'answerer gathering complete', diagnostics);
    const answer = answerer.localDescription;
    assert.ok(answer, 'answerer has a local description');
    await offerer.setRemoteDescription(answer);

    // Only relay candidates, each a relayed address on the server under test.
    for (const [side, sdp] of [
      ['offer', offer.sdp],
      ['answer', answer.sdp],
    ] as const) {
      const candidates = candidatesIn(sdp).map(parseCandidate);
      assert.ok(candidates.length > 0, `${side} has a relay candidate (Allocate succeeded)\n${diagnostics()}`);
      for (const candidate of candidates) {
        assert.equal(candidate.type, 'relay', `${side} candidate type\n${diagnostics()}`);
        assert.equal(candidate.ip, LOOPBACK_V4, `${side} relayed address\n${diagnostics()}`);
        assert.ok(
          candidate.port >= server.relayPorts.min && candidate.port <= server.relayPorts.max,
          `${side} relayed port ${candidate.port} in ${server.relayPorts.min}-${server.relayPorts.max}\n${diagnostics()}`,
        );
      }
    }

    const fromOfferer = await withDeadline(Promise.race([answererChannel, failed]), 'answerer sees the data channel', diagnostics);
    await withDeadline(Promise.race([waitForOpen(toAnswerer), failed]), 'offerer channel open', diagnostics);
    await withDeadline(Promise.race([waitForOpen(fromOfferer), failed]), 'answerer channel open', diagnostics);

    const expectedAtAnswerer = Array.from({ length: MESSAGES_EACH_WAY }, (_, i) => `offerer->answerer #${i}`);
    const expectedAtOfferer = Array.from({ length: MESSAGES_EACH_WAY }, (_, i) => `answerer->offerer #${i}`);
    const receivedAtAnswerer: string[] = [];
    const receivedAtOfferer: string[] = [];
    const collect = (channel: RTCDataChannel, into: string[]): Promise<void> =>
      new Promise((resolve) => {
        channel.onMessage.subscribe((data) => {
          into.push(typeof data === 'string' ? data : data.toString('utf8'));
          if (into.length >= MESSAGES_EACH_WAY) resolve();
        });
      });
    const answererDone = collect(fromOfferer, receivedAtAnswerer);
    const offererDone = collect(toAnswerer, receivedAtOfferer);
    for (const message of expectedAtAnswerer) toAnswerer.send(message);
    for (const message of expectedAtOfferer) fromOfferer.send(message);
    await withDeadline(
      Promise.all([answererDone, offererDone]),
      'messages delivered both ways',
      () => `at answerer: ${JSON.stringify(receivedAtAnswerer)}\nat offerer: ${JSON.stringify(receivedAtOfferer)}\n${diagnostics()}`,
    );

    // Ordered, reliable channel: everything, in order, nothing extra.
    assert.deepEqual(receivedAtAnswerer, expectedAtAnswerer);
    assert.deepEqual(receivedAtOfferer, expectedAtOfferer);

    // The allocations are TURN over UDP: werift retries over TCP when the
    // UDP Allocate fails (see the quirks above), and the data channel would
    // work just the same, so without this the test passes with UDP broken.
    for (const [name, pc] of [
      ['offerer', offerer],
      ['answerer', answerer],
    ] as const) {
      const transports = turnClientTransports(pc);
      assert.ok(transports.length > 0, `${name}: found werift's TURN client\n${diagnostics()}`);
      assert.deepEqual(
        transports,
        transports.map(() => 'udp'),
        `${name}: TURN client transport\n${diagnostics()}`,
      );
    }

    // The pair in use is relay <-> relay on loopback.
    const selected = offerer.iceTransports[0]?.getSelectedCandidatePair();
    assert.ok(selected, `offerer has a selected candidate pair\n${diagnostics()}`);
    for (const candidate of [selected.local, selected.remote]) {
      const parsed = parseCandidate(candidate.candidate);
      assert.equal(parsed.type, 'relay', `selected pair: ${candidate.candidate}`);
      assert.equal(parsed.ip, LOOPBACK_V4, `selected pair: ${candidate.candidate}`);
    }
  } finally {
    await Promise.allSettled([offerer.close(), answerer.close()]);
  }

  assert.deepEqual(guard.refused, [], 'werift tried to send to a non-loopback address');
  assert.deepEqual(rejectedPairs, [], 'werift formed a pair other than relay <-> relay on loopback');
}

test('werift: two relay-only peers open a data channel through the server and exchange messages', (t) => dataChannelThroughServer(t, []));

// The same through `anyturn --workers 2`: each peer's TURN client sticks to the worker
// its source port hashes to (the two may differ), and DTLS/SCTP ride through it.
test(
  'werift, anyturn --workers 2: two relay-only peers open a data channel and exchange messages',
  { skip: process.env.ANYTURN_INTEROP_TARGET === 'coturn' ? 'coturn has no --workers' : false },
  (t) => dataChannelThroughServer(t, ['--workers', '2']),
);

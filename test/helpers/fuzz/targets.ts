// What the coverage-guided loop (guided.ts) runs each input through. Import this module
// only after BlockCoverage.start() (coverage.ts), so that V8 compiles the code under test
// with block counters.
//
// - codec: decodeMessage, every attribute decoder on what it accepts, readSendIndication
//   and the ChannelData readers (src/stun). None may throw.
// - engine: TurnEngine.handleClientPacket with the fakes of test/helpers/fake-io.ts, a
//   manual clock and the memory store. The first byte of an input steers it: bits 0-1
//   the client's source port (four 5-tuples), bit 2 sign the rest with alice's key
//   (USERNAME, REALM, a fresh NONCE, MESSAGE-INTEGRITY over whatever the rest holds, so
//   mutated requests pass authentication: RFC 8489 §9.2), bit 3 FINGERPRINT too, bit 4
//   move the clock 200 s on and tick first (expiry), bit 5 hand the rest to the first
//   relay socket as a peer's datagram instead. Failures: a throw, an error-level log
//   line, an unhandled rejection.

import { decodeAddress } from '../../../src/stun/address.js';
import * as attributes from '../../../src/stun/attributes.js';
import { looksLikeChannelData, readChannelDataLength, readChannelNumber } from '../../../src/stun/channel-data.js';
import { Attr } from '../../../src/stun/constants.js';
import { SendIndicationView, readSendIndication } from '../../../src/stun/indication.js';
import { attributeValue, decodeClass, decodeMessage, decodeMethod } from '../../../src/stun/message.js';
import { MessageWriter } from '../../../src/stun/writer.js';
import { MemoryAllocationStore } from '../../../src/store/memory.js';
import { CredentialStore } from '../../../src/turn/auth/credentials.js';
import { NonceIssuer } from '../../../src/turn/auth/nonce.js';
import { ManualClock } from '../../../src/turn/clock.js';
import { EngineCounters } from '../../../src/turn/counters.js';
import { TurnEngine } from '../../../src/turn/engine.js';
import { createPeerPolicy } from '../../../src/turn/peer-policy.js';
import { longTermKey } from '../../../src/stun/integrity.js';
import { FakeClientPath, FakeRelayFactory } from '../fake-io.js';
import { attributeOffsets } from './packets.js';

const view = new SendIndicationView();

/** The codec target: throws only when the code under test throws. */
export function codecTarget(input: Buffer): void {
  const decoded = decodeMessage(input);
  if (decoded.ok) {
    const m = decoded.message;
    for (const a of m.attributes) {
      const value = attributeValue(m, a);
      decodeAddress(value, m.transactionId);
      decodeAddress(value);
      attributes.decodeText(value, 763);
      attributes.decodeUint32(value);
      attributes.decodeErrorCode(value);
      attributes.decodeUnknownAttributes(value);
      attributes.decodeChannelNumber(value);
      attributes.decodeRequestedTransport(value);
      attributes.decodeAddressFamily(value);
      attributes.decodeEvenPort(value);
      attributes.decodeReservationToken(value);
      attributes.decodeAddressErrorCode(value);
      attributes.decodeIcmp(value);
      attributes.decodePasswordAlgorithms(value);
      attributes.decodePasswordAlgorithm(value);
    }
  }
  readSendIndication(input, view);
  if (looksLikeChannelData(input) && input.length >= 4) {
    readChannelNumber(input);
    readChannelDataLength(input);
  }
}

export const ENGINE_REALM = 'example.org';
export const ENGINE_USER = 'alice';
export const ENGINE_PASSWORD = 'alice-pw';
const CLIENT = '198.51.100.10';
const PEER = '8.8.8.8';

/** Control byte bits of an engine input (see the header). */
export const Control = { Sign: 4, Fingerprint: 8, Tick: 16, Peer: 32 } as const;

export interface EngineTarget {
  run(input: Buffer): Promise<void>;
  /** Error-level log lines and unhandled rejections so far. */
  readonly failures: string[];
  stop(): Promise<void>;
}

async function flush(): Promise<void> {
  for (let i = 0; i < 3; i++) await new Promise<void>((resolve) => setImmediate(resolve));
}

/** Rebuilds `body` (a STUN message, attributes walked leniently) with the long-term credential appended. */
export function signLeniently(body: Buffer, nonce: string, fingerprint: boolean): Buffer | undefined {
  if (body.length < 20) return undefined;
  const type = body.readUInt16BE(0);
  const w = new MessageWriter(decodeMethod(type), decodeClass(type), body.subarray(8, 20), body.readUInt32BE(4));
  let size = 0;
  for (const at of attributeOffsets(body)) {
    const value = body.subarray(at + 4, Math.min(body.length, at + 4 + body.readUInt16BE(at + 2)));
    size += 4 + ((value.length + 3) & ~3);
    if (size > 60_000) break;
    w.add(body.readUInt16BE(at), value);
  }
  w.addText(Attr.Username, ENGINE_USER).addText(Attr.Realm, ENGINE_REALM).addText(Attr.Nonce, nonce);
  w.addIntegrity(longTermKey(ENGINE_USER, ENGINE_REALM, ENGINE_PASSWORD));
  if (fingerprint) w.addFingerprint();
  return w.toBuffer();
}

export function createEngineTarget(): EngineTarget {
  const clock = new ManualClock();
  const failures: string[] = [];
  const fail = (what: string) => (obj: object, msg: string) =>
    failures.push(`${what}: ${msg} ${JSON.stringify(obj, (_k, v) => (v instanceof Error ? v.stack : v))}`);
  const credentials = new CredentialStore({ realm: ENGINE_REALM, users: new Map([[ENGINE_USER, ENGINE_PASSWORD]]), authSecrets: [] });
  const nonces = new NonceIssuer(Buffer.from('coverage fuzz nonce secret'), 600_000, credentials.securityFeatures);
  const path = new FakeClientPath('udp', '192.0.2.1', 3478);
  const relays = new FakeRelayFactory();
  const engine = new TurnEngine({
    nodeId: 'fuzz',
    credentials,
    nonces,
    peerPolicy: createPeerPolicy({
      allowLoopbackPeers: false,
      allowedPeerRanges: [],
      deniedPeerRanges: [],
      serverAddresses: ['192.0.2.1', '192.0.2.100'],
      servicePorts: [3478],
    }),
    store: new MemoryAllocationStore({ now: () => clock.now() }),
    relays,
    clock,
    logger: { info: () => undefined, debug: () => undefined, warn: () => undefined, error: fail('error log') },
    counters: new EngineCounters(),
    relayAddressIPv4: '192.0.2.100',
    minPort: 50000,
    maxPort: 50099,
    maxLifetimeSeconds: 3600,
    userQuota: 0,
    totalQuota: 0,
    software: 'fuzz',
  });
  const listener = engine.addListener(path);
  const onUnhandled = (reason: unknown): void => {
    failures.push(`unhandled rejection: ${reason instanceof Error ? reason.stack : String(reason)}`);
  };
  process.on('unhandledRejection', onUnhandled);
  return {
    failures,
    async run(input: Buffer): Promise<void> {
      if (input.length === 0) return;
      const control = input[0]!;
      const port = 40000 + (control & 3);
      let packet = input.subarray(1);
      if (control & Control.Tick) {
        clock.advance(200_000);
        await engine.tick();
      }
      if (control & Control.Peer) {
        const socket = relays.sockets.find((s) => !s.closed);
        socket?.inject(packet, PEER, 5000 + (control & 3));
      } else {
        if (control & Control.Sign) packet = signLeniently(packet, nonces.issue(CLIENT, clock.now()), (control & Control.Fingerprint) !== 0) ?? packet;
        engine.handleClientPacket(listener, packet, CLIENT, port);
      }
      await flush();
      path.take();
      for (const s of relays.sockets) s.sent.length = 0;
    },
    async stop(): Promise<void> {
      await engine.stop();
      process.off('unhandledRejection', onUnhandled);
    },
  };
}

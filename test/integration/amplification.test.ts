// Amplification over real UDP on loopback: how many bytes the server sends back
// for each byte of a request nobody has authenticated (the source of such a
// request can be spoofed, so the answer may hit a victim). Counts bytes only: the
// per-message ratio of each answer, and the ratio over a flood from one source,
// which the per-source limits bound. docs/security.md lists the figures.

import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import dgram from 'node:dgram';
import net from 'node:net';
import tls from 'node:tls';
import { buildConfig } from '../../src/config/index.js';
import { createLogger } from '../../src/ops/log.js';
import { type RunningServer, startServer } from '../../src/server.js';
import { decodeErrorCode, encodeChannelNumber } from '../../src/stun/attributes.js';
import { Attr, MessageClass, Method } from '../../src/stun/constants.js';
import { decodeMessage, getAttribute } from '../../src/stun/message.js';
import { MessageWriter } from '../../src/stun/writer.js';
import { type RunningTurnServer, startAnyturn, startCoturn } from '../helpers/anyturn-process.js';
import { type SelfSignedCertificate, makeSelfSignedCertificate } from '../helpers/tls-cert.js';

const ERROR_RATE = 2;
const ERROR_BURST = 8;
/** The Binding limit the server derives from --unauth-error-rate/-burst (src/turn/rate-limit.ts). */
const BINDING_FACTOR = 5;

type Kind = 'binding' | '401' | '420' | '400' | '438';

/** The smallest request a spoofer would send for each answer. */
function request(kind: Kind): Buffer {
  const id = randomBytes(12);
  switch (kind) {
    case 'binding':
      return new MessageWriter(Method.Binding, MessageClass.Request, id).toBuffer();
    case '401':
      return new MessageWriter(Method.Allocate, MessageClass.Request, id).toBuffer();
    case '420':
      // An unknown comprehension-required attribute, empty: 24 bytes.
      return new MessageWriter(Method.Binding, MessageClass.Request, id).add(0x7ffe, Buffer.alloc(0)).toBuffer();
    case '400':
      // MESSAGE-INTEGRITY without USERNAME/REALM/NONCE.
      return new MessageWriter(Method.Allocate, MessageClass.Request, id).add(Attr.MessageIntegrity, Buffer.alloc(20)).toBuffer();
    case '438':
      return new MessageWriter(Method.Allocate, MessageClass.Request, id)
        .addText(Attr.Username, 'alice')
        .addText(Attr.Realm, 'anyturn')
        .addText(Attr.Nonce, 'x')
        .add(Attr.MessageIntegrity, Buffer.alloc(20))
        .toBuffer();
  }
}

interface Source {
  readonly socket: dgram.Socket;
  readonly received: Buffer[];
}

async function openSource(address: string): Promise<Source> {
  const socket = dgram.createSocket(address.includes(':') ? 'udp6' : 'udp4');
  const received: Buffer[] = [];
  socket.on('message', (msg) => received.push(msg));
  await new Promise<void>((resolve, reject) => {
    socket.once('error', reject);
    socket.bind(0, address, () => resolve());
  });
  return { socket, received };
}

function send(s: Source, buf: Buffer, address: string, port: number): Promise<void> {
  return new Promise((resolve, reject) => s.socket.send(buf, port, address, (err) => (err ? reject(err) : resolve())));
}

async function until(condition: () => boolean, what: string): Promise<void> {
  for (let i = 0; i < 1000 && !condition(); i++) await new Promise((resolve) => setTimeout(resolve, 10));
  assert.ok(condition(), `timed out waiting for ${what}`);
}

describe('amplification: bytes answered per byte of an unauthenticated request (real UDP)', () => {
  let server: RunningServer;
  const sources: Source[] = [];
  const port = (family: 4 | 6): number => server.listening.find((l) => l.transport === 'udp' && l.address === (family === 4 ? '127.0.0.1' : '::1'))!.port;
  /** Requests answered or dropped so far: each request is counted by one of them. */
  const decided = (): number => [...server.counters.requests.values()].reduce((a, b) => a + b, 0) + server.counters.drops.rate_limited;

  before(async () => {
    server = await startServer(
      buildConfig({
        'listening-ip': ['127.0.0.1', '::1'],
        'listening-port': 0,
        'min-port': 43500,
        'max-port': 43599,
        user: ['alice:alice-pw'],
        'unauth-error-rate': ERROR_RATE,
        'unauth-error-burst': ERROR_BURST,
      }),
      { logger: createLogger('silent') },
    );
  });
  after(async () => {
    for (const s of sources) s.socket.close();
    await server.stop();
  });

  /** Sends `count` requests of one kind from a fresh source address; returns request and response bytes once all were decided. */
  async function exchange(kind: Kind, from: string, count: number): Promise<{ requestBytes: number; responses: Buffer[] }> {
    const s = await openSource(from);
    sources.push(s);
    const family = from.includes(':') ? 6 : 4;
    const target = family === 4 ? '127.0.0.1' : '::1';
    const start = decided();
    const limitedBefore = server.counters.drops.rate_limited;
    let requestBytes = 0;
    for (let i = 0; i < count; i++) {
      const buf = request(kind);
      requestBytes += buf.length;
      await send(s, buf, target, port(family));
    }
    await until(() => decided() - start >= count, `${count} ${kind} requests to be decided`);
    // Every request not dropped was answered: wait for those answers to arrive.
    const answered = decided() - start - (server.counters.drops.rate_limited - limitedBefore);
    await until(() => s.received.length >= answered, `${answered} answers`);
    return { requestBytes, responses: s.received };
  }

  const ratios = new Map<string, number>();

  for (const [kind, from, bound] of [
    // XOR-MAPPED-ADDRESS has to be there (ICE needs it): 12 bytes over IPv4, 24 over IPv6.
    ['binding', '127.0.0.2', 1.6],
    ['binding', '::1', 2.2],
    // REALM and NONCE have to be there; the reason phrase need not (RFC 8489 §14.8). RFC 8489
    // §9.2.4 adds the nonce cookie (13 characters) and PASSWORD-ALGORITHMS (12 bytes); the
    // nonce's MAC went from 16 to 8 bytes to give some of that back (src/turn/auth/nonce.ts).
    ['401', '127.0.0.3', 4.4],
    ['420', '127.0.0.4', 1.5],
    ['400', '127.0.0.5', 0.7],
    ['438', '127.0.0.6', 1.2],
  ] as const) {
    it(`${kind} from ${from}: one answer is at most ${bound}x the request`, async () => {
      const { requestBytes, responses } = await exchange(kind, from, 1);
      assert.equal(responses.length, 1, 'one answer');
      const ratio = responses[0]!.length / requestBytes;
      ratios.set(`${kind} ${from}`, ratio);
      const decoded = decodeMessage(responses[0]!);
      assert.ok(decoded.ok);
      if (kind !== 'binding') {
        const error = decodeErrorCode(getAttribute(decoded.message, Attr.ErrorCode)!)!;
        assert.equal(String(error.code), kind);
        assert.equal(error.reason, '', 'no reason phrase in an error answer to an unauthenticated request');
      }
      assert.ok(ratio <= bound, `${kind}: ${responses[0]!.length} bytes for ${requestBytes} = ${ratio.toFixed(2)}x > ${bound}x`);
    });
  }

  for (const [kind, from, rate, burst] of [
    ['binding', '127.0.0.7', ERROR_RATE * BINDING_FACTOR, ERROR_BURST * BINDING_FACTOR],
    ['401', '127.0.0.8', ERROR_RATE, ERROR_BURST],
    ['420', '127.0.0.9', ERROR_RATE, ERROR_BURST],
  ] as const) {
    it(`a flood of 200 ${kind} requests from one source gets at most the burst (${burst}) plus ${rate}/s answered`, async () => {
      const started = performance.now();
      const { requestBytes, responses } = await exchange(kind, from, 200);
      const seconds = (performance.now() - started) / 1000;
      const responseBytes = responses.reduce((n, b) => n + b.length, 0);
      ratios.set(`${kind} flood ${from}`, responseBytes / requestBytes);
      // The allowance grows with however long the exchange took: a slow run can only allow more.
      const allowed = burst + Math.ceil(rate * seconds) + 1;
      assert.ok(responses.length <= allowed, `${responses.length} answers to 200 requests in ${seconds.toFixed(2)} s; at most ${allowed} allowed`);
      assert.ok(responseBytes / requestBytes < 1, `${kind} flood: ${responseBytes} bytes answered for ${requestBytes}`);
    });
  }

  after(() => {
    // The figures for docs/security.md (run with --test-reporter=spec to see them).
    for (const [what, ratio] of ratios) console.log(`amplification ${what}: ${ratio.toFixed(2)}x`);
  });
});

// The table beside coturn: the bytes each unauthenticated request makes the server
// send, per byte received, over UDP, TCP and TLS, for every message type the server
// answers without credentials, one request and a flood of 200 from one source. anyturn
// runs twice, with the per-source answer limit on (--unauth-error-rate 2
// --unauth-error-burst 8) and off (--unauth-error-rate 0); coturn (startCoturn) with its
// defaults, in the same run. Bytes are counted at the application layer (STUN bytes; for
// TLS the plaintext, not the records). docs/security.md has the table this prints.
// (Over TCP and TLS the source cannot be forged, so the figures there are for
// comparison; over UDP they are what a reflection attack gets.)

const KINDS = ['binding', 'binding-rfc3489', '401-allocate', '401-refresh', '401-create-permission', '401-channel-bind', '420', '400', '438'] as const;
type TableKind = (typeof KINDS)[number];
const FLOOD = 200;
const FLOOD_KINDS: readonly TableKind[] = ['binding', '401-allocate', '420', '438'];
const TRANSPORTS = ['udp', 'tcp', 'tls'] as const;
type Transport = (typeof TRANSPORTS)[number];

/** The smallest request that gets each answer. */
function tableRequest(kind: TableKind): Buffer {
  const id = randomBytes(12);
  const w = (method: number) => new MessageWriter(method, MessageClass.Request, id);
  switch (kind) {
    case 'binding':
      return w(Method.Binding).toBuffer();
    case 'binding-rfc3489':
      // RFC 3489 (RFC 8489 §12): no magic cookie, a 128-bit transaction id.
      return new MessageWriter(Method.Binding, MessageClass.Request, id, randomBytes(4).readUInt32BE(0) & 0x7fffffff).toBuffer();
    case '401-allocate':
      return w(Method.Allocate)
        .add(Attr.RequestedTransport, Buffer.from([17, 0, 0, 0]))
        .toBuffer();
    case '401-refresh':
      return w(Method.Refresh).toBuffer();
    case '401-create-permission':
      return w(Method.CreatePermission).addXorAddress(Attr.XorPeerAddress, '192.0.2.1', 0).toBuffer();
    case '401-channel-bind':
      return w(Method.ChannelBind).add(Attr.ChannelNumber, encodeChannelNumber(0x4000)).addXorAddress(Attr.XorPeerAddress, '192.0.2.1', 9).toBuffer();
    case '420':
      return w(Method.Binding).add(0x7ffe, Buffer.alloc(0)).toBuffer();
    case '400':
      return w(Method.Allocate).add(Attr.MessageIntegrity, Buffer.alloc(20)).toBuffer();
    case '438':
      return w(Method.Allocate)
        .addText(Attr.Username, 'alice')
        .addText(Attr.Realm, 'anyturn')
        .addText(Attr.Nonce, 'x')
        .add(Attr.MessageIntegrity, Buffer.alloc(20))
        .toBuffer();
  }
}

let nextSource = 0;
/** A fresh loopback source for every measurement: per-source limits start afresh. */
function freshSource(): string {
  const i = nextSource++;
  return `127.0.${100 + Math.floor(i / 250)}.${1 + (i % 250)}`;
}

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

/** Waits until `bytes()` stops growing for `quietMs` (or `enough()` holds), at most `maxMs`. */
async function settle(bytes: () => number, enough: () => boolean, quietMs: number, maxMs: number): Promise<void> {
  const start = Date.now();
  let last = -1;
  let since = Date.now();
  while (Date.now() - start < maxMs && !enough()) {
    const now = bytes();
    if (now !== last) {
      last = now;
      since = Date.now();
    } else if (Date.now() - since >= quietMs) return;
    await sleep(20);
  }
}

interface Measured {
  readonly requestBytes: number;
  readonly responseBytes: number;
  readonly answers: number;
}

async function measure(server: RunningTurnServer, transport: Transport, kind: TableKind, count: number): Promise<Measured> {
  const source = freshSource();
  const packets = Array.from({ length: count }, () => tableRequest(kind));
  const requestBytes = packets.reduce((n, p) => n + p.length, 0);
  let responseBytes = 0;
  let answers = 0;
  // One answer: wait for it (or a second of silence); a flood: until 300 ms of silence.
  const enough = (): boolean => count === 1 && answers >= 1;
  if (transport === 'udp') {
    const socket = dgram.createSocket('udp4');
    await new Promise<void>((resolve) => socket.bind(0, source, () => resolve()));
    socket.on('message', (m) => {
      responseBytes += m.length;
      answers++;
    });
    for (const p of packets) await new Promise<void>((resolve) => socket.send(p, server.port, server.host, () => resolve()));
    await settle(() => responseBytes, enough, count === 1 ? 1000 : 300, 5000);
    socket.close();
  } else {
    const port = transport === 'tls' ? server.tlsPort! : server.port;
    const socket = await new Promise<net.Socket>((resolve, reject) => {
      const s =
        transport === 'tls'
          ? tls.connect({ socket: net.connect({ host: server.host, port, localAddress: source }), rejectUnauthorized: false }, () => resolve(s))
          : net.connect({ host: server.host, port, localAddress: source }, () => resolve(s));
      s.once('error', reject);
    });
    socket.on('error', () => undefined);
    let pending = Buffer.alloc(0);
    socket.on('data', (chunk: Buffer) => {
      responseBytes += chunk.length;
      // Count whole STUN messages (20-byte header plus its length).
      pending = Buffer.concat([pending, chunk]);
      while (pending.length >= 20 && pending.length >= 20 + pending.readUInt16BE(2)) {
        pending = pending.subarray(20 + pending.readUInt16BE(2));
        answers++;
      }
    });
    socket.write(Buffer.concat(packets));
    await settle(() => responseBytes, enough, count === 1 ? 1000 : 300, 5000);
    socket.destroy();
  }
  return { requestBytes, responseBytes, answers };
}

describe('amplification over UDP, TCP and TLS: anyturn with the answer limit on and off, beside coturn', () => {
  let cert: SelfSignedCertificate;
  const servers: { name: string; server: RunningTurnServer }[] = [];
  const rows: string[] = [];

  before(async () => {
    cert = makeSelfSignedCertificate();
    const common = { users: [{ name: 'alice', password: 'alice-pw' }], realm: 'anyturn', tls: { certFile: cert.certFile, keyFile: cert.keyFile } };
    servers.push({
      name: 'anyturn, limit on',
      server: await startAnyturn({ ...common, extraArgs: ['--unauth-error-rate', '2', '--unauth-error-burst', '8'] }),
    });
    servers.push({ name: 'anyturn, limit off', server: await startAnyturn({ ...common, extraArgs: ['--unauth-error-rate', '0'] }) });
    servers.push({ name: 'coturn', server: await startCoturn(common) });
  });
  after(async () => {
    for (const { server } of servers) await server.stop();
    cert?.remove();
    // The table of docs/security.md (run with --test-reporter=spec to see it).
    console.log(['| server | transport | request | request bytes | answers | bytes out | ratio |', '|---|---|---|---|---|---|---|', ...rows].join('\n'));
  });

  const ratio = (m: Measured): string => (m.responseBytes / m.requestBytes).toFixed(2);

  for (const transport of TRANSPORTS) {
    it(`${transport}: one answer per unauthenticated request, and a flood of ${FLOOD} answered at under 1 byte per byte with the limit on`, async () => {
      for (const { name, server } of servers) {
        for (const kind of KINDS) {
          const m = await measure(server, transport, kind, 1);
          rows.push(`| ${name} | ${transport} | ${kind} | ${m.requestBytes} | ${m.answers} | ${m.responseBytes} | ${ratio(m)}x |`);
          if (name.startsWith('anyturn')) assert.equal(m.answers, 1, `${name} ${transport} ${kind}: one answer`);
        }
        for (const kind of FLOOD_KINDS) {
          const m = await measure(server, transport, kind, FLOOD);
          rows.push(`| ${name} | ${transport} | flood of ${FLOOD} ${kind} | ${m.requestBytes} | ${m.answers} | ${m.responseBytes} | ${ratio(m)}x |`);
          if (name === 'anyturn, limit on') assert.ok(m.responseBytes < m.requestBytes, `${name} ${transport} flood of ${kind}: ${ratio(m)}x`);
          // Without the limit every request is answered: the limit is what makes the difference.
          if (name === 'anyturn, limit off') assert.equal(m.answers, FLOOD, `${name} ${transport} flood of ${kind}: every request answered`);
        }
        // The harness sees coturn's answers too (a Binding is answered by every STUN server).
        if (name === 'coturn') assert.ok(rows.some((r) => r.startsWith(`| coturn | ${transport} | binding |`) && !r.includes('| 0 | 0 |')));
      }
    });
  }
});

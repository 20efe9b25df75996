// Amplification over real UDP on loopback: how many bytes the server sends back
// for each byte of a request nobody has authenticated (the source of such a
// request can be spoofed, so the answer may hit a victim). Counts bytes only: the
// per-message ratio of each answer, and the ratio over a flood from one source,
// which the per-source limits bound. docs/security.md lists the figures.

import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import dgram from 'node:dgram';
import { buildConfig } from '../../src/config/index.js';
import { createLogger } from '../../src/ops/log.js';
import { type RunningServer, startServer } from '../../src/server.js';
import { decodeErrorCode } from '../../src/stun/attributes.js';
import { Attr, MessageClass, Method } from '../../src/stun/constants.js';
import { decodeMessage, getAttribute } from '../../src/stun/message.js';
import { MessageWriter } from '../../src/stun/writer.js';

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

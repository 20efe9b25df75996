// Loopback-only helpers: every socket here binds to and sends to 127.0.0.1.
import { createSocket, type Socket } from 'node:dgram';
import { randomBytes } from 'node:crypto';
import net from 'node:net';

export const LOOPBACK = '127.0.0.1';

function bindUdp(port: number): Promise<Socket | undefined> {
  return new Promise((resolve) => {
    const s = createSocket('udp4');
    s.once('error', () => {
      s.close();
      resolve(undefined);
    });
    s.bind(port, LOOPBACK, () => resolve(s));
  });
}

async function closeAll(sockets: readonly Socket[]): Promise<void> {
  await Promise.all(sockets.map((s) => new Promise<void>((r) => s.close(() => r()))));
}

/** A free UDP port p on 127.0.0.1 such that p+1 .. p+extra are free too. */
export async function freeUdpPort(extra = 0): Promise<number> {
  for (let attempt = 0; attempt < 50; attempt++) {
    const first = await bindUdp(0);
    if (first === undefined) continue;
    const port = first.address().port;
    const held: Socket[] = [first];
    let ok = port + extra <= 65535;
    for (let i = 1; ok && i <= extra; i++) {
      const s = await bindUdp(port + i);
      if (s === undefined) ok = false;
      else held.push(s);
    }
    await closeAll(held);
    if (ok) return port;
  }
  throw new Error('no free UDP port on 127.0.0.1');
}

export interface PortRange {
  readonly min: number;
  readonly max: number;
}

/** A block of `size` UDP ports on 127.0.0.1 that are all free right now. */
export async function freeUdpRange(size: number): Promise<PortRange> {
  for (let attempt = 0; attempt < 30; attempt++) {
    // Above the usual relay ranges of coturn (49152+ by default) and below 65535.
    const min = 50000 + Math.floor(Math.random() * (15000 - size));
    const held: Socket[] = [];
    let ok = true;
    for (let p = min; p < min + size; p++) {
      const s = await bindUdp(p);
      if (s === undefined) {
        ok = false;
        break;
      }
      held.push(s);
    }
    await closeAll(held);
    if (ok) return { min, max: min + size - 1 };
  }
  throw new Error(`no free block of ${size} UDP ports on 127.0.0.1`);
}

/**
 * Sends a STUN Binding request (RFC 8489 §6) to 127.0.0.1:port and resolves true
 * if any response with the same transaction id arrives within `timeoutMs`.
 */
export function stunBindingAnswers(port: number, timeoutMs: number): Promise<boolean> {
  return new Promise((resolve) => {
    const s = createSocket('udp4');
    const req = Buffer.alloc(20);
    req.writeUInt16BE(0x0001, 0); // Binding request
    req.writeUInt16BE(0, 2); // no attributes
    req.writeUInt32BE(0x2112a442, 4); // magic cookie
    const tid = randomBytes(12);
    tid.copy(req, 8);
    let settled = false;
    const finish = (ok: boolean): void => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      s.close();
      resolve(ok);
    };
    const timer = setTimeout(() => finish(false), timeoutMs);
    s.on('error', () => finish(false));
    s.on('message', (msg) => {
      if (msg.length >= 20 && msg.subarray(8, 20).equals(tid)) finish(true);
    });
    s.bind(0, LOOPBACK, () => {
      s.send(req, port, LOOPBACK, (err) => {
        if (err) finish(false);
      });
    });
  });
}

function listenTcp(port: number): Promise<net.Server | undefined> {
  return new Promise((resolve) => {
    const server = net.createServer();
    server.once('error', () => resolve(undefined));
    server.listen({ port, host: LOOPBACK, exclusive: true }, () => resolve(server));
  });
}

/** A port on 127.0.0.1 free for both UDP and TCP right now (for a server that listens on both). */
export async function freeUdpTcpPort(): Promise<number> {
  for (let attempt = 0; attempt < 50; attempt++) {
    const port = await freeUdpPort();
    const server = await listenTcp(port);
    if (server === undefined) continue;
    await new Promise<void>((r) => server.close(() => r()));
    return port;
  }
  throw new Error('no port on 127.0.0.1 free for both UDP and TCP');
}

/** A TCP port on 127.0.0.1 free right now (redis-server, anyturn's ops endpoint). */
export function freeTcpPort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = net.createServer();
    s.once('error', reject);
    s.listen(0, LOOPBACK, () => {
      const a = s.address();
      const port = a !== null && typeof a === 'object' ? a.port : 0;
      s.close(() => (port > 0 ? resolve(port) : reject(new Error('no free TCP port'))));
    });
  });
}

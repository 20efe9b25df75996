// A TCP proxy to a local server (Redis in the tests) whose connections can be frozen
// one by one: still open, but nothing passes either way. That is what a client sees
// after a failover to a node that no longer hears it, and no socket error tells it so.

import assert from 'node:assert/strict';
import net from 'node:net';

export interface ProxiedConnection {
  /** What the client sent so far (latin1, first 4 KiB), to tell connections apart. */
  sent: string;
  frozen: boolean;
}

export interface FreezableProxy {
  readonly port: number;
  /** Freezes every open connection `match` picks; returns how many it froze. */
  freeze(match: (c: ProxiedConnection) => boolean): number;
  /** How many connections were accepted so far. */
  connections(): number;
  close(): Promise<void>;
}

export async function startFreezableProxy(targetPort: number): Promise<FreezableProxy> {
  const all: ProxiedConnection[] = [];
  const sockets = new Set<net.Socket>();
  const server = net.createServer((client) => {
    const conn: ProxiedConnection = { sent: '', frozen: false };
    all.push(conn);
    const upstream = net.connect({ host: '127.0.0.1', port: targetPort });
    for (const s of [client, upstream]) {
      sockets.add(s);
      s.on('error', () => undefined);
      s.on('close', () => {
        sockets.delete(s);
        client.destroy();
        upstream.destroy();
      });
    }
    client.on('data', (chunk: Buffer) => {
      if (conn.sent.length < 4096) conn.sent += chunk.toString('latin1');
      if (!conn.frozen) upstream.write(chunk);
    });
    upstream.on('data', (chunk: Buffer) => {
      if (!conn.frozen) client.write(chunk);
    });
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const address = server.address();
  assert.ok(address && typeof address === 'object');
  return {
    port: address.port,
    freeze(match) {
      let n = 0;
      for (const c of all) {
        if (!c.frozen && match(c)) {
          c.frozen = true;
          n++;
        }
      }
      return n;
    },
    connections: () => all.length,
    close: () =>
      new Promise<void>((resolve) => {
        for (const s of sockets) s.destroy();
        server.close(() => resolve());
      }),
  };
}

// The other side of a relay in the tests: a plain UDP peer.

import dgram from 'node:dgram';
import type { Endpoint } from './messages.js';

/** A plain UDP peer on 127.0.0.1 that records what it receives and can answer. */
export class TestPeer {
  readonly received: { data: Buffer; from: Endpoint }[] = [];
  private constructor(readonly socket: dgram.Socket) {
    socket.on('message', (data, rinfo) => this.received.push({ data, from: { address: rinfo.address, port: rinfo.port } }));
  }

  /** A peer on loopback: 127.0.0.1 by default, or '::1'. */
  static async open(address: '127.0.0.1' | '::1' = '127.0.0.1'): Promise<TestPeer> {
    const socket = dgram.createSocket(address === '::1' ? 'udp6' : 'udp4');
    await new Promise<void>((resolve) => socket.bind(0, address, () => resolve()));
    return new TestPeer(socket);
  }

  get endpoint(): Endpoint {
    const a = this.socket.address();
    return { address: a.address, port: a.port };
  }

  send(data: Buffer, to: Endpoint): void {
    this.socket.send(data, to.port, to.address);
  }

  async waitFor(count: number, timeoutMs = 2000): Promise<{ data: Buffer; from: Endpoint }[]> {
    const deadline = Date.now() + timeoutMs;
    while (this.received.length < count && Date.now() < deadline) await new Promise((r) => setTimeout(r, 10));
    return this.received;
  }

  close(): void {
    try {
      this.socket.close();
    } catch {
      // already closed
    }
  }
}

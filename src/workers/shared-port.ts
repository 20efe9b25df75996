// How the primary's listening sockets and the workers' session sockets share one UDP
// port, and how many handed-over datagrams may wait in a worker's IPC channel.
//
// Sharing: with SO_REUSEADDR (the only reuse option Node 20's dgram has; libuv sets
// SO_REUSEADDR, not SO_REUSEPORT, on Linux) Linux lets ANY local user bind the same
// address and port with SO_REUSEADDR too, and connect() that socket to a chosen
// client: the kernel prefers the connected socket, so that client's datagrams go to
// the intruder. With SO_REUSEPORT the kernel admits to the group only sockets of the
// same effective UID (verified on Linux 6.x: another UID's bind with SO_REUSEADDR,
// SO_REUSEPORT or both gets EADDRINUSE), and it still prefers a connected member of
// the group (Linux >= 5.0), which is what the sessions rely on. So SO_REUSEPORT is
// used wherever the runtime can set it (Node >= 22.12 / 23.1: dgram's reusePort),
// found by trying it once; elsewhere SO_REUSEADDR remains, the primary logs a
// warning at start, and such hosts must not have untrusted local users (README).

import dgram from 'node:dgram';

export type PortSharing = 'reuseport' | 'reuseaddr';

let sharing: PortSharing = 'reuseaddr';

/** The socket options for a socket on the shared port (after detectPortSharing). */
export function sharedPortOptions(): { reuseAddr: boolean; reusePort?: boolean } {
  return sharing === 'reuseport' ? { reuseAddr: false, reusePort: true } : { reuseAddr: true };
}

/** What this process uses (tests, the start-up log). */
export function portSharing(): PortSharing {
  return sharing;
}

function bind(port: number): Promise<dgram.Socket | undefined> {
  return new Promise((resolve) => {
    // An option this Node does not know is ignored: the second bind below then fails.
    const socket = dgram.createSocket({ type: 'udp4', reusePort: true } as dgram.SocketOptions);
    socket.once('error', () => {
      socket.close();
      resolve(undefined);
    });
    socket.bind({ address: '127.0.0.1', port, exclusive: true }, () => resolve(socket));
  });
}

/**
 * Finds out once whether this runtime sets SO_REUSEPORT: two sockets on one loopback
 * port, both asking for it; the second bind succeeds only if it was set. Every process
 * of the server runs the same Node, so they all agree.
 */
export async function detectPortSharing(): Promise<PortSharing> {
  const first = await bind(0);
  if (!first) return (sharing = 'reuseaddr');
  const second = await bind(first.address().port);
  first.close();
  second?.close();
  return (sharing = second ? 'reuseport' : 'reuseaddr');
}

/** Datagrams handed to one worker and not yet written to its IPC channel, at most. */
export const MAX_IPC_IN_FLIGHT = 10_000;

/**
 * The primary's IPC backpressure towards one worker. worker.send() queues in the
 * parent's memory when the channel is full (it returns false, and its callback runs
 * once the message is written): a junk flood faster than the worker reads would queue
 * without bound. Past `max` messages in flight a datagram is dropped and counted.
 * `release` is made once per worker, not per message.
 */
export class IpcWindow {
  inFlight = 0;
  dropped = 0;
  readonly release = (): void => {
    this.inFlight--;
  };
  constructor(readonly max: number = MAX_IPC_IN_FLIGHT) {}

  /** True when one more message may go (counted in flight); false: drop it (counted). */
  acquire(): boolean {
    if (this.inFlight >= this.max) {
      this.dropped++;
      return false;
    }
    this.inFlight++;
    return true;
  }
}

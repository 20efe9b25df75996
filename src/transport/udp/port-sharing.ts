// How the primary's listening sockets and the workers' session sockets (src/workers/)
// share one UDP port.
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

import type dgram from 'node:dgram';
import { bindUdpSocket, createUdpSocket } from './socket.js';

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

async function bind(port: number): Promise<dgram.Socket | undefined> {
  // An option this Node does not know is ignored: the second bind below then fails.
  const socket = createUdpSocket('127.0.0.1', { reusePort: true });
  try {
    await bindUdpSocket(socket, '127.0.0.1', port);
    return socket;
  } catch {
    socket.close();
    return undefined;
  }
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

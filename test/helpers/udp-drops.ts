// Datagrams the kernel dropped at a UDP socket because its receive buffer was
// full (the "drops" column of /proc/net/udp and /proc/net/udp6, per socket).
// A test that floods loopback uses it to tell the server's loss from the
// kernel's: a datagram dropped before the process could read it was never
// seen by the server, so no counter of the server's can account for it.

import { readFileSync } from 'node:fs';

/** Sum of the kernel's receive drops over the sockets bound to local `port` in this network namespace. */
export function udpReceiveDrops(port: number): number {
  let drops = 0;
  for (const file of ['/proc/net/udp', '/proc/net/udp6']) {
    let text: string;
    try {
      text = readFileSync(file, 'utf8');
    } catch {
      continue; // no IPv6, or not Linux
    }
    for (const line of text.split('\n').slice(1)) {
      const fields = line.trim().split(/\s+/);
      const local = fields[1];
      if (local === undefined || fields.length < 13) continue;
      const localPort = Number.parseInt(local.slice(local.lastIndexOf(':') + 1), 16);
      if (localPort === port) drops += Number(fields[fields.length - 1]);
    }
  }
  return drops;
}

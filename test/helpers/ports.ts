// Port numbers for test processes that cannot bind port 0 and report back.

import { readFileSync } from 'node:fs';

/**
 * The first port of the kernel's ephemeral range (net.ipv4.ip_local_port_range):
 * a port below it is never taken by a socket bound to port 0 or by an outgoing
 * connection, so one picked free stays free until its process binds it.
 */
export function ephemeralLowBound(): number {
  try {
    const text = readFileSync('/proc/sys/net/ipv4/ip_local_port_range', 'utf8');
    const low = Number(text.trim().split(/\s+/)[0]);
    if (Number.isInteger(low) && low > 0) return low;
  } catch {
    // Not Linux: fall through.
  }
  return 32768;
}

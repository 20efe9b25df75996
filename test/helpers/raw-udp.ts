// Sends a UDP datagram with a chosen source port, 0 included, which no socket API
// can bind: a raw socket (root) through Debian's python3, with the UDP header
// written by hand. Loopback only; IPv4 only (IPv4 allows a zero UDP checksum).

import { execFile } from 'node:child_process';

const SCRIPT = `
import socket, struct, sys
dst, dport, sport = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_UDP)
for arg in sys.argv[4:]:
    payload = bytes.fromhex(arg)
    s.sendto(struct.pack('!HHHH', sport, dport, 8 + len(payload), 0) + payload, (dst, 0))
`;

/** Sends each payload, in order, from 127.0.0.1:sourcePort to 127.0.0.1:port (root only). */
export function sendRawUdpV4(port: number, sourcePort: number, payloads: readonly Buffer[], to = '127.0.0.1'): Promise<void> {
  if (!to.startsWith('127.')) throw new Error(`raw datagrams go to loopback only, not ${to}`);
  return new Promise((resolve, reject) => {
    execFile('python3', ['-c', SCRIPT, to, String(port), String(sourcePort), ...payloads.map((p) => p.toString('hex'))], (err, _stdout, stderr) => {
      if (err) reject(new Error(`raw UDP send failed: ${err.message} ${stderr}`));
      else resolve();
    });
  });
}

/** True when raw sockets work here (root, python3 present). */
export async function canSendRaw(): Promise<boolean> {
  if (process.getuid?.() !== 0) return false;
  try {
    await new Promise<void>((resolve, reject) =>
      execFile('python3', ['-c', 'import socket; socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_UDP)'], (err) =>
        err ? reject(err) : resolve(),
      ),
    );
    return true;
  } catch {
    return false;
  }
}

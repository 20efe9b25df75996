// The peer of the anycast tests, run inside the peer namespace:
//   ip netns exec P node echo-peer.js --bind 198.18.20.2 --ports 40000,40001
// Echoes every datagram back to its source, and remembers, for each probe
// (see wire.ts), which relayed address it came from, so the test can tell
// client->peer losses from peer->client ones and check that the relayed
// address did not change across the reroute. Prints {"event":"listening"}
// once bound; a stdin line {"cmd":"report"} (or SIGTERM) prints
// {"event":"report", ...}.

import dgram from 'node:dgram';
import { decodeProbe, nowMs, onStdinCommands, parseFlags, requireFlags } from './wire.js';

interface PeerReport {
  readonly event: 'report';
  /** Distinct source addresses ("ip:port") of datagrams received. */
  readonly sources: string[];
  /** [stream, seq, index into sources, local port, receivedAtMs] per probe received. */
  readonly probes: [number, number, number, number, number][];
  /** Datagrams that were not probes. */
  readonly other: number;
}

async function main(): Promise<void> {
  const flags = parseFlags(process.argv.slice(2));
  if (!requireFlags(flags, ['bind', 'ports'], 'usage: echo-peer --bind <ip> --ports <p1,p2,...>')) return;
  const bind = flags.get('bind')!;
  const ports = flags.get('ports')!.split(',').map(Number);
  const sources: string[] = [];
  const sourceIndex = new Map<string, number>();
  const probes: PeerReport['probes'] = [];
  let other = 0;
  const sockets: dgram.Socket[] = [];
  for (const port of ports) {
    const s = dgram.createSocket('udp4');
    s.on('message', (buf, rinfo) => {
      s.send(buf, rinfo.port, rinfo.address);
      const p = decodeProbe(buf);
      if (!p) {
        other++;
        return;
      }
      const from = `${rinfo.address}:${rinfo.port}`;
      let i = sourceIndex.get(from);
      if (i === undefined) {
        i = sources.length;
        sources.push(from);
        sourceIndex.set(from, i);
      }
      probes.push([p.stream, p.seq, i, port, Math.round(nowMs())]);
    });
    await new Promise<void>((resolve, reject) => {
      s.once('error', reject);
      s.bind(port, bind, () => resolve());
    });
    sockets.push(s);
  }
  const report = (): void => {
    const r: PeerReport = { event: 'report', sources, probes, other };
    process.stdout.write(`${JSON.stringify(r)}\n`);
  };
  onStdinCommands((cmd) => {
    if (cmd.cmd === 'report') report();
  });
  process.once('SIGTERM', () => {
    report();
    for (const s of sockets) s.close();
    process.exit(0);
  });
  process.stdout.write(`${JSON.stringify({ event: 'listening', bind, ports })}\n`);
}

await main();

// The peer of the soak and failover runs (docs/reliability.md): echoes every datagram
// to its source from each of --ports on --bind, and keeps nothing, so an hour of
// probes costs it no memory. Prints {"event":"listening"} once bound.
//   node echo.js --bind 198.18.20.2 --ports 40000
// Run without flags (as node --test may), it does nothing.

import dgram from 'node:dgram';
import { parseFlags, requireFlags } from '../anycast/wire.js';

async function main(): Promise<void> {
  const flags = parseFlags(process.argv.slice(2));
  if (!requireFlags(flags, ['bind', 'ports'], 'usage: echo --bind <ip> --ports <p1,p2,...>')) return;
  const bind = flags.get('bind')!;
  const ports: number[] = [];
  for (const port of flags.get('ports')!.split(',').map(Number)) {
    const s = dgram.createSocket({ type: bind.includes(':') ? 'udp6' : 'udp4', recvBufferSize: 4 << 20, sendBufferSize: 4 << 20 });
    s.on('message', (buf, rinfo) => s.send(buf, rinfo.port, rinfo.address));
    await new Promise<void>((resolve, reject) => {
      s.once('error', reject);
      s.bind(port, bind, () => resolve());
    });
    ports.push(s.address().port);
  }
  process.stdout.write(`${JSON.stringify({ event: 'listening', bind, ports })}\n`);
}

await main();

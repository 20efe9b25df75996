// One-shot Allocate prober for the anycast tests, run inside the client namespace:
//   ip netns exec C node allocate-probe.js --server 198.18.100.1:3478 --bind 198.18.10.2
//     --user alice:secret --realm anycast.test [--until 200 --deadline-ms 15000 --interval-ms 500]
// Each attempt opens a fresh socket (a fresh 5-tuple) and sends an Allocate;
// a successful allocation is released again (Refresh lifetime 0). Without
// --until it makes one attempt. Prints {"event":"probe","attempts":[...],"final":code};
// an attempt that got 200 carries its relayed address ("ip:port").

import { TestTurnClient, reasonOf } from '../helpers/turn-client.js';
import { nowMs, parseEndpoint, parseFlags, requireFlags } from './wire.js';

async function main(): Promise<void> {
  const flags = parseFlags(process.argv.slice(2));
  const needed = ['server', 'bind', 'user', 'realm'];
  if (!requireFlags(flags, needed, `usage: allocate-probe ${needed.map((n) => `--${n} X`).join(' ')} [--until CODE --deadline-ms MS]`)) return;
  const server = parseEndpoint(flags.get('server')!);
  const [username, password] = flags.get('user')!.split(':') as [string, string];
  const credentials = { username, password, realm: flags.get('realm')! };
  const until = flags.has('until') ? Number(flags.get('until')) : undefined;
  const deadline = nowMs() + Number(flags.get('deadline-ms') ?? 15000);
  const intervalMs = Number(flags.get('interval-ms') ?? 500);
  const attempts: { atMs: number; code: number; reason?: string; error?: string; relayed?: string }[] = [];
  for (;;) {
    const client = await TestTurnClient.open(server, credentials, { address: flags.get('bind')! });
    const atMs = Math.round(nowMs());
    try {
      const { response, relayed } = await client.allocate();
      const reason = response.code === 200 ? undefined : reasonOf(response.message);
      // The relayed address tells which node answered (forward mode: the node's own address).
      attempts.push({ atMs, code: response.code, ...(reason ? { reason } : {}), ...(relayed ? { relayed: `${relayed.address}:${relayed.port}` } : {}) });
      if (response.code === 200) await client.refresh(0).catch(() => undefined);
    } catch (err) {
      attempts.push({ atMs, code: 0, error: (err as Error).message });
    } finally {
      client.close();
    }
    const last = attempts[attempts.length - 1]!;
    if (until === undefined || last.code === until || nowMs() + intervalMs > deadline) break;
    await new Promise((r) => setTimeout(r, intervalMs));
  }
  process.stdout.write(`${JSON.stringify({ event: 'probe', attempts, final: attempts[attempts.length - 1]!.code })}\n`);
}

await main();

// Fresh allocations for the anycast tests, run inside the client namespace:
//   ip netns exec C node fresh-allocations.js --server 198.18.100.1:3478 --bind 198.18.10.2
//     --user alice:secret --realm anycast.test --peer 198.18.20.2:40001 --count 10
// Opens --count sockets (so --count 5-tuples), allocates on each, creates a
// permission for --peer and sends one probe (wire.ts, stream Stream id
// FRESH_STREAM, seq = index) to it as a Send indication, then waits for the
// echo (a Data indication). Prints
//   {"event":"allocated","results":[{"code":200,"relayed":{...},"permission":200,"echoed":true},...]}
// and holds the allocations until a stdin line {"cmd":"release"}, then
// releases them (Refresh lifetime 0) and prints {"event":"released","codes":[...]}
// and exits. It also releases and exits after --hold-ms (default 60 s).

import { type Endpoint, TestTurnClient } from '../helpers/turn-client.js';
import { decodeProbe, encodeProbe, nowMs, onStdinCommands, parseEndpoint, parseFlags, requireFlags } from './wire.js';

/** Stream id of these probes (wire.ts uses 0..3). */
export const FRESH_STREAM = 5;
const ECHO_WAIT_MS = 2000;

export interface FreshResult {
  readonly code: number;
  readonly relayed?: Endpoint;
  readonly permission?: number;
  readonly echoed?: boolean;
  readonly error?: string;
}

function emit(record: Record<string, unknown>): void {
  process.stdout.write(`${JSON.stringify(record)}\n`);
}

async function main(): Promise<void> {
  const flags = parseFlags(process.argv.slice(2));
  const needed = ['server', 'bind', 'user', 'realm', 'peer', 'count'];
  if (!requireFlags(flags, needed, `usage: fresh-allocations ${needed.map((n) => `--${n} X`).join(' ')} [--hold-ms 60000]`)) return;
  const server = parseEndpoint(flags.get('server')!);
  const peer = parseEndpoint(flags.get('peer')!);
  const [username, password] = flags.get('user')!.split(':') as [string, string];
  const credentials = { username, password, realm: flags.get('realm')! };
  const count = Number(flags.get('count'));
  const holdMs = Number(flags.get('hold-ms') ?? 60_000);

  const clients: TestTurnClient[] = [];
  const results: FreshResult[] = [];
  for (let i = 0; i < count; i++) {
    const c = await TestTurnClient.open(server, credentials, { address: flags.get('bind')! });
    clients.push(c);
    try {
      const { response, relayed } = await c.allocate();
      if (!relayed) {
        results.push({ code: response.code });
        continue;
      }
      const permission = (await c.createPermission(peer)).code;
      let echoed = false;
      if (permission === 200) {
        const before = c.received.length;
        c.sendIndication(peer, encodeProbe(FRESH_STREAM, i));
        const deadline = nowMs() + ECHO_WAIT_MS;
        while (!echoed && nowMs() < deadline) {
          const got = await c.waitForReceived(c.received.length + 1, Math.max(1, deadline - nowMs()));
          echoed = got.slice(before).some((r) => {
            const p = decodeProbe(r.data);
            return p !== undefined && p.stream === FRESH_STREAM && p.seq === i;
          });
        }
      }
      results.push({ code: 200, relayed, permission, echoed });
    } catch (err) {
      results.push({ code: 0, error: (err as Error).message });
    }
  }
  emit({ event: 'allocated', results });

  let releasing: Promise<void> | undefined;
  const release = (): Promise<void> =>
    (releasing ??= (async () => {
      const codes = await Promise.all(
        clients.map(async (c, i) => {
          if (results[i]?.code !== 200) return -1;
          try {
            return (await c.refresh(0)).code;
          } catch {
            return 0;
          }
        }),
      );
      emit({ event: 'released', codes });
      for (const c of clients) c.close();
      process.exit(0);
    })());
  onStdinCommands((cmd) => {
    if (cmd.cmd === 'release') void release();
  });
  setTimeout(() => void release(), holdMs).unref();
  // Keeps the process alive until released (stdin alone may close early).
  setInterval(() => undefined, 1000);
}

await main();

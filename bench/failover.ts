// Redis failover under load (docs/reliability.md, "Redis failover under load"):
//   npm run failover
//   npm run failover -- --allocations 1000 --pps 400 --processes 4 --refresh-seconds 10
// Three anyturn processes on one Redis Sentinel group (a master, a replica, three
// sentinels on 127.0.0.1), --allocations live allocations relaying probes and
// refreshing, spread over --processes load-client processes; the master is SIGKILLed.
// test/reliability/failover.ts says what is counted. Needs redis-server (and its
// --sentinel mode) and redis-tools. Prints a JSON report; exits 1 when a probe or an
// allocation was lost or a request failed.

import { runFailover } from '../test/reliability/failover.js';

interface Args {
  allocations: number;
  pps: number;
  processes: number;
  refreshSeconds: number;
  beforeSeconds: number;
  afterSeconds: number;
}

function parseArgs(argv: readonly string[]): Args {
  const a: Args = { allocations: 1000, pps: 400, processes: 4, refreshSeconds: 10, beforeSeconds: 10, afterSeconds: 15 };
  for (let i = 0; i < argv.length; i += 2) {
    const name = argv[i]!.replace(/^--/, '').replace(/-([a-z])/g, (_, c: string) => c.toUpperCase());
    const n = Number(argv[i + 1]);
    if (!(name in a) || !(n > 0)) throw new Error(`${argv[i]} ${argv[i + 1]}: flags are ${Object.keys(a).join(', ')} (kebab-case), each a positive number`);
    (a as unknown as Record<string, number>)[name] = n;
  }
  return a;
}

async function main(): Promise<void> {
  const a = parseArgs(process.argv.slice(2));
  const started = Date.now();
  const r = await runFailover({
    allocations: a.allocations,
    pps: a.pps,
    processes: a.processes,
    refreshMs: a.refreshSeconds * 1000,
    beforeMs: a.beforeSeconds * 1000,
    // At least one refresh round after the writes resumed: every record is rewritten.
    afterMs: Math.max(a.afterSeconds, a.refreshSeconds + 2) * 1000,
    deadlineMs: 120_000,
    log: (text) => console.error(`[failover +${((Date.now() - started) / 1000).toFixed(1)} s] ${text}`),
  });
  const pass =
    r.lost === 0 && r.echoed === r.sent && r.failedAllocations === 0 && Object.keys(r.failures).length === 0 && r.missingAfter === 0 && r.nodesRunning;
  console.log(JSON.stringify({ args: a, ...r, pass }, null, 2));
  process.exit(pass ? 0 : 1);
}

await main();

// npm run fuzz: a million mutated packets against the anyturn CLI on loopback (the
// campaign of test/helpers/fuzz/campaign.ts: STUN/TURN seeds of every method with every
// attribute, mutated and signed, byte damage, ChannelData at the channel edges, noise;
// over UDP, TCP and TLS cut at random points; the peer side too), while three
// allocations relay ChannelData and Send indications to an echo peer. Reports crashes
// (the process must stay up), error-level log lines (none allowed), the relaying
// allocations' loss, drops by reason from /metrics, and RSS before and after.
// docs/reliability.md has the figures. Not a CI test: test/integration/fuzz.test.ts runs
// the same campaign with 20,000 packets.
//
// Usage: node dist/bench/fuzz.js [--packets N] [--seed S] [--no-tls]
// Exit code 1 when anything above went wrong.

import { readFileSync } from 'node:fs';
import { parseArgs } from 'node:util';
import { FUZZ_PEER_FLAGS, FUZZ_REALM, FUZZ_USERS, passwordOf, runCampaign } from '../test/helpers/fuzz/campaign.js';
import { SeededRandom } from '../test/helpers/random.js';
import { findFreeTcpPort, parseLogLines, startAnyturn } from '../test/helpers/anyturn-process.js';
import { makeSelfSignedCertificate } from '../test/helpers/tls-cert.js';

const { values } = parseArgs({
  options: {
    packets: { type: 'string', default: '1000000' },
    seed: { type: 'string', default: String(0x5eed2024) },
    'no-tls': { type: 'boolean', default: false },
  },
});
const packets = Number(values.packets);
const seed = Number(values.seed) >>> 0;

function rssKiB(pid: number): number {
  const line = readFileSync(`/proc/${pid}/status`, 'utf8')
    .split('\n')
    .find((l) => l.startsWith('VmRSS:'));
  return Number(line?.split(/\s+/)[1] ?? Number.NaN);
}

async function scrape(port: number): Promise<Map<string, number>> {
  const text = await (await fetch(`http://127.0.0.1:${port}/metrics`)).text();
  const out = new Map<string, number>();
  for (const line of text.split('\n')) {
    const m = /^(anyturn_(?:dropped_packets_total|stream_framing_errors_total|client_connections_closed_total)\{[^}]*\}) (\d+(?:\.\d+)?)$/.exec(line);
    if (m && Number(m[2]) > 0) out.set(m[1]!, Number(m[2]));
  }
  return out;
}

const cert = values['no-tls'] ? undefined : makeSelfSignedCertificate();
const metricsPort = await findFreeTcpPort();
const flags: string[] = ['--metrics-port', String(metricsPort), '--nonce-lifetime', '86400'];
for (const range of FUZZ_PEER_FLAGS['allowed-peer-ip']) flags.push('--allowed-peer-ip', range);
for (const range of FUZZ_PEER_FLAGS['denied-peer-ip']) flags.push('--denied-peer-ip', range);
const server = await startAnyturn({
  realm: FUZZ_REALM,
  users: FUZZ_USERS.map((name) => ({ name, password: passwordOf(name) })),
  ...(cert ? { tls: { certFile: cert.certFile, keyFile: cert.keyFile } } : {}),
  extraArgs: flags,
});
const pid = server.process.child.pid!;
let exitCode = 0;
try {
  const rssBefore = rssKiB(pid);
  const started = performance.now();
  let lastReport = started;
  console.log(`fuzz: ${packets} packets, seed 0x${seed.toString(16)}, anyturn pid ${pid}, RSS ${rssBefore} KiB`);
  const result = await runCampaign({
    server: { address: server.host, port: server.port, tlsPort: server.tlsPort },
    rng: new SeededRandom(seed),
    packets,
    onBatch: (sent) => {
      const now = performance.now();
      if (now - lastReport < 10_000) return;
      lastReport = now;
      console.log(`  ${sent} sent, ${((now - started) / 1000).toFixed(0)} s, RSS ${rssKiB(pid)} KiB`);
    },
  });
  const seconds = (performance.now() - started) / 1000;
  const alive = server.process.isRunning();
  const rssAfter = alive ? rssKiB(pid) : Number.NaN;
  const drops = alive ? await scrape(metricsPort) : new Map<string, number>();
  const errors = parseLogLines(server.process.stdout()).filter((r) => typeof r.level === 'number' && r.level >= 50);
  const total = result.sent.udp + result.sent.peer + result.sent.tcp + result.sent.tls;
  const lostDuring = result.relaying.reduce((n, r) => n + r.sent - r.back, 0);
  const lostAfter = result.after.reduce((n, r) => n + r.sent - r.back, 0);
  console.log(`\npackets: ${total} (${JSON.stringify(result.sent)}) in ${seconds.toFixed(0)} s (${(total / seconds).toFixed(0)}/s)`);
  console.log(`process: ${alive ? 'running' : 'EXITED'}; error-level log lines: ${errors.length}; Binding failures: ${result.bindingFailures}`);
  console.log(
    `relaying during the fuzz: ${JSON.stringify(result.relaying)} (kernel receive drops ${result.kernelDrops}); after: ${JSON.stringify(result.after)}`,
  );
  console.log(`TCP/TLS connections the server closed and the fuzzer reopened: ${result.reconnects}`);
  console.log(`RSS: ${rssBefore} KiB before, ${rssAfter} KiB after`);
  console.log('drops and closes from /metrics:');
  for (const [name, n] of drops) console.log(`  ${name} ${n}`);
  console.log('mutations:');
  for (const [name, n] of [...result.mutations].sort()) console.log(`  ${name} ${n}`);
  for (const e of errors.slice(0, 20)) console.log(`ERROR LOG: ${JSON.stringify(e)}`);
  if (!alive || errors.length > 0 || result.bindingFailures > 0 || lostAfter > 0 || lostDuring > result.kernelDrops) exitCode = 1;
} finally {
  await server.stop();
  cert?.remove();
}
process.exit(exitCode);

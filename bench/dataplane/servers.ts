// The servers of npm run bench:dataplane, started one at a time in S with the
// flags bench/servers.ts gives them (coturn exactly as npm run bench starts it),
// listening on s-c's address and relaying from s-p's.
import { spawnSync } from 'node:child_process';
import { writeFileSync } from 'node:fs';

import type { ProcessGroup, TrackedProcess } from '../processes.js';
import { PASSWORD, REALM, USER, anyturnLaunch, coturnLaunch, floorLaunch, type ServerLaunch, type ServerSettings } from '../servers.js';
import { waitForServer } from './loadgen.js';
import { LISTENING_ADDRESS, RELAY_ADDRESS, SERVER_INTERFACES, type BenchTopology } from './topology.js';

export type Target = 'direct' | 'anyturn-kernel' | 'anyturn-js' | 'coturn' | 'floor';
export type ServerTarget = Exclude<Target, 'direct'>;
export const SERVER_TARGETS: readonly ServerTarget[] = ['anyturn-kernel', 'anyturn-js', 'coturn', 'floor'];

export const LISTENING_PORT = 3478;
const METRICS_PORT = 9641;
const READY_MS = 15_000;

export interface DataplaneContext {
  readonly group: ProcessGroup;
  readonly topo: BenchTopology;
  readonly loadgen: string;
  readonly peer: TrackedProcess;
  readonly scratchDir: string;
  readonly logDir: string;
  readonly anyturnCli: string;
  readonly floorScript: string;
  /** Whether this build of anyturn has --dataplane (the kernel path); without it, anyturn-js is today's anyturn. */
  readonly anyturnHasDataplane: boolean;
}

/** Whether `anyturn --help` lists --dataplane. */
export function hasDataplaneFlag(anyturnCli: string): boolean {
  const r = spawnSync(process.execPath, [anyturnCli, '--help'], { encoding: 'utf8', timeout: 20_000 });
  return /--dataplane\b/.test(`${r.stdout ?? ''}${r.stderr ?? ''}`);
}

function launch(ctx: DataplaneContext, target: ServerTarget): ServerLaunch {
  const settings: ServerSettings = {
    listeningPort: LISTENING_PORT,
    relayPorts: { min: 50000, max: 50999 },
    user: USER,
    password: PASSWORD,
    realm: REALM,
    scratchDir: ctx.scratchDir,
    listeningIp: LISTENING_ADDRESS,
    relayIp: RELAY_ADDRESS,
  };
  if (target === 'coturn') return coturnLaunch(settings);
  if (target === 'floor') return floorLaunch(settings, process.execPath, ctx.floorScript);
  const anyturn = anyturnLaunch(settings, process.execPath, ctx.anyturnCli);
  // The ops endpoint on S's loopback, so that kernelCounters can read what the kernel relayed.
  const base = { ...anyturn, args: anyturn.args.map((a, i) => (anyturn.args[i - 1] === '--metrics-port' ? String(METRICS_PORT) : a)) };
  // 198.18.0.0/15 is a special-purpose block anyturn refuses as a peer by default (src/turn/peer-policy.ts).
  const extra = ['--allowed-peer-ip', '198.18.0.0/15'];
  if (target === 'anyturn-kernel') {
    extra.push('--dataplane', 'kernel', ...SERVER_INTERFACES.flatMap((i) => ['--dataplane-interface', i]));
  } else if (ctx.anyturnHasDataplane) extra.push('--dataplane', 'js');
  return { ...base, args: [...base.args, ...extra] };
}

export interface RunningServer {
  readonly process: TrackedProcess;
  readonly commandLine: string;
}

/** Starts `target` in S and waits until it answers a STUN Binding from C; a string says why not. */
export async function startServer(ctx: DataplaneContext, target: ServerTarget): Promise<RunningServer | { readonly failure: string }> {
  if (target === 'anyturn-kernel' && !ctx.anyturnHasDataplane) return { failure: 'n/a: this build of anyturn has no --dataplane (the kernel path)' };
  const l = launch(ctx, target);
  const a = ctx.topo.argv('S', l.command, [...l.args]);
  const proc = ctx.group.start(target, undefined, a.command, a.args);
  const commandLine = `${l.command} ${l.args.join(' ')}`;
  const ready = await waitForServer(ctx.topo, ctx.loadgen, `${LISTENING_ADDRESS}:${LISTENING_PORT}`, READY_MS, () => proc.hasExited());
  if (!ready) {
    await ctx.group.stop(proc);
    const why = proc.hasExited() ? 'exited before it answered' : `no STUN Binding answer within ${READY_MS} ms`;
    return { failure: `${target} ${why}: ${proc.tail().slice(-3).join(' | ')}` };
  }
  return { process: proc, commandLine };
}

export async function stopServer(ctx: DataplaneContext, s: RunningServer, logPath: string): Promise<void> {
  await ctx.group.stop(s.process);
  writeFileSync(logPath, `# ${s.commandLine}\n${s.process.output()}`);
}

/**
 * anyturn_dataplane_kernel_packets_total by event (relayed_to_peer, relayed_to_client, and
 * why packets went to user space), from anyturn's /metrics in S: the proof that the kernel
 * path carried the load. The engine reads the kernel's counters every second, hence the wait.
 */
export async function kernelCounters(ctx: DataplaneContext): Promise<Record<string, number> | undefined> {
  await new Promise((r) => setTimeout(r, 1200));
  const script = `fetch('http://127.0.0.1:${METRICS_PORT}/metrics').then((r) => r.text()).then((t) => process.stdout.write(t), () => process.exit(1))`;
  const r = spawnSync('ip', ['netns', 'exec', ctx.topo.ns.S, process.execPath, '-e', script], { encoding: 'utf8', timeout: 10_000 });
  if (r.status !== 0) return undefined;
  const out: Record<string, number> = {};
  for (const m of (r.stdout ?? '').matchAll(/^anyturn_dataplane_kernel_packets_total\{event="([^"]+)"\} (\S+)$/gm)) out[m[1]!] = Number(m[2]);
  return out;
}

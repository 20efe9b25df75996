// The namespaces of npm run bench:dataplane: client C and peer P, each joined by a
// veth pair to the server namespace S, which routes between them.
//
//     C eth0 198.18.10.2/30 ── s-c 198.18.10.1/30 [S] 198.18.20.1/30 s-p ── 198.18.20.2/30 eth0 P
//
// Why through S and not through a router namespace: a relayed packet then crosses
// exactly the veths that a direct packet (C -> P, forwarded by S's kernel) crosses,
// two per direction, so subtracting the direct run removes the veth and socket
// costs at both ends and leaves what relaying costs over plain IP forwarding in S.
// Behind a router namespace a relayed packet would cross the router twice per
// direction and a direct one once. The server listens on s-c's address and relays
// from s-p's, so the kernel path sits at tc ingress of both (--dataplane-interface).
//
// Neighbours are permanent entries (no ARP during a run, and the kernel path's FIB
// lookup never meets an unresolved neighbour). S forwards IPv4 (needed by the direct
// run, and by the kernel path's FIB lookup, which refuses interfaces that do not).
//
// Names carry a per-process prefix bd-<pid>-; everything is removed on teardown, on
// exit, on SIGINT/SIGTERM, and (for namespaces of a dead pid) at the start of the
// next run, as in test/helpers/netns.ts, whose bounded command runner is reused.
import { execFileSync } from 'node:child_process';

import { run } from '../../test/helpers/netns.js';

export type Role = 'C' | 'S' | 'P';

export const CLIENT_ADDRESS = '198.18.10.2';
export const LISTENING_ADDRESS = '198.18.10.1';
export const RELAY_ADDRESS = '198.18.20.1';
export const PEER_ADDRESS = '198.18.20.2';
/** S's interfaces: the server's --dataplane-interface list. */
export const SERVER_INTERFACES = ['s-c', 's-p'] as const;

const PREFIX = 'bd-';
const STALE = /^bd-(\d+)-/;

const live = new Set<string>();
let hooked = false;

async function must(command: string, args: readonly string[]): Promise<string> {
  const r = await run(command, args);
  if (r.code !== 0) throw new Error(`${command} ${args.join(' ')} failed (${String(r.code ?? r.signal)}): ${r.stderr.trim()}`);
  return r.stdout;
}

function pidAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EPERM';
  }
}

/** SIGKILLs every process in the namespace and deletes it; never throws. */
function removeSync(ns: string): void {
  try {
    const pids = execFileSync('ip', ['netns', 'pids', ns], { encoding: 'utf8', timeout: 5000 });
    for (const p of pids.split(/\s+/).filter(Boolean)) {
      const pid = Number(p);
      if (Number.isInteger(pid) && pid > 1 && pid !== process.pid) {
        try {
          process.kill(pid, 'SIGKILL');
        } catch {
          // gone
        }
      }
    }
  } catch {
    // no such namespace
  }
  try {
    execFileSync('ip', ['netns', 'del', ns], { stdio: 'ignore', timeout: 5000 });
  } catch {
    // already gone
  }
}

function installHooks(): void {
  if (hooked) return;
  hooked = true;
  // bench/processes.ts's stopOnSignals turns SIGINT/SIGTERM into process.exit, which lands here.
  process.on('exit', () => {
    for (const ns of live) removeSync(ns);
    live.clear();
  });
}

/** Namespaces of earlier runs whose process is dead (a SIGKILLed bench cannot clean up). */
function removeStale(): void {
  let text = '';
  try {
    text = execFileSync('ip', ['netns', 'list'], { encoding: 'utf8', timeout: 5000 });
  } catch {
    return;
  }
  for (const line of text.split('\n')) {
    const ns = line.trim().split(/\s+/)[0] ?? '';
    const m = STALE.exec(ns);
    if (m && Number(m[1]) !== process.pid && !pidAlive(Number(m[1]))) removeSync(ns);
  }
}

async function macOf(ns: string, dev: string): Promise<string> {
  const parsed = JSON.parse(await must('ip', ['-n', ns, '-j', 'link', 'show', dev])) as { address?: string }[];
  const mac = parsed[0]?.address;
  if (mac === undefined) throw new Error(`no MAC address for ${dev} in ${ns}`);
  return mac;
}

export class BenchTopology {
  readonly ns: Readonly<Record<Role, string>>;
  #torn = false;

  private constructor(prefix: string) {
    this.ns = { C: `${prefix}c`, S: `${prefix}s`, P: `${prefix}p` };
  }

  /**
   * Builds the namespaces; `txChecksumOff` turns off tx checksum offload on C's and
   * P's eth0 (docs/dataplane.md: a veth with it on hands CHECKSUM_PARTIAL datagrams to
   * S's tc ingress, which the kernel path passes to user space).
   */
  static async build(txChecksumOff: boolean): Promise<BenchTopology> {
    installHooks();
    removeStale();
    const t = new BenchTopology(`${PREFIX}${process.pid}-`);
    try {
      await t.create(txChecksumOff);
    } catch (err) {
      t.teardown();
      throw err;
    }
    return t;
  }

  private async create(txChecksumOff: boolean): Promise<void> {
    for (const ns of Object.values(this.ns)) {
      live.add(ns); // before it exists: a crash right after `add` still removes it
      await must('ip', ['netns', 'add', ns]);
      await must('ip', ['-n', ns, 'link', 'set', 'lo', 'up']);
    }
    const s = this.ns.S;
    await must('ip', ['netns', 'exec', s, 'sysctl', '-q', '-w', 'net.ipv4.ip_forward=1']);
    const links = [
      { far: this.ns.C, dev: 's-c', near: LISTENING_ADDRESS, farAddress: CLIENT_ADDRESS },
      { far: this.ns.P, dev: 's-p', near: RELAY_ADDRESS, farAddress: PEER_ADDRESS },
    ];
    for (const l of links) {
      await must('ip', ['link', 'add', l.dev, 'netns', s, 'type', 'veth', 'peer', 'name', 'eth0', 'netns', l.far]);
      await must('ip', ['-n', s, 'addr', 'add', `${l.near}/30`, 'dev', l.dev]);
      await must('ip', ['-n', l.far, 'addr', 'add', `${l.farAddress}/30`, 'dev', 'eth0']);
      await must('ip', ['-n', s, 'link', 'set', l.dev, 'up']);
      await must('ip', ['-n', l.far, 'link', 'set', 'eth0', 'up']);
      await must('ip', ['-n', l.far, 'route', 'add', 'default', 'via', l.near]);
      await must('ip', ['-n', s, 'neigh', 'replace', l.farAddress, 'lladdr', await macOf(l.far, 'eth0'), 'dev', l.dev, 'nud', 'permanent']);
      await must('ip', ['-n', l.far, 'neigh', 'replace', l.near, 'lladdr', await macOf(s, l.dev), 'dev', 'eth0', 'nud', 'permanent']);
      if (txChecksumOff) await must('ip', ['netns', 'exec', l.far, 'ethtool', '-K', 'eth0', 'tx', 'off']);
    }
  }

  /** ['ip', 'netns', 'exec', ns, command, ...args]: `ip netns exec` execs, so the pid is the command's. */
  argv(role: Role, command: string, args: readonly string[]): { readonly command: string; readonly args: string[] } {
    return { command: 'ip', args: ['netns', 'exec', this.ns[role], command, ...args] };
  }

  /** Runs a command in a namespace to completion (bounded); its exit code. */
  async exec(role: Role, command: string, args: readonly string[], deadlineMs = 5000): Promise<number | null> {
    return (await run('ip', ['netns', 'exec', this.ns[role], command, ...args], deadlineMs)).code;
  }

  /** Kills whatever still runs inside and deletes the namespaces (their veths go with them). Idempotent. */
  teardown(): void {
    if (this.#torn) return;
    this.#torn = true;
    for (const ns of Object.values(this.ns)) {
      removeSync(ns);
      live.delete(ns);
    }
  }
}

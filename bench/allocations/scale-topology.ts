// The namespaces of the scale part (bench/allocations/scale.ts): client C, server S, peer P,
// each of C and P joined to S by a veth pair; S routes between them.
//
//   C eth0 198.18.10.2/24 ── s-c 198.18.10.1/24 [S] 198.18.20.1/24 s-p ── 198.18.20.2/24 eth0 P
//     + /32s: 198.18.11.x (churn, probes, lifecycles)     + /32s 198.18.21.1.. (more relay addresses)
//             198.18.12.1-250, 13.1-250, ... (the ramp)
//
// C's many source addresses let its drivers bind explicit (address, port) pairs
// (scale-plan.ts); S routes their prefixes to C's eth0. The server listens on s-c's address and
// relays from s-p's (and the extra /32s), redis-server runs on S's loopback; the kernel data
// plane, when asked for, attaches to s-c and s-p (it does not attach to lo). Neighbours are
// permanent (no ARP during a run) and S forwards IPv4, as bench/dataplane/topology.ts does.
//
// Names come from test/helpers/netns.ts (`at-<pid>-<n>-`), so its exit handler deletes the
// namespaces on any exit (Ctrl-C, the watchdog, a crash), and a later run removes those of a
// dead pid; teardown() kills what runs inside and deletes them at the end.
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';

import { deleteNamespace, namespacePrefix, removeStaleNamespaces, run, trackNamespace } from '../../test/helpers/netns.js';
import {
  CHURN_ADDRESS,
  CLIENT_LINK_ADDRESS,
  DIRECT_PROBE_ADDRESS,
  LIFECYCLE_ADDRESS,
  LISTENING_ADDRESS,
  PEER_ADDRESS,
  RAMP_PREFIX,
  RELAY_LINK_ADDRESS,
  RELAY_PROBE_ADDRESS,
  SIDE_PREFIX,
  rampAddress,
  relayAddress,
} from './scale-plan.js';

export type Role = 'C' | 'S' | 'P';

/** S's interfaces: where the kernel data plane attaches. */
export const SERVER_INTERFACES = ['s-c', 's-p'] as const;

async function must(command: string, args: readonly string[]): Promise<string> {
  const r = await run(command, args);
  if (r.code !== 0) throw new Error(`${command} ${args.join(' ')} failed (${String(r.code ?? r.signal)}): ${r.stderr.trim()}`);
  return r.stdout;
}

async function macOf(ns: string, dev: string): Promise<string> {
  const parsed = JSON.parse(await must('ip', ['-n', ns, '-j', 'link', 'show', dev])) as { address?: string }[];
  const mac = parsed[0]?.address;
  if (mac === undefined) throw new Error(`no MAC address for ${dev} in ${ns}`);
  return mac;
}

export interface ScaleTopologySpec {
  /** Ramp client addresses to put on C's eth0. */
  readonly rampAddresses: number;
  /** Relay addresses on S (the first is s-p's own). */
  readonly relayAddresses: number;
  /** ethtool -K eth0 tx off on C and P: the kernel path passes CHECKSUM_PARTIAL datagrams up (docs/dataplane.md). */
  readonly txChecksumOff: boolean;
  /** Where the `ip -batch` files go. */
  readonly scratchDir: string;
}

export class ScaleTopology {
  readonly ns: Readonly<Record<Role, string>>;
  readonly relayIps: readonly string[];
  #torn = false;

  private constructor(prefix: string, relayIps: readonly string[]) {
    this.ns = { C: `${prefix}c`, S: `${prefix}s`, P: `${prefix}p` };
    this.relayIps = relayIps;
  }

  static async build(spec: ScaleTopologySpec): Promise<ScaleTopology> {
    removeStaleNamespaces();
    const relayIps = Array.from({ length: spec.relayAddresses }, (_, m) => relayAddress(m));
    const t = new ScaleTopology(namespacePrefix(), relayIps);
    try {
      await t.create(spec);
    } catch (err) {
      await t.teardown();
      throw err;
    }
    return t;
  }

  private async create(spec: ScaleTopologySpec): Promise<void> {
    for (const ns of Object.values(this.ns)) {
      trackNamespace(ns); // before it exists: a crash right after `add` still removes it
      await must('ip', ['netns', 'add', ns]);
      await must('ip', ['-n', ns, 'link', 'set', 'lo', 'up']);
    }
    const { C, S, P } = this.ns;
    await must('ip', ['netns', 'exec', S, 'sysctl', '-q', '-w', 'net.ipv4.ip_forward=1']);
    const links = [
      { far: C, dev: 's-c', near: LISTENING_ADDRESS, farAddress: CLIENT_LINK_ADDRESS },
      { far: P, dev: 's-p', near: RELAY_LINK_ADDRESS, farAddress: PEER_ADDRESS },
    ];
    for (const l of links) {
      await must('ip', ['link', 'add', l.dev, 'netns', S, 'type', 'veth', 'peer', 'name', 'eth0', 'netns', l.far]);
      await must('ip', ['-n', S, 'addr', 'add', `${l.near}/24`, 'dev', l.dev]);
      await must('ip', ['-n', l.far, 'addr', 'add', `${l.farAddress}/24`, 'dev', 'eth0']);
      await must('ip', ['-n', S, 'link', 'set', l.dev, 'up']);
      await must('ip', ['-n', l.far, 'link', 'set', 'eth0', 'up']);
      await must('ip', ['-n', l.far, 'route', 'add', 'default', 'via', l.near]);
      await must('ip', ['-n', S, 'neigh', 'replace', l.farAddress, 'lladdr', await macOf(l.far, 'eth0'), 'dev', l.dev, 'nud', 'permanent']);
      await must('ip', ['-n', l.far, 'neigh', 'replace', l.near, 'lladdr', await macOf(S, l.dev), 'dev', 'eth0', 'nud', 'permanent']);
      if (spec.txChecksumOff) await must('ip', ['netns', 'exec', l.far, 'ethtool', '-K', 'eth0', 'tx', 'off']);
    }
    // C's source addresses: /32s on its eth0, reached from S through C's link address.
    const side = [CHURN_ADDRESS, RELAY_PROBE_ADDRESS, DIRECT_PROBE_ADDRESS, LIFECYCLE_ADDRESS];
    const ramp = Array.from({ length: spec.rampAddresses }, (_, n) => rampAddress(n));
    await this.batch(
      C,
      spec.scratchDir,
      [...side, ...ramp].map((a) => `addr add ${a}/32 dev eth0`),
    );
    for (const prefix of [SIDE_PREFIX, RAMP_PREFIX]) await must('ip', ['-n', S, 'route', 'add', prefix, 'via', CLIENT_LINK_ADDRESS, 'dev', 's-c']);
    // More relay addresses: /32s on s-p; P reaches them by its default route through S.
    await this.batch(
      S,
      spec.scratchDir,
      this.relayIps.slice(1).map((a) => `addr add ${a}/32 dev s-p`),
    );
  }

  /** `ip -n ns -batch file`: one process for many address changes. */
  private async batch(ns: string, scratchDir: string, commands: readonly string[]): Promise<void> {
    if (commands.length === 0) return;
    const file = join(scratchDir, `ip-batch-${ns}`);
    writeFileSync(file, `${commands.join('\n')}\n`);
    await must('ip', ['-n', ns, '-batch', file]);
  }

  /** ['ip', 'netns', 'exec', ns, command, ...args]: `ip netns exec` execs, so the pid is the command's. */
  argv(role: Role, command: string, args: readonly string[]): { readonly command: string; readonly args: string[] } {
    return { command: 'ip', args: ['netns', 'exec', this.ns[role], command, ...args] };
  }

  /** Kills whatever still runs inside and deletes the namespaces (their veths go with them). Idempotent. */
  async teardown(): Promise<void> {
    if (this.#torn) return;
    this.#torn = true;
    for (const ns of Object.values(this.ns)) await deleteNamespace(ns);
  }
}

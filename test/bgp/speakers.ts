// BGP in the anycast namespaces (docs/anycast-bgp.md): bird2 in the router
// namespace with one session (BFD, 3 s hold timer) to each node namespace, and
// in each node namespace the speaker we ship: bird2 with
// docker/bgp/bird.conf.template (rendered by docker/bgp/render-bird-conf.mjs)
// and docker/bgp/readyz-announce.mjs, which announces the node's anycast
// prefixes only while its /readyz answers 200, both run by the sidecar's
// docker/bgp/entrypoint.sh. The topology is
// test/helpers/netns.ts's, built without its static anycast routes: the
// router's kernel routes for the anycast /32s come from bird.
//
//   R: bird (AS 65000), sessions pop_n1, pop_n2 (, pop_n3) over the node links
//   Nx: entrypoint.sh: bird (AS 65010) + readyz-announce -> http://<Nx>:9641/readyz

import { execFileSync } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { ANYCAST_ADDRESS, Topology, jsonLines, netnsUnavailableReason, run, type NodeName, type NsProcess } from '../helpers/netns.js';
import { METRICS_PORT } from '../anycast/cluster.js';
import { nowMs } from '../anycast/wire.js';

/** dist/test/bgp/speakers.js -> docker/bgp/ in the repository. */
const SHIPPED = fileURLToPath(new URL('../../../docker/bgp/', import.meta.url));
export const RENDER_PATH = join(SHIPPED, 'render-bird-conf.mjs');
export const ANNOUNCE_PATH = join(SHIPPED, 'readyz-announce.mjs');
export const TEMPLATE_PATH = join(SHIPPED, 'bird.conf.template');
const ENTRYPOINT_PATH = join(SHIPPED, 'entrypoint.sh');

export const ROUTER_AS = 65000;
export const POP_AS = 65010;
/**
 * The test's timers: BFD 100 ms x 3 (a silent PoP is gone in 0.3 s), hold 3 s
 * (bird's minimum) behind it; /readyz every 200 ms, 2 in a row to announce or
 * withdraw. Production defaults are slower (docs/anycast-bgp.md, "Timers").
 */
const BFD_INTERVAL_MS = 100;
const BFD_MULTIPLIER = 3;
const HOLD_TIME = 3;
export const READYZ_INTERVAL_MS = 200;
const READYZ_RISE = 2;
const READYZ_FALL = 2;
const READY_DEADLINE_MS = 20_000;

/**
 * Why the BGP tests cannot run here, or undefined: the namespace needs
 * (netnsUnavailableReason) and bird2. Under CI=true nothing is a reason to
 * skip: CI installs bird2 (.ci/run), so a missing one fails loudly.
 */
export function bgpUnavailableReason(): string | undefined {
  const netns = netnsUnavailableReason();
  if (netns !== undefined || process.env.CI === 'true') return netns;
  for (const cmd of ['bird', 'birdc']) {
    try {
      execFileSync('sh', ['-c', `command -v ${cmd}`], { stdio: 'ignore', timeout: 5000 });
    } catch {
      return `${cmd} is not installed (Debian: apt-get install bird2)`;
    }
  }
  return undefined;
}

function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

/** The router's session name for a node. */
export function sessionName(node: NodeName): string {
  return `pop_${node.toLowerCase()}`;
}

/** The router's bird2 configuration: one session per node, anycast /32s in 198.18.100.0/23 accepted, kernel routes exported. */
function routerConfig(nodes: readonly NodeName[]): string {
  const sessions = nodes.map((node) => {
    const link = Topology.link(node);
    return `protocol bgp ${sessionName(node)} from pop { local ${link.router}; neighbor ${link.local} as ${POP_AS}; }`;
  });
  return `log stderr all;
router id ${Topology.link('C').router};
protocol device { scan time 10; }
protocol kernel { ipv4 { import none; export all; }; }
protocol bfd { interface "*" { min rx interval ${BFD_INTERVAL_MS} ms; min tx interval ${BFD_INTERVAL_MS} ms; multiplier ${BFD_MULTIPLIER}; }; }
template bgp pop {
  local as ${ROUTER_AS};
  hold time ${HOLD_TIME};
  keepalive time 1;
  connect delay time 1;
  connect retry time 1;
  graceful restart off;
  bfd on;
  ipv4 { import where net ~ [ 198.18.100.0/23{32,32} ]; export none; };
}
${sessions.join('\n')}
`;
}

/** birdc against one bird's control socket (a file: reachable from any namespace); stdout. */
export async function birdc(socket: string, args: readonly string[]): Promise<string> {
  const r = await run('birdc', ['-s', socket, ...args]);
  if (r.code !== 0) throw new Error(`birdc -s ${socket} ${args.join(' ')}: ${r.stderr}${r.stdout}`);
  return r.stdout;
}

/** Waits until bird answers on its control socket. */
async function waitBird(socket: string, proc: NsProcess): Promise<void> {
  const end = Date.now() + READY_DEADLINE_MS;
  for (;;) {
    if (!proc.isRunning()) throw new Error(`${proc.name} exited: ${proc.stderr()}`);
    const r = await run('birdc', ['-s', socket, 'show', 'status']);
    if (r.code === 0 && /Daemon is up and running/.test(r.stdout)) return;
    if (Date.now() > end) throw new Error(`${proc.name} never answered on ${socket}: ${r.stdout}${r.stderr}`);
    await sleep(100);
  }
}

export interface Speaker {
  readonly node: NodeName;
  /** entrypoint.sh: bird2 and readyz-announce in one process group (stdout: the announcer's lines). */
  readonly process: NsProcess;
  readonly socket: string;
}

/** One router and the speakers of each node, with their files in a temporary directory. */
export class Bgp {
  readonly dir: string;
  readonly speakers = new Map<NodeName, Speaker>();
  private constructor(
    private readonly topo: Topology,
    readonly router: NsProcess,
    readonly routerSocket: string,
    dir: string,
  ) {
    this.dir = dir;
  }

  /** Starts the router's bird (the nodes' speakers come with startSpeaker). */
  static async start(topo: Topology): Promise<Bgp> {
    const dir = mkdtempSync(join(tmpdir(), 'anyturn-bgp-'));
    process.once('exit', () => rmSync(dir, { recursive: true, force: true }));
    const conf = join(dir, 'router.conf');
    writeFileSync(conf, routerConfig(topo.nodeNames));
    const socket = join(dir, 'router.ctl');
    const router = topo.spawnIn('R', 'bird', ['-f', '-c', conf, '-s', socket], { name: 'bird-R' });
    await waitBird(socket, router);
    return new Bgp(topo, router, socket, dir);
  }

  /**
   * The speaker of `node`, as shipped: docker/bgp/entrypoint.sh (the sidecar's
   * entry point) renders the template, runs bird2 and readyz-announce against
   * the node's /readyz. Resolves once bird answers on its control socket.
   */
  async startSpeaker(node: NodeName, prefixes: readonly string[]): Promise<Speaker> {
    const link = Topology.link(node);
    const runDir = join(this.dir, node);
    const socket = join(runDir, 'bird.ctl');
    const env: Record<string, string> = {
      // The entry point runs `node` and `bird` by name: this node first.
      PATH: `${dirname(process.execPath)}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin`,
      BIRD_RUN_DIR: runDir,
      BIRD_SOCKET: socket,
      BGP_LOCAL_ADDRESS: link.local,
      BGP_LOCAL_AS: String(POP_AS),
      BGP_NEIGHBOR_ADDRESS: link.router,
      BGP_NEIGHBOR_AS: String(ROUTER_AS),
      BGP_ANYCAST_PREFIXES: prefixes.map((p) => `${p}/32`).join(' '),
      BGP_HOLD_TIME: String(HOLD_TIME),
      BGP_KEEPALIVE_TIME: '1',
      BGP_CONNECT_DELAY: '1',
      BGP_CONNECT_RETRY: '1',
      BGP_BFD: 'on',
      BGP_BFD_INTERVAL_MS: String(BFD_INTERVAL_MS),
      BGP_BFD_MULTIPLIER: String(BFD_MULTIPLIER),
      READYZ_URL: `http://${Topology.nodeAddress(node)}:${METRICS_PORT}/readyz`,
      READYZ_INTERVAL_MS: String(READYZ_INTERVAL_MS),
      READYZ_TIMEOUT_MS: '1000',
      READYZ_RISE: String(READYZ_RISE),
      READYZ_FALL: String(READYZ_FALL),
    };
    // `env -i` so that nothing of the test's environment reaches the sidecar's scripts.
    const process_ = this.topo.spawnIn(node, 'env', ['-i', ...Object.entries(env).map(([k, v]) => `${k}=${v}`), ENTRYPOINT_PATH], {
      name: `speaker-${node}`,
    });
    await waitBird(socket, process_);
    const speaker = { node, process: process_, socket };
    this.speakers.set(node, speaker);
    return speaker;
  }

  speaker(node: NodeName): Speaker {
    const s = this.speakers.get(node);
    if (!s) throw new Error(`no speaker on ${node}`);
    return s;
  }

  /** The router's view of one session: state and info, e.g. "up Established" or "start Idle Error: BFD session down". */
  async session(node: NodeName): Promise<string> {
    const out = await birdc(this.routerSocket, ['show', 'protocols', sessionName(node)]);
    const line = out.split('\n').find((l) => l.startsWith(sessionName(node)));
    if (!line) throw new Error(`router has no session ${sessionName(node)}: ${out}`);
    return line.trim().split(/\s+/).slice(3).join(' ');
  }

  /** Waits until every session of the router is Established. */
  async waitEstablished(): Promise<void> {
    const end = Date.now() + READY_DEADLINE_MS;
    for (;;) {
      const states = await Promise.all(this.topo.nodeNames.map(async (n) => [n, await this.session(n)] as const));
      if (states.every(([, s]) => s.includes('Established'))) return;
      if (Date.now() > end) throw new Error(`BGP sessions not established: ${JSON.stringify(states)}`);
      await sleep(100);
    }
  }
}

/** The readyz-announce lines (JSON) a speaker printed, in order. */
export function announcerEvents(s: Speaker): Record<string, unknown>[] {
  return jsonLines(s.process.stdout()).filter((r) => typeof r.event === 'string' && r.event !== 'start');
}

// ---------------------------------------------------------------------------
// The router's kernel routes, watched

export interface RouteChange {
  /** When the test process read the change (nowMs). */
  readonly atMs: number;
  readonly address: string;
  /** The node it now points to; undefined for a deletion or another next hop. */
  readonly via: NodeName | undefined;
  readonly deleted: boolean;
  readonly proto: string | undefined;
  readonly line: string;
}

function nodeOfAddress(nodes: readonly NodeName[], address: string | undefined): NodeName | undefined {
  return nodes.find((n) => Topology.nodeAddress(n) === address);
}

/**
 * `ip monitor route` in the router namespace: every change of a kernel route,
 * stamped when this process reads it (a route change is followed within
 * microseconds by the line; the stamps are what the convergence times use).
 */
export class RouteWatch {
  readonly changes: RouteChange[] = [];
  private constructor(
    private readonly topo: Topology,
    readonly monitor: NsProcess,
  ) {}

  static async start(topo: Topology): Promise<RouteWatch> {
    const monitor = topo.spawnIn('R', 'ip', ['monitor', 'route'], { name: 'ip-monitor-R' });
    const watch = new RouteWatch(topo, monitor);
    let partial = '';
    monitor.child.stdout?.on('data', (c: string) => {
      const atMs = nowMs();
      partial += c;
      let nl: number;
      while ((nl = partial.indexOf('\n')) >= 0) {
        const line = partial.slice(0, nl).trim();
        partial = partial.slice(nl + 1);
        const deleted = line.startsWith('Deleted ');
        const address = (deleted ? line.slice(8) : line).split(' ')[0]?.replace(/\/32$/, '') ?? '';
        if (!/^\d+\.\d+\.\d+\.\d+$/.test(address) || line.includes('table local')) continue;
        const via = / via (\S+)/.exec(line)?.[1];
        const proto = / proto (\S+)/.exec(line)?.[1];
        watch.changes.push({ atMs, address, via: nodeOfAddress(topo.nodeNames, via), deleted, proto, line });
      }
    });
    // The monitor is listening once it has a socket; give it a moment before anything changes.
    await sleep(200);
    return watch;
  }

  /** The router's current kernel route for an anycast address: the node it points to and its proto. */
  async current(address: string): Promise<{ via: NodeName | undefined; proto: string | undefined; line: string }> {
    const r = await this.topo.exec('R', 'ip', ['route', 'show', `${address}/32`]);
    const line = r.stdout.trim();
    return { via: nodeOfAddress(this.topo.nodeNames, / via (\S+)/.exec(line)?.[1]), proto: / proto (\S+)/.exec(line)?.[1], line };
  }

  /** Waits until the router's route for `address` points at `node` (polled). */
  async waitRouted(address: string, node: NodeName, deadlineMs: number): Promise<{ via: NodeName | undefined; proto: string | undefined; line: string }> {
    const end = Date.now() + deadlineMs;
    for (;;) {
      const now = await this.current(address);
      if (now.via === node) return now;
      if (Date.now() > end) throw new Error(`router route for ${address} never via ${node}: ${now.line || '(none)'}`);
      await sleep(50);
    }
  }

  /** Waits for the first change at or after index `from` that points the route for `address` at `node`. */
  async waitVia(address: string, node: NodeName, deadlineMs: number, from: number): Promise<RouteChange> {
    const end = Date.now() + deadlineMs;
    for (;;) {
      const hit = this.changes.slice(from).find((c) => c.address === address && c.via === node && !c.deleted);
      if (hit) return hit;
      if (Date.now() > end) throw new Error(`router route for ${address} never changed to via ${node}: ${JSON.stringify(this.changes.slice(from))}`);
      await sleep(10);
    }
  }

  /** Changes of the route for `address` from index `from` on. */
  changesOf(address: string, from = 0): RouteChange[] {
    return this.changes.slice(from).filter((c) => c.address === address);
  }
}

/** The anycast addresses a scenario announces: the service address, and in anycast relay mode the relay address. */
export function anycastPrefixes(relay?: string): string[] {
  return relay === undefined ? [ANYCAST_ADDRESS] : [ANYCAST_ADDRESS, relay];
}

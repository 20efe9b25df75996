// Network namespaces for the anycast tests (docs/architecture.md §6): a
// router, two or three TURN nodes that all carry the same anycast address on
// their loopback, a client and a peer, joined by veth links.
//
//            C (198.18.10.2) ──┐
//                              │      ┌── N1 (198.18.1.2, lo 198.18.100.1)
//            P (198.18.20.2) ──┼── R ─┼── N2 (198.18.2.2, lo 198.18.100.1)
//                              │      └── N3 (198.18.3.2, lo 198.18.100.1)  (optional)
//                  R lo 198.18.0.1 (redis-server listens here)
//
// Every link is its own /30: the router end is .1, the far end .2; the far
// ends route everything via the router. The router routes the anycast /32 to
// one node; a "BGP reroute" is `ip route replace` of that /32 in the router.
// (test/bgp builds it without those routes: bird2 in the router learns them.)
// Redis runs in the router namespace on an address of the router's loopback
// (198.18.0.1/32), so it is reachable from every node over its default route
// and stays reachable whichever node link a later test takes down.
//
// Rules: addresses come from 198.18.0.0/15 only and exist only inside the
// namespaces built here; names carry a per-process prefix `at-<pid>-<n>-`;
// namespaces and processes are removed on teardown, by a process 'exit'
// handler if a test crashes, and (for namespaces whose owning pid is dead) at
// the start of the next run. The namespaces need root and iproute2.

import { execFileSync, spawn, type ChildProcess } from 'node:child_process';

export const ANYCAST_ADDRESS = '198.18.100.1';
/** Address of redis-server (on the router's loopback). */
export const REDIS_ADDRESS = '198.18.0.1';

const NAME_PREFIX = 'at-';
const STALE_NAME = /^at-(\d+)-\d+-/;
const COMMAND_DEADLINE_MS = 15_000;
const STOP_GRACE_MS = 3_000;

export type NodeName = 'N1' | 'N2' | 'N3';
export type NamespaceRole = 'R' | NodeName | 'C' | 'P';

export interface LinkAddresses {
  /** The router's end of the link. */
  readonly router: string;
  /** The far end (node, client or peer). */
  readonly local: string;
}

// ---------------------------------------------------------------------------
// Availability

/**
 * Why the namespace tests cannot run here, or undefined when they can: they
 * need Linux, root, iproute2 that can create a namespace, and redis-server.
 * Under CI=true a missing capability is not a reason to skip: CI is meant to
 * run them, so the test runs and fails loudly instead.
 */
export function netnsUnavailableReason(): string | undefined {
  const reason = probe();
  return reason !== undefined && process.env.CI !== 'true' ? reason : undefined;
}

function probe(): string | undefined {
  if (process.platform !== 'linux') return 'network namespaces need Linux';
  if (typeof process.getuid === 'function' && process.getuid() !== 0) return 'network namespaces need root';
  for (const [cmd, args] of [
    ['ip', ['-V']],
    ['redis-server', ['--version']],
  ] as const) {
    try {
      execFileSync(cmd, [...args], { stdio: 'ignore', timeout: 5000 });
    } catch {
      return `${cmd} is not installed`;
    }
  }
  const name = `${NAME_PREFIX}${process.pid}-0-probe`;
  try {
    execFileSync('ip', ['netns', 'add', name], { stdio: ['ignore', 'ignore', 'pipe'], timeout: 5000 });
  } catch (err) {
    return `cannot create a network namespace: ${String((err as { stderr?: unknown }).stderr ?? err).trim()}`;
  } finally {
    try {
      execFileSync('ip', ['netns', 'del', name], { stdio: 'ignore', timeout: 5000 });
    } catch {
      // was never created
    }
  }
  return undefined;
}

// ---------------------------------------------------------------------------
// Commands

export interface ExecResult {
  readonly code: number | null;
  readonly signal: NodeJS.Signals | null;
  readonly stdout: string;
  readonly stderr: string;
}

/** Runs a command to completion (bounded); never rejects. */
export function run(command: string, args: readonly string[], deadlineMs = COMMAND_DEADLINE_MS): Promise<ExecResult> {
  return new Promise((resolve) => {
    const child = spawn(command, [...args], { stdio: ['ignore', 'pipe', 'pipe'], detached: true });
    let stdout = '';
    let stderr = '';
    child.stdout.setEncoding('utf8').on('data', (c: string) => (stdout += c));
    child.stderr.setEncoding('utf8').on('data', (c: string) => (stderr += c));
    const timer = setTimeout(() => {
      stderr += `\n[killed after ${deadlineMs} ms]`;
      if (child.pid !== undefined) killGroup(child.pid, 'SIGKILL');
    }, deadlineMs);
    child.once('error', (err) => {
      clearTimeout(timer);
      resolve({ code: null, signal: null, stdout, stderr: `${stderr}\n[spawn error] ${err.message}` });
    });
    child.once('close', (code, signal) => {
      clearTimeout(timer);
      resolve({ code, signal, stdout, stderr });
    });
  });
}

/** Like run(), but throws with the command and its stderr when it fails. */
async function must(command: string, args: readonly string[]): Promise<string> {
  const r = await run(command, args);
  if (r.code !== 0) throw new Error(`${command} ${args.join(' ')} failed (${String(r.code ?? r.signal)}): ${r.stderr.trim()}`);
  return r.stdout;
}

function killGroup(pgid: number, signal: NodeJS.Signals): void {
  try {
    process.kill(-pgid, signal);
  } catch {
    // ESRCH: gone already.
  }
}

function pidAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EPERM';
  }
}

// ---------------------------------------------------------------------------
// Spawned processes

export interface NsProcess {
  readonly name: string;
  readonly ns: string;
  readonly pid: number;
  readonly child: ChildProcess;
  /** Resolves when the process has exited and its output is read (never rejects). */
  readonly exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
  stdout(): string;
  stderr(): string;
  isRunning(): boolean;
  /** Writes one line to stdin (when spawned with stdin: true). */
  writeLine(line: string): void;
  /** Resolves with the first stdout line (parsed JSON) for which `match` is true; rejects on exit or deadline. */
  waitForJsonLine(match: (record: Record<string, unknown>) => boolean, deadlineMs: number): Promise<Record<string, unknown>>;
  /** Resolves with the first stdout line for which `match` is true; rejects on exit or deadline. */
  waitForLine(match: (line: string) => boolean, deadlineMs: number): Promise<string>;
  /** SIGTERM (or `signal`) to the process group, SIGKILL after a grace period. Idempotent. */
  stop(signal?: NodeJS.Signals): Promise<void>;
  /** The whole output, labelled, for failure messages. */
  dump(): string;
}

/** Parses the JSON-object lines of a text (pino logs, summaries); other lines are skipped. */
export function jsonLines(text: string): Record<string, unknown>[] {
  const out: Record<string, unknown>[] = [];
  for (const line of text.split('\n')) {
    const s = line.trim();
    if (!s.startsWith('{')) continue;
    try {
      const v: unknown = JSON.parse(s);
      if (typeof v === 'object' && v !== null && !Array.isArray(v)) out.push(v as Record<string, unknown>);
    } catch {
      // partial or foreign line
    }
  }
  return out;
}

// ---------------------------------------------------------------------------
// Process-wide cleanup of everything still alive (crash, forgotten teardown)

const liveGroups = new Set<number>();
const liveNamespaces = new Set<string>();
let hooksInstalled = false;

function cleanupSync(): void {
  for (const pgid of liveGroups) killGroup(pgid, 'SIGKILL');
  liveGroups.clear();
  for (const ns of liveNamespaces) {
    killNamespacePidsSync(ns);
    try {
      execFileSync('ip', ['netns', 'del', ns], { stdio: 'ignore', timeout: 5000 });
    } catch {
      // already gone
    }
  }
  liveNamespaces.clear();
}

function installHooks(): void {
  if (hooksInstalled) return;
  hooksInstalled = true;
  process.on('exit', cleanupSync);
  for (const signal of ['SIGINT', 'SIGTERM', 'SIGHUP'] as const) {
    process.once(signal, () => {
      cleanupSync();
      process.kill(process.pid, signal);
    });
  }
}

/** SIGKILLs, by pid, every process inside a namespace this helper created. */
function killNamespacePidsSync(ns: string): void {
  let pids: string;
  try {
    pids = execFileSync('ip', ['netns', 'pids', ns], { encoding: 'utf8', timeout: 5000 });
  } catch {
    return;
  }
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
}

/** Our namespaces currently present (all runs, or those of one prefix). */
export function listOurNamespaces(prefix = NAME_PREFIX): string[] {
  let text: string;
  try {
    text = execFileSync('ip', ['netns', 'list'], { encoding: 'utf8', timeout: 5000 });
  } catch {
    return [];
  }
  return text
    .split('\n')
    .map((l) => l.trim().split(/\s+/)[0] ?? '')
    .filter((n) => n.startsWith(prefix));
}

/**
 * Removes namespaces left by earlier runs of this helper whose owning test
 * process is dead (a SIGKILLed test cannot clean up after itself). Namespaces
 * of a live process (a parallel run) are left alone.
 */
export function removeStaleNamespaces(): string[] {
  const removed: string[] = [];
  for (const ns of listOurNamespaces()) {
    const m = STALE_NAME.exec(ns);
    if (!m) continue;
    const owner = Number(m[1]);
    if (owner === process.pid || pidAlive(owner)) continue;
    killNamespacePidsSync(ns);
    try {
      execFileSync('ip', ['netns', 'del', ns], { stdio: 'ignore', timeout: 5000 });
      removed.push(ns);
    } catch {
      // raced with someone else's cleanup
    }
  }
  return removed;
}

// ---------------------------------------------------------------------------
// The topology

export interface TopologyOptions {
  /** Number of TURN nodes, 2 (default) or 3. */
  readonly nodes?: 2 | 3;
  /**
   * More anycast addresses (from 198.18.0.0/15), each put on every node's
   * loopback as a /32 and routed by the router via N1 at first, like
   * ANYCAST_ADDRESS (e.g. a shared relay address for --relay-mode anycast).
   * Moved with rerouteAddress(); reroute() moves ANYCAST_ADDRESS only.
   */
  readonly extraAnycast?: readonly string[];
  /**
   * The client's and the peer's eth0 compute UDP checksums in software (ethtool -K tx off),
   * as a host behind a real NIC does: the kernel data plane passes a datagram whose
   * checksum a veth left for later (CHECKSUM_PARTIAL) to user space (docs/dataplane.md).
   */
  readonly softwareChecksums?: boolean;
  /**
   * false: the router gets no static route for the anycast addresses; a BGP
   * speaker in the router namespace installs them (test/bgp). reroute() and
   * rerouteAddress() then refuse. Default true.
   */
  readonly staticAnycastRoutes?: boolean;
}

/** True for a dotted-quad IPv4 address inside 198.18.0.0/15. */
function inTestRange(address: string): boolean {
  const parts = address.split('.');
  if (parts.length !== 4 || !parts.every((p) => /^\d{1,3}$/.test(p) && Number(p) <= 255)) return false;
  return parts[0] === '198' && (parts[1] === '18' || parts[1] === '19');
}

let topologyCounter = 0;

/**
 * A fresh name prefix `at-<pid>-<n>-` for a helper that builds its own namespaces
 * (test/helpers/dataplane-topology.ts): the stale cleanup above applies to them.
 */
export function namespacePrefix(): string {
  return `${NAME_PREFIX}${process.pid}-${++topologyCounter}-`;
}

/** Registers a namespace (before `ip netns add`) for the exit-time cleanup. */
export function trackNamespace(name: string): void {
  installHooks();
  liveNamespaces.add(name);
}

/** Kills what runs in a tracked namespace and deletes it. */
export async function deleteNamespace(name: string): Promise<void> {
  killNamespacePidsSync(name);
  await run('ip', ['netns', 'del', name]);
  liveNamespaces.delete(name);
}

export class Topology {
  readonly prefix: string;
  readonly nodeNames: readonly NodeName[];
  /** Namespace name by role. */
  readonly ns: Readonly<Record<string, string>>;
  private readonly processes = new Set<NsProcess>();
  private built = false;
  private tornDown: Promise<void> | undefined;
  private currentRoute: NodeName = 'N1';
  /** The extra anycast addresses (TopologyOptions.extraAnycast). */
  readonly extraAnycast: readonly string[];
  private readonly extraRoutes = new Map<string, NodeName>();
  private readonly softwareChecksums: boolean;
  private readonly staticRoutes: boolean;

  private constructor(options: TopologyOptions) {
    this.prefix = `${NAME_PREFIX}${process.pid}-${++topologyCounter}-`;
    this.nodeNames = options.nodes === 3 ? ['N1', 'N2', 'N3'] : ['N1', 'N2'];
    const extra = [...new Set(options.extraAnycast ?? [])];
    for (const a of extra) {
      if (!inTestRange(a)) throw new Error(`extra anycast address ${a} is not an IPv4 address in 198.18.0.0/15`);
      if (a === ANYCAST_ADDRESS || a === REDIS_ADDRESS) throw new Error(`extra anycast address ${a} is already in use by the topology`);
    }
    this.extraAnycast = extra;
    this.softwareChecksums = options.softwareChecksums === true;
    this.staticRoutes = options.staticAnycastRoutes ?? true;
    const ns: Record<string, string> = {};
    for (const role of ['R', ...this.nodeNames, 'C', 'P']) ns[role] = `${this.prefix}${role.toLowerCase()}`;
    this.ns = ns;
  }

  /** Addresses of the link between the router and `role`. */
  static link(role: Exclude<NamespaceRole, 'R'>): LinkAddresses {
    const third = role === 'C' ? 10 : role === 'P' ? 20 : Number(role.slice(1));
    return { router: `198.18.${third}.1`, local: `198.18.${third}.2` };
  }

  /** The node's own (unicast) address: relay IP, mesh and metrics address. */
  static nodeAddress(node: NodeName): string {
    return Topology.link(node).local;
  }

  static get clientAddress(): string {
    return Topology.link('C').local;
  }

  static get peerAddress(): string {
    return Topology.link('P').local;
  }

  /** Builds the namespaces and links; on any failure, tears down what was built and rethrows. */
  static async build(options: TopologyOptions = {}): Promise<Topology> {
    installHooks();
    removeStaleNamespaces();
    const topo = new Topology(options);
    try {
      await topo.create();
    } catch (err) {
      await topo.teardown();
      throw err;
    }
    return topo;
  }

  nsOf(role: NamespaceRole): string {
    const name = this.ns[role];
    if (name === undefined) throw new Error(`no namespace for ${role} in this topology`);
    return name;
  }

  get routedTo(): NodeName {
    return this.currentRoute;
  }

  /** The node the router sends `address` (ANYCAST_ADDRESS or an extra anycast address) to. */
  routeOf(address: string): NodeName {
    if (address === ANYCAST_ADDRESS) return this.currentRoute;
    const node = this.extraRoutes.get(address);
    if (node === undefined) throw new Error(`${address} is not an anycast address of this topology`);
    return node;
  }

  private async create(): Promise<void> {
    const roles = Object.keys(this.ns) as NamespaceRole[];
    for (const role of roles) {
      const name = this.nsOf(role);
      // Registered before it exists, so a crash right after `add` still cleans it up.
      liveNamespaces.add(name);
      await must('ip', ['netns', 'add', name]);
    }
    this.built = true;
    for (const role of roles) {
      const name = this.nsOf(role);
      await must('ip', ['-n', name, 'link', 'set', 'lo', 'up']);
      // Replies from the anycast address leave a node whose return route may
      // point at another node (after a reroute): no reverse-path filtering.
      const sysctls = ['net.ipv4.conf.all.rp_filter=0', 'net.ipv4.conf.default.rp_filter=0'];
      if (role === 'R') sysctls.push('net.ipv4.ip_forward=1');
      await must('ip', ['netns', 'exec', name, 'sysctl', '-q', '-w', ...sysctls]);
    }
    const router = this.nsOf('R');
    await must('ip', ['-n', router, 'addr', 'add', `${REDIS_ADDRESS}/32`, 'dev', 'lo']);
    for (const role of [...this.nodeNames, 'C', 'P'] as const) {
      const far = this.nsOf(role);
      const routerIf = `r-${role.toLowerCase()}`;
      const { router: rAddr, local } = Topology.link(role);
      await must('ip', ['link', 'add', routerIf, 'netns', router, 'type', 'veth', 'peer', 'name', 'eth0', 'netns', far]);
      await must('ip', ['-n', router, 'addr', 'add', `${rAddr}/30`, 'dev', routerIf]);
      await must('ip', ['-n', far, 'addr', 'add', `${local}/30`, 'dev', 'eth0']);
      await must('ip', ['-n', router, 'link', 'set', routerIf, 'up']);
      await must('ip', ['-n', far, 'link', 'set', 'eth0', 'up']);
      await must('ip', ['-n', far, 'route', 'add', 'default', 'via', rAddr]);
      await must('ip', ['netns', 'exec', far, 'sysctl', '-q', '-w', 'net.ipv4.conf.eth0.rp_filter=0']);
      await must('ip', ['netns', 'exec', router, 'sysctl', '-q', '-w', `net.ipv4.conf.${routerIf}.rp_filter=0`]);
    }
    for (const node of this.nodeNames) {
      for (const address of [ANYCAST_ADDRESS, ...this.extraAnycast]) {
        await must('ip', ['-n', this.nsOf(node), 'addr', 'add', `${address}/32`, 'dev', 'lo']);
      }
    }
    if (this.softwareChecksums) {
      for (const role of ['C', 'P'] as const) await must('ip', ['netns', 'exec', this.nsOf(role), 'ethtool', '-K', 'eth0', 'tx', 'off']);
    }
    if (!this.staticRoutes) return;
    await must('ip', ['-n', router, 'route', 'add', `${ANYCAST_ADDRESS}/32`, 'via', Topology.nodeAddress('N1')]);
    this.currentRoute = 'N1';
    for (const address of this.extraAnycast) {
      await must('ip', ['-n', router, 'route', 'add', `${address}/32`, 'via', Topology.nodeAddress('N1')]);
      this.extraRoutes.set(address, 'N1');
    }
  }

  /** The "BGP reroute": the router now sends anycast traffic to `node`. */
  async reroute(node: NodeName): Promise<void> {
    if (!this.nodeNames.includes(node)) throw new Error(`${node} is not in this topology`);
    if (!this.staticRoutes) throw new Error('this topology routes the anycast addresses by BGP (staticAnycastRoutes: false)');
    await must('ip', ['-n', this.nsOf('R'), 'route', 'replace', `${ANYCAST_ADDRESS}/32`, 'via', Topology.nodeAddress(node)]);
    this.currentRoute = node;
  }

  /**
   * The "BGP reroute" of one anycast address: ANYCAST_ADDRESS (the same as
   * reroute(node)) or one of the extra anycast addresses.
   */
  async rerouteAddress(address: string, node: NodeName): Promise<void> {
    if (address === ANYCAST_ADDRESS) return this.reroute(node);
    if (!this.extraRoutes.has(address)) throw new Error(`${address} is not an anycast address of this topology`);
    if (!this.nodeNames.includes(node)) throw new Error(`${node} is not in this topology`);
    await must('ip', ['-n', this.nsOf('R'), 'route', 'replace', `${address}/32`, 'via', Topology.nodeAddress(node)]);
    this.extraRoutes.set(address, node);
  }

  /** Runs a command inside a namespace to completion (bounded). */
  exec(role: NamespaceRole, command: string, args: readonly string[], deadlineMs = COMMAND_DEADLINE_MS): Promise<ExecResult> {
    return run('ip', ['netns', 'exec', this.nsOf(role), command, ...args], deadlineMs);
  }

  /**
   * Starts a long-running command inside a namespace, in its own process
   * group (`ip netns exec` execs the command, so the pid is the command's),
   * tracked and stopped on teardown.
   */
  spawnIn(role: NamespaceRole, command: string, args: readonly string[], options: { name?: string; stdin?: boolean } = {}): NsProcess {
    const ns = this.nsOf(role);
    const child = spawn('ip', ['netns', 'exec', ns, command, ...args], {
      detached: true,
      stdio: [options.stdin ? 'pipe' : 'ignore', 'pipe', 'pipe'],
    });
    const name = options.name ?? `${role}:${command}`;
    let out = '';
    let err = '';
    let running = true;
    const lineListeners = new Set<(line: string) => void>();
    let partial = '';
    child.stdout!.setEncoding('utf8').on('data', (c: string) => {
      out += c;
      partial += c;
      let nl: number;
      while ((nl = partial.indexOf('\n')) >= 0) {
        const line = partial.slice(0, nl);
        partial = partial.slice(nl + 1);
        for (const l of lineListeners) l(line);
      }
    });
    child.stderr!.setEncoding('utf8').on('data', (c: string) => (err += c));
    // EPIPE on a stdin write after the child died is not the test's failure.
    child.stdin?.on('error', () => undefined);
    const pid = child.pid ?? -1;
    if (pid > 0) liveGroups.add(pid);
    const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) => {
      child.once('error', (e) => {
        err += `\n[spawn error] ${e.message}`;
        running = false;
        liveGroups.delete(pid);
        resolve({ code: null, signal: null });
      });
      child.once('close', (code, signal) => {
        running = false;
        liveGroups.delete(pid);
        resolve({ code, signal });
      });
    });
    let stopping: Promise<void> | undefined;
    const proc: NsProcess = {
      name,
      ns,
      pid,
      child,
      exited,
      stdout: () => out,
      stderr: () => err,
      isRunning: () => running,
      writeLine: (line) => {
        if (running && child.stdin && !child.stdin.destroyed) child.stdin.write(`${line}\n`);
      },
      waitForLine: (match, deadlineMs) =>
        new Promise((resolve, reject) => {
          let done = false;
          const finish = (e?: Error, line?: string): void => {
            if (done) return;
            done = true;
            clearTimeout(timer);
            lineListeners.delete(onLine);
            if (e) reject(e);
            else resolve(line!);
          };
          const onLine = (line: string): void => {
            if (match(line)) finish(undefined, line);
          };
          const timer = setTimeout(() => finish(new Error(`${name}: expected line not seen within ${deadlineMs} ms`)), deadlineMs);
          for (const line of out.split('\n')) {
            if (match(line)) return finish(undefined, line);
          }
          lineListeners.add(onLine);
          void exited.then((x) => finish(new Error(`${name} exited (${String(x.code ?? x.signal)}) before the expected line`)));
        }),
      waitForJsonLine: async (match, deadlineMs) => {
        const line = await proc.waitForLine((l) => jsonLines(l).some(match), deadlineMs);
        return jsonLines(line)[0]!;
      },
      stop: (signal: NodeJS.Signals = 'SIGTERM') => {
        if (stopping) return stopping;
        stopping = (async () => {
          if (!running || pid <= 0) return void (await exited);
          killGroup(pid, signal);
          let timer: NodeJS.Timeout | undefined;
          const grace = new Promise<'timeout'>((r) => (timer = setTimeout(() => r('timeout'), STOP_GRACE_MS)));
          if ((await Promise.race([exited, grace])) === 'timeout') killGroup(pid, 'SIGKILL');
          clearTimeout(timer);
          await exited;
        })();
        return stopping;
      },
      dump: () => `----- ${name} (ns ${ns}) stdout -----\n${out}\n----- ${name} stderr -----\n${err}\n`,
    };
    this.processes.add(proc);
    return proc;
  }

  /** Processes started here, for failure dumps. */
  get spawned(): readonly NsProcess[] {
    return [...this.processes];
  }

  /**
   * Stops every process, deletes every namespace (their veths go with them)
   * and checks nothing of ours is left. Idempotent.
   */
  teardown(): Promise<void> {
    this.tornDown ??= (async () => {
      await Promise.all([...this.processes].map((p) => p.stop()));
      for (const name of Object.values(this.ns)) {
        if (!liveNamespaces.has(name)) continue;
        killNamespacePidsSync(name);
        await run('ip', ['netns', 'del', name]);
        liveNamespaces.delete(name);
      }
      const left = listOurNamespaces(this.prefix);
      if (this.built && left.length > 0) throw new Error(`namespaces left after teardown: ${left.join(' ')}`);
    })();
    return this.tornDown;
  }
}

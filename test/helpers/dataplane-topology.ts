// Three network namespaces for the kernel data plane tests (docs/dataplane.md): a client
// C, a server S that routes between its two veths, and a peer P.
//
//   C eth0 198.18.40.2 / 2001:2:0:40::2 ── s-c  S  s-p ── eth0 198.18.41.2 / 2001:2:0:41::2 P
//                       198.18.40.1 / 2001:2:0:40::1      198.18.41.1 / 2001:2:0:41::1
//
// The client sends to S's s-c address (the "listening" address), the relay address is
// S's s-p address. Neighbours are static both ways, so a FIB lookup in S finds the MAC at
// the first packet. In every namespace a python3 endpoint (ENDPOINT below) binds UDP
// sockets, sends on request, and reports as JSON lines what its sockets receive and, in
// C and P, every UDP datagram that arrives on eth0 (AF_PACKET) with its checksum checked
// here, since the receiving kernel may not check it. The script needs only what Debian's
// python3-minimal has (no json module).
//
// Names and cleanup follow test/helpers/netns.ts (prefix at-<pid>-<n>-, exit handler,
// stale cleanup of dead runs). Root, iproute2, ethtool and python3 are needed.

import { type ChildProcessWithoutNullStreams, execFileSync, spawn } from 'node:child_process';
import { deleteNamespace, namespacePrefix, removeStaleNamespaces, run, trackNamespace } from './netns.js';

export type Role = 'C' | 'S' | 'P';

export const ADDR = {
  client4: '198.18.40.2',
  listen4: '198.18.40.1',
  relay4: '198.18.41.1',
  peer4: '198.18.41.2',
  client6: '2001:2:0:40::2',
  listen6: '2001:2:0:40::1',
  relay6: '2001:2:0:41::1',
  peer6: '2001:2:0:41::2',
} as const;

/** S's interfaces, where the kernel relay attaches. */
export const SERVER_INTERFACES = ['s-c', 's-p'] as const;

const ENDPOINT = `
import os, select, socket, struct, sys
binds = [tuple(b.rsplit('/', 1)) for b in sys.argv[2:]]
capture = sys.argv[1] == 'capture'
socks = {}
for addr, port in binds:
    fam = socket.AF_INET6 if ':' in addr else socket.AF_INET
    s = socket.socket(fam, socket.SOCK_DGRAM)
    s.bind((addr, int(port)))
    socks[s.fileno()] = (s, addr, int(port))
raw = None
if capture:
    raw = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(3))
    raw.bind(('eth0', 0))
def lit(v):
    if v is True or v is False: return 'true' if v else 'false'
    return '"%s"' % v if isinstance(v, str) else str(v)
def out(o):
    # JSON by hand: python3-minimal has no json module; values are numbers, booleans,
    # addresses and hex.
    sys.stdout.write('{' + ','.join('"%s":%s' % (k, lit(v)) for k, v in o.items()) + '}\\n'); sys.stdout.flush()
def fold(s):
    while s > 0xffff: s = (s & 0xffff) + (s >> 16)
    return s
def sum16(b):
    if len(b) % 2: b = b + b'\\0'
    return sum(struct.unpack('!%dH' % (len(b) // 2), b))
def parse(frame):
    proto = struct.unpack('!H', frame[12:14])[0]
    ip = frame[14:]
    if proto == 0x0800 and ip[9] == 17:
        ihl = (ip[0] & 15) * 4
        tot = struct.unpack('!H', ip[2:4])[0]
        src, dst = socket.inet_ntop(socket.AF_INET, ip[12:16]), socket.inet_ntop(socket.AF_INET, ip[16:20])
        udp = ip[ihl:tot]
        pseudo = ip[12:20] + struct.pack('!BBH', 0, 17, len(udp))
        ttl = ip[8]
        ip_ok = fold(sum16(ip[:ihl])) == 0xffff
    elif proto == 0x86dd and ip[6] == 17:
        plen = struct.unpack('!H', ip[4:6])[0]
        src, dst = socket.inet_ntop(socket.AF_INET6, ip[8:24]), socket.inet_ntop(socket.AF_INET6, ip[24:40])
        udp = ip[40:40 + plen]
        pseudo = ip[8:40] + struct.pack('!IxxxB', len(udp), 17)
        ttl = ip[7]
        ip_ok = True
    else:
        return None
    sport, dport, ulen, check = struct.unpack('!HHHH', udp[:8])
    ok = check != 0 and fold(sum16(pseudo + udp)) == 0xffff
    # CHECKSUM_PARTIAL across veth: the field holds only the folded pseudo-header sum.
    partial_ok = check == fold(sum16(pseudo))
    return {'ev': 'cap', 'src': src, 'sport': sport, 'dst': dst, 'dport': dport, 'ulen': ulen, 'payload': udp[8:].hex(),
            'csum': check, 'csumOk': ok, 'partialOk': partial_ok, 'ipOk': ip_ok, 'ttl': ttl}
out({'ev': 'ready'})
fds = list(socks) + ([raw.fileno()] if raw else []) + [0]
buf = b''
while True:
    for fd in select.select(fds, [], [])[0]:
        if fd == 0:
            chunk = os.read(0, 65536)
            if not chunk: sys.exit(0)
            buf += chunk
            while b'\\n' in buf:
                line, buf = buf.split(b'\\n', 1)
                frm, frm_port, to, to_port, payload = line.decode().split(' ')
                s = next(v[0] for v in socks.values() if v[1] == frm and v[2] == int(frm_port))
                s.sendto(bytes.fromhex(payload), (to, int(to_port)))
        elif raw is not None and fd == raw.fileno():
            frame, info = raw.recvfrom(65536)
            if info[2] == socket.PACKET_OUTGOING: continue
            ev = parse(frame)
            if ev: out(ev)
        else:
            s, addr, port = socks[fd]
            data, src = s.recvfrom(65536)
            out({'ev': 'sock', 'local': addr, 'localPort': port, 'from': src[0], 'fromPort': src[1], 'payload': data.hex()})
`;

export interface Captured {
  readonly ev: 'cap';
  readonly src: string;
  readonly sport: number;
  readonly dst: string;
  readonly dport: number;
  readonly ulen: number;
  readonly payload: string;
  readonly csum: number;
  readonly csumOk: boolean;
  /** The field holds the folded pseudo-header sum (a CHECKSUM_PARTIAL datagram from a veth with tx offload on). */
  readonly partialOk: boolean;
  readonly ipOk: boolean;
  readonly ttl: number;
}

export interface Received {
  readonly ev: 'sock';
  readonly local: string;
  readonly localPort: number;
  readonly from: string;
  readonly fromPort: number;
  readonly payload: string;
}

export type EndpointEvent = Captured | Received | { readonly ev: 'ready' };

const WAIT_MS = 10_000;

/** One python3 endpoint in a namespace. */
export class Endpoint {
  readonly events: EndpointEvent[] = [];
  private readonly waiters = new Set<() => void>();
  private stderr = '';
  private exited = false;

  constructor(
    readonly role: Role,
    private readonly child: ChildProcessWithoutNullStreams,
  ) {
    let partial = '';
    child.stdout.setEncoding('utf8').on('data', (chunk: string) => {
      partial += chunk;
      let nl = partial.indexOf('\n');
      while (nl >= 0) {
        this.events.push(JSON.parse(partial.slice(0, nl)) as EndpointEvent);
        partial = partial.slice(nl + 1);
        nl = partial.indexOf('\n');
      }
      for (const w of this.waiters) w();
    });
    child.stderr.setEncoding('utf8').on('data', (c: string) => (this.stderr += c));
    child.stdin.on('error', () => undefined);
    child.once('close', () => {
      this.exited = true;
      for (const w of this.waiters) w();
    });
  }

  send(from: string, fromPort: number, to: string, toPort: number, payload: Buffer): void {
    this.child.stdin.write(`${from} ${fromPort} ${to} ${toPort} ${payload.toString('hex')}\n`);
  }

  /** Resolves with the first event (from index `after` on) that matches; rejects after WAIT_MS or on exit. */
  waitFor<T extends EndpointEvent>(match: (e: EndpointEvent) => e is T, after = 0): Promise<T> {
    return new Promise((resolve, reject) => {
      const check = (): void => {
        const found = this.events.slice(after).find(match);
        if (found) return done(undefined, found);
        if (this.exited) done(new Error(`${this.role} endpoint exited: ${this.stderr}`));
      };
      const done = (err?: Error, value?: T): void => {
        this.waiters.delete(check);
        clearTimeout(timer);
        if (err) reject(err);
        else resolve(value!);
      };
      const timer = setTimeout(() => done(new Error(`${this.role}: no matching event within ${WAIT_MS} ms; stderr: ${this.stderr}`)), WAIT_MS);
      this.waiters.add(check);
      check();
    });
  }

  stop(): void {
    this.child.stdin.end();
    this.child.kill('SIGKILL');
  }
}

export class DataplaneTopology {
  readonly ns: Record<Role, string>;
  private readonly endpoints: Endpoint[] = [];

  private constructor(prefix: string) {
    this.ns = { C: `${prefix}dp-c`, S: `${prefix}dp-s`, P: `${prefix}dp-p` };
  }

  static async build(): Promise<DataplaneTopology> {
    removeStaleNamespaces();
    const topo = new DataplaneTopology(namespacePrefix());
    try {
      await topo.create();
    } catch (err) {
      await topo.teardown();
      throw err;
    }
    return topo;
  }

  /** Runs `command` in a namespace; throws with its stderr on failure. */
  async exec(role: Role, command: string, args: readonly string[]): Promise<string> {
    const r = await run('ip', ['netns', 'exec', this.ns[role], command, ...args]);
    if (r.code !== 0) throw new Error(`${role}: ${command} ${args.join(' ')} failed (${String(r.code ?? r.signal)}): ${r.stderr.trim()}`);
    return r.stdout;
  }

  private ip(role: Role, ...args: string[]): Promise<string> {
    return this.exec(role, 'ip', args);
  }

  private mac(role: Role, dev: string): string {
    const out = execFileSync('ip', ['-n', this.ns[role], '-j', 'link', 'show', dev], { encoding: 'utf8' });
    return (JSON.parse(out) as { address: string }[])[0]!.address;
  }

  private async create(): Promise<void> {
    for (const role of ['C', 'S', 'P'] as const) {
      trackNamespace(this.ns[role]);
      const r = await run('ip', ['netns', 'add', this.ns[role]]);
      if (r.code !== 0) throw new Error(`ip netns add: ${r.stderr}`);
      await this.ip(role, 'link', 'set', 'lo', 'up');
    }
    await this.exec('S', 'sysctl', ['-q', '-w', 'net.ipv4.ip_forward=1', 'net.ipv6.conf.all.forwarding=1']);
    const links = [
      { far: 'C' as const, dev: 's-c', net4: '198.18.40', net6: '2001:2:0:40::' },
      { far: 'P' as const, dev: 's-p', net4: '198.18.41', net6: '2001:2:0:41::' },
    ];
    for (const { far, dev, net4, net6 } of links) {
      const r = await run('ip', ['link', 'add', dev, 'netns', this.ns.S, 'type', 'veth', 'peer', 'name', 'eth0', 'netns', this.ns[far]]);
      if (r.code !== 0) throw new Error(`veth ${dev}: ${r.stderr}`);
      await this.ip('S', 'addr', 'add', `${net4}.1/24`, 'dev', dev);
      await this.ip('S', 'addr', 'add', `${net6}1/64`, 'dev', dev, 'nodad');
      await this.ip(far, 'addr', 'add', `${net4}.2/24`, 'dev', 'eth0');
      await this.ip(far, 'addr', 'add', `${net6}2/64`, 'dev', 'eth0', 'nodad');
      await this.ip('S', 'link', 'set', dev, 'up');
      await this.ip(far, 'link', 'set', 'eth0', 'up');
      await this.ip(far, 'route', 'add', 'default', 'via', `${net4}.1`);
      await this.ip(far, '-6', 'route', 'add', 'default', 'via', `${net6}1`);
      const farMac = this.mac(far, 'eth0');
      const sMac = this.mac('S', dev);
      for (const [addr, mac, role, d] of [
        [`${net4}.2`, farMac, 'S', dev],
        [`${net6}2`, farMac, 'S', dev],
        [`${net4}.1`, sMac, far, 'eth0'],
        [`${net6}1`, sMac, far, 'eth0'],
      ] as const) {
        await this.ip(role, 'neigh', 'replace', addr, 'lladdr', mac, 'dev', d, 'nud', 'permanent');
      }
    }
    // A local socket's datagram crosses veth as CHECKSUM_PARTIAL while tx offload is on,
    // which the kernel relay passes to user space (docs/dataplane.md, "Checksums").
    await this.setTxChecksumOffload(false);
  }

  /** ethtool -K eth0 tx on|off in C and P. */
  async setTxChecksumOffload(on: boolean): Promise<void> {
    for (const role of ['C', 'P'] as const) await this.exec(role, 'ethtool', ['-K', 'eth0', 'tx', on ? 'on' : 'off']);
  }

  /** ethtool -K <dev> tx|rx on|off in one namespace (S's devices are s-c and s-p, C's and P's eth0). */
  async setOffload(role: Role, dev: string, feature: 'tx' | 'rx', on: boolean): Promise<void> {
    await this.exec(role, 'ethtool', ['-K', dev, feature, on ? 'on' : 'off']);
  }

  /** Starts a python3 endpoint bound to `binds` (address/port); C and P capture eth0 too. */
  async endpoint(role: Role, binds: readonly string[]): Promise<Endpoint> {
    const args = ['netns', 'exec', this.ns[role], 'python3', '-u', '-c', ENDPOINT, role === 'S' ? 'nocapture' : 'capture', ...binds];
    const ep = new Endpoint(role, spawn('ip', args, { stdio: ['pipe', 'pipe', 'pipe'] }));
    this.endpoints.push(ep);
    await ep.waitFor((e): e is { ev: 'ready' } => e.ev === 'ready');
    return ep;
  }

  /** `tc filter show dev <dev> ingress` in S. */
  filters(dev: string): Promise<string> {
    return this.exec('S', 'tc', ['filter', 'show', 'dev', dev, 'ingress']);
  }

  async teardown(): Promise<void> {
    for (const ep of this.endpoints.splice(0)) ep.stop();
    for (const name of Object.values(this.ns)) await deleteNamespace(name);
  }
}

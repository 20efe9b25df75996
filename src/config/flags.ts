// The flag table: one entry per flag. --help (groups, descriptions, defaults), the
// ANYTURN_* environment variables, validation and the typed value all come from it
// (args.ts builds the yargs parser from it, build.ts the ServerConfig); each default
// is written here once, and holds for the CLI and for a config built in code alike.

import { LOG_LEVELS } from '../ops/log.js';
import { DEFAULT_MAX_CONNECTIONS_PER_SOURCE } from '../transport/counters.js';
import { ALLOCATION_LIMIT_DEFAULTS } from '../turn/limits.js';
import {
  alternateServers,
  bool,
  boolOn,
  choice,
  hostPort,
  int,
  interfaceNames,
  ip,
  ips,
  type Kind,
  ranges,
  redisNodes,
  regionName,
  secret,
  secrets,
  text,
  token,
  workerCount,
} from './kinds.js';

/** --help groups, in the order they are printed. */
export const GROUPS = [
  'Network:',
  'Client transports:',
  'Data plane:',
  'Authentication (long-term credentials):',
  'Peer policy and quotas:',
  'Cluster (anycast):',
  'Operations:',
] as const;
export type Group = (typeof GROUPS)[number];

// The table holds kinds of every value type; FlagValue<K> gets each one's back. `any` is
// what lets one table hold Kind<number, ...> and Kind<string[], ...> side by side.
// biome-ignore lint/suspicious/noExplicitAny: see above
type AnyKind = Kind<any, any>;

export interface FlagSpec {
  /** Absent for hidden flags (listed under no group, and not in --help). */
  readonly group?: Group;
  readonly describe?: string;
  readonly hidden?: true;
  readonly kind: AnyKind;
  /** The value taken when the flag is not given, by the CLI and by buildConfig alike. */
  readonly default?: unknown;
  /** Only where the CLI deliberately differs from a config built in code (see the entry's comment). */
  readonly cliDefault?: unknown;
}

const NET: Group = 'Network:';
const TRANSPORT: Group = 'Client transports:';
const DATAPLANE: Group = 'Data plane:';
const AUTH: Group = 'Authentication (long-term credentials):';
const PEERS: Group = 'Peer policy and quotas:';
const CLUSTER: Group = 'Cluster (anycast):';
const OPS: Group = 'Operations:';

// In --help order within each group.
export const FLAGS = {
  'listening-ip': {
    group: NET,
    kind: ips,
    describe: 'Address to listen on (repeatable). Default: every local IPv4 address, each bound on its own so answers leave from the address the client used',
  },
  'listening-port': { group: NET, kind: int(0, 65535), default: 3478, describe: 'UDP and TCP port for STUN/TURN' },
  'relay-ip': {
    group: NET,
    kind: ips,
    describe:
      'Address relayed transport addresses are allocated on (repeatable, IPv4 and IPv6; each adds a port range of capacity). Default: the first non-loopback listening IPv4',
  },
  'min-port': { group: NET, kind: int(1024, 65535), default: 49152, describe: 'Lowest relay port' },
  'max-port': { group: NET, kind: int(1024, 65535), default: 65535, describe: 'Highest relay port' },

  // --no-udp/--no-tcp/--no-tls (coturn's names) arrive as udp/tcp/tls = false; the hidden
  // no-* flags take ANYTURN_NO_UDP=true and the like from the environment.
  udp: { group: TRANSPORT, kind: boolOn, describe: 'Listen for UDP clients on --listening-port; --no-udp (ANYTURN_NO_UDP=true) turns it off' },
  tcp: { group: TRANSPORT, kind: boolOn, describe: 'Listen for TCP clients on --listening-port (RFC 8656 §3.1); --no-tcp turns it off' },
  tls: { group: TRANSPORT, kind: boolOn, describe: 'Listen for TLS clients on --tls-listening-port when --cert and --pkey are given; --no-tls turns it off' },
  'tcp-relay': {
    group: TRANSPORT,
    kind: boolOn,
    describe:
      "RFC 6062 TCP allocations (REQUESTED-TRANSPORT TCP) for TCP and TLS clients, with the peer policy of UDP peers; --no-tcp-relay (coturn's name) turns them off (442)",
  },
  'tls-listening-port': { group: TRANSPORT, kind: int(0, 65535), default: 5349, describe: 'TCP port for TURN over TLS' },
  cert: { group: TRANSPORT, kind: text, describe: 'Certificate chain for TLS (PEM file); with --pkey turns TLS on' },
  pkey: { group: TRANSPORT, kind: text, describe: 'Private key for TLS (PEM file, no passphrase)' },
  'max-tcp-connections': {
    group: TRANSPORT,
    kind: int(0, 10_000_000),
    default: 10_000,
    describe: 'Open TCP+TLS client connections at most; more are closed at once and counted (0 = no cap)',
  },
  'max-tcp-connections-per-ip': {
    group: TRANSPORT,
    kind: int(0, 10_000_000, 'a whole number from 1 to 10000000, or 0 for no per-source limit'),
    default: DEFAULT_MAX_CONNECTIONS_PER_SOURCE,
    describe:
      'Of those, open connections from one source IPv4 address or IPv6 /64; more from it are closed at once and counted (0 = no per-source limit). Raise it for clients behind a large NAT',
  },
  'tcp-idle-timeout': {
    group: TRANSPORT,
    kind: int(1, 3600),
    default: 10,
    describe: 'Seconds a TCP/TLS connection may go without a valid STUN message after accept (TLS handshake included) before it is closed',
  },
  'tcp-unallocated-timeout': {
    group: TRANSPORT,
    kind: int(0, 86_400, 'a whole number of seconds from 1 to 86400, or 0 for never'),
    default: 60,
    describe: 'After its first STUN message, a TCP/TLS connection is checked this often (seconds) and closed when it holds no allocation; 0: never',
  },
  'unauth-error-rate': {
    group: TRANSPORT,
    kind: int(0, 1_000_000),
    default: 20,
    describe:
      'Error answers (400/401/420/438) to unauthenticated requests per second per source IPv4 address or IPv6 /64, over 10,000 tracked sources (Binding answers: 5 times this); more are dropped, so the server is no amplifier (0 = no limit)',
  },
  'unauth-error-burst': { group: TRANSPORT, kind: int(1, 1_000_000), default: 40, describe: 'Burst of such answers a quiet source IP may get back to back' },
  'no-udp': { hidden: true, kind: bool },
  'no-tcp': { hidden: true, kind: bool },
  'no-tls': { hidden: true, kind: bool },
  'no-tcp-relay': { hidden: true, kind: bool },

  dataplane: {
    group: DATAPLANE,
    kind: choice(['auto', 'kernel', 'js'], "'auto', 'kernel' or 'js'"),
    default: 'auto',
    describe:
      "Who relays ChannelData over UDP: 'kernel' (an eBPF program at tc ingress; needs root or CAP_BPF+CAP_NET_ADMIN and the program built by `npm run build:dataplane`; refuses to start without it), 'js' (this process), 'auto' (the kernel where it loads, else js with one log line saying why)",
  },
  'dataplane-interface': {
    group: DATAPLANE,
    kind: interfaceNames,
    describe:
      'Interface client and peer packets arrive on, where the kernel data plane attaches (repeatable). Default: the non-loopback interfaces holding --listening-ip and --relay-ip; name them when those addresses live on lo (anycast)',
  },
  'dataplane-channels': {
    group: DATAPLANE,
    kind: int(1, 16_777_216),
    default: 262_144,
    describe:
      'Channel bindings the kernel data plane holds at most (each both directions); past it a channel is relayed in JavaScript (counted in anyturn_dataplane_kernel_refused_total). Costs 32 bytes of kernel memory per channel, reserved at start (8 MiB at the default)',
  },
  'relay-sockets': {
    group: DATAPLANE,
    kind: choice(['auto', 'shared', 'per-allocation'], "'auto', 'shared' or 'per-allocation'"),
    default: 'auto',
    describe:
      "UDP relay sockets: 'shared' (one socket per relay address, the kernel data plane steering every relayed port to it: O(relay addresses) descriptors; refuses to start without the kernel path), 'per-allocation' (one socket per relayed port), 'auto' (shared where the kernel data plane loaded, else per-allocation). Leave the relay port range to anyturn (net.ipv4.ip_local_reserved_ports)",
  },

  realm: { group: AUTH, kind: text, default: 'anyturn', describe: 'Realm of the long-term credentials' },
  user: { group: AUTH, kind: secrets, describe: 'Static user name:password (repeatable); a password written 0x<32 hex> is the MD5 key itself' },
  userdb: { group: AUTH, kind: text, describe: 'File of name:password lines (# comments allowed)' },
  'use-auth-secret': {
    group: AUTH,
    kind: bool,
    describe: 'Accept time-limited credentials (TURN REST API): username "expiry[:id]", password base64(HMAC-SHA1(secret, username))',
  },
  'static-auth-secret': { group: AUTH, kind: secrets, describe: 'Shared secret for --use-auth-secret (repeatable, for rotation)' },
  'nonce-secret': {
    group: AUTH,
    kind: secret,
    describe:
      "Secret the stateless nonces' key is derived from (HKDF); give every node the same one so nonces survive a reroute. Default: --cluster-secret in a cluster, else random at start",
  },
  'nonce-lifetime': { group: AUTH, kind: int(10, 86400), default: 600, describe: 'Seconds a nonce stays valid before 438 Stale Nonce' },

  'allow-loopback-peers': { group: PEERS, kind: bool, default: false, describe: 'Allow relaying to 127.0.0.0/8 and ::1 (tests, development)' },
  'allowed-peer-ip': { group: PEERS, kind: ranges, describe: 'Peer range to allow even if denied by default: IP, CIDR or first-last (repeatable)' },
  'denied-peer-ip': { group: PEERS, kind: ranges, describe: 'Extra peer range to refuse with 403 (repeatable)' },
  'user-quota': { group: PEERS, kind: int(0, 1_000_000_000), default: 0, describe: 'Allocations per username (0 = unlimited); more get 486' },
  'total-quota': { group: PEERS, kind: int(0, 1_000_000_000), default: 0, describe: 'Allocations on this node (0 = unlimited); more get 508' },
  // Bytes per second as coturn's --max-bps and --bps-capacity: each direction (client to peer,
  // peer to client) separately. turn/bandwidth.ts; build.ts refuses 1-1499 (no datagram would pass).
  'max-bps': {
    group: PEERS,
    kind: int(0, 1_000_000_000_000),
    default: 0,
    describe:
      'Bytes per second one allocation may relay in each direction (0 = unlimited); more is dropped (anyturn_dropped_packets_total{reason="bandwidth"}), the allocation stays. Limited allocations stay off the kernel data plane',
  },
  'user-max-bps': {
    group: PEERS,
    kind: int(0, 1_000_000_000_000),
    default: 0,
    describe:
      'Bytes per second one username may relay in each direction over all its allocations, across the cluster through the store (usage exchanged every second); 0 = unlimited',
  },
  'bps-capacity': {
    group: PEERS,
    kind: int(0, 1_000_000_000_000),
    default: 0,
    describe: 'Bytes per second this node relays in each direction, all allocations together (0 = unlimited; split between --workers); more is dropped',
  },
  'max-allocate-lifetime': { group: PEERS, kind: int(600, 86400), default: 3600, describe: 'Longest allocation lifetime granted, in seconds' },
  mobility: {
    group: PEERS,
    kind: bool,
    default: false,
    describe:
      'RFC 8016 mobility: an Allocate with MOBILITY-TICKET gets a ticket, and a Refresh with it from a new client address moves the allocation there (on any node of a cluster). Off: 405 Mobility Forbidden',
  },
  'max-permissions-per-allocation': {
    group: PEERS,
    kind: int(1, 100_000),
    default: ALLOCATION_LIMIT_DEFAULTS.permissionsPerAllocation,
    describe: 'Peer IPs with a permission in one allocation; more get 508',
  },
  // RFC 8656 §12: channel numbers 0x4000-0x7FFF, so no allocation holds more than 16,384.
  'max-channels-per-allocation': {
    group: PEERS,
    kind: int(1, 16_384),
    default: ALLOCATION_LIMIT_DEFAULTS.channelsPerAllocation,
    describe: 'Channel bindings in one allocation (quarantined ones included); more get 508',
  },
  'max-peers-per-request': {
    group: PEERS,
    kind: int(1, 10_000),
    default: ALLOCATION_LIMIT_DEFAULTS.peersPerRequest,
    describe: 'XOR-PEER-ADDRESS attributes in one CreatePermission; more get 508',
  },

  'redis-url': {
    group: CLUSTER,
    kind: text,
    describe: 'Shared allocation store (redis:// or rediss://). Without it (or --redis-sentinel, --redis-cluster): the in-memory store, one node',
  },
  'redis-sentinel': {
    group: CLUSTER,
    kind: redisNodes,
    describe: "Shared store through Redis Sentinel: a sentinel's host:port (repeatable); needs --redis-sentinel-name",
  },
  'redis-sentinel-name': { group: CLUSTER, kind: text, describe: 'The master group the sentinels monitor ("sentinel monitor <name> ..."), e.g. mymaster' },
  'redis-cluster': { group: CLUSTER, kind: redisNodes, describe: "Shared store on Redis Cluster: a node's host:port (repeatable; the others are discovered)" },
  'redis-password': {
    group: CLUSTER,
    kind: secret,
    describe:
      'Password of the Redis nodes (AUTH) with --redis-sentinel or --redis-cluster (--redis-url carries its own). Prefer ANYTURN_REDIS_PASSWORD: flags show in ps',
  },
  'redis-tls': {
    group: CLUSTER,
    kind: bool,
    describe: 'TLS to the sentinels and master (--redis-sentinel) or every node (--redis-cluster); certificates are verified. For --redis-url write rediss://',
  },
  'redis-ca': {
    group: CLUSTER,
    kind: text,
    describe: 'PEM file of the CA certificate(s) that sign the Redis certificates, with --redis-tls or rediss:// (default: the system CAs)',
  },
  region: {
    group: CLUSTER,
    kind: regionName,
    describe:
      "This node's region: the nodes of a region share one store (the store flags as without it), and the region's name is part of every key and event channel, so regions never see each other's allocations, even on one Redis. A client rerouted to another region gets 437 and allocates again there (docs/scaling.md)",
  },
  'mesh-address': { group: CLUSTER, kind: hostPort, describe: "This node's unicast ip:port for node-to-node forwarding (required with a shared store)" },
  'cluster-secret': {
    group: CLUSTER,
    kind: secret,
    describe:
      'Secret shared by every node (at least 16 bytes): keys are derived from it (HKDF) to encrypt and authenticate mesh frames, and for nonces unless --nonce-secret is given',
  },
  'cluster-lookup-rate': {
    group: CLUSTER,
    kind: int(1, 1_000_000),
    default: 500,
    describe: "Store lookups per second for packets from unknown 5-tuples (junk can't hammer Redis)",
  },
  'relay-mode': {
    group: CLUSTER,
    kind: choice(
      ['unicast', 'anycast'],
      "'unicast' (relayed addresses on each node's own --relay-ip) or 'anycast' (--relay-ip is an address every node carries)",
    ),
    default: 'unicast',
    describe:
      "unicast: relayed addresses on each node's own --relay-ip, a rerouted client's packets are forwarded to the owner. anycast: --relay-ip is carried by every node, every node serves every allocation, and a node's death loses nothing",
  },

  'node-id': { group: OPS, kind: text, describe: "This node's name in logs and in a shared store. Default: the hostname" },
  // The ops endpoint answers without authentication (only its POSTs need the token) and tells the
  // Node version, memory, descriptors and traffic: loopback unless the operator chooses an address.
  'metrics-ip': {
    group: OPS,
    kind: ip('an IPv4 or IPv6 address to serve /metrics, /healthz and /readyz on'),
    default: '127.0.0.1',
    describe:
      'Address of the ops endpoint: /metrics, /healthz, /readyz, POST /drain. Unauthenticated, so loopback by default; to expose it give a management address (or 0.0.0.0 in a container whose port is published only to the host or an internal network)',
  },
  // Deliberately two defaults: the CLI serves the ops endpoint on 9641 (as coturn does its
  // Prometheus port), while a config built in code (tests, several servers in one process)
  // has no endpoint unless asked, so no two of them contend for one port.
  'metrics-port': { group: OPS, kind: int(0, 65535), default: 0, cliDefault: 9641, describe: 'Port of the ops endpoint (0: off)' },
  'metrics-cache-ms': {
    group: OPS,
    kind: int(0, 60_000, 'a whole number of milliseconds from 1 to 60000, or 0 to render every scrape'),
    default: 1000,
    describe:
      'Milliseconds a /metrics rendering is served again before the next is made, so a flood of scrapes does not walk every allocation each time (0: render every scrape)',
  },
  'log-level': { group: OPS, kind: choice(LOG_LEVELS, `one of ${LOG_LEVELS.join(', ')}`), default: 'info', describe: 'Log level (JSON lines on stdout)' },
  software: { group: OPS, kind: text, default: '', describe: 'SOFTWARE attribute to put in responses (empty: none)' },
  'prometheus-username-labels': {
    group: OPS,
    kind: bool,
    default: false,
    describe: 'Export anyturn_user_allocations{user}, one series per username (off: many users make many series)',
  },
  'admin-token': {
    group: OPS,
    kind: token,
    describe:
      'Bearer token (at least 16 bytes) that POST /drain and POST /undrain on the ops endpoint require; without it they are refused. Prefer ANYTURN_ADMIN_TOKEN: flags show in ps',
  },
  'drain-exit': { group: OPS, kind: bool, default: false, describe: 'Once draining (SIGUSR1 or POST /drain), exit 0 when no allocation is left' },
  'shutdown-timeout': {
    group: OPS,
    kind: int(1, 3600),
    default: 5,
    describe: 'Seconds SIGTERM/SIGINT may take to stop gracefully before the process exits anyway (1-3600)',
  },
  'alternate-server': {
    group: OPS,
    kind: alternateServers,
    describe: "Answer every Allocate with 300 Try Alternate and this ip:port or [ipv6]:port (repeatable: round robin within the client's address family)",
  },
  workers: {
    group: OPS,
    kind: workerCount,
    default: 1,
    describe:
      "Worker processes, one per core: 'auto' = one per core this process may use. Each relays its own slice of the port range; UDP clients stick to one worker through a connected socket, TCP/TLS connections are shared out by the primary",
  },
} as const satisfies Record<string, FlagSpec>;

export type FlagName = keyof typeof FLAGS;
type Table = typeof FLAGS;
type RawOf<K extends FlagName> = Table[K]['kind'] extends Kind<infer R, unknown> ? R : never;
type Parsed<K extends FlagName> = ReturnType<Table[K]['kind']['parse']>;

/** The checked value of flag K; never undefined when the table gives K a default. */
export type FlagValue<K extends FlagName> = Table[K] extends { readonly default: unknown } ? NonNullable<Parsed<K>> : Parsed<K>;

/** Flags as the CLI (or a test) hands them over, before validation. */
export type RawOptions = { readonly [K in FlagName]?: RawOf<K> };

export const ENV_PREFIX = 'ANYTURN';

/** --listening-port -> ANYTURN_LISTENING_PORT (yargs' .env(ENV_PREFIX) maps them so). */
export function envName(flag: FlagName): string {
  return `${ENV_PREFIX}_${flag.toUpperCase().replace(/-/g, '_')}`;
}

export function flagNames(): FlagName[] {
  return Object.keys(FLAGS) as FlagName[];
}

export function spec(flag: FlagName): FlagSpec {
  return FLAGS[flag];
}

/** Flag K as given, or its default, checked and converted by its kind. */
export function read<K extends FlagName>(raw: RawOptions, flag: K): FlagValue<K> {
  const s = spec(flag);
  const given = raw[flag];
  return s.kind.parse(flag, given === undefined ? s.default : given) as FlagValue<K>;
}

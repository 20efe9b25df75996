// The validated configuration the composition root builds from (buildConfig in
// build.ts makes it from the flag table in flags.ts).

import type { LogLevel } from '../ops/log.js';
import type { RedisTarget } from '../store/shared.js';
import type { AlternateServer } from '../turn/admission.js';
import type { AllocationLimits } from '../turn/limits.js';

export type DataplaneMode = 'auto' | 'kernel' | 'js';
export type RelaySocketsMode = 'auto' | 'shared' | 'per-allocation';

export interface DataplaneConfig {
  /** 'kernel': refuse to start without the eBPF path; 'js': never try; 'auto': the kernel path where it loads. */
  readonly mode: DataplaneMode;
  /** --dataplane-interface; empty: the interfaces holding the listening and relay addresses. */
  readonly interfaces: readonly string[];
  /** --dataplane-channels: channel bindings the kernel's maps hold at most. */
  readonly maxChannels: number;
  /** --relay-sockets: one UDP socket per relay address (the kernel steering the ports to it) or per allocation. */
  readonly relaySockets: RelaySocketsMode;
}

export interface ServerConfig {
  readonly nodeId: string;
  readonly listeningIps: readonly string[];
  readonly listeningPort: number;
  readonly relayIps: readonly string[];
  readonly minPort: number;
  readonly maxPort: number;
  readonly realm: string;
  readonly users: ReadonlyMap<string, string>;
  /** Secrets for time-limited credentials; empty when --use-auth-secret is off. */
  readonly authSecrets: readonly string[];
  readonly nonceSecret: Buffer;
  readonly nonceLifetimeSeconds: number;
  readonly maxAllocateLifetimeSeconds: number;
  /** RFC 8016 mobility (--mobility): tickets sealed under a key from the cluster secret, else the nonce secret. */
  readonly mobility: boolean;
  readonly allowLoopbackPeers: boolean;
  readonly allowedPeerIps: readonly string[];
  readonly deniedPeerIps: readonly string[];
  readonly userQuota: number;
  readonly totalQuota: number;
  /** Bandwidth limits in bytes per second per direction (--max-bps, --user-max-bps, --bps-capacity; 0: none). The shape of turn/bandwidth.ts's BandwidthOptions. */
  readonly bandwidth: { readonly maxBps: number; readonly userMaxBps: number; readonly bpsCapacity: number };
  /** Per-allocation and per-request caps (--max-permissions-per-allocation and friends). */
  readonly allocationLimits: AllocationLimits;
  readonly logLevel: LogLevel;
  readonly software: string;
  /** The ops HTTP endpoint (/metrics, /healthz, /readyz); port 0 turns it off. */
  readonly metricsIp: string;
  readonly metricsPort: number;
  /** /metrics is rendered at most once per this many milliseconds (0: every scrape). */
  readonly metricsCacheMs: number;
  /** Present when a shared store is configured (--redis-url, --redis-sentinel or --redis-cluster): the node runs in a cluster. */
  readonly cluster?: ClusterConfig;
  /** UDP and TCP client listeners on --listening-port (--no-udp, --no-tcp turn them off). */
  readonly udp: boolean;
  readonly tcp: boolean;
  /** RFC 6062 TCP allocations for TCP and TLS clients (--no-tcp-relay turns them off). */
  readonly tcpRelay: boolean;
  /** TLS client listeners: present when --cert and --pkey are given and not --no-tls. */
  readonly tls?: TlsConfig;
  /** Open TCP+TLS client connections at most; more are closed at once (0: no cap). */
  readonly maxTcpConnections: number;
  /** Of those, at most this many from one source IPv4 address or IPv6 /64 (0: no per-source limit). */
  readonly maxTcpConnectionsPerIp: number;
  /** A TCP/TLS connection without a valid STUN message this long after accept is closed. */
  readonly tcpIdleTimeoutSeconds: number;
  /** A TCP/TLS connection found holding no allocation at a check this often is closed (0: never). */
  readonly tcpUnallocatedTimeoutSeconds: number;
  /** Per source IP: error answers (400/401/438) to unauthenticated requests per second (0: no limit), and the burst. */
  readonly unauthErrorRate: number;
  readonly unauthErrorBurst: number;
  /** Bearer token for POST /drain and /undrain; undefined refuses them. */
  readonly adminToken?: string;
  /** Exit (0) once draining and no allocation is left. */
  readonly drainExit: boolean;
  /** SIGTERM/SIGINT: how long a graceful stop may take before the process exits anyway. */
  readonly shutdownTimeoutSeconds: number;
  /** Every Allocate is answered 300 with the next of these (round robin per address family). */
  readonly alternateServers: readonly AlternateServer[];
  /** anyturn_user_allocations{user}: off by default (one series per user). */
  readonly prometheusUsernameLabels: boolean;
  /** Who relays ChannelData over UDP (src/dataplane): the kernel path where it loads, and where it attaches. */
  readonly dataplane: DataplaneConfig;
  /** Worker processes (one per core): 1 runs everything in this process; more forks them (src/workers/). */
  readonly workers: number;
}

export interface TlsConfig {
  readonly port: number;
  /** PEM certificate chain and private key, read and checked at startup. */
  readonly cert: Buffer;
  readonly key: Buffer;
  readonly certFile: string;
  readonly keyFile: string;
}

export interface ClusterConfig {
  /** The shared store: one Redis by URL, a Sentinel-managed master, or a Redis Cluster. */
  readonly redis: RedisTarget;
  /** @deprecated Read `redis` instead: the URL when redis.kind is 'url', else ''. Kept while older callers move over. */
  readonly redisUrl: string;
  readonly meshAddress: string;
  readonly meshPort: number;
  readonly clusterSecret: Buffer;
  /** Store lookups per second for 5-tuples with no local allocation. */
  readonly lookupsPerSecond: number;
  /** 'anycast': --relay-ip is shared by every node, and every node serves every allocation. */
  readonly relayMode: 'unicast' | 'anycast';
  /** --region: the store's namespace (absent: none, the key names of old). */
  readonly region?: string;
}

// Prometheus metrics (prom-client). The engine and the cluster bump plain numbers
// (cheap on the packet path); this module turns them into metrics at scrape time,
// so a scrape in the middle of a call shows that call's traffic.

import { Gauge, Histogram, Registry, collectDefaultMetrics } from 'prom-client';
import { MESH_REJECT_REASONS, type ClusterCounters } from '../cluster/counters.js';
import type { DataplaneStatus } from '../dataplane/open.js';
import { dataplaneMetrics, type RelaySocketsStatus, relaySocketMetrics } from './dataplane-metrics.js';
import type { DrainSwitch } from './drain.js';
import { RequestHistogram } from './request-histogram.js';
import { regionInfo, storeMetrics } from './store-metrics.js';
import { tlsCertificateMetrics } from './tls-metrics.js';
import { type Labelled, totalCounter } from './total-counter.js';
import type { AllocationStore } from '../store/types.js';
import { CONNECTION_CLOSE_REASONS, CONNECTION_REFUSAL_REASONS, STREAM_TRANSPORTS, type StreamCounters } from '../transport/counters.js';
import { FRAMING_ERRORS } from '../transport/stream/framer.js';
import { ALLOCATE_REFUSAL_REASONS, BIND_RESULTS, DROP_REASONS, type EngineCounters, STORE_CONFLICT_KINDS, TCP_PEER_OUTCOMES } from '../turn/counters.js';
import type { EngineSnapshot, EngineStats } from '../turn/ports.js';

export interface MetricsSources {
  /** Counts of live state, read at scrape time. */
  readonly engine: EngineStats;
  readonly counters: EngineCounters;
  readonly store: AllocationStore;
  readonly cluster?: ClusterCounters;
  /** TCP/TLS client connections. */
  readonly streams?: StreamCounters;
  readonly drain?: DrainSwitch;
  /** Who relays ChannelData (src/dataplane): its mode, entries and the kernel program's counters. */
  readonly dataplane?: DataplaneStatus;
  /** The UDP relay socket model (--relay-sockets, docs/dataplane.md §8). */
  readonly relaySockets?: RelaySocketsStatus;
  /** anyturn_user_allocations{user}: one series per username, so only when asked (--prometheus-username-labels). */
  readonly usernameLabels?: boolean;
  /** The PEM chain of --cert, when TURN over TLS is on: anyturn_tls_certificate_expiry_seconds. */
  readonly tlsCertificate?: Buffer;
  /** --region, for anyturn_region_info. */
  readonly region?: string | undefined;
}

/** Request handling time, receipt to response: sub-millisecond normally; a slow store shows in the tail. */
const REQUEST_SECONDS_BUCKETS = [0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5];

function single(value: number): readonly Labelled[] {
  return [[{}, value]];
}

export function createMetrics(sources: MetricsSources): Registry {
  const registry = new Registry();
  collectDefaultMetrics({ register: registry, prefix: 'anyturn_process_' });
  stateGauges(registry, sources);
  storeMetrics(registry, sources.store);
  if (sources.region !== undefined) regionInfo(registry, sources.region);
  engineCounters(registry, sources.counters);
  tcpRelayCounters(registry, sources.counters);
  outageCounters(registry, sources.counters);
  replicationCounters(registry, sources.counters);
  if (sources.streams) streamMetrics(registry, sources.streams);
  if (sources.cluster) clusterMetrics(registry, sources.cluster);
  if (sources.dataplane) dataplaneMetrics(registry, sources.dataplane);
  if (sources.relaySockets) relaySocketMetrics(registry, sources.relaySockets);
  if (sources.tlsCertificate) tlsCertificateMetrics(registry, sources.tlsCertificate);
  return registry;
}

/**
 * One engine snapshot for the gauges of one scrape (they collect one after the other in
 * the same turn of the event loop), taken again for the next: a walk over every
 * allocation, not one per gauge.
 */
function oncePerScrape(take: () => EngineSnapshot): () => EngineSnapshot {
  let cached: EngineSnapshot | undefined;
  return () => {
    if (cached === undefined) {
      cached = take();
      setImmediate(() => {
        cached = undefined;
      });
    }
    return cached;
  };
}

/** What is live now: allocations, permissions, channels (EngineSnapshot), the drain switch. */
function stateGauges(registry: Registry, sources: MetricsSources): void {
  const { drain } = sources;
  const engine = { snapshot: oncePerScrape(() => sources.engine.snapshot()) };
  new Gauge({
    name: 'anyturn_allocations',
    help: 'Live allocations on this node, by client transport and relayed address family (ipv4, ipv6, dual)',
    labelNames: ['transport', 'family'],
    registers: [registry],
    collect() {
      this.reset();
      for (const { transport, family, count } of engine.snapshot().allocations) this.set({ transport, family }, count);
    },
  });
  new Gauge({
    name: 'anyturn_permissions',
    help: 'Installed permissions (peer IPs) over all live allocations',
    registers: [registry],
    collect() {
      this.set(engine.snapshot().permissions);
    },
  });
  new Gauge({
    name: 'anyturn_channel_bindings',
    help: 'Channel bindings over all live allocations',
    registers: [registry],
    collect() {
      this.set(engine.snapshot().channels);
    },
  });
  new Gauge({
    name: 'anyturn_allocations_local_only',
    help: 'Live allocations with no record of their own in the store: made while it was unreachable (not yet written back), or that lost a conflict after the outage',
    registers: [registry],
    collect() {
      this.set(engine.snapshot().localOnly);
    },
  });
  new Gauge({
    name: 'anyturn_draining',
    help: '1 while the node drains (SIGUSR1 or POST /drain): new Allocates get 403, live allocations go on',
    registers: [registry],
    aggregator: 'max',
    collect() {
      this.set(drain?.draining ? 1 : 0);
    },
  });
  if (sources.usernameLabels) {
    new Gauge({
      name: 'anyturn_user_allocations',
      help: 'Live allocations on this node by username (--prometheus-username-labels)',
      labelNames: ['user'],
      registers: [registry],
      collect() {
        // Users whose allocations ended drop out of the scrape instead of staying at 0.
        this.reset();
        for (const [user, count] of engine.snapshot().allocationsByUser) this.set({ user }, count);
      },
    });
  }
}

/** RFC 6062 TCP relays (turn/methods/connect.ts, connection-bind.ts). */
function tcpRelayCounters(registry: Registry, counters: EngineCounters): void {
  totalCounter(
    registry,
    'anyturn_tcp_peer_connections_total',
    'RFC 6062 TCP relay peer data connections, by outcome: connected (Connect), connect_failed (447), accepted (inbound, announced), bound (ConnectionBind)',
    ['outcome'],
    () => TCP_PEER_OUTCOMES.map((outcome) => [{ outcome }, counters.tcpPeerConnections[outcome]] as const),
  );
}

/** The engine's running totals (EngineCounters) and its request-time histogram. */
function engineCounters(registry: Registry, counters: EngineCounters): void {
  const requestSeconds = new RequestHistogram(
    registry,
    'anyturn_request_duration_seconds',
    'Time from receiving a STUN/TURN request to sending its response, by method',
    'method',
    REQUEST_SECONDS_BUCKETS,
  );
  counters.observeRequestSeconds = (method, seconds) => requestSeconds.observe(method, seconds);

  totalCounter(registry, 'anyturn_requests_total', 'STUN/TURN requests answered, by method and result code (200 = success)', ['method', 'code'], () =>
    [...counters.requests].map(([k, v]) => {
      const [method = '', code = ''] = k.split(' ');
      return [{ method, code }, v] as const;
    }),
  );
  totalCounter(registry, 'anyturn_relayed_packets_total', 'Packets relayed, by direction', ['direction'], () => [
    [{ direction: 'client_to_peer' }, counters.packetsClientToPeer],
    [{ direction: 'peer_to_client' }, counters.packetsPeerToClient],
  ]);
  totalCounter(registry, 'anyturn_relayed_bytes_total', 'Payload bytes relayed, by direction', ['direction'], () => [
    [{ direction: 'client_to_peer' }, counters.bytesClientToPeer],
    [{ direction: 'peer_to_client' }, counters.bytesPeerToClient],
  ]);
  totalCounter(registry, 'anyturn_dropped_packets_total', 'Packets dropped without an answer, by reason', ['reason'], () =>
    DROP_REASONS.map((reason) => [{ reason }, counters.drops[reason]] as const),
  );
  totalCounter(registry, 'anyturn_auth_failures_total', 'Requests answered 401 (no or bad credentials)', [], () => single(counters.authFailures));
  totalCounter(registry, 'anyturn_quota_refusals_total', 'Allocates refused by --user-quota (486) or --total-quota (508)', [], () =>
    single(counters.quotaRefusals),
  );
  totalCounter(
    registry,
    'anyturn_limit_refusals_total',
    'CreatePermission and ChannelBind requests refused with 508 by --max-permissions-per-allocation, --max-channels-per-allocation or --max-peers-per-request',
    [],
    () => single(counters.limitRefusals),
  );
  totalCounter(
    registry,
    'anyturn_peer_policy_refusals_total',
    'Permissions and channel binds refused by the peer policy (403, or not installed from a store record)',
    [],
    () => single(counters.peerPolicyRefusals),
  );
  totalCounter(registry, 'anyturn_mobility_moves_total', 'Allocations moved to a new client 5-tuple by a MOBILITY-TICKET (RFC 8016)', [], () =>
    single(counters.mobilityMoves),
  );
  totalCounter(registry, 'anyturn_mobility_refusals_total', 'Requests with a MOBILITY-TICKET refused (405 off, 400 bad or spent ticket, 437, 441)', [], () =>
    single(counters.mobilityRefusals),
  );
  totalCounter(
    registry,
    'anyturn_store_peer_refusals_total',
    'Permissions and channels in records from the store that the peer policy refused (not installed)',
    [],
    () => single(counters.storePeerRefusals),
  );
  totalCounter(
    registry,
    'anyturn_allocate_refusals_total',
    'Allocates refused for capacity, by reason: total_quota, user_quota (486), relay_ports_full, no_descriptors (EMFILE/ENFILE), bind_error (any other bind error but address in use)',
    ['reason'],
    () => ALLOCATE_REFUSAL_REASONS.map((reason) => [{ reason }, counters.allocateRefusals[reason]] as const),
  );
  totalCounter(
    registry,
    'anyturn_relay_bind_attempts_total',
    'Relay socket binds tried, by result: ok, in_use (another socket holds the port), no_descriptors (EMFILE/ENFILE), error',
    ['result'],
    () => BIND_RESULTS.map((result) => [{ result }, counters.relayBinds[result]] as const),
  );
  totalCounter(registry, 'anyturn_allocations_created_total', 'Allocations created', [], () => single(counters.allocationsCreated));
  totalCounter(registry, 'anyturn_allocations_deleted_total', 'Allocations deleted (expired, refreshed to 0, or shut down)', [], () =>
    single(counters.allocationsDeleted),
  );
  totalCounter(registry, 'anyturn_store_errors_total', 'Store writes that failed (retried on later ticks)', [], () => single(counters.storeErrors));
}

/** Anycast relay mode (turn/allocation/replication.ts): other nodes' allocations taken on here, and those that could not be. */
function replicationCounters(registry: Registry, counters: EngineCounters): void {
  totalCounter(registry, 'anyturn_allocations_adopted_total', "Anycast relay mode: other nodes' allocations taken on here", [], () =>
    single(counters.allocationsAdopted),
  );
  totalCounter(
    registry,
    'anyturn_allocations_adopt_failures_total',
    'Anycast relay mode: allocations that could not be taken on here (the relayed address could not be bound, or an error)',
    [],
    () => single(counters.replicaFailures),
  );
}

/** Degraded mode (docs/architecture.md §5): allocations made while the store was unreachable, and what happened when it returned. */
function outageCounters(registry: Registry, counters: EngineCounters): void {
  totalCounter(registry, 'anyturn_allocations_local_only_total', 'Allocations made while the store was unreachable (local-only until written back)', [], () =>
    single(counters.allocationsLocalOnly),
  );
  totalCounter(registry, 'anyturn_allocations_written_back_total', 'Local-only allocations written to the store once it came back', [], () =>
    single(counters.allocationsWrittenBack),
  );
  totalCounter(
    registry,
    'anyturn_store_conflicts_total',
    'Claims made twice during a store outage, settled when it returned: kind relay_port (anycast relay mode) or five_tuple; outcome kept (here) or lost (served here only until it ends)',
    ['kind', 'outcome'],
    () =>
      STORE_CONFLICT_KINDS.flatMap((kind) =>
        (['kept', 'lost'] as const).map((outcome) => [{ kind, outcome }, counters.storeConflicts[kind][outcome]] as const),
      ),
  );
  totalCounter(
    registry,
    'anyturn_user_quota_overruns_total',
    'Allocations written back after a store outage that put their user over --user-quota (tolerated)',
    [],
    () => single(counters.userQuotaOverruns),
  );
}

/** TCP/TLS client connections. */
function streamMetrics(registry: Registry, streams: StreamCounters): void {
  new Gauge({
    name: 'anyturn_client_connections',
    help: 'Open TCP/TLS client connections, by transport (TLS from accept, handshake included)',
    labelNames: ['transport'],
    registers: [registry],
    collect() {
      for (const transport of STREAM_TRANSPORTS) this.set({ transport }, streams.open[transport]);
    },
  });
  totalCounter(registry, 'anyturn_client_connections_accepted_total', 'TCP/TLS client connections accepted, by transport', ['transport'], () =>
    STREAM_TRANSPORTS.map((transport) => [{ transport }, streams.accepted[transport]] as const),
  );
  totalCounter(
    registry,
    'anyturn_connections_refused_total',
    'TCP/TLS connections closed at accept, by transport and reason (max_connections: --max-tcp-connections open; per_source: --max-tcp-connections-per-ip open from its IPv4 address or IPv6 /64; shutdown)',
    ['transport', 'reason'],
    () =>
      STREAM_TRANSPORTS.flatMap((transport) =>
        CONNECTION_REFUSAL_REASONS.map((reason) => [{ transport, reason }, streams.refused[transport][reason]] as const),
      ),
  );
  totalCounter(
    registry,
    'anyturn_client_connections_closed_total',
    'TCP/TLS client connections closed, by transport and reason (client, idle_timeout, no_allocation, framing_error, tls_handshake, error, shutdown)',
    ['transport', 'reason'],
    () =>
      STREAM_TRANSPORTS.flatMap((transport) => CONNECTION_CLOSE_REASONS.map((reason) => [{ transport, reason }, streams.closed[transport][reason]] as const)),
  );
  totalCounter(
    registry,
    'anyturn_stream_framing_errors_total',
    'TCP/TLS connections closed because the stream was neither STUN nor ChannelData (not_turn) or a frame was over 64 KiB (too_long)',
    ['transport', 'reason'],
    () => STREAM_TRANSPORTS.flatMap((transport) => FRAMING_ERRORS.map((reason) => [{ transport, reason }, streams.framingErrors[transport][reason]] as const)),
  );
}

/** The cluster: mesh forwarding, store lookups for unknown 5-tuples, owner cleanups. */
function clusterMetrics(registry: Registry, cluster: ClusterCounters): void {
  totalCounter(registry, 'anyturn_mesh_forwarded_packets_total', 'Client packets forwarded to their allocation owner over the mesh', [], () =>
    single(cluster.meshForwarded),
  );
  totalCounter(registry, 'anyturn_mesh_received_packets_total', 'Client packets received from other nodes over the mesh', [], () =>
    single(cluster.meshReceived),
  );
  totalCounter(
    registry,
    'anyturn_mesh_too_large_packets_total',
    'Client packets not forwarded over the mesh because, framed, they would not fit in one UDP datagram',
    [],
    () => single(cluster.meshTooLarge),
  );
  totalCounter(
    registry,
    'anyturn_mesh_rejected_frames_total',
    'Mesh frames refused, by reason (malformed, bad_tag, stale, replayed, wrong_sender, no_listener)',
    ['reason'],
    () => MESH_REJECT_REASONS.map((reason) => [{ reason }, cluster.meshRejected[reason]] as const),
  );
  totalCounter(registry, 'anyturn_store_lookups_total', 'Store lookups for 5-tuples with no local allocation', [], () => single(cluster.storeLookups));
  totalCounter(registry, 'anyturn_store_lookup_errors_total', 'Store lookups that failed', [], () => single(cluster.storeLookupErrors));
  totalCounter(registry, 'anyturn_store_lookups_rate_limited_total', 'Unknown 5-tuples not looked up because of the lookup rate limit', [], () =>
    single(cluster.lookupsRateLimited),
  );
  totalCounter(registry, 'anyturn_allocations_resumed_total', 'Rerouted clients found to own a live allocation on another node', [], () =>
    single(cluster.allocationsResumed),
  );
  totalCounter(registry, 'anyturn_dead_owner_cleanups_total', 'Allocation records removed because their owner node was dead', [], () =>
    single(cluster.deadOwnerCleanups),
  );
  totalCounter(registry, 'anyturn_heartbeat_failures_total', 'Heartbeats this node failed to write', [], () => single(cluster.heartbeatFailures));
  new Gauge({
    name: 'anyturn_startup_sync_seconds',
    help: 'Anycast relay mode: seconds the start-up sync from the store took (0 until it is over; /readyz is 503 meanwhile)',
    registers: [registry],
    collect() {
      this.set(cluster.startupSyncSeconds);
    },
  });
  const lookupSeconds = new Histogram({
    name: 'anyturn_store_lookup_seconds',
    help: 'Latency of store lookups for unknown 5-tuples',
    buckets: [0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1],
    registers: [registry],
  });
  cluster.observeLookupSeconds = (s) => lookupSeconds.observe(s);
}

// The allocation store seam. Records are plain, serialisable data with a version;
// every method is async so that a shared store (Redis) fits behind the same
// interface. The engine's packet path never awaits the store: it reads its own
// local state and writes changes through.

export type ClientTransportKind = 'udp' | 'tcp' | 'tls';

export interface ChannelRecord {
  readonly peerAddress: string;
  readonly peerPort: number;
  readonly expiresAtMs: number;
}

export interface AllocationRecord {
  /** The client 5-tuple as text: see fiveTupleKey(). */
  readonly key: string;
  readonly transport: ClientTransportKind;
  readonly clientAddress: string;
  readonly clientPort: number;
  readonly serverAddress: string;
  readonly serverPort: number;
  readonly relayedAddress: string;
  readonly relayedPort: number;
  /** The IPv6 relayed address of a dual allocation (ADDITIONAL-ADDRESS-FAMILY). */
  readonly additionalRelayedAddress?: string;
  readonly additionalRelayedPort?: number;
  readonly ownerNodeId: string;
  readonly username: string;
  readonly realm: string;
  readonly createdAtMs: number;
  readonly expiresAtMs: number;
  /** Peer IP -> permission expiry (ms). */
  readonly permissions: Readonly<Record<string, number>>;
  /** Channel number (decimal) -> binding. */
  readonly channels: Readonly<Record<string, ChannelRecord>>;
  /** RFC 8016 moves of this allocation so far (absent: none); a mobility ticket is good only for the current one. */
  readonly mobilityGeneration?: number;
  /** Set on the record a move wrote: the key it was written under before (other nodes re-key their copy). */
  readonly movedFrom?: string;
  /** Bumped by the store on every successful write; guards compare-and-set updates. */
  readonly version: number;
}

/** The reason of the 'deleted' event a move (RFC 8016) publishes for the old key: the allocation lives on. */
export const MOVED = 'moved';

export type NewAllocationRecord = Omit<AllocationRecord, 'version'>;

export interface AllocationLimits {
  /** Allocations one username may hold across every node sharing this store; 0 = unlimited. */
  readonly userQuota: number;
}

export type CreateOutcome =
  | { readonly ok: true; readonly record: AllocationRecord }
  | { readonly ok: false; readonly reason: 'exists' | 'user-quota' }
  /** `additional`: the clash is on the additional (IPv6) relayed address of a dual allocation. */
  | { readonly ok: false; readonly reason: 'port-taken'; readonly additional?: true };

/** A move (RFC 8016): `exists` another allocation holds the new key; `conflict` the old record changed (current, if any). */
export type MoveOutcome =
  | { readonly ok: true; readonly record: AllocationRecord }
  | { readonly ok: false; readonly reason: 'exists' | 'missing' | 'conflict'; readonly current?: AllocationRecord };

export type UpdateOutcome =
  | { readonly ok: true; readonly record: AllocationRecord }
  | { readonly ok: false; readonly reason: 'missing' | 'conflict'; readonly current?: AllocationRecord };

export interface ReservedPort {
  readonly relayedAddress: string;
  readonly relayedPort: number;
}

export type StoreEvent =
  | { readonly type: 'created'; readonly record: AllocationRecord }
  | { readonly type: 'updated'; readonly record: AllocationRecord }
  | { readonly type: 'deleted'; readonly key: string; readonly ownerNodeId: string; readonly reason: string };

export type StoreEventListener = (event: StoreEvent) => void;

export interface AllocationStore {
  readonly kind: string;
  /** False while the store can't be reached (a shared store's connection is down). */
  isAvailable(): boolean;
  /**
   * Atomically: refuses when the key exists, when a relayed port (the additional
   * one of a dual allocation too) is reserved by someone else, or when the user is
   * at quota; otherwise inserts the record at version 1, reserves its relayed
   * port(s) and counts it against the user. A store that decides within the call (the
   * memory store) may answer without a promise; a failure to reach the store is always a
   * rejected promise.
   */
  create(record: NewAllocationRecord, limits: AllocationLimits): CreateOutcome | Promise<CreateOutcome>;
  get(key: string): Promise<AllocationRecord | undefined>;
  /**
   * Compare-and-set: writes `record` when the stored version equals record.version; stores
   * version + 1. Like create, answered without a promise by a store that decides within the
   * call; a failure to reach the store is a rejected promise.
   */
  update(record: AllocationRecord): UpdateOutcome | Promise<UpdateOutcome>;
  /** Deletes the record (if expectedVersion is given, only at that version), frees its port and quota. */
  delete(key: string, reason: string, expectedVersion?: number): Promise<boolean>;
  /**
   * RFC 8016 mobility: the allocation at `fromKey` (only at `expectedVersion`) is written
   * under `record.key` instead, its relayed port(s) and user count carried over, never
   * counted twice. Events: 'deleted' of fromKey with reason 'moved', then 'created' of
   * the new record with `movedFrom` (two keys: on a Redis Cluster, heard in either
   * order, see subscribe()). The deletion is the commit point: of two moves of one
   * record, one wins.
   */
  move(fromKey: string, expectedVersion: number, record: NewAllocationRecord): Promise<MoveOutcome>;
  countUserAllocations(username: string): Promise<number>;
  /**
   * Every allocation record (anycast relay mode: a node starting up takes on all of
   * them). Not for request paths.
   */
  listAllocations(): Promise<AllocationRecord[]>;
  /** Holds a relayed port outside any allocation (EVEN-PORT's R bit) under an opaque token. */
  reservePort(token: string, port: ReservedPort, ttlMs: number): Promise<boolean>;
  /** Redeems a token once; undefined when unknown or expired. */
  takeReservation(token: string): Promise<ReservedPort | undefined>;
  /**
   * Delivers events of every writer (this node's included), asynchronously; each key's
   * in the order they were written. Events of two keys may be heard in another order
   * than they were written where two servers publish them (Redis Cluster: two slots'
   * masters, relayed over the cluster bus), a move's two included: no listener may rely
   * on the order across keys (replication.ts ignores a move's deletion for that reason).
   */
  subscribe(listener: StoreEventListener): () => void;
  /**
   * A listener that hears only the events of the keys it watches, delivered as subscribe()
   * delivers them (forward mode: a node hears about the 5-tuples it has cached, not every
   * allocation in the store, docs/scaling.md "The event feed"). Starts the store's event
   * feed (and its heartbeat) as subscribe() does. Absent: the caller subscribes to every event.
   */
  watcher?(listener: StoreEventListener): KeyWatcher;
  /** How healthy the event feed is, for stores whose feed can silently die (Redis pub/sub). */
  eventStats?(): StoreEventStats;
  /**
   * The per-user bandwidth limit across the cluster (turn/bandwidth.ts): stores this node's
   * demand for each user (kept for ttlMs) and answers, in the same order, the sum of the
   * other nodes' fresh demands. One store operation per user. Absent: the limit is per node.
   */
  exchangeUsage?(nodeId: string, reports: readonly UsageReport[], nowMs: number, ttlMs: number): Promise<UsageTotals[]>;
  close(): Promise<void>;
}

/** A listener of the events of chosen keys (AllocationStore.watcher). */
export interface KeyWatcher {
  /** The events of `key` reach the listener until the watch is closed (one watch per call). */
  watch(key: string): StoreWatch;
  /** Closes every watch of this watcher. */
  close(): void;
}

/** One key's event subscription (KeyWatcher.watch). */
export interface StoreWatch {
  /**
   * Resolves once events published from now on reach the listener, or when the store
   * could not confirm that within its connect timeout (never rejects): a caller that
   * reads the record after it misses no change made after the read.
   */
  readonly ready: Promise<void>;
  /** Stops the deliveries (idempotent). */
  close(): void;
}

/** One node's demand for one user's bandwidth: bytes per second offered in each direction over the last exchange period. */
export interface UsageReport {
  readonly username: string;
  /** Client to peer. */
  readonly up: number;
  /** Peer to client. */
  readonly down: number;
}

/** What the other nodes reported for a user: their summed demand and how many have some, per direction. */
export interface UsageTotals {
  readonly up: number;
  readonly down: number;
  readonly upNodes: number;
  readonly downNodes: number;
}

/**
 * The text form of a client 5-tuple, used as the store key (not on the packet path). Joined,
 * not a template literal: V8 keeps a template's result as a tree of concatenations (nine
 * objects, ~280 B more than the flat string), and every live allocation keeps its key
 * (docs/scaling.md, "At scale").
 */
export function fiveTupleKey(transport: ClientTransportKind, clientAddress: string, clientPort: number, serverAddress: string, serverPort: number): string {
  return [transport, clientAddress, clientPort, serverAddress, serverPort].join('|');
}

/** A cluster node as the registry knows it: alive while its heartbeat is fresh. */
export interface NodeInfo {
  readonly nodeId: string;
  /** Unicast address and port of the node's mesh socket (node-to-node forwarding). */
  readonly meshAddress: string;
  readonly meshPort: number;
  /** The node's relay addresses: the other nodes refuse its service ports as peers (turn/peer-policy.ts). */
  readonly relayAddresses?: readonly string[];
  /** The node's service ports (client listening ports, ops/metrics, mesh). */
  readonly servicePorts?: readonly number[];
  /** The node's --region (absent: none); every node of one store has the same. */
  readonly region?: string;
}

/** Cluster membership by heartbeats with a TTL. */
export interface NodeRegistry {
  /** Announces (or keeps alive) this node for ttlMs. */
  heartbeat(node: NodeInfo, ttlMs: number): Promise<void>;
  /** The node, or undefined when its heartbeat has expired (the node is dead). */
  getNode(nodeId: string): Promise<NodeInfo | undefined>;
  /** Withdraws a node at once (graceful shutdown). */
  removeNode(nodeId: string): Promise<void>;
  /** Every live node (membership, every few seconds: never on a request path). */
  listNodes(): Promise<NodeInfo[]>;
}

/** The event feed's own heartbeat: published, heard back, and subscriptions made again. */
export interface StoreEventStats {
  /** Heartbeats the store accepted. */
  readonly heartbeatsPublished: number;
  /** Own heartbeats that came back through the subscription. */
  readonly heartbeatsReceived: number;
  /** Times the subscription was torn down and made again. */
  readonly resubscriptions: number;
  /** Milliseconds since the last own heartbeat came back (undefined: none yet). */
  readonly lastEchoAgeMs: number | undefined;
  /** Allocation events the store delivered to this node (every one it heard, wanted or not). */
  readonly eventsReceived: number;
}

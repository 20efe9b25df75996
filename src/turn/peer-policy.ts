// Peer address policy: may this TURN server relay to a given peer IP?
//
// RFC 8656 §21.2 (and §17, "Permissions") leave the choice of reachable
// peers to the server; a relay that forwards to loopback, link-local (cloud
// metadata at 169.254.169.254), private or other special-purpose space turns
// into an SSRF gateway into the operator's own network. This module is pure:
// it parses addresses into numbers once (src/net), compares them against range
// tables built in createPeerPolicy, and never throws from check().
//
// Order of decisions in check(), first match wins:
//   1. not a valid IPv4/IPv6 literal             -> 'invalid'
//   2. inside an operator allow range             -> allowed (beats every deny)
//   3. inside an operator deny range              -> 'denied-by-operator'
//   4. loopback and allowLoopbackPeers            -> allowed (even a loopback
//      server address: tests run client, server and peers on 127.0.0.1)
//   5. one of the server's own addresses          -> 'server-address' (relayPorts: allowed, below)
//   6. the default special-purpose tables         -> reason of the most specific block
//   7. otherwise                                  -> allowed
// Steps 2-6 match an IPv6 address both literally and through the IPv4
// address it embeds (IPv4-mapped, IPv4-compatible, SIIT, NAT64 64:ff9b::/96,
// 6to4), so every written form of an IPv4 address gets the IPv4 verdict.
//
// The server's own service ports, whatever is allowed. A permission is per IP
// (RFC 8656 §9) and may rightly name a server address: two allocations on the
// same server relay to each other through their relayed transport addresses
// (RFC 8656 §2: a peer may itself be a TURN relay), and with
// --allow-loopback-peers or an --allowed-peer-ip range covering the server,
// check() above allows that IP. With `relayPorts` (--min-port to --max-port) a
// server address is a peer by default at a relayed port only (two browsers on
// one TURN service); its other ports (SSH, a database) get 403 or a counted
// drop ('peer_server_port'). What is never allowed is a peer ip:port that
// is a server (or cluster) address AND a service port: the client listening
// ports (UDP, TCP, TLS), the ops/metrics port and the mesh port, of this node
// or of any cluster node (TURN-to-self loops, requests to the ops endpoint or
// the mesh coming from the relay; RFC 8656 §21). checkPeer(ip, port) adds that
// rule to check(ip) for ChannelBind (403); a Send indication or ChannelData to
// such a peer is dropped and counted (the engine asks isServerAddress and
// isServerPeer only for a service port or one outside the relayed ports).
// Server addresses and service ports grow at run time (ports bound at start,
// cluster nodes as membership learns them): `generation` changes then.

import { embeddedIPv4, IPV4_MAPPED_FIRST, IPV4_MAPPED_LAST, ipv4EmbeddingOf, type IPv4Embedding } from '../net/embedded-ipv4.js';
import { type IpRange, parseIpRange, parseIpValue, PeerRangeError } from '../net/range.js';

/** A stable, short reason for a refusal; safe to use as a metric label. */
export type PeerDenyReason =
  | 'invalid'
  | 'unspecified'
  | 'loopback'
  | 'private'
  | 'cgnat'
  | 'link-local'
  | 'unique-local'
  | 'multicast'
  | 'broadcast'
  | 'documentation'
  | 'reserved'
  | 'server-address'
  | 'denied-by-operator';

export type PeerVerdict = { readonly allowed: true } | { readonly allowed: false; readonly reason: PeerDenyReason };

export interface PeerPolicyOptions {
  /** --allow-loopback-peers: permit 127.0.0.0/8 and ::1 in every written form. */
  readonly allowLoopbackPeers: boolean;
  /** --allowed-peer-ip (repeatable): an address in any of these is allowed, whatever else says. */
  readonly allowedPeerRanges: readonly string[];
  /** --denied-peer-ip (repeatable): denied in addition to the default special-purpose blocks. */
  readonly deniedPeerRanges: readonly string[];
  /** The server's own listening, relay and admin addresses (single IPs or ranges). */
  readonly serverAddresses: readonly string[];
  /** The server's service ports (listening UDP/TCP/TLS, ops/metrics, mesh); more can be added later. */
  readonly servicePorts?: readonly number[];
  /** --min-port to --max-port: a server address at one is another allocation's relayed address (absent: denied). */
  readonly relayPorts?: { readonly min: number; readonly max: number };
}

export interface PeerPolicy {
  /** The verdict for a peer IP (CreatePermission: a permission is per IP, RFC 8656 §9). */
  check(ip: string): PeerVerdict;
  /** check(ip), and never a service port of a server or cluster address (ChannelBind, records from the store). */
  checkPeer(ip: string, port: number): PeerVerdict;
  /** True for one of the server's or its cluster's addresses, in any written form. */
  isServerAddress(ip: string): boolean;
  /** True for a service port of this node or a cluster node. Allocation-free: the relay path asks it per packet. */
  isServicePort(port: number): boolean;
  /** True for a port outside the relayed ports (always false without relayPorts). Allocation-free, per packet. */
  isOutsideRelayPorts(port: number): boolean;
  /** check(ip) allowed `ip` only as one of the server's own addresses (step 5): then only its relayed ports are peers. */
  isServerPeer(ip: string): boolean;
  /** Adds server addresses (single IPs or ranges; a malformed one throws PeerRangeError) and service ports. */
  addServer(addresses: readonly string[], ports: readonly number[]): void;
  /** Bumped whenever addServer adds something: cached isServerAddress answers are stale then. */
  readonly generation: number;
  /** How many server addresses (and ranges) the policy holds. */
  readonly serverAddressCount: number;
}

// ---------------------------------------------------------------------------
// Default special-purpose tables (IANA IPv4/IPv6 Special-Purpose Address
// Registries, RFC 6890). Looked up most-specific first, so a block's own
// reason wins over an enclosing one (255.255.255.255 inside 240.0.0.0/4).

interface Block4 {
  readonly first: number;
  readonly last: number;
  readonly verdict: PeerVerdict;
}
interface Block6 {
  readonly first: bigint;
  readonly last: bigint;
  readonly verdict: PeerVerdict;
}

const ALLOWED: PeerVerdict = Object.freeze({ allowed: true });
/** Allowed as a server's own address (step 5): at a relayed port only (checkPeer). */
const SERVER_PEER: PeerVerdict = Object.freeze({ allowed: true });
const DENIED: { readonly [R in PeerDenyReason]: PeerVerdict } = Object.freeze({
  invalid: deny('invalid'),
  unspecified: deny('unspecified'),
  loopback: deny('loopback'),
  private: deny('private'),
  cgnat: deny('cgnat'),
  'link-local': deny('link-local'),
  'unique-local': deny('unique-local'),
  multicast: deny('multicast'),
  broadcast: deny('broadcast'),
  documentation: deny('documentation'),
  reserved: deny('reserved'),
  'server-address': deny('server-address'),
  'denied-by-operator': deny('denied-by-operator'),
});

function deny(reason: PeerDenyReason): PeerVerdict {
  return Object.freeze({ allowed: false, reason });
}

function cidrTable4(entries: ReadonlyArray<readonly [string, PeerDenyReason]>): readonly Block4[] {
  const blocks = entries.map(([cidr, reason]): Block4 => {
    const r = parseIpRange(cidr);
    if (r.family !== 4) throw new Error(`internal: ${cidr} is not IPv4`);
    return { first: r.first, last: r.last, verdict: DENIED[reason] };
  });
  return Object.freeze(blocks.sort((a, b) => a.last - a.first - (b.last - b.first)));
}

function cidrTable6(entries: ReadonlyArray<readonly [string, PeerDenyReason]>): readonly Block6[] {
  const blocks = entries.map(([cidr, reason]): Block6 => {
    const r = parseIpRange(cidr);
    if (r.family !== 6) throw new Error(`internal: ${cidr} is not IPv6`);
    return { first: r.first, last: r.last, verdict: DENIED[reason] };
  });
  return Object.freeze(
    blocks.sort((a, b) => {
      const d = a.last - a.first - (b.last - b.first);
      return d < 0n ? -1 : d > 0n ? 1 : 0;
    }),
  );
}

const DEFAULT_DENY_V4 = cidrTable4([
  ['0.0.0.0/8', 'unspecified'], // RFC 1122 §3.2.1.3: "this network"
  ['10.0.0.0/8', 'private'], // RFC 1918
  ['100.64.0.0/10', 'cgnat'], // RFC 6598 shared address space
  ['127.0.0.0/8', 'loopback'], // RFC 1122 §3.2.1.3
  ['169.254.0.0/16', 'link-local'], // RFC 3927; cloud metadata is 169.254.169.254
  ['172.16.0.0/12', 'private'], // RFC 1918
  ['192.0.0.0/24', 'reserved'], // RFC 6890 §2.2.2 IETF protocol assignments
  ['192.0.2.0/24', 'documentation'], // RFC 5737 TEST-NET-1
  ['192.88.99.0/24', 'reserved'], // RFC 7526: deprecated 6to4 relay anycast
  ['192.168.0.0/16', 'private'], // RFC 1918
  ['198.18.0.0/15', 'reserved'], // RFC 2544 benchmarking
  ['198.51.100.0/24', 'documentation'], // RFC 5737 TEST-NET-2
  ['203.0.113.0/24', 'documentation'], // RFC 5737 TEST-NET-3
  ['224.0.0.0/4', 'multicast'], // RFC 5771
  ['240.0.0.0/4', 'reserved'], // RFC 1112 §4
  ['255.255.255.255/32', 'broadcast'], // RFC 919 §7 limited broadcast
]);

const DEFAULT_DENY_V6 = cidrTable6([
  ['::/128', 'unspecified'], // RFC 4291 §2.5.2
  ['::1/128', 'loopback'], // RFC 4291 §2.5.3
  ['64:ff9b:1::/48', 'private'], // RFC 8215 local-use NAT64: translates into the operator's own IPv4
  ['100::/64', 'reserved'], // RFC 6666 discard-only
  ['2001::/23', 'reserved'], // RFC 2928 IETF protocol assignments: Teredo 2001::/32 (RFC 4380),
  //                            benchmarking 2001:2::/48, ORCHID 2001:10::/28, ORCHIDv2 2001:20::/28 (RFC 7343)
  ['2001:db8::/32', 'documentation'], // RFC 3849
  ['3fff::/20', 'documentation'], // RFC 9637
  ['5f00::/16', 'reserved'], // RFC 9602 SRv6 SIDs
  ['fc00::/7', 'unique-local'], // RFC 4193
  ['fe80::/10', 'link-local'], // RFC 4291 §2.5.6
  ['fec0::/10', 'reserved'], // RFC 3879: deprecated site-local
  ['ff00::/8', 'multicast'], // RFC 4291 §2.7
]);

function lookup4(table: readonly Block4[], v: number): PeerVerdict | undefined {
  for (const b of table) if (v >= b.first && v <= b.last) return b.verdict;
  return undefined;
}

function lookup6(table: readonly Block6[], v: bigint): PeerVerdict | undefined {
  for (const b of table) if (v >= b.first && v <= b.last) return b.verdict;
  return undefined;
}

/** Everything outside 2000::/3 that is not an embedding form is IANA-reserved or special. */
function isGlobalUnicastFormat(v: bigint): boolean {
  return v >> 125n === 1n;
}

// ---------------------------------------------------------------------------
// The policy.

interface CompiledRanges {
  readonly v4: readonly { readonly first: number; readonly last: number }[];
  readonly v6: readonly { readonly first: bigint; readonly last: bigint }[];
}

const LOW32 = 0xffffffffn;

function compileRanges(texts: readonly string[], option: string): CompiledRanges {
  const v4: { first: number; last: number }[] = [];
  const v6: { first: bigint; last: bigint }[] = [];
  for (const text of texts) {
    let r: IpRange;
    try {
      r = parseIpRange(text);
    } catch (err) {
      if (err instanceof PeerRangeError) throw new PeerRangeError(text, err.problem, option);
      throw err;
    }
    if (r.family === 4) {
      v4.push({ first: r.first, last: r.last });
    } else if (r.first >= IPV4_MAPPED_FIRST && r.last <= IPV4_MAPPED_LAST) {
      // An IPv4-mapped range means the IPv4 addresses themselves.
      v4.push({ first: Number(r.first & LOW32), last: Number(r.last & LOW32) });
    } else {
      v6.push({ first: r.first, last: r.last });
    }
  }
  return { v4, v6 };
}

function matches(ranges: CompiledRanges, v6: bigint | undefined, v4: number | undefined): boolean {
  if (v6 !== undefined) for (const r of ranges.v6) if (v6 >= r.first && v6 <= r.last) return true;
  if (v4 !== undefined) for (const r of ranges.v4) if (v4 >= r.first && v4 <= r.last) return true;
  return false;
}

/** The address as numbers: v6 set for IPv6 text, v4 for IPv4 text or the IPv4 an IPv6 form embeds. */
function numbers(ip: string): { v6: bigint | undefined; v4: number | undefined } | undefined {
  const parsed = typeof ip === 'string' ? parseIpValue(ip) : undefined;
  if (parsed === undefined) return undefined;
  if (parsed.family === 4) return { v6: undefined, v4: parsed.value };
  const embedding = ipv4EmbeddingOf(parsed.value);
  return { v6: parsed.value, v4: embedding === 'none' ? undefined : embeddedIPv4(parsed.value, embedding) };
}

/**
 * The server's own addresses (and its cluster's) and service ports, which grow
 * at run time; `generation` counts the additions.
 */
class ServerSet {
  readonly ranges: { v4: { first: number; last: number }[]; v6: { first: bigint; last: bigint }[] };
  private readonly texts: Set<string>;
  /** One byte per port: 1 for a service port (no hashing on the relay path). */
  readonly servicePorts = new Uint8Array(65536);
  generation = 0;

  constructor(addresses: readonly string[]) {
    const compiled = compileRanges(addresses, 'server address');
    this.ranges = { v4: [...compiled.v4], v6: [...compiled.v6] };
    this.texts = new Set<string>(addresses);
  }

  get count(): number {
    return this.texts.size;
  }

  /** Adds what is new; returns true when anything was. Ports out of 1-65535 are ignored (0 is no port). */
  add(addresses: readonly string[], ports: readonly number[]): boolean {
    let changed = false;
    const fresh = addresses.filter((a) => !this.texts.has(a));
    if (fresh.length > 0) {
      const more = compileRanges(fresh, 'server address');
      this.ranges.v4.push(...more.v4);
      this.ranges.v6.push(...more.v6);
      for (const a of fresh) this.texts.add(a);
      changed = true;
    }
    for (const port of ports) {
      if (!Number.isInteger(port) || port < 1 || port > 65535 || this.servicePorts[port] === 1) continue;
      this.servicePorts[port] = 1;
      changed = true;
    }
    if (changed) this.generation++;
    return changed;
  }

  has(ip: string): boolean {
    const n = numbers(ip);
    return n !== undefined && matches(this.ranges, n.v6, n.v4);
  }
}

/** What check() compares an address against (steps 2-5 of the order at the top). */
interface OwnTables {
  readonly allowed: CompiledRanges;
  readonly denied: CompiledRanges;
  readonly server: CompiledRanges;
  readonly allowLoopback: boolean;
  readonly serverPeers: boolean; // step 5 with relayPorts
}

/** The verdict for a peer IP, in the order of decisions at the top of this file. */
function verdictFor(tables: OwnTables, ip: string): PeerVerdict {
  if (typeof ip !== 'string') return DENIED.invalid;
  const parsed = parseIpValue(ip);
  if (parsed === undefined) return DENIED.invalid;

  let v6: bigint | undefined;
  let v4: number | undefined;
  let embedding: IPv4Embedding = 'none';
  if (parsed.family === 4) {
    v4 = parsed.value;
  } else {
    v6 = parsed.value;
    embedding = ipv4EmbeddingOf(v6);
    if (embedding !== 'none') v4 = embeddedIPv4(v6, embedding);
  }

  if (matches(tables.allowed, v6, v4)) return ALLOWED;
  if (matches(tables.denied, v6, v4)) return DENIED['denied-by-operator'];

  const loopback = v6 === 1n || (v4 !== undefined && v4 >>> 24 === 127);
  if (tables.allowLoopback && loopback) return ALLOWED; // tests run client, server and peers on 127.0.0.1
  if (matches(tables.server, v6, v4)) return tables.serverPeers && !loopback ? SERVER_PEER : DENIED['server-address'];
  return defaultVerdict(v6, v4, embedding);
}

/** Steps 6-7: the default special-purpose tables, else allowed. */
function defaultVerdict(v6: bigint | undefined, v4: number | undefined, embedding: IPv4Embedding): PeerVerdict {
  if (v6 === undefined) return lookup4(DEFAULT_DENY_V4, v4 ?? 0) ?? ALLOWED;
  if (v4 !== undefined) {
    const inner = lookup4(DEFAULT_DENY_V4, v4);
    if (inner !== undefined) return inner;
    // RFC 4291 §2.5.5.1: IPv4-compatible addresses are deprecated; no real host has one.
    return embedding === 'compatible' ? DENIED.reserved : ALLOWED;
  }
  const own = lookup6(DEFAULT_DENY_V6, v6);
  if (own !== undefined) return own;
  return isGlobalUnicastFormat(v6) ? ALLOWED : DENIED.reserved;
}

/**
 * Builds a policy from validated options. Throws PeerRangeError (naming the
 * option) for a malformed range, so a bad config fails at startup.
 *
 * Allow and deny ranges given as IPv4 also match the IPv4 embedded in an
 * IPv6 address (mapped, compatible, SIIT, NAT64, 6to4): allowing
 * 198.18.0.0/15 allows ::ffff:198.18.0.1 too, and denying 8.8.4.0/24 denies
 * 64:ff9b::808:404. IPv6 ranges match the IPv6 address as written.
 */
export function createPeerPolicy(opts: PeerPolicyOptions): PeerPolicy {
  const allowed = compileRanges(opts.allowedPeerRanges, '--allowed-peer-ip');
  const denied = compileRanges(opts.deniedPeerRanges, '--denied-peer-ip');
  const servers = new ServerSet(opts.serverAddresses);
  servers.add([], opts.servicePorts ?? []);
  const relay = opts.relayPorts;
  const tables: OwnTables = { allowed, denied, server: servers.ranges, allowLoopback: opts.allowLoopbackPeers === true, serverPeers: relay !== undefined };
  const [servicePorts, minRelay, maxRelay] = [servers.servicePorts, relay?.min ?? 0, relay?.max ?? 65535];
  const isServerAddress = (ip: string): boolean => servers.has(ip);
  const isOutsideRelayPorts = (port: number): boolean => port < minRelay || port > maxRelay;
  const check = (ip: string): PeerVerdict => verdictFor(tables, ip);

  return {
    check,
    checkPeer(ip: string, port: number): PeerVerdict {
      const verdict = check(ip);
      if (!verdict.allowed) return verdict;
      if (verdict === SERVER_PEER && isOutsideRelayPorts(port)) return DENIED['server-address'];
      if (servicePorts[port] === 1 && isServerAddress(ip)) return DENIED['server-address'];
      return verdict;
    },
    isServerAddress,
    isServicePort: (port: number): boolean => servicePorts[port] === 1,
    isOutsideRelayPorts,
    isServerPeer: (ip: string): boolean => check(ip) === SERVER_PEER,
    addServer(addresses: readonly string[], ports: readonly number[]): void {
      servers.add(addresses, ports);
    },
    get generation(): number {
      return servers.generation;
    },
    get serverAddressCount(): number {
      return servers.count;
    },
  };
}

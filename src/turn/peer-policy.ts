// Peer address policy: may this TURN server relay to a given peer IP?
//
// RFC 8656 §21.2 (and §17, "Permissions") leave the choice of reachable
// peers to the server; a relay that forwards to loopback, link-local (cloud
// metadata at 169.254.169.254), private or other special-purpose space turns
// into an SSRF gateway into the operator's own network. This module is pure:
// it parses addresses into numbers once, compares them against range tables
// built in createPeerPolicy, and never throws from check().
//
// Order of decisions in check(), first match wins:
//   1. not a valid IPv4/IPv6 literal             -> 'invalid'
//   2. inside an operator allow range             -> allowed (beats every deny)
//   3. inside an operator deny range              -> 'denied-by-operator'
//   4. loopback and allowLoopbackPeers            -> allowed (even a loopback
//      server address: tests run client, server and peers on 127.0.0.1)
//   5. one of the server's own addresses          -> 'server-address'
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
// check() above allows that IP. What is never allowed is a peer ip:port that
// is a server (or cluster) address AND a service port: the client listening
// ports (UDP, TCP, TLS), the ops/metrics port and the mesh port, of this node
// or of any cluster node (TURN-to-self loops, requests to the ops endpoint or
// the mesh coming from the relay; RFC 8656 §21). checkPeer(ip, port) adds that
// rule to check(ip) for ChannelBind (403); a Send indication or ChannelData to
// such a peer is dropped and counted (isServicePort + isServerAddress, which
// the engine asks only when the port is a service port). Other ports of a
// server address follow check(ip): they are reachable only when the operator
// allowed that IP (or loopback), and relayed ports are meant to be.
// Server addresses and service ports grow at run time (ports bound at start,
// cluster nodes as membership learns them): `generation` changes then.

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

export type PeerVerdict =
  | { readonly allowed: true }
  | { readonly allowed: false; readonly reason: PeerDenyReason };

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
  /** Adds server addresses (single IPs or ranges; a malformed one throws PeerRangeError) and service ports. */
  addServer(addresses: readonly string[], ports: readonly number[]): void;
  /** Bumped whenever addServer adds something: cached isServerAddress answers are stale then. */
  readonly generation: number;
  /** How many server addresses (and ranges) the policy holds. */
  readonly serverAddressCount: number;
}

/** An inclusive range of addresses of one family, as numbers. */
export type IpRange =
  | { readonly family: 4; readonly first: number; readonly last: number }
  | { readonly family: 6; readonly first: bigint; readonly last: bigint };

const RANGE_SYNTAX =
  "expected 'a.b.c.d', 'a.b.c.d/nn' (nn 0-32), an IPv6 address 'x::y' or 'x::y/nn' (nn 0-128), " +
  "or a 'first-last' range of one family";

export class PeerRangeError extends Error {
  readonly code = 'ERR_PEER_RANGE';
  /** The offending text, exactly as given. */
  readonly range: string;
  /** What is wrong with it. */
  readonly problem: string;
  /** The option it came from (e.g. '--denied-peer-ip'), when known. */
  readonly option: string | undefined;

  constructor(range: string, problem: string, option?: string) {
    const shown = range.length > 80 ? `${range.slice(0, 80)}…` : range;
    super(`${option === undefined ? '' : `${option}: `}invalid peer IP range '${shown}': ${problem}; ${RANGE_SYNTAX}`);
    this.name = 'PeerRangeError';
    this.range = range;
    this.problem = problem;
    this.option = option;
  }
}

// ---------------------------------------------------------------------------
// Address parsing. Strict on purpose: no leading zeros (octal ambiguity, the
// classic '0177.0.0.1' bypass), no shortened or integer IPv4 forms
// ('127.1', '2130706433'), no zone IDs, no brackets, no whitespace.

// Longest textual IPv6: 'ffff:ffff:ffff:ffff:ffff:ffff:255.255.255.255'.
const MAX_ADDRESS_LENGTH = 45;
const MAX_RANGE_LENGTH = 2 * MAX_ADDRESS_LENGTH + 8;

type ParsedIp = { readonly family: 4; readonly value: number } | { readonly family: 6; readonly value: bigint };

const CH_0 = 48;
const CH_9 = 57;
const CH_DOT = 46;
const CH_COLON = 58;

/** Parses s[start, end) as dotted-quad IPv4; -1 if it is not one. */
function parseIpv4(s: string, start: number, end: number): number {
  let value = 0;
  let octets = 0;
  let octet = 0;
  let digits = 0;
  for (let i = start; i < end; i++) {
    const c = s.charCodeAt(i);
    if (c >= CH_0 && c <= CH_9) {
      if (digits === 1 && octet === 0) return -1; // leading zero
      octet = octet * 10 + (c - CH_0);
      digits++;
      if (octet > 255) return -1;
    } else if (c === CH_DOT) {
      if (digits === 0 || octets === 3) return -1;
      value = value * 256 + octet;
      octets++;
      octet = 0;
      digits = 0;
    } else {
      return -1;
    }
  }
  if (digits === 0 || octets !== 3) return -1;
  return value * 256 + octet;
}

function hexValue(c: number): number {
  if (c >= CH_0 && c <= CH_9) return c - CH_0;
  const lower = c | 0x20;
  if (lower >= 97 && lower <= 102) return lower - 87;
  return -1;
}

/**
 * Parses s[start, end) as one IPv6 piece list (no '::'), appending 16-bit
 * groups to out. A dotted IPv4 is accepted only as the last piece when
 * allowV4Tail is set (RFC 4291 §2.2, form 3).
 */
function parseV6Pieces(s: string, start: number, end: number, allowV4Tail: boolean, out: number[]): boolean {
  let i = start;
  while (true) {
    let group = 0;
    let digits = 0;
    let j = i;
    for (; j < end; j++) {
      const c = s.charCodeAt(j);
      if (c === CH_COLON) break;
      if (c === CH_DOT) {
        if (!allowV4Tail) return false;
        // The whole remaining piece must be an IPv4 address.
        let k = j;
        while (k < end && s.charCodeAt(k) !== CH_COLON) k++;
        if (k !== end) return false;
        const v4 = parseIpv4(s, i, end);
        if (v4 < 0) return false;
        out.push(Math.floor(v4 / 0x10000), v4 & 0xffff);
        return true;
      }
      const h = hexValue(c);
      if (h < 0 || digits === 4) return false;
      group = (group << 4) | h;
      digits++;
    }
    if (digits === 0) return false;
    out.push(group);
    if (j === end) return true;
    i = j + 1; // skip ':'
    if (i === end) return false; // trailing single ':'
  }
}

function parseIpv6(s: string): bigint | undefined {
  const groups: number[] = [];
  const gap = s.indexOf('::');
  let headCount: number;
  if (gap === -1) {
    if (!parseV6Pieces(s, 0, s.length, true, groups) || groups.length !== 8) return undefined;
    headCount = 8;
  } else {
    if (s.indexOf('::', gap + 1) !== -1) return undefined; // at most one '::'
    if (gap > 0 && !parseV6Pieces(s, 0, gap, false, groups)) return undefined;
    headCount = groups.length;
    if (gap + 2 < s.length && !parseV6Pieces(s, gap + 2, s.length, true, groups)) return undefined;
    // '::' stands for at least one zero group.
    if (groups.length > 7) return undefined;
  }
  let value = 0n;
  const zeros = 8 - groups.length;
  for (let g = 0; g < groups.length; g++) {
    if (g === headCount) value <<= BigInt(16 * zeros);
    value = (value << 16n) | BigInt(groups[g] ?? 0);
  }
  if (headCount === groups.length) value <<= BigInt(16 * zeros);
  return value;
}

function parseIp(s: string): ParsedIp | undefined {
  if (s.length === 0 || s.length > MAX_ADDRESS_LENGTH) return undefined;
  if (s.indexOf(':') === -1) {
    const v4 = parseIpv4(s, 0, s.length);
    return v4 < 0 ? undefined : { family: 4, value: v4 };
  }
  const v6 = parseIpv6(s);
  return v6 === undefined ? undefined : { family: 6, value: v6 };
}

// ---------------------------------------------------------------------------
// Formatting, only for error messages.

function formatIpv4(v: number): string {
  return `${(v >>> 24) & 255}.${(v >>> 16) & 255}.${(v >>> 8) & 255}.${v & 255}`;
}

/** RFC 5952 §4 canonical text: lower case, longest zero run (>= 2 groups) as '::'. */
function formatIpv6(v: bigint): string {
  const groups: number[] = [];
  for (let shift = 112n; shift >= 0n; shift -= 16n) groups.push(Number((v >> shift) & 0xffffn));
  let bestStart = -1;
  let bestLen = 1;
  for (let i = 0; i < 8; ) {
    if (groups[i] !== 0) {
      i++;
      continue;
    }
    let j = i;
    while (j < 8 && groups[j] === 0) j++;
    if (j - i > bestLen) {
      bestStart = i;
      bestLen = j - i;
    }
    i = j;
  }
  const hex = groups.map((g) => g.toString(16));
  if (bestStart === -1) return hex.join(':');
  return `${hex.slice(0, bestStart).join(':')}::${hex.slice(bestStart + bestLen).join(':')}`;
}

// ---------------------------------------------------------------------------
// Range parsing.

function parsePrefixLength(text: string, max: number): number {
  if (text.length === 0 || text.length > 3) return -1;
  let n = 0;
  for (let i = 0; i < text.length; i++) {
    const c = text.charCodeAt(i);
    if (c < CH_0 || c > CH_9) return -1;
    if (i === 1 && n === 0) return -1; // leading zero
    n = n * 10 + (c - CH_0);
  }
  return n <= max ? n : -1;
}

function parseSingleForRange(original: string, text: string): ParsedIp {
  if (text.length === 0) throw new PeerRangeError(original, 'an address is missing');
  if (text.includes('%')) throw new PeerRangeError(original, `'${text}' has a zone ID, which is not allowed`);
  const ip = parseIp(text);
  if (ip === undefined) throw new PeerRangeError(original, `'${text.length > 60 ? `${text.slice(0, 60)}…` : text}' is not an IPv4 or IPv6 address`);
  return ip;
}

/**
 * Parses one --allowed-peer-ip / --denied-peer-ip value: a single address,
 * a CIDR block ('10.0.0.0/8', '2001:db8::/32') or a coturn-style
 * 'first-last' range of one family. Surrounding whitespace is ignored.
 * A CIDR block with bits set after the prefix is refused rather than
 * silently widened (did '10.0.0.1/8' mean /8 or /32?).
 * IPv6 text stays IPv6 ('::ffff:10.0.0.0/104' is family 6 here).
 * Throws PeerRangeError.
 */
export function parseIpRange(text: string): IpRange {
  const original = text;
  if (typeof text !== 'string') throw new PeerRangeError(String(text), 'not a string');
  if (text.length > MAX_RANGE_LENGTH) throw new PeerRangeError(original, 'too long');
  const trimmed = text.trim();
  if (trimmed.length === 0) throw new PeerRangeError(original, 'empty');

  const dash = trimmed.indexOf('-');
  if (dash !== -1) {
    if (trimmed.indexOf('-', dash + 1) !== -1) throw new PeerRangeError(original, "more than one '-'");
    if (trimmed.includes('/')) throw new PeerRangeError(original, "a 'first-last' range cannot also have a '/nn' prefix");
    const a = parseSingleForRange(original, trimmed.slice(0, dash).trim());
    const b = parseSingleForRange(original, trimmed.slice(dash + 1).trim());
    if (a.family === 4 && b.family === 4) {
      if (a.value > b.value) throw new PeerRangeError(original, 'the first address is greater than the last');
      return { family: 4, first: a.value, last: b.value };
    }
    if (a.family === 6 && b.family === 6) {
      if (a.value > b.value) throw new PeerRangeError(original, 'the first address is greater than the last');
      return { family: 6, first: a.value, last: b.value };
    }
    throw new PeerRangeError(original, 'it mixes IPv4 and IPv6');
  }

  const slash = trimmed.indexOf('/');
  if (slash === -1) {
    const ip = parseSingleForRange(original, trimmed);
    return ip.family === 4
      ? { family: 4, first: ip.value, last: ip.value }
      : { family: 6, first: ip.value, last: ip.value };
  }
  if (trimmed.indexOf('/', slash + 1) !== -1) throw new PeerRangeError(original, "more than one '/'");
  const ip = parseSingleForRange(original, trimmed.slice(0, slash));
  const lengthText = trimmed.slice(slash + 1);
  if (ip.family === 4) {
    const len = parsePrefixLength(lengthText, 32);
    if (len < 0) throw new PeerRangeError(original, `'/${lengthText}' is not a prefix length from 0 to 32`);
    const hostMask = len === 0 ? 0xffffffff : len === 32 ? 0 : 0xffffffff >>> len;
    const first = (ip.value & ~hostMask) >>> 0;
    if (first !== ip.value) {
      throw new PeerRangeError(original, `bits are set after the /${len} prefix (did you mean ${formatIpv4(first)}/${len}?)`);
    }
    return { family: 4, first, last: (first | hostMask) >>> 0 };
  }
  const len = parsePrefixLength(lengthText, 128);
  if (len < 0) throw new PeerRangeError(original, `'/${lengthText}' is not a prefix length from 0 to 128`);
  const hostMask = (1n << BigInt(128 - len)) - 1n;
  const first = ip.value & ~hostMask;
  if (first !== ip.value) {
    throw new PeerRangeError(original, `bits are set after the /${len} prefix (did you mean ${formatIpv6(first)}/${len}?)`);
  }
  return { family: 6, first, last: first | hostMask };
}

// ---------------------------------------------------------------------------
// Default special-purpose tables (IANA IPv4/IPv6 Special-Purpose Address
// Registries, RFC 6890). Looked up most-specific first, so a block's own
// reason wins over an enclosing one (255.255.255.255 inside 240.0.0.0/4).

interface Block4 { readonly first: number; readonly last: number; readonly verdict: PeerVerdict }
interface Block6 { readonly first: bigint; readonly last: bigint; readonly verdict: PeerVerdict }

const ALLOWED: PeerVerdict = Object.freeze({ allowed: true });
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

// ---------------------------------------------------------------------------
// IPv4 embedded in IPv6.

type Embedding =
  | 'none'
  | 'mapped' // ::ffff:0:0/96, RFC 4291 §2.5.5.2
  | 'translated' // ::ffff:0:0:0/96, SIIT (RFC 2765 §2.1)
  | 'nat64' // 64:ff9b::/96, RFC 6052 §2.1
  | 'compatible' // ::/96 except :: and ::1, RFC 4291 §2.5.5.1 (deprecated)
  | '6to4'; // 2002::/16, RFC 3056 §2: IPv4 in bits 16..47

const PREFIX96_MAPPED = 0xffffn;
const PREFIX96_TRANSLATED = 0xffff0000n;
const PREFIX96_NAT64 = 0x0064ff9b0000000000000000n;
const PREFIX16_6TO4 = 0x2002n;
const LOW32 = 0xffffffffn;

function embeddingOf(v: bigint): Embedding {
  const hi96 = v >> 32n;
  if (hi96 === PREFIX96_MAPPED) return 'mapped';
  if (hi96 === PREFIX96_TRANSLATED) return 'translated';
  if (hi96 === PREFIX96_NAT64) return 'nat64';
  if (hi96 === 0n) return v > 1n ? 'compatible' : 'none';
  if (v >> 112n === PREFIX16_6TO4) return '6to4';
  return 'none';
}

function embeddedIpv4(v: bigint, e: Embedding): number {
  return e === '6to4' ? Number((v >> 80n) & LOW32) : Number(v & LOW32);
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

const MAPPED_FIRST = PREFIX96_MAPPED << 32n;
const MAPPED_LAST = MAPPED_FIRST | LOW32;

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
    } else if (r.first >= MAPPED_FIRST && r.last <= MAPPED_LAST) {
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
  const server = compileRanges(opts.serverAddresses, 'server address');
  const serverV4 = server.v4 as { first: number; last: number }[];
  const serverV6 = server.v6 as { first: bigint; last: bigint }[];
  const serverTexts = new Set<string>(opts.serverAddresses);
  /** One byte per port: 1 for a service port (no hashing on the relay path). */
  const servicePorts = new Uint8Array(65536);
  let generation = 0;
  const allowLoopback = opts.allowLoopbackPeers === true;

  /** Adds what is new; returns true when anything was. Ports out of 1-65535 are ignored (0 is no port). */
  function addServer(addresses: readonly string[], ports: readonly number[]): boolean {
    let changed = false;
    const fresh = addresses.filter((a) => !serverTexts.has(a));
    if (fresh.length > 0) {
      const more = compileRanges(fresh, 'server address');
      serverV4.push(...more.v4);
      serverV6.push(...more.v6);
      for (const a of fresh) serverTexts.add(a);
      changed = true;
    }
    for (const port of ports) {
      if (!Number.isInteger(port) || port < 1 || port > 65535 || servicePorts[port] === 1) continue;
      servicePorts[port] = 1;
      changed = true;
    }
    if (changed) generation++;
    return changed;
  }
  addServer([], opts.servicePorts ?? []);

  /** The address as numbers: v6 set for IPv6 text, v4 for IPv4 text or the IPv4 an IPv6 form embeds. */
  function numbers(ip: string): { v6: bigint | undefined; v4: number | undefined } | undefined {
    const parsed = typeof ip === 'string' ? parseIp(ip) : undefined;
    if (parsed === undefined) return undefined;
    if (parsed.family === 4) return { v6: undefined, v4: parsed.value };
    const embedding = embeddingOf(parsed.value);
    return { v6: parsed.value, v4: embedding === 'none' ? undefined : embeddedIpv4(parsed.value, embedding) };
  }

  function isServerAddress(ip: string): boolean {
    const n = numbers(ip);
    return n !== undefined && matches(server, n.v6, n.v4);
  }

  function check(ip: string): PeerVerdict {
    if (typeof ip !== 'string') return DENIED.invalid;
    const parsed = parseIp(ip);
    if (parsed === undefined) return DENIED.invalid;

    let v6: bigint | undefined;
    let v4: number | undefined;
    let embedding: Embedding = 'none';
    if (parsed.family === 4) {
      v4 = parsed.value;
    } else {
      v6 = parsed.value;
      embedding = embeddingOf(v6);
      if (embedding !== 'none') v4 = embeddedIpv4(v6, embedding);
    }

    if (matches(allowed, v6, v4)) return ALLOWED;
    if (matches(denied, v6, v4)) return DENIED['denied-by-operator'];

    const loopback = v6 === 1n || (v4 !== undefined && v4 >>> 24 === 127);
    if (allowLoopback && loopback) return ALLOWED; // tests run client, server and peers on 127.0.0.1
    if (matches(server, v6, v4)) return DENIED['server-address'];

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

  return {
    check,
    checkPeer(ip: string, port: number): PeerVerdict {
      const verdict = check(ip);
      if (!verdict.allowed) return verdict;
      if (servicePorts[port] === 1 && isServerAddress(ip)) return DENIED['server-address'];
      return verdict;
    },
    isServerAddress,
    isServicePort: (port: number): boolean => servicePorts[port] === 1,
    addServer(addresses: readonly string[], ports: readonly number[]): void {
      addServer(addresses, ports);
    },
    get generation(): number {
      return generation;
    },
    get serverAddressCount(): number {
      return serverTexts.size;
    },
  };
}

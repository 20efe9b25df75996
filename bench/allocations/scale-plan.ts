// The scale benchmark's address plan (bench/allocations/scale.ts): which client (address, port)
// pair each allocation uses, how a ramp is split between driver processes, and how many relay
// addresses the server needs. Pure: no sockets, no processes (test/unit/bench/scale-plan.test.ts).
//
// Why explicit pairs: a driver closes its client socket once its allocation holds a permission
// (each driver process stays under the open-file cap), and the allocation lives on at the server
// with the closed socket's 5-tuple. A pair handed out twice would land on a live 5-tuple (437, or
// worse, a Refresh of someone else's allocation), so every ramp allocation of a run gets a pair
// of its own, numbered by its index, and no pair is ever used twice in a run.

/** The C side of the C-S link, and S's side (the server's listening address). */
export const CLIENT_LINK_ADDRESS = '198.18.10.2';
export const LISTENING_ADDRESS = '198.18.10.1';
/** S's side of the S-P link (the first relay address) and the peer's address. */
export const RELAY_LINK_ADDRESS = '198.18.20.1';
export const PEER_ADDRESS = '198.18.20.2';
/** UDP port of the echo peer in P. */
export const PEER_PORT = 5000;

/** Addresses of the churn process, the latency probes and the lifecycle driver: one /24 of their own. */
export const CHURN_ADDRESS = '198.18.11.10';
export const RELAY_PROBE_ADDRESS = '198.18.11.20';
export const DIRECT_PROBE_ADDRESS = '198.18.11.21';
export const LIFECYCLE_ADDRESS = '198.18.11.30';
export const SIDE_PREFIX = '198.18.11.0/24';
/** The ramp's client addresses: 198.18.12.1-250, 198.18.13.1-250, ... within this /22. */
export const RAMP_PREFIX = '198.18.12.0/22';
const RAMP_FIRST_OCTET3 = 12;
const HOSTS_PER_OCTET = 250;
export const MAX_RAMP_ADDRESSES = 4 * HOSTS_PER_OCTET;
/** Extra relay addresses beyond RELAY_LINK_ADDRESS: 198.18.21.1, .2, ... (/32s on S's s-p). */
const EXTRA_RELAY_OCTET3 = 21;
export const MAX_RELAY_ADDRESSES = 1 + 250;

/** Client ports of the ramp start here (C's namespace has nothing else bound). */
export const RAMP_FIRST_PORT = 10000;
/** Relay port range of the server, on every relay address. */
export const RELAY_MIN_PORT = 10000;
export const RELAY_MAX_PORT = 65535;
/** Fill a relay address to at most this share of its range: random port choice stays cheap. */
const RELAY_FILL = 0.8;

export interface Pair {
  readonly address: string;
  readonly port: number;
}

/** The n-th ramp client address (0-based). */
export function rampAddress(n: number): string {
  if (!Number.isInteger(n) || n < 0 || n >= MAX_RAMP_ADDRESSES) throw new RangeError(`ramp address #${n}: 0 to ${MAX_RAMP_ADDRESSES - 1}`);
  return `198.18.${RAMP_FIRST_OCTET3 + Math.floor(n / HOSTS_PER_OCTET)}.${1 + (n % HOSTS_PER_OCTET)}`;
}

/** The client pair of ramp allocation `index`: `portsPerAddress` consecutive ports per address. */
export function rampPair(index: number, portsPerAddress: number): Pair {
  return { address: rampAddress(Math.floor(index / portsPerAddress)), port: RAMP_FIRST_PORT + (index % portsPerAddress) };
}

/** How many ramp addresses `total` allocations take. */
export function rampAddressCount(total: number, portsPerAddress: number): number {
  return Math.ceil(total / portsPerAddress);
}

/** The m-th relay address (0-based): the link address first, then 198.18.21.x. */
export function relayAddress(m: number): string {
  if (!Number.isInteger(m) || m < 0 || m >= MAX_RELAY_ADDRESSES) throw new RangeError(`relay address #${m}: 0 to ${MAX_RELAY_ADDRESSES - 1}`);
  return m === 0 ? RELAY_LINK_ADDRESS : `198.18.${EXTRA_RELAY_OCTET3}.${m}`;
}

/** Relay addresses for `live` allocations at once, each filled to RELAY_FILL of the port range. */
export function relayAddressCount(live: number): number {
  return Math.max(1, Math.ceil(live / (RELAY_FILL * (RELAY_MAX_PORT - RELAY_MIN_PORT + 1))));
}

export interface Slice {
  readonly from: number;
  readonly to: number;
}

/** [from, to) split into at most `parts` contiguous, non-empty, disjoint slices covering it. */
export function slices(from: number, to: number, parts: number): Slice[] {
  const n = to - from;
  if (n <= 0) return [];
  const k = Math.max(1, Math.min(parts, n));
  const out: Slice[] = [];
  for (let i = 0; i < k; i++) {
    const a = from + Math.floor((n * i) / k);
    const b = from + Math.floor((n * (i + 1)) / k);
    if (b > a) out.push({ from: a, to: b });
  }
  return out;
}

// Key names in Redis.
//
// Key layout (prefix "anyturn:" by default). Every key carries a hash tag, so
// each one maps to a single Redis Cluster slot, and every script touches exactly
// one key: nothing here needs the keys to share a slot.
//
//   <p>alloc:{<5-tuple key>}    hash  v = version, r = record JSON, i = identity
//                                      JSON [relayedAddress, relayedPort, username],
//                                      o = ownerNodeId JSON, c = create-attempt nonce
//   <p>port:{<relay ip>|<port>} string  the 5-tuple key of the allocation holding the
//                                      relayed port, or "resv|<token tag>"
//   <p>user:{<sha256(username)>} zset   5-tuple keys of the user's allocations, scored
//                                      by their backstop deadline (ms)
//   <p>bw:{<sha256(username)>}   hash    node id -> "up down untilMs": the user's bandwidth
//                                      demand on each node (usage.ts, --user-max-bps)
//   <p>resv:{<token tag>}        string  JSON {relayedAddress, relayedPort} (EVEN-PORT R)
//   <p>node:{<node id tag>}      string  JSON NodeInfo, PX = heartbeat ttl
//   <p>nodes:{all}               zset    node ids, scored by their heartbeat's deadline
//                                      (ms, the writer's clock): listNodes() reads it
//   <p>ev:{<5-tuple key>}        pub/sub channel of one allocation's events, with the
//                                      hash tag of its alloc key (the key's shard on a
//                                      Redis Cluster): forward-mode nodes SUBSCRIBE to the
//                                      5-tuples they cached, anycast relay mode PSUBSCRIBEs
//                                      <p>ev:* (docs/scaling.md "The event feed")
//   <p>events                    the channel every event went to before per-allocation
//                                      channels (still heard in anycast relay mode, from
//                                      older nodes during an upgrade); <p>events:heartbeat:<origin>
//                                      is each store's own heartbeat (EventWatchdog)
//
// With --region NAME the prefix is "anyturn:region:NAME:" (regionKeyPrefix): two regions
// that share one Redis by mistake never see each other's keys, nodes or events.
//
// Client-chosen strings (usernames, tokens) never appear in a key name: usernames
// are always hashed; addresses, 5-tuple keys, tokens and node ids are used as they
// are only when made of a small safe alphabet (no braces, spaces, quotes, '*'),
// otherwise hashed as '~<sha256>' ('~' is outside every safe alphabet, so a hashed
// name never equals a literal one). Values reach scripts only as ARGV.
//
// Never KEYS, and SCAN only in listAllocations (start-up sync, on every master of a
// Redis Cluster): every request-path lookup is by a computed key.

import { createHash } from 'node:crypto';

export const DEFAULT_KEY_PREFIX = 'anyturn:';

/** The key prefix of a region's store (--region): no key without a region starts with "anyturn:region:". */
export function regionKeyPrefix(region: string | undefined): string {
  return region === undefined ? DEFAULT_KEY_PREFIX : `${DEFAULT_KEY_PREFIX}region:${region}:`;
}

export function validatePrefix(prefix: string): string {
  if (!/^[A-Za-z0-9:_.-]*$/.test(prefix)) {
    throw new Error(`redis key prefix ${JSON.stringify(prefix)} may only contain letters, digits and ":_.-"`);
  }
  return prefix;
}

const SAFE_ADDRESS = /^[0-9A-Za-z.:%_-]{1,64}$/;
const SAFE_FIVE_TUPLE = /^(udp|tcp|tls)\|[0-9A-Za-z.:%_-]{1,64}\|\d{1,5}\|[0-9A-Za-z.:%_-]{1,64}\|\d{1,5}$/;
const SAFE_TOKEN = /^[0-9a-fA-F]{1,128}$/;
const SAFE_NODE_ID = /^[A-Za-z0-9._:-]{1,128}$/;

function sha256Hex(text: string): string {
  return createHash('sha256').update(text, 'utf8').digest('hex');
}

/** `text` when it matches `safe`, otherwise '~' + its SHA-256 (never a literal). */
function tag(text: string, safe: RegExp): string {
  return safe.test(text) ? text : `~${sha256Hex(text)}`;
}

export class KeySpace {
  readonly events: string;
  constructor(private readonly prefix: string) {
    this.events = `${prefix}events`;
  }
  alloc(fiveTupleKey: string): string {
    return `${this.prefix}alloc:{${tag(fiveTupleKey, SAFE_FIVE_TUPLE)}}`;
  }
  /** The channel of one allocation's events: the alloc key's hash tag, so it maps to that key's slot. */
  eventChannel(fiveTupleKey: string): string {
    return `${this.prefix}ev:{${tag(fiveTupleKey, SAFE_FIVE_TUPLE)}}`;
  }
  /** PSUBSCRIBE pattern of every allocation's channel (anycast relay mode hears them all). */
  eventPattern(): string {
    return `${this.prefix}ev:{*`;
  }

  /** SCAN pattern of every allocation key (start-up sync only). */
  allocPattern(): string {
    return `${this.prefix}alloc:{*`;
  }
  port(relayedAddress: string, relayedPort: number): string {
    return `${this.prefix}port:{${tag(relayedAddress, SAFE_ADDRESS)}|${relayedPort}}`;
  }
  user(username: string): string {
    return `${this.prefix}user:{${sha256Hex(username)}}`;
  }
  /** The user's bandwidth demand per node (usage.ts). */
  bandwidth(username: string): string {
    return `${this.prefix}bw:{${sha256Hex(username)}}`;
  }
  tokenTag(token: string): string {
    return tag(token, SAFE_TOKEN);
  }
  reservation(token: string): string {
    return `${this.prefix}resv:{${this.tokenTag(token)}}`;
  }
  /** The index of node ids (listNodes). */
  nodeIndex(): string {
    return `${this.prefix}nodes:{all}`;
  }
  node(nodeId: string): string {
    return `${this.prefix}node:{${tag(nodeId, SAFE_NODE_ID)}}`;
  }
}

// The shared NodeRegistry on Redis: one key per node, kept alive by its heartbeat,
// and an index of node ids so that nodes can list each other (listNodes).

import type { NodeInfo, NodeRegistry } from '../types.js';
import type { RedisClient, RedisConnection } from './connection.js';
import { DEFAULT_KEY_PREFIX, KeySpace, validatePrefix } from './keys.js';
import type { RedisStoreOptions } from './options.js';
import { checkTime, isFiniteNumber, isObject, parseJson } from './records.js';

/** A node id stays in the index this long past its last heartbeat's deadline (clock skew between nodes). */
const INDEX_GRACE_MS = 60_000;
/** The index itself expires when no node has beaten for this long. */
const INDEX_TTL_MS = 24 * 3600_000;
/** listNodes reads at most this many nodes (a bound on a polluted index). */
const MAX_LISTED_NODES = 1024;
/** Addresses and ports kept of one node's record (a bound on a polluted record). */
const MAX_LIST_ITEMS = 64;

function stringList(v: unknown): string[] | undefined {
  if (!Array.isArray(v)) return undefined;
  return v.filter((x): x is string => typeof x === 'string' && x.length <= 64).slice(0, MAX_LIST_ITEMS);
}

function portList(v: unknown): number[] | undefined {
  if (!Array.isArray(v)) return undefined;
  return v.filter((x): x is number => Number.isInteger(x) && (x as number) > 0 && (x as number) <= 65535).slice(0, MAX_LIST_ITEMS);
}

/** A stored NodeInfo, read defensively (anyone who can write Redis can write it). */
function toNodeInfo(parsed: unknown, nodeId?: string): NodeInfo | undefined {
  if (!isObject(parsed) || typeof parsed.nodeId !== 'string' || (nodeId !== undefined && parsed.nodeId !== nodeId)) return undefined;
  if (typeof parsed.meshAddress !== 'string' || !isFiniteNumber(parsed.meshPort)) return undefined;
  const relayAddresses = stringList(parsed.relayAddresses);
  const servicePorts = portList(parsed.servicePorts);
  const region = typeof parsed.region === 'string' && /^[a-z0-9-]{1,32}$/.test(parsed.region) ? parsed.region : undefined;
  return {
    nodeId: parsed.nodeId,
    meshAddress: parsed.meshAddress,
    meshPort: parsed.meshPort,
    ...(relayAddresses ? { relayAddresses } : {}),
    ...(servicePorts ? { servicePorts } : {}),
    ...(region ? { region } : {}),
  };
}

export class RedisNodeRegistry implements NodeRegistry {
  private readonly keys: KeySpace;
  private readonly now: () => number;

  constructor(
    private readonly connection: RedisConnection<RedisClient>,
    options: Pick<RedisStoreOptions, 'keyPrefix' | 'now'> = {},
  ) {
    this.keys = new KeySpace(validatePrefix(options.keyPrefix ?? DEFAULT_KEY_PREFIX));
    this.now = options.now ?? Date.now;
  }

  async heartbeat(node: NodeInfo, ttlMs: number): Promise<void> {
    if (this.connection.isClosed()) throw new Error('store is closed');
    checkTime('ttlMs', ttlMs);
    const value = JSON.stringify({
      nodeId: node.nodeId,
      meshAddress: node.meshAddress,
      meshPort: node.meshPort,
      ...(node.relayAddresses ? { relayAddresses: node.relayAddresses } : {}),
      ...(node.servicePorts ? { servicePorts: node.servicePorts } : {}),
      ...(node.region ? { region: node.region } : {}),
    });
    const px = Math.max(1, Math.ceil(ttlMs));
    await this.connection.client.set(this.keys.node(node.nodeId), value, 'PX', px);
    // Two keys in two slots: two commands. A lost ZADD only delays this node's listing to the next beat.
    const index = this.keys.nodeIndex();
    await this.connection.client.zadd(index, this.now() + px, node.nodeId);
    await this.connection.client.pexpire(index, INDEX_TTL_MS);
  }

  async getNode(nodeId: string): Promise<NodeInfo | undefined> {
    if (this.connection.isClosed()) throw new Error('store is closed');
    return toNodeInfo(parseJson(await this.connection.client.get(this.keys.node(nodeId))), nodeId);
  }

  async listNodes(): Promise<NodeInfo[]> {
    if (this.connection.isClosed()) throw new Error('store is closed');
    const index = this.keys.nodeIndex();
    await this.connection.client.zremrangebyscore(index, '-inf', this.now() - INDEX_GRACE_MS);
    const ids = await this.connection.client.zrange(index, 0, MAX_LISTED_NODES - 1);
    const out: NodeInfo[] = [];
    for (const id of ids) {
      const node = await this.getNode(id);
      if (node) out.push(node);
    }
    return out;
  }

  async removeNode(nodeId: string): Promise<void> {
    if (this.connection.isClosed()) throw new Error('store is closed');
    await this.connection.client.del(this.keys.node(nodeId));
    await this.connection.client.zrem(this.keys.nodeIndex(), nodeId);
  }
}

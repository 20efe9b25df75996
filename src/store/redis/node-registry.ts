// The shared NodeRegistry on Redis: one key per node, kept alive by its heartbeat.

import type { NodeInfo, NodeRegistry } from '../types.js';
import type { RedisClient, RedisConnection } from './connection.js';
import { DEFAULT_KEY_PREFIX, KeySpace, validatePrefix } from './keys.js';
import type { RedisStoreOptions } from './options.js';
import { checkTime, isFiniteNumber, isObject, parseJson } from './records.js';

export class RedisNodeRegistry implements NodeRegistry {
  private readonly keys: KeySpace;

  constructor(
    private readonly connection: RedisConnection<RedisClient>,
    options: Pick<RedisStoreOptions, 'keyPrefix'> = {},
  ) {
    this.keys = new KeySpace(validatePrefix(options.keyPrefix ?? DEFAULT_KEY_PREFIX));
  }

  async heartbeat(node: NodeInfo, ttlMs: number): Promise<void> {
    if (this.connection.isClosed()) throw new Error('store is closed');
    checkTime('ttlMs', ttlMs);
    const value = JSON.stringify({ nodeId: node.nodeId, meshAddress: node.meshAddress, meshPort: node.meshPort });
    await this.connection.client.set(this.keys.node(node.nodeId), value, 'PX', Math.max(1, Math.ceil(ttlMs)));
  }

  async getNode(nodeId: string): Promise<NodeInfo | undefined> {
    if (this.connection.isClosed()) throw new Error('store is closed');
    const parsed = parseJson(await this.connection.client.get(this.keys.node(nodeId)));
    if (!isObject(parsed) || parsed.nodeId !== nodeId || typeof parsed.meshAddress !== 'string' || !isFiniteNumber(parsed.meshPort)) return undefined;
    return { nodeId, meshAddress: parsed.meshAddress, meshPort: parsed.meshPort };
  }

  async removeNode(nodeId: string): Promise<void> {
    if (this.connection.isClosed()) throw new Error('store is closed');
    await this.connection.client.del(this.keys.node(nodeId));
  }
}

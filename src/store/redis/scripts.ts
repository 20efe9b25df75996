// Lua scripts: each touches exactly one key (KEYS[1]); all values come as ARGV.

import { createHash } from 'node:crypto';

import type { RedisClient } from './connection.js';

class LuaScript {
  readonly sha: string;
  constructor(readonly lua: string) {
    this.sha = createHash('sha1').update(lua).digest('hex');
  }

  /** EVALSHA, falling back to EVAL once when the server doesn't know it (e.g. after a restart). */
  async run(client: RedisClient, key: string, ...args: (string | number)[]): Promise<unknown> {
    try {
      return await client.evalsha(this.sha, 1, key, ...args);
    } catch (err) {
      if (err instanceof Error && err.message.startsWith('NOSCRIPT')) return await client.eval(this.lua, 1, key, ...args);
      throw err;
    }
  }
}

/** ARGV: holder, ttlMs. 1 = claimed, 2 = already held by this holder, 0 = held by someone else. */
export const CLAIM_PORT = new LuaScript(`
local holder = redis.call('GET', KEYS[1])
if not holder then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
if holder == ARGV[1] then return 2 end
return 0`);

/** ARGV: holder. Deletes the key only while it still holds `holder`. */
export const RELEASE_IF_HELD = new LuaScript(`
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0`);

/** ARGV: holder, ttlMs. Moves the TTL only while the key still holds `holder`. */
export const TOUCH_IF_HELD = new LuaScript(`
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 0`);

/**
 * The quota check on the user's zset. ARGV: member, score (deadline ms), now ms,
 * quota (0 = unlimited), ttlMs of the zset. Drops members past their deadline first.
 * 1 = added, 2 = already a member, 0 = at quota.
 */
export const USER_ADD = new LuaScript(`
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[3])
if redis.call('ZSCORE', KEYS[1], ARGV[1]) then return 2 end
local quota = tonumber(ARGV[4])
if quota > 0 and redis.call('ZCARD', KEYS[1]) >= quota then return 0 end
redis.call('ZADD', KEYS[1], ARGV[2], ARGV[1])
local ttl = tonumber(ARGV[5])
if redis.call('PTTL', KEYS[1]) < ttl then redis.call('PEXPIRE', KEYS[1], ttl) end
return 1`);

/** ARGV: member, score, ttlMs. Moves an existing member's score (never re-adds a removed one). */
export const USER_TOUCH = new LuaScript(`
if not redis.call('ZSCORE', KEYS[1], ARGV[1]) then return 0 end
redis.call('ZADD', KEYS[1], 'XX', ARGV[2], ARGV[1])
local ttl = tonumber(ARGV[3])
if redis.call('PTTL', KEYS[1]) < ttl then redis.call('PEXPIRE', KEYS[1], ttl) end
return 1`);

/**
 * The commit point of create. ARGV: record JSON, identity, owner JSON, ttlMs,
 * attempt nonce, channel, event JSON. 1 = created (and published), 0 = exists.
 */
export const CREATE_ALLOC = new LuaScript(`
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('HSET', KEYS[1], 'v', '1', 'r', ARGV[1], 'i', ARGV[2], 'o', ARGV[3], 'c', ARGV[5])
redis.call('PEXPIRE', KEYS[1], ARGV[4])
redis.call('PUBLISH', ARGV[6], ARGV[7])
return 1`);

/**
 * Rolls back a create whose reply was lost (timeout): deletes the record only if it
 * is still version 1 of this attempt. ARGV: nonce, channel, event JSON.
 */
export const UNDO_CREATE = new LuaScript(`
local cur = redis.call('HMGET', KEYS[1], 'v', 'c')
if cur[1] == '1' and cur[2] == ARGV[1] then
  redis.call('DEL', KEYS[1])
  redis.call('PUBLISH', ARGV[2], ARGV[3])
  return 1
end
return 0`);

/**
 * Compare-and-set on the version. ARGV: expected version, new record JSON, identity,
 * owner JSON, ttlMs, channel, event JSON.
 * {0} = missing, {1, current JSON} = conflict, {2, current JSON} = identity differs
 * (the caller re-bases on the stored identity), {3} = written (and published).
 */
export const UPDATE_ALLOC = new LuaScript(`
local cur = redis.call('HMGET', KEYS[1], 'v', 'r', 'i')
if not cur[1] then return {0} end
if cur[1] ~= ARGV[1] then return {1, cur[2]} end
if cur[3] ~= ARGV[3] then return {2, cur[2]} end
redis.call('HSET', KEYS[1], 'v', tostring(tonumber(ARGV[1]) + 1), 'r', ARGV[2], 'o', ARGV[4])
redis.call('PEXPIRE', KEYS[1], ARGV[5])
redis.call('PUBLISH', ARGV[6], ARGV[7])
return {3}`);

/**
 * ARGV: expected version ('' = any), channel, event JSON without its closing part:
 * the script appends the stored owner and '}'. Returns the deleted record JSON or nil.
 */
export const DELETE_ALLOC = new LuaScript(`
local cur = redis.call('HMGET', KEYS[1], 'v', 'r', 'o')
if not cur[1] then return false end
if ARGV[1] ~= '' and cur[1] ~= ARGV[1] then return false end
redis.call('DEL', KEYS[1])
redis.call('PUBLISH', ARGV[2], ARGV[3] .. (cur[3] or '""') .. '}')
return cur[2]`);

/** ARGV: old holder, new holder, ttlMs. Hands a relayed port's claim to a moved allocation's new key (RFC 8016). */
export const REPOINT_IF_HELD = new LuaScript(`
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
  return 1
end
return 0`);

/**
 * A moved allocation's member of its user's zset takes the new key (counted once, never
 * re-checked against the quota). ARGV: old member, new member, score, ttlMs.
 */
export const USER_RENAME = new LuaScript(`
redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('ZADD', KEYS[1], ARGV[3], ARGV[2])
local ttl = tonumber(ARGV[4])
if redis.call('PTTL', KEYS[1]) < ttl then redis.call('PEXPIRE', KEYS[1], ttl) end
return 1`);

/** GETDEL for servers older than 6.2: the value, once. */
export const TAKE = new LuaScript(`
local v = redis.call('GET', KEYS[1])
if v then redis.call('DEL', KEYS[1]) end
return v`);

/**
 * The per-user bandwidth exchange (usage.ts). ARGV: node id, up, down (bytes/s), now ms,
 * until ms (this report's staleness), ttlMs of the hash. Returns the other nodes' fresh
 * sums {up, down} as strings (Lua numbers would be truncated to integers) and how many
 * of them report traffic in each direction.
 */
export const USAGE_EXCHANGE = new LuaScript(`
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2] .. ' ' .. ARGV[3] .. ' ' .. ARGV[5])
redis.call('PEXPIRE', KEYS[1], ARGV[6])
local now = tonumber(ARGV[4])
local all = redis.call('HGETALL', KEYS[1])
local up, down, upNodes, downNodes = 0, 0, 0, 0
for i = 1, #all, 2 do
  local u, d, t = string.match(all[i + 1], '^(%S+) (%S+) (%S+)$')
  if not t or not tonumber(t) or tonumber(t) <= now then
    redis.call('HDEL', KEYS[1], all[i])
  elseif all[i] ~= ARGV[1] then
    u = tonumber(u) or 0
    d = tonumber(d) or 0
    up = up + u
    down = down + d
    if u > 0 then upNodes = upNodes + 1 end
    if d > 0 then downNodes = downNodes + 1 end
  end
end
return {tostring(up), tostring(down), upNodes, downNodes}`);

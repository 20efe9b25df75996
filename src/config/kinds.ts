// The kinds of value a flag takes: what yargs is told about it, and how the value
// yargs (or a test building a config in code) hands over is checked and converted
// into its config field. Every refusal names the flag, the value and what is allowed.

import { availableParallelism } from 'node:os';
import { parseIPv4, parseIPv6 } from '../net/ip.js';
import { PeerRangeError, parseIpRange } from '../net/range.js';
import type { RedisHostPort } from '../store/shared.js';
import type { AlternateServer } from '../turn/admission.js';
import { ConfigError } from './errors.js';

/**
 * R: the value as handed over (yargs gives numerals as numbers, lists as arrays);
 * T: the checked value. `tag` and the bounds let the table test make values to refuse.
 */
export interface Kind<R, T> {
  readonly tag: 'integer' | 'boolean' | 'text' | 'secret' | 'choice' | 'address';
  /** What yargs is told: numeric flags carry no type (see int()). */
  readonly yargs: { readonly type?: 'string' | 'boolean'; readonly array?: true; readonly choices?: readonly string[] };
  readonly parse: (flag: string, value: R | undefined) => T;
  readonly min?: number;
  readonly max?: number;
  readonly choices?: readonly string[];
}

export function integer(flag: string, value: unknown, min: number, max: number, allowed = `a whole number from ${min} to ${max}`): number {
  if (typeof value !== 'number' || Number.isNaN(value)) {
    // Name the value as given ('abc' from ANYTURN_LISTENING_PORT, or [1,2] for a flag given twice).
    const shown = typeof value === 'number' ? String(value) : JSON.stringify(value);
    throw new ConfigError(flag, value, allowed, `invalid --${flag} ${shown}: not a number (allowed: ${allowed})`);
  }
  if (!Number.isInteger(value) || value < min || value > max) {
    throw new ConfigError(flag, value, allowed);
  }
  return value;
}

/**
 * A whole number from min to max. Numeric flags carry no yargs type: `type: 'number'` turns
 * 'abc' into NaN and loses the text; untyped, yargs still converts numerals, and integer()
 * names anything else as given. Every integer flag has a default in the table.
 */
export function int(min: number, max: number, allowed?: string): Kind<number, number> {
  return {
    tag: 'integer',
    yargs: {},
    min,
    max,
    parse: (flag, value) => {
      if (value === undefined) throw new Error(`--${flag}: an integer flag without a default in the flag table`);
      return integer(flag, value, min, max, allowed);
    },
  };
}

/** --workers: a count or 'auto' (one per core this process may run on). */
export const workerCount: Kind<number | string, number> = {
  tag: 'integer',
  yargs: {},
  min: 1,
  max: 64,
  parse: (flag, value) => (value === 'auto' ? availableParallelism() : integer(flag, value, 1, 64, "a count from 1 to 64, or 'auto' (one per core)")),
};

/** Off unless given. */
export const bool: Kind<boolean, boolean> = { tag: 'boolean', yargs: { type: 'boolean' }, parse: (_flag, value) => value ?? false };

/** On unless turned off (--no-udp arrives as udp = false). */
export const boolOn: Kind<boolean, boolean> = { tag: 'boolean', yargs: { type: 'boolean' }, parse: (_flag, value) => value ?? true };

/** Free text (a name, a file, a URL); what it must be is checked where it is used with the flags it goes with. */
export const text: Kind<string, string | undefined> = { tag: 'text', yargs: { type: 'string' }, parse: (_flag, value) => value };

/** --region: a name that becomes part of the store's key names (keys.ts), so a small safe alphabet. */
export const regionName: Kind<string, string | undefined> = {
  tag: 'text',
  yargs: { type: 'string' },
  parse: (flag, value) => {
    if (value === undefined) return undefined;
    if (!/^[a-z0-9-]{1,32}$/.test(value)) throw new ConfigError(flag, value, '1 to 32 lowercase letters, digits and hyphens, e.g. eu-west');
    return value;
  },
};

/** A secret: like text, but its value never appears in a message. */
export const secret: Kind<string, string | undefined> = { tag: 'secret', yargs: { type: 'string' }, parse: (_flag, value) => value };

/** Repeatable secrets (a user entry name:password may contain ',', so no comma-splitting here). */
export const secrets: Kind<readonly string[], readonly string[]> = {
  tag: 'secret',
  yargs: { type: 'string', array: true },
  parse: (_flag, value) => value ?? [],
};

export function choice<const C extends string>(choices: readonly C[], allowed: string): Kind<string, C> {
  return {
    tag: 'choice',
    yargs: { type: 'string', choices },
    choices,
    parse: (flag, value) => {
      if (value !== undefined && (choices as readonly string[]).includes(value)) return value as C;
      throw new ConfigError(flag, value, allowed);
    },
  };
}

export function isIp(text: string): boolean {
  return parseIPv4(text) >= 0 || parseIPv6(text) !== undefined;
}

/** From an environment variable a list arrives as one comma-separated string. */
function parts(values: readonly string[] | undefined): string[] {
  return (values ?? []).flatMap((value) =>
    String(value)
      .split(',')
      .map((s) => s.trim())
      .filter(Boolean),
  );
}

/** Repeatable IPv4 or IPv6 addresses. */
export const ips: Kind<readonly string[], string[]> = {
  tag: 'address',
  yargs: { type: 'string', array: true },
  parse: (flag, values) => {
    const out = parts(values);
    for (const part of out) if (!isIp(part)) throw new ConfigError(flag, part, 'an IPv4 or IPv6 address, e.g. 192.0.2.10 or 2001:db8::10');
    return out;
  },
};

/** Linux network interface names (IFNAMSIZ: at most 15 bytes; no '/', ':' or white space). */
const INTERFACE_NAME = /^[A-Za-z0-9_.@-]{1,15}$/;

/** Repeatable network interface names (--dataplane-interface). */
export const interfaceNames: Kind<readonly string[], string[]> = {
  tag: 'text',
  yargs: { type: 'string', array: true },
  parse: (flag, values) => {
    const out = parts(values);
    for (const part of out) {
      if (!INTERFACE_NAME.test(part)) throw new ConfigError(flag, part, 'a network interface name of 1-15 letters, digits, or _ . @ -, e.g. eth0');
    }
    return out;
  },
};

/** One IPv4 or IPv6 address. */
export function ip(allowed: string): Kind<string, string | undefined> {
  return {
    tag: 'address',
    yargs: { type: 'string' },
    parse: (flag, value) => {
      if (value !== undefined && !isIp(value)) throw new ConfigError(flag, value, allowed);
      return value;
    },
  };
}

/** Repeatable peer ranges: IP, CIDR or first-last. */
export const ranges: Kind<readonly string[], string[]> = {
  tag: 'address',
  yargs: { type: 'string', array: true },
  parse: (flag, values) => {
    const out = parts(values);
    for (const part of out) {
      try {
        parseIpRange(part);
      } catch (err) {
        if (err instanceof PeerRangeError) throw new ConfigError(flag, part, err.message);
        throw err;
      }
    }
    return out;
  },
};

/** "ip:port" or "[ipv6]:port" of this node, reachable from the others. */
export const hostPort: Kind<string, { address: string; port: number } | undefined> = {
  tag: 'address',
  yargs: { type: 'string' },
  parse: (flag, text) => {
    if (text === undefined) return undefined;
    const m = /^\[([^\]]+)\]:(\d{1,5})$/.exec(text) ?? /^([^:]+):(\d{1,5})$/.exec(text);
    const address = m?.[1];
    const port = m ? Number(m[2]) : NaN;
    if (!address || !isIp(address) || address === '0.0.0.0' || address === '::' || !(port >= 1 && port <= 65535)) {
      throw new ConfigError(flag, text, "ip:port (or [ipv6]:port) with this node's unicast address, reachable from the other nodes, e.g. 192.0.2.10:7000");
    }
    return { address, port };
  },
};

/** host:port or [ipv6]:port of Redis nodes or sentinels (host may be a name); repeatable or comma-separated. */
export const redisNodes: Kind<readonly string[], RedisHostPort[]> = {
  tag: 'address',
  yargs: { type: 'string', array: true },
  parse: (flag, values) => {
    const out: RedisHostPort[] = [];
    for (const part of parts(values)) {
      const m = /^\[([^\]]+)\]:(\d{1,5})$/.exec(part) ?? /^([A-Za-z0-9._-]+):(\d{1,5})$/.exec(part);
      const host = m?.[1];
      const port = m ? Number(m[2]) : NaN;
      if (!host || (part.startsWith('[') && parseIPv6(host) === undefined) || !(port >= 1 && port <= 65535)) {
        throw new ConfigError(flag, part, 'host:port or [ipv6]:port (repeatable, or comma-separated), e.g. 10.0.0.5:26379');
      }
      out.push({ host, port });
    }
    if (out.length === 0) throw new ConfigError(flag, '', 'at least one host:port, e.g. 10.0.0.5:26379');
    return out;
  },
};

/** "ip:port", "[ipv6]:port", or an address alone for port 3478 (as coturn). */
export const alternateServers: Kind<readonly string[], AlternateServer[]> = {
  tag: 'address',
  yargs: { type: 'string', array: true },
  parse: (flag, values) =>
    parts(values).map((part) => {
      const m = /^\[([^\]]+)\](?::(\d{1,5}))?$/.exec(part) ?? /^([^:]+)(?::(\d{1,5}))?$/.exec(part) ?? /^([0-9a-fA-F:.]+)()$/.exec(part);
      const address = m?.[1];
      const port = m?.[2] ? Number(m[2]) : 3478;
      if (!address || !isIp(address) || address === '0.0.0.0' || address === '::' || !(port >= 1 && port <= 65535)) {
        throw new ConfigError(
          flag,
          part,
          'ip:port or [ipv6]:port of another TURN server (port 1-65535, 3478 when left out), e.g. 192.0.2.20:3478 or [2001:db8::20]:3478',
        );
      }
      return { address, port };
    }),
};

/** A bearer token: a short one could be guessed over HTTP; the value itself never goes into a message. */
export const token: Kind<string, string | undefined> = {
  tag: 'secret',
  yargs: { type: 'string' },
  parse: (flag, value) => {
    if (value === undefined) return undefined;
    if (Buffer.byteLength(value) < 16 || /\s/.test(value)) throw new ConfigError(flag, '***', 'at least 16 bytes without spaces, e.g. $(openssl rand -hex 16)');
    return value;
  },
};

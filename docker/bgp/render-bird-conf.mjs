#!/usr/bin/env node
// Renders bird.conf.template (beside this file) for one PoP from BGP_*
// environment variables (docs/anycast-bgp.md, "What to set per PoP"):
//
//   node render-bird-conf.mjs [--template FILE] [--out FILE]
//
// Writes to --out (else stdout). A missing or malformed variable is an error
// that names the variable, the value and what is allowed; exit status 2.
// No dependencies: it runs in the sidecar image and in the test as is.

import { readFileSync, writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const IPV4 = /^(25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)(\.(25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)){3}$/;

class ConfigError extends Error {}

function ipv4(env, name, fallback) {
  const v = env[name] ?? fallback;
  if (v === undefined || v === '') throw new ConfigError(`${name} is not set: give an IPv4 address`);
  if (!IPV4.test(v)) throw new ConfigError(`${name}=${v}: not an IPv4 address (dotted quad)`);
  return v;
}

function integer(env, name, fallback, min, max) {
  const v = env[name] ?? fallback;
  if (v === undefined || v === '') throw new ConfigError(`${name} is not set: give an integer from ${min} to ${max}`);
  const n = Number(v);
  if (!/^\d+$/.test(String(v)) || n < min || n > max) throw new ConfigError(`${name}=${v}: not an integer from ${min} to ${max}`);
  return n;
}

function onOff(env, name, fallback) {
  const v = env[name] ?? fallback;
  if (v !== 'on' && v !== 'off') throw new ConfigError(`${name}=${v}: allowed are on and off`);
  return v;
}

/** "203.0.113.1/32 203.0.113.2" (comma or space separated; a bare address is a /32). */
function prefixes(env, name) {
  const v = env[name];
  if (v === undefined || v.trim() === '') throw new ConfigError(`${name} is not set: give the anycast prefix(es), e.g. 203.0.113.1/32`);
  const out = [];
  for (const item of v.split(/[\s,]+/).filter(Boolean)) {
    const [address, len = '32', extra] = item.split('/');
    const n = Number(len);
    if (extra !== undefined || !IPV4.test(address) || !/^\d+$/.test(len) || n < 8 || n > 32) {
      throw new ConfigError(`${name}: ${item} is not an IPv4 prefix (a.b.c.d/len, len 8 to 32)`);
    }
    out.push(`${address}/${n}`);
  }
  return out;
}

/**
 * The template's fields from an environment. Defaults are for production
 * (docs/anycast-bgp.md, "Timers"); the test passes short ones.
 */
export function fields(env) {
  const local = ipv4(env, 'BGP_LOCAL_ADDRESS');
  const hold = integer(env, 'BGP_HOLD_TIME', '9', 3, 65535);
  const keepalive = integer(env, 'BGP_KEEPALIVE_TIME', String(Math.max(1, Math.floor(hold / 3))), 1, 65535);
  if (keepalive >= hold) throw new ConfigError(`BGP_KEEPALIVE_TIME=${keepalive}: must be below BGP_HOLD_TIME (${hold})`);
  return {
    ROUTER_ID: ipv4(env, 'BGP_ROUTER_ID', local),
    LOCAL_ADDRESS: local,
    LOCAL_AS: integer(env, 'BGP_LOCAL_AS', undefined, 1, 4294967294),
    NEIGHBOR_ADDRESS: ipv4(env, 'BGP_NEIGHBOR_ADDRESS'),
    NEIGHBOR_AS: integer(env, 'BGP_NEIGHBOR_AS', undefined, 1, 4294967294),
    HOLD_TIME: hold,
    KEEPALIVE_TIME: keepalive,
    CONNECT_DELAY: integer(env, 'BGP_CONNECT_DELAY', '5', 1, 3600),
    CONNECT_RETRY: integer(env, 'BGP_CONNECT_RETRY', '10', 1, 3600),
    BFD: onOff(env, 'BGP_BFD', 'on'),
    BFD_INTERVAL_MS: integer(env, 'BGP_BFD_INTERVAL_MS', '300', 10, 10000),
    BFD_MULTIPLIER: integer(env, 'BGP_BFD_MULTIPLIER', '3', 1, 255),
    ANYCAST_ROUTES: prefixes(env, 'BGP_ANYCAST_PREFIXES')
      .map((p) => `  route ${p} blackhole;`)
      .join('\n'),
  };
}

export function render(template, values) {
  return template.replace(/@([A-Z_]+)@/g, (whole, name) => {
    if (!(name in values)) throw new ConfigError(`template field ${whole} has no value`);
    return String(values[name]);
  });
}

function main(argv) {
  const arg = (name) => {
    const i = argv.indexOf(name);
    return i >= 0 ? argv[i + 1] : undefined;
  };
  const templatePath = arg('--template') ?? join(dirname(fileURLToPath(import.meta.url)), 'bird.conf.template');
  const out = arg('--out');
  try {
    const text = render(readFileSync(templatePath, 'utf8'), fields(process.env));
    if (out) writeFileSync(out, text);
    else process.stdout.write(text);
  } catch (err) {
    if (!(err instanceof ConfigError)) throw err;
    process.stderr.write(`render-bird-conf: ${err.message}\n`);
    process.exitCode = 2;
  }
}

if (process.argv[1] && fileURLToPath(import.meta.url) === process.argv[1]) main(process.argv.slice(2));

#!/usr/bin/env node
// The glue between anyturn and its BGP speaker (docs/anycast-bgp.md): polls
// the node's GET /readyz and announces the anycast prefix(es) only while it
// answers 200, by `birdc enable <protocol>` / `birdc disable <protocol>` of the
// static protocol that holds them (docker/bgp/bird.conf.template).
//
//   node readyz-announce.mjs [--url URL] [--protocol NAME] [--socket PATH]
//     [--birdc PATH] [--interval-ms MS] [--timeout-ms MS] [--rise N] [--fall N]
//     [--reassert-ms MS]
//
// Each flag also comes from an environment variable (READYZ_URL, BGP_PROTOCOL,
// BIRD_SOCKET, BIRDC, READYZ_INTERVAL_MS, READYZ_TIMEOUT_MS, READYZ_RISE,
// READYZ_FALL, READYZ_REASSERT_MS); a flag wins.
//
// Damping: `rise` consecutive 200s announce, `fall` consecutive failures (any
// other status, no answer, no answer within timeout-ms) withdraw, so one slow
// or lost probe neither withdraws a healthy PoP nor announces a flapping one.
// It starts withdrawn (and says so to bird), and says the current state again
// every reassert-ms: a bird that restarted starts with the protocol disabled.
// SIGTERM or SIGINT withdraws, then exits 0.
//
// Stdout: one JSON line per change of state or of bird's reachability, never
// one per probe: {"event":"announce"|"withdraw"|"birdc-failed"|"birdc-ok",...}.

import { execFile } from 'node:child_process';
import http from 'node:http';
import { fileURLToPath } from 'node:url';

const DEFAULTS = {
  url: 'http://127.0.0.1:9641/readyz',
  protocol: 'anycast',
  socket: '/run/bird/bird.ctl',
  birdc: 'birdc',
  'interval-ms': '1000',
  'timeout-ms': '1000',
  rise: '3',
  fall: '2',
  'reassert-ms': '10000',
};
const ENV = {
  url: 'READYZ_URL',
  protocol: 'BGP_PROTOCOL',
  socket: 'BIRD_SOCKET',
  birdc: 'BIRDC',
  'interval-ms': 'READYZ_INTERVAL_MS',
  'timeout-ms': 'READYZ_TIMEOUT_MS',
  rise: 'READYZ_RISE',
  fall: 'READYZ_FALL',
  'reassert-ms': 'READYZ_REASSERT_MS',
};

class UsageError extends Error {}

export function options(argv, env) {
  const raw = { ...DEFAULTS };
  for (const [name, variable] of Object.entries(ENV)) if (env[variable] !== undefined && env[variable] !== '') raw[name] = env[variable];
  for (let i = 0; i < argv.length; i++) {
    const name = argv[i].replace(/^--/, '');
    if (!argv[i].startsWith('--') || !(name in DEFAULTS)) throw new UsageError(`unknown argument ${argv[i]}: allowed are ${Object.keys(DEFAULTS).map((n) => `--${n}`).join(' ')}`);
    if (argv[i + 1] === undefined) throw new UsageError(`--${name} needs a value`);
    raw[name] = argv[++i];
  }
  const int = (name, min, max) => {
    const n = Number(raw[name]);
    if (!/^\d+$/.test(raw[name]) || n < min || n > max) throw new UsageError(`--${name} ${raw[name]} (${ENV[name]}): not an integer from ${min} to ${max}`);
    return n;
  };
  let url;
  try {
    url = new URL(raw.url);
  } catch {
    throw new UsageError(`--url ${raw.url} (READYZ_URL): not a URL; e.g. http://127.0.0.1:9641/readyz`);
  }
  if (url.protocol !== 'http:') throw new UsageError(`--url ${raw.url} (READYZ_URL): only http:// (the ops endpoint speaks plain HTTP)`);
  if (!/^[A-Za-z_][A-Za-z0-9_]*$/.test(raw.protocol)) throw new UsageError(`--protocol ${raw.protocol} (BGP_PROTOCOL): not a bird protocol name`);
  return {
    url: url.href,
    protocol: raw.protocol,
    socket: raw.socket,
    birdc: raw.birdc,
    intervalMs: int('interval-ms', 10, 3_600_000),
    timeoutMs: int('timeout-ms', 10, 60_000),
    rise: int('rise', 1, 1000),
    fall: int('fall', 1, 1000),
    reassertMs: int('reassert-ms', 100, 3_600_000),
  };
}

function log(record) {
  process.stdout.write(`${JSON.stringify({ time: Date.now(), ...record })}\n`);
}

/** One GET; resolves with the status (0: no answer, or none within timeoutMs) and the first bytes of the body. */
function probe(url, timeoutMs) {
  return new Promise((resolve) => {
    let done = false;
    const finish = (status, body) => {
      if (done) return;
      done = true;
      clearTimeout(timer);
      resolve({ status, body: body.slice(0, 200).trim() });
    };
    const req = http.get(url, { agent: false, headers: { connection: 'close' } }, (res) => {
      let body = '';
      res.setEncoding('utf8');
      res.on('data', (c) => {
        if (body.length < 1000) body += c;
      });
      res.on('end', () => finish(res.statusCode ?? 0, body));
      res.on('error', (e) => finish(0, e.message));
    });
    // The whole exchange within timeoutMs: a node too busy to answer is not ready.
    const timer = setTimeout(() => {
      req.destroy();
      finish(0, `no answer within ${timeoutMs} ms`);
    }, timeoutMs);
    req.on('error', (e) => finish(0, e.message));
  });
}

/** `birdc -s SOCKET enable|disable PROTOCOL`; resolves with undefined on success, else why not. */
function birdc(opts, verb) {
  return new Promise((resolve) => {
    execFile(opts.birdc, ['-s', opts.socket, verb, opts.protocol], { timeout: 5000 }, (err, stdout, stderr) => {
      const out = `${stdout}${stderr}`.trim();
      if (err) return resolve(`${err.message.split('\n')[0]} ${out}`.trim());
      // birdc exits 0 when bird refuses the command: "<protocol>: enabled", "... already enabled" are the successes.
      if (!new RegExp(`^${opts.protocol}: (already )?${verb}d$`, 'm').test(out)) return resolve(out || 'no answer from bird');
      resolve(undefined);
    });
  });
}

export async function run(opts) {
  log({ event: 'start', ...opts });
  let announced = false;
  let okRun = 0;
  let failRun = 0;
  let told; // the state bird was last told successfully ('enable' | 'disable'), undefined: unknown
  let toldAt = 0;
  let birdFailing = false;
  let stopping = false;

  const tell = async (verb) => {
    const error = await birdc(opts, verb);
    if (error === undefined) {
      told = verb;
      toldAt = Date.now();
      if (birdFailing) log({ event: 'birdc-ok', command: verb });
      birdFailing = false;
      return true;
    }
    told = undefined;
    if (!birdFailing) log({ event: 'birdc-failed', command: verb, error });
    birdFailing = true;
    return false;
  };

  const stop = async (signal) => {
    if (stopping) return;
    stopping = true;
    await tell('disable');
    log({ event: 'withdraw', reason: signal, announced });
    process.exit(0);
  };
  process.once('SIGTERM', () => void stop('SIGTERM'));
  process.once('SIGINT', () => void stop('SIGINT'));

  await tell('disable');
  let next = Date.now();
  while (!stopping) {
    const r = await probe(opts.url, opts.timeoutMs);
    if (stopping) break;
    if (r.status === 200) {
      okRun++;
      failRun = 0;
    } else {
      failRun++;
      okRun = 0;
    }
    if (!announced && okRun >= opts.rise) {
      announced = true;
      log({ event: 'announce', oks: okRun });
    } else if (announced && failRun >= opts.fall) {
      announced = false;
      log({ event: 'withdraw', failures: failRun, status: r.status, body: r.body });
    }
    const want = announced ? 'enable' : 'disable';
    if (told !== want || Date.now() - toldAt >= opts.reassertMs) await tell(want);
    next += opts.intervalMs;
    const wait = next - Date.now();
    if (wait > 0) await new Promise((resolve) => setTimeout(resolve, wait));
    else next = Date.now();
  }
}

if (process.argv[1] && fileURLToPath(import.meta.url) === process.argv[1]) {
  let opts;
  try {
    opts = options(process.argv.slice(2), process.env);
  } catch (err) {
    if (!(err instanceof UsageError)) throw err;
    process.stderr.write(`readyz-announce: ${err.message}\n`);
    process.exit(2);
  }
  await run(opts);
}

// The shipped BGP glue (docker/bgp/, docs/anycast-bgp.md) without namespaces
// or root: readyz-announce.mjs against a scripted /readyz on loopback and a
// stand-in birdc that records what it was told; render-bird-conf.mjs's output
// and its errors (and, where bird2 is installed, bird's own parse of it).

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync, spawn } from 'node:child_process';
import { chmodSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { ANNOUNCE_PATH, RENDER_PATH, TEMPLATE_PATH } from './speakers.js';

type Answer = number | 'hang';

/** A /readyz that answers each request with the next entry of `script` (the last one repeats). */
async function scriptedReadyz(script: readonly Answer[]): Promise<{ url: string; served: () => number; close: () => Promise<void> }> {
  let served = 0;
  const hung = new Set<http.ServerResponse>();
  const server = http.createServer((_req, res) => {
    const answer = script[Math.min(served, script.length - 1)]!;
    served++;
    if (answer === 'hang') return void hung.add(res);
    res.writeHead(answer, { 'content-type': 'application/json' });
    res.end(answer === 200 ? '{"ready":true}' : '{"ready":false,"reason":"draining"}');
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  const { port } = server.address() as AddressInfo;
  return {
    url: `http://127.0.0.1:${port}/readyz`,
    served: () => served,
    close: async () => {
      for (const res of hung) res.destroy();
      server.closeAllConnections();
      await new Promise<void>((r) => server.close(() => r()));
    },
  };
}

/** A birdc stand-in: appends "verb protocol" to a log and answers as bird does ("anycast: enabled"). */
function fakeBirdc(dir: string): { path: string; calls: () => string[] } {
  const log = join(dir, 'birdc.log');
  const path = join(dir, 'birdc');
  writeFileSync(path, `#!/bin/sh\n# birdc -s SOCKET VERB PROTOCOL\necho "$3 $4" >> '${log}'\necho "BIRD 2.0.12 ready."\necho "$4: $3d"\n`);
  chmodSync(path, 0o755);
  writeFileSync(log, '');
  return { path, calls: () => readFileSync(log, 'utf8').split('\n').filter(Boolean) };
}

function startAnnouncer(url: string, birdc: string, extra: readonly string[] = []) {
  const child = spawn(
    process.execPath,
    [
      ANNOUNCE_PATH,
      '--url',
      url,
      '--birdc',
      birdc,
      '--socket',
      '/nonexistent.ctl',
      '--interval-ms',
      '20',
      '--timeout-ms',
      '100',
      '--rise',
      '3',
      '--fall',
      '2',
      '--reassert-ms',
      '3600000',
      ...extra,
    ],
    { stdio: ['ignore', 'pipe', 'pipe'] },
  );
  let out = '';
  let err = '';
  child.stdout.setEncoding('utf8').on('data', (c: string) => (out += c));
  child.stderr.setEncoding('utf8').on('data', (c: string) => (err += c));
  const exited = new Promise<number | null>((r) => child.once('close', (code) => r(code)));
  const events = (): Record<string, unknown>[] =>
    out
      .split('\n')
      .filter((l) => l.startsWith('{'))
      .map((l) => JSON.parse(l) as Record<string, unknown>)
      .filter((e) => e.event !== 'start');
  return { child, exited, events, stderr: () => err };
}

async function until(what: string, check: () => boolean, deadlineMs = 10_000): Promise<void> {
  const end = Date.now() + deadlineMs;
  while (!check()) {
    if (Date.now() > end) throw new Error(`${what}: not within ${deadlineMs} ms`);
    await new Promise((r) => setTimeout(r, 10));
  }
}

test('readyz-announce: rise and fall damping, a hung /readyz counts as a failure, SIGTERM withdraws', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'anyturn-glue-'));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  // Two 200s then a 503: not yet 3 in a row. Then 3 x 200: announce. One 503 between 200s: no
  // withdrawal (fall 2). Then a hang (no answer within --timeout-ms) and a 503: withdraw. Then
  // 2 x 200 (not enough), a 503, and 200 for ever: announce again after 3 of them.
  const script: Answer[] = [200, 200, 503, 200, 200, 200, 503, 200, 200, 'hang', 503, 200, 200, 503, 200];
  const readyz = await scriptedReadyz(script);
  t.after(() => readyz.close());
  const birdc = fakeBirdc(dir);
  const a = startAnnouncer(readyz.url, birdc.path);
  t.after(() => void a.child.kill('SIGKILL'));

  await until('second announce', () => a.events().filter((e) => e.event === 'announce').length >= 2);
  const servedAtSecond = readyz.served();
  a.child.kill('SIGTERM');
  assert.equal(await a.exited, 0, a.stderr());

  const events = a.events().map((e) => `${String(e.event)}${e.status === undefined ? '' : ` ${String(e.status)}`}`);
  // The withdrawal's status is that of the probe that made it fall: 503 after the hang.
  assert.deepEqual(events, ['announce', 'withdraw 503', 'announce', 'withdraw']);
  assert.deepEqual(birdc.calls(), ['disable anycast', 'enable anycast', 'disable anycast', 'enable anycast', 'disable anycast']);
  assert.ok(servedAtSecond >= script.length, `announced again after ${servedAtSecond} probes, before the script's last 3 x 200`);
});

test('readyz-announce: an unreachable /readyz never announces; bad flags are refused naming the flag', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'anyturn-glue-'));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  const birdc = fakeBirdc(dir);
  // A port nothing listens on: connection refused on every probe.
  const readyz = await scriptedReadyz([200]);
  const url = readyz.url;
  await readyz.close();
  const a = startAnnouncer(url, birdc.path);
  t.after(() => void a.child.kill('SIGKILL'));
  await until('ten probes worth of time', () => birdc.calls().length >= 1);
  await new Promise((r) => setTimeout(r, 300));
  a.child.kill('SIGTERM');
  assert.equal(await a.exited, 0);
  assert.deepEqual(
    a.events().map((e) => e.event),
    ['withdraw'],
    'only the SIGTERM withdrawal',
  );
  assert.ok(
    birdc.calls().every((c) => c === 'disable anycast'),
    birdc.calls().join(', '),
  );

  for (const [args, message] of [
    [['--rise', '0'], /--rise 0 \(READYZ_RISE\): not an integer from 1 to 1000/],
    [['--url', 'https://x/readyz'], /--url https:\/\/x\/readyz \(READYZ_URL\): only http:\/\//],
    [['--protocol', 'a;b'], /--protocol a;b \(BGP_PROTOCOL\): not a bird protocol name/],
    [['--bogus', '1'], /unknown argument --bogus/],
  ] as const) {
    const r = spawn(process.execPath, [ANNOUNCE_PATH, ...args], { stdio: ['ignore', 'ignore', 'pipe'] });
    let err = '';
    r.stderr.setEncoding('utf8').on('data', (c: string) => (err += c));
    const code = await new Promise((res) => r.once('close', res));
    assert.equal(code, 2, `${args.join(' ')}: ${err}`);
    assert.match(err, message);
  }
});

function renderWith(env: Record<string, string>): { code: number; stdout: string; stderr: string } {
  try {
    const stdout = execFileSync(process.execPath, [RENDER_PATH, '--template', TEMPLATE_PATH], {
      env: { PATH: process.env.PATH ?? '/usr/bin:/bin', ...env },
      encoding: 'utf8',
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    return { code: 0, stdout, stderr: '' };
  } catch (err) {
    const e = err as { status: number; stdout: string; stderr: string };
    return { code: e.status, stdout: e.stdout, stderr: e.stderr };
  }
}

const POP_ENV = {
  BGP_LOCAL_ADDRESS: '198.18.1.2',
  BGP_LOCAL_AS: '65010',
  BGP_NEIGHBOR_ADDRESS: '198.18.1.1',
  BGP_NEIGHBOR_AS: '65000',
  BGP_ANYCAST_PREFIXES: '198.18.100.1/32, 198.18.101.1',
};

test('render-bird-conf: the PoP config from BGP_* variables; errors name the variable, the value and what is allowed', (t) => {
  const r = renderWith(POP_ENV);
  assert.equal(r.code, 0, r.stderr);
  assert.match(r.stdout, /^router id 198\.18\.1\.2;$/m);
  assert.match(r.stdout, /^ {2}route 198\.18\.100\.1\/32 blackhole;\n {2}route 198\.18\.101\.1\/32 blackhole;$/m);
  assert.match(r.stdout, /local 198\.18\.1\.2 as 65010;\n\s+neighbor 198\.18\.1\.1 as 65000;/);
  assert.match(r.stdout, /hold time 9;\n\s+keepalive time 3;/);
  assert.match(r.stdout, /graceful restart off;/);
  assert.match(r.stdout, /bfd on;/);
  assert.doesNotMatch(r.stdout, /@[A-Z_]+@/, 'a field was left unfilled');

  for (const [env, message] of [
    [{ BGP_LOCAL_ADDRESS: '198.18.1' }, /BGP_LOCAL_ADDRESS=198\.18\.1: not an IPv4 address/],
    [{ BGP_LOCAL_AS: '0' }, /BGP_LOCAL_AS=0: not an integer from 1 to 4294967294/],
    [{ BGP_ANYCAST_PREFIXES: '198.18.100.1/33' }, /BGP_ANYCAST_PREFIXES: 198\.18\.100\.1\/33 is not an IPv4 prefix/],
    [{ BGP_ANYCAST_PREFIXES: '' }, /BGP_ANYCAST_PREFIXES is not set/],
    [{ BGP_HOLD_TIME: '3', BGP_KEEPALIVE_TIME: '3' }, /BGP_KEEPALIVE_TIME=3: must be below BGP_HOLD_TIME \(3\)/],
    [{ BGP_BFD: 'yes' }, /BGP_BFD=yes: allowed are on and off/],
  ] as const) {
    const bad = renderWith({ ...POP_ENV, ...env });
    assert.equal(bad.code, 2, JSON.stringify(env));
    assert.match(bad.stderr, message);
  }

  // bird2's own parser accepts what we render (where bird2 is installed; CI installs it).
  let bird = true;
  try {
    execFileSync('sh', ['-c', 'command -v bird'], { stdio: 'ignore' });
  } catch {
    bird = false;
  }
  if (!bird && process.env.CI !== 'true') return t.skip('bird2 is not installed: its parse of the rendered config is not checked');
  const dir = mkdtempSync(join(tmpdir(), 'anyturn-glue-'));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  const conf = join(dir, 'bird.conf');
  writeFileSync(conf, r.stdout);
  execFileSync('bird', ['-p', '-c', conf], { stdio: ['ignore', 'pipe', 'pipe'], timeout: 10_000 });
});

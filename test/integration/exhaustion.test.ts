// Capacity exhaustion, as an operator meets it: the real CLI at its open-file limit
// (started under `prlimit --nofile=N:N`) and with a relay port range that is full.
// Every further Allocate gets 508 Insufficient Capacity at once, with a bounded
// number of bind attempts (read from /metrics, not timed), the server's RSS stays
// within a small bound over hundreds of refusals, and /readyz says 503 with the
// reason until allocations are released (Refresh lifetime 0), then 200 again.

import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import dgram from 'node:dgram';
import { readFileSync } from 'node:fs';
import { MAX_BIND_COLLISIONS } from '../../src/turn/relay/relay-ports.js';
import { type RunningTurnServer, findFreeTcpPort, parseLogLines, reserveRelayPortRange, startAnyturn, stopAfter } from '../helpers/anyturn-process.js';
import { parseMetrics, sum, until } from '../helpers/ops-endpoint.js';
import { TestTurnClient } from '../helpers/turn-client.js';

const USER = 'exhauster';
const PASSWORD = 'exhaust-password';
const REALM = 'exhaust.test';
/** The open-file limit the server runs under: room for a hundred-odd relay sockets. */
const NOFILE = 200;
/** Refused Allocates per phase: "several hundred". */
const REFUSALS = 300;
/** RSS may grow by this much over REFUSALS refused Allocates (one walk of a 64k range cost ~100 MB). */
const RSS_BOUND_MB = 40;

/** Only bounds a hung request; nothing asserts on speed. */
const HTTP_DEADLINE_MS = 10_000;

type Registrar = { after(fn: () => unknown): void };

const hasPrlimit = spawnSync('prlimit', ['--version']).status === 0;

interface Node {
  readonly server: RunningTurnServer;
  readonly ops: string;
}

async function startNode(t: Registrar, options: { runUnder?: readonly string[]; relayPorts: { min: number; max: number } }): Promise<Node> {
  const metricsPort = await findFreeTcpPort();
  const server = await startAnyturn({
    users: [{ name: USER, password: PASSWORD }],
    realm: REALM,
    relayPorts: options.relayPorts,
    runUnder: options.runUnder,
    tcp: false,
    // Counters are compared across scrapes moments apart: no /metrics cache.
    extraArgs: ['--metrics-ip', '127.0.0.1', '--metrics-port', String(metricsPort), '--metrics-cache-ms', '0'],
  });
  stopAfter(t, server);
  return { server, ops: `http://127.0.0.1:${metricsPort}` };
}

async function client(node: Node, t: Registrar): Promise<TestTurnClient> {
  const c = await TestTurnClient.open({ address: node.server.host, port: node.server.port }, { username: USER, password: PASSWORD, realm: REALM });
  t.after(() => c.close());
  return c;
}

/** A GET that gives up after a while: a server out of descriptors may never accept it (that is the bug). */
async function get(url: string): Promise<{ status: number; body: string }> {
  const r = await fetch(url, { signal: AbortSignal.timeout(HTTP_DEADLINE_MS) });
  return { status: r.status, body: await r.text() };
}

async function metrics(node: Node): Promise<ReturnType<typeof parseMetrics>> {
  const r = await get(`${node.ops}/metrics`);
  assert.equal(r.status, 200, r.body);
  return parseMetrics(r.body);
}

function rssMB(pid: number): number {
  const m = /VmRSS:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
  assert.ok(m, 'VmRSS');
  return Number(m[1]) / 1024;
}

/** Allocates with new clients until one is refused; returns the clients holding allocations and the refusal code. */
async function fill(node: Node, t: Registrar, max: number): Promise<{ held: TestTurnClient[]; code: number }> {
  const held: TestTurnClient[] = [];
  for (let i = 0; i < max; i++) {
    const c = await client(node, t);
    const r = await c.allocate();
    if (r.response.code !== 200) {
      c.close();
      return { held, code: r.response.code };
    }
    held.push(c);
  }
  return { held, code: 200 };
}

/** REFUSALS Allocates from one client (a refused one leaves nothing behind, so the 5-tuple may ask again). */
async function refusedAllocates(c: TestTurnClient): Promise<number[]> {
  const codes: number[] = [];
  for (let i = 0; i < REFUSALS; i++) codes.push((await c.allocate()).response.code);
  return codes;
}

async function readyz(node: Node): Promise<{ status: number; body: string }> {
  return get(`${node.ops}/readyz`);
}

describe('capacity exhaustion (CLI)', () => {
  it('at the open-file limit: 508 at once, no bind per Allocate, flat RSS, /readyz 503 then 200 once allocations go', {
    skip: !hasPrlimit && 'prlimit (util-linux) not installed',
  }, async (t) => {
    // A range far larger than the descriptors: the limit, not the range, is what fills.
    const node = await startNode(t, { runUnder: ['prlimit', `--nofile=${NOFILE}:${NOFILE}`], relayPorts: await reserveRelayPortRange(600) });
    const pid = node.server.process.pid;
    const warning = parseLogLines(node.server.process.stdout()).find((l) => String(l.msg).startsWith(`open-file limit ${NOFILE} is below`));
    assert.ok(warning, `a start-up warning about the limit\n${node.server.process.outputTail()}`);
    assert.match(String(warning.msg), /--min-port .* --max-port .* --relay-ip/);

    const { held, code } = await fill(node, t, 600);
    assert.equal(code, 508, 'the Allocate that finds no descriptor');
    assert.ok(held.length > 50 && held.length < NOFILE, `${held.length} allocations under a limit of ${NOFILE}`);
    const ready = await readyz(node);
    assert.equal(ready.status, 503, ready.body);
    assert.match(ready.body, /out of file descriptors \(EMFILE\)/);

    const before = await metrics(node);
    const rssBefore = rssMB(pid);
    const c = await client(node, t);
    const codes = await refusedAllocates(c);
    assert.deepEqual([...new Set(codes)], [508]);
    const after = await metrics(node);
    const rssAfter = rssMB(pid);
    const binds = sum(after, 'anyturn_relay_bind_attempts_total') - sum(before, 'anyturn_relay_bind_attempts_total');
    assert.equal(binds, 0, 'no bind while the node is out of descriptors');
    assert.equal(sum(after, 'anyturn_relay_bind_attempts_total', { result: 'no_descriptors' }), 1, 'the one bind that found EMFILE');
    assert.equal(sum(after, 'anyturn_allocate_refusals_total', { reason: 'no_descriptors' }), REFUSALS + 1);
    assert.ok(rssAfter - rssBefore < RSS_BOUND_MB, `RSS ${rssBefore.toFixed(1)} -> ${rssAfter.toFixed(1)} MB over ${REFUSALS} refused Allocates`);
    // Logged once, not per Allocate.
    const lines = parseLogLines(node.server.process.stdout());
    assert.equal(lines.filter((l) => String(l.msg).startsWith('relay sockets cannot be opened')).length, 1);
    assert.ok(lines.filter((l) => l.msg === 'Allocates refused for capacity').length <= 2);

    // Release a few allocations: descriptors free up, the probe binds, the node is ready again.
    for (const h of held.slice(0, 20)) assert.equal((await h.refresh(0)).code, 200);
    await until(async () => ((await readyz(node)).status === 200 ? true : undefined), '/readyz 200 after allocations were released');
    assert.equal((await c.allocate()).response.code, 200);
  });

  it('a full relay range: at most MAX_BIND_COLLISIONS binds per Allocate on ports held elsewhere, none on its own; /readyz 503 then 200', async (t) => {
    const range = await reserveRelayPortRange(24);
    // Another process holds two thirds of the range.
    const foreign: dgram.Socket[] = [];
    const closeForeign = (): void => {
      for (const s of foreign.splice(0)) s.close();
    };
    t.after(closeForeign);
    for (let port = range.min + 8; port <= range.max; port++) {
      const s = dgram.createSocket('udp4');
      await new Promise<void>((resolve, reject) => {
        s.once('error', reject);
        s.bind({ port, address: '127.0.0.1', exclusive: true }, () => resolve());
      });
      foreign.push(s);
    }
    const node = await startNode(t, { relayPorts: range });
    const pid = node.server.process.pid;
    // Port choice is random and bounded: with the last free port among 16 held elsewhere, an
    // Allocate tries 16 of the 17 and misses it 1 time in 17 (508). A client that asks again
    // gets it; here at most 10 misses (17^-10) before all 8 free ports are held.
    const first: { held: TestTurnClient[]; misses: number } = { held: [], misses: 0 };
    while (first.held.length < 8 && first.misses < 10) {
      const next = await fill(node, t, 8 - first.held.length);
      first.held.push(...next.held);
      if (next.code !== 200) {
        assert.equal(next.code, 508);
        first.misses++;
      }
    }
    assert.equal(first.held.length, 8, `the node holds every free port (${first.misses} misses on the way)`);

    // Every untried port is held elsewhere: each Allocate spends its collision budget and stops.
    const c = await client(node, t);
    let before = await metrics(node);
    const codes = await refusedAllocates(c);
    assert.deepEqual([...new Set(codes)], [508]);
    let after = await metrics(node);
    const inUse =
      sum(after, 'anyturn_relay_bind_attempts_total', { result: 'in_use' }) - sum(before, 'anyturn_relay_bind_attempts_total', { result: 'in_use' });
    assert.equal(inUse, REFUSALS * MAX_BIND_COLLISIONS, `${MAX_BIND_COLLISIONS} failed binds per refused Allocate`);
    assert.equal(sum(after, 'anyturn_relay_bind_attempts_total', { result: 'ok' }), 8);

    // The other process lets go: the node takes the rest of the range, and then holds all of it.
    closeForeign();
    const second = await fill(node, t, 24);
    assert.equal(second.held.length, 16);
    assert.equal(second.code, 508);
    const ready = await readyz(node);
    assert.equal(ready.status, 503, ready.body);
    assert.match(ready.body, /every relay port is in use/);

    before = await metrics(node);
    const rssBefore = rssMB(pid);
    const again = await refusedAllocates(c);
    assert.deepEqual([...new Set(again)], [508]);
    after = await metrics(node);
    const rssAfter = rssMB(pid);
    assert.equal(sum(after, 'anyturn_relay_bind_attempts_total') - sum(before, 'anyturn_relay_bind_attempts_total'), 0, 'no bind on a port it holds');
    assert.equal(
      sum(after, 'anyturn_allocate_refusals_total', { reason: 'relay_ports_full' }) -
        sum(before, 'anyturn_allocate_refusals_total', { reason: 'relay_ports_full' }),
      REFUSALS,
    );
    assert.ok(rssAfter - rssBefore < RSS_BOUND_MB, `RSS ${rssBefore.toFixed(1)} -> ${rssAfter.toFixed(1)} MB over ${REFUSALS} refused Allocates`);

    assert.equal((await first.held[0]!.refresh(0)).code, 200);
    const back = await readyz(node);
    assert.equal(back.status, 200, back.body);
    assert.equal((await c.allocate()).response.code, 200);
  });
});

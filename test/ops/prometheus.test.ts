// A real Prometheus (Debian's, .ci/run installs it) scrapes two anyturn nodes, spawned
// as the CLI on 127.0.0.1 and 127.0.0.2 with a shared redis-server (so they form a
// cluster), every second, and evaluates docker/prometheus/anyturn.rules.yml with only
// the alerts' `for:` shortened (the shipped durations are checked by promtool in
// prometheus-rules.test.ts). Traffic goes through a TURN allocation on node A, then A
// is drained; everything is read back through Prometheus' HTTP API, never /metrics.

import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { stringify } from 'yaml';

import { type RunningTurnServer, type SpawnedProcess, findFreeTcpPort, findFreeUdpPort, spawnProcess, startAnyturn } from '../helpers/anyturn-process.js';
import { get, post, until } from '../helpers/ops-endpoint.js';
import { PROMETHEUS_PATH, documentedMetricNames, loadRuleGroups } from '../helpers/prometheus.js';
import { startRedisServer, type RedisServerHandle } from '../helpers/redis-server.js';
import { TestPeer, TestTurnClient } from '../helpers/turn-client.js';

const USER = 'prom';
const PASSWORD = 'prom-password';
const REALM = 'prometheus.test';
const TOKEN = 'prometheus-test-admin-token-0123456789';
const SECRET = 'prometheus-test-cluster-secret-0123456789';
const CHANNEL = 0x4001;
// Bounds a broken run only: Prometheus needs a few scrapes and evaluations for each step.
const DEADLINE_MS = 30_000;

interface Node {
  readonly pop: 'a' | 'b';
  readonly server: RunningTurnServer;
  /** The ops endpoint, ip:port: Prometheus' target and its `instance` label. */
  readonly target: string;
}

interface VectorSample {
  readonly metric: Record<string, string>;
  readonly value: [number, string];
}

async function startNode(pop: 'a' | 'b', ip: string, redis: RedisServerHandle): Promise<Node> {
  const metricsPort = await findFreeTcpPort(ip);
  const meshPort = await findFreeUdpPort(ip);
  const server = await startAnyturn({
    listeningIps: [ip],
    relayIp: ip,
    users: [{ name: USER, password: PASSWORD }],
    realm: REALM,
    allowLoopbackPeers: true,
    extraArgs: [
      '--node-id',
      `pop-${pop}`,
      '--redis-url',
      redis.url,
      '--mesh-address',
      `${ip}:${meshPort}`,
      '--cluster-secret',
      SECRET,
      '--admin-token',
      TOKEN,
      '--metrics-ip',
      ip,
      '--metrics-port',
      String(metricsPort),
    ],
  });
  return { pop, server, target: `${ip}:${metricsPort}` };
}

/** The shipped rules, each alert's `for:` cut to 1s so that one drain fires within seconds. */
function derivedRules(): string {
  const groups = loadRuleGroups().map((g) => ({ ...g, rules: g.rules.map((r) => (r.alert === undefined ? r : { ...r, for: '1s' })) }));
  return stringify({ groups });
}

class Prometheus {
  private constructor(
    readonly base: string,
    readonly process: SpawnedProcess,
  ) {}

  static async start(dir: string, nodes: readonly Node[]): Promise<Prometheus> {
    writeFileSync(join(dir, 'anyturn.rules.yml'), derivedRules());
    const config = {
      global: { scrape_interval: '1s', scrape_timeout: '1s', evaluation_interval: '1s' },
      rule_files: [join(dir, 'anyturn.rules.yml')],
      scrape_configs: [
        {
          job_name: 'anyturn',
          metrics_path: '/metrics',
          static_configs: nodes.map((n) => ({ targets: [n.target], labels: { pop: n.pop } })),
        },
      ],
    };
    writeFileSync(join(dir, 'prometheus.yml'), stringify(config));
    const port = await findFreeTcpPort();
    const proc = spawnProcess(
      PROMETHEUS_PATH,
      [
        `--config.file=${join(dir, 'prometheus.yml')}`,
        `--storage.tsdb.path=${join(dir, 'data')}`,
        `--web.listen-address=127.0.0.1:${port}`,
        '--log.level=warn',
      ],
      { name: 'prometheus', cwd: dir },
    );
    const prometheus = new Prometheus(`http://127.0.0.1:${port}`, proc);
    await until(
      async () => {
        if (!proc.isRunning()) throw new Error(`prometheus exited\n${proc.outputTail()}`);
        try {
          return (await get(`${prometheus.base}/-/ready`)).status === 200 ? true : undefined;
        } catch {
          return undefined; // not listening yet
        }
      },
      'prometheus /-/ready',
      DEADLINE_MS,
    );
    return prometheus;
  }

  async api<T>(path: string): Promise<T> {
    const r = await get(`${this.base}/api/v1/${path}`);
    assert.equal(r.status, 200, `${path}: ${r.body}`);
    const body = JSON.parse(r.body) as { status: string; data: T };
    assert.equal(body.status, 'success', r.body);
    return body.data;
  }

  async query(expr: string): Promise<VectorSample[]> {
    const data = await this.api<{ resultType: string; result: VectorSample[] }>(`query?query=${encodeURIComponent(expr)}`);
    assert.equal(data.resultType, 'vector', expr);
    return data.result;
  }

  /** Polls `expr` until `accept` takes its result; returns that result. */
  queryUntil(expr: string, accept: (samples: VectorSample[]) => boolean, what: string): Promise<VectorSample[]> {
    return until(
      async () => {
        const samples = await this.query(expr);
        return accept(samples) ? samples : undefined;
      },
      `${what} (${expr})`,
      DEADLINE_MS,
    );
  }
}

function valueFor(samples: readonly VectorSample[], labels: Record<string, string>): number | undefined {
  const s = samples.find((x) => Object.entries(labels).every(([k, v]) => x.metric[k] === v));
  return s === undefined ? undefined : Number(s.value[1]);
}

describe('Prometheus scrapes two anyturn nodes (docker/prometheus/ rules)', () => {
  let dir: string;
  let redis: RedisServerHandle;
  let a: Node;
  let b: Node;
  let prometheus: Prometheus;
  let client: TestTurnClient;
  let peer: TestPeer;
  let traffic: NodeJS.Timeout | undefined;
  const stops: (() => unknown)[] = [];

  before(async () => {
    dir = mkdtempSync(join(tmpdir(), 'anyturn-prometheus-'));
    stops.push(() => rmSync(dir, { recursive: true, force: true }));
    redis = await startRedisServer();
    stops.push(() => redis.stop());
    a = await startNode('a', '127.0.0.1', redis);
    stops.push(() => a.server.stop());
    b = await startNode('b', '127.0.0.2', redis);
    stops.push(() => b.server.stop());
    prometheus = await Prometheus.start(dir, [a, b]);
    stops.push(() => prometheus.process.stop());
  });

  after(async () => {
    if (traffic) clearInterval(traffic);
    client?.close();
    peer?.close();
    for (const stop of stops.reverse()) await stop();
  });

  it('both targets are up, with their pop labels, and both nodes reach the shared store', async () => {
    const targets = await until(
      async () => {
        const data = await prometheus.api<{ activeTargets: { labels: Record<string, string>; health: string; lastError: string }[] }>('targets?state=active');
        return data.activeTargets.length === 2 && data.activeTargets.every((t) => t.health === 'up') ? data.activeTargets : undefined;
      },
      'two healthy targets',
      DEADLINE_MS,
    );
    assert.deepEqual(targets.map((t) => [t.labels.pop, t.labels.instance, t.labels.job]).sort(), [
      ['a', a.target, 'anyturn'],
      ['b', b.target, 'anyturn'],
    ]);
    const up = await prometheus.query('up{job="anyturn"}');
    assert.equal(valueFor(up, { pop: 'a' }), 1);
    assert.equal(valueFor(up, { pop: 'b' }), 1);
    const store = await prometheus.queryUntil('anyturn_store_up{store="redis"}', (s) => s.length === 2, 'the store gauge of both nodes');
    assert.equal(valueFor(store, { pop: 'a' }), 1);
    assert.equal(valueFor(store, { pop: 'b' }), 1);
    const degraded = await prometheus.query('anyturn_store_degraded');
    assert.deepEqual(degraded.map((s) => [s.metric.pop, s.value[1]]).sort(), [
      ['a', '0'],
      ['b', '0'],
    ]);
  });

  it('an allocation on node A and its relayed packets show, both directions, as rates and as the recorded series', async () => {
    peer = await TestPeer.open();
    client = await TestTurnClient.open({ address: a.server.host, port: a.server.port }, { username: USER, password: PASSWORD, realm: REALM });
    const allocated = await client.allocate();
    assert.equal(allocated.response.code, 200);
    const relayed = allocated.relayed!;
    assert.equal((await client.channelBind(CHANNEL, peer.endpoint)).code, 200);
    // Packets keep flowing across scrapes: a rate needs two samples that differ.
    traffic = setInterval(() => {
      client.sendChannelData(CHANNEL, Buffer.from('to the peer'));
      peer.send(Buffer.from('to the client'), relayed);
    }, 50);
    await peer.waitFor(1, DEADLINE_MS);
    await client.waitForReceived(1, DEADLINE_MS);

    const allocations = await prometheus.queryUntil('sum by (pop) (anyturn_allocations)', (s) => valueFor(s, { pop: 'a' }) === 1, 'one allocation on A');
    assert.equal(valueFor(allocations, { pop: 'b' }) ?? 0, 0, 'none on B');
    assert.equal(valueFor(await prometheus.query('anyturn_allocations{pop="a"}'), { transport: 'udp', family: 'ipv4' }), 1);

    for (const direction of ['client_to_peer', 'peer_to_client']) {
      await prometheus.queryUntil(
        `rate(anyturn_relayed_packets_total{pop="a",direction="${direction}"}[5s])`,
        (s) => (valueFor(s, {}) ?? 0) > 0,
        `A relays ${direction}`,
      );
      await prometheus.queryUntil(
        `instance:anyturn_relayed_packets:rate1m{pop="a",direction="${direction}"}`,
        (s) => (valueFor(s, {}) ?? 0) > 0,
        `the recording rule sees ${direction}`,
      );
      await prometheus.queryUntil(
        `instance:anyturn_relayed_bytes:rate1m{pop="a",direction="${direction}"}`,
        (s) => (valueFor(s, {}) ?? 0) > 0,
        `relayed bytes ${direction}`,
      );
    }
    const onB = await prometheus.query('sum(rate(anyturn_relayed_packets_total{pop="b"}[5s]))');
    assert.equal(valueFor(onB, {}) ?? 0, 0, 'B relays nothing');
  });

  it('draining A: anyturn_draining is 1 for A only, and AnyturnNodeDraining fires for A', async () => {
    const drained = await post(`http://${a.target}/drain`, TOKEN);
    assert.equal(drained.status, 200, drained.body);
    const draining = await prometheus.queryUntil('anyturn_draining', (s) => valueFor(s, { pop: 'a' }) === 1, 'A draining');
    assert.equal(valueFor(draining, { pop: 'b' }), 0);

    const firing = await until(
      async () => {
        const data = await prometheus.api<{ alerts: { labels: Record<string, string>; state: string }[] }>('alerts');
        const drainAlerts = data.alerts.filter((x) => x.labels.alertname === 'AnyturnNodeDraining');
        return drainAlerts.some((x) => x.state === 'firing') ? drainAlerts : undefined;
      },
      'AnyturnNodeDraining firing',
      DEADLINE_MS,
    );
    assert.deepEqual(
      firing.map((x) => [x.labels.pop, x.labels.instance, x.labels.severity, x.state]),
      [['a', a.target, 'warning', 'firing']],
      'only A, whose drain is on',
    );
    // The rule that fired is the shipped one, evaluated without error; only its `for:` was cut.
    const rules = await prometheus.api<{
      groups: { name: string; rules: { name: string; type: string; health: string; duration?: number; state?: string }[] }[];
    }>('rules');
    const shipped = loadRuleGroups();
    assert.deepEqual(
      rules.groups.map((g) => [g.name, g.rules.map((r) => r.name)]).sort(),
      shipped.map((g) => [g.name, g.rules.map((r) => r.alert ?? r.record)]).sort(),
    );
    const drainRule = rules.groups.flatMap((g) => g.rules).find((r) => r.name === 'AnyturnNodeDraining');
    assert.equal(drainRule?.state, 'firing');
    assert.equal(drainRule?.duration, 1);
    await until(
      async () => {
        const data = await prometheus.api<{ groups: { rules: { name: string; health: string; lastError?: string }[] }[] }>('rules');
        const all = data.groups.flatMap((g) => g.rules);
        const bad = all.filter((r) => r.health === 'err');
        assert.deepEqual(bad, [], 'no rule fails to evaluate');
        return all.every((r) => r.health === 'ok') ? true : undefined;
      },
      'every rule evaluated',
      DEADLINE_MS,
    );
  });

  it("every anyturn metric Prometheus stored is in the README's metrics table", async () => {
    const names = await prometheus.api<string[]>('label/__name__/values');
    const ours = names.filter((n) => n.startsWith('anyturn_'));
    assert.ok(ours.includes('anyturn_relayed_packets_total') && ours.includes('anyturn_draining'), ours.join(' '));
    const documented = await documentedMetricNames();
    assert.deepEqual(
      ours.filter((n) => !documented.has(n)),
      [],
    );
  });
});

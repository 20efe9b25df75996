// docker/: what can be checked without a Docker engine. The compose file and the
// Prometheus config parse; compose points at files that exist; Prometheus
// scrapes exactly the PoPs' metrics addresses; every PoP's environment is a
// valid configuration and the PoPs differ where they must; and the image's
// ENTRYPOINT + CMD, run here as `node dist/src/cli.js <CMD>` with the image's
// ENV (ports moved to free ones), starts, answers /healthz, passes the
// image's own HEALTHCHECK command and stops with 0 on SIGTERM.

import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import { resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parse } from 'yaml';
import { buildConfig, type RawOptions } from '../../src/config/index.js';
import { findFreePort, findFreeTcpPort, reserveRelayPortRange, spawnProcess, stopAfter } from '../helpers/anyturn-process.js';

/** dist/test/integration/docker.test.js -> the repository root */
const ROOT = fileURLToPath(new URL('../../../', import.meta.url));
const DOCKER = resolve(ROOT, 'docker');
const DEADLINE_MS = 15_000;

type Dict = Record<string, unknown>;

function isDict(v: unknown): v is Dict {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

function dict(v: unknown, what: string): Dict {
  assert.ok(isDict(v), `${what} is a mapping`);
  return v;
}

function loadYaml(path: string): Dict {
  return dict(parse(readFileSync(path, 'utf8')), path);
}

/** The Dockerfile's instructions, continuation lines joined, comments dropped. */
function dockerfileInstructions(): { op: string; args: string }[] {
  const text = readFileSync(resolve(DOCKER, 'Dockerfile'), 'utf8').replace(/\\\n/g, ' ');
  const out: { op: string; args: string }[] = [];
  for (const line of text.split('\n')) {
    const trimmed = line.trim();
    if (trimmed === '' || trimmed.startsWith('#')) continue;
    const m = /^(\S+)\s+(.*)$/.exec(trimmed);
    assert.ok(m, `Dockerfile line: ${trimmed}`);
    out.push({ op: m[1]!.toUpperCase(), args: m[2]!.trim() });
  }
  return out;
}

/** Exec form: a JSON array of strings. */
function execForm(args: string): string[] {
  const v: unknown = JSON.parse(args);
  assert.ok(Array.isArray(v) && v.every((s) => typeof s === 'string'), `exec form: ${args}`);
  return v;
}

/** ENV k=v pairs (the `ENV a=1 b=2` form). */
function dockerfileEnv(): Record<string, string> {
  const env: Record<string, string> = {};
  for (const i of dockerfileInstructions().filter((i) => i.op === 'ENV')) {
    for (const m of i.args.matchAll(/([A-Z_][A-Z0-9_]*)=("[^"]*"|\S+)/g)) env[m[1]!] = m[2]!.replace(/^"|"$/g, '');
  }
  return env;
}

const REPEATABLE = new Set(['listening-ip', 'relay-ip', 'user', 'static-auth-secret', 'allowed-peer-ip', 'denied-peer-ip', 'alternate-server']);

/** ANYTURN_* variables as yargs hands them to buildConfig (numerals as numbers, booleans, lists as arrays). */
function rawOptionsFromEnv(env: Record<string, string>): RawOptions {
  const raw: Record<string, unknown> = {};
  for (const [k, v] of Object.entries(env)) {
    if (!k.startsWith('ANYTURN_')) continue;
    const flag = k.slice('ANYTURN_'.length).toLowerCase().replace(/_/g, '-');
    raw[flag] = REPEATABLE.has(flag) ? [v] : v === 'true' ? true : v === 'false' ? false : /^\d+$/.test(v) ? Number(v) : v;
  }
  return raw as RawOptions;
}

/** Compose interpolation, as `docker compose` does it with these variables set. */
function interpolate(value: string, vars: Record<string, string>): string {
  return value.replace(/\$\{([A-Z_][A-Z0-9_]*)(?::?[?-][^}]*)?\}/g, (_, name: string) => {
    const v = vars[name];
    assert.ok(v !== undefined, `compose needs \${${name}}`);
    return v;
  });
}

function composeServices(): Dict {
  return dict(loadYaml(resolve(DOCKER, 'compose.yml')).services, 'services');
}

/** The services built from docker/Dockerfile: the PoPs. */
function anyturnServices(services: Dict): [string, Dict][] {
  return Object.entries(services)
    .map(([name, s]) => [name, dict(s, name)] as [string, Dict])
    .filter(([, s]) => isDict(s.build) && s.build.dockerfile === 'docker/Dockerfile');
}

function environment(service: Dict, vars: Record<string, string>): Record<string, string> {
  const env = dict(service.environment, 'environment');
  return Object.fromEntries(Object.entries(env).map(([k, v]) => [k, interpolate(String(v), vars)]));
}

const SECRETS = { ANYTURN_CLUSTER_SECRET: 'x'.repeat(32), TURN_SECRET: 'y'.repeat(32), ANYTURN_ADMIN_TOKEN: 'z'.repeat(32) };

describe('docker/', () => {
  it('compose.yml and prometheus.yml parse; compose builds docker/Dockerfile from the repository root and mounts files that exist', () => {
    const services = composeServices();
    const pops = anyturnServices(services);
    assert.equal(pops.length, 2, 'two anyturn PoPs');
    for (const [name, s] of pops) {
      const build = dict(s.build, `${name}.build`);
      const context = resolve(DOCKER, String(build.context));
      assert.equal(context, resolve(ROOT), `${name} builds from the repository root`);
      assert.ok(existsSync(resolve(context, String(build.dockerfile))), `${name}: ${String(build.dockerfile)} exists`);
      assert.equal(s.network_mode, 'host', `${name} uses host networking (the relay port range)`);
    }
    assert.ok(isDict(services.redis), 'a redis service');
    assert.ok(isDict(services.prometheus), 'a prometheus service');
    let mounts = 0;
    for (const [name, s] of Object.entries(services)) {
      for (const v of (dict(s, name).volumes as unknown[] | undefined) ?? []) {
        const host = String(v).split(':')[0]!;
        if (host.startsWith('.') || host.startsWith('/')) {
          assert.ok(existsSync(resolve(DOCKER, host)), `${name} mounts ${host}, which exists`);
          mounts++;
        }
      }
    }
    const promVolumes = (dict(services.prometheus, 'prometheus').volumes as unknown[]).map(String);
    assert.ok(
      promVolumes.some((v) => v.startsWith('./prometheus.yml:') && v.includes('/etc/prometheus/prometheus.yml')),
      'prometheus.yml is mounted as the config',
    );
    assert.ok(mounts >= 1);
    loadYaml(resolve(DOCKER, 'prometheus.yml'));
    assert.ok(existsSync(resolve(ROOT, '.dockerignore')));
    const ignored = readFileSync(resolve(ROOT, '.dockerignore'), 'utf8')
      .split('\n')
      .map((l) => l.trim());
    for (const p of ['node_modules', 'dist', '.git']) assert.ok(ignored.includes(p), `.dockerignore leaves out ${p}`);
  });

  it('each PoP is a valid configuration; they differ in node id, listening, relay and mesh addresses, and share the store and secrets', () => {
    const pops = anyturnServices(composeServices());
    const configs = pops.map(([name, s]) => {
      const env = { ...dockerfileEnv(), ...environment(s, SECRETS) };
      try {
        return { name, env, config: buildConfig(rawOptionsFromEnv(env)) };
      } catch (err) {
        throw new Error(`${name}: ${(err as Error).message}`);
      }
    });
    const [a, b] = configs;
    assert.ok(a && b);
    assert.notEqual(a.config.nodeId, b.config.nodeId);
    assert.notDeepEqual(a.config.listeningIps, b.config.listeningIps);
    assert.notDeepEqual(a.config.relayIps, b.config.relayIps);
    assert.notEqual(`${a.config.cluster?.meshAddress}:${a.config.cluster?.meshPort}`, `${b.config.cluster?.meshAddress}:${b.config.cluster?.meshPort}`);
    for (const c of configs) {
      assert.ok(c.config.cluster, `${c.name} runs in a cluster`);
      assert.equal(c.config.metricsPort > 0, true, `${c.name} serves /metrics`);
      assert.equal(c.config.adminToken, SECRETS.ANYTURN_ADMIN_TOKEN, `${c.name} allows POST /drain`);
    }
    assert.ok(a.env.ANYTURN_REDIS_URL);
    assert.equal(a.env.ANYTURN_REDIS_URL, b.env.ANYTURN_REDIS_URL);
    assert.ok(a.config.cluster?.clusterSecret.equals(b.config.cluster!.clusterSecret));
    assert.deepEqual(a.config.authSecrets, b.config.authSecrets);
    assert.equal(a.config.realm, b.config.realm);
    // The Redis the PoPs use is the one compose runs.
    const redis = dict(composeServices().redis, 'redis');
    const command = (redis.command as unknown[]).map(String);
    const url = new URL(a.env.ANYTURN_REDIS_URL);
    assert.equal(command[command.indexOf('--port') + 1], url.port);
    assert.equal(command[command.indexOf('--bind') + 1], url.hostname);
  });

  it("Prometheus scrapes exactly the PoPs' metrics addresses", () => {
    const pops = anyturnServices(composeServices());
    const expected = pops.map(([, s]) => {
      const env = { ...dockerfileEnv(), ...environment(s, SECRETS) };
      return `${env.ANYTURN_METRICS_IP ?? '127.0.0.1'}:${env.ANYTURN_METRICS_PORT}`;
    });
    const prom = loadYaml(resolve(DOCKER, 'prometheus.yml'));
    const jobs = prom.scrape_configs as unknown[];
    assert.ok(Array.isArray(jobs));
    const targets: string[] = [];
    for (const job of jobs) {
      const j = dict(job, 'scrape config');
      assert.equal(j.metrics_path ?? '/metrics', '/metrics');
      for (const sc of (j.static_configs as unknown[] | undefined) ?? []) targets.push(...(dict(sc, 'static_config').targets as string[]));
    }
    assert.deepEqual([...targets].sort(), [...expected].sort());
  });

  it('the Dockerfile: build, dataplane and runtime stages, npm ci then --omit=dev, non-root, HEALTHCHECK in node, the ports EXPOSEd', () => {
    const ins = dockerfileInstructions();
    const froms = ins.filter((i) => i.op === 'FROM');
    // TypeScript, the kernel data plane (built from source, docs/dataplane.md), and the runtime image.
    assert.deepEqual(
      froms.map((f) => / AS (\S+)$/.exec(f.args)?.[1] ?? 'runtime'),
      ['build', 'dataplane', 'runtime'],
      'multi-stage',
    );
    for (const f of froms) assert.match(f.args, /^node:20-bookworm-slim\b/);
    const runs = ins.filter((i) => i.op === 'RUN').map((i) => i.args);
    assert.ok(
      runs.some((r) => /npm ci\b(?!.*--omit=dev)/.test(r)),
      'build stage: npm ci',
    );
    assert.ok(
      runs.some((r) => /npm ci .*--omit=dev/.test(r)),
      'runtime stage: npm ci --omit=dev',
    );
    assert.ok(runs.some((r) => /tsc -p docker\/tsconfig\.build\.json/.test(r)));
    assert.ok(existsSync(resolve(DOCKER, 'tsconfig.build.json')));
    const user = ins.filter((i) => i.op === 'USER').at(-1);
    assert.ok(user && user.args !== 'root' && user.args !== '0', 'runs as a non-root user');
    const expose = ins.filter((i) => i.op === 'EXPOSE').flatMap((i) => i.args.split(/\s+/));
    for (const p of ['3478/udp', '3478/tcp', '5349/tcp', '9641/tcp']) assert.ok(expose.includes(p), `EXPOSE ${p}`);
    const env = dockerfileEnv();
    assert.ok(expose.includes(`${env.ANYTURN_MIN_PORT}-${env.ANYTURN_MAX_PORT}/udp`), 'the relay range is EXPOSEd');
    assert.ok(expose.includes(`${env.ANYTURN_METRICS_PORT}/tcp`));
    const entrypoint = ins.filter((i) => i.op === 'ENTRYPOINT').at(-1);
    assert.ok(entrypoint);
    assert.deepEqual(execForm(entrypoint.args), ['node', 'dist/src/cli.js']);
    // COPY --from=build puts dist/src where the entry point looks.
    assert.ok(ins.some((i) => i.op === 'COPY' && /--from=build \S*dist\/src \.\/dist\/src/.test(i.args)));
    // The kernel data plane: built by the repository's own script, copied where KernelDataplane looks,
    // and only its helper gets CAP_BPF and CAP_NET_ADMIN.
    assert.ok(
      runs.some((r) => /sh native\/dataplane\/build\.sh/.test(r)),
      'dataplane stage: npm run build:dataplane',
    );
    assert.ok(ins.some((i) => i.op === 'COPY' && /--from=dataplane \S*build\/dataplane \.\/build\/dataplane/.test(i.args)));
    assert.ok(runs.some((r) => /setcap cap_bpf,cap_net_admin\+ep build\/dataplane\/anyturn-dataplane/.test(r)));
  });

  it("ENTRYPOINT + CMD with the image's ENV starts the server here, answers /healthz, passes HEALTHCHECK, exits 0 on SIGTERM", async (t) => {
    const ins = dockerfileInstructions();
    const entrypoint = execForm(ins.filter((i) => i.op === 'ENTRYPOINT').at(-1)!.args);
    const cmd = execForm(ins.filter((i) => i.op === 'CMD').at(-1)!.args);
    const health = ins.filter((i) => i.op === 'HEALTHCHECK').at(-1);
    assert.ok(health);
    const healthCmd = execForm(health.args.replace(/^(--\S+\s+)*CMD\s+/, ''));
    assert.equal(healthCmd[0], 'node');
    assert.equal(entrypoint[0], 'node');

    const base: Record<string, string> = {};
    for (const [k, v] of Object.entries(process.env)) if (v !== undefined && !k.startsWith('ANYTURN_')) base[k] = v;
    const listeningPort = await findFreePort();
    const metricsPort = await findFreeTcpPort();
    const relay = await reserveRelayPortRange(50);
    const env = {
      ...base,
      ...dockerfileEnv(),
      // Loopback and free ports here; the rest as the image has it.
      ANYTURN_LISTENING_IP: '127.0.0.1',
      ANYTURN_LISTENING_PORT: String(listeningPort),
      ANYTURN_METRICS_IP: '127.0.0.1',
      ANYTURN_METRICS_PORT: String(metricsPort),
      ANYTURN_MIN_PORT: String(relay.min),
      ANYTURN_MAX_PORT: String(relay.max),
      ANYTURN_USER: 'docker:docker-password',
    };
    const proc = stopAfter(t, spawnProcess(process.execPath, [...entrypoint.slice(1), ...cmd], { name: 'anyturn (docker CMD)', env, cwd: ROOT }));
    const deadline = Date.now() + DEADLINE_MS;
    let status = 0;
    while (Date.now() < deadline && proc.isRunning()) {
      status = await fetch(`http://127.0.0.1:${metricsPort}/healthz`).then(
        (r) => r.status,
        () => 0,
      );
      if (status === 200) break;
      await new Promise((r) => setTimeout(r, 50));
    }
    assert.equal(status, 200, `/healthz answers 200\n${proc.outputTail()}`);
    // pino writes asynchronously, through a pipe: the line may come just after /healthz answers.
    while (Date.now() < deadline && !proc.stdout().includes('"msg":"anyturn ready"')) await new Promise((r) => setTimeout(r, 20));
    assert.match(proc.stdout(), /"msg":"anyturn ready"/);

    const check = spawnSync(healthCmd[0] === 'node' ? process.execPath : healthCmd[0]!, healthCmd.slice(1), { env, timeout: DEADLINE_MS });
    assert.equal(check.status, 0, `HEALTHCHECK passes: ${String(check.stderr)}`);

    assert.deepEqual(await proc.stop('SIGTERM'), { code: 0, signal: null }, proc.outputTail());
    const after = spawnSync(process.execPath, healthCmd.slice(1), { env, timeout: DEADLINE_MS });
    assert.equal(after.status, 1, 'HEALTHCHECK fails once the server is gone');
  });
});

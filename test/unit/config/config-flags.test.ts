// The flag table (src/config/flags.ts), walked: every flag has an ANYTURN_* environment
// variable that reaches it, a --help line under its group with its description and
// default, and every numeric, enum and address flag refuses a bad value with a message
// naming the flag and the value. The cases are made from the table, so a new flag is
// covered the day it is added. And a config built in code gets the CLI's defaults.

import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { isDeepStrictEqual } from 'node:util';
import { parseArgs } from '../../../src/config/args.js';
import { FLAGS, type FlagName, type FlagSpec, GROUPS, envName, flagNames } from '../../../src/config/flags.js';
import { ConfigError, buildConfig, type RawOptions } from '../../../src/config/index.js';
import { BASE } from '../../helpers/config.js';

/** dist/test/unit/config/config-flags.test.js -> dist/src/cli.js */
const CLI = fileURLToPath(new URL('../../../src/cli.js', import.meta.url));

const spec = (flag: FlagName): FlagSpec => FLAGS[flag];

/** parseArgs with exactly these ANYTURN_* variables set (and none from the caller). */
function parseWithEnv(argv: string[], env: Record<string, string>): RawOptions {
  const saved = Object.entries(process.env).filter(([k]) => k.startsWith('ANYTURN_'));
  for (const [k] of saved) delete process.env[k];
  Object.assign(process.env, env);
  try {
    return parseArgs(argv);
  } finally {
    for (const k of Object.keys(env)) delete process.env[k];
    for (const [k, v] of saved) process.env[k] = v;
  }
}

/** A value the flag's kind accepts as text (as an environment variable carries it). */
function sampleText(flag: FlagName): string {
  const { kind } = spec(flag);
  if (kind.tag === 'integer') return String(kind.max);
  if (kind.tag === 'boolean') return 'true';
  if (kind.tag === 'choice') return kind.choices![kind.choices!.length - 1]!;
  return `sample-${flag}`;
}

// Flags whose value is checked only with the flags they go with: a shared store
// (and for the sentinel list, the master group name).
const STORE: RawOptions = { 'mesh-address': '127.0.0.1:7000', 'cluster-secret': 'a-cluster-secret-of-16+' };
const CONTEXT: Partial<Record<FlagName, RawOptions>> = {
  'cluster-lookup-rate': { ...STORE, 'redis-url': 'redis://127.0.0.1:6379' },
  'relay-mode': { ...STORE, 'redis-url': 'redis://127.0.0.1:6379' },
  'mesh-address': { 'cluster-secret': STORE['cluster-secret'], 'redis-url': 'redis://127.0.0.1:6379' },
  'redis-sentinel': { ...STORE, 'redis-sentinel-name': 'mymaster' },
  'redis-cluster': STORE,
};

/** Values of the flag's kind that must be refused. */
function invalidValues(flag: FlagName): unknown[] {
  const { kind, hidden } = spec(flag);
  const list = (v: string): unknown => (kind.yargs.array ? [v] : v);
  switch (kind.tag) {
    case 'integer':
      return [kind.max! + 1, kind.min! - 1, 2.5, 'abc'];
    case 'choice':
      return ['bogus'];
    case 'address':
      return [list('not-an-address'), list('192.0.2.1:99999')];
    default:
      assert.ok(hidden || ['boolean', 'text', 'secret'].includes(kind.tag), `--${flag}: a kind this test knows`);
      return [];
  }
}

describe('config: the flag table', () => {
  it('has flags, each in a --help group or hidden', () => {
    assert.ok(flagNames().length >= 50);
    for (const flag of flagNames()) {
      const s = spec(flag);
      assert.ok(s.hidden ? s.group === undefined : s.group !== undefined && GROUPS.includes(s.group) && (s.describe ?? '').length > 0, `--${flag}`);
    }
  });

  it('every flag has an ANYTURN_* environment variable that reaches it', () => {
    const names = new Set<string>();
    for (const flag of flagNames()) {
      const env = envName(flag);
      assert.match(env, /^ANYTURN_[A-Z0-9_]+$/);
      assert.ok(!names.has(env), `${env} is one flag's`);
      names.add(env);
      const sample = sampleText(flag);
      const raw = parseWithEnv([], { [env]: sample }) as Record<string, unknown>;
      const got = [raw[flag]].flat().map(String);
      assert.deepEqual(got, [sample], `${env}=${sample} sets --${flag}`);
    }
  });

  it('every flag has a --help line: under its group, with its description and the CLI default', () => {
    // Spawned as an operator runs it; not a terminal, so each flag is one unwrapped line.
    const help = execFileSync(process.execPath, [CLI, '--help'], { encoding: 'utf8' });
    const sections = new Map(help.split('\n\n').map((block) => [block.split('\n')[0]!, block] as const));
    for (const flag of flagNames()) {
      const s = spec(flag);
      if (s.hidden) {
        // Hidden negations are explained on the line of the flag they negate.
        assert.ok(help.includes(`--${flag}`), `--help mentions --${flag}`);
        continue;
      }
      const section = sections.get(s.group!);
      assert.ok(section, `--help has the group ${s.group}`);
      const line = section.split('\n').find((l) => l.trimStart().startsWith(`--${flag} `));
      assert.ok(line, `--${flag} is listed under ${s.group}`);
      assert.ok(line.includes(s.describe!), `--${flag}'s description: ${line}`);
      const shown = s.cliDefault ?? s.default;
      if (shown !== undefined) assert.ok(line.includes(`[default: ${JSON.stringify(shown)}]`), `--${flag} shows its default ${JSON.stringify(shown)}: ${line}`);
      else assert.ok(!line.includes('[default:'), `--${flag} shows no default: ${line}`);
    }
  });

  for (const flag of flagNames()) {
    for (const bad of invalidValues(flag)) {
      it(`--${flag} ${JSON.stringify(bad)} is refused, naming the flag and the value`, () => {
        const context = CONTEXT[flag] ?? {};
        let err: unknown;
        try {
          buildConfig({ ...BASE, ...context, [flag]: bad } as RawOptions);
        } catch (e) {
          err = e;
        }
        assert.ok(err instanceof ConfigError, `refused with a ConfigError, got ${String(err)}`);
        assert.equal(err.flag, flag);
        assert.ok(err.message.includes(`--${flag}`), err.message);
        assert.ok(err.message.includes(String([bad].flat()[0])), `${err.message} names ${JSON.stringify(bad)}`);
        for (const c of spec(flag).kind.choices ?? []) assert.ok(err.message.includes(c), `${err.message} names the choice ${c}`);
      });
    }
  }

  it('a config built in code gets the CLI defaults, but for the deliberate metrics-port difference', () => {
    const fromCli = buildConfig(parseWithEnv(['--listening-ip', '127.0.0.1', '--user', 'u:p'], {}));
    const inCode = buildConfig(BASE);
    const differ = Object.keys(fromCli).filter(
      (k) => k !== 'nonceSecret' && !isDeepStrictEqual(fromCli[k as keyof typeof fromCli], inCode[k as keyof typeof inCode]),
    );
    // nonceSecret: random at each start unless given.
    assert.deepEqual(differ, ['metricsPort']);
    assert.equal(fromCli.metricsPort, spec('metrics-port').cliDefault);
    assert.equal(inCode.metricsPort, spec('metrics-port').default);
    assert.deepEqual(
      flagNames().filter((f) => spec(f).cliDefault !== undefined),
      ['metrics-port'],
      'the only flag whose CLI default differs',
    );
  });
});

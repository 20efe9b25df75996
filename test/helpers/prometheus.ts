// Prometheus as the operator's tests see it: the metric names anyturn documents (the
// README's metrics table, and prom-client's default process metrics behind its
// `anyturn_process_*` row), the names a PromQL expression refers to, promtool, and
// the shipped files in docker/prometheus/ and docker/grafana/.

import { spawnSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { Registry, collectDefaultMetrics } from 'prom-client';
import { parse } from 'yaml';

/** dist/test/helpers/prometheus.js -> the repository root */
export const REPO_ROOT = fileURLToPath(new URL('../../../', import.meta.url));
export const PROMETHEUS_DIR = resolve(REPO_ROOT, 'docker', 'prometheus');
export const RULES_FILE = resolve(PROMETHEUS_DIR, 'anyturn.rules.yml');
export const RULES_TEST_FILE = resolve(PROMETHEUS_DIR, 'anyturn.rules.test.yml');
export const DASHBOARD_FILE = resolve(REPO_ROOT, 'docker', 'grafana', 'anyturn.json');

/** Debian's paths (.ci/run installs the prometheus package, which ships promtool). */
export const PROMETHEUS_PATH = process.env.PROMETHEUS_PATH ?? '/usr/bin/prometheus';
export const PROMTOOL_PATH = process.env.PROMTOOL_PATH ?? '/usr/bin/promtool';

export interface ToolRun {
  readonly status: number | null;
  readonly output: string;
}

/** Runs promtool to completion; the deadline only stops a hung tool. */
export function promtool(args: readonly string[], cwd: string = PROMETHEUS_DIR): ToolRun {
  const r = spawnSync(PROMTOOL_PATH, [...args], { cwd, encoding: 'utf8', timeout: 60_000 });
  if (r.error) throw new Error(`cannot run ${PROMTOOL_PATH} ${args.join(' ')} (${r.error.message}); install Debian's prometheus package (.ci/run does)`);
  return { status: r.status, output: `${r.stdout}${r.stderr}` };
}

export interface Rule {
  readonly record?: string;
  readonly alert?: string;
  readonly expr: string;
  readonly for?: string;
  readonly labels?: Record<string, string>;
  readonly annotations?: Record<string, string>;
}

export interface RuleGroup {
  readonly name: string;
  readonly interval?: string;
  readonly rules: Rule[];
}

export function loadRuleGroups(file: string = RULES_FILE): RuleGroup[] {
  return (parse(readFileSync(file, 'utf8')) as { groups: RuleGroup[] }).groups;
}

/** Metric names the README's metrics table documents (under "Operations endpoint"), histograms with their series. */
export function readmeMetricNames(): { names: Set<string>; prefixes: string[] } {
  const readme = readFileSync(resolve(REPO_ROOT, 'README.md'), 'utf8');
  const names = new Set<string>();
  const prefixes: string[] = [];
  for (const line of readme.split('\n')) {
    const cells = line.split('|').map((c) => c.trim());
    // | `name{labels}`, `other` | type | meaning |
    if (cells.length < 4 || !cells[1]?.startsWith('`anyturn_')) continue;
    const histogram = cells[2]?.includes('histogram') ?? false;
    for (const m of cells[1].matchAll(/`(anyturn_[a-z0-9_]*)(\*)?(?:\{[^}]*\})?`/g)) {
      if (m[2]) {
        prefixes.push(m[1]!);
        continue;
      }
      names.add(m[1]!);
      if (histogram) for (const suffix of ['_bucket', '_sum', '_count']) names.add(`${m[1]!}${suffix}`);
    }
  }
  return { names, prefixes };
}

/** prom-client's default metrics with anyturn's prefix (src/ops/metrics.ts): what `anyturn_process_*` stands for. */
export async function processMetricNames(): Promise<Set<string>> {
  const registry = new Registry();
  collectDefaultMetrics({ register: registry, prefix: 'anyturn_process_' });
  const names = new Set<string>();
  for (const m of await registry.getMetricsAsJSON()) {
    names.add(m.name);
    // A histogram's series (the GC one has none until the first collection).
    if (String(m.type) === 'histogram') for (const suffix of ['_bucket', '_sum', '_count']) names.add(`${m.name}${suffix}`);
  }
  return names;
}

/** Every metric name anyturn documents: the README's table, its `anyturn_process_*` row expanded. */
export async function documentedMetricNames(): Promise<Set<string>> {
  const { names, prefixes } = readmeMetricNames();
  for (const name of await processMetricNames()) if (prefixes.some((p) => name.startsWith(p))) names.add(name);
  return names;
}

const PROMQL_WORDS = new Set(['by', 'without', 'on', 'ignoring', 'group_left', 'group_right', 'and', 'or', 'unless', 'bool', 'offset', 'inf', 'nan']);

/**
 * The metric names (and recording rule names) a PromQL expression selects: identifiers
 * not followed by `(` (functions) and not inside {...} matchers, [...] ranges, a
 * by/without/on/ignoring label list or a string.
 */
export function promqlMetricNames(expr: string): string[] {
  const stripped = expr
    .replace(/"(?:[^"\\]|\\.)*"/g, '""')
    // Grafana's variables ($instance, ${pop}, $__rate_interval).
    .replace(/\$\{?\w+\}?/g, ' ')
    .replace(/\{[^}]*\}/g, ' ')
    .replace(/\[[^\]]*\]/g, ' ')
    .replace(/\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)/g, ' ');
  const out = new Set<string>();
  // Not after a digit or a dot: the exponent of 1e3 is no name.
  for (const m of stripped.matchAll(/(?<![0-9.])([a-zA-Z_:][a-zA-Z0-9_:]*)(\s*\()?/g)) {
    const name = m[1]!;
    if (m[2] || PROMQL_WORDS.has(name.toLowerCase()) || /^\d/.test(name)) continue;
    // Durations and numbers (5m, 1e3) start with a digit and are skipped above; what is left names a series.
    out.add(name);
  }
  return [...out];
}

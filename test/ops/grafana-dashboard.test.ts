// docker/grafana/anyturn.json: a Grafana dashboard that parses, whose every query reads
// only metrics anyturn documents (README's metrics table) or series the shipped recording
// rules produce, that promtool accepts as PromQL, and that plots the README's main metric
// families.

import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { stringify } from 'yaml';

import { DASHBOARD_FILE, documentedMetricNames, loadRuleGroups, promqlMetricNames, promtool } from '../helpers/prometheus.js';

interface Target {
  readonly expr?: string;
  readonly refId: string;
  readonly datasource?: { type?: string; uid?: string };
}

interface Panel {
  readonly id: number;
  readonly type: string;
  readonly title: string;
  readonly targets?: Target[];
  readonly panels?: Panel[];
  readonly datasource?: { type?: string; uid?: string };
}

/** Grafana's own `${name}` variable syntax, not a JavaScript template. */
const DATASOURCE_VARIABLE = '$' + '{datasource}';

interface Dashboard {
  readonly title: string;
  readonly uid: string;
  readonly panels: Panel[];
  readonly templating: { list: { name: string; type: string; query: unknown }[] };
}

function load(): Dashboard {
  return JSON.parse(readFileSync(DASHBOARD_FILE, 'utf8')) as Dashboard;
}

function allPanels(d: Dashboard): Panel[] {
  return d.panels.flatMap((p) => [p, ...(p.panels ?? [])]);
}

function expressions(d: Dashboard): { panel: string; expr: string }[] {
  return allPanels(d).flatMap((p) => (p.targets ?? []).map((t) => ({ panel: p.title, expr: t.expr ?? '' })));
}

/** The raw metrics each recorded series of the shipped rules is computed from. */
function recordedFrom(): Map<string, string[]> {
  const out = new Map<string, string[]>();
  for (const r of loadRuleGroups().flatMap((g) => g.rules)) if (r.record) out.set(r.record, promqlMetricNames(r.expr));
  return out;
}

describe('docker/grafana/anyturn.json', () => {
  it('parses as a dashboard: a title, a uid, panels with unique ids, every query on the chosen Prometheus', () => {
    const d = load();
    assert.equal(d.title, 'anyturn');
    assert.ok(d.uid);
    const panels = allPanels(d);
    assert.equal(new Set(panels.map((p) => p.id)).size, panels.length, 'unique panel ids');
    const vars = d.templating.list;
    assert.ok(vars.some((v) => v.name === 'datasource' && v.type === 'datasource' && v.query === 'prometheus'));
    const withQueries = panels.filter((p) => p.type !== 'row');
    assert.ok(withQueries.length >= 10);
    for (const p of withQueries) {
      assert.ok((p.targets ?? []).length > 0, `${p.title} has queries`);
      assert.equal(p.datasource?.uid, DATASOURCE_VARIABLE, `${p.title}: the datasource variable`);
      for (const t of p.targets ?? []) assert.ok(t.expr && t.expr.trim() !== '', `${p.title} ${t.refId}: an expression`);
    }
  });

  it('reads only documented anyturn metrics, and series the shipped recording rules make', async () => {
    const documented = await documentedMetricNames();
    const recorded = recordedFrom();
    const seen = new Set<string>();
    for (const { panel, expr } of expressions(load())) {
      const names = promqlMetricNames(expr);
      assert.ok(names.length > 0, `${panel}: ${expr} reads a metric`);
      for (const name of names) {
        seen.add(name);
        assert.ok(
          documented.has(name) || recorded.has(name) || name === 'up',
          `${panel}: ${name} (in ${expr}) is neither in README's metrics table nor recorded by anyturn.rules.yml`,
        );
      }
    }
    // The extraction found the names it should: a histogram series and a recorded one.
    assert.ok(seen.has('anyturn_request_duration_seconds_bucket'));
    assert.ok(seen.has('instance:anyturn_relayed_packets:rate1m'));
  });

  it("plots the README's metric families: allocations, relayed packets and bytes, drops, requests, store, mesh, data plane", () => {
    const recorded = recordedFrom();
    const plotted = new Set(expressions(load()).flatMap(({ expr }) => promqlMetricNames(expr).flatMap((n) => [n, ...(recorded.get(n) ?? [])])));
    for (const name of [
      'anyturn_allocations',
      'anyturn_relayed_packets_total',
      'anyturn_relayed_bytes_total',
      'anyturn_dropped_packets_total',
      'anyturn_requests_total',
      'anyturn_store_up',
      'anyturn_store_degraded',
      'anyturn_mesh_forwarded_packets_total',
      'anyturn_mesh_received_packets_total',
      'anyturn_dataplane_info',
      'anyturn_draining',
    ]) {
      assert.ok(plotted.has(name), `a panel plots ${name}`);
    }
  });

  it('every query is PromQL that promtool accepts (Grafana variables filled in)', (t) => {
    const dir = mkdtempSync(join(tmpdir(), 'anyturn-dashboard-'));
    t.after(() => rmSync(dir, { recursive: true, force: true }));
    const rules = expressions(load()).map(({ expr }, i) => ({
      record: `dashboard:query_${i}`,
      expr: expr.replaceAll('$__rate_interval', '1m').replaceAll('$instance', '.*'),
    }));
    assert.ok(
      rules.every((r) => !r.expr.includes('$')),
      'every variable filled in',
    );
    const file = join(dir, 'dashboard.rules.yml');
    writeFileSync(file, stringify({ groups: [{ name: 'dashboard', rules }] }));
    const r = promtool(['check', 'rules', file]);
    assert.equal(r.status, 0, r.output);
    assert.match(r.output, new RegExp(`SUCCESS: ${rules.length} rules found`));
  });
});

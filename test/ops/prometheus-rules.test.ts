// docker/prometheus/ as shipped: promtool accepts the scrape config and the rules, and
// the rules' own unit tests (anyturn.rules.test.yml: input series, expected alerts with
// the shipped `for:` durations) pass. Every alert has a case that expects it to fire, and
// every metric the rules read is one anyturn exports (README's metrics table).

import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { parse } from 'yaml';

import { PROMETHEUS_DIR, RULES_FILE, RULES_TEST_FILE, documentedMetricNames, loadRuleGroups, promqlMetricNames, promtool } from '../helpers/prometheus.js';

interface RulesTestFile {
  rule_files: string[];
  tests: { name: string; alert_rule_test?: { alertname: string; exp_alerts: unknown[] }[] }[];
}

describe('docker/prometheus/ (promtool)', () => {
  it('promtool check config: prometheus.yml and the rule files it loads', () => {
    const r = promtool(['check', 'config', 'prometheus.yml'], PROMETHEUS_DIR);
    assert.equal(r.status, 0, r.output);
    assert.match(r.output, /SUCCESS: 1 rule files found/);
  });

  it('promtool check rules: anyturn.rules.yml', () => {
    const rules = loadRuleGroups().flatMap((g) => g.rules);
    const r = promtool(['check', 'rules', RULES_FILE]);
    assert.equal(r.status, 0, r.output);
    assert.match(r.output, new RegExp(`SUCCESS: ${rules.length} rules found`));
  });

  it('promtool test rules: anyturn.rules.test.yml passes, against the shipped rule file', () => {
    const file = parse(readFileSync(RULES_TEST_FILE, 'utf8')) as RulesTestFile;
    assert.deepEqual(file.rule_files, ['anyturn.rules.yml'], 'the tests load the shipped rules, not a copy');
    const r = promtool(['test', 'rules', RULES_TEST_FILE]);
    assert.equal(r.status, 0, r.output);
    assert.match(r.output, /SUCCESS/);
  });

  it('every alert has a test case that expects it to fire, and one that expects it quiet', () => {
    const file = parse(readFileSync(RULES_TEST_FILE, 'utf8')) as RulesTestFile;
    const cases = file.tests.flatMap((t) => t.alert_rule_test ?? []);
    const alerts = loadRuleGroups()
      .flatMap((g) => g.rules)
      .filter((r) => r.alert !== undefined);
    assert.ok(alerts.length >= 10);
    for (const { alert } of alerts) {
      assert.ok(
        cases.some((c) => c.alertname === alert && c.exp_alerts.length > 0),
        `${alert} fires in a test`,
      );
      assert.ok(
        cases.some((c) => c.alertname === alert && c.exp_alerts.length === 0),
        `${alert} is quiet in a test`,
      );
    }
  });

  it('every alert has a severity, a summary and a description', () => {
    for (const rule of loadRuleGroups().flatMap((g) => g.rules)) {
      if (rule.alert === undefined) continue;
      assert.match(rule.labels?.severity ?? '', /^(critical|warning|info)$/, rule.alert);
      assert.ok(rule.annotations?.summary, `${rule.alert}: summary`);
      assert.ok(rule.annotations?.description, `${rule.alert}: description`);
    }
  });

  it("the rules read only metrics anyturn exports (README's table), Prometheus' up, and their own recorded series", async () => {
    const documented = await documentedMetricNames();
    const rules = loadRuleGroups().flatMap((g) => g.rules);
    const recorded = new Set(rules.flatMap((r) => (r.record ? [r.record] : [])));
    const read = new Set(rules.flatMap((r) => promqlMetricNames(r.expr)));
    // The extraction itself: names the rules are known to read.
    for (const name of ['anyturn_store_degraded', 'anyturn_relayed_packets_total', 'instance:anyturn_allocate_failures:ratio5m', 'up']) {
      assert.ok(read.has(name), `the rules read ${name}`);
    }
    for (const name of read) {
      assert.ok(documented.has(name) || recorded.has(name) || name === 'up', `${name} is a documented anyturn metric or a recorded series`);
    }
  });
});

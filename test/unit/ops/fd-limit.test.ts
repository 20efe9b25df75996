// The start-up check of the open-file limit: /proc/self/limits parsed, what a
// configuration may open counted, and a warning that names the flags to change.

import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { buildConfig } from '../../../src/config/index.js';
import { descriptorNeeds, openFileLimitWarning, readOpenFileLimit } from '../../../src/ops/fd-limit.js';

const LIMITS = `Limit                     Soft Limit           Hard Limit           Units
Max cpu time              unlimited            unlimited            seconds
Max open files            1024                 524288               files
Max locked memory         8388608              8388608              bytes
`;

function config(extra: Record<string, unknown> = {}) {
  return buildConfig({ 'listening-ip': ['127.0.0.1'], user: ['u:p'], 'min-port': 1024, 'max-port': 65535, ...extra });
}

describe('open-file limit check', () => {
  it('reads soft and hard "Max open files" from /proc/self/limits (unlimited as Infinity)', () => {
    assert.deepEqual(
      readOpenFileLimit(() => LIMITS),
      { soft: 1024, hard: 524288 },
    );
    assert.deepEqual(
      readOpenFileLimit(() => LIMITS.replace('1024                 524288', 'unlimited            unlimited')),
      { soft: Infinity, hard: Infinity },
    );
    assert.equal(
      readOpenFileLimit(() => 'nothing here'),
      undefined,
    );
    assert.equal(
      readOpenFileLimit(() => {
        throw new Error('ENOENT');
      }),
      undefined,
    );
    // This process (Linux): Node has raised the soft limit to the hard one.
    const own = readOpenFileLimit();
    if (own) assert.equal(own.soft, own.hard);
  });

  it('counts the relay range on every --relay-ip, capped by --total-quota, plus connections and listeners', () => {
    const full = descriptorNeeds(config({ 'relay-ip': ['127.0.0.1', '127.0.0.2'] }));
    assert.equal(full.relaySockets, 2 * 64512);
    assert.equal(full.connections, 10000);
    assert.equal(descriptorNeeds(config({ 'total-quota': 500 })).relaySockets, 500);
    assert.equal(descriptorNeeds(config({ 'total-quota': 500, 'relay-ip': ['127.0.0.1', '::1'] })).relaySockets, 1000, 'dual-stack: two sockets each');
    assert.equal(descriptorNeeds(config({ tcp: false })).connections, 0);
  });

  it('counts one relay socket per relay address with --relay-sockets shared, and names the kernel path when auto could share', () => {
    const shared = descriptorNeeds(config({ 'relay-ip': ['127.0.0.1', '127.0.0.2'], 'relay-sockets': 'shared' }));
    assert.equal(shared.relaySockets, 2);
    assert.equal(openFileLimitWarning(config({ 'relay-sockets': 'shared', 'max-tcp-connections': 100 }), { soft: 1024, hard: 1024 }), undefined);
    assert.match(openFileLimitWarning(config(), { soft: 1024, hard: 1024 })?.message ?? '', /kernel data plane/);
    assert.doesNotMatch(openFileLimitWarning(config({ dataplane: 'js' }), { soft: 1024, hard: 1024 })?.message ?? '', /kernel data plane/);
  });

  it('warns naming --min-port/--max-port, --relay-ip, --total-quota and --max-tcp-connections when they do not fit', () => {
    const w = openFileLimitWarning(config(), { soft: 1024, hard: 1024 });
    assert.ok(w);
    for (const flag of ['--min-port 1024', '--max-port 65535', '1 --relay-ip', 'no --total-quota', '--max-tcp-connections', 'ulimit -n', 'LimitNOFILE'])
      assert.ok(w.message.includes(flag), `${flag} in: ${w.message}`);
    const fits = openFileLimitWarning(config({ 'total-quota': 500, 'max-tcp-connections': 100 }), { soft: 1024, hard: 1024 });
    assert.equal(fits, undefined);
    const quota = openFileLimitWarning(config({ 'max-tcp-connections': 100 }), { soft: 1024, hard: 1024 });
    assert.match(quota?.message ?? '', /set --total-quota to at most \d+/);
  });
});

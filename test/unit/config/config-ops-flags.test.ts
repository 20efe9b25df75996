// Validation of the drain, shutdown, alternate-server and metrics flags: a bad
// value stops the start with a message naming the flag, the value and what is
// allowed (the admin token itself never appears in a message).

import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { buildConfig } from '../../../src/config/index.js';
import { BASE, refused } from '../../helpers/config.js';

describe('config: ops flags', () => {
  it('defaults: no token, no drain-exit, 5 s shutdown, no alternates, no username labels', () => {
    const c = buildConfig(BASE);
    assert.equal(c.adminToken, undefined);
    assert.equal(c.drainExit, false);
    assert.equal(c.shutdownTimeoutSeconds, 5);
    assert.deepEqual(c.alternateServers, []);
    assert.equal(c.prometheusUsernameLabels, false);
  });

  it('--alternate-server: ip:port, [ipv6]:port, a bare address (port 3478), comma lists from the environment', () => {
    const c = buildConfig({
      ...BASE,
      'alternate-server': ['192.0.2.1:3479', '[2001:db8::1]:5000', '198.51.100.2', '203.0.113.5:1, [2001:db8::2]', '2001:db8::3'],
    });
    assert.deepEqual(c.alternateServers, [
      { address: '192.0.2.1', port: 3479 },
      { address: '2001:db8::1', port: 5000 },
      { address: '198.51.100.2', port: 3478 },
      { address: '203.0.113.5', port: 1 },
      { address: '2001:db8::2', port: 3478 },
      { address: '2001:db8::3', port: 3478 },
    ]);
  });

  for (const bad of ['example.org:3478', '192.0.2.1:0', '192.0.2.1:70000', '0.0.0.0:3478', '[::]:3478', '192.0.2.1:abc', '2001:db8::1:99999x']) {
    it(`--alternate-server ${bad} is refused naming flag, value and form`, () => {
      const e = refused({ 'alternate-server': [bad] });
      assert.match(e.message, /--alternate-server/);
      assert.ok(e.message.includes(bad), e.message);
      assert.match(e.message, /ip:port or \[ipv6\]:port/);
    });
  }

  it('--shutdown-timeout: 1 to 3600 seconds', () => {
    assert.equal(buildConfig({ ...BASE, 'shutdown-timeout': 30 }).shutdownTimeoutSeconds, 30);
    for (const bad of [0, 3601, 2.5]) {
      const e = refused({ 'shutdown-timeout': bad });
      assert.match(e.message, /--shutdown-timeout/);
      assert.ok(e.message.includes(String(bad)));
      assert.match(e.message, /1 to 3600/);
    }
    assert.match(refused({ 'shutdown-timeout': 'soon' as unknown as number }).message, /--shutdown-timeout "soon": not a number/);
  });

  it('--admin-token: at least 16 bytes without spaces; the refused value is never printed', () => {
    assert.equal(buildConfig({ ...BASE, 'admin-token': 'a'.repeat(16) }).adminToken, 'a'.repeat(16));
    for (const bad of ['short-token', 'has a space in the token']) {
      const e = refused({ 'admin-token': bad });
      assert.match(e.message, /--admin-token/);
      assert.match(e.message, /at least 16 bytes/);
      assert.ok(!e.message.includes(bad), 'the token is not echoed');
    }
  });

  it('--drain-exit and --prometheus-username-labels switch on', () => {
    const c = buildConfig({ ...BASE, 'drain-exit': true, 'prometheus-username-labels': true });
    assert.equal(c.drainExit, true);
    assert.equal(c.prometheusUsernameLabels, true);
  });

  it('--dataplane: auto by default; --dataplane-interface takes names, repeated or comma-separated', () => {
    assert.deepEqual(buildConfig(BASE).dataplane, { mode: 'auto', interfaces: [], maxChannels: 262_144, relaySockets: 'auto' });
    const c = buildConfig({ ...BASE, dataplane: 'kernel', 'dataplane-interface': ['eth0', 'veth-a,bond0.100'] });
    assert.deepEqual(c.dataplane, { mode: 'kernel', interfaces: ['eth0', 'veth-a', 'bond0.100'], maxChannels: 262_144, relaySockets: 'auto' });
  });

  it('--dataplane-channels: 262,144 by default, 1 to 16,777,216, naming flag, value and range when refused', () => {
    assert.equal(buildConfig({ ...BASE, 'dataplane-channels': 1_000_000 }).dataplane.maxChannels, 1_000_000);
    for (const bad of [0, 16_777_217, 2.5]) {
      const e = refused({ 'dataplane-channels': bad });
      assert.match(e.message, /--dataplane-channels/);
      assert.ok(e.message.includes(String(bad)));
      assert.match(e.message, /1 to 16777216/);
    }
    assert.match(refused({ 'dataplane-channels': 'many' as unknown as number }).message, /--dataplane-channels "many": not a number/);
  });

  it('--relay-sockets: auto by default; shared is refused with --dataplane js or --workers above 1, naming the flag and why', () => {
    assert.equal(buildConfig({ ...BASE, 'relay-sockets': 'shared' }).dataplane.relaySockets, 'shared');
    assert.equal(buildConfig({ ...BASE, 'relay-sockets': 'per-allocation', dataplane: 'js' }).dataplane.relaySockets, 'per-allocation');
    const js = refused({ 'relay-sockets': 'shared', dataplane: 'js' });
    assert.match(js.message, /--relay-sockets "shared"/);
    assert.match(js.message, /--dataplane js/);
    const workers = refused({ 'relay-sockets': 'shared', workers: 2 });
    assert.match(workers.message, /--relay-sockets "shared"/);
    assert.match(workers.message, /--workers 2/);
    assert.match(refused({ 'relay-sockets': 'one' }).message, /--relay-sockets.*'auto', 'shared' or 'per-allocation'/);
  });

  it('--dataplane kernel with --workers above 1 is refused: the kernel path serves one process', () => {
    const e = refused({ dataplane: 'kernel', workers: 2 });
    assert.match(e.message, /--dataplane "kernel"/);
    assert.match(e.message, /--workers 2/);
    assert.equal(buildConfig({ ...BASE, dataplane: 'auto', workers: 2 }).dataplane.mode, 'auto');
  });

  it('--mobility: off by default; with --workers above 1 refused (a moved client hashes to another worker)', () => {
    assert.equal(buildConfig(BASE).mobility, false);
    assert.equal(buildConfig({ ...BASE, mobility: true }).mobility, true);
    const e = refused({ mobility: true, workers: 2 });
    assert.match(e.message, /--mobility/);
    assert.match(e.message, /--workers 2/);
  });

  for (const bad of ['eth0/1', 'a name', 'sixteen-chars-xx', 'eth:0']) {
    it(`--dataplane-interface ${JSON.stringify(bad)} is refused naming flag, value and form`, () => {
      const e = refused({ 'dataplane-interface': [bad] });
      assert.match(e.message, /--dataplane-interface/);
      assert.match(e.message, /network interface name/);
    });
  }
});

// anyturn_tls_certificate_expiry_seconds: seconds until the notAfter of the --cert
// certificate, read at scrape time; present only with TURN over TLS, and wired from the
// configuration to /metrics. notAfter is checked against openssl's own reading of the file.

import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { Registry } from 'prom-client';

import { buildConfig } from '../../../src/config/index.js';
import { createLogger } from '../../../src/ops/log.js';
import { createMetrics } from '../../../src/ops/metrics.js';
import { certificateNotAfterMs, tlsCertificateMetrics } from '../../../src/ops/tls-metrics.js';
import { startServer } from '../../../src/server.js';
import { MemoryAllocationStore } from '../../../src/store/memory.js';
import { AllocationTable } from '../../../src/turn/allocation/table.js';
import { EngineCounters } from '../../../src/turn/counters.js';
import { findFreeTcpPort } from '../../helpers/anyturn-process.js';
import { get, parseMetrics, sum } from '../../helpers/ops-endpoint.js';
import { makeSelfSignedCertificate } from '../../helpers/tls-cert.js';

const GAUGE = 'anyturn_tls_certificate_expiry_seconds';

/** notAfter as openssl reads it (ISO 8601), in ms. */
function opensslNotAfterMs(certFile: string): number {
  const r = spawnSync('openssl', ['x509', '-enddate', '-noout', '-dateopt', 'iso_8601', '-in', certFile], { encoding: 'utf8' });
  assert.equal(r.status, 0, r.stderr);
  const m = /^notAfter=(\S+) (\S+)$/m.exec(r.stdout);
  assert.ok(m, r.stdout);
  return Date.parse(`${m[1]}T${m[2]}`);
}

async function gaugeValue(registry: Registry): Promise<number | undefined> {
  const s = parseMetrics(await registry.metrics()).find((x) => x.name === GAUGE);
  return s?.value;
}

describe('anyturn_tls_certificate_expiry_seconds', () => {
  it("reads the leaf's notAfter and counts down to it at scrape time, negative once expired", async (t) => {
    const cert = makeSelfSignedCertificate();
    t.after(() => cert.remove());
    const notAfter = certificateNotAfterMs(cert.cert);
    assert.equal(notAfter, opensslNotAfterMs(cert.certFile));
    let now = notAfter - 14 * 86_400_000;
    const registry = new Registry();
    tlsCertificateMetrics(registry, cert.cert, () => now);
    assert.equal(await gaugeValue(registry), 14 * 86_400);
    now = notAfter - 1500;
    assert.equal(await gaugeValue(registry), 1.5);
    now = notAfter + 60_000;
    assert.equal(await gaugeValue(registry), -60);
  });

  it('is exported by createMetrics only when a certificate is given', async (t) => {
    const cert = makeSelfSignedCertificate();
    t.after(() => cert.remove());
    const base = { engine: new AllocationTable(), counters: new EngineCounters(), store: new MemoryAllocationStore() };
    assert.equal(await gaugeValue(createMetrics(base)), undefined);
    const value = await gaugeValue(createMetrics({ ...base, tlsCertificate: cert.cert }));
    assert.ok(value !== undefined && value > 0 && value <= 86_400, `a one-day certificate: ${String(value)}`);
  });

  it('a server started with --cert/--pkey serves it on /metrics', async (t) => {
    const cert = makeSelfSignedCertificate();
    t.after(() => cert.remove());
    const metricsPort = await findFreeTcpPort();
    const server = await startServer(
      buildConfig({
        'listening-ip': ['127.0.0.1'],
        'listening-port': 0,
        'tls-listening-port': 0,
        tcp: false,
        cert: cert.certFile,
        pkey: cert.keyFile,
        'metrics-ip': '127.0.0.1',
        'metrics-port': metricsPort,
        user: ['u:p'],
      }),
      { logger: createLogger('silent') },
    );
    t.after(() => server.stop());
    const r = await get(`http://127.0.0.1:${server.metricsPort}/metrics`);
    assert.equal(r.status, 200);
    const samples = parseMetrics(r.body);
    assert.ok(samples.some((s) => s.name === GAUGE));
    const left = sum(samples, GAUGE);
    // openssl made it valid for one day (test/helpers/tls-cert.ts).
    assert.ok(left > 0 && left <= 86_400, `seconds left: ${left}`);
  });
});

// The certificate TURN over TLS serves (--cert): seconds until it expires, so an alert
// (docker/prometheus/anyturn.rules.yml) warns while there is time to renew it. The file
// is read once at start (src/config/transport.ts), so a renewed certificate needs a
// restart: the gauge then shows the new one.

import { X509Certificate } from 'node:crypto';
import { Gauge, type Registry } from 'prom-client';

/** notAfter of the first certificate of a PEM chain (the leaf, which clients check first), in ms since the epoch. */
export function certificateNotAfterMs(pem: Buffer | string): number {
  const notAfter = Date.parse(new X509Certificate(pem).validTo);
  if (Number.isNaN(notAfter)) throw new Error('the certificate has no readable notAfter');
  return notAfter;
}

/** anyturn_tls_certificate_expiry_seconds: notAfter minus now, read at scrape time (negative once expired). */
export function tlsCertificateMetrics(registry: Registry, pem: Buffer, now: () => number = Date.now): void {
  const notAfterMs = certificateNotAfterMs(pem);
  new Gauge({
    name: 'anyturn_tls_certificate_expiry_seconds',
    help: 'Seconds until the notAfter of the TLS certificate loaded from --cert (negative once expired); renewing it takes a restart',
    registers: [registry],
    // With --workers every worker serves the same file: the soonest, not their sum.
    aggregator: 'min',
    collect() {
      this.set((notAfterMs - now()) / 1000);
    },
  });
}
